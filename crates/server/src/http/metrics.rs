//! `GET /metrics`: what Paygent decided and did, in Prometheus's text format (OpenMetrics). Without a key from
//! loopback, where a local Prometheus or agent scrapes (unless configured otherwise); from anywhere else, with an
//! admin key.

use crate::error::ApiError;
use crate::extract::Caller;
use axum::Router;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use paygent_engine::domain::Role;
use paygent_engine::{EngineError, Paygent};
use std::net::SocketAddr;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Whether loopback reads the metrics without a key.
#[derive(Debug, Clone, Copy)]
pub struct KeylessLoopback(pub bool);

pub fn router() -> Router<Paygent> {
    Router::new().route("/metrics", get(metrics))
}

async fn metrics(
    State(paygent): State<Paygent>,
    req: Request,
) -> Result<impl IntoResponse, ApiError> {
    let (mut parts, _) = req.into_parts();
    let keyless = parts
        .extensions
        .get::<KeylessLoopback>()
        .is_some_and(|k| k.0);
    let local = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .is_some_and(|ConnectInfo(peer)| peer.ip().to_canonical().is_loopback());
    if !(keyless && local) {
        let Caller(who) = Caller::from_request_parts(&mut parts, &paygent).await?;
        if who.role != Role::Admin {
            return Err(
                EngineError::Forbidden("metrics are for admins, or from loopback".into()).into(),
            );
        }
    }
    Ok(([(CONTENT_TYPE, OPENMETRICS)], paygent.metrics_text().await?))
}
