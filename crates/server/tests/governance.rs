//! Governance over the real API, on both databases: decisions bound to the exact action they approve.

use paygent_testkit::{ADMIN_TOKEN, Backend, TestServer, on_both_databases};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

on_both_databases!(
    a_request_is_bound_to_its_action_digest,
    only_the_approved_action_runs,
    evaluating_a_payment_writes_nothing,
    a_decision_lands_only_on_the_action_shown,
    a_request_carries_what_a_person_needs_to_decide,
    a_simulation_replays_a_hand_made_history,
);

fn is_digest(d: &Value) -> bool {
    d.as_str()
        .and_then(|d| d.strip_prefix("sha256:"))
        .is_some_and(|hex| {
            hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        })
}

/// Each request shows the digest of the action it would run: the same action has the same digest, another
/// action another; a decision records the digest it decided, an edit the new action's, and the audit trail
/// keeps both.
async fn a_request_is_bound_to_its_action_digest(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let session = s.session(&t.agent, json!({})).await;
    let mut requests = Vec::new();
    for amount in ["25", "25", "26"] {
        let (_, p) = s.pay(&t.agent, session, amount, "USDC").await;
        let id = p["approval_id"].as_str().unwrap().to_owned();
        let (_, view) = s.get(&t.approver, &format!("/approvals/{id}")).await;
        assert!(is_digest(&view["digest"]), "{view}");
        requests.push((id, view["digest"].clone()));
    }
    assert_eq!(
        requests[0].1, requests[1].1,
        "the same action, the same digest"
    );
    assert_ne!(
        requests[0].1, requests[2].1,
        "another amount, another digest"
    );
    let other = s.session(&t.agent, json!({})).await;
    let (_, p) = s.pay(&t.agent, other, "25", "USDC").await;
    let (_, elsewhere) = s
        .get(
            &t.approver,
            &format!("/approvals/{}", p["approval_id"].as_str().unwrap()),
        )
        .await;
    assert_ne!(
        elsewhere["digest"], requests[0].1,
        "another session, another action"
    );

    let (status, approved) = s
        .decide(&t.approver, &requests[0].0, "approve", json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{approved}");
    assert_eq!(approved["decision"]["digest"], requests[0].1);
    let (status, rejected) = s
        .decide(
            &t.approver,
            &requests[1].0,
            "reject",
            json!({"reason": "twice"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{rejected}");
    assert_eq!(
        rejected["decision"]["digest"], requests[1].1,
        "a rejection names what it refused"
    );

    let edit = json!({"edited_args": {"amount": "20"}});
    let (status, edited) = s.decide(&t.admin, &requests[2].0, "edit", edit).await;
    assert_eq!(status, StatusCode::OK, "{edited}");
    assert!(is_digest(&edited["digest"]), "{edited}");
    assert_ne!(edited["digest"], requests[2].1, "an edit is a new action");
    assert_eq!(
        edited["decision"]["digest"], edited["digest"],
        "and that action is what is approved"
    );

    let (_, audit) = s
        .get(&t.admin, &format!("/audit?session_id={session}&limit=1000"))
        .await;
    let decided: Vec<&Value> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["subject"]
                .as_str()
                .is_some_and(|s| s.starts_with("approval:"))
        })
        .filter_map(|e| e["data"].get("digest"))
        .collect();
    for digest in [
        &requests[0].1,
        &requests[1].1,
        &requests[2].1,
        &edited["digest"],
    ] {
        assert!(
            decided.contains(&digest),
            "{digest} in the audit trail: {decided:?}"
        );
    }
    let filed = decided.iter().filter(|d| **d == &requests[2].1).count();
    assert_eq!(filed, 1, "the edited request's first action, as filed");
    let body = json!({"approval_id": requests[2].0});
    let (status, paid) = s.post(&t.agent, "/payments/execute-approved", body).await;
    assert_eq!(status, StatusCode::OK, "{paid}");
    assert_eq!(paid["amount"], "20", "the edited action runs: {paid}");
    s.finish().await;
}

/// An approved request whose action changed afterwards (here, by a write straight to the database) runs
/// nothing: the action to pay no longer has the approved digest.
async fn only_the_approved_action_runs(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let session = s.session(&t.agent, json!({})).await;
    let (_, p) = s.pay(&t.agent, session, "25", "USDC").await;
    let (id, payment) = (
        p["approval_id"].as_str().unwrap(),
        p["id"].as_str().unwrap(),
    );
    let (status, approved) = s.decide(&t.approver, id, "approve", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{approved}");

    let changed = s
        .sql(&format!(
            "UPDATE approval_requests SET args = REPLACE(args, '\"25\"', '\"2500\"') WHERE id = '{id}'"
        ))
        .await;
    assert_eq!(changed, 1);
    let (_, view) = s.get(&t.approver, &format!("/approvals/{id}")).await;
    assert_ne!(
        view["digest"], approved["decision"]["digest"],
        "the action changed"
    );
    let (status, refused) = s
        .post(
            &t.agent,
            "/payments/execute-approved",
            json!({"approval_id": id}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert!(
        refused["detail"].as_str().unwrap().contains("digest"),
        "{refused}"
    );
    let (_, now) = s.get(&t.agent, &format!("/payments/{payment}")).await;
    assert_eq!(now["status"], "pending_approval", "nothing was paid: {now}");
    assert_eq!(now["amount"], "25");
    assert!(view["consumed_at"].is_null());
    s.finish().await;
}

/// `POST /payments/evaluate` answers what the guard would do and why, with the budget after it, for the agent
/// on its own sessions and for people on the tenant's, and leaves no row behind.
async fn evaluating_a_payment_writes_nothing(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let session = s
        .session(&t.agent, json!({"daily_limits": {"USDC": "100"}}))
        .await;
    s.pay(&t.agent, session, "5", "USDC").await;
    let outsider = s
        .key(ADMIN_TOKEN, paygent_engine::domain::Role::Agent)
        .await;
    let tables = [
        "payments",
        "approval_requests",
        "audit_log",
        "events",
        "budget_usage",
        "key_usage",
        "key_payees",
    ];
    let mut before = Vec::new();
    for table in tables {
        before.push(s.count(table).await);
    }
    let before_payments = before[0];
    let evaluate = async |token: &str, amount: &str| {
        let body = json!({"session_id": session, "amount": amount, "currency": "USDC",
            "recipient": paygent_testkit::PAYEE, "idempotency_key": "evaluated"});
        s.post(token, "/payments/evaluate", body).await
    };
    let (status, at_once) = evaluate(&t.agent, "3").await;
    assert_eq!(status, StatusCode::OK, "{at_once}");
    assert_eq!(at_once["verdict"], "allow");
    assert_eq!(at_once["rules"], json!([]));
    assert_eq!(at_once["budget_after"]["currencies"]["USDC"]["spent"], "8");
    assert_eq!(
        at_once["budget_after"]["currencies"]["USDC"]["available"],
        "92"
    );

    let (_, to_person) = evaluate(&t.agent, "25").await;
    assert_eq!(to_person["verdict"], "require_approval", "{to_person}");
    assert_eq!(to_person["rules"][0]["rule"], "tool_rules");
    assert_eq!(
        to_person["budget_after"]["currencies"]["USDC"]["reserved"],
        "25"
    );

    let (_, denied) = evaluate(&t.approver, "150").await;
    assert_eq!(denied["verdict"], "deny", "{denied}");
    assert_eq!(denied["reason"], "budget_exceeded");
    let rules: Vec<&str> = denied["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rule"].as_str().unwrap())
        .collect();
    assert_eq!(
        rules,
        ["budget", "tool_rules"],
        "every check that found something"
    );
    assert_eq!(
        denied["budget_after"]["currencies"]["USDC"]["spent"], "5",
        "a denial books nothing"
    );

    let (status, _) = evaluate(&outsider, "3").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "another agent's session");
    for (table, n) in tables.iter().zip(before) {
        assert_eq!(s.count(table).await, n, "evaluating wrote to {table}");
    }
    let body = json!({"session_id": session, "amount": "3", "currency": "USDC",
        "recipient": paygent_testkit::PAYEE, "idempotency_key": "evaluated"});
    let (status, paid) = s.post(&t.agent, "/payments", body).await;
    assert_eq!(status, StatusCode::CREATED, "{paid}");
    assert_eq!(
        s.count("payments").await,
        before_payments + 1,
        "the idempotency key was not taken"
    );
    s.finish().await;
}

/// A person's client may send the digest of the action it showed: over HTTP or the WebSocket, a decision naming
/// another action is refused (409) and changes nothing; naming this one, it lands.
async fn a_decision_lands_only_on_the_action_shown(backend: Backend) {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let session = s.session(&t.agent, json!({})).await;
    let (_, p) = s.pay(&t.agent, session, "25", "USDC").await;
    let id = p["approval_id"].as_str().unwrap();
    let (_, shown) = s.get(&t.approver, &format!("/approvals/{id}")).await;
    let other = format!("sha256:{}", "0".repeat(64));
    for (kind, body) in [
        ("approve", json!({"digest": other})),
        ("reject", json!({"reason": "no", "digest": other})),
        (
            "edit",
            json!({"edited_args": {"amount": "20"}, "digest": other}),
        ),
    ] {
        let (status, refused) = s.decide(&t.admin, id, kind, body).await;
        assert_eq!(status, StatusCode::CONFLICT, "{kind}: {refused}");
        assert!(
            refused["detail"]
                .as_str()
                .unwrap()
                .contains(shown["digest"].as_str().unwrap())
        );
    }
    let mut ws = s.socket(&t.approver, "").await.expect("the socket opens");
    let message = json!({"type": "approve", "id": 1, "request_id": id, "digest": other});
    ws.send(Message::text(message.to_string())).await.unwrap();
    let reply = loop {
        let frame = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
            .await
            .expect("a reply within 10 s")
            .expect("the socket is open")
            .unwrap();
        let value: Value =
            serde_json::from_str(frame.to_text().unwrap_or("{}")).unwrap_or_default();
        if value["id"] == 1 {
            break value;
        }
    };
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["problem"]["status"], 409);
    let (_, still) = s.get(&t.approver, &format!("/approvals/{id}")).await;
    assert_eq!(still["status"], "pending", "nothing landed");

    let (status, approved) = s
        .decide(
            &t.approver,
            id,
            "approve",
            json!({"digest": shown["digest"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{approved}");
    assert_eq!(approved["decision"]["digest"], shown["digest"]);
    s.finish().await;
}

fn usd(v: &Value) -> rust_decimal::Decimal {
    rust_decimal::Decimal::from_str_exact(
        v.as_str()
            .unwrap_or_else(|| panic!("a decimal string: {v}")),
    )
    .unwrap()
}

/// Pays `amount` USDC to the test payee for `description`; returns the payment.
async fn pay_for(
    s: &TestServer,
    agent: &str,
    session: Uuid,
    amount: &str,
    description: &str,
) -> Value {
    let body = json!({"session_id": session, "amount": amount, "currency": "USDC",
        "recipient": paygent_testkit::PAYEE, "description": description});
    let (status, payment) = s.post(agent, "/payments", body).await;
    assert_eq!(status, StatusCode::CREATED, "{payment}");
    payment
}

/// A request shows, as it stood when it was filed: the agent's description, the key's and the session's names,
/// the policy and the check that sent it, whether the payee was ever paid and what it was paid in 30 days, and
/// the budget with this request in it.
async fn a_request_carries_what_a_person_needs_to_decide(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let session = s
        .session(&t.agent, json!({"daily_limit_usd": "1000"}))
        .await;
    let first = pay_for(&s, &t.agent, session, "25", "weather data").await;
    let id = first["approval_id"].as_str().unwrap();
    let (_, view) = s.get(&t.approver, &format!("/approvals/{id}")).await;
    let c = &view["context"];
    assert_eq!(c["description"], "weather data", "{view}");
    assert_eq!(c["agent"]["name"], "Agent");
    assert_eq!(c["session"]["name"], "test");
    assert_eq!(c["session"]["id"], json!(session));
    assert_eq!(c["policy"]["name"], "default");
    assert_eq!(c["rules"][0]["rule"], "tool_rules");
    assert_eq!(c["payee"]["first_payment"], true);
    assert_eq!(usd(&c["payee"]["paid_30d_usd"]), 0.into());
    assert_eq!(usd(&c["budget_after"]["usd"]["reserved"]), 25.into());
    assert_eq!(usd(&c["budget_after"]["usd"]["available"]), 975.into());

    s.approve_and_execute(&t.approver, &t.agent, id).await;
    let small = pay_for(&s, &t.agent, session, "5", "a sample").await;
    assert_eq!(small["status"], "authorized");
    let again = pay_for(&s, &t.agent, session, "30", "more weather").await;
    let id = again["approval_id"].as_str().unwrap();
    let (_, pending) = s.get(&t.approver, "/approvals/pending").await;
    let listed = pending
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == id)
        .unwrap();
    let c = &listed["context"];
    assert_eq!(c["payee"]["first_payment"], false, "{listed}");
    assert_eq!(c["payee"]["payments_30d"], 2);
    assert_eq!(usd(&c["payee"]["paid_30d_usd"]), 30.into());
    assert_eq!(usd(&c["budget_after"]["usd"]["spent"]), 30.into());
    assert_eq!(usd(&c["budget_after"]["usd"]["available"]), 940.into());
    s.finish().await;
}

/// A hand-made history replayed against a draft of the default policy: the counts and the differences are the
/// ones worked out by hand; payments outside the window or of another policy's sessions are not replayed, the
/// policy's own rules find no difference, and nothing is written.
async fn a_simulation_replays_a_hand_made_history(backend: Backend) {
    use paygent_engine::Clock;
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let other = "0x2222222222222222222222222222222222222222";
    let session = s.session(&t.agent, json!({})).await;
    pay_for(&s, &t.agent, session, "1", "before the window").await;
    s.clock.advance(chrono::Duration::seconds(10));
    let from = s.clock.now();
    let small = pay_for(&s, &t.agent, session, "5", "small").await;
    pay_for(&s, &t.agent, session, "25", "large").await;
    let body =
        json!({"session_id": session, "amount": "5", "currency": "USDC", "recipient": other});
    let (_, elsewhere) = s.post(&t.agent, "/payments", body).await;
    pay_for(&s, &t.agent, session, "3", "tiny").await;
    let (_, bound) = s.bound_agent("other", json!({})).await;
    let theirs = s.session(&bound, json!({})).await;
    pay_for(&s, &bound, theirs, "5", "another policy's").await;
    let to = s.clock.now() + chrono::Duration::seconds(1);
    let window = json!({"from": from, "to": to});

    let (status, same) = s
        .post(&t.approver, "/policies/default/simulate", window.clone())
        .await;
    assert_eq!(status, StatusCode::OK, "{same}");
    let counts = |r: &Value| -> Vec<Value> {
        ["replayed", "allow", "require_approval", "deny", "differing"]
            .iter()
            .map(|k| r[*k].clone())
            .collect()
    };
    assert_eq!(
        counts(&same),
        json!([4, 3, 1, 0, 0]).as_array().unwrap().clone(),
        "{same}"
    );

    let mut draft = window.clone();
    draft["rules"] = json!({"approval_threshold_usd": "4", "payees": {"deny": [other]}});
    let written = s.count("audit_log").await;
    let (status, stricter) = s
        .post(&t.admin, "/policies/default/simulate", draft.clone())
        .await;
    assert_eq!(status, StatusCode::OK, "{stricter}");
    assert_eq!(stricter["draft"], true);
    assert_eq!(
        counts(&stricter),
        json!([4, 1, 2, 1, 2]).as_array().unwrap().clone(),
        "{stricter}"
    );
    let differences = stricter["differences"].as_array().unwrap();
    assert_eq!(differences[0]["payment_id"], small["id"]);
    assert_eq!(
        (&differences[0]["happened"], &differences[0]["would"]),
        (&json!("allow"), &json!("require_approval"))
    );
    assert_eq!(differences[1]["payment_id"], elsewhere["id"]);
    assert_eq!(differences[1]["would"], "deny");
    assert_eq!(
        s.count("audit_log").await,
        written,
        "a simulation writes nothing"
    );

    let (status, _) = s
        .post(&t.agent, "/policies/default/simulate", window.clone())
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "agents do not simulate");
    let backwards = json!({"from": to, "to": from});
    let (status, _) = s
        .post(&t.admin, "/policies/default/simulate", backwards)
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    draft["rules"] = json!({"approval_threshold_usd": "-1"});
    let (status, _) = s.post(&t.admin, "/policies/default/simulate", draft).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let unknown = format!("/policies/{}/simulate", Uuid::new_v4());
    assert_eq!(
        s.post(&t.admin, &unknown, window).await.0,
        StatusCode::NOT_FOUND
    );
    s.finish().await;
}
