//! Keys and tenants.

use super::ApiResult;
use crate::error::Problem;
use crate::extract::{Body, Caller, Path};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use paygent_engine::domain::Role;
use paygent_engine::{KeyView, NewKey, NewTenant, Paygent};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

pub fn router() -> OpenApiRouter<Paygent> {
    OpenApiRouter::new()
        .routes(routes!(create_key))
        .routes(routes!(create_tenant))
        .routes(routes!(me))
        .routes(routes!(revoke_key))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// Not blank.
    #[schema(min_length = 1, max_length = 100)]
    name: String,
    #[schema(value_type = String, example = "approver", pattern = "^(admin|approver|agent)$")]
    /// `admin`, `approver` or `agent`.
    role: Role,
    /// When the key stops working (RFC 3339, in the future); never, when absent.
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The policy the key's sessions are held to; the tenant's default when absent.
    policy_id: Option<Uuid>,
    /// The approver groups it is in, for policies' quorums that name groups.
    #[serde(default)]
    #[schema(max_items = 16, value_type = Vec<String>, example = json!(["finance"]))]
    groups: Vec<String>,
    /// The Slack user (its `U…` id) whose Approve and Reject buttons decide as this key; approvers and admins
    /// only, one live key per Slack user.
    #[schema(pattern = "^[UW][A-Z0-9]{2,23}$", example = "U0123ABCD")]
    slack_user: Option<String>,
    /// The address mails with one-time links to decide go to (a policy's `notify.email` names it); approvers and
    /// admins only, one live key per address.
    #[schema(max_length = 254, example = "alice@example.com")]
    email: Option<String>,
}

/// Creates a key in the caller's tenant. The token is shown only in this response.
#[utoipa::path(post, path = "/keys", tag = "keys", request_body = CreateKey,
    responses((status = 201, body = KeyView), (status = 400, body = Problem), (status = 403, body = Problem),
        (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn create_key(
    State(paygent): State<Paygent>,
    Caller(who): Caller,
    Body(req): Body<CreateKey>,
) -> ApiResult<(StatusCode, Json<KeyView>)> {
    let new = NewKey {
        name: req.name,
        role: req.role,
        expires_at: req.expires_at,
        policy_id: req.policy_id,
        groups: req.groups,
        slack_user: req.slack_user,
        email: req.email,
    };
    let key = paygent.create_key(&who, new).await?;
    Ok((StatusCode::CREATED, Json(key)))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    name: String,
}

/// Creates a tenant and its first admin key (admins of the default tenant only).
#[utoipa::path(post, path = "/tenants", tag = "keys", request_body = CreateTenant,
    responses((status = 201, body = NewTenant), (status = 403, body = Problem)))]
async fn create_tenant(
    State(paygent): State<Paygent>,
    Caller(who): Caller,
    Body(req): Body<CreateTenant>,
) -> ApiResult<(StatusCode, Json<NewTenant>)> {
    let tenant = paygent.create_tenant(&who, &req.name).await?;
    Ok((StatusCode::CREATED, Json(tenant)))
}

/// Who a key is.
#[derive(Serialize, ToSchema)]
pub struct Me {
    key_id: Uuid,
    tenant_id: Uuid,
    #[schema(value_type = String, example = "approver")]
    role: Role,
}

/// The calling key's id, tenant and role.
#[utoipa::path(get, path = "/me", tag = "keys", responses((status = 200, body = Me), (status = 401, body = Problem)))]
async fn me(Caller(who): Caller) -> Json<Me> {
    Json(Me {
        key_id: who.key_id,
        tenant_id: who.tenant_id,
        role: who.role,
    })
}

/// Revokes a key of the caller's tenant (admins); it stops working at once.
#[utoipa::path(delete, path = "/keys/{id}", tag = "keys", params(("id" = Uuid, Path)),
    responses((status = 204), (status = 403, body = Problem), (status = 404, body = Problem)))]
async fn revoke_key(
    State(paygent): State<Paygent>,
    Caller(who): Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    paygent.revoke_key(&who, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
