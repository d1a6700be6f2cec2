//! Liveness and readiness for load balancers.

use crate::error::ApiError;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use paygent_engine::Paygent;
use serde_json::{Value, json};

pub fn router() -> Router<Paygent> {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(ready))
}

/// Ready when the database answers.
async fn ready(State(paygent): State<Paygent>) -> Result<(StatusCode, Json<Value>), ApiError> {
    if paygent.store().ping().await {
        Ok((StatusCode::OK, Json(json!({"status": "ready"}))))
    } else {
        Err(ApiError::Unavailable)
    }
}
