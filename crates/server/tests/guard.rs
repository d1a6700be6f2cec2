//! The guard, decisions and execution, over real HTTP on both databases.

use futures::future::join_all;
use paygent_testkit::{ADMIN_TOKEN, Backend, TestServer, on_both_databases};
use reqwest::StatusCode;
use serde_json::json;

on_both_databases!(
    thresholds_follow_usd_value,
    approve_then_execute_once,
    reject_stores_the_reason,
    edit_is_revalidated,
    racing_decisions_have_one_winner,
    racing_executions_make_one_payment,
    executions_racing_an_edit_pay_the_edit,
    idempotency_keys_return_the_same_payment,
    outcomes_are_reported_once,
    overdue_requests_expire,
);

async fn thresholds_follow_usd_value(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let session = s.session(&t.agent, json!({})).await;
    for (amount, currency, expected) in [
        ("9.99", "USDC", "authorized"),
        ("10.00", "USDC", "authorized"),
        ("10.01", "USDC", "pending_approval"),
        ("100", "CRO", "authorized"),
        ("1", "ETH", "pending_approval"),
    ] {
        let (status, body) = s.pay(&t.agent, session, amount, currency).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["status"], expected, "{amount} {currency}: {body}");
        assert_eq!(body["amount"], amount);
        assert_eq!(
            body["approval_id"].is_string(),
            expected == "pending_approval"
        );
    }
    let (_, cro) = s.pay(&t.agent, session, "100", "CRO").await;
    assert_eq!(cro["usd_value"], "8.00", "CRO is priced at 0.08");
    let (_, pending) = s
        .get(
            &t.approver,
            &format!("/approvals/pending?session_id={session}"),
        )
        .await;
    let pending = pending.as_array().unwrap();
    assert_eq!(pending.len(), 2);
    assert_eq!(pending[0]["usd_value"], "10.01", "oldest first");
    assert_eq!(pending[1]["usd_value"], "3000");
    assert_eq!(
        pending[0]["allowed_decisions"],
        json!(["approve", "edit", "reject"])
    );
    assert_eq!(pending[0]["tool"], "transfer");

    // A session's own threshold moves the line.
    let strict = s
        .session(&t.agent, json!({"approval_threshold_usd": "1"}))
        .await;
    let (_, body) = s.pay(&t.agent, strict, "1.01", "USDC").await;
    assert_eq!(body["status"], "pending_approval");
    s.finish().await;
}

