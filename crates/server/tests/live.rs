//! The live channel over real WebSocket and SSE clients on loopback, on both databases.

use futures::{SinkExt, StreamExt};
use paygent_server::LiveOptions;
use paygent_testkit::{ADMIN_TOKEN, Backend, Settings, TestServer, on_both_databases};
use serde_json::{Value, json};
use std::time::Duration;
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::Message;

type Ws = paygent_testkit::Socket;

on_both_databases!(
    approval_flow_over_the_socket,
    roles_and_tenants_hold_on_the_socket,
    resume_after_disconnect_and_restart,
    concurrent_writes_reach_a_socket_in_order,
    slow_consumers_are_cut_off_alone,
    a_thousand_sockets_get_one_event,
    server_sent_events_resume,
    malformed_messages_get_errors,
    pruned_replays_are_refused,
    events_cross_instances,
    silent_clients_time_out,
    agents_stream_only_their_own,
    revoked_and_expired_keys_lose_their_streams,
    a_key_revoked_on_one_instance_stops_on_another_with_its_streams,
    streams_and_socket_messages_are_bounded_per_key,
);

async fn connect(s: &TestServer, token: &str, query: &str) -> Ws {
    s.socket(token, query).await.expect("websocket connects")
}

/// The first of the next frames that `pick` takes, skipping the others; panics after 10 s for each frame.
async fn next_frame<T>(ws: &mut Ws, pick: impl Fn(Message) -> Option<T>) -> T {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame within 10 s")
            .expect("the socket is open")
            .expect("a frame");
        if let Some(found) = pick(frame) {
            return found;
        }
    }
}

