//! Standing approvals: granted with an approval (`standing` on `POST /approvals/{id}/approve`), listed, and
//! revoked at once.

use super::{ApiResult, SessionPageQuery};
use crate::error::Problem;
use crate::extract::{Caller, Path, Query};
use axum::Json;
use axum::extract::{OriginalUri, State};
use axum::response::Response;
use paygent_engine::Paygent;
use paygent_engine::standing::StandingView;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

pub fn router() -> OpenApiRouter<Paygent> {
    OpenApiRouter::new()
        .routes(routes!(list_standing))
        .routes(routes!(revoke_standing))
}

/// Standing approvals, newest first, a page at a time (`Link: <...>; rel="next"` while there may be more):
/// the tenant's for people, an agent's own sessions' for an agent.
#[utoipa::path(get, path = "/standing-approvals", tag = "approvals", params(SessionPageQuery),
    responses((status = 200, body = Vec<StandingView>, headers(("Link" = String, description = "the next page")))))]
async fn list_standing(
    State(paygent): State<Paygent>,
    Caller(who): Caller,
    OriginalUri(uri): OriginalUri,
    Query(q): Query<SessionPageQuery>,
) -> ApiResult<Response> {
    let list = async |page| Ok(paygent.standing_approvals(&who, page).await?);
    q.answer(&uri, list, |x| x.id).await
}

/// Revokes a standing approval at once (approvers and admins): the next payment it would have covered asks a
/// person again. A second revocation gets 409.
#[utoipa::path(delete, path = "/standing-approvals/{id}", tag = "approvals", params(("id" = Uuid, Path)),
    responses((status = 200, body = StandingView), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem)))]
async fn revoke_standing(
    State(paygent): State<Paygent>,
    Caller(who): Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<StandingView>> {
    Ok(Json(paygent.revoke_standing(&who, id).await?))
}
