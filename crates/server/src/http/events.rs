//! The live channel: a WebSocket for people and agents that act on events, and Server-Sent Events for curl and
//! browsers behind proxies. Both replay from `after_seq` (or `Last-Event-ID`) and then go live, with no gap and
//! no duplicate at the seam.

use crate::error::ApiError;
use crate::error::Problem;
use crate::extract::{Query, StreamCaller};
use crate::rate::{Limiter, StreamPermit};
use axum::Extension;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use paygent_engine::domain::event::EventKind;
use paygent_engine::domain::{Decision, Principal};
use paygent_engine::{EngineError, EventFilter, LiveEvent, Paygent, Subscription, SubscriptionEnd};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

/// WebSocket close codes, documented for clients.
pub mod close {
    /// The client fell behind; reconnect with `after_seq` set to the last `seq` received.
    pub const SLOW_CONSUMER: u16 = 4008;
    /// Nothing was heard from the client (not even a pong) for the idle timeout.
    pub const IDLE: u16 = 4000;
    /// A client message was over the size limit (RFC 6455's code).
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The key was revoked or has expired: nothing more is sent or acted on.
    pub const KEY_REVOKED: u16 = 4001;
}

/// Settings of the live channel.
#[derive(Debug, Clone)]
pub struct LiveOptions {
    /// Events a WebSocket may have waiting to be written before its client counts as slow.
    pub queue: usize,
    /// How often the server pings.
    pub heartbeat: Duration,
    /// How long a silent client is kept.
    pub idle_timeout: Duration,
    /// Streams (WebSocket and SSE together) one key may hold open on an instance.
    pub streams_per_key: usize,
}

impl Default for LiveOptions {
    fn default() -> Self {
        LiveOptions {
            queue: 1024,
            heartbeat: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(45),
            streams_per_key: 64,
        }
    }
}

pub fn router() -> OpenApiRouter<Paygent> {
    OpenApiRouter::new()
        .routes(routes!(websocket))
        .routes(routes!(server_sent_events))
}

#[derive(Deserialize, IntoParams)]
pub struct StreamQuery {
    /// Replay the events after this sequence number, then go live.
    after_seq: Option<i64>,
    session_id: Option<Uuid>,
    /// Comma-separated event types; all when absent. An unknown type is refused (400).
    #[param(example = "approval_requested,approval_decided")]
    types: Option<String>,
    /// The key, for clients that cannot set `Authorization` (browsers' WebSocket and EventSource).
    #[allow(dead_code)] // read by `StreamCaller` before the handler runs; here to be published
    token: Option<String>,
}

impl StreamQuery {
    /// The filter asked for; an unknown event type is a bad request, not a stream that never carries anything.
    fn filter(&self) -> Result<EventFilter, ApiError> {
        let names = self.types.as_deref().unwrap_or_default().split(',');
        let types = names
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| {
                EventKind::parse(t)
                    .ok_or_else(|| ApiError::BadRequest(format!("no event type {t:?}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(EventFilter {
            session_id: self.session_id,
            types,
        })
    }
}

/// The largest message a client may send: a decision with an edit and a note fits many times over.
const MAX_CLIENT_MESSAGE: usize = 64 * 1024;

/// Opens a stream for `who`, or refuses one over its key's cap (429).
fn permit(
    limiter: &Arc<Limiter>,
    who: &Principal,
    options: &LiveOptions,
) -> Result<StreamPermit, ApiError> {
    limiter
        .open_stream(who.key_id, options.streams_per_key)
        .ok_or_else(|| {
            ApiError::TooManyStreams(format!(
                "this key has {} streams open here, the most it may",
                options.streams_per_key
            ))
        })
}

/// Live events as a WebSocket: each `{type, seq, session_id, at, data}`, only what the key could GET, replayed
/// after `after_seq` and then live. People may send decisions on it (`{"type": "approve", "id": ...}`); the
/// server pings, and closes with 4008 (slow consumer), 4000 (idle), 1009 (message too big) or 4001 (key
/// revoked).
#[utoipa::path(get, path = "/ws", tag = "events", params(StreamQuery),
    responses((status = 101, description = "switching to the WebSocket protocol"),
        (status = 400, body = Problem, description = "not a WebSocket upgrade, or a bad filter"),
        (status = 410, body = Problem, description = "`after_seq` is older than the events kept: read the state, then go live")))]
async fn websocket(
    State(paygent): State<Paygent>,
    Extension(options): Extension<LiveOptions>,
    Extension(limiter): Extension<Arc<Limiter>>,
    StreamCaller(who): StreamCaller,
    Query(q): Query<StreamQuery>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    // Clients send short commands; tungstenite's defaults (a 128 KiB read buffer per socket, 64 MiB messages)
    // made 1,000 idle sockets cost 145 MB.
    let upgrade = upgrade
        .map_err(|r| ApiError::BadRequest(r.body_text()))?
        .read_buffer_size(4 * 1024)
        .max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE);
    let permit = permit(&limiter, &who, &options)?;
    let subscription = paygent
        .subscribe_events(&who, q.filter()?, q.after_seq)
        .await?;
    let client = Client {
        paygent,
        who,
        limiter,
        _permit: permit,
    };
    Ok(upgrade.on_upgrade(move |socket| connection(socket, client, subscription, options)))
}

