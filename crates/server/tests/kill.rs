//! The kill switch and the sweeper, on both databases.

use chrono::Duration;
use paygent_engine::{Paygent, Store, StoreOptions};
use paygent_testkit::{ADMIN_TOKEN, Backend, TestServer, on_both_databases, test_prices};
use reqwest::StatusCode;
use rust_decimal::Decimal;
use serde_json::json;

on_both_databases!(
    the_emergency_stop_halts_everything,
    killing_a_session_cancels_only_its_requests,
    overdue_requests_are_swept_once,
    a_stop_answers_at_once_whatever_is_pending,
);

async fn reserved(s: &TestServer, token: &str, session: uuid::Uuid) -> Decimal {
    let (_, b) = s.get(token, &format!("/sessions/{session}/budget")).await;
    Decimal::from_str_exact(b["currencies"]["USDC"]["reserved"].as_str().unwrap()).unwrap()
}

async fn the_emergency_stop_halts_everything(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let session = s
        .session(&t.agent, json!({"daily_limits": {"USDC": "1000"}}))
        .await;
    let (_, pending) = s.pay(&t.agent, session, "20", "USDC").await;
    let (_, approved) = s.pay(&t.agent, session, "30", "USDC").await;
    let approved_id = approved["approval_id"].as_str().unwrap();
    s.decide(&t.approver, &approved_id, "approve", json!({}))
        .await;

    let (status, _) = s
        .post(&t.approver, "/kill-switch", json!({"engaged": true}))
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "only admins pull the global stop"
    );
    let (status, view) = s
        .post(
            &t.admin,
            "/kill-switch",
            json!({"engaged": true, "reason": "agent looping"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["engaged"], true);
    s.swept().await;
    let (_, seen) = s.get(&t.agent, "/kill-switch").await;
    assert_eq!(
        seen["reason"], "agent looping",
        "agents can see why they are stopped"
    );

    let pending_id = pending["approval_id"].as_str().unwrap();
    let (_, request) = s
        .get(&t.approver, &format!("/approvals/{pending_id}"))
        .await;
    assert_eq!(request["status"], "cancelled");
    let (_, p) = s
        .get(
            &t.agent,
            &format!("/payments/{}", pending["id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(
        (p["status"].as_str(), p["reason"].as_str()),
        (Some("denied"), Some("killed"))
    );
    assert_eq!(
        reserved(&s, &t.agent, session).await,
        Decimal::ZERO,
        "reservations are released"
    );

    let (_, denied) = s.pay(&t.agent, session, "1", "USDC").await;
    assert_eq!(denied["status"], "denied");
    assert_eq!(denied["reason"], "killed");
    let (status, problem) = s
        .post(
            &t.agent,
            "/payments/execute-approved",
            json!({"approval_id": approved_id}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "nothing executes while stopped: {problem}"
    );

    let (status, released) = s
        .post(&t.admin, "/kill-switch", json!({"engaged": false}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(released["engaged"], false);
    assert_eq!(
        s.pay(&t.agent, session, "1", "USDC").await.1["status"],
        "authorized"
    );
    let (status, _) = s
        .post(
            &t.agent,
            "/payments/execute-approved",
            json!({"approval_id": approved_id}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "a payment voided by the stop stays void"
    );

    let kinds: Vec<&str> = s
        .paygent
        .store()
        .events_after(paygent_engine::DEFAULT_TENANT, 0, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind.as_str())
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "kill_switch").count(),
        3,
        "engaged, swept, released"
    );
    assert_eq!(kinds.iter().filter(|k| **k == "cancelled").count(), 1);
    assert_eq!(
        s.count("audit_log WHERE action = 'kill_switch.engaged'")
            .await,
        1
    );
    s.finish().await;
}

async fn killing_a_session_cancels_only_its_requests(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let doomed = s
        .session(&t.agent, json!({"daily_limits": {"USDC": "100"}}))
        .await;
    let other = s.session(&t.agent, json!({})).await;
    let (_, a) = s.pay(&t.agent, doomed, "40", "USDC").await;
    let (_, b) = s.pay(&t.agent, other, "40", "USDC").await;

    let (status, _) = s
        .post(&t.agent, &format!("/sessions/{doomed}/kill"), json!({}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "agents cannot kill");
    let (status, killed) = s
        .post(
            &t.approver,
            &format!("/sessions/{doomed}/kill"),
            json!({"reason": "odd behaviour"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{killed}");
    assert_eq!(killed["state"], "killed");
    s.swept().await;

    let (_, a_req) = s
        .get(
            &t.approver,
            &format!("/approvals/{}", a["approval_id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(a_req["status"], "cancelled");
    assert_eq!(a_req["decision"]["note"], "killed");
    let (_, b_req) = s
        .get(
            &t.approver,
            &format!("/approvals/{}", b["approval_id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(b_req["status"], "pending", "other sessions are untouched");
    assert_eq!(reserved(&s, &t.agent, doomed).await, Decimal::ZERO);
    assert_eq!(
        s.pay(&t.agent, doomed, "1", "USDC").await.1["reason"],
        "killed"
    );
    assert_eq!(
        s.pay(&t.agent, other, "1", "USDC").await.1["status"],
        "authorized"
    );

    let (status, _) = s
        .post(
            &t.approver,
            &format!("/sessions/{doomed}/revive"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "only admins revive");
    let (status, revived) = s
        .post(&t.admin, &format!("/sessions/{doomed}/revive"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{revived}");
    assert_eq!(revived["state"], "active");
    assert_eq!(
        s.pay(&t.agent, doomed, "1", "USDC").await.1["status"],
        "authorized"
    );
    let (_, audit) = s.get(&t.admin, "/audit?limit=1000").await;
    let entry = |action: &str| {
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["action"] == action)
            .unwrap_or_else(|| panic!("no {action} entry"))
            .clone()
    };
    assert_eq!(entry("session.killed")["data"]["reason"], "odd behaviour");
    let batch = entry("stop.batch");
    assert_eq!(
        batch["data"]["cancelled_approvals"],
        json!([a["approval_id"]])
    );
    assert_eq!(batch["subject"], format!("session:{doomed}"));
    assert_eq!(entry("stop.swept")["data"]["cancelled"], 1);
    s.finish().await;
}

async fn overdue_requests_are_swept_once(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let session = s
        .session(
            &t.agent,
            json!({"approval_timeout_seconds": 60, "daily_limits": {"USDC": "100"}}),
        )
        .await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        let (_, p) = s.pay(&t.agent, session, "11", "USDC").await;
        ids.push(p["approval_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        s.paygent.expire_overdue().await.unwrap(),
        0,
        "nothing is overdue yet"
    );
    s.clock.advance(Duration::seconds(61));

    // Two instances on one database sweep at once: each request expires exactly once.
    let store = Store::connect(&s.database_url, &StoreOptions::default())
        .await
        .unwrap();
    let other = Paygent::new(store, test_prices(), s.clock.clone());
    let (a, b) = tokio::join!(s.paygent.expire_overdue(), other.expire_overdue());
    assert_eq!(a.unwrap() + b.unwrap(), 5);
    assert_eq!(
        s.count("audit_log WHERE action = 'approval.expired'").await,
        5
    );
    assert_eq!(s.count("events WHERE type = 'expired'").await, 5);
    other.store().close().await;

    for id in &ids {
        let (_, r) = s.get(&t.approver, &format!("/approvals/{id}")).await;
        assert_eq!(r["status"], "expired");
        let (status, _) = s.decide(&t.approver, &id, "approve", json!({})).await;
        assert_eq!(
            status,
            StatusCode::CONFLICT,
            "an expired request is never approved"
        );
    }
    assert_eq!(reserved(&s, &t.agent, session).await, Decimal::ZERO);

    // The background sweeper does the same without being asked.
    let (_, p) = s.pay(&t.agent, session, "12", "USDC").await;
    let id = p["approval_id"].as_str().unwrap().to_owned();
    s.clock.advance(Duration::seconds(61));
    let sweeper = s.paygent.spawn_sweeper(
        std::time::Duration::from_millis(20),
        chrono::Duration::days(7),
    );
    let path = format!("/approvals/{id}");
    let read = || async { s.get(&t.approver, &path).await.1["status"].clone() };
    let what = "the sweeper to expire the request";
    let within = std::time::Duration::from_secs(5);
    paygent_testkit::eventually(within, what, read, |status| status == "expired").await;
    sweeper.abort();
    s.finish().await;
}

/// More pending requests than the database takes parameters in one statement: the emergency stop still answers
/// 200 at once, nothing in its scope can be approved from its commit on (before its sweep gets there: the sweep
/// cancels the oldest first, and the request decided is the newest), another instance refuses payments at once,
/// and the sweep cancels every one.
async fn a_stop_answers_at_once_whatever_is_pending(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let session = s.session(&t.agent, json!({})).await;
    let (_, first) = s.pay(&t.agent, session, "20", "USDC").await;
    let first = first["approval_id"].as_str().unwrap().to_owned();
    let n = match backend {
        Backend::Sqlite => 33_000,
        Backend::Postgres => 66_000,
    };
    s.clock.advance(Duration::seconds(1));
    let (_, last) = s.pay(&t.agent, session, "20", "USDC").await;
    let last = last["approval_id"].as_str().unwrap().to_owned();
    s.copy_pending(&first, n - 1).await;
    let other = s.another_instance().await;

    let (status, view) = s
        .post(
            &t.admin,
            "/kill-switch",
            json!({"engaged": true, "reason": "runaway"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{view}");
    let (status, problem) = s.decide(&t.approver, &last, "approve", json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("emergency stop"),
        "refused by the stop, not by a sweep that came first: {problem}"
    );
    let (_, p) = other.pay(&t.agent, session, "1", "USDC").await;
    assert_eq!(
        p["reason"], "killed",
        "the other instance refuses at once: {p}"
    );

    s.swept().await;
    let count = |status: &str| format!("approval_requests WHERE status = '{status}'");
    assert_eq!(s.count(&count("pending")).await, 0);
    assert_eq!(s.count(&count("cancelled")).await, n as i64 + 1);
    let (_, audit) = s.get(&t.admin, "/audit?limit=1000").await;
    let swept = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "stop.swept")
        .cloned()
        .expect("the sweep's end is audited");
    assert_eq!(swept["data"]["cancelled"], n as i64 + 1);
    other.finish().await;
    s.finish().await;
}
