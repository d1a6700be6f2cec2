//! Policies: the rules people set for agents.

use super::ApiResult;
use crate::error::{ApiError, Problem};
use crate::extract::{Body, Caller, Path, Query};
use axum::Json;
use axum::extract::DefaultBodyLimit;
use axum::extract::State;
use axum::http::StatusCode;
use paygent_engine::domain::PolicyRules;
use paygent_engine::simulation::Simulation;
use paygent_engine::{Paygent, PolicyView};
use serde::Deserialize;
use serde_json::Value;
use utoipa::openapi::{RefOr, schema::Schema};
use utoipa::{IntoParams, PartialSchema, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

pub fn router() -> OpenApiRouter<Paygent> {
    OpenApiRouter::new()
        .routes(routes!(create_policy, list_policies))
        .routes(routes!(get_policy, put_policy))
        .routes(routes!(simulate))
        .layer(DefaultBodyLimit::max(crate::POLICY_BODY_LIMIT))
}

/// A policy's name beside its rules, in one flat object.
#[derive(Deserialize)]
pub struct NewPolicy {
    name: String,
    /// The rules, each optional with today's defaults.
    #[serde(flatten)]
    rules: Value,
}

/// Published as the rules' own schema with `name` beside them: serde's `flatten` would publish an `allOf` that
/// no object can satisfy, since the rules refuse fields they do not know.
impl utoipa::PartialSchema for NewPolicy {
    fn schema() -> RefOr<Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        let mut schema = PolicyRules::schema();
        if let RefOr::T(Schema::Object(rules)) = &mut schema {
            let name = ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(100))
                .pattern(Some(r"\S"))
                .examples(["ops"]);
            rules.properties.insert("name".into(), name.into());
            rules.required.push("name".into());
        }
        schema
    }
}

impl ToSchema for NewPolicy {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((PolicyRules::name().into(), PolicyRules::schema()));
        PolicyRules::schemas(schemas);
    }
}

/// Reads rules from JSON: unknown fields and numbers for money are malformed input (400).
fn rules(value: Value) -> Result<PolicyRules, ApiError> {
    serde_json::from_value(value).map_err(|e| ApiError::BadRequest(format!("bad rules: {e}")))
}

/// `default`, or a policy's id.
fn policy_ref(id: &str) -> Result<Option<Uuid>, ApiError> {
    match id {
        "default" => Ok(None),
        id => Uuid::parse_str(id)
            .map(Some)
            .map_err(|_| ApiError::BadRequest("a policy is `default` or a UUID".into())),
    }
}

/// Creates a policy (admins). Bind agent keys to it with `policy_id` when making them.
#[utoipa::path(post, path = "/policies", tag = "policies", request_body = NewPolicy,
    responses((status = 201, body = PolicyView), (status = 400, body = Problem), (status = 403, body = Problem),
        (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn create_policy(
    State(paygent): State<Paygent>,
    Caller(who): Caller,
    Body(req): Body<NewPolicy>,
) -> ApiResult<(StatusCode, Json<PolicyView>)> {
    let policy = paygent
        .create_policy(&who, &req.name, rules(req.rules)?)
        .await?;
    Ok((StatusCode::CREATED, Json(policy)))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PoliciesQuery {
    /// The last name of the previous page.
    after: Option<String>,
    /// At most 500.
    limit: Option<i64>,
}

/// The tenant's policies by name, the default first (approvers and admins).
#[utoipa::path(get, path = "/policies", tag = "policies", params(PoliciesQuery),
    responses((status = 200, body = Vec<PolicyView>), (status = 403, body = Problem)))]
async fn list_policies(
    State(paygent): State<Paygent>,
    Caller(who): Caller,
    Query(q): Query<PoliciesQuery>,
) -> ApiResult<Json<Vec<PolicyView>>> {
    let limit = q.limit.unwrap_or(super::DEFAULT_LIMIT);
    Ok(Json(
        paygent.policies(&who, q.after.as_deref(), limit).await?,
    ))
}

/// One policy, or the tenant's default (`default`), for approvers and admins.
#[utoipa::path(get, path = "/policies/{id}", tag = "policies", params(("id" = String, Path, description = "`default` or a policy id")),
    responses((status = 200, body = PolicyView), (status = 400, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem)))]
async fn get_policy(
    State(paygent): State<Paygent>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<PolicyView>> {
    Ok(Json(paygent.policy(&who, policy_ref(&id)?).await?))
}

/// Replaces a policy's rules (admins): a new version, audited with the old and new rules, in force for every
/// bound agent's next payment.
#[utoipa::path(put, path = "/policies/{id}", tag = "policies", params(("id" = String, Path, description = "`default` or a policy id")),
    request_body = PolicyRules,
    responses((status = 200, body = PolicyView), (status = 400, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn put_policy(
    State(paygent): State<Paygent>,
    Caller(who): Caller,
    Path(id): Path<String>,
    Body(body): Body<Value>,
) -> ApiResult<Json<PolicyView>> {
    let id = policy_ref(&id)?;
    Ok(Json(paygent.update_policy(&who, id, rules(body)?).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Simulate {
    /// The window's start (RFC 3339), included.
    from: chrono::DateTime<chrono::Utc>,
    /// Its end, excluded.
    to: chrono::DateTime<chrono::Utc>,
    /// Draft rules to replay instead of the policy's own (a policy's rules object); nothing is saved.
    #[schema(value_type = Option<PolicyRules>)]
    rules: Option<Value>,
}

/// Replays the payments that sessions held to a policy made in a time window, in order, against its rules (or a
/// draft of them), and counts what it would have allowed, sent to a person or denied, naming the payments it
/// would have treated otherwise (approvers and admins). Writes nothing. Replayed: the payee lists, maximum,
/// first-payment rule, thresholds, limits and velocity rules, counted from the window's start; not: sessions'
/// own budgets, stops, freezes and people's decisions (a payment sent to a person counts as approved). At most
/// 10,000 payments (`truncated` says when there were more).
#[utoipa::path(post, path = "/policies/{id}/simulate", tag = "policies",
    params(("id" = String, Path, description = "`default` or a policy id")), request_body = Simulate,
    responses((status = 200, body = Simulation), (status = 400, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 422, body = Problem)))]
async fn simulate(
    State(paygent): State<Paygent>,
    Caller(who): Caller,
    Path(id): Path<String>,
    Body(req): Body<Simulate>,
) -> ApiResult<Json<Simulation>> {
    let draft = req.rules.map(rules).transpose()?;
    let window = (req.from, req.to);
    let id = policy_ref(&id)?;
    Ok(Json(
        paygent.simulate_policy(&who, id, draft, window).await?,
    ))
}
