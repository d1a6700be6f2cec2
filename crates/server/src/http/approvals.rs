//! Approval requests and people's decisions.

use super::{ApiResult, SessionPageQuery};
use crate::error::Problem;
use crate::extract::{Body, Caller, Path, Query};
use axum::Json;
use axum::extract::{OriginalUri, State};
use axum::response::Response;
use chrono::{DateTime, Utc};
use paygent_engine::domain::Decision;
use paygent_engine::domain::money::strict;
use paygent_engine::domain::standing::StandingTerms;
use paygent_engine::domain::{ApprovalStatus, Decimal};
use paygent_engine::{ApprovalView, EngineError, History, Paygent};
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

pub fn router() -> OpenApiRouter<Paygent> {
    OpenApiRouter::new()
        .routes(routes!(list_pending))
        .routes(routes!(list_decided))
        .routes(routes!(get_approval))
        .routes(routes!(approve))
        .routes(routes!(reject))
        .routes(routes!(edit))
}

/// Pending requests, oldest first, a page at a time (`Link: <...>; rel="next"` while there may be more).
#[utoipa::path(get, path = "/approvals/pending", tag = "approvals", params(SessionPageQuery),
    responses((status = 200, body = Vec<ApprovalView>, headers(("Link" = String, description = "the next page"))),
        (status = 403, body = Problem)))]
async fn list_pending(
    State(paygent): State<Paygent>,
    Caller(who): Caller,
    OriginalUri(uri): OriginalUri,
    Query(q): Query<SessionPageQuery>,
) -> ApiResult<Response> {
    let list = async |page| Ok(paygent.pending_approvals(&who, page).await?);
    q.answer(&uri, list, |x| x.id).await
}

/// The longest payee a search takes: an address, or an x402 URL.
const MAX_PAYEE: usize = 2048;

/// What to look for among decided requests; every part left out matches all.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DecidedQuery {
    session_id: Option<Uuid>,
    /// `approved`, `edited`, `rejected`, `expired` or `cancelled`.
    #[param(value_type = Option<String>, pattern = "^(approved|edited|rejected|expired|cancelled)$")]
    outcome: Option<ApprovalStatus>,
    /// The agent key that asked.
    agent: Option<Uuid>,
    /// The payee of the action decided on (an edit's, if edited): an address, compared without case, or a URL.
    #[param(max_length = 2048)]
    payee: Option<String>,
    /// At least this USD value.
    #[serde(default, deserialize_with = "strict::option")]
    #[param(value_type = Option<String>, pattern = r"^[0-9]{1,13}(\.[0-9]{1,6})?$")]
    min_usd: Option<Decimal>,
    /// At most this USD value.
    #[serde(default, deserialize_with = "strict::option")]
    #[param(value_type = Option<String>, pattern = r"^[0-9]{1,13}(\.[0-9]{1,6})?$")]
    max_usd: Option<Decimal>,
    /// Filed at or after this time.
    since: Option<DateTime<Utc>>,
    /// Filed before this time.
    until: Option<DateTime<Utc>>,
    /// The last id the previous page read (as the `Link` header gives it).
    after: Option<Uuid>,
    /// At most 500; 100 by default.
    limit: Option<i64>,
}

/// Decided requests, newest first, with outcome, decider, note and the payment that followed. At most 1,000
/// requests are read a call: a filter few match may answer a short page, with `Link: <...>; rel="next"` to go
/// on while there may be more.
#[utoipa::path(get, path = "/approvals/decided", tag = "approvals", params(DecidedQuery),
    responses((status = 200, body = Vec<ApprovalView>, headers(("Link" = String, description = "the next page"))),
        (status = 400, body = Problem),
        (status = 403, body = Problem),
        (status = 422, body = Problem)))]
async fn list_decided(
    State(paygent): State<Paygent>,
    Caller(who): Caller,
    OriginalUri(uri): OriginalUri,
    Query(q): Query<DecidedQuery>,
) -> ApiResult<Response> {
    if q.payee.as_ref().is_some_and(|p| p.len() > MAX_PAYEE) {
        let detail = format!("payee: at most {MAX_PAYEE} characters");
        return Err(EngineError::Invalid(detail).into());
    }
    if q.outcome == Some(ApprovalStatus::Pending) {
        return Err(EngineError::Invalid(
            "outcome: a decided request is approved, edited, rejected, expired or cancelled; pending ones are at \
             /approvals/pending"
                .into(),
        )
        .into());
    }
    let filter = History {
        outcome: q.outcome,
        agent: q.agent,
        payee: q.payee,
        min_usd: q.min_usd,
        max_usd: q.max_usd,
        since: q.since,
        until: q.until,
    };
    let asked = paygent_engine::Page {
        session_id: q.session_id,
        after: q.after,
        limit: q.limit.unwrap_or(super::DEFAULT_LIMIT),
    };
    let (found, next) = paygent.decided_approvals(&who, asked, &filter).await?;
    Ok(super::page(&uri, found, next.map(|id| id.to_string())))
}