/// Who is on the other end of a socket, and what keeps it in bounds.
struct Client {
    paygent: Paygent,
    who: Principal,
    /// Client messages count against the key's rate limit, as requests do.
    limiter: Arc<Limiter>,
    /// Held while the socket is open: the key's stream count.
    _permit: StreamPermit,
}

impl Client {
    async fn answer(&self, text: &str) -> Option<Value> {
        if let Err(wait) = self.limiter.check(self.who.key_id) {
            return Some(error_reply(
                None,
                ApiError::RateLimited(wait.as_secs().max(1)),
            ));
        }
        answer(&self.paygent, &self.who, text).await
    }
}

/// One WebSocket: events out through a bounded queue, client messages in, heartbeats both ways.
async fn connection(socket: WebSocket, client: Client, subscription: Subscription, o: LiveOptions) {
    let (mut sink, mut stream) = socket.split();
    let (queue_tx, mut queue) = mpsc::channel::<Arc<LiveEvent>>(o.queue.max(1));
    let (cut_tx, mut cut) = oneshot::channel::<Cut>();
    let feeder = tokio::spawn(feed(subscription, queue_tx, cut_tx));
    let mut heartbeat = tokio::time::interval(o.heartbeat);
    let mut last_heard = Instant::now();
    let mut delivered = 0i64;
    let end: Option<(u16, String)> = loop {
        tokio::select! {
            why = &mut cut => break Some(why.unwrap_or(Cut::Slow(delivered)).close()),
            event = queue.recv() => {
                // The feeder says why it stopped before it closes the queue: both may be ready at once.
                let Some(event) = event else { break cut.try_recv().ok().map(Cut::close) };
                let text = event.wire().to_owned();
                tokio::select! {
                    sent = sink.send(Message::Text(text.into())) => if sent.is_err() { break None },
                    why = &mut cut => break Some(why.unwrap_or(Cut::Slow(delivered)).close()),
                }
                delivered = event.seq;
            }
            message = stream.next() => {
                let message = match message {
                    Some(Ok(message)) => message,
                    // tungstenite reports an oversize message as a capacity error ("Message too long").
                    Some(Err(e)) if e.to_string().contains("too long") => break Some((
                        close::MESSAGE_TOO_BIG,
                        format!("message too big: at most {} KiB", MAX_CLIENT_MESSAGE / 1024),
                    )),
                    _ => break None,
                };
                last_heard = Instant::now();
                let reply = match message {
                    Message::Text(text) => client.answer(text.as_str()).await,
                    Message::Binary(_) => Some(error_reply(None, ApiError::BadRequest("send JSON text frames".into()))),
                    Message::Close(_) => break None,
                    Message::Ping(_) | Message::Pong(_) => None,
                };
                if let Some(reply) = reply
                    && sink.send(Message::Text(reply.to_string().into())).await.is_err()
                {
                    break None;
                }
            }
            _ = heartbeat.tick() => {
                if last_heard.elapsed() > o.idle_timeout {
                    break Some((close::IDLE, "idle: no message or pong received".into()));
                }
                if sink.send(Message::Ping(Default::default())).await.is_err() {
                    break None;
                }
            }
        }
    };
    feeder.abort();
    if let Some((code, reason)) = end {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from(reason),
        };
        // A client that stopped reading may never take the frame: do not wait on it.
        let _ = tokio::time::timeout(
            Duration::from_millis(100),
            sink.send(Message::Close(Some(frame))),
        )
        .await;
    }
}

/// Why the feeder cut a connection off.
enum Cut {
    /// The client fell behind; it resumes after this sequence number.
    Slow(i64),
    Revoked,
}

impl Cut {
    fn close(self) -> (u16, String) {
        match self {
            Cut::Slow(last) => (
                close::SLOW_CONSUMER,
                format!("slow consumer: reconnect with after_seq={last}"),
            ),
            Cut::Revoked => (
                close::KEY_REVOKED,
                "the key was revoked or has expired".into(),
            ),
        }
    }
}

/// Moves events from the subscription into the connection's bounded queue. A full queue means the client is
/// not keeping up: it is cut off (with the last sequence number it was sent) rather than slowing anyone else.
async fn feed(
    mut subscription: Subscription,
    queue: mpsc::Sender<Arc<LiveEvent>>,
    cut: oneshot::Sender<Cut>,
) {
    loop {
        match subscription.next().await {
            Ok(event) => match queue.try_send(event) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    let _ = cut.send(Cut::Slow(subscription.last_seq() - 1));
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            },
            Err(SubscriptionEnd::Lagged) => {
                let _ = cut.send(Cut::Slow(subscription.last_seq()));
                return;
            }
            Err(SubscriptionEnd::Revoked) => {
                let _ = cut.send(Cut::Revoked);
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "event subscription ended");
                return;
            }
        }
    }
}

