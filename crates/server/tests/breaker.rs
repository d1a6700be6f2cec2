//! The circuit breaker over the real API, on both databases: a policy's velocity rules freeze a session whose
//! agent pays too fast, and only a person unfreezes it.

use futures::future::join_all;
use paygent_testkit::{
    ADMIN_TOKEN, Backend, PAYEE, Team, TestServer, on_both_databases, status_is, wait_for,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

on_both_databases!(
    fifty_racing_payments_let_through_exactly_the_count,
    only_a_person_unfreezes_and_the_count_starts_again,
    identical_payments_dollars_and_agents_trip_it,
    a_frozen_session_pauses_its_executions,
    a_frozen_session_decides_but_executes_nothing,
    a_window_slides_and_old_marks_are_pruned,
);

/// Sets the default policy's velocity rules (the first tenant's), as its admin.
async fn velocity(s: &TestServer, rules: Value) {
    let body = json!({"velocity": rules});
    let (status, policy) = s.put(ADMIN_TOKEN, "/policies/default", body).await;
    assert_eq!(status, StatusCode::OK, "{policy}");
}

async fn session_of(s: &TestServer, token: &str, session: Uuid) -> Value {
    let (status, view) = s.get(token, &format!("/sessions/{session}")).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    view
}

/// A server whose default policy lets a session make two payments an hour, and an agent's session.
async fn two_per_hour(backend: Backend) -> (TestServer, Team, Uuid) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    velocity(&s, json!([{"per_seconds": 3600, "max_payments": 2}])).await;
    let session = s.session(&t.agent, json!({})).await;
    (s, t, session)
}

/// A step paying 1 USDC to the payee.
fn transfer() -> Value {
    json!({"tool": "transfer", "args": {"to": PAYEE, "amount": "1", "currency": "USDC"}})
}

/// Starts an execution that waits `seconds`, then pays; returns its id.
async fn pay_later(s: &TestServer, agent: &str, session: Uuid, seconds: u32) -> String {
    let steps = json!([{"tool": "wait", "args": {"seconds": seconds}}, transfer()]);
    let started = s.execute(agent, session, steps).await;
    started["id"].as_str().unwrap().to_owned()
}

/// Pays `amount` USDC to `to` and returns the payment, created.
async fn pay_to(s: &TestServer, agent: &str, session: Uuid, amount: &str, to: &str) -> Value {
    let body =
        json!({"session_id": session, "amount": amount, "currency": "USDC", "recipient": to});
    let (status, payment) = s.post(agent, "/payments", body).await;
    assert_eq!(status, StatusCode::CREATED, "{payment}");
    payment
}

/// 50 payments at once against a rule of 10 per hour: exactly 10 go, 40 are denied `circuit_breaker`, the
/// session is frozen once (one event, one audit entry), by the first payment past the count.
async fn fifty_racing_payments_let_through_exactly_the_count(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    velocity(&s, json!([{"per_seconds": 3600, "max_payments": 10}])).await;
    let session = s.session(&t.agent, json!({})).await;
    let results = join_all((0..50).map(|_| s.pay(&t.agent, session, "1", "USDC"))).await;
    let mut by_status = std::collections::BTreeMap::new();
    for (status, body) in &results {
        assert_eq!(*status, StatusCode::CREATED, "{body}");
        let key = format!("{} {}", body["status"], body["reason"]);
        *by_status.entry(key).or_insert(0) += 1;
    }
    let expected = [
        ("\"authorized\" null".to_owned(), 10),
        ("\"denied\" \"circuit_breaker\"".to_owned(), 40),
    ];
    assert_eq!(by_status, expected.into_iter().collect());
    let tripping: Vec<&Value> = results
        .iter()
        .map(|(_, b)| b)
        .filter(|b| {
            b["detail"]
                .as_str()
                .is_some_and(|d| !d.starts_with("the session is frozen"))
        })
        .collect();
    assert_eq!(
        tripping.len(),
        1,
        "one payment tripped it, the rest met it frozen"
    );

    let view = session_of(&s, &t.approver, session).await;
    assert_eq!(view["state"], "frozen", "{view}");
    assert_eq!(view["frozen"]["reason"], "circuit_breaker");
    assert_eq!(view["frozen"]["rule"], "velocity[0]");
    assert_eq!(view["frozen"]["payment_id"], tripping[0]["id"]);
    let detail = tripping[0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("more than 10 payments within 3600 s"),
        "{detail}"
    );
    assert_eq!(s.count("events WHERE type = 'session_frozen'").await, 1);
    assert_eq!(
        s.count("audit_log WHERE action = 'session.frozen'").await,
        1
    );
    assert_eq!(
        view["budget"]["usd"]["spent"], "10",
        "only what went is spent: {view}"
    );
    let text = s
        .events_until(&t.agent, "after_seq=0&types=session_frozen", |t| {
            t.contains("session_frozen")
        })
        .await;
    assert!(
        text.contains("velocity[0]"),
        "the agent is told why: {text}"
    );
    s.finish().await;
}

