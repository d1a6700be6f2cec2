//! A reverse proxy on loopback that holds one request until the test lets it go: the way to stop the world
//! while a payment is between two of its steps (asking a price, broadcasting a transaction), without hooks in
//! the code under test. Before a JSON-RPC node it can also play one whose receipts lag its state.

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Which request to hold once the proxy is armed.
#[derive(Debug, Clone, Copy)]
pub enum Hold {
    /// The n-th request after arming, counting from 1.
    Nth(usize),
    /// The first request whose body contains this text (a JSON-RPC method's name).
    Containing(&'static str),
}

struct Gate {
    upstream: String,
    /// The hold armed, and the requests seen since.
    armed: Mutex<Option<(Hold, usize)>>,
    arrived: Notify,
    open: Notify,
    http: reqwest::Client,
    /// Whether receipts are answered as not found, and how many were.
    lagging: AtomicBool,
    hidden: AtomicUsize,
}

/// Forwards every request to its upstream, holding the one [`GatedProxy::arm`] names until
/// [`GatedProxy::open`].
pub struct GatedProxy {
    pub base: String,
    gate: Arc<Gate>,
}

impl GatedProxy {
    /// Listens on loopback for requests to forward to `upstream` (`http://127.0.0.1:port`), holding none.
    pub async fn start(upstream: &str) -> GatedProxy {
        let gate = Arc::new(Gate {
            upstream: upstream.trim_end_matches('/').to_owned(),
            armed: Mutex::new(None),
            arrived: Notify::new(),
            open: Notify::new(),
            http: reqwest::Client::new(),
            lagging: AtomicBool::new(false),
            hidden: AtomicUsize::new(0),
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

    /// Holds the request `hold` names, once.
    pub fn arm(&self, hold: Hold) {
        *self.gate.armed.lock().expect("armed") = Some((hold, 0));
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

    /// While on, `eth_getTransactionReceipt` is answered "not found" whatever the chain holds, and everything
    /// else is passed on: a node (or one behind a load balancer) that answers state before it has indexed the
    /// receipts of the blocks that made it.
    pub fn lag_receipts(&self, on: bool) {
        self.gate.lagging.store(on, Ordering::SeqCst);
    }

    /// How many receipts were answered "not found" by [`GatedProxy::lag_receipts`].
    pub fn receipts_hidden(&self) -> usize {
        self.gate.hidden.load(Ordering::SeqCst)
    }
}

impl Gate {
    /// Whether to hold this request: the armed hold is used up by the one it names.
    fn holds(&self, body: &[u8]) -> bool {
        let mut armed = self.armed.lock().expect("armed");
        let Some((hold, seen)) = armed.as_mut() else {
            return false;
        };
        *seen += 1;
        let this = match *hold {
            Hold::Nth(n) => *seen == n,
            Hold::Containing(text) => body.windows(text.len()).any(|w| w == text.as_bytes()),
        };
        if this {
            *armed = None;
        }
        this
    }

    /// A lagging node's answer to a receipt request: found nothing.
    fn hidden_receipt(&self, body: &[u8]) -> Option<serde_json::Value> {
        if !self.lagging.load(Ordering::SeqCst) {
            return None;
        }
        let request: serde_json::Value = serde_json::from_slice(body).ok()?;
        (request["method"] == "eth_getTransactionReceipt").then(|| {
            self.hidden.fetch_add(1, Ordering::SeqCst);
            serde_json::json!({"jsonrpc": "2.0", "id": request["id"], "result": null})
        })
    }
}

async fn forward(State(gate): State<Arc<Gate>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    if gate.holds(&body) {
        gate.arrived.notify_one();
        gate.open.notified().await;
    }
    if let Some(not_found) = gate.hidden_receipt(&body) {
        return axum::Json(not_found).into_response();
    }
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
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