/// One request, with its decision record. An agent reads only the requests on its own sessions.
#[utoipa::path(get, path = "/approvals/{id}", tag = "approvals", params(("id" = Uuid, Path)),
    responses((status = 200, body = ApprovalView), (status = 404, body = Problem)))]
async fn get_approval(
    State(paygent): State<Paygent>,
    Caller(who): Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<ApprovalView>> {
    Ok(Json(paygent.approval(&who, id).await?))
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct Approve {
    #[schema(max_length = 2000)]
    comment: Option<String>,
    /// The `digest` of the action the person was shown: the decision lands only on that action (409 if the
    /// request's is another).
    #[schema(pattern = "^sha256:[0-9a-f]{64}$")]
    digest: Option<String>,
    /// And let the session go on paying this payee, up to `max_usd` in total for `minutes`, without asking again
    /// (a payment request needing one person only).
    standing: Option<StandingTerms>,
}

/// Approves a pending request. A second decision gets 409; the key that asked for it gets 403.
#[utoipa::path(post, path = "/approvals/{id}/approve", tag = "approvals", params(("id" = Uuid, Path)),
    request_body = Approve,
    responses((status = 200, body = ApprovalView), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn approve(
    State(paygent): State<Paygent>,
    Caller(who): Caller,
    Path(id): Path<Uuid>,
    Body(req): Body<Approve>,
) -> ApiResult<Json<ApprovalView>> {
    let decision = Decision::Approve {
        comment: req.comment,
        standing: req.standing,
    };
    let seen = req.digest.as_deref();
    Ok(Json(paygent.decide(&who, id, decision, seen).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Reject {
    /// Not blank.
    #[schema(min_length = 1, max_length = 2000, pattern = r"\S")]
    reason: String,
    /// The `digest` of the action the person was shown: the decision lands only on that action (409 if the
    /// request's is another).
    #[schema(pattern = "^sha256:[0-9a-f]{64}$")]
    digest: Option<String>,
}

/// Rejects a pending request; the reason is stored.
#[utoipa::path(post, path = "/approvals/{id}/reject", tag = "approvals", params(("id" = Uuid, Path)),
    request_body = Reject,
    responses((status = 200, body = ApprovalView), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn reject(
    State(paygent): State<Paygent>,
    Caller(who): Caller,
    Path(id): Path<Uuid>,
    Body(req): Body<Reject>,
) -> ApiResult<Json<ApprovalView>> {
    let decision = Decision::Reject { reason: req.reason };
    let seen = req.digest.as_deref();
    Ok(Json(paygent.decide(&who, id, decision, seen).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Edit {
    /// The arguments to change: any of `amount`, `currency`, `recipient`, `description`.
    #[schema(value_type = Object, example = json!({"amount": "12.00"}))]
    edited_args: Value,
    #[schema(max_length = 2000)]
    comment: Option<String>,
    /// The `digest` of the action the person was shown: the decision lands only on that action (409 if the
    /// request's is another).
    #[schema(pattern = "^sha256:[0-9a-f]{64}$")]
    digest: Option<String>,
}

/// Edits and approves in one step. The edited arguments are validated again; an approver cannot raise the
/// USD value above what was asked.
#[utoipa::path(post, path = "/approvals/{id}/edit", tag = "approvals", params(("id" = Uuid, Path)),
    request_body = Edit,
    responses((status = 200, body = ApprovalView), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn edit(
    State(paygent): State<Paygent>,
    Caller(who): Caller,
    Path(id): Path<Uuid>,
    Body(req): Body<Edit>,
) -> ApiResult<Json<ApprovalView>> {
    let decision = Decision::Edit {
        edited_args: req.edited_args,
        comment: req.comment,
    };
    let seen = req.digest.as_deref();
    Ok(Json(paygent.decide(&who, id, decision, seen).await?))
}