/// Agents never unfreeze (403), nor the key whose payment tripped it (an admin paying on its own session);
/// another person does, once (a second unfreeze is 409); the count then starts from the unfreeze.
async fn only_a_person_unfreezes_and_the_count_starts_again(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    velocity(&s, json!([{"per_seconds": 3600, "max_payments": 2}])).await;
    let session = s.session(&t.agent, json!({})).await;
    let path = format!("/sessions/{session}/unfreeze");
    let (status, problem) = s.post(&t.approver, &path, json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "not frozen yet: {problem}");
    for _ in 0..2 {
        assert_eq!(
            s.pay(&t.agent, session, "1", "USDC").await.1["status"],
            "authorized"
        );
    }
    let (_, third) = s.pay(&t.agent, session, "1", "USDC").await;
    assert_eq!(third["reason"], "circuit_breaker", "{third}");

    let (status, problem) = s.post(&t.agent, &path, json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{problem}");
    let elsewhere = s.tenant("elsewhere").await;
    let (status, _) = s.post(&elsewhere, &path, json!({})).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "another tenant's session is not even seen"
    );
    let long = json!({"comment": "x".repeat(501)});
    assert_eq!(
        s.post(&t.approver, &path, long).await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        session_of(&s, &t.approver, session).await["state"],
        "frozen"
    );

    let body = json!({"comment": "checked the agent's loop"});
    let (status, view) = s.post(&t.approver, &path, body).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["state"], "active");
    assert_eq!(view["frozen"], Value::Null);
    let (status, _) = s.post(&t.admin, &path, json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "unfrozen once");
    assert_eq!(
        s.count("audit_log WHERE action = 'session.unfrozen'").await,
        1
    );
    // The window still holds the two payments before the freeze; only those after the unfreeze count.
    two_then_tripped(&s, &t.agent, session).await;

    let own = s.session(&t.admin, json!({})).await;
    for _ in 0..3 {
        s.pay(&t.admin, own, "1", "USDC").await;
    }
    assert_eq!(session_of(&s, &t.admin, own).await["state"], "frozen");
    let own_path = format!("/sessions/{own}/unfreeze");
    let (status, problem) = s.post(&t.admin, &own_path, json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "four eyes: {problem}");
    assert_eq!(
        s.post(&t.approver, &own_path, json!({})).await.0,
        StatusCode::OK
    );
    s.finish().await;
}

