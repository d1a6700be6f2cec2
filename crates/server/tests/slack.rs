//! Slack approvals over the real API, on both databases, with a Slack stand-in on loopback that records what it
//! is sent and presses buttons signed as Slack signs them.

use paygent_testkit::slack::{SlackStandIn, buttons, text};
use paygent_testkit::{
    ADMIN_TOKEN, Backend, Settings, TestServer, Wiring, eventually, on_both_databases,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

on_both_databases!(
    a_press_in_slack_decides_as_the_mapped_approver,
    presses_slack_did_not_sign_or_nobody_is_mapped_to_decide_nothing,
    only_deciding_keys_are_slack_users_and_only_servers_with_slack_post,
);

/// A server that posts as the stand-in's Slack app, with its notifier running.
async fn with_slack(backend: Backend, slack: &SlackStandIn) -> TestServer {
    let app = slack.app();
    let wiring = Wiring(Arc::new(move |p| p.with_slack(app.clone())));
    let settings = Settings {
        wiring: Some(wiring),
        ..Settings::default()
    };
    let s = TestServer::start_with(backend, settings).await;
    std::mem::forget(s.paygent.spawn_notifiers(Duration::from_millis(50)));
    s
}

/// An approver key of the first tenant that Slack user `user` decides with; its id.
async fn slack_approver(s: &TestServer, name: &str, user: &str) -> String {
    let key = json!({"name": name, "role": "approver", "slack_user": user});
    let (status, key) = s.post(ADMIN_TOKEN, "/keys", key).await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    assert_eq!(key["slack_user"], user);
    key["id"].as_str().unwrap().to_owned()
}

/// An agent bound to a policy that posts to channel C0PAYGENT, asking for a 25 USDC payment; the request's id.
async fn asked(s: &TestServer, agent: &str) -> String {
    let session = s.session(agent, json!({})).await;
    let body = json!({"session_id": session, "amount": "25", "currency": "USDC",
        "recipient": paygent_testkit::PAYEE, "description": "weather data <!channel>"});
    let (status, paid) = s.post(agent, "/payments", body).await;
    assert_eq!(status, StatusCode::CREATED, "{paid}");
    paid["approval_id"].as_str().unwrap().to_owned()
}

/// Waits (at most 20 s) for the stand-in's `n`th call of `method` about request `id`, and answers it.
async fn call(slack: &SlackStandIn, method: &str, id: &str, n: usize) -> Value {
    let read = || async {
        let calls = slack.calls().await;
        let about: Vec<Value> = calls
            .into_iter()
            .filter(|c| c["method"] == method && text(c).contains(id))
            .collect();
        about.get(n - 1).cloned().unwrap_or(Value::Null)
    };
    let what = format!("Slack call {n} of {method} about {id}");
    eventually(Duration::from_secs(20), &what, read, |c| !c.is_null()).await
}

/// The message names the agent's words (inert), the amount, the budget and the deadline, with Approve and
/// Reject buttons bound to the request's action; a signed press by the Slack user an admin mapped to an
/// approver key decides as that key, and the message is updated with who decided. A decision made elsewhere
/// updates it too.
async fn a_press_in_slack_decides_as_the_mapped_approver(backend: Backend) {
    let slack = SlackStandIn::start().await;
    let s = with_slack(backend, &slack).await;
    let alice = slack_approver(&s, "Alice", "U0ALICE").await;
    let rules = json!({"notify": {"slack_channel": "C0PAYGENT"}});
    let (_, agent) = s.bound_agent("Ops Bot", rules).await;
    let id = asked(&s, &agent).await;

    let posted = call(&slack, "chat.postMessage", &id, 1).await;
    assert_eq!(posted["body"]["channel"], "C0PAYGENT");
    let shown = text(&posted);
    for part in [
        "Ops Bot",
        "*25 USDC*",
        "weather data &lt;!channel&gt;",
        "Budget",
        "Decide by",
    ] {
        assert!(shown.contains(part), "{part:?} in {shown}");
    }
    assert!(
        !shown.contains("<!channel>"),
        "an agent's words mention nobody: {shown}"
    );
    let pressed = buttons(&posted);
    let approve = pressed
        .iter()
        .find(|b| b["action_id"] == "approve")
        .unwrap();
    let (_, request) = s.get(ADMIN_TOKEN, &format!("/approvals/{id}")).await;
    let digest = request["digest"].as_str().unwrap();
    assert!(
        approve["value"].as_str().unwrap().ends_with(digest),
        "{approve}"
    );

    let answer = slack.press(&s.base, "U0ALICE", approve, json!({})).await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    assert_eq!(answer.body["status"], "approved");
    assert_eq!(answer.body["decision"]["by"], alice);
    let updated = call(&slack, "chat.update", &id, 1).await;
    assert_eq!(updated["body"]["ts"], posted["answer"]["ts"]);
    assert!(buttons(&updated).is_empty(), "{updated}");
    let shown = text(&updated);
    assert!(
        shown.contains("Approved by *Alice* (<@U0ALICE>)"),
        "{shown}"
    );
    let again = slack.press(&s.base, "U0ALICE", approve, json!({})).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{:?}", again.body);

    let other = asked(&s, &agent).await;
    let posted = call(&slack, "chat.postMessage", &other, 1).await;
    let reject = buttons(&posted)
        .into_iter()
        .find(|b| b["action_id"] == "reject")
        .unwrap();
    let answer = slack.press(&s.base, "U0ALICE", &reject, json!({})).await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    assert_eq!(answer.body["status"], "rejected");
    let shown = text(&call(&slack, "chat.update", &other, 1).await);
    assert!(shown.contains("Rejected by *Alice*"), "{shown}");

    let third = asked(&s, &agent).await;
    call(&slack, "chat.postMessage", &third, 1).await;
    let t = s.team(ADMIN_TOKEN).await;
    let decided = s
        .post(
            &t.approver,
            &format!("/approvals/{third}/approve"),
            json!({}),
        )
        .await;
    assert_eq!(decided.0, StatusCode::OK, "{}", decided.1);
    let shown = text(&call(&slack, "chat.update", &third, 1).await);
    assert!(shown.contains("Approved by *Approver*"), "{shown}");

    // Where messages are is kept while their requests could change, and as long as events after that.
    assert_eq!(s.count("slack_messages").await, 3);
    let week = chrono::Duration::days(7);
    s.clock.advance(chrono::Duration::days(8));
    s.paygent.prune_told(week).await.unwrap();
    assert_eq!(s.count("slack_messages").await, 3);
    s.clock.advance(chrono::Duration::days(7));
    s.paygent.prune_told(week).await.unwrap();
    assert_eq!(s.count("slack_messages").await, 0);
    s.finish().await;
}

/// A press with another secret, signed too long ago, by a Slack user no key is mapped to (in this tenant: one
/// of another tenant's is not), or on an action other than the one shown, is refused and decides nothing.
async fn presses_slack_did_not_sign_or_nobody_is_mapped_to_decide_nothing(backend: Backend) {
    let slack = SlackStandIn::start().await;
    let s = with_slack(backend, &slack).await;
    slack_approver(&s, "Alice", "U0ALICE").await;
    let other_tenant = s.tenant("elsewhere").await;
    let bob = json!({"name": "Bob", "role": "admin", "slack_user": "U0BOB"});
    let (status, body) = s.post(&other_tenant, "/keys", bob).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, agent) = s
        .bound_agent("Ops Bot", json!({"notify": {"slack_channel": "C0PAYGENT"}}))
        .await;
    let id = asked(&s, &agent).await;
    let posted = call(&slack, "chat.postMessage", &id, 1).await;
    let approve = buttons(&posted)
        .into_iter()
        .find(|b| b["action_id"] == "approve")
        .unwrap();

    let refusals = [
        (
            "U0ALICE",
            json!({"secret": "not-the-signing-secret"}),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "U0ALICE",
            json!({"signed_ago": 400}),
            StatusCode::UNAUTHORIZED,
        ),
        ("U0MALLORY", json!({}), StatusCode::FORBIDDEN),
        ("U0BOB", json!({}), StatusCode::FORBIDDEN),
    ];
    for (user, change, status) in refusals {
        let answer = slack.press(&s.base, user, &approve, change.clone()).await;
        assert_eq!(answer.status, status, "{user} {change}: {:?}", answer.body);
    }
    // Only a press Slack signed is answered in Slack: the person mapped to no key is told why, privately.
    let told = || async {
        let calls = slack.calls().await;
        let replies: Vec<Value> = calls
            .into_iter()
            .filter(|c| c["method"] == "response_url")
            .collect();
        json!(replies)
    };
    let replies = eventually(Duration::from_secs(20), "two replies to Slack", told, |r| {
        r.as_array().unwrap().len() >= 2
    })
    .await;
    assert_eq!(replies.as_array().unwrap().len(), 2, "{replies}");
    let mallory = replies
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["body"])
        .find(|b| {
            b["text"]
                .as_str()
                .unwrap_or_default()
                .contains("U0MALLORY is mapped to no live key")
        });
    assert_eq!(
        mallory.map(|b| b["response_type"].clone()),
        Some(json!("ephemeral")),
        "{replies}"
    );
    let mut forged = approve.clone();
    let value = approve["value"].as_str().unwrap();
    forged["value"] = json!(format!("{}{}", &value[..value.len() - 4], "0000"));
    let answer = slack.press(&s.base, "U0ALICE", &forged, json!({})).await;
    assert_eq!(answer.status, StatusCode::CONFLICT, "{:?}", answer.body);

    let (_, request) = s.get(ADMIN_TOKEN, &format!("/approvals/{id}")).await;
    assert_eq!(request["status"], "pending", "{request}");
    let answer = slack.press(&s.base, "U0ALICE", &approve, json!({})).await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    s.finish().await;
}

