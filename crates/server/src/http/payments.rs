//! Payments: the guard's front door.

use super::{ApiResult, SessionPageQuery};
use crate::error::Problem;
use crate::extract::{Body, Caller, Path, Query};
use axum::Json;
use axum::extract::{OriginalUri, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use paygent_engine::domain::PaymentStatus;
use paygent_engine::{Evaluation, Paygent, PaymentRequest, PaymentView};
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

pub fn router() -> OpenApiRouter<Paygent> {
    OpenApiRouter::new()
        .routes(routes!(create_payment, list_payments))
        .routes(routes!(get_payment))
        .routes(routes!(report_outcome))
        .routes(routes!(execute_approved))
        .routes(routes!(evaluate_payment))
}

impl From<CreatePayment> for PaymentRequest {
    fn from(req: CreatePayment) -> Self {
        PaymentRequest {
            session_id: req.session_id,
            amount: req.amount,
            currency: req.currency,
            recipient: req.recipient,
            description: req.description,
            idempotency_key: req.idempotency_key,
            swap: None,
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePayment {
    session_id: Uuid,
    /// A decimal string greater than zero, never a number, with no more decimals than the currency has. For an
    /// x402 URL, the most the agent will pay.
    #[schema(example = "15.00", pattern = r"^[0-9]{1,16}(\.[0-9]{1,18})?$")]
    amount: String,
    /// A currency with a price on this server.
    #[schema(example = "USDC", pattern = "^[A-Z0-9]{1,12}$")]
    currency: String,
    /// An EVM address (`0x` and 40 hex digits) or an x402 `http(s)://` URL (no user part).
    #[schema(
        max_length = 2048,
        pattern = r"^(0x[0-9a-fA-F]{40}|https?://[^/?#@\s]+[!-~]*)$"
    )]
    recipient: String,
    #[schema(max_length = 500)]
    description: Option<String>,
    /// Retrying with the same key returns the same payment. Printable ASCII.
    #[schema(min_length = 1, max_length = 255, pattern = "^[!-~]+$")]
    idempotency_key: Option<String>,
}

/// What the guard would do with this payment request now (the body of `POST /payments`), and every check that
/// found something, with the budget as it would be after it. Nothing is written: no payment, no reservation,
/// no audit entry, no event.
#[utoipa::path(post, path = "/payments/evaluate", tag = "payments", request_body = CreatePayment,
    responses((status = 200, body = Evaluation), (status = 404, body = Problem), (status = 422, body = Problem)))]
async fn evaluate_payment(
    State(paygent): State<Paygent>,
    Caller(who): Caller,
    Body(req): Body<CreatePayment>,
) -> ApiResult<Json<Evaluation>> {
    Ok(Json(paygent.evaluate_payment(&who, req.into()).await?))
}

/// Set on a response that repeats an earlier payment for the same idempotency key.
const REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// Runs a payment through the guard: `authorized` (or `executed`), `pending_approval` with an `approval_id`,
/// or `denied` with a `reason`. For an x402 URL that a rail here pays, the service is asked its price first: the
/// guard decides on that price (`amount`, with `max_amount` the agent's maximum), a price above the maximum is
/// `failed` before anything is signed, and a resource that asks for nothing is 422 `nothing-to-pay`.
#[utoipa::path(post, path = "/payments", tag = "payments", request_body = CreatePayment,
    responses((status = 201, body = PaymentView), (status = 400, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem),
        (status = 422, body = Problem, description = "invalid, or an x402 resource that asks for no payment"),
        (status = 429, body = Problem, description = "rate limited, or too many requests waiting on people")))]
async fn create_payment(
    State(paygent): State<Paygent>,
    Caller(who): Caller,
    Body(req): Body<CreatePayment>,
) -> ApiResult<(
    StatusCode,
    [(HeaderName, HeaderValue); 1],
    Json<PaymentView>,
)> {
    let submitted = paygent.submit_payment(&who, req.into()).await?;
    let replayed = HeaderValue::from_static(if submitted.replayed { "true" } else { "false" });
    Ok((
        StatusCode::CREATED,
        [(REPLAYED, replayed)],
        Json(submitted.payment),
    ))
}

/// Payment history, newest first, a page at a time (`Link: <...>; rel="next"` while there may be more).
#[utoipa::path(get, path = "/payments", tag = "payments", params(SessionPageQuery),
    responses((status = 200, body = Vec<PaymentView>, headers(("Link" = String, description = "the next page")))))]
async fn list_payments(
    State(paygent): State<Paygent>,
    Caller(who): Caller,
    OriginalUri(uri): OriginalUri,
    Query(q): Query<SessionPageQuery>,
) -> ApiResult<Response> {
    let list = async |page| Ok(paygent.payments(&who, page).await?);
    q.answer(&uri, list, |x| x.id).await
}

#[utoipa::path(get, path = "/payments/{id}", tag = "payments", params(("id" = Uuid, Path)),
    responses((status = 200, body = PaymentView), (status = 404, body = Problem)))]
async fn get_payment(
    State(paygent): State<Paygent>,
    Caller(who): Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<PaymentView>> {
    Ok(Json(paygent.payment(&who, id).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Outcome {
    #[schema(value_type = String, example = "executed")]
    /// `executed` or `failed`.
    status: PaymentStatus,
    #[schema(pattern = "^0x[0-9a-fA-F]{64}$")]
    tx_hash: Option<String>,
}

/// For an `authorized` payment the agent made itself: the key that requested it reports how it ended (403 for
/// any other key; 409 if a rail of Paygent's carries it). `failed` gives the budget back only without a
/// `tx_hash`: a transaction may have moved money.
#[utoipa::path(post, path = "/payments/{id}/outcome", tag = "payments", params(("id" = Uuid, Path)),
    request_body = Outcome,
    responses((status = 200, body = PaymentView), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn report_outcome(
    State(paygent): State<Paygent>,
    Caller(who): Caller,
    Path(id): Path<Uuid>,
    Body(req): Body<Outcome>,
) -> ApiResult<Json<PaymentView>> {
    let payment = paygent
        .report_outcome(&who, id, req.status, req.tx_hash.as_deref())
        .await?;
    Ok(Json(payment))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecuteApproved {
    approval_id: Uuid,
}

/// Executes an approved or edited request exactly once, with the approved arguments. A repeat returns the
/// same payment. It never takes arguments from the caller.
#[utoipa::path(post, path = "/payments/execute-approved", tag = "payments", request_body = ExecuteApproved,
    responses((status = 200, body = PaymentView), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn execute_approved(
    State(paygent): State<Paygent>,
    Caller(who): Caller,
    Body(req): Body<ExecuteApproved>,
) -> ApiResult<Json<PaymentView>> {
    Ok(Json(paygent.execute_approved(&who, req.approval_id).await?))
}