/// The next JSON message, skipping control frames.
async fn next_json(ws: &mut Ws) -> Value {
    next_frame(ws, |frame| match frame {
        Message::Text(text) => Some(serde_json::from_str(text.as_str()).expect("JSON")),
        _ => None,
    })
    .await
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// Proves a socket has nothing pending: a ping's pong is the very next message.
async fn assert_quiet(ws: &mut Ws) {
    send(ws, json!({"type": "ping", "id": "quiet?"})).await;
    let next = next_json(ws).await;
    assert_eq!(
        next,
        json!({"type": "pong", "id": "quiet?"}),
        "nothing else was queued"
    );
}

async fn approval_flow_over_the_socket(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let session = s.session(&t.agent, json!({})).await;
    let mut approver = connect(&s, &t.approver, "").await;

    let (_, payment) = s.pay(&t.agent, session, "25", "USDC").await;
    let required = next_json(&mut approver).await;
    assert_eq!(required["type"], "approval_required");
    assert_eq!(required["data"]["id"], payment["approval_id"]);
    assert_eq!(required["data"]["usd_value"], "25");
    assert_eq!(required["session_id"], session.to_string());
    let seq = required["seq"].as_i64().unwrap();

    send(
        &mut approver,
        json!({"type": "approve", "id": 7, "request_id": payment["approval_id"], "comment": "ok"}),
    )
    .await;
    let mut got = [
        next_json(&mut approver).await,
        next_json(&mut approver).await,
    ];
    got.sort_by_key(|m| m["type"].as_str().unwrap().to_owned());
    assert_eq!(got[0]["type"], "ack");
    assert_eq!(got[0]["id"], 7);
    assert_eq!(got[0]["result"]["status"], "approved");
    assert_eq!(got[1]["type"], "approved");
    assert_eq!(got[1]["seq"], seq + 1, "gap-free sequence");

    let (status, executed) = s
        .post(
            &t.agent,
            "/payments/execute-approved",
            json!({"approval_id": payment["approval_id"]}),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK);
    assert_eq!(executed["status"], "authorized");

    // The same through an execution: approving on the socket resumes it, and the socket hears so.
    let steps = json!([{"tool": "transfer", "args": {"to": "0x1111111111111111111111111111111111111111",
        "amount": "30", "currency": "USDC"}}]);
    let (_, execution) = s
        .post(
            &t.agent,
            "/agent/execute",
            json!({"session_id": session, "steps": steps}),
        )
        .await;
    let mut kinds = Vec::new();
    let approval = loop {
        let m = next_json(&mut approver).await;
        kinds.push(m["type"].as_str().unwrap().to_owned());
        if m["type"] == "approval_required" {
            break m["data"]["id"].clone();
        }
    };
    send(
        &mut approver,
        json!({"type": "approve", "request_id": approval}),
    )
    .await;
    while kinds.last().map(String::as_str) != Some("execution_completed") {
        let m = next_json(&mut approver).await;
        kinds.push(m["type"].as_str().unwrap().to_owned());
    }
    for expected in [
        "execution_started",
        "approval_required",
        "execution_paused",
        "ack",
        "approved",
        "execution_resumed",
        "execution_completed",
    ] {
        assert!(
            kinds.iter().any(|k| k == expected),
            "{expected} missing from {kinds:?}"
        );
    }
    let (_, done) = s
        .get(
            &t.agent,
            &format!("/executions/{}", execution["id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(done["status"], "completed");
    s.finish().await;
}

async fn roles_and_tenants_hold_on_the_socket(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let other = s.team(&s.tenant("other").await).await;
    let session = s.session(&t.agent, json!({})).await;
    let mut agent = connect(&s, &t.agent, "").await;
    let mut outsider = connect(&s, &other.approver, "").await;

    let (_, payment) = s.pay(&t.agent, session, "25", "USDC").await;
    assert_eq!(next_json(&mut agent).await["type"], "approval_required");
    send(
        &mut agent,
        json!({"type": "approve", "request_id": payment["approval_id"]}),
    )
    .await;
    let refused = next_json(&mut agent).await;
    assert_eq!(refused["type"], "error");
    assert_eq!(refused["problem"]["status"], 403);
    let (_, request) = s
        .get(
            &t.approver,
            &format!("/approvals/{}", payment["approval_id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(request["status"], "pending", "nothing changed");

    send(
        &mut outsider,
        json!({"type": "approve", "request_id": payment["approval_id"]}),
    )
    .await;
    let hidden = next_json(&mut outsider).await;
    assert_eq!(
        hidden["type"], "error",
        "another tenant's event never arrived: {hidden}"
    );
    assert_eq!(hidden["problem"]["status"], 404);
    assert_quiet(&mut outsider).await;

    let refused = s.socket("pgk_wrong", "").await.unwrap_err();
    assert_eq!(refused.status(), 401);
    s.finish().await;
}

async fn cause_events(s: &TestServer, agent: &str, session: uuid::Uuid, n: usize) {
    for _ in 0..n {
        let (_, p) = s.pay(agent, session, "11", "USDC").await;
        assert_eq!(p["status"], "pending_approval");
    }
}

async fn expect_seqs(ws: &mut Ws, from: i64, n: i64) {
    for expected in from..from + n {
        let m = next_json(ws).await;
        assert_eq!(m["seq"], expected, "in order, no gap, no duplicate: {m}");
    }
}

async fn resume_after_disconnect_and_restart(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let session = s.session(&t.agent, json!({})).await;
    let mut ws = connect(&s, &t.approver, "").await;
    cause_events(&s, &t.agent, session, 1).await;
    let last = next_json(&mut ws).await["seq"].as_i64().unwrap();
    ws.close(None).await.unwrap();

    cause_events(&s, &t.agent, session, 100).await;
    let mut ws = connect(&s, &t.approver, &format!("&after_seq={last}")).await;
    expect_seqs(&mut ws, last + 1, 100).await;
    cause_events(&s, &t.agent, session, 1).await;
    expect_seqs(&mut ws, last + 101, 1).await;
    assert_quiet(&mut ws).await;
    drop(ws);

    let s = s.restart().await;
    cause_events(&s, &t.agent, session, 5).await;
    let mut ws = connect(&s, &t.approver, &format!("&after_seq={last}")).await;
    expect_seqs(&mut ws, last + 1, 106).await;
    cause_events(&s, &t.agent, session, 1).await;
    expect_seqs(&mut ws, last + 107, 1).await;

    // Filters: only this session's approval_required, from the start.
    let other = s.session(&t.agent, json!({})).await;
    let query = format!("&after_seq=0&session_id={other}&types=approval_required");
    let mut filtered = connect(&s, &t.approver, &query).await;
    cause_events(&s, &t.agent, other, 2).await;
    for _ in 0..2 {
        let m = next_json(&mut filtered).await;
        assert_eq!(m["session_id"], other.to_string());
        assert_eq!(m["type"], "approval_required");
    }
    assert_quiet(&mut filtered).await;
    s.finish().await;
}

/// Writes committed together hand their events over in whatever order their tasks wake; the socket still gets
/// every one once, in sequence.
async fn concurrent_writes_reach_a_socket_in_order(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let mut sessions = Vec::new();
    for _ in 0..4 {
        sessions.push(s.session(&t.agent, json!({})).await);
    }
    let mut ws = connect(&s, &t.approver, "").await;
    let payments = (0..48).map(|i| cause_events(&s, &t.agent, sessions[i % 4], 1));
    futures::future::join_all(payments).await;
    let first = next_json(&mut ws).await["seq"].as_i64().unwrap();
    expect_seqs(&mut ws, first + 1, 47).await;
    assert_quiet(&mut ws).await;
    s.finish().await;
}

async fn slow_consumers_are_cut_off_alone(backend: Backend) {
    let settings = Settings {
        live: LiveOptions {
            // Room for readers delayed by 200 sockets sharing 2 cores; far less than the events sent.
            queue: 64,
            streams_per_key: 1000,
            ..LiveOptions::default()
        },
        send_buffer: Some(4096),
        ..Settings::default()
    };
    let s = TestServer::start_with(backend, settings).await;
    let t = s.team(ADMIN_TOKEN).await;
    let session = s.session(&t.agent, json!({})).await;

    // A client with a tiny receive window that never reads.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket
        .connect(s.base.trim_start_matches("http://").parse().unwrap())
        .await
        .unwrap();
    let (mut slow, _) =
        tokio_tungstenite::client_async(s.ws_url(&t.approver, ""), MaybeTlsStream::Plain(stream))
            .await
            .unwrap();

    let mut readers = Vec::new();
    for _ in 0..200 {
        readers.push(connect(&s, &t.approver, "").await);
    }
    let events = 200;
    let read: Vec<_> = (0..readers.len())
        .map(|_| std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0)))
        .collect();
    let consumers = readers.into_iter().zip(read.clone()).map(|(mut ws, read)| {
        tokio::spawn(async move {
            let mut seqs = Vec::new();
            while seqs.len() < events {
                seqs.push(next_json(&mut ws).await["seq"].as_i64().unwrap());
                read.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            seqs
        })
    });
    let consumers: Vec<_> = consumers.collect();
    // Paced by the readers, not the clock: an event is caused once every reader is within half a queue of it,
    // so the readers are never behind however the machine schedules them, and the slow client always is.
    let slowest = || async {
        let counts = read
            .iter()
            .map(|r| r.load(std::sync::atomic::Ordering::SeqCst));
        counts.min().unwrap_or_default()
    };
    for sent in 0..events {
        let what = format!("every reader within 32 events of event {sent}");
        paygent_testkit::eventually(Duration::from_secs(10), &what, slowest, |n| n + 32 >= sent)
            .await;
        cause_events(&s, &t.agent, session, 1).await;
    }
    for c in consumers {
        let seqs = c.await.unwrap();
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "every event, in order"
        );
    }

    // The slow client now reads what was buffered, and finds itself cut off with the documented code.
    let mut received = 0;
    // The close frame is best effort: a client this far behind may only see the connection drop.
    let mut close_code = None;
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(10), slow.next()).await {
            Err(_) => break false,
            Ok(None) | Ok(Some(Err(_))) => break true,
            Ok(Some(Ok(Message::Close(frame)))) => {
                close_code = frame.map(|f| u16::from(f.code));
                break true;
            }
            Ok(Some(Ok(Message::Text(_)))) => received += 1,
            Ok(Some(Ok(_))) => {}
        }
    };
    assert!(ended, "the server closed the slow client's connection");
    assert!(received < events, "it was cut off, after {received} events");
    if let Some(code) = close_code {
        assert_eq!(code, 4008);
    }
    s.finish().await;
}

async fn a_thousand_sockets_get_one_event(backend: Backend) {
    let settings = Settings {
        live: LiveOptions {
            streams_per_key: 1000,
            ..LiveOptions::default()
        },
        ..Settings::default()
    };
    let s = TestServer::start_with(backend, settings).await;
    let t = s.team(ADMIN_TOKEN).await;
    let session = s.session(&t.agent, json!({})).await;
    let mut sockets = Vec::new();
    for _ in 0..1000 {
        sockets.push(connect(&s, &t.approver, "").await);
    }
    let (_, payment) = s.pay(&t.agent, session, "25", "USDC").await;
    let received = futures::future::join_all(sockets.iter_mut().map(next_json)).await;
    for m in &received {
        assert_eq!(m["type"], "approval_required");
        assert_eq!(m["data"]["id"], payment["approval_id"]);
    }
    assert_eq!(received.len(), 1000);
    s.finish().await;
}

async fn server_sent_events_resume(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let session = s.session(&t.agent, json!({})).await;
    cause_events(&s, &t.agent, session, 3).await;
    let (_, first) = s.get(&t.approver, "/approvals/pending").await;
    assert_eq!(first.as_array().unwrap().len(), 3);
    let resp = s
        .send(
            s.http
                .get(s.url("/events"))
                .bearer_auth(&t.approver)
                .header("Last-Event-ID", "1"),
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut resp = resp;
    let mut text = String::new();
    let mut ids = Vec::new();
    let head = s
        .paygent
        .store()
        .event_range(paygent_engine::DEFAULT_TENANT)
        .await
        .unwrap()
        .1;
    while ids.last() != Some(&head) {
        let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
        ids = text
            .lines()
            .filter_map(|l| l.strip_prefix("id: "))
            .map(|i| i.parse::<i64>().unwrap())
            .collect();
    }
    assert_eq!(
        ids,
        (2..=head).collect::<Vec<_>>(),
        "everything after Last-Event-ID, in order"
    );
    assert!(text.contains("event: approval_required"));
    s.finish().await;
}

async fn malformed_messages_get_errors(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let mut ws = connect(&s, &t.approver, "").await;
    for bad in [
        "not json".to_owned(),
        json!({"type": "dance"}).to_string(),
        json!({"type": "approve"}).to_string(),
        json!({"type": "approve", "request_id": "nope"}).to_string(),
        json!({"type": "reject", "request_id": uuid::Uuid::new_v4()}).to_string(),
        json!({"no": "type"}).to_string(),
    ] {
        ws.send(Message::Text(bad.clone().into())).await.unwrap();
        let reply = next_json(&mut ws).await;
        assert_eq!(reply["type"], "error", "{bad}");
        assert_eq!(reply["problem"]["status"], 400, "{bad}: {reply}");
        assert!(reply["problem"]["detail"].is_string());
    }
    send(
        &mut ws,
        json!({"type": "approve", "request_id": uuid::Uuid::new_v4()}),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["problem"]["status"], 404);
    ws.send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(next_json(&mut ws).await["problem"]["status"], 400);
    assert_quiet(&mut ws).await;
    // An oversize message is not answered: the socket ends, with "message too big" (1009) when the close frame
    // beats the connection reset that the unread rest of the message causes. A new socket works.
    let huge = json!({"type": "ping", "id": "x".repeat(100 * 1024)}).to_string();
    let _ = ws.send(Message::Text(huge.into())).await;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("the socket ends within 10 s")
        {
            Some(Ok(Message::Close(frame))) => {
                assert_eq!(frame.map(|f| u16::from(f.code)), Some(1009));
                break;
            }
            Some(Ok(Message::Text(text))) => panic!("an oversize message was answered: {text:.80}"),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => break,
        }
    }
    let mut ws = connect(&s, &t.approver, "").await;
    assert_quiet(&mut ws).await;
    s.finish().await;
}

async fn pruned_replays_are_refused(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let session = s.session(&t.agent, json!({})).await;
    cause_events(&s, &t.agent, session, 3).await;
    let pruned = s
        .paygent
        .store()
        .prune_events(chrono::Utc::now() + chrono::Duration::days(1))
        .await
        .unwrap();
    assert_eq!(pruned, 3);
    let refused = s.socket(&t.approver, "&after_seq=0").await.unwrap_err();
    assert_eq!(refused.status(), 410);
    let mut ws = connect(&s, &t.approver, "&after_seq=3").await;
    cause_events(&s, &t.agent, session, 1).await;
    assert_eq!(
        next_json(&mut ws).await["seq"],
        4,
        "resuming from the head works"
    );
    // A stream filtered on a type that does not exist is refused, not left silent forever.
    let (status, problem) = s
        .get(&t.approver, "/events?types=approval_required,approval_made")
        .await;
    assert_eq!(status, 400, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("approval_made")
    );
    s.finish().await;
}

async fn events_cross_instances(backend: Backend) {
    let a = TestServer::start(backend).await;
    let b = a.another_instance().await;
    let t = a.team(ADMIN_TOKEN).await;
    let session = a.session(&t.agent, json!({})).await;
    let mut on_a = connect(&a, &t.approver, "").await;
    let (_, payment) = b.pay(&t.agent, session, "25", "USDC").await;
    let event = next_json(&mut on_a).await;
    assert_eq!(
        event["type"], "approval_required",
        "an event caused on B reaches a socket on A"
    );
    assert_eq!(event["data"]["id"], payment["approval_id"]);
    send(
        &mut on_a,
        json!({"type": "approve", "request_id": payment["approval_id"]}),
    )
    .await;
    let mut on_b = connect(&b, &t.approver, &format!("&after_seq={}", event["seq"])).await;
    assert_eq!(next_json(&mut on_b).await["type"], "approved", "and back");
    b.stop().await;
    a.finish().await;
}

async fn silent_clients_time_out(backend: Backend) {
    let settings = Settings {
        live: LiveOptions {
            heartbeat: Duration::from_millis(50),
            idle_timeout: Duration::from_secs(2),
            ..LiveOptions::default()
        },
        ..Settings::default()
    };
    let s = TestServer::start_with(backend, settings).await;
    let mut listening = connect(&s, ADMIN_TOKEN, "").await;
    let mut silent = connect(&s, ADMIN_TOKEN, "").await;
    // One client reads (and so answers pings); the other does not read at all. Counted in heartbeats, not wall
    // time: 60 pings answered are three seconds of them, past the two-second limit, whatever the machine's load.
    let mut pings = 0;
    while pings < 60 {
        match tokio::time::timeout(Duration::from_secs(10), listening.next()).await {
            Ok(Some(Ok(Message::Ping(_)))) => pings += 1,
            other => panic!("the listening client stays connected: {other:?}"),
        }
    }
    assert_quiet(&mut listening).await;
    // The silent client finds its connection closed: by the 4000 close frame, or, since it answers the pings it
    // reads first, by writing into a socket the server already closed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let ended = loop {
        match tokio::time::timeout_at(deadline, silent.next()).await {
            Err(_) => break false,
            Ok(Some(Ok(Message::Close(frame)))) => {
                assert_eq!(frame.map(|f| u16::from(f.code)), Some(4000));
                break true;
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_))) | Ok(None) => break true,
        }
    };
    assert!(ended, "the silent client is closed as idle");
    s.finish().await;
}

