//! Extractors that turn every malformed request into a problem+json answer.

use crate::error::ApiError;
use crate::rate::Limiter;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use paygent_engine::domain::Principal;
use paygent_engine::{EngineError, Paygent};
use serde::de::DeserializeOwned;
use std::sync::Arc;

/// The authenticated caller, from `Authorization: Bearer <key>`.
pub struct Caller(pub Principal);

impl FromRequestParts<Paygent> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, paygent: &Paygent) -> Result<Self, ApiError> {
        let token = bearer(parts).ok_or(EngineError::Unauthenticated)?;
        let who = paygent.authenticate(token).await?;
        rate_limit(parts, &who)?;
        Ok(Caller(who))
    }
}

/// Takes one request from the key's bucket.
fn rate_limit(parts: &Parts, who: &Principal) -> Result<(), ApiError> {
    if let Some(limiter) = parts.extensions.get::<Arc<Limiter>>()
        && let Err(wait) = limiter.check(who.key_id)
    {
        return Err(ApiError::RateLimited(wait.as_secs().max(1)));
    }
    Ok(())
}

fn bearer(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// The caller of a streaming endpoint: from `Authorization: Bearer`, or from `?token=` for clients that cannot
/// set headers (browsers' WebSocket and EventSource).
pub struct StreamCaller(pub Principal);

#[derive(serde::Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

impl FromRequestParts<Paygent> for StreamCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, paygent: &Paygent) -> Result<Self, ApiError> {
        let from_query = axum::extract::Query::<TokenQuery>::try_from_uri(&parts.uri)
            .ok()
            .and_then(|q| q.0.token);
        let token = bearer(parts)
            .map(str::to_owned)
            .or(from_query)
            .ok_or(EngineError::Unauthenticated)?;
        let who = paygent.authenticate(&token).await?;
        rate_limit(parts, &who)?;
        Ok(StreamCaller(who))
    }
}

/// `axum::Json` with its rejections mapped to problems.
pub struct Body<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let axum::Json(value) = axum::Json::<T>::from_request(req, state).await?;
        Ok(Body(value))
    }
}

/// `axum::extract::Path` with its rejections mapped to problems.
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path(value) =
            axum::extract::Path::<T>::from_request_parts(parts, state).await?;
        Ok(Path(value))
    }
}

/// `axum::extract::Query` with its rejections mapped to problems.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Query(value) =
            axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(Query(value))
    }
}
