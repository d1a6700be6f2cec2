//! Spend you can see: `GET /spend`, the figures behind the console's bars and charts.

use super::ApiResult;
use crate::error::Problem;
use crate::extract::{Caller, Query};
use axum::Json;
use axum::extract::State;
use paygent_engine::domain::spend::SpendScope;
use paygent_engine::{EngineError, Paygent, SpendView};
use serde::Deserialize;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

pub fn router() -> OpenApiRouter<Paygent> {
    OpenApiRouter::new().routes(routes!(spend))
}

/// Whose spend: the tenant's when neither is given.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SpendQuery {
    /// An agent key: its spend across its sessions, and its policy's limits.
    agent_id: Option<Uuid>,
    /// A session: its spend, and its budget today.
    session_id: Option<Uuid>,
}

/// Spend of the tenant, an agent key or a session (approvers and admins): each of the last 24 hours and 30 days
/// (UTC, by when payments were asked for; spent payments only), the ten payees paid most over those days, and
/// where the limits stand today (a session's `budget`, an agent's `limits`, reservations included). Read from
/// rollups written with each payment, so it takes the same time however many payments are stored.
#[utoipa::path(get, path = "/spend", tag = "payments", params(SpendQuery),
    responses((status = 200, body = SpendView),
        (status = 403, body = Problem, description = "an agent key"),
        (status = 404, body = Problem, description = "no such agent key or session in the tenant"),
        (status = 422, body = Problem, description = "both agent_id and session_id")))]
async fn spend(
    State(paygent): State<Paygent>,
    Caller(who): Caller,
    Query(q): Query<SpendQuery>,
) -> ApiResult<Json<SpendView>> {
    let scope = match (q.agent_id, q.session_id) {
        (None, None) => SpendScope::Tenant,
        (Some(id), None) => SpendScope::Agent(id),
        (None, Some(id)) => SpendScope::Session(id),
        (Some(_), Some(_)) => {
            let why = "give agent_id or session_id, not both";
            return Err(EngineError::Invalid(why.into()).into());
        }
    };
    Ok(Json(paygent.spend(&who, scope).await?))
}
