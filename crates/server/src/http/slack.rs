//! Slack's interactivity endpoint: the Approve and Reject buttons of the messages Paygent posts come back here,
//! signed by Slack rather than carrying a key.

use super::ApiResult;
use crate::error::{ApiError, Problem};
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use paygent_engine::{ApprovalView, Paygent};
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn router() -> OpenApiRouter<Paygent> {
    OpenApiRouter::new().routes(routes!(press))
}

/// Set as the Slack app's Interactivity Request URL. Slack signs each press with the app's signing secret
/// (`X-Slack-Signature`, `X-Slack-Request-Timestamp`, within five minutes); the press decides as the key an admin
/// mapped to the Slack user who pressed (`slack_user`), on the action the message showed.
#[utoipa::path(post, path = "/slack/interactions", tag = "approvals", security(()),
    request_body(content = String, content_type = "application/x-www-form-urlencoded",
        description = "`payload`: Slack's `block_actions` interaction, as JSON"),
    params(("X-Slack-Signature" = String, Header, description = "`v0=` and the hex HMAC-SHA256"),
        ("X-Slack-Request-Timestamp" = String, Header, description = "Unix seconds")),
    responses((status = 200, body = ApprovalView, description = "decided"),
        (status = 401, body = Problem, description = "not signed by Slack, or signed over five minutes ago"),
        (status = 403, body = Problem, description = "the Slack user is mapped to no key that may decide it"),
        (status = 404, body = Problem, description = "no Slack app is set up, or no such request"),
        (status = 409, body = Problem, description = "already decided, or its action changed since"),
        (status = 422, body = Problem, description = "not a press of a Paygent button")))]
async fn press(
    State(paygent): State<Paygent>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<ApprovalView>> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    if !text(header::CONTENT_TYPE.as_str()).starts_with("application/x-www-form-urlencoded") {
        return Err(ApiError::UnsupportedMediaType(
            "Slack interactions are application/x-www-form-urlencoded".into(),
        ));
    }
    let view = paygent
        .slack_press(
            text("x-slack-request-timestamp"),
            text("x-slack-signature"),
            &body,
        )
        .await?;
    Ok(Json(view))
}