/// Only approvers and admins are Slack users, one live key each in a tenant (a revoked key frees its Slack
/// user); a server without a Slack app refuses a policy naming a channel, and its endpoint knows no app.
async fn only_deciding_keys_are_slack_users_and_only_servers_with_slack_post(backend: Backend) {
    let slack = SlackStandIn::start().await;
    let s = with_slack(backend, &slack).await;
    let agent = json!({"name": "bot", "role": "agent", "slack_user": "U0BOT"});
    let (status, body) = s.post(ADMIN_TOKEN, "/keys", agent).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let bad = json!({"name": "x", "role": "approver", "slack_user": "alice"});
    let (status, body) = s.post(ADMIN_TOKEN, "/keys", bad).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let first = slack_approver(&s, "Alice", "U0ALICE").await;
    let twin = json!({"name": "Alice again", "role": "approver", "slack_user": "U0ALICE"});
    let (status, body) = s.post(ADMIN_TOKEN, "/keys", twin.clone()).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, _) = s
        .call(
            ADMIN_TOKEN,
            reqwest::Method::DELETE,
            &format!("/keys/{first}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = s.post(ADMIN_TOKEN, "/keys", twin).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let bad_channel = json!({"name": "p", "notify": {"slack_channel": "general channel"}});
    let (status, body) = s.post(ADMIN_TOKEN, "/policies", bad_channel).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    s.finish().await;

    let plain = TestServer::start(backend).await;
    let policy = json!({"name": "p", "notify": {"slack_channel": "C0PAYGENT"}});
    let (status, body) = plain.post(ADMIN_TOKEN, "/policies", policy).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("Slack"), "{body}");
    let button = json!({"action_id": "approve", "value": "x"});
    let answer = slack
        .press(&plain.base, "U0ALICE", &button, json!({}))
        .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND, "{:?}", answer.body);
    plain.finish().await;
}