/// A looping agent (the same payee and amount again and again), too many dollars, and too many payments by one
/// key across its sessions each trip their rule; a dry run names the rule and freezes nothing.
async fn identical_payments_dollars_and_agents_trip_it(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let other = "0x2222222222222222222222222222222222222222";
    velocity(
        &s,
        json!([
            {"per_seconds": 60, "max_identical": 3},
            {"per_seconds": 600, "max_usd": "20"},
            {"per_seconds": 600, "scope": "agent", "max_payments": 6},
        ]),
    )
    .await;
    let looping = s.session(&t.agent, json!({})).await;
    for _ in 0..3 {
        assert_eq!(
            pay_to(&s, &t.agent, looping, "2.5", PAYEE).await["status"],
            "authorized"
        );
    }
    assert_eq!(
        pay_to(&s, &t.agent, looping, "2.4", PAYEE).await["status"],
        "authorized",
        "another amount is not the same payment"
    );
    let dry =
        json!({"session_id": looping, "amount": "2.50", "currency": "USDC", "recipient": PAYEE});
    let (status, evaluated) = s.post(&t.agent, "/payments/evaluate", dry).await;
    assert_eq!(status, StatusCode::OK, "{evaluated}");
    assert_eq!(evaluated["verdict"], "deny");
    assert_eq!(evaluated["reason"], "circuit_breaker");
    assert_eq!(evaluated["rules"][0]["rule"], "velocity[0]", "{evaluated}");
    assert_eq!(
        session_of(&s, &t.agent, looping).await["state"],
        "active",
        "a dry run freezes nothing"
    );
    let looped = pay_to(&s, &t.agent, looping, "2.50", PAYEE).await;
    assert_eq!(looped["reason"], "circuit_breaker");
    assert!(
        looped["detail"].as_str().unwrap().contains("identical"),
        "{looped}"
    );

    let spender = s.session(&t.agent, json!({})).await;
    assert_eq!(
        pay_to(&s, &t.agent, spender, "9", other).await["status"],
        "authorized"
    );
    let over = pay_to(&s, &t.agent, spender, "11.5", PAYEE).await;
    assert!(
        over["detail"]
            .as_str()
            .unwrap()
            .contains("more than 20 USD"),
        "{over}"
    );
    assert_eq!(
        session_of(&s, &t.agent, spender).await["frozen"]["rule"],
        "velocity[1]"
    );

    // The agent's sixth counted payment (four in the first session, one in the second) is its last.
    let third = s.session(&t.agent, json!({})).await;
    assert_eq!(
        pay_to(&s, &t.agent, third, "1", other).await["status"],
        "authorized"
    );
    let past = pay_to(&s, &t.agent, third, "1", other).await;
    assert!(
        past["detail"]
            .as_str()
            .unwrap()
            .contains("more than 6 payments"),
        "{past}"
    );
    assert_eq!(
        session_of(&s, &t.agent, third).await["frozen"]["rule"],
        "velocity[2]"
    );
    s.finish().await;
}

/// An execution whose payment trips the breaker pauses as `frozen`, and so does another execution of the
/// session at its next step; no new execution starts (409). Once a person unfreezes the session both go on, the
/// cut-off step paying anew.
async fn a_frozen_session_pauses_its_executions(backend: Backend) {
    let (s, t, session) = two_per_hour(backend).await;
    let second = pay_later(&s, &t.agent, session, 2).await;
    // Its wait is under way before the breaker trips, on a loaded machine too.
    let waiting = |e: &Value| e["steps"][0]["status"] == "running";
    wait_for(&s, &t.agent, &second, waiting).await;
    let transfer = transfer();
    let first = s
        .execute(&t.agent, session, json!([transfer, transfer, transfer]))
        .await;
    let first = first["id"].as_str().unwrap();
    let frozen = wait_for(&s, &t.agent, first, status_is("frozen")).await;
    assert_eq!(frozen["current_step"], 2, "{frozen}");
    assert_eq!(frozen["steps"][2]["status"], "pending", "{frozen}");
    assert_eq!(session_of(&s, &t.agent, session).await["state"], "frozen");
    let held = wait_for(&s, &t.agent, &second, status_is("frozen")).await;
    assert_eq!(
        held["steps"][0]["status"], "done",
        "it stops before its payment: {held}"
    );
    let body = json!({"session_id": session, "steps": [transfer]});
    let (status, problem) = s.post(&t.agent, "/agent/execute", body).await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert_eq!(problem["type"], "urn:paygent:problem:session-frozen");

    let path = format!("/sessions/{session}/unfreeze");
    assert_eq!(
        s.post(&t.approver, &path, json!({})).await.0,
        StatusCode::OK
    );
    let done = wait_for(&s, &t.agent, first, status_is("completed")).await;
    wait_for(&s, &t.agent, &second, status_is("completed")).await;
    assert_eq!(done["steps"][2]["result"]["status"], "authorized", "{done}");
    assert_eq!(s.count("payments WHERE status = 'denied'").await, 1);
    assert_eq!(s.count("payments WHERE status = 'authorized'").await, 4);
    let paused = "events WHERE type = 'execution_paused' AND payload LIKE '%session_frozen%'";
    assert_eq!(s.count(paused).await, 2);
    let resumed = "events WHERE type = 'execution_resumed' AND payload LIKE '%session_unfrozen%'";
    assert_eq!(s.count(resumed).await, 2);
    s.finish().await;
}

