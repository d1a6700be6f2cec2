//! `GET /metrics` over the real API, on both databases, read with Prometheus's own parser: its counters move as
//! agents pay and people decide, its gauges follow what waits and what runs, and it is refused to anyone but an admin once loopback needs a key.

use paygent_testkit::prometheus::{parsed, sample};
use paygent_testkit::{ADMIN_TOKEN, Backend, Settings, TestServer, on_both_databases};
use reqwest::StatusCode;
use serde_json::json;

on_both_databases!(
    counters_move_as_agents_pay_and_people_decide,
    without_loopback_leave_only_admins_read_it,
);

/// One payment allowed, two sent to people (one approved, one rejected), and one denied in a killed session:
/// each counted once, by outcome and tool, with its time; nothing left pending.
async fn counters_move_as_agents_pay_and_people_decide(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let session = s.session(&t.agent, json!({})).await;
    let scrape = || async {
        let resp = s
            .http
            .get(format!("{}/metrics", s.base))
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::OK,
            "loopback reads it without a key"
        );
        let kind = resp.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
        parsed(&resp.text().await.unwrap()).await
    };
    let before = scrape().await;
    assert_eq!(sample(&before, "paygent_guard_decisions_total", &[]), 0.0);

    assert_eq!(
        s.pay(&t.agent, session, "5", "USDC").await.1["status"],
        "authorized"
    );
    let mut asked = Vec::new();
    for _ in 0..2 {
        let (_, p) = s.pay(&t.agent, session, "25", "USDC").await;
        assert_eq!(p["status"], "pending_approval", "{p}");
        asked.push(p["approval_id"].as_str().unwrap().to_owned());
    }
    let pending = scrape().await;
    assert_eq!(sample(&pending, "paygent_pending_approvals", &[]), 2.0);
    assert_eq!(
        s.decide(&t.approver, &asked[0], "approve", json!({}))
            .await
            .0,
        StatusCode::OK
    );
    let reject = json!({"reason": "no"});
    assert_eq!(
        s.decide(&t.approver, &asked[1], "reject", reject).await.0,
        StatusCode::OK
    );
    let kill = format!("/sessions/{session}/kill");
    assert_eq!(
        s.post(&t.approver, &kill, json!({})).await.0,
        StatusCode::OK
    );
    assert_eq!(
        s.pay(&t.agent, session, "5", "USDC").await.1["status"],
        "denied"
    );

    let after = scrape().await;
    let judged = |outcome: &str| {
        let labels = [("outcome", outcome), ("tool", "transfer")];
        sample(&after, "paygent_guard_decisions_total", &labels)
    };
    assert_eq!(
        [
            judged("authorized"),
            judged("pending_approval"),
            judged("denied")
        ],
        [1.0, 2.0, 1.0]
    );
    assert_eq!(sample(&after, "paygent_guard_seconds_count", &[]), 4.0);
    let ended = |outcome: &str| {
        sample(
            &after,
            "paygent_approval_decisions_total",
            &[("outcome", outcome)],
        )
    };
    assert_eq!([ended("approved"), ended("rejected")], [1.0, 1.0]);
    assert_eq!(
        sample(&after, "paygent_approval_decision_seconds_count", &[]),
        2.0
    );
    assert_eq!(sample(&after, "paygent_pending_approvals", &[]), 0.0);
    // The server's own sweeps write too, so one may be waiting at any one scrape; none is left waiting.
    let within = std::time::Duration::from_secs(10);
    let waiting = || async { sample(&scrape().await, "paygent_writes_waiting", &[]) };
    paygent_testkit::eventually(within, "no write left waiting", waiting, |n| *n == 0.0).await;
    // The hub hands events to live subscribers on its own task, so the last may still be on its way.
    let fanned_out = || async {
        json!(sample(
            &scrape().await,
            "paygent_event_fanout_lag_seconds_count",
            &[]
        ))
    };
    let what = "four events fanned out";
    paygent_testkit::eventually(within, what, fanned_out, |n| n.as_f64() >= Some(4.0)).await;
    assert_eq!(sample(&after, "paygent_database_errors_total", &[]), 0.0);

    // An execution waiting on a person is driven by this instance until it is cancelled.
    assert_eq!(sample(&after, "paygent_executions_running", &[]), 0.0);
    let steps = json!([{"tool": "transfer",
        "args": {"to": paygent_testkit::PAYEE, "amount": "25", "currency": "USDC"}}]);
    let other = s.session(&t.agent, json!({})).await;
    let id = s.execute(&t.agent, other, steps).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let waiting = paygent_testkit::status_is("awaiting_approval");
    paygent_testkit::wait_for(&s, &t.agent, &id, waiting).await;
    let running = || async { sample(&scrape().await, "paygent_executions_running", &[]) };
    assert_eq!(running().await, 1.0);
    let cancel = format!("/executions/{id}/cancel");
    assert_eq!(s.post(&t.agent, &cancel, json!({})).await.0, StatusCode::OK);
    let what = "the cancelled execution's runner to end";
    paygent_testkit::eventually(within, what, running, |n| *n == 0.0).await;
    s.finish().await;
}

/// Configured so loopback needs a key too: no key is 401, an agent's or an approver's key 403, an admin's 200.
async fn without_loopback_leave_only_admins_read_it(backend: Backend) {
    let settings = Settings {
        keyless_loopback_metrics: Some(false),
        ..Settings::default()
    };
    let s = TestServer::start_with(backend, settings).await;
    let t = s.team(ADMIN_TOKEN).await;
    let read = |key: Option<&str>| {
        let mut request = s.http.get(format!("{}/metrics", s.base));
        if let Some(k) = key {
            request = request.bearer_auth(k);
        }
        async move { request.send().await.unwrap().status() }
    };
    assert_eq!(read(None).await, StatusCode::UNAUTHORIZED);
    assert_eq!(read(Some(&t.agent)).await, StatusCode::FORBIDDEN);
    assert_eq!(read(Some(&t.approver)).await, StatusCode::FORBIDDEN);
    assert_eq!(read(Some(&t.admin)).await, StatusCode::OK);
    s.finish().await;
}
