//! Durable executions: pause for approval, resume, kill, expiry and restart, on both databases.

use chrono::Duration;
use paygent_testkit::{
    ADMIN_TOKEN, Backend, Settings, Team, TestServer, canned_server, hello_server,
    on_both_databases, silent_server, status_is, wait_for,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::sync::atomic::Ordering;
use uuid::Uuid;

on_both_databases!(
    a_paused_plan_resumes_with_the_approved_args,
    an_edit_resumes_with_the_edited_args,
    a_rejection_ends_the_plan,
    a_kill_aborts_the_step_in_flight,
    killing_a_session_stops_its_executions,
    an_expired_request_expires_the_execution,
    a_paused_execution_survives_a_restart,
    commands_are_parsed_or_refused,
    memory_and_summary_tell_what_happened,
    a_rejection_can_let_the_plan_go_on,
    a_swap_without_an_exchange_fails_and_writes_nothing,
    http_get_keeps_to_the_egress_policy,
);

const ADDR: &str = "0x1111111111111111111111111111111111111111";

/// A three-step plan whose middle step needs a person: fetch, pay $25, wait a second.
async fn three_steps(s: &TestServer, t: &Team, hello: &str) -> (Value, String) {
    let session = s.session(&t.agent, json!({})).await;
    let steps = json!([
        {"tool": "http_get", "args": {"url": hello}},
        {"tool": "transfer", "args": {"to": ADDR, "amount": "25", "currency": "USDC"}},
        {"tool": "wait", "args": {"seconds": 1}},
    ]);
    let started = s.execute(&t.agent, session, steps).await;
    let id = started["id"].as_str().unwrap().to_owned();
    let paused = wait_for(s, &t.agent, &id, status_is("awaiting_approval")).await;
    assert_eq!(paused["steps"][0]["status"], "done");
    assert_eq!(paused["steps"][0]["result"]["body"], "hello");
    assert_eq!(paused["steps"][1]["status"], "awaiting_approval");
    assert_eq!(paused["steps"][2]["status"], "pending");
    (paused, id)
}

async fn a_paused_plan_resumes_with_the_approved_args(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let (hello, hits) = hello_server().await;
    let (paused, id) = three_steps(&s, &t, &hello).await;
    let approval = paused["steps"][1]["approval_id"].as_str().unwrap();
    let (status, _) = s.decide(&t.approver, &approval, "approve", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let done = wait_for(&s, &t.agent, &id, status_is("completed")).await;
    assert_eq!(done["steps"][1]["result"]["amount"], "25");
    assert_eq!(done["steps"][1]["result"]["status"], "authorized");
    assert_eq!(done["steps"][2]["status"], "done");
    assert_eq!(done["cost_usd"], "25");
    assert!(done["steps"][0]["duration_ms"].is_i64());
    assert!(
        done["duration_ms"].as_i64().unwrap() >= 1000,
        "the wait step waited"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1, "no step ran twice");
    let kinds: Vec<&str> = s
        .paygent
        .store()
        .events_after(paygent_engine::DEFAULT_TENANT, 0, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind.as_str())
        .filter(|k| k.starts_with("execution_"))
        .collect();
    assert_eq!(
        kinds,
        [
            "execution_started",
            "execution_paused",
            "execution_resumed",
            "execution_completed"
        ]
    );
    s.finish().await;
}

async fn an_edit_resumes_with_the_edited_args(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let (hello, _) = hello_server().await;
    let (paused, id) = three_steps(&s, &t, &hello).await;
    let approval = paused["steps"][1]["approval_id"].as_str().unwrap();
    let (status, _) = s
        .decide(
            &t.approver,
            &approval,
            "edit",
            json!({"edited_args": {"amount": "20"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let done = wait_for(&s, &t.agent, &id, status_is("completed")).await;
    assert_eq!(
        done["steps"][1]["result"]["amount"], "20",
        "the step used the edited amount"
    );
    assert_eq!(done["cost_usd"], "20");
    s.finish().await;
}

async fn a_rejection_ends_the_plan(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let (hello, _) = hello_server().await;
    let (paused, id) = three_steps(&s, &t, &hello).await;
    let approval = paused["steps"][1]["approval_id"].as_str().unwrap();
    s.decide(
        &t.approver,
        &approval,
        "reject",
        json!({"reason": "not today"}),
    )
    .await;
    let done = wait_for(&s, &t.agent, &id, status_is("rejected")).await;
    assert_eq!(done["steps"][1]["status"], "rejected");
    assert!(done["error"].as_str().unwrap().contains("not today"));
    assert_eq!(
        done["steps"][2]["status"], "pending",
        "the last step never ran"
    );
    s.finish().await;
}

async fn a_kill_aborts_the_step_in_flight(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let session = s.session(&t.agent, json!({})).await;
    let (never, hung_up) = silent_server().await;

    let stuck = s
        .execute(
            &t.agent,
            session,
            json!([{"tool": "http_get", "args": {"url": never}}]),
        )
        .await;
    let id = stuck["id"].as_str().unwrap();
    wait_for(&s, &t.agent, id, |e| e["steps"][0]["status"] == "running").await;
    let (status, cancelled) = s
        .post(&t.agent, &format!("/executions/{id}/cancel"), json!({}))
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the agent that started it may cancel it: {cancelled}"
    );
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(cancelled["steps"][0]["status"], "cancelled");
    let hung = || async { hung_up.load(Ordering::SeqCst) };
    let what = "the in-flight fetch to be aborted";
    paygent_testkit::eventually(std::time::Duration::from_secs(5), what, hung, |h| *h).await;

    let sleeping = s
        .execute(
            &t.agent,
            session,
            json!([{"tool": "wait", "args": {"seconds": 3600}}]),
        )
        .await;
    let id = sleeping["id"].as_str().unwrap();
    wait_for(&s, &t.agent, id, |e| e["steps"][0]["status"] == "running").await;
    let other = s.key(&t.admin, paygent_engine::domain::Role::Agent).await;
    let (status, _) = s
        .post(&other, &format!("/executions/{id}/cancel"), json!({}))
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "another agent may not, nor learn it exists"
    );
    let (status, _) = s
        .post(&t.approver, &format!("/executions/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = s
        .post(&t.approver, &format!("/executions/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "already cancelled");
    let (_, e) = s.get(&t.agent, &format!("/executions/{id}")).await;
    assert_eq!(e["status"], "cancelled");
    s.finish().await;
}

async fn killing_a_session_stops_its_executions(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let (hello, _) = hello_server().await;
    let (paused, id) = three_steps(&s, &t, &hello).await;
    let session = paused["session_id"].as_str().unwrap();
    let (status, _) = s
        .post(&t.approver, &format!("/sessions/{session}/kill"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let done = wait_for(&s, &t.agent, &id, status_is("cancelled")).await;
    let approval = done["steps"][1]["approval_id"].as_str().unwrap();
    let (_, request) = s.get(&t.approver, &format!("/approvals/{approval}")).await;
    assert_eq!(request["status"], "cancelled");
    let (status, _) = s
        .post(
            &t.agent,
            "/agent/execute",
            json!({"session_id": session, "command": "wait 1 second"}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "a killed session starts nothing"
    );
    s.finish().await;
}

async fn an_expired_request_expires_the_execution(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let session = s
        .session(&t.agent, json!({"approval_timeout_seconds": 2}))
        .await;
    let steps =
        json!([{"tool": "transfer", "args": {"to": ADDR, "amount": "30", "currency": "USDC"}}]);
    let started = s.execute(&t.agent, session, steps).await;
    let id = started["id"].as_str().unwrap();
    let paused = wait_for(&s, &t.agent, id, status_is("awaiting_approval")).await;
    s.clock.advance(Duration::seconds(3));
    assert_eq!(s.paygent.expire_overdue().await.unwrap(), 1);
    wait_for(&s, &t.agent, id, status_is("expired")).await;
    let approval = paused["steps"][0]["approval_id"].as_str().unwrap();
    let (status, _) = s.decide(&t.approver, &approval, "approve", json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    s.finish().await;
}

async fn a_paused_execution_survives_a_restart(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let (hello, hits) = hello_server().await;
    let (paused, id) = three_steps(&s, &t, &hello).await;
    let approval = paused["steps"][1]["approval_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let s = s.restart().await;
    let (_, still) = s.get(&t.agent, &format!("/executions/{id}")).await;
    assert_eq!(
        still["status"], "awaiting_approval",
        "still paused after the restart"
    );
    let (status, _) = s.decide(&t.approver, &approval, "approve", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let done = wait_for(&s, &t.agent, &id, status_is("completed")).await;
    assert_eq!(done["steps"][1]["result"]["status"], "authorized");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "the fetch before the pause did not run again"
    );
    assert_eq!(s.count("payments").await, 1, "one payment");
    s.finish().await;
}

async fn commands_are_parsed_or_refused(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let session = s.session(&t.agent, json!({})).await;
    let (hello, _) = hello_server().await;
    let command = format!("Fetch {hello} then transfer 5 USDC to {ADDR}");
    let (status, started) = s
        .post(
            &t.agent,
            "/agent/execute",
            json!({"session_id": session, "command": command}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    assert_eq!(started["command"], command);
    let done = wait_for(
        &s,
        &t.agent,
        started["id"].as_str().unwrap(),
        status_is("completed"),
    )
    .await;
    assert_eq!(
        done["steps"][1]["result"]["status"], "authorized",
        "$5 needs no person"
    );

    for (body, expected) in [
        (
            json!({"session_id": session, "command": "Pay 1e3 USDC to https://x.example/"}),
            "not an amount",
        ),
        (
            json!({"session_id": session, "command": "Buy me a coffee"}),
            "not a command",
        ),
        (
            json!({"session_id": session, "steps": [{"tool": "rm_rf", "args": {}}]}),
            "unknown tool",
        ),
        (
            json!({"session_id": session, "steps": [{"tool": "wait", "args": {"seconds": 0}}]}),
            "seconds",
        ),
        (json!({"session_id": session, "steps": []}), "1 to 20 steps"),
        (json!({"session_id": session}), "either a command or steps"),
    ] {
        let (status, problem) = s.post(&t.agent, "/agent/execute", body.clone()).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {problem}"
        );
        assert!(
            problem["detail"].as_str().unwrap().contains(expected),
            "{problem}"
        );
    }
    let (status, _) = s
        .post(
            &t.approver,
            "/agent/execute",
            json!({"session_id": session, "command": "wait 1"}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, list) = s
        .get(&t.agent, &format!("/executions?session_id={session}"))
        .await;
    assert_eq!(
        list.as_array().unwrap().len(),
        1,
        "refused plans leave nothing behind"
    );
    s.finish().await;
}

async fn memory_and_summary_tell_what_happened(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let session = s.session(&t.agent, json!({})).await;
    let (hello, _) = hello_server().await;
    let command = format!("Fetch {hello}");
    let (_, first) = s
        .post(
            &t.agent,
            "/agent/execute",
            json!({"session_id": session, "command": command}),
        )
        .await;
    wait_for(
        &s,
        &t.agent,
        first["id"].as_str().unwrap(),
        status_is("completed"),
    )
    .await;
    let steps =
        json!([{"tool": "transfer", "args": {"to": ADDR, "amount": "25", "currency": "USDC"}}]);
    let second = s.execute(&t.agent, session, steps).await;
    let id = second["id"].as_str().unwrap();
    let paused = wait_for(&s, &t.agent, id, status_is("awaiting_approval")).await;
    let approval = paused["steps"][0]["approval_id"].as_str().unwrap();
    s.decide(&t.approver, &approval, "reject", json!({"reason": "no"}))
        .await;
    wait_for(&s, &t.agent, id, status_is("rejected")).await;

    let (status, memory) = s
        .get(&t.agent, &format!("/sessions/{session}/memory"))
        .await;
    assert_eq!(status, StatusCode::OK, "{memory}");
    let turns = memory.as_array().unwrap();
    assert_eq!(turns.len(), 2);
    assert_eq!(turns[0]["asked"], command.as_str());
    assert_eq!(turns[0]["status"], "completed");
    assert_eq!(turns[0]["outcome"]["body"], "hello");
    assert!(turns[1]["asked"].as_str().unwrap().starts_with("transfer"));
    assert_eq!(turns[1]["status"], "rejected");
    assert!(
        turns[1]["outcome"]["error"]
            .as_str()
            .unwrap()
            .contains("no")
    );

    let (_, summary) = s
        .get(&t.agent, &format!("/sessions/{session}/summary"))
        .await;
    assert_eq!(summary["payments"], json!({"denied": 1}));
    assert_eq!(summary["approvals"], json!({"rejected": 1}));
    assert_eq!(
        summary["executions"],
        json!({"completed": 1, "rejected": 1})
    );
    assert_eq!(summary["state"], "active");
    let other = s.team(&s.tenant("other").await).await;
    let (status, _) = s
        .get(&other.agent, &format!("/sessions/{session}/memory"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    s.finish().await;
}

async fn a_rejection_can_let_the_plan_go_on(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let session = s.session(&t.agent, json!({"on_reject": "continue"})).await;
    let (hello, hits) = hello_server().await;
    let steps = json!([
        {"tool": "transfer", "args": {"to": ADDR, "amount": "25", "currency": "USDC"}},
        {"tool": "http_get", "args": {"url": hello}},
    ]);
    let started = s.execute(&t.agent, session, steps).await;
    let id = started["id"].as_str().unwrap();
    let paused = wait_for(&s, &t.agent, id, status_is("awaiting_approval")).await;
    let approval = paused["steps"][0]["approval_id"].as_str().unwrap();
    s.decide(
        &t.approver,
        &approval,
        "reject",
        json!({"reason": "too much"}),
    )
    .await;
    let done = wait_for(&s, &t.agent, id, status_is("completed")).await;
    assert_eq!(done["steps"][0]["status"], "rejected");
    assert_eq!(done["steps"][0]["result"]["rejected"], true);
    assert!(
        done["steps"][0]["result"]["reason"]
            .as_str()
            .unwrap()
            .contains("too much")
    );
    assert_eq!(done["steps"][1]["status"], "done");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    s.finish().await;
}

/// Without an exchange configured a swap cannot be quoted: its step fails with why, and nothing is written
/// (no payment, no request for people). Swaps traded for real are in the rails' tests.
async fn a_swap_without_an_exchange_fails_and_writes_nothing(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let session = s.session(&t.agent, json!({})).await;
    let (status, started) = s
        .post(
            &t.agent,
            "/agent/execute",
            json!({"session_id": session, "command": "swap 2000 cro for usdc"}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    let id = started["id"].as_str().unwrap();
    let failed = wait_for(&s, &t.agent, id, status_is("failed")).await;
    let error = failed["steps"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("no exchange here trades CRO"), "{failed}");
    assert_eq!(s.count("payments").await, 0);
    assert_eq!(s.count("approval_requests").await, 0);
    s.finish().await;
}

/// The step's error when an `http_get` of `url` fails, after the execution ends.
async fn fetch_error(s: &TestServer, t: &Team, session: Uuid, url: &str) -> String {
    let e = s
        .execute(
            &t.agent,
            session,
            json!([{"tool": "http_get", "args": {"url": url}}]),
        )
        .await;
    let done = wait_for(s, &t.agent, e["id"].as_str().unwrap(), |e| {
        e["status"] == "failed"
    })
    .await;
    done["steps"][0]["error"].as_str().unwrap().to_owned()
}

/// An agent's `http_get` cannot reach the server's own loopback, private or metadata addresses, by address, by
/// name or through a redirect; bodies are cut at the cap without being read whole; a silent peer times out.
async fn http_get_keeps_to_the_egress_policy(backend: Backend) {
    let mut policy = paygent_engine::EgressPolicy::allowing("127.0.0.2/32").unwrap();
    policy.timeout = std::time::Duration::from_secs(1);
    let settings = Settings {
        egress: Some(policy),
        ..Settings::default()
    };
    let s = TestServer::start_with(backend, settings).await;
    let t = s.team(ADMIN_TOKEN).await;
    let session = s.session(&t.agent, json!({})).await;
    let (hello, hits) = hello_server().await;
    let port = hello
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    for (url, kind) in [
        (hello.clone(), "127.0.0.1 is a loopback"),
        (format!("http://[::1]:{port}/hello"), "::1 is a loopback"),
        (
            format!("http://localhost:{port}/hello"),
            "localhost is a loopback",
        ),
        (
            "http://169.254.169.254/latest/meta-data/".to_owned(),
            "link-local (cloud metadata)",
        ),
        ("http://10.0.0.1/".to_owned(), "10.0.0.1 is a private"),
    ] {
        let error = fetch_error(&s, &t, session, &url).await;
        assert!(
            error.contains("egress policy") && error.contains(kind),
            "{url}: {error}"
        );
    }
    let head = format!("HTTP/1.1 302 Found\r\nLocation: {hello}");
    let (redirector, _) = canned_server("127.0.0.2", head, 0).await;
    let error = fetch_error(&s, &t, session, &format!("{redirector}/go")).await;
    assert!(
        error.contains("127.0.0.1 is a loopback"),
        "a redirect inward: {error}"
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "nothing reached the loopback peer"
    );

    let total = 64 * 1024 * 1024;
    let (big, written) = canned_server("127.0.0.2", "HTTP/1.1 200 OK".into(), total).await;
    let e = s
        .execute(
            &t.agent,
            session,
            json!([{"tool": "http_get", "args": {"url": format!("{big}/big")}}]),
        )
        .await;
    let done = wait_for(
        &s,
        &t.agent,
        e["id"].as_str().unwrap(),
        status_is("completed"),
    )
    .await;
    let result = &done["steps"][0]["result"];
    assert_eq!(result["truncated"], true);
    assert_eq!(result["body"].as_str().unwrap().len(), 64 * 1024);
    assert!(
        written.load(Ordering::SeqCst) < total / 4,
        "the body was not read to its end: {} of {total} bytes written",
        written.load(Ordering::SeqCst)
    );
    let (_, memory) = s
        .get(&t.agent, &format!("/sessions/{session}/memory"))
        .await;
    let last = memory.as_array().unwrap().last().unwrap();
    assert_eq!(
        last["outcome"]["truncated"], true,
        "memory repeats only the start of a large outcome"
    );
    assert!(
        last.to_string().len() < 6 * 1024,
        "{} bytes",
        last.to_string().len()
    );

    let (never, _) = paygent_testkit::silent_server_on("127.0.0.2").await;
    let error = fetch_error(&s, &t, session, &never).await;
    assert!(
        error.contains("timed out") || error.contains("timeout"),
        "{error}"
    );
    s.finish().await;
}
