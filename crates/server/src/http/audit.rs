//! The audit trail, for admins and `paygent audit verify`.

use super::ApiResult;
use crate::error::Problem;
use crate::extract::{Caller, Query};
use axum::Json;
use axum::extract::{OriginalUri, State};
use axum::response::Response;
use paygent_engine::{Anchor, AuditPage, ChainCheck, EngineError, Paygent};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

pub fn router() -> OpenApiRouter<Paygent> {
    OpenApiRouter::new()
        .routes(routes!(list_audit))
        .routes(routes!(verify_audit))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    session_id: Option<Uuid>,
    /// Entries with a greater sequence number than this.
    after: Option<i64>,
    /// At most 1000.
    limit: Option<i64>,
}

/// Audit entries in order, each with `hash` and `prev_hash`, and the chain's head; `Link: <...>; rel="next"`
/// while there may be more.
#[utoipa::path(get, path = "/audit", tag = "audit", params(AuditQuery),
    responses((status = 200, body = AuditPage, headers(("Link" = String, description = "the next page"))),
        (status = 403, body = Problem)))]
async fn list_audit(
    State(paygent): State<Paygent>,
    Caller(who): Caller,
    OriginalUri(uri): OriginalUri,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Response> {
    let limit = q.limit.unwrap_or(500).clamp(1, 1000);
    let found = paygent
        .audit(&who, q.session_id, q.after.unwrap_or(0), limit)
        .await?;
    let next = super::next_after(&found.entries, limit, |e| e.entry.seq.to_string());
    Ok(super::page(&uri, found, next))
}

/// An anchor: a head of the chain (`head_seq`, `head_hash` of an earlier answer) kept outside Paygent.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct VerifyQuery {
    /// The anchored entry's sequence number; with `hash`.
    #[param(minimum = 1)]
    seq: Option<i64>,
    /// Its hash; with `seq`.
    hash: Option<String>,
}

/// Walks the whole chain on the server and says whether it holds, or where it first breaks. With an anchor
/// saved from an earlier answer, it also says whether that entry is still the one anchored: the chain's own head
/// is in the same database, an anchor kept elsewhere catches a rewrite of both.
#[utoipa::path(get, path = "/audit/verify", tag = "audit", params(VerifyQuery),
    responses((status = 200, body = ChainCheck), (status = 403, body = Problem),
        (status = 422, body = Problem, description = "`seq` without `hash`, or the reverse")))]
async fn verify_audit(
    State(paygent): State<Paygent>,
    Caller(who): Caller,
    Query(q): Query<VerifyQuery>,
) -> ApiResult<Json<ChainCheck>> {
    let anchor = match (q.seq, q.hash) {
        (None, None) => None,
        (Some(seq), Some(hash)) if seq >= 1 => Some(Anchor { seq, hash }),
        _ => {
            let why = "an anchor is seq (1 or more) and hash, together";
            return Err(EngineError::Invalid(why.into()).into());
        }
    };
    Ok(Json(paygent.verify_audit(&who, anchor).await?))
}
