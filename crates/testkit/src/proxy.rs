//! A reverse proxy on loopback that holds one request until the test lets it go: the way to stop the world
//! while a payment is between two of its steps, without hooks in the code under test.

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::Notify;

struct Gate {
    upstream: String,
    held: usize,
    seen: AtomicUsize,
    arrived: Notify,
    open: Notify,
    http: reqwest::Client,
}

/// Forwards every request to its upstream, holding the `held`-th (counting from 1) until [`GatedProxy::open`].
pub struct GatedProxy {
    pub base: String,
    gate: Arc<Gate>,
}

impl GatedProxy {
    /// Listens on loopback for requests to forward to `upstream` (`http://127.0.0.1:port`).
    pub async fn start(upstream: &str, held: usize) -> GatedProxy {
        let gate = Arc::new(Gate {
            upstream: upstream.trim_end_matches('/').to_owned(),
            held,
            seen: AtomicUsize::new(0),
            arrived: Notify::new(),
            open: Notify::new(),
            http: reqwest::Client::new(),
        });
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(gate.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        GatedProxy { base, gate }
    }

    /// Waits, for at most 30 s, until the held request has arrived.
    pub async fn held(&self) {
        let arrived = self.gate.arrived.notified();
        tokio::time::timeout(std::time::Duration::from_secs(30), arrived)
            .await
            .expect("the request to hold arrived within 30 s");
    }

    /// Lets the held request go on to its upstream.
    pub fn open(&self) {
        self.gate.open.notify_one();
    }
}

async fn forward(State(gate): State<Arc<Gate>>, request: Request) -> Response {
    if gate.seen.fetch_add(1, Ordering::SeqCst) + 1 == gate.held {
        gate.arrived.notify_one();
        gate.open.notified().await;
    }
    let (parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let mut headers = parts.headers;
    headers.remove(axum::http::header::HOST);
    let sent = gate
        .http
        .request(parts.method, format!("{}{path}", gate.upstream))
        .headers(headers)
        .body(body)
        .send()
        .await;
    match sent {
        Ok(answer) => {
            let status = answer.status();
            let headers = passed_on(answer.headers());
            let body = answer.bytes().await.unwrap_or_else(|_| Bytes::new());
            let mut response = Response::new(Body::from(body));
            *response.status_mut() = status;
            *response.headers_mut() = headers;
            response
        }
        Err(e) => {
            let mut response = Response::new(Body::from(e.to_string()));
            *response.status_mut() = StatusCode::BAD_GATEWAY;
            response
        }
    }
}

/// The upstream's headers but those of its own connection and framing.
fn passed_on(headers: &HeaderMap) -> HeaderMap {
    let mut kept = headers.clone();
    for name in [
        "connection",
        "transfer-encoding",
        "content-length",
        "keep-alive",
    ] {
        kept.remove(name);
    }
    kept
}
