//! Standing approvals over the real API, on both databases: a person approving a payment lets its session go on
//! paying that payee up to a total for a while, exactly up to the cap, until it expires or is revoked.

use chrono::Duration;
use futures::future::join_all;
use paygent_testkit::{ADMIN_TOKEN, Backend, PAYEE, Team, TestServer, on_both_databases};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

on_both_databases!(
    a_standing_approval_covers_exactly_its_cap,
    racing_payments_take_no_more_than_the_cap,
    it_ends_when_it_expires_or_is_revoked,
);

/// A server, a team, an agent's session, and a $25 request to the payee approved with a standing approval of
/// `max_usd` for an hour; returns the standing approval's view.
async fn granted(backend: Backend, max_usd: &str) -> (TestServer, Team, Uuid, Value) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let session = s.session(&t.agent, json!({})).await;
    let (_, asked) = s.pay(&t.agent, session, "25", "USDC").await;
    let id = asked["approval_id"].as_str().unwrap();
    let body = json!({"standing": {"max_usd": max_usd, "minutes": 60}});
    let (status, approved) = s.decide(&t.approver, id, "approve", body).await;
    assert_eq!(status, StatusCode::OK, "{approved}");
    let (status, list) = s
        .get(
            &t.approver,
            &format!("/standing-approvals?session_id={session}"),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let standing = list[0].clone();
    assert_eq!(standing["approval_id"], id, "{standing}");
    (s, t, session, standing)
}

async fn pay(s: &TestServer, agent: &str, session: Uuid, amount: &str, to: &str) -> Value {
    let body =
        json!({"session_id": session, "amount": amount, "currency": "USDC", "recipient": to});
    let (status, payment) = s.post(agent, "/payments", body).await;
    assert_eq!(status, StatusCode::CREATED, "{payment}");
    payment
}

/// $20 and $20 go under a $51 standing approval, each audited as allowed by it; $12 more would pass $51 and
/// asks a person, $11 takes it to exactly $51; another payee or session is not covered; one person cannot stand
/// in for a quorum.
async fn a_standing_approval_covers_exactly_its_cap(backend: Backend) {
    let (s, t, session, standing) = granted(backend, "51").await;
    for _ in 0..2 {
        assert_eq!(
            pay(&s, &t.agent, session, "20", PAYEE).await["status"],
            "authorized"
        );
    }
    let (_, list) = s.get(&t.agent, "/standing-approvals").await;
    assert_eq!(
        (&list[0]["used_usd"], &list[0]["remaining_usd"]),
        (&json!("40"), &json!("11")),
        "{list}"
    );
    let over = pay(&s, &t.agent, session, "12", PAYEE).await;
    assert_eq!(over["status"], "pending_approval", "past the cap: {over}");
    let last = pay(&s, &t.agent, session, "11", PAYEE).await;
    assert_eq!(last["status"], "authorized", "exactly the cap: {last}");
    let other = "0x2222222222222222222222222222222222222222";
    assert_eq!(
        pay(&s, &t.agent, session, "15", other).await["status"],
        "pending_approval"
    );
    let elsewhere = s.session(&t.agent, json!({})).await;
    assert_eq!(
        pay(&s, &t.agent, elsewhere, "15", PAYEE).await["status"],
        "pending_approval"
    );
    let by_standing = format!(
        "audit_log WHERE action = 'payment.authorized' AND data LIKE '%{}%'",
        standing["id"].as_str().unwrap()
    );
    assert_eq!(s.count(&by_standing).await, 3);

    let rules = json!({"quorums": [{"above_usd": "20", "approvals_required": 2}]});
    assert_eq!(
        s.put(ADMIN_TOKEN, "/policies/default", rules).await.0,
        StatusCode::OK
    );
    let (_, big) = s.pay(&t.agent, session, "30", "USDC").await;
    let body = json!({"standing": {"max_usd": "100", "minutes": 60}});
    let id = big["approval_id"].as_str().unwrap();
    let (status, problem) = s.decide(&t.approver, id, "approve", body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    let bad = json!({"standing": {"max_usd": "0", "minutes": 60}});
    assert_eq!(
        s.decide(&t.approver, id, "approve", bad).await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    s.finish().await;
}

/// Ten $11 payments at once under a $55 standing approval: exactly five are covered, the rest ask a person.
async fn racing_payments_take_no_more_than_the_cap(backend: Backend) {
    let (s, t, session, _) = granted(backend, "55").await;
    let paid = join_all((0..10).map(|_| pay(&s, &t.agent, session, "11", PAYEE))).await;
    let count = |status: &str| paid.iter().filter(|p| p["status"] == status).count();
    assert_eq!(
        (count("authorized"), count("pending_approval")),
        (5, 5),
        "{paid:?}"
    );
    let (_, list) = s.get(&t.approver, "/standing-approvals").await;
    assert_eq!(list[0]["used_usd"], "55");
    s.finish().await;
}

/// A standing approval stops covering when it expires, or at once when a person revokes it; agents cannot
/// revoke, a second revocation is 409, another tenant's is not found, and another agent lists none of them.
async fn it_ends_when_it_expires_or_is_revoked(backend: Backend) {
    let (s, t, session, standing) = granted(backend, "100").await;
    assert_eq!(
        pay(&s, &t.agent, session, "11", PAYEE).await["status"],
        "authorized"
    );
    s.clock.advance(Duration::minutes(61));
    assert_eq!(
        pay(&s, &t.agent, session, "11", PAYEE).await["status"],
        "pending_approval",
        "expired"
    );

    let (_, asked) = s.pay(&t.agent, session, "25", "USDC").await;
    let body = json!({"standing": {"max_usd": "100", "minutes": 60}});
    s.decide(
        &t.approver,
        asked["approval_id"].as_str().unwrap(),
        "approve",
        body,
    )
    .await;
    let (_, list) = s.get(&t.approver, "/standing-approvals").await;
    let fresh = list[0]["id"].as_str().unwrap().to_owned();
    assert_ne!(fresh, standing["id"].as_str().unwrap(), "newest first");
    assert_eq!(
        pay(&s, &t.agent, session, "11", PAYEE).await["status"],
        "authorized"
    );
    let path = format!("/standing-approvals/{fresh}");
    let revoke = |token: &str| s.http.delete(s.url(&path)).bearer_auth(token);
    let refused = s.send(revoke(&t.agent)).await;
    assert_eq!(
        refused.status(),
        StatusCode::FORBIDDEN,
        "agents never revoke"
    );
    let revoked = s.send(revoke(&t.approver)).await;
    assert_eq!(revoked.status(), StatusCode::OK);
    assert_eq!(
        pay(&s, &t.agent, session, "11", PAYEE).await["status"],
        "pending_approval",
        "revoked"
    );
    assert_eq!(
        s.send(revoke(&t.admin)).await.status(),
        StatusCode::CONFLICT
    );
    let elsewhere = s.tenant("elsewhere").await;
    assert_eq!(
        s.send(revoke(&elsewhere)).await.status(),
        StatusCode::NOT_FOUND
    );
    let stranger = s.key(&t.admin, paygent_engine::domain::Role::Agent).await;
    let (status, theirs) = s.get(&stranger, "/standing-approvals").await;
    assert_eq!(
        (status, theirs),
        (StatusCode::OK, json!([])),
        "another agent's are not listed"
    );
    let (_, own) = s.get(&t.agent, "/standing-approvals").await;
    assert_eq!(
        own.as_array().unwrap().len(),
        2,
        "the agent sees its session's"
    );
    s.finish().await;
}