/// An agent's stream carries its own sessions' events and nothing of another agent's, on the WebSocket and
/// over SSE, live and replayed; a person's carries the tenant's.
async fn agents_stream_only_their_own(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let other = s.key(&t.admin, paygent_engine::domain::Role::Agent).await;
    let mine = s.session(&t.agent, json!({})).await;
    let theirs = s.session(&other, json!({})).await;
    let mut agent = connect(&s, &t.agent, "").await;
    let mut approver = connect(&s, &t.approver, "").await;

    let (_, foreign) = s.pay(&other, theirs, "25", "USDC").await;
    let (_, own) = s.pay(&t.agent, mine, "30", "USDC").await;
    let seen = next_json(&mut agent).await;
    assert_eq!(seen["type"], "approval_required");
    assert_eq!(
        seen["data"]["id"], own["approval_id"],
        "the other agent's request never arrived first: {seen}"
    );
    assert_quiet(&mut agent).await;
    for expected in [&foreign, &own] {
        let event = next_json(&mut approver).await;
        assert_eq!(event["data"]["id"], expected["approval_id"]);
    }
    let approve = |p: &Value| format!("/approvals/{}/approve", p["approval_id"].as_str().unwrap());
    s.post(&t.approver, &approve(&foreign), json!({})).await;
    s.post(&t.approver, &approve(&own), json!({})).await;
    let approved = next_json(&mut agent).await;
    assert_eq!(approved["type"], "approved");
    assert_eq!(approved["data"]["id"], own["approval_id"]);
    assert_quiet(&mut agent).await;

    let mut replay = connect(&s, &t.agent, "&after_seq=0").await;
    let replayed = [next_json(&mut replay).await, next_json(&mut replay).await];
    assert!(
        replayed.iter().all(|e| e["session_id"] == json!(mine)),
        "{replayed:?}"
    );
    assert_quiet(&mut replay).await;

    let text = s
        .events_until(&other, "after_seq=0", |t| t.matches("event: ").count() >= 2)
        .await;
    assert!(text.contains(&theirs.to_string()), "{text}");
    assert!(!text.contains(&mine.to_string()), "{text}");
    s.finish().await;
}

