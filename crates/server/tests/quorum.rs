//! Quorums over the real API, on both databases: above a policy's value, several distinct people must approve
//! the same action before it runs.

use chrono::Duration;
use futures::future::join_all;
use paygent_engine::domain::Role;
use paygent_testkit::{ADMIN_TOKEN, Backend, Team, TestServer, on_both_databases};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

on_both_databases!(
    two_people_must_approve_and_racing_approvers_make_one_transition,
    an_edit_starts_the_count_again_and_one_rejection_ends_it,
    groups_decide_who_counts,
    escalation_widens_who_decides_and_silence_still_denies,
);

/// A server whose default policy asks `quorum` above $100, and an agent's session.
async fn quorum_above_100(backend: Backend, quorum: Value) -> (TestServer, Team, Uuid) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let mut rule = quorum;
    rule["above_usd"] = json!("100");
    let body = json!({"quorums": [rule]});
    let (status, policy) = s.put(ADMIN_TOKEN, "/policies/default", body).await;
    assert_eq!(status, StatusCode::OK, "{policy}");
    let session = s.session(&t.agent, json!({})).await;
    (s, t, session)
}

/// Asks for a payment of `amount` USDC; returns (approval id, payment id).
async fn ask(s: &TestServer, t: &Team, session: Uuid, amount: &str) -> (String, String) {
    let (status, p) = s.pay(&t.agent, session, amount, "USDC").await;
    assert_eq!(status, StatusCode::CREATED, "{p}");
    assert_eq!(p["status"], "pending_approval", "{p}");
    let id = |k: &str| p[k].as_str().unwrap().to_owned();
    (id("approval_id"), id("id"))
}

/// $500 needs two people: the first approval leaves it pending with that approval shown, the same person again
/// gets 409; of four people approving at once, exactly one completes the quorum and the rest are refused. A
/// payment under the rule's value needs one person as before.
async fn two_people_must_approve_and_racing_approvers_make_one_transition(backend: Backend) {
    let (s, t, session) = quorum_above_100(backend, json!({"approvals_required": 2})).await;
    let (id, payment) = ask(&s, &t, session, "500").await;
    let (_, view) = s.get(&t.approver, &format!("/approvals/{id}")).await;
    assert_eq!(view["approvals_required"], 2, "{view}");
    assert_eq!(view["approvals"], json!([]));
    let (status, first) = s
        .decide(&t.approver, &id, "approve", json!({"comment": "ok by me"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["status"], "pending", "one of two: {first}");
    assert_eq!(first["approvals"].as_array().unwrap().len(), 1);
    assert_eq!(first["approvals"][0]["comment"], "ok by me");
    let (status, again) = s.decide(&t.approver, &id, "approve", json!({})).await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "the same person twice: {again}"
    );
    let body = json!({"approval_id": id});
    let (status, _) = s
        .post(&t.agent, "/payments/execute-approved", body.clone())
        .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "nothing runs on one approval of two"
    );
    let second = s.key(&t.admin, Role::Approver).await;
    let (status, done) = s.decide(&second, &id, "approve", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["status"], "approved", "{done}");
    let (status, paid) = s.post(&t.agent, "/payments/execute-approved", body).await;
    assert_eq!(status, StatusCode::OK, "{paid}");
    assert_eq!(paid["id"], payment.as_str());

    let (raced, _) = ask(&s, &t, session, "300").await;
    let mut people = vec![t.approver.clone(), second, t.admin.clone()];
    people.push(s.key(&t.admin, Role::Approver).await);
    let answers = join_all(
        people
            .iter()
            .map(|p| s.decide(p, &raced, "approve", json!({}))),
    )
    .await;
    let count = |f: &dyn Fn(&(StatusCode, Value)) -> bool| answers.iter().filter(|a| f(a)).count();
    assert_eq!(
        count(&|(c, v)| *c == StatusCode::OK && v["status"] == "pending"),
        1,
        "{answers:?}"
    );
    assert_eq!(
        count(&|(c, v)| *c == StatusCode::OK && v["status"] == "approved"),
        1,
        "{answers:?}"
    );
    assert_eq!(
        count(&|(c, _)| *c == StatusCode::CONFLICT),
        2,
        "{answers:?}"
    );
    let approved = format!("events WHERE type = 'approved' AND payload LIKE '%{raced}%'");
    assert_eq!(s.count(&approved).await, 1, "one transition");
    let votes = format!("approval_votes WHERE approval_id = '{raced}'");
    assert_eq!(
        s.count(&votes).await,
        2,
        "the refused approvals left nothing"
    );

    let (small, _) = ask(&s, &t, session, "50").await;
    let (status, one) = s.decide(&t.approver, &small, "approve", json!({})).await;
    assert_eq!(
        (status, one["status"].clone()),
        (StatusCode::OK, json!("approved"))
    );
    assert_eq!(one["approvals_required"], 1);
    s.finish().await;
}

