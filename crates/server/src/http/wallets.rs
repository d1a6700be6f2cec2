//! Wallets: which tenant may pay from which of the wallets Paygent holds keys for.

use super::ApiResult;
use crate::error::Problem;
use crate::extract::{Body, Caller, Path};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use paygent_engine::Paygent;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

pub fn router() -> OpenApiRouter<Paygent> {
    OpenApiRouter::new()
        .routes(routes!(list_wallets))
        .routes(routes!(assign_wallet))
}

/// The addresses of the caller's tenant's wallets (approvers and admins). Sessions may name only these.
#[utoipa::path(get, path = "/wallets", tag = "wallets",
    responses((status = 200, body = Vec<String>), (status = 403, body = Problem)))]
async fn list_wallets(
    State(paygent): State<Paygent>,
    Caller(who): Caller,
) -> ApiResult<Json<Vec<String>>> {
    Ok(Json(paygent.wallets(&who).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AssignWallet {
    /// The tenant that may pay from the wallet from now on.
    tenant_id: Uuid,
}

/// Gives a configured wallet to a tenant (admins of the default tenant: the operator). New wallets in the
/// configuration start as the default tenant's.
#[utoipa::path(put, path = "/wallets/{address}", tag = "wallets", params(("address" = String, Path)),
    request_body = AssignWallet,
    responses((status = 204), (status = 400, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
async fn assign_wallet(
    State(paygent): State<Paygent>,
    Caller(who): Caller,
    Path(address): Path<String>,
    Body(req): Body<AssignWallet>,
) -> ApiResult<StatusCode> {
    paygent.assign_wallet(&who, &address, req.tenant_id).await?;
    Ok(StatusCode::NO_CONTENT)
}
