//! The kill switch: the tenant-wide emergency stop, killing or reviving a session, and unfreezing a session the
//! circuit breaker froze.

use super::ApiResult;
use crate::error::Problem;
use crate::extract::{Body, Caller, Path};
use axum::Json;
use axum::extract::State;
use paygent_engine::{KillSwitchView, Paygent, SessionView};
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

pub fn router() -> OpenApiRouter<Paygent> {
    OpenApiRouter::new()
        .routes(routes!(get_kill_switch, set_kill_switch))
        .routes(routes!(kill_session))
        .routes(routes!(revive_session))
        .routes(routes!(unfreeze_session))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetKillSwitch {
    engaged: bool,
    reason: Option<String>,
}

/// Whether the emergency stop is engaged.
#[utoipa::path(get, path = "/kill-switch", tag = "kill switch",
    responses((status = 200, body = KillSwitchView)))]
async fn get_kill_switch(
    State(paygent): State<Paygent>,
    Caller(who): Caller,
) -> ApiResult<Json<KillSwitchView>> {
    Ok(Json(paygent.kill_switch(&who).await?))
}

/// Engages or releases the emergency stop (admins). While engaged, every money-moving call is denied with
/// `killed`; engaging cancels every pending approval and releases its reservation.
#[utoipa::path(post, path = "/kill-switch", tag = "kill switch", request_body = SetKillSwitch,
    responses((status = 200, body = KillSwitchView), (status = 403, body = Problem)))]
async fn set_kill_switch(
    State(paygent): State<Paygent>,
    Caller(who): Caller,
    Body(req): Body<SetKillSwitch>,
) -> ApiResult<Json<KillSwitchView>> {
    Ok(Json(
        paygent
            .set_kill_switch(&who, req.engaged, req.reason)
            .await?,
    ))
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct KillSession {
    reason: Option<String>,
}

/// Kills a session (approvers and admins): its pending approvals are cancelled and it takes no new payments
/// until an admin revives it.
#[utoipa::path(post, path = "/sessions/{id}/kill", tag = "kill switch", params(("id" = Uuid, Path)),
    request_body = KillSession,
    responses((status = 200, body = SessionView), (status = 403, body = Problem), (status = 404, body = Problem)))]
async fn kill_session(
    State(paygent): State<Paygent>,
    Caller(who): Caller,
    Path(id): Path<Uuid>,
    Body(req): Body<KillSession>,
) -> ApiResult<Json<SessionView>> {
    Ok(Json(paygent.kill_session(&who, id, req.reason).await?))
}

/// Lets a killed session spend again (admins).
#[utoipa::path(post, path = "/sessions/{id}/revive", tag = "kill switch", params(("id" = Uuid, Path)),
    responses((status = 200, body = SessionView), (status = 403, body = Problem), (status = 404, body = Problem)))]
async fn revive_session(
    State(paygent): State<Paygent>,
    Caller(who): Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<SessionView>> {
    Ok(Json(paygent.revive_session(&who, id).await?))
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct Unfreeze {
    /// Why it may go on, kept in the audit trail (at most 500 characters).
    #[schema(max_length = 500)]
    comment: Option<String>,
}

/// Unfreezes a session the circuit breaker froze (approvers and admins; never the key whose payment tripped it):
/// its payments are judged again, its velocity rules counting from now, and its paused executions go on.
#[utoipa::path(post, path = "/sessions/{id}/unfreeze", tag = "kill switch", params(("id" = Uuid, Path)),
    request_body = Unfreeze,
    responses((status = 200, body = SessionView), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem, description = "the session is not frozen"), (status = 422, body = Problem)))]
async fn unfreeze_session(
    State(paygent): State<Paygent>,
    Caller(who): Caller,
    Path(id): Path<Uuid>,
    Body(req): Body<Unfreeze>,
) -> ApiResult<Json<SessionView>> {
    Ok(Json(paygent.unfreeze_session(&who, id, req.comment).await?))
}
