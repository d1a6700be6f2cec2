//! Every error leaves as `application/problem+json` (RFC 9457), mapped here and nowhere else.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use paygent_engine::EngineError;
use serde::Serialize;
use utoipa::ToSchema;

/// An RFC 9457 problem document.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// A URN naming the kind of problem, e.g. `urn:paygent:problem:conflict`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("{0}")]
    BadRequest(String),
    #[error(
        "the request body is larger than allowed: {} bytes, {} for a policy",
        crate::BODY_LIMIT,
        crate::POLICY_BODY_LIMIT
    )]
    TooLarge,
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("no such route")]
    NoRoute,
    #[error("this method is not allowed on this route")]
    MethodNotAllowed,
    #[error("the database is unavailable")]
    Unavailable,
    #[error("too many requests for this key; retry after {0} s")]
    RateLimited(u64),
    #[error(
        "the request took longer than {0} s and was cut off; a payment it started goes on: retry with the same \
         idempotency_key to get its outcome"
    )]
    TimedOut(f64),
    /// The key holds as many open streams as it may: close one first.
    #[error("{0}")]
    TooManyStreams(String),
}

impl ApiError {
    fn status_and_slug(&self) -> (StatusCode, &'static str) {
        use EngineError as E;
        match self {
            ApiError::Engine(e) => match e {
                E::Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthenticated"),
                E::Unsigned(_) => (StatusCode::UNAUTHORIZED, "bad-signature"),
                E::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
                E::NotFound(_) => (StatusCode::NOT_FOUND, "not-found"),
                E::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
                E::Frozen(_) => (StatusCode::CONFLICT, "session-frozen"),
                E::Gone(_) => (StatusCode::GONE, "gone"),
                E::TooMany(_) => (StatusCode::TOO_MANY_REQUESTS, "too-many-pending"),
                E::NotImplemented(_) => (StatusCode::NOT_IMPLEMENTED, "not-implemented"),
                E::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
                E::Unpaid { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "nothing-to-pay"),
                E::Store(s) if s.is_unavailable() => {
                    (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
                }
                E::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "rail-unavailable"),
                E::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            },
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "malformed"),
            ApiError::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "too-large"),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type")
            }
            ApiError::NoRoute => (StatusCode::NOT_FOUND, "no-route"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed"),
            ApiError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "rate-limited"),
            ApiError::TooManyStreams(_) => (StatusCode::TOO_MANY_REQUESTS, "too-many-streams"),
            ApiError::TimedOut(_) => (StatusCode::REQUEST_TIMEOUT, "timeout"),
        }
    }
}

impl ApiError {
    /// The problem document for this error. Server-side causes go to the log, not to the caller: they may name
    /// tables, hosts or values.
    pub fn problem(&self) -> Problem {
        let (status, slug) = self.status_and_slug();
        let detail = if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
            match (status, slug) {
                (_, "rail-unavailable") => "a chain or payment service could not be reached; an authorized \
                    payment stays authorized and is reconciled, so retry with the same idempotency key"
                    .to_owned(),
                (StatusCode::SERVICE_UNAVAILABLE, _) => {
                    "the database is unavailable; retry shortly".to_owned()
                }
                (_, _) => "internal error; the server log has the cause".to_owned(),
            }
        } else {
            self.to_string()
        };
        Problem {
            kind: format!("urn:paygent:problem:{slug}"),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail,
        }
    }
}

/// Marks a response the database failed, for the metrics layer to count.
#[derive(Debug, Clone, Copy)]
pub struct DatabaseFailed;

/// Counts the answers the database failed (`paygent_database_errors`).
pub async fn count_database_errors(
    axum::extract::State(paygent): axum::extract::State<paygent_engine::Paygent>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let response = next.run(req).await;
    if response.extensions().get::<DatabaseFailed>().is_some() {
        paygent.metrics().database_error();
    }
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry_after = match &self {
            ApiError::RateLimited(s) => Some(*s),
            ApiError::TooManyStreams(_) => Some(1),
            _ => None,
        };
        let database = matches!(
            &self,
            ApiError::Engine(EngineError::Store(_)) | ApiError::Unavailable
        );
        let problem = self.problem();
        let status =
            StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, Json(problem)).into_response();
        if database {
            response.extensions_mut().insert(DatabaseFailed);
        }
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        match status {
            StatusCode::UNAUTHORIZED => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            StatusCode::TOO_MANY_REQUESTS => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(retry_after.unwrap_or(1)),
                );
            }
            _ => {}
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType(
                "send JSON with Content-Type: application/json".into(),
            ),
            JsonRejection::BytesRejection(b) if b.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::TooLarge
            }
            other => ApiError::BadRequest(other.body_text()),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::BadRequest(format!("bad path parameter: {}", r.body_text()))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::BadRequest(r.body_text())
    }
}
