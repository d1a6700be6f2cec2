//! The audit trail, for admins and `paygent audit verify`.

use super::ApiResult;
use crate::error::Problem;
use crate::extract::{Caller, Query};
use axum::Json;
use axum::extract::{OriginalUri, State};
use axum::response::Response;
use chrono::{DateTime, Utc};
use paygent_engine::domain::audit::{Actions, AuditFilter, AuditFrom};
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

/// Which entries to read, and from where; every filter left out matches all.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    session_id: Option<Uuid>,
    /// An action (`approval.approved`) or a family of them, its name's first part (`approval`).
    #[param(pattern = "^[a-z_]+(\\.[a-z_]+)?$")]
    action: Option<String>,
    /// The acting key's id, or `system`.
    #[param(pattern = "^(system|[0-9a-fA-F-]{36})$")]
    actor: Option<String>,
    /// What the entries are about, as they name it: `approval:<id>`, `session:<id>`, ...
    #[param(max_length = 200)]
    subject: Option<String>,
    /// At or after this time.
    since: Option<DateTime<Utc>>,
    /// Before this time.
    until: Option<DateTime<Utc>>,
    /// Entries with a greater sequence number than this, oldest first (from the start if neither this nor
    /// `before` is given).
    #[param(minimum = 0)]
    after: Option<i64>,
    /// Entries with a smaller sequence number than this, newest first; not with `after`.
    #[param(minimum = 1)]
    before: Option<i64>,
    /// At most 1000 (more reads 1000); 500 by default.
    limit: Option<i64>,
}

/// The longest subject a search takes.
const MAX_SUBJECT: usize = 200;

impl AuditQuery {
    /// The filter and starting point asked for, or why they make no sense.
    fn asked(&self) -> Result<(AuditFilter, AuditFrom), EngineError> {
        let invalid = |why: &str| EngineError::Invalid(why.into());
        let actions = match &self.action {
            None => None,
            Some(name) => Some(Actions::parse(name).ok_or_else(|| {
                invalid("action: an audit action such as approval.approved, or a family such as approval")
            })?),
        };
        let actor = match self.actor.as_deref() {
            None => None,
            Some("system") => Some("system".to_owned()),
            Some(id) => Some(format!(
                "key:{}",
                Uuid::parse_str(id).map_err(|_| invalid("actor: a key's id, or system"))?
            )),
        };
        if self.subject.as_ref().is_some_and(|s| s.len() > MAX_SUBJECT) {
            return Err(invalid("subject: at most 200 characters"));
        }
        let from = match (self.after, self.before) {
            (Some(_), Some(_)) => return Err(invalid("after and before: one or the other")),
            (after, None) if after.unwrap_or(0) >= 0 => AuditFrom::After(after.unwrap_or(0)),
            (None, Some(before)) if before >= 1 => AuditFrom::Before(before),
            _ => return Err(invalid("after is 0 or more, before 1 or more")),
        };
        let filter = AuditFilter {
            session_id: self.session_id,
            actions,
            actor,
            subject: self.subject.clone(),
            since: self.since,
            until: self.until,
        };
        Ok((filter, from))
    }
}

/// Audit entries, each with `hash` and `prev_hash`, and the chain's head. At most 1,000 entries are looked at a
/// call: a filter few entries match may answer a short page, with `Link: <...>; rel="next"` to go on while there
/// may be more.
#[utoipa::path(get, path = "/audit", tag = "audit", params(AuditQuery),
    responses((status = 200, body = AuditPage, headers(("Link" = String, description = "the next page"))),
        (status = 400, body = Problem),
        (status = 403, body = Problem),
        (status = 422, body = Problem)))]
async fn list_audit(
    State(paygent): State<Paygent>,
    Caller(who): Caller,
    OriginalUri(uri): OriginalUri,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Response> {
    let (filter, from) = q.asked()?;
    let limit = q.limit.unwrap_or(500);
    let (found, next) = paygent.audit(&who, &filter, from, limit).await?;
    Ok(match next {
        Some(AuditFrom::Before(seq)) => {
            super::page_at(&uri, found, "before", Some(seq.to_string()))
        }
        Some(AuditFrom::After(seq)) => super::page(&uri, found, Some(seq.to_string())),
        None => super::page(&uri, found, None),
    })
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
