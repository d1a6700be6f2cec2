//! Webhooks over the real API, on both databases, to a real receiver on loopback that verifies every delivery
//! with the reference Standard Webhooks library.

use paygent_testkit::prometheus::{parsed, sample};
use paygent_testkit::receiver::WebhookReceiver;
use paygent_testkit::{ADMIN_TOKEN, Backend, TestServer, on_both_databases};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;

on_both_databases!(
    deliveries_are_signed_in_order_and_outlast_an_outage,
    an_endpoint_failing_for_a_day_is_disabled_until_enabled,
    only_admins_manage_webhooks,
);

/// Waits (at most 20 s) until the receiver kept `n` deliveries, and answers them.
async fn kept(receiver: &WebhookReceiver, n: usize) -> Vec<Value> {
    let what = format!("{n} deliveries kept");
    let read = || receiver.received();
    paygent_testkit::eventually(Duration::from_secs(20), &what, read, |got| got.len() >= n).await
}

/// Every event after the webhook was made arrives once, signed, in `seq` order, each with its own stable id;
/// while the receiver is down the attempts are logged and the events wait, then arrive in order. After a
/// rotation both secrets verify for a while. A tampered delivery is refused by the receiver's library.
async fn deliveries_are_signed_in_order_and_outlast_an_outage(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let receiver = WebhookReceiver::start().await;
    let deliverer = s.paygent.spawn_webhooks(Duration::from_millis(50));
    let body = json!({"url": receiver.hook(), "description": "ops"});
    let (status, hook) = s.post(&t.admin, "/webhooks", body).await;
    assert_eq!(status, StatusCode::CREATED, "{hook}");
    let secret = hook["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"), "{hook}");
    receiver.set(json!({"secrets": [secret]})).await;
    let session = s.session(&t.agent, json!({})).await;
    for _ in 0..3 {
        s.pay(&t.agent, session, "25", "USDC").await;
    }
    kept(&receiver, 3).await;

    receiver.set(json!({"down": true})).await;
    for _ in 0..2 {
        s.pay(&t.agent, session, "25", "USDC").await;
    }
    let log = format!("/webhooks/{}/deliveries", hook["id"].as_str().unwrap());
    let read = || async { s.get(&t.admin, &log).await.1 };
    let failing = |log: &Value| log.as_array().unwrap().iter().any(|d| d["status"] == 500);
    let what = "a delivery answered 500 in the log";
    paygent_testkit::eventually(Duration::from_secs(20), what, read, failing).await;
    let text = s
        .http
        .get(format!("{}/metrics", s.base))
        .send()
        .await
        .unwrap();
    let metrics = parsed(&text.text().await.unwrap()).await;
    let attempts = |outcome: &str| {
        sample(
            &metrics,
            "paygent_webhook_deliveries_total",
            &[("outcome", outcome)],
        )
    };
    assert!(
        attempts("delivered") >= 3.0 && attempts("failed") >= 1.0,
        "{metrics}"
    );
    receiver.set(json!({"down": false})).await;
    let got = kept(&receiver, 5).await;
    let seqs: Vec<i64> = got.iter().map(|d| d["seq"].as_i64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "in order, none missing, none twice: {seqs:?}"
    );
    assert!(
        got.iter()
            .all(|d| d["type"] == "approval_required" && d["secret"] == 0),
        "{got:?}"
    );
    let ids: std::collections::BTreeSet<&str> =
        got.iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), got.len(), "one id per event");

    let rotate = format!("/webhooks/{}/rotate-secret", hook["id"].as_str().unwrap());
    let (status, rotated) = s.post(&t.admin, &rotate, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let fresh = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(fresh, secret);
    receiver.set(json!({"secrets": [fresh]})).await;
    s.pay(&t.agent, session, "25", "USDC").await;
    kept(&receiver, 6).await;
    receiver.set(json!({"secrets": [secret]})).await;
    s.pay(&t.agent, session, "25", "USDC").await;
    let got = kept(&receiver, 7).await;
    assert_eq!(
        got.len(),
        7,
        "the old secret still verifies during the overlap: {got:?}"
    );
    assert_eq!(receiver.rejected().await, 0);

    let tampered = s
        .http
        .post(receiver.hook())
        .header("webhook-id", "msg_forged")
        .header(
            "webhook-timestamp",
            chrono::Utc::now().timestamp().to_string(),
        )
        .header(
            "webhook-signature",
            "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        )
        .body(r#"{"type":"approved","seq":999}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(tampered.status(), StatusCode::BAD_REQUEST);
    assert_eq!(receiver.rejected().await, 1);
    deliverer.abort();
    s.finish().await;
}

/// An endpoint that keeps failing is retried for a day, then disabled with a `webhook_disabled` event that only
/// admins read; nothing is sent to it until an admin enables it, and then every event it missed arrives, in
/// order, the disabling included.
async fn an_endpoint_failing_for_a_day_is_disabled_until_enabled(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let receiver = WebhookReceiver::start().await;
    let (_, hook) = s
        .post(&t.admin, "/webhooks", json!({"url": receiver.hook()}))
        .await;
    let id = hook["id"].as_str().unwrap().to_owned();
    receiver
        .set(json!({"secrets": [hook["secret"]], "down": true}))
        .await;
    let session = s.session(&t.agent, json!({})).await;
    s.pay(&t.agent, session, "25", "USDC").await;
    s.paygent.deliver_due().await.unwrap();
    let (_, view) = s.get(&t.admin, "/webhooks").await;
    assert!(
        view[0]["failing_since"].is_string() && view[0]["disabled_at"].is_null(),
        "{view}"
    );

    // A day later, still failing: disabled, once.
    s.clock.advance(chrono::Duration::hours(25));
    s.paygent.deliver_due().await.unwrap();
    let (_, view) = s.get(&t.admin, "/webhooks").await;
    assert!(view[0]["disabled_at"].is_string(), "{view}");
    assert_eq!(s.count("events WHERE type = 'webhook_disabled'").await, 1);
    let attempts = format!("/webhooks/{id}/deliveries");
    let tried = s.get(&t.admin, &attempts).await.1.as_array().unwrap().len();
    receiver.set(json!({"down": false})).await;
    s.clock.advance(chrono::Duration::hours(2));
    s.paygent.deliver_due().await.unwrap();
    assert_eq!(
        s.get(&t.admin, &attempts).await.1.as_array().unwrap().len(),
        tried,
        "nothing sent"
    );
    assert!(receiver.received().await.is_empty());

    let enable = format!("/webhooks/{id}/enable");
    assert_eq!(
        s.post(&t.approver, &enable, json!({})).await.0,
        StatusCode::FORBIDDEN
    );
    let (status, enabled) = s.post(&t.admin, &enable, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{enabled}");
    assert!(
        enabled["disabled_at"].is_null() && enabled["failures"] == 0,
        "{enabled}"
    );
    assert_eq!(
        s.post(&t.admin, &enable, json!({})).await.0,
        StatusCode::CONFLICT
    );
    s.paygent.deliver_due().await.unwrap();
    let got = receiver.received().await;
    let types: Vec<&str> = got.iter().map(|d| d["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["approval_required", "webhook_disabled"], "{got:?}");

    // Only admins read `webhook_disabled` on their event streams.
    let (_, marker) = s.pay(&t.agent, session, "25", "USDC").await;
    let mark = marker["approval_id"].as_str().unwrap().to_owned();
    for (key, sees) in [(&t.agent, false), (&t.approver, false), (&t.admin, true)] {
        let text = s
            .events_until(key, "after_seq=0", |t| t.contains(&mark))
            .await;
        assert_eq!(text.contains("event: webhook_disabled"), sees, "{text}");
    }
    let trail = s.get(&t.admin, "/audit?limit=1000").await.1.to_string();
    for action in ["webhook.disabled", "webhook.enabled"] {
        assert!(trail.contains(action), "{action} in {trail}");
    }

    // The delivery log is kept as long as events are, then pruned with them.
    let kept = s.count("webhook_deliveries").await;
    assert!(kept > 0);
    let week = chrono::Duration::days(7);
    assert_eq!(s.paygent.prune_told(week).await.unwrap(), 0);
    s.clock.advance(chrono::Duration::days(8));
    s.paygent.prune_told(week).await.unwrap();
    assert_eq!(s.count("webhook_deliveries").await, 0);
    s.finish().await;
}

/// Agents and approvers cannot register, list, rotate or remove webhooks; bad input is 422; an admin's list
/// never shows a secret; a removed webhook is gone.
async fn only_admins_manage_webhooks(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let body = json!({"url": "https://hooks.example/paygent", "events": ["approved", "rejected"]});
    for key in [&t.agent, &t.approver] {
        assert_eq!(
            s.post(key, "/webhooks", body.clone()).await.0,
            StatusCode::FORBIDDEN
        );
        assert_eq!(s.get(key, "/webhooks").await.0, StatusCode::FORBIDDEN);
    }
    let (status, hook) = s.post(&t.admin, "/webhooks", body).await;
    assert_eq!(status, StatusCode::CREATED, "{hook}");
    let id = hook["id"].as_str().unwrap();
    for key in [&t.agent, &t.approver] {
        let rotate = format!("/webhooks/{id}/rotate-secret");
        assert_eq!(
            s.post(key, &rotate, json!({})).await.0,
            StatusCode::FORBIDDEN
        );
        let path = format!("/webhooks/{id}/deliveries");
        assert_eq!(s.get(key, &path).await.0, StatusCode::FORBIDDEN);
    }
    for bad in [
        json!({"url": "ftp://hooks.example"}),
        json!({"url": "https://hooks.example", "events": ["payment_made"]}),
        // A private address the egress policy refuses.
        json!({"url": "http://10.0.0.1/hook"}),
    ] {
        let (status, problem) = s.post(&t.admin, "/webhooks", bad).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    }
    let (_, list) = s.get(&t.admin, "/webhooks").await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert!(list[0].get("secret").is_none(), "{list}");
    assert_eq!(list[0]["events"], json!(["approved", "rejected"]));
    let path = format!("/webhooks/{id}");
    for (key, expected) in [
        (&t.approver, StatusCode::FORBIDDEN),
        (&t.admin, StatusCode::NO_CONTENT),
        (&t.admin, StatusCode::NOT_FOUND),
    ] {
        assert_eq!(s.call(key, Method::DELETE, &path, None).await.0, expected);
    }
    let trail = s.get(&t.admin, "/audit?limit=1000").await.1.to_string();
    for action in ["webhook.created", "webhook.deleted"] {
        assert!(trail.contains(action), "{action} in {trail}");
    }
    assert!(
        !trail.contains(hook["secret"].as_str().unwrap()),
        "never a secret"
    );
    s.finish().await;
}