async fn approve_then_execute_once(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let session = s.session(&t.agent, json!({})).await;
    let (_, payment) = s.pay(&t.agent, session, "25.00", "USDC").await;
    let approval = payment["approval_id"].as_str().unwrap().to_owned();

    let (status, early) = s
        .post(
            &t.agent,
            "/payments/execute-approved",
            json!({"approval_id": approval}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "not approved yet: {early}");

    let (status, decided) = s
        .decide(&t.approver, &approval, "approve", json!({"comment": "ok"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{decided}");
    assert_eq!(decided["status"], "approved");
    assert_eq!(decided["decision"]["note"], "ok");
    assert!(decided["decision"]["by"].is_string());

    let (status, again) = s
        .decide(&t.approver, &approval, "reject", json!({"reason": "late"}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{again}");

    let (status, executed) = s
        .post(
            &t.agent,
            "/payments/execute-approved",
            json!({"approval_id": approval}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{executed}");
    assert_eq!(executed["id"], payment["id"]);
    assert_eq!(executed["status"], "authorized");
    assert_eq!(executed["amount"], "25.00");

    let (status, repeat) = s
        .post(
            &t.agent,
            "/payments/execute-approved",
            json!({"approval_id": approval}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(repeat, executed, "a repeat returns the same payment");

    let (status, smuggled) = s
        .post(
            &t.agent,
            "/payments/execute-approved",
            json!({"approval_id": approval, "amount": "1000000"}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "arguments are never taken from the caller: {smuggled}"
    );

    let (_, after) = s.get(&t.approver, &format!("/approvals/{approval}")).await;
    assert!(after["consumed_at"].is_string());
    let (_, session_view) = s.get(&t.agent, &format!("/sessions/{session}")).await;
    assert_eq!(
        session_view["budget"]["currencies"]["USDC"]["spent"],
        "25.00"
    );
    s.finish().await;
}

async fn reject_stores_the_reason(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let session = s.session(&t.agent, json!({})).await;
    let (_, payment) = s.pay(&t.agent, session, "50", "USDC").await;
    let approval = payment["approval_id"].as_str().unwrap();

    let (status, body) = s
        .decide(&t.approver, &approval, "reject", json!({"reason": "  "}))
        .await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "a reason is required: {body}"
    );

    let (status, body) = s
        .decide(
            &t.approver,
            &approval,
            "reject",
            json!({"reason": "unknown vendor"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, stored) = s.get(&t.admin, &format!("/approvals/{approval}")).await;
    assert_eq!(stored["status"], "rejected");
    assert_eq!(stored["decision"]["note"], "unknown vendor");
    let (_, p) = s
        .get(
            &t.agent,
            &format!("/payments/{}", payment["id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(p["status"], "denied");
    assert_eq!(p["reason"], "rejected");
    let (status, _) = s
        .post(
            &t.agent,
            "/payments/execute-approved",
            json!({"approval_id": approval}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "a rejected request never executes"
    );
    s.finish().await;
}

async fn edit_is_revalidated(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let session = s.session(&t.agent, json!({})).await;
    let (_, payment) = s.pay(&t.agent, session, "15.00", "USDC").await;
    let approval = payment["approval_id"].as_str().unwrap();
    let edit = format!("/approvals/{approval}/edit");

    let audit_before = s.count("audit_log").await;
    for (args, why) in [
        (
            json!({"amount": "1000000"}),
            "an approver cannot raise the amount",
        ),
        (json!({"amount": "-5"}), "negative"),
        (json!({"amount": "1e3"}), "not a plain decimal"),
        (json!({"currency": "DOGE"}), "unknown currency"),
        (
            json!({"recipient": "https://elsewhere.example/"}),
            "changes the tool",
        ),
        (json!({"fee": "1"}), "unknown field"),
        (json!({"amount": 5}), "a number, not a string"),
    ] {
        let (status, body) = s
            .post(&t.approver, &edit, json!({"edited_args": args}))
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{why}: {body}");
        assert!(body["detail"].as_str().unwrap().len() > 5);
    }
    let (_, unchanged) = s.get(&t.approver, &format!("/approvals/{approval}")).await;
    assert_eq!(
        unchanged["status"], "pending",
        "an invalid edit changes nothing"
    );
    assert!(unchanged["edited_args"].is_null());
    assert_eq!(
        s.count("audit_log").await,
        audit_before,
        "and writes no audit entry"
    );

    // Agents never decide, edits included.
    let (status, _) = s
        .post(&t.agent, &edit, json!({"edited_args": {"amount": "12.00"}}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let (status, edited) = s
        .post(
            &t.approver,
            &edit,
            json!({"edited_args": {"amount": "12.00"}, "comment": "trimmed"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{edited}");
    assert_eq!(edited["status"], "edited");
    assert_eq!(edited["edited_args"]["amount"], "12.00");
    assert_eq!(
        edited["args"]["amount"], "15.00",
        "the original request is kept"
    );

    let (_, executed) = s
        .post(
            &t.agent,
            "/payments/execute-approved",
            json!({"approval_id": approval}),
        )
        .await;
    assert_eq!(
        executed["amount"], "12.00",
        "the edited amount is what executes"
    );
    assert_eq!(executed["usd_value"], "12.00");
    assert_eq!(executed["status"], "authorized");

    // An admin may raise the value.
    let (_, payment) = s.pay(&t.agent, session, "15.00", "USDC").await;
    let approval = payment["approval_id"].as_str().unwrap();
    let (status, body) = s
        .decide(
            &t.admin,
            &approval,
            "edit",
            json!({"edited_args": {"amount": "20"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    s.finish().await;
}

async fn racing_decisions_have_one_winner(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let session = s.session(&t.agent, json!({})).await;
    let (_, payment) = s.pay(&t.agent, session, "30", "USDC").await;
    let approval = payment["approval_id"].as_str().unwrap().to_owned();

    let racers = (0..50).map(|i| {
        let (path, body) = match i % 3 {
            0 => ("approve", json!({"comment": format!("racer {i}")})),
            1 => ("reject", json!({"reason": format!("racer {i}")})),
            _ => (
                "edit",
                json!({"edited_args": {"amount": "29"}, "comment": format!("racer {i}")}),
            ),
        };
        let url = format!("/approvals/{approval}/{path}");
        let s = &s;
        let token = if i % 2 == 0 { &t.approver } else { &t.admin };
        async move { (path, s.post(token, &url, body).await) }
    });
    let results = join_all(racers).await;
    let winners: Vec<_> = results
        .iter()
        .filter(|(_, (st, _))| *st == StatusCode::OK)
        .collect();
    assert_eq!(winners.len(), 1, "exactly one decision lands");
    for (_, (status, body)) in &results {
        assert!(
            *status == StatusCode::OK || *status == StatusCode::CONFLICT,
            "losers get 409: {status} {body}"
        );
    }
    let (kind, (_, won)) = winners[0];
    let (_, stored) = s.get(&t.admin, &format!("/approvals/{approval}")).await;
    assert_eq!(
        stored["status"], won["status"],
        "the final state is the winner's"
    );
    assert_eq!(stored["decision"], won["decision"]);
    let expected = match *kind {
        "approve" => "approved",
        "reject" => "rejected",
        _ => "edited",
    };
    assert_eq!(stored["status"], expected);

    let (_, audit) = s.get(&t.admin, "/audit?limit=1000").await;
    let decisions = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["subject"] == format!("approval:{approval}"))
        .filter(|e| {
            matches!(
                e["action"].as_str(),
                Some("approval.approved" | "approval.rejected" | "approval.edited")
            )
        })
        .count();
    assert_eq!(decisions, 1, "exactly one decision entry in the audit log");
    s.finish().await;
}

async fn racing_executions_make_one_payment(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let session = s.session(&t.agent, json!({})).await;
    let (_, payment) = s.pay(&t.agent, session, "40", "USDC").await;
    let approval = payment["approval_id"].as_str().unwrap().to_owned();
    s.decide(&t.approver, &approval, "approve", json!({})).await;
    let payments_before = s.count("payments").await;

    let calls = (0..10).map(|_| {
        s.post(
            &t.agent,
            "/payments/execute-approved",
            json!({"approval_id": approval}),
        )
    });
    let results = join_all(calls).await;
    for (status, body) in &results {
        assert_eq!(*status, StatusCode::OK, "{body}");
        assert_eq!(
            body["id"], payment["id"],
            "every caller sees the one payment"
        );
        assert_eq!(body["status"], "authorized", "as it was run: {body}");
    }
    assert_eq!(
        s.count("payments").await,
        payments_before,
        "no second payment"
    );
    let (_, audit) = s.get(&t.admin, "/audit?limit=1000").await;
    let executions = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["action"] == "payment.authorized" && e["data"]["approval_id"] == approval.as_str()
        })
        .count();
    assert_eq!(executions, 1, "executed exactly once");
    s.finish().await;
}

/// Agents asking to run a request while a person edits it: a run that read the request before the edit landed
/// and took the lock after it pays what the edit approved, never the amount first asked.
async fn executions_racing_an_edit_pay_the_edit(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let session = s.session(&t.agent, json!({})).await;
    let (_, payment) = s.pay(&t.agent, session, "40", "USDC").await;
    let approval = payment["approval_id"].as_str().unwrap().to_owned();
    let run = json!({"approval_id": approval});
    let runs = (0..30).map(|_| s.post(&t.agent, "/payments/execute-approved", run.clone()));
    let edit = json!({"edited_args": {"amount": "29"}});
    let (results, (decided, _)) = futures::join!(
        join_all(runs),
        s.decide(&t.approver, &approval, "edit", edit)
    );
    assert_eq!(decided, StatusCode::OK);
    for (status, body) in &results {
        match *status {
            StatusCode::OK => assert_eq!(body["amount"], "29", "a run pays the edit: {body}"),
            StatusCode::CONFLICT => {}
            other => panic!("a run answered {other}: {body}"),
        }
    }
    let (_, ran) = s.post(&t.agent, "/payments/execute-approved", run).await;
    assert_eq!(ran["amount"], "29", "{ran}");
    assert_eq!(ran["id"], payment["id"]);
    s.finish().await;
}

async fn idempotency_keys_return_the_same_payment(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let session = s.session(&t.agent, json!({})).await;
    let body = json!({
        "session_id": session, "amount": "5", "currency": "USDC",
        "recipient": "0x2222222222222222222222222222222222222222", "idempotency_key": "order-7",
    });
    let calls = (0..8).map(|_| s.post(&t.agent, "/payments", body.clone()));
    let results = join_all(calls).await;
    let ids: std::collections::BTreeSet<_> = results
        .iter()
        .map(|(status, b)| {
            assert_eq!(*status, StatusCode::CREATED, "{b}");
            b["id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 1, "concurrent retries make one payment");
    assert_eq!(s.count("payments").await, 1);

    let mut other = body.clone();
    other["amount"] = json!("6");
    let (status, problem) = s.post(&t.agent, "/payments", other).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(s.count("payments").await, 1);
    s.finish().await;
}

async fn outcomes_are_reported_once(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let session = s.session(&t.agent, json!({})).await;
    let (_, p) = s.pay(&t.agent, session, "3", "USDC").await;
    let path = format!("/payments/{}/outcome", p["id"].as_str().unwrap());
    let hash = format!("0x{}", "ab".repeat(32));

    let (status, _) = s
        .post(
            &t.agent,
            &path,
            json!({"status": "executed", "tx_hash": "0x12"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = s.post(&t.agent, &path, json!({"status": "denied"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, done) = s
        .post(
            &t.agent,
            &path,
            json!({"status": "executed", "tx_hash": hash}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["status"], "executed");
    assert_eq!(done["tx_hash"], hash.as_str());
    let (status, again) = s
        .post(
            &t.agent,
            &path,
            json!({"status": "executed", "tx_hash": hash}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "a retried report is harmless");
    assert_eq!(again, done);
    let (status, _) = s.post(&t.agent, &path, json!({"status": "failed"})).await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "an ended payment cannot change its outcome"
    );
    s.finish().await;
}

async fn overdue_requests_expire(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let session = s
        .session(&t.agent, json!({"approval_timeout_seconds": 60}))
        .await;
    let (_, p) = s.pay(&t.agent, session, "11", "USDC").await;
    let approval = p["approval_id"].as_str().unwrap();
    s.clock.advance(chrono::Duration::seconds(61));
    let (status, body) = s.decide(&t.approver, &approval, "approve", json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("expired"));
    let (_, stored) = s.get(&t.approver, &format!("/approvals/{approval}")).await;
    assert_eq!(stored["status"], "expired");
    let (_, payment) = s
        .get(
            &t.agent,
            &format!("/payments/{}", p["id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(payment["status"], "denied");
    assert_eq!(payment["reason"], "expired");
    let (_, pending) = s.get(&t.approver, "/approvals/pending").await;
    assert_eq!(pending, json!([]));
    s.finish().await;
}