/// An edit is a new action: its editor's approval counts for it, the approvals of the old action do not, a
/// decision naming the old digest is refused, and the second person's approval makes it `edited`, paying the
/// edited amount. One rejection ends a request whatever the approvals so far.
async fn an_edit_starts_the_count_again_and_one_rejection_ends_it(backend: Backend) {
    let (s, t, session) = quorum_above_100(backend, json!({"approvals_required": 2})).await;
    let (id, _) = ask(&s, &t, session, "500").await;
    let (_, first) = s.decide(&t.approver, &id, "approve", json!({})).await;
    let old = first["digest"].clone();
    let edit = json!({"edited_args": {"amount": "400"}, "digest": old});
    let (status, edited) = s.decide(&t.admin, &id, "edit", edit).await;
    assert_eq!(status, StatusCode::OK, "{edited}");
    assert_eq!(edited["status"], "pending", "{edited}");
    assert_ne!(edited["digest"], old, "a new action");
    assert_eq!(edited["edited_args"]["amount"], "400");
    let by: Vec<&Value> = edited["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| &v["by"])
        .collect();
    assert_eq!(
        by.len(),
        1,
        "only the editor's approval counts now: {edited}"
    );
    let third = s.key(&t.admin, Role::Approver).await;
    let stale = json!({"digest": old});
    let (status, _) = s.decide(&third, &id, "approve", stale).await;
    assert_eq!(status, StatusCode::CONFLICT, "the old action is gone");
    let fresh = json!({"digest": edited["digest"]});
    let (status, done) = s.decide(&t.approver, &id, "approve", fresh).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["status"], "edited", "{done}");
    assert_eq!(done["decision"]["digest"], edited["digest"]);
    let body = json!({"approval_id": id});
    let (status, paid) = s.post(&t.agent, "/payments/execute-approved", body).await;
    assert_eq!(status, StatusCode::OK, "{paid}");
    assert_eq!(paid["amount"], "400");

    let (refused, payment) = ask(&s, &t, session, "500").await;
    s.decide(&t.approver, &refused, "approve", json!({})).await;
    let no = json!({"reason": "not this month"});
    let (status, rejected) = s.decide(&third, &refused, "reject", no).await;
    assert_eq!(status, StatusCode::OK, "{rejected}");
    assert_eq!(rejected["status"], "rejected");
    let (_, p) = s.get(&t.agent, &format!("/payments/{payment}")).await;
    assert_eq!(
        (p["status"].clone(), p["reason"].clone()),
        (json!("denied"), json!("rejected"))
    );
    s.finish().await;
}

/// A quorum that names groups counts only their members: others get 403 and leave nothing behind; keys are put
/// in groups when they are made, and a bad group name is refused.
async fn groups_decide_who_counts(backend: Backend) {
    let quorum = json!({"approvals_required": 2, "groups": ["finance"]});
    let (s, t, session) = quorum_above_100(backend, quorum).await;
    let member = |name: &'static str| {
        let s = &s;
        async move {
            let body = json!({"name": name, "role": "approver", "groups": ["finance", "ops"]});
            let (status, key) = s.post(ADMIN_TOKEN, "/keys", body).await;
            assert_eq!(status, StatusCode::CREATED, "{key}");
            assert_eq!(key["groups"], json!(["finance", "ops"]));
            key["token"].as_str().unwrap().to_owned()
        }
    };
    let (alice, bob) = (member("alice").await, member("bob").await);
    let bad = json!({"name": "x", "role": "approver", "groups": ["Finance Team"]});
    let (status, problem) = s.post(ADMIN_TOKEN, "/keys", bad).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");

    let (id, _) = ask(&s, &t, session, "500").await;
    let (_, view) = s.get(&alice, &format!("/approvals/{id}")).await;
    assert_eq!(view["groups"], json!(["finance"]));
    let (status, problem) = s.decide(&t.approver, &id, "approve", json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("finance"),
        "{problem}"
    );
    let no = json!({"reason": "no"});
    assert_eq!(
        s.decide(&t.approver, &id, "reject", no).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(s.count("approval_votes").await, 0);
    assert_eq!(
        s.decide(&alice, &id, "approve", json!({})).await.1["status"],
        "pending"
    );
    assert_eq!(
        s.decide(&bob, &id, "approve", json!({})).await.1["status"],
        "approved"
    );
    s.finish().await;
}