/// Client messages: each runs the same engine call, with the same role checks, as its HTTP twin.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum ClientMessage {
    Approve {
        request_id: Uuid,
        comment: Option<String>,
        digest: Option<String>,
    },
    Reject {
        request_id: Uuid,
        reason: String,
        digest: Option<String>,
    },
    Edit {
        request_id: Uuid,
        edited_args: Value,
        comment: Option<String>,
        digest: Option<String>,
    },
    Cancel {
        execution_id: Uuid,
    },
    Ping,
}

/// The reply to one client message: `ack`, `pong` or `error`, echoing the message's `id` if it had one.
async fn answer(paygent: &Paygent, who: &Principal, text: &str) -> Option<Value> {
    let mut value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            return Some(error_reply(
                None,
                ApiError::BadRequest(format!("not JSON: {e}")),
            ));
        }
    };
    let id = value.as_object_mut().and_then(|o| o.remove("id"));
    let message: ClientMessage = match serde_json::from_value(value) {
        Ok(m) => m,
        Err(e) => {
            return Some(error_reply(
                id,
                ApiError::BadRequest(format!("bad message: {e}")),
            ));
        }
    };
    let result = match message {
        ClientMessage::Ping => return Some(json!({"type": "pong", "id": id})),
        ClientMessage::Cancel { execution_id } => paygent
            .cancel_execution(who, execution_id)
            .await
            .map(|v| serde_json::to_value(v).expect("views serialize")),
        ClientMessage::Approve {
            request_id,
            comment,
            digest,
        } => {
            let decision = Decision::Approve {
                comment,
                standing: None,
            };
            decided(paygent, who, request_id, decision, digest).await
        }
        ClientMessage::Reject {
            request_id,
            reason,
            digest,
        } => {
            let decision = Decision::Reject { reason };
            decided(paygent, who, request_id, decision, digest).await
        }
        ClientMessage::Edit {
            request_id,
            edited_args,
            comment,
            digest,
        } => {
            let decision = Decision::Edit {
                edited_args,
                comment,
            };
            decided(paygent, who, request_id, decision, digest).await
        }
    };
    Some(match result {
        Ok(view) => json!({"type": "ack", "id": id, "result": view}),
        Err(e) => error_reply(id, e.into()),
    })
}

async fn decided(
    paygent: &Paygent,
    who: &Principal,
    id: Uuid,
    decision: Decision,
    seen: Option<String>,
) -> Result<Value, EngineError> {
    let view = paygent.decide(who, id, decision, seen.as_deref()).await?;
    Ok(serde_json::to_value(view).expect("views serialize"))
}

fn error_reply(id: Option<Value>, error: ApiError) -> Value {
    json!({"type": "error", "id": id, "problem": error.problem()})
}

/// Server-Sent Events: the same events, resumable with `Last-Event-ID` (or `after_seq`).
#[utoipa::path(get, path = "/events", tag = "events", params(StreamQuery,
        ("Last-Event-ID" = Option<i64>, Header, description = "the last `seq` received: replay after it")),
    responses((status = 200, content_type = "text/event-stream", body = String,
        description = "one SSE event per event: `id` its seq, `event` its type, `data` the JSON as on the WebSocket"),
        (status = 400, body = Problem, description = "a bad filter or Last-Event-ID"),
        (status = 410, body = Problem, description = "the replay point is older than the events kept: read the state, then go live")))]
async fn server_sent_events(
    State(paygent): State<Paygent>,
    Extension(options): Extension<LiveOptions>,
    Extension(limiter): Extension<Arc<Limiter>>,
    StreamCaller(who): StreamCaller,
    Query(q): Query<StreamQuery>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    let last_event_id = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
                .ok_or_else(|| {
                    ApiError::BadRequest("Last-Event-ID must be an event's seq".into())
                })?,
        ),
        None => None,
    };
    let permit = permit(&limiter, &who, &options)?;
    let subscription = paygent
        .subscribe_events(&who, q.filter()?, last_event_id.or(q.after_seq))
        .await?;
    // The permit lives as long as the stream does.
    let stream = futures::stream::unfold((subscription, permit), |(mut s, p)| async move {
        match s.next().await {
            Ok(e) => {
                let sse = SseEvent::default()
                    .id(e.seq.to_string())
                    .event(e.kind.as_str())
                    .data(e.wire());
                Some((Ok::<_, std::convert::Infallible>(sse), (s, p)))
            }
            Err(_) => None,
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
