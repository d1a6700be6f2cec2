//! Agent executions: plans of tool calls that pause for people and stop on a kill.

use super::{ApiResult, SessionPageQuery};
use crate::error::Problem;
use crate::extract::{Body, Caller, Path, Query};
use axum::Json;
use axum::extract::{OriginalUri, State};
use axum::http::StatusCode;
use axum::response::Response;
use paygent_engine::domain::command::Step;
use paygent_engine::{EngineError, ExecutionView, Paygent, Plan};
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

pub fn router() -> OpenApiRouter<Paygent> {
    OpenApiRouter::new()
        .routes(routes!(execute))
        .routes(routes!(list_executions))
        .routes(routes!(get_execution))
        .routes(routes!(cancel_execution))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlannedStep {
    /// `transfer`, `x402_payment`, `http_get` or `wait`.
    tool: String,
    #[schema(value_type = Object, example = json!({"to": "0x1111111111111111111111111111111111111111", "amount": "5", "currency": "USDC"}))]
    args: Value,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Execute {
    session_id: Uuid,
    /// A plain-language command, e.g. "Transfer 5 USDC to 0x... then fetch https://...".
    command: Option<String>,
    /// Or the steps themselves.
    steps: Option<Vec<PlannedStep>>,
}

/// Starts an execution: answers 202 at once; follow it with `GET /executions/{id}` or the live channel.
#[utoipa::path(post, path = "/agent/execute", tag = "executions", request_body = Execute,
    responses((status = 202, body = ExecutionView), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn execute(
    State(paygent): State<Paygent>,
    Caller(who): Caller,
    Body(req): Body<Execute>,
) -> ApiResult<(StatusCode, Json<ExecutionView>)> {
    let plan = match (req.command, req.steps) {
        (Some(command), None) => Plan::Command(command),
        (None, Some(steps)) => Plan::Steps(
            steps
                .into_iter()
                .map(|s| Step {
                    tool: s.tool,
                    args: s.args,
                })
                .collect(),
        ),
        _ => {
            return Err(
                EngineError::Invalid("give either a command or steps, not both".into()).into(),
            );
        }
    };
    let execution = paygent.start_execution(&who, req.session_id, plan).await?;
    Ok((StatusCode::ACCEPTED, Json(execution)))
}

/// Executions, newest first (without their steps), a page at a time (`Link: <...>; rel="next"`).
#[utoipa::path(get, path = "/executions", tag = "executions", params(SessionPageQuery),
    responses((status = 200, body = Vec<ExecutionView>, headers(("Link" = String, description = "the next page")))))]
async fn list_executions(
    State(paygent): State<Paygent>,
    Caller(who): Caller,
    OriginalUri(uri): OriginalUri,
    Query(q): Query<SessionPageQuery>,
) -> ApiResult<Response> {
    let list = async |page| Ok(paygent.executions(&who, page).await?);
    q.answer(&uri, list, |x| x.id).await
}

/// An execution with its steps: args, status, result, error, cost and duration of each.
#[utoipa::path(get, path = "/executions/{id}", tag = "executions", params(("id" = Uuid, Path)),
    responses((status = 200, body = ExecutionView), (status = 404, body = Problem)))]
async fn get_execution(
    State(paygent): State<Paygent>,
    Caller(who): Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<ExecutionView>> {
    Ok(Json(paygent.execution(&who, id).await?))
}

/// Kills one execution: its in-flight step is aborted and the approval it waits on is cancelled.
#[utoipa::path(post, path = "/executions/{id}/cancel", tag = "executions", params(("id" = Uuid, Path)),
    responses((status = 200, body = ExecutionView), (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn cancel_execution(
    State(paygent): State<Paygent>,
    Caller(who): Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<ExecutionView>> {
    Ok(Json(paygent.cancel_execution(&who, id).await?))
}
