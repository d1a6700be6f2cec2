//! Policies: people own the rules, agents are bound to them and may only tighten them, over real HTTP on both
//! databases.

use futures::future::join_all;
use paygent_testkit::{ADMIN_TOKEN, Backend, TestServer, on_both_databases};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

on_both_databases!(
    an_agent_cannot_write_its_own_guard,
    policies_are_versioned_and_audited,
    a_bound_policy_denies_and_routes,
    edits_are_held_to_the_policy,
    limits_hold_across_sessions_and_periods,
    first_payments_to_a_payee,
    the_policy_bounds_what_a_session_chooses,
    pending_approvals_are_capped_per_agent,
    racing_payments_fill_the_pending_cap_exactly,
    a_policy_holds_full_payee_lists,
    a_change_on_another_instance_applies_at_once,
);

const ALLOWED: &str = "0x00000000000000000000000000000000000000a0";
const DENIED: &str = "0x00000000000000000000000000000000000000bd";
const OTHER: &str = "0x00000000000000000000000000000000000000c0";

async fn pay_to(s: &TestServer, agent: &str, session: Uuid, amount: &str, to: &str) -> Value {
    let (status, body) = s
        .post(
            agent,
            "/payments",
            json!({"session_id": session, "amount": amount, "currency": "USDC", "recipient": to}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body
}

/// The attack from the issue: an agent raises its own threshold and pays half a million at once. Now the
/// session is refused, naming the field and the bound, and a person's stricter default applies at once.
async fn an_agent_cannot_write_its_own_guard(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    for (config, field) in [
        (
            json!({"approval_threshold_usd": "1000000000000"}),
            "approval_threshold_usd",
        ),
        (
            json!({"approval_timeout_seconds": 604801}),
            "approval_timeout_seconds",
        ),
    ] {
        let (status, problem) = s
            .post(&t.agent, "/sessions", json!({"config": config}))
            .await;
        assert!(status.is_client_error(), "{config}: {problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains(field),
            "{problem}"
        );
    }
    let (status, problem) = s
        .post(
            &t.agent,
            "/sessions",
            json!({"config": {"approval_threshold_usd": "11"}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("at most 10"),
        "{problem}"
    );
    assert_eq!(s.count("sessions").await, 0, "nothing was written");

    let session = s.session(&t.agent, json!({})).await;
    let (status, _) = s
        .put(
            &t.agent,
            "/policies/default",
            json!({"approval_threshold_usd": "1000"}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "agents never write policy");
    assert_eq!(
        s.get(&t.agent, "/policies/default").await.0,
        StatusCode::FORBIDDEN
    );
    let (status, tightened) = s
        .put(
            ADMIN_TOKEN,
            "/policies/default",
            json!({"approval_threshold_usd": "2"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{tightened}");
    let p = pay_to(&s, &t.agent, session, "3", OTHER).await;
    assert_eq!(
        p["status"], "pending_approval",
        "the stricter policy applies to an open session"
    );
    let (_, request) = s
        .get(
            &t.approver,
            &format!("/approvals/{}", p["approval_id"].as_str().unwrap()),
        )
        .await;
    assert!(
        request["reason"]
            .as_str()
            .unwrap()
            .contains("policy \"default\" v1"),
        "the card says which policy sent it: {request}"
    );
    s.finish().await;
}

async fn policies_are_versioned_and_audited(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let (status, default) = s.get(&t.approver, "/policies/default").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(default["version"], 0);
    assert_eq!(default["approval_threshold_usd"], "10", "today's defaults");
    let (status, created) = s
        .post(
            &t.admin,
            "/policies",
            json!({"name": "ops", "max_per_payment_usd": "50"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["version"], 1);
    let id = created["id"].as_str().unwrap();
    let (status, _) = s.post(&t.admin, "/policies", json!({"name": "ops"})).await;
    assert_eq!(status, StatusCode::CONFLICT, "names are unique");
    let (status, _) = s
        .post(&t.approver, "/policies", json!({"name": "mine"}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    for (bad, expected) in [
        (
            json!({"approval_threshold_usd": 5}),
            StatusCode::BAD_REQUEST,
        ),
        (json!({"surprise": true}), StatusCode::BAD_REQUEST),
        (
            json!({"approval_threshold_usd": "-1"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"payees": {"deny": ["bob"]}}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"thresholds": {"http_get": "1"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ] {
        let (status, problem) = s
            .put(&t.admin, &format!("/policies/{id}"), bad.clone())
            .await;
        assert_eq!(status, expected, "{bad}: {problem}");
    }
    let (status, changed) = s
        .put(
            &t.admin,
            &format!("/policies/{id}"),
            json!({"max_per_payment_usd": "40"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_eq!(changed["version"], 2);
    let (_, read) = s.get(&t.approver, &format!("/policies/{id}")).await;
    assert_eq!(read["max_per_payment_usd"], "40");
    let (_, listed) = s.get(&t.approver, "/policies").await;
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["default", "ops"]);
    let (_, audit) = s.get(&t.admin, "/audit?limit=1000").await;
    let change = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "policy.changed")
        .expect("the change is audited");
    assert_eq!(change["data"]["old"]["max_per_payment_usd"], "50");
    assert_eq!(change["data"]["new"]["max_per_payment_usd"], "40");
    assert_eq!(change["data"]["version"], 2);
    let (status, _) = s
        .get(&t.approver, &format!("/policies/{}", Uuid::new_v4()))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = s
        .post(
            &t.admin,
            "/keys",
            json!({"name": "x", "role": "agent", "policy_id": Uuid::new_v4()}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "a key names only a policy that exists"
    );
    s.finish().await;
}

/// A key's policy denies above its maximum and to denied payees, sends payees outside its allow list to a
/// person, and a session of that key may not loosen it.
async fn a_bound_policy_denies_and_routes(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (_, agent) = s
        .bound_agent(
            "strict",
            json!({"max_per_payment_usd": "50", "approval_threshold_usd": "20",
               "payees": {"allow": [ALLOWED], "deny": [DENIED]}}),
        )
        .await;
    let (status, problem) = s
        .post(
            &agent,
            "/sessions",
            json!({"config": {"max_per_payment_usd": "60"}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("max_per_payment_usd")
    );
    let session = s.session(&agent, json!({})).await;

    let p = pay_to(&s, &agent, session, "15", ALLOWED).await;
    assert_eq!(p["status"], "authorized", "under its threshold of 20: {p}");
    let p = pay_to(&s, &agent, session, "25", ALLOWED).await;
    assert_eq!(p["status"], "pending_approval");
    let p = pay_to(&s, &agent, session, "51", ALLOWED).await;
    assert_eq!(p["status"], "denied", "{p}");
    assert_eq!(p["reason"], "policy_denied");
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("max_per_payment_usd"),
        "{p}"
    );
    let p = pay_to(&s, &agent, session, "1", DENIED).await;
    assert_eq!(p["status"], "denied");
    assert!(p["detail"].as_str().unwrap().contains("payees.deny"), "{p}");
    let p = pay_to(&s, &agent, session, "1", OTHER).await;
    assert_eq!(
        p["status"], "pending_approval",
        "outside the allow list a person decides"
    );
    s.finish().await;
}

/// An approver's edit may not pay anyone the policy would not: a denied payee, or one outside its allow list.
async fn edits_are_held_to_the_policy(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let (_, agent) = s
        .bound_agent(
            "listed",
            json!({"max_per_payment_usd": "100", "payees": {"allow": [ALLOWED], "deny": [DENIED]}}),
        )
        .await;
    let session = s.session(&agent, json!({})).await;
    let p = pay_to(&s, &agent, session, "30", OTHER).await;
    let edit = format!("/approvals/{}/edit", p["approval_id"].as_str().unwrap());
    for to in ["0x00000000000000000000000000000000000000e1", DENIED] {
        let (status, problem) = s
            .post(
                &t.approver,
                &edit,
                json!({"edited_args": {"recipient": to}}),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{to}: {problem}");
    }
    let (_, still) = s
        .get(
            &t.approver,
            &format!("/approvals/{}", p["approval_id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(still["status"], "pending", "nothing was half-written");
    let (status, edited) = s
        .post(
            &t.approver,
            &edit,
            json!({"edited_args": {"recipient": ALLOWED, "amount": "20"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{edited}");
    assert_eq!(edited["edited_args"]["recipient"], ALLOWED);
    s.finish().await;
}

/// A policy's limits count every session of the bound key: opening a new session resets nothing. Reservations
/// count, a payment reported failed gives its share back, and a new day or week starts afresh.
async fn limits_hold_across_sessions_and_periods(backend: Backend) {
    let s = TestServer::start(backend).await;
    let wednesday = chrono::DateTime::parse_from_rfc3339("2026-12-02T10:00:00Z").unwrap();
    s.clock.set(wednesday.with_timezone(&chrono::Utc));
    let (_, agent) = s
        .bound_agent(
            "limited",
            json!({"approval_threshold_usd": "40", "limits": [
                {"period": "day", "usd": "30"},
                {"period": "week", "usd": "60"},
                {"period": "day", "currency": "CRO", "amount": "100"},
            ]}),
        )
        .await;
    let first = s.session(&agent, json!({})).await;
    assert_eq!(
        pay_to(&s, &agent, first, "20", OTHER).await["status"],
        "authorized"
    );
    let second = s.session(&agent, json!({})).await;
    let over = pay_to(&s, &agent, second, "15", OTHER).await;
    assert_eq!(
        over["status"], "denied",
        "a new session resets nothing: {over}"
    );
    assert_eq!(over["reason"], "budget_exceeded");
    assert!(
        over["detail"]
            .as_str()
            .unwrap()
            .contains("daily limit of 30 USD"),
        "{over}"
    );
    let fits = pay_to(&s, &agent, second, "10", OTHER).await;
    assert_eq!(fits["status"], "authorized", "exactly at the limit: {fits}");
    let path = format!("/payments/{}/outcome", fits["id"].as_str().unwrap());
    let (status, _) = s.post(&agent, &path, json!({"status": "failed"})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        pay_to(&s, &agent, second, "10", OTHER).await["status"],
        "authorized",
        "a failed payment gave its share back"
    );
    s.clock.advance(chrono::Duration::days(1));
    let (status, cro) = s
        .post(
            &agent,
            "/payments",
            json!({"session_id": first, "amount": "101", "currency": "CRO", "recipient": OTHER}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(
        cro["detail"]
            .as_str()
            .unwrap()
            .contains("daily limit of 100 CRO"),
        "{cro}"
    );

    assert_eq!(
        pay_to(&s, &agent, first, "25", OTHER).await["status"],
        "authorized"
    );
    s.clock.advance(chrono::Duration::days(1));
    let week = pay_to(&s, &agent, first, "10", OTHER).await;
    assert_eq!(week["status"], "denied", "{week}");
    assert!(
        week["detail"]
            .as_str()
            .unwrap()
            .contains("weekly limit of 60 USD"),
        "{week}"
    );

    let (_, routed) = s
        .bound_agent(
            "routed",
            json!({"limits": [{"period": "month", "usd": "5"}], "over_limit": "approve"}),
        )
        .await;
    let session = s.session(&routed, json!({})).await;
    let p = pay_to(&s, &routed, session, "6", OTHER).await;
    assert_eq!(p["status"], "pending_approval", "a person decides: {p}");
    s.finish().await;
}

/// "The first payment to a new payee needs a person": once a person let one through, the next goes at once,
/// however the address is spelled. With `deny`, a new payee is never paid, nor edited in.
async fn first_payments_to_a_payee(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let (_, agent) = s
        .bound_agent("careful", json!({"payees": {"new_payee": "approve"}}))
        .await;
    let session = s.session(&agent, json!({})).await;
    let first = pay_to(&s, &agent, session, "1", ALLOWED).await;
    assert_eq!(first["status"], "pending_approval", "{first}");
    let approval = first["approval_id"].as_str().unwrap();
    let (_, request) = s.get(&t.approver, &format!("/approvals/{approval}")).await;
    assert!(
        request["reason"]
            .as_str()
            .unwrap()
            .contains("first payment"),
        "{request}"
    );
    s.approve_and_execute(&t.approver, &agent, approval).await;
    let again = pay_to(
        &s,
        &agent,
        session,
        "1",
        &ALLOWED.to_uppercase().replace("0X", "0x"),
    )
    .await;
    assert_eq!(again["status"], "authorized", "a known payee: {again}");

    let (_, strict) = s
        .bound_agent("closed", json!({"payees": {"new_payee": "deny"}}))
        .await;
    let session = s.session(&strict, json!({})).await;
    let p = pay_to(&s, &strict, session, "1", OTHER).await;
    assert_eq!(p["status"], "denied", "{p}");
    assert!(
        p["detail"].as_str().unwrap().contains("payees.new_payee"),
        "{p}"
    );
    s.finish().await;
}

/// Over-budget payments go to a person and executions go on past a rejection only where the policy lets a
/// session choose so; a policy that says deny denies open sessions' payments too.
async fn the_policy_bounds_what_a_session_chooses(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let asks = json!({"daily_limit_usd": "5", "on_budget_exceeded": "require_approval"});
    let session = s.session(&t.agent, asks.clone()).await;
    assert_eq!(
        pay_to(&s, &t.agent, session, "6", OTHER).await["status"],
        "pending_approval"
    );
    let closed = json!({"on_budget_exceeded": "deny", "on_reject": "stop"});
    let (status, _) = s.put(ADMIN_TOKEN, "/policies/default", closed).await;
    assert_eq!(status, StatusCode::OK);
    let p = pay_to(&s, &t.agent, session, "1", OTHER).await;
    assert_eq!(p["status"], "denied", "the open session obeys: {p}");
    assert_eq!(p["reason"], "budget_exceeded");
    for (config, field) in [
        (asks, "on_budget_exceeded"),
        (json!({"on_reject": "continue"}), "on_reject"),
    ] {
        let (status, problem) = s
            .post(&t.agent, "/sessions", json!({"config": config}))
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains(field),
            "{problem}"
        );
    }
    s.finish().await;
}

/// An agent may keep only so many requests waiting on people, across its sessions: past the policy's cap a
/// payment that needs a person is refused (429) and nothing is written; a decision makes room.
async fn pending_approvals_are_capped_per_agent(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let (_, agent) = s
        .bound_agent("capped", json!({"max_pending_approvals": 3}))
        .await;
    let mut waiting = Vec::new();
    for _ in 0..3 {
        let session = s.session(&agent, json!({})).await;
        waiting.push(pay_to(&s, &agent, session, "20", OTHER).await);
    }
    let session = s.session(&agent, json!({})).await;
    let before = s.count("payments").await;
    let (status, problem) = s
        .post(
            &agent,
            "/payments",
            json!({"session_id": session, "amount": "20", "currency": "USDC", "recipient": OTHER}),
        )
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("max_pending_approvals"),
        "{problem}"
    );
    assert_eq!(s.count("payments").await, before, "nothing was written");
    assert_eq!(
        pay_to(&s, &agent, session, "1", OTHER).await["status"],
        "authorized",
        "payments at once go on"
    );
    let first = waiting[0]["approval_id"].as_str().unwrap();
    let (status, _) = s
        .decide(&t.approver, &first, "reject", json!({"reason": "no"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        pay_to(&s, &agent, session, "20", OTHER).await["status"],
        "pending_approval"
    );
    // Every way a request stops waiting makes room: an expiry, and a killed session's cancellation.
    s.clock.advance(chrono::Duration::minutes(16));
    s.paygent.expire_overdue().await.unwrap();
    let doomed = s.session(&agent, json!({})).await;
    for _ in 0..3 {
        let paid = pay_to(&s, &agent, doomed, "20", OTHER).await;
        assert_eq!(paid["status"], "pending_approval", "{paid}");
    }
    let kill = format!("/sessions/{doomed}/kill");
    let (status, killed) = s.post(&t.admin, &kill, json!({"reason": "done"})).await;
    assert_eq!(status, StatusCode::OK, "{killed}");
    s.swept().await;
    let session = s.session(&agent, json!({})).await;
    assert_eq!(
        pay_to(&s, &agent, session, "20", OTHER).await["status"],
        "pending_approval"
    );
    let kept = "SELECT pending FROM key_pending WHERE key_id IN (SELECT requested_by FROM approval_requests)";
    assert_eq!(
        s.scalar(kept).await,
        s.count("approval_requests WHERE status = 'pending'").await,
        "the count kept is the count"
    );
    let (status, _) = s
        .post(
            ADMIN_TOKEN,
            "/policies",
            json!({"name": "none", "max_pending_approvals": 0}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    s.finish().await;
}

/// Racing payments that need a person fill the agent's cap exactly, and racing decisions make room as they
/// land: on PostgreSQL they commit in groups under one hold of the tenant's lock, each reading the count as the
/// writes before it in its group left it.
async fn racing_payments_fill_the_pending_cap_exactly(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let (_, agent) = s
        .bound_agent("capped", json!({"max_pending_approvals": 5}))
        .await;
    let session = s.session(&agent, json!({})).await;
    let body =
        json!({"session_id": session, "amount": "20", "currency": "USDC", "recipient": OTHER});
    let race = || join_all((0..24).map(|_| s.post(&agent, "/payments", body.clone())));
    let waiting = |answers: &[(StatusCode, Value)]| {
        let filed = answers
            .iter()
            .filter(|(status, _)| *status == StatusCode::CREATED);
        let refused =
            (answers.iter()).filter(|(status, _)| *status == StatusCode::TOO_MANY_REQUESTS);
        (
            filed
                .map(|(_, p)| p["approval_id"].clone())
                .collect::<Vec<_>>(),
            refused.count(),
        )
    };
    let (filed, refused) = waiting(&race().await);
    assert_eq!((filed.len(), refused), (5, 19), "the cap, exactly");
    let kept = "SELECT pending FROM key_pending WHERE key_id IN (SELECT requested_by FROM approval_requests)";
    let pending = "approval_requests WHERE status = 'pending'";
    assert_eq!((s.scalar(kept).await, s.count(pending).await), (5, 5));
    let reject = |id: Value| {
        s.decide(
            &t.approver,
            id.as_str().unwrap().to_owned(),
            "reject",
            json!({"reason": "no"}),
        )
    };
    let (decided, answers) = tokio::join!(join_all(filed.into_iter().map(reject)), race());
    assert!(
        decided.iter().all(|(status, _)| *status == StatusCode::OK),
        "{decided:?}"
    );
    let (filed, refused) = waiting(&answers);
    assert_eq!(
        filed.len() + refused,
        24,
        "each filed or refused for the cap"
    );
    let counted = (s.scalar(kept).await, s.count(pending).await);
    assert_eq!(
        counted,
        (filed.len() as i64, filed.len() as i64),
        "the count kept is the count"
    );
    let (more, _) = waiting(&race().await);
    assert_eq!(
        filed.len() + more.len(),
        5,
        "the room the decisions made, exactly"
    );
    assert_eq!((s.scalar(kept).await, s.count(pending).await), (5, 5));
    s.finish().await;
}

/// A policy may hold the most payees its lists allow (1,000 each, about 90 KB of JSON: more than other bodies
/// may be); a larger body is refused with 413 and changes nothing, and other endpoints keep their 64 KiB.
async fn a_policy_holds_full_payee_lists(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let list = |from: usize| -> Vec<String> {
        (from..from + 1000).map(|i| format!("0x{i:040x}")).collect()
    };
    let full = json!({"payees": {"allow": list(1), "deny": list(5000)}});
    let (status, policy) = s.put(ADMIN_TOKEN, "/policies/default", full).await;
    assert_eq!(status, StatusCode::OK, "{policy}");
    assert_eq!(policy["payees"]["deny"].as_array().unwrap().len(), 1000);
    let huge = json!({"payees": {"allow": list(1)}, "padding": "x".repeat(1024 * 1024)});
    let (status, problem) = s.put(ADMIN_TOKEN, "/policies/default", huge).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{problem}");
    let (_, now) = s.get(ADMIN_TOKEN, "/policies/default").await;
    assert_eq!(now["version"], policy["version"], "nothing changed");
    let session = s.session(&t.agent, json!({})).await;
    let big = json!({"session_id": session, "amount": "1", "currency": "USDC",
        "recipient": ALLOWED, "description": "x".repeat(70 * 1024)});
    let (status, _) = s.post(&t.agent, "/payments", big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    s.finish().await;
}

/// Each instance keeps the rules it parsed, by policy version: a change made through another instance applies to
/// the very next payment here, tightening and loosening alike.
async fn a_change_on_another_instance_applies_at_once(backend: Backend) {
    let s = TestServer::start(backend).await;
    let other = s.another_instance().await;
    let (id, agent) = s
        .bound_agent("shifting", json!({"approval_threshold_usd": "20"}))
        .await;
    let session = s.session(&agent, json!({})).await;
    let p = pay_to(&s, &agent, session, "15", ALLOWED).await;
    assert_eq!(p["status"], "authorized", "{p}");
    let strict = json!({"approval_threshold_usd": "5", "payees": {"deny": [ALLOWED.to_uppercase().replace("0X", "0x")]}});
    let (status, v2) = other
        .put(ADMIN_TOKEN, &format!("/policies/{id}"), strict)
        .await;
    assert_eq!(status, StatusCode::OK, "{v2}");
    let p = pay_to(&s, &agent, session, "1", ALLOWED).await;
    assert_eq!(p["status"], "denied", "version 2 denies this payee: {p}");
    assert!(p["detail"].as_str().unwrap().contains("payees.deny"), "{p}");
    let p = pay_to(&s, &agent, session, "6", OTHER).await;
    assert_eq!(
        p["status"], "pending_approval",
        "version 2's threshold: {p}"
    );
    let (status, v3) = other
        .put(
            ADMIN_TOKEN,
            &format!("/policies/{id}"),
            json!({"approval_threshold_usd": "20"}),
        )
        .await;
    assert_eq!(
        (status, v3["version"].clone()),
        (StatusCode::OK, json!(3)),
        "{v3}"
    );
    let p = pay_to(&s, &agent, session, "15", ALLOWED).await;
    assert_eq!(p["status"], "authorized", "version 3 allows it again: {p}");
    other.stop().await;
    s.finish().await;
}