/// Revoking a key ends its open WebSocket (close code 4001) and its SSE stream at once; a key's expiry ends
/// them when it comes; and nothing a revoked socket sends is acted on.
async fn revoked_and_expired_keys_lose_their_streams(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let session = s.session(&t.agent, json!({})).await;
    let mut ws = connect(&s, &t.approver, "").await;
    let mut sse = s
        .send(s.http.get(s.url("/events")).bearer_auth(&t.approver))
        .await;
    let (_, p) = s.pay(&t.agent, session, "25", "USDC").await;
    assert_eq!(next_json(&mut ws).await["type"], "approval_required");
    let (_, me) = s.get(&t.approver, "/me").await;
    let path = format!("/keys/{}", me["key_id"].as_str().unwrap());
    let (status, _) = s
        .call(ADMIN_TOKEN, reqwest::Method::DELETE, &path, None)
        .await;
    assert_eq!(status, reqwest::StatusCode::NO_CONTENT);
    assert_eq!(close_code(&mut ws).await, 4001);
    let approve = json!({"type": "approve", "request_id": p["approval_id"]});
    let _ = ws.send(Message::Text(approve.to_string().into())).await;
    let (_, request) = s
        .get(
            &t.admin,
            &format!("/approvals/{}", p["approval_id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(
        request["status"], "pending",
        "nothing the revoked socket sent was acted on"
    );
    assert_sse_ends(&mut sse).await;

    let soon = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    let (status, key) = s
        .post(
            ADMIN_TOKEN,
            "/keys",
            json!({"name": "brief", "role": "approver", "expires_at": soon}),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::CREATED, "{key}");
    let mut brief = connect(&s, key["token"].as_str().unwrap(), "").await;
    assert_eq!(close_code(&mut brief).await, 4001);
    s.finish().await;
}

/// Each instance answers a key from what it last read of it; a revocation on one instance stops the key there at
/// once, and on another no later than it ends the key's streams there.
async fn a_key_revoked_on_one_instance_stops_on_another_with_its_streams(backend: Backend) {
    let a = TestServer::start(backend).await;
    let b = a.another_instance().await;
    let t = a.team(ADMIN_TOKEN).await;
    let (status, me) = a.get(&t.approver, "/me").await;
    assert_eq!(status, reqwest::StatusCode::OK);
    assert_eq!(b.get(&t.approver, "/me").await.0, reqwest::StatusCode::OK);
    let mut ws = connect(&b, &t.approver, "").await;
    let path = format!("/keys/{}", me["key_id"].as_str().unwrap());
    let (status, _) = a
        .call(ADMIN_TOKEN, reqwest::Method::DELETE, &path, None)
        .await;
    assert_eq!(status, reqwest::StatusCode::NO_CONTENT);
    let (status, _) = a.get(&t.approver, "/me").await;
    assert_eq!(
        status,
        reqwest::StatusCode::UNAUTHORIZED,
        "where it was revoked"
    );
    assert_eq!(close_code(&mut ws).await, 4001);
    let (status, _) = b.get(&t.approver, "/me").await;
    assert_eq!(
        status,
        reqwest::StatusCode::UNAUTHORIZED,
        "on the other instance"
    );
    b.stop().await;
    a.finish().await;
}

/// The code of the close frame the server sends next, skipping other messages.
async fn close_code(ws: &mut Ws) -> u16 {
    next_frame(ws, |frame| match frame {
        Message::Close(Some(close)) => Some(close.code.into()),
        _ => None,
    })
    .await
}

/// Reads an SSE response until the server ends it; panics if it has not ended within 10 s.
async fn assert_sse_ends(sse: &mut reqwest::Response) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Some(_chunk) = tokio::time::timeout_at(deadline, sse.chunk())
        .await
        .expect("the stream ended within 10 s")
        .unwrap_or(None)
    {}
}

/// A key holds at most its cap of streams (WebSocket and SSE together; 429 past it, and closing one frees a
/// place), and what it sends on a socket counts against its rate limit like requests do.
async fn streams_and_socket_messages_are_bounded_per_key(backend: Backend) {
    let settings = Settings {
        live: LiveOptions {
            streams_per_key: 2,
            ..LiveOptions::default()
        },
        rate_limit: Some(paygent_server::RateLimit {
            per_second: 1,
            burst: 6,
        }),
        ..Settings::default()
    };
    let s = TestServer::start_with(backend, settings).await;
    let t = s.team(ADMIN_TOKEN).await;
    let first = connect(&s, &t.approver, "").await;
    let sse = s
        .send(s.http.get(s.url("/events")).bearer_auth(&t.approver))
        .await;
    assert_eq!(sse.status(), 200);
    let refused = s.socket(&t.approver, "").await.unwrap_err();
    assert_eq!(refused.status(), 429);
    let body = String::from_utf8_lossy(refused.body().as_deref().unwrap_or_default()).into_owned();
    assert!(
        body.contains("too-many-streams"),
        "refused by the cap: {body}"
    );
    drop(sse);
    drop(first);
    let again = || async { s.socket(&t.approver, "").await.ok() };
    let what = "a closed stream to free its place";
    let again = paygent_testkit::eventually(Duration::from_secs(5), what, again, Option::is_some);
    let mut ws = again.await.expect("a socket");
    let mut refused = 0;
    for i in 0..6 {
        send(&mut ws, json!({"type": "ping", "id": i})).await;
        let reply = next_json(&mut ws).await;
        if reply["type"] == "error" {
            assert_eq!(reply["problem"]["status"], 429, "{reply}");
            refused += 1;
        }
    }
    assert!(refused > 0, "socket messages count against the rate limit");
    s.finish().await;
}