/// While the session is frozen, people still decide its requests, but an approved payment is not executed
/// (409) until it is unfrozen; a kill ends a frozen execution like any other, and a revived session is not
/// frozen.
async fn a_frozen_session_decides_but_executes_nothing(backend: Backend) {
    let (s, t, session) = two_per_hour(backend).await;
    let waiting = pay_later(&s, &t.agent, session, 1).await;
    let waiting = waiting.as_str();
    let (_, asked) = s.pay(&t.agent, session, "25", "USDC").await;
    let approval = asked["approval_id"].as_str().unwrap();
    s.pay(&t.agent, session, "1", "USDC").await;
    let (_, tripped) = s.pay(&t.agent, session, "1", "USDC").await;
    assert_eq!(
        tripped["reason"], "circuit_breaker",
        "the request for a person counts: {tripped}"
    );

    let (status, decided) = s.decide(&t.approver, approval, "approve", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{decided}");
    let body = json!({"approval_id": approval});
    let (status, problem) = s.post(&t.agent, "/payments/execute-approved", body).await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert_eq!(problem["type"], "urn:paygent:problem:session-frozen");
    let payment = format!("/payments/{}", asked["id"].as_str().unwrap());
    let (_, payment) = s.get(&t.agent, &payment).await;
    assert_eq!(
        payment["status"], "pending_approval",
        "nothing ran: {payment}"
    );

    wait_for(&s, &t.agent, waiting, status_is("frozen")).await;
    let kill = format!("/sessions/{session}/kill");
    let (status, killed) = s.post(&t.approver, &kill, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{killed}");
    assert_eq!(killed["state"], "killed");
    wait_for(&s, &t.agent, waiting, status_is("cancelled")).await;
    let path = format!("/sessions/{session}/unfreeze");
    assert_eq!(
        s.post(&t.approver, &path, json!({})).await.0,
        StatusCode::CONFLICT
    );
    let revive = format!("/sessions/{session}/revive");
    let (status, revived) = s.post(&t.admin, &revive, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{revived}");
    assert_eq!(
        revived["state"], "active",
        "a revived session is not frozen"
    );
    assert_eq!(revived["frozen"], Value::Null);
    s.finish().await;
}

/// A window counts only its own time: payments a minute old no longer count against a per-minute rule. Marks
/// older than any window are pruned, scope by scope, younger ones kept, and counting goes on right after.
async fn a_window_slides_and_old_marks_are_pruned(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    velocity(&s, json!([{"per_seconds": 60, "max_payments": 2}])).await;
    let session = s.session(&t.agent, json!({})).await;
    // Each pair starts on a whole second, so both its payments fall in that second however slow the machine
    // (the test clock runs on in real time).
    let start = chrono::DateTime::from_timestamp(chrono::Utc::now().timestamp() + 1, 0).unwrap();
    for second in [start, start + chrono::Duration::seconds(61)] {
        s.clock.set(second);
        for _ in 0..2 {
            assert_eq!(
                s.pay(&t.agent, session, "1", "USDC").await.1["status"],
                "authorized"
            );
        }
    }
    assert_eq!(
        s.count("velocity_marks").await,
        2,
        "two payments within one second share a mark"
    );
    s.clock.advance(chrono::Duration::days(2));
    let young = s.session(&t.agent, json!({})).await;
    assert_eq!(
        s.pay(&t.agent, young, "1", "USDC").await.1["status"],
        "authorized"
    );
    let mut from = String::new();
    assert_eq!(s.paygent.prune_marks(&mut from, 1).await.unwrap(), 2);
    assert!(!from.is_empty(), "one scope a pass: the walk goes on");
    assert_eq!(s.paygent.prune_marks(&mut from, 1).await.unwrap(), 0);
    assert_eq!(s.paygent.prune_marks(&mut from, 1).await.unwrap(), 0);
    assert!(from.is_empty(), "the walk reached the last scope");
    assert_eq!(
        s.count("velocity_marks").await,
        1,
        "another scope's young mark stays"
    );
    two_then_tripped(&s, &t.agent, session).await;
    s.finish().await;
}

/// Two $1 payments go, under a rule of two; the third trips the breaker.
async fn two_then_tripped(s: &TestServer, agent: &str, session: Uuid) {
    for _ in 0..2 {
        assert_eq!(
            s.pay(agent, session, "1", "USDC").await.1["status"],
            "authorized"
        );
    }
    let (_, third) = s.pay(agent, session, "1", "USDC").await;
    assert_eq!(third["reason"], "circuit_breaker", "{third}");
}