/// A request limited to `finance` that nobody decides climbs its chain (`leads` after a minute, `cfo` after two):
/// each step is one event and one audit entry, and lets the step's group decide; a request still undecided at
/// its deadline expires and its payment is denied.
async fn escalation_widens_who_decides_and_silence_still_denies(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let rules = json!({
        "quorums": [{"above_usd": "100", "approvals_required": 1, "groups": ["finance"]}],
        "escalation": [{"after_seconds": 60, "group": "leads"}, {"after_seconds": 120, "group": "cfo"}],
    });
    let (status, policy) = s.put(ADMIN_TOKEN, "/policies/default", rules).await;
    assert_eq!(status, StatusCode::OK, "{policy}");
    let bad = json!({"escalation": [{"after_seconds": 60, "group": "a"}, {"after_seconds": 30, "group": "b"}]});
    let (status, problem) = s.put(ADMIN_TOKEN, "/policies/default", bad).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    let session = s
        .session(&t.agent, json!({"approval_timeout_seconds": 300}))
        .await;
    let body = json!({"name": "lead", "role": "approver", "groups": ["leads"]});
    let (_, lead) = s.post(ADMIN_TOKEN, "/keys", body).await;
    let lead = lead["token"].as_str().unwrap().to_owned();

    let (decided, _) = ask(&s, &t, session, "500").await;
    let (silent, payment) = ask(&s, &t, session, "500").await;
    let (_, view) = s.get(&lead, &format!("/approvals/{silent}")).await;
    assert_eq!(view["escalated"], 0, "{view}");
    assert_eq!(view["escalation"].as_array().unwrap().len(), 2);
    assert_eq!(
        s.decide(&lead, &decided, "approve", json!({})).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        s.paygent.escalate_due().await.unwrap(),
        0,
        "nothing is due yet"
    );

    s.clock.advance(Duration::seconds(61));
    assert_eq!(s.paygent.escalate_due().await.unwrap(), 2);
    assert_eq!(s.paygent.escalate_due().await.unwrap(), 0, "each step once");
    let (_, view) = s.get(&lead, &format!("/approvals/{silent}")).await;
    assert_eq!(view["escalated"], 1, "{view}");
    assert_eq!(view["groups"], json!(["finance", "leads"]));
    let (status, approved) = s.decide(&lead, &decided, "approve", json!({})).await;
    assert_eq!(
        (status, approved["status"].clone()),
        (StatusCode::OK, json!("approved"))
    );

    s.clock.advance(Duration::seconds(60));
    assert_eq!(
        s.paygent.escalate_due().await.unwrap(),
        1,
        "the decided request climbs no further"
    );
    let (_, view) = s.get(&lead, &format!("/approvals/{silent}")).await;
    assert_eq!(view["groups"], json!(["finance", "leads", "cfo"]));
    assert_eq!(view["escalate_at"], Value::Null, "the chain is done");
    let escalated =
        format!("events WHERE type = 'approval_escalated' AND payload LIKE '%{silent}%'");
    assert_eq!(s.count(&escalated).await, 2);
    assert_eq!(
        s.count("audit_log WHERE action = 'approval.escalated'")
            .await,
        3
    );

    s.clock.advance(Duration::seconds(180));
    assert_eq!(s.paygent.expire_overdue().await.unwrap(), 1);
    let (_, view) = s.get(&lead, &format!("/approvals/{silent}")).await;
    assert_eq!(view["status"], "expired");
    let (_, p) = s.get(&t.agent, &format!("/payments/{payment}")).await;
    assert_eq!(
        (p["status"].clone(), p["reason"].clone()),
        (json!("denied"), json!("expired"))
    );
    s.finish().await;
}
