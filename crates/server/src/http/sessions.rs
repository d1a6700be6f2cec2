//! Sessions.

use super::ApiResult;
use crate::error::Problem;
use crate::extract::{Body, Caller, Path};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use paygent_engine::domain::SessionConfig;
use paygent_engine::{NewSession, Paygent, SessionView};
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

pub fn router() -> OpenApiRouter<Paygent> {
    OpenApiRouter::new()
        .routes(routes!(create_session))
        .routes(routes!(get_session))
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    name: Option<String>,
    /// The EVM address this session pays from.
    wallet_address: Option<String>,
    #[schema(value_type = Option<Object>, example = json!({"approval_threshold_usd": "10", "approval_timeout_seconds": 900}))]
    config: Option<SessionConfig>,
}

/// Opens a session for an agent.
#[utoipa::path(post, path = "/sessions", tag = "sessions", request_body = CreateSession,
    responses((status = 201, body = SessionView), (status = 422, body = Problem)))]
async fn create_session(
    State(paygent): State<Paygent>,
    Caller(who): Caller,
    Body(req): Body<CreateSession>,
) -> ApiResult<(StatusCode, Json<SessionView>)> {
    let session = paygent
        .create_session(
            &who,
            NewSession {
                name: req.name,
                wallet_address: req.wallet_address,
                config: req.config,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(session)))
}

/// A session with its config, today's spend and its state.
#[utoipa::path(get, path = "/sessions/{id}", tag = "sessions", params(("id" = Uuid, Path)),
    responses((status = 200, body = SessionView), (status = 404, body = Problem)))]
async fn get_session(
    State(paygent): State<Paygent>,
    Caller(who): Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<SessionView>> {
    Ok(Json(paygent.session(&who, id).await?))
}
