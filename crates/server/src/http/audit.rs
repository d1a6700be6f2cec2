//! The audit trail, for admins and `paygent audit verify`.

use super::ApiResult;
use crate::error::Problem;
use crate::extract::{Caller, Query};
use axum::Json;
use axum::extract::State;
use paygent_engine::{AuditPage, ChainCheck, Paygent};
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

/// Audit entries in order, each with `hash` and `prev_hash`, and the chain's head.
#[utoipa::path(get, path = "/audit", tag = "audit", params(AuditQuery),
    responses((status = 200, body = AuditPage), (status = 403, body = Problem)))]
async fn list_audit(
    State(paygent): State<Paygent>,
    Caller(who): Caller,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<AuditPage>> {
    let page = paygent
        .audit(
            &who,
            q.session_id,
            q.after.unwrap_or(0),
            q.limit.unwrap_or(500),
        )
        .await?;
    Ok(Json(page))
}

/// Walks the whole chain on the server and says whether it holds, or where it first breaks.
#[utoipa::path(get, path = "/audit/verify", tag = "audit",
    responses((status = 200, body = ChainCheck), (status = 403, body = Problem)))]
async fn verify_audit(
    State(paygent): State<Paygent>,
    Caller(who): Caller,
) -> ApiResult<Json<ChainCheck>> {
    Ok(Json(paygent.verify_audit(&who).await?))
}
