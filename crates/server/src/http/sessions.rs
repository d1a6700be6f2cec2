//! Sessions.

use super::ApiResult;
use crate::error::Problem;
use crate::extract::{Body, Caller, Path, Query};
use axum::Json;
use axum::extract::{OriginalUri, State};
use axum::http::StatusCode;
use axum::response::Response;
use paygent_engine::MAX_SESSIONS_PAGE;
use paygent_engine::domain::SessionConfig;
use paygent_engine::domain::budget::BudgetConfig;
use paygent_engine::{BudgetView, MemoryTurn, NewSession, Paygent, SessionSummary, SessionView};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

pub fn router() -> OpenApiRouter<Paygent> {
    OpenApiRouter::new()
        .routes(routes!(create_session, list_sessions))
        .routes(routes!(get_session))
        .routes(routes!(get_budget, put_budget))
        .routes(routes!(get_memory))
        .routes(routes!(get_summary))
        .routes(routes!(get_balance))
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    #[schema(max_length = 200)]
    name: Option<String>,
    /// The EVM address this session pays from.
    #[schema(pattern = "^0x[0-9a-fA-F]{40}$")]
    wallet_address: Option<String>,
    config: Option<SessionConfig>,
}

/// Opens a session for an agent.
#[utoipa::path(post, path = "/sessions", tag = "sessions", request_body = CreateSession,
    responses((status = 201, body = SessionView), (status = 403, body = Problem), (status = 422, body = Problem)))]
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

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SessionsQuery {
    /// The last id of the previous page (as the `Link` header gives it).
    after: Option<Uuid>,
    /// At most 100; 50 by default.
    limit: Option<i64>,
}

/// Sessions, newest first, each with today's budget: all of the tenant's for approvers and admins, an agent's
/// own for an agent.
#[utoipa::path(get, path = "/sessions", tag = "sessions", params(SessionsQuery),
    responses((status = 200, body = Vec<SessionView>, headers(("Link" = String, description = "the next page")))))]
async fn list_sessions(
    State(paygent): State<Paygent>,
    Caller(who): Caller,
    OriginalUri(uri): OriginalUri,
    Query(q): Query<SessionsQuery>,
) -> ApiResult<Response> {
    let limit = q.limit.unwrap_or(50).clamp(1, MAX_SESSIONS_PAGE);
    let list = paygent.sessions(&who, q.after, limit).await?;
    let next = super::next_after(&list, limit, |x| x.id.to_string());
    Ok(super::page(&uri, list, next))
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

/// Today's budget: per currency and in USD, the limit, spent, reserved and available, and when it resets.
#[utoipa::path(get, path = "/sessions/{id}/budget", tag = "sessions", params(("id" = Uuid, Path)),
    responses((status = 200, body = BudgetView), (status = 404, body = Problem)))]
async fn get_budget(
    State(paygent): State<Paygent>,
    Caller(who): Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<BudgetView>> {
    Ok(Json(paygent.budget(&who, id).await?))
}

/// Replaces the session's budget settings (approvers and admins). Omitted keys mean "no limit" or the default.
#[utoipa::path(put, path = "/sessions/{id}/budget", tag = "sessions", params(("id" = Uuid, Path)),
    request_body = BudgetConfig,
    responses((status = 200, body = BudgetView), (status = 403, body = Problem), (status = 422, body = Problem)))]
async fn put_budget(
    State(paygent): State<Paygent>,
    Caller(who): Caller,
    Path(id): Path<Uuid>,
    Body(budget): Body<BudgetConfig>,
) -> ApiResult<Json<BudgetView>> {
    Ok(Json(paygent.set_budget(&who, id, budget).await?))
}

/// The session's memory: its last 100 commands and how each ended, oldest first.
#[utoipa::path(get, path = "/sessions/{id}/memory", tag = "sessions", params(("id" = Uuid, Path)),
    responses((status = 200, body = Vec<MemoryTurn>), (status = 404, body = Problem)))]
async fn get_memory(
    State(paygent): State<Paygent>,
    Caller(who): Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Vec<MemoryTurn>>> {
    Ok(Json(paygent.memory(&who, id).await?))
}

/// Counts of the session's payments, approvals and executions by status, with today's budget.
#[utoipa::path(get, path = "/sessions/{id}/summary", tag = "sessions", params(("id" = Uuid, Path)),
    responses((status = 200, body = SessionSummary), (status = 404, body = Problem)))]
async fn get_summary(
    State(paygent): State<Paygent>,
    Caller(who): Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<SessionSummary>> {
    Ok(Json(paygent.summary(&who, id).await?))
}

/// The session wallet's token balances, read from the chain now.
#[utoipa::path(get, path = "/sessions/{id}/balance", tag = "sessions", params(("id" = Uuid, Path)),
    responses((status = 200, body = Object, example = json!({"session_id": "…", "wallet": "0x…",
        "balances": [{"currency": "USDC", "amount": "995", "network": "eip155:338", "token": "0x…"}]})),
        (status = 404, body = Problem), (status = 422, body = Problem), (status = 501, body = Problem),
        (status = 503, body = Problem)))]
async fn get_balance(
    State(paygent): State<Paygent>,
    Caller(who): Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<serde_json::Value>> {
    Ok(Json(paygent.balances(&who, id).await?))
}
