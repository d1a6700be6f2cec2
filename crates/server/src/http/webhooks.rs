//! Webhooks (admins): endpoints that receive the tenant's events, signed as Standard Webhooks says, and their
//! delivery log.

use super::{ApiResult, SessionPageQuery};
use crate::error::Problem;
use crate::extract::{Body, Caller, Path, Query};
use axum::Json;
use axum::extract::{OriginalUri, State};
use axum::http::StatusCode;
use axum::response::Response;
use paygent_engine::Paygent;
use paygent_engine::webhooks::{DeliveryView, NewWebhook, WebhookView};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

pub fn router() -> OpenApiRouter<Paygent> {
    OpenApiRouter::new()
        .routes(routes!(create_webhook, list_webhooks))
        .routes(routes!(delete_webhook))
        .routes(routes!(rotate_secret))
        .routes(routes!(enable_webhook))
        .routes(routes!(deliveries))
}

/// Registers an endpoint for the tenant's events from now on (all types unless `events` names some). The answer
/// carries its `secret`, shown this once.
#[utoipa::path(post, path = "/webhooks", tag = "webhooks", request_body = NewWebhook,
    responses((status = 201, body = WebhookView), (status = 403, body = Problem), (status = 422, body = Problem)))]
async fn create_webhook(
    State(paygent): State<Paygent>,
    Caller(who): Caller,
    Body(new): Body<NewWebhook>,
) -> ApiResult<(StatusCode, Json<WebhookView>)> {
    Ok((
        StatusCode::CREATED,
        Json(paygent.create_webhook(&who, new).await?),
    ))
}

/// The tenant's webhooks, a page at a time, without their secrets.
#[utoipa::path(get, path = "/webhooks", tag = "webhooks", params(SessionPageQuery),
    responses((status = 200, body = Vec<WebhookView>, headers(("Link" = String, description = "the next page"))),
        (status = 403, body = Problem)))]
async fn list_webhooks(
    State(paygent): State<Paygent>,
    Caller(who): Caller,
    OriginalUri(uri): OriginalUri,
    Query(q): Query<SessionPageQuery>,
) -> ApiResult<Response> {
    let list = async |page| Ok(paygent.webhooks(&who, page).await?);
    q.answer(&uri, list, |x| x.id).await
}

/// Removes a webhook and its delivery log: nothing more is sent to it.
#[utoipa::path(delete, path = "/webhooks/{id}", tag = "webhooks", params(("id" = Uuid, Path)),
    responses((status = 204), (status = 403, body = Problem), (status = 404, body = Problem)))]
async fn delete_webhook(
    State(paygent): State<Paygent>,
    Caller(who): Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    paygent.delete_webhook(&who, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A new secret, in the answer; deliveries carry a signature by the old one too for 24 hours.
#[utoipa::path(post, path = "/webhooks/{id}/rotate-secret", tag = "webhooks", params(("id" = Uuid, Path)),
    responses((status = 200, body = WebhookView), (status = 403, body = Problem), (status = 404, body = Problem)))]
async fn rotate_secret(
    State(paygent): State<Paygent>,
    Caller(who): Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<WebhookView>> {
    Ok(Json(paygent.rotate_webhook_secret(&who, id).await?))
}

/// Enables a webhook that was disabled after failing for a day: it goes on from the event where it stopped.
/// 409 if it is not disabled.
#[utoipa::path(post, path = "/webhooks/{id}/enable", tag = "webhooks", params(("id" = Uuid, Path)),
    responses((status = 200, body = WebhookView), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem)))]
async fn enable_webhook(
    State(paygent): State<Paygent>,
    Caller(who): Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<WebhookView>> {
    Ok(Json(paygent.enable_webhook(&who, id).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
struct DeliveryPage {
    /// The page before this event's attempt `before_attempt` (the last row of the previous page).
    before_seq: Option<i64>,
    before_attempt: Option<i64>,
    /// At most 500; 100 by default.
    limit: Option<i64>,
}

/// The delivery log, newest first: each attempt's event, time, status or error, and latency.
#[utoipa::path(get, path = "/webhooks/{id}/deliveries", tag = "webhooks", params(("id" = Uuid, Path), DeliveryPage),
    responses((status = 200, body = Vec<DeliveryView>), (status = 403, body = Problem), (status = 404, body = Problem)))]
async fn deliveries(
    State(paygent): State<Paygent>,
    Caller(who): Caller,
    Path(id): Path<Uuid>,
    Query(q): Query<DeliveryPage>,
) -> ApiResult<Json<Vec<DeliveryView>>> {
    let before = q
        .before_seq
        .map(|s| (s, q.before_attempt.unwrap_or(i64::MAX)));
    let limit = q.limit.unwrap_or(100);
    Ok(Json(
        paygent.webhook_deliveries(&who, id, before, limit).await?,
    ))
}
