//! The planner against a local server that speaks the chat-completions protocol: its proposals become
//! executions only when they pass the same checks as an agent's own steps.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use paygent_engine::{Egress, EgressPolicy};
use paygent_planner::LlmPlanner;
use paygent_testkit::{ADMIN_TOKEN, Backend, Settings, TestServer, Wiring};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};

const ADDR: &str = "0x1111111111111111111111111111111111111111";

type Seen = Arc<Mutex<Vec<(Option<String>, Value)>>>;

/// Answers like a model: a canned tool call per user message, and records every request it gets.
async fn completions(
    State(seen): State<Seen>,
    headers: HeaderMap,
    Json(req): Json<Value>,
) -> Json<Value> {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    seen.lock().unwrap().push((auth, req.clone()));
    let call = |name: &str, args: Value| json!({"id": "call", "type": "function", "function": {"name": name, "arguments": args.to_string()}});
    let message = match req["messages"][1]["content"].as_str().unwrap_or_default() {
        "please settle Bob's invoice of five dollars" => {
            json!({"role": "assistant", "content": null, "tool_calls": [
            call("transfer", json!({"to": ADDR, "amount": "5", "currency": "USDC"})),
            call("wait", json!({"seconds": 1}))]})
        }
        "pay Bob a thousand" => json!({"role": "assistant", "content": null, "tool_calls": [
            call("transfer", json!({"to": ADDR, "amount": "1e3", "currency": "USDC"}))]}),
        "rob the bank" => json!({"role": "assistant", "content": null, "tool_calls": [
            call("empty_the_vault", json!({}))]}),
        _ => json!({"role": "assistant", "content": "I cannot tell what to pay or where."}),
    };
    Json(
        json!({"id": "chatcmpl-1", "object": "chat.completion", "model": req["model"],
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}]}),
    )
}

async fn model_server() -> (String, Seen) {
    let seen = Seen::default();
    let app = Router::new()
        .route("/v1/chat/completions", post(completions))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, seen)
}

async fn planned_by(planner: LlmPlanner) -> TestServer {
    let settings = Settings {
        wiring: Some(Wiring(Arc::new(move |p| p.with_planner(planner.clone())))),
        ..Settings::default()
    };
    TestServer::start_with(Backend::Sqlite, settings).await
}

/// The planner's requests keep to the egress policy: a model on loopback that nobody allowed is never asked, and
/// the refusal names the rule.
#[tokio::test]
async fn a_model_the_egress_policy_refuses_is_never_asked() {
    let (base, seen) = model_server().await;
    let planner = LlmPlanner::new(&base, "m", None, Egress::new(EgressPolicy::default()));
    let s = planned_by(planner).await;
    let t = s.team(ADMIN_TOKEN).await;
    let session = s.session(&t.agent, json!({})).await;
    let command =
        json!({"session_id": session, "command": "please settle Bob's invoice of five dollars"});
    let (status, problem) = s.post(&t.agent, "/agent/execute", command).await;
    assert_eq!(status, 422, "{problem}");
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("refused by the egress policy: 127.0.0.1 is a loopback address"),
        "{detail}"
    );
    assert!(seen.lock().unwrap().is_empty(), "the model was never asked");
    assert_eq!(s.count("executions").await, 0);
    s.finish().await;
}

#[tokio::test]
async fn commands_the_parser_refuses_are_planned_and_checked() {
    let (base, seen) = model_server().await;
    // The model listens on loopback: allowed by configuration, as an operator would.
    let reach = EgressPolicy::default().also_allowing("127.0.0.1").unwrap();
    let planner = LlmPlanner::new(
        &base,
        "test-model",
        Some("sk-test".into()),
        Egress::new(reach),
    );
    let s = planned_by(planner).await;
    let t = s.team(ADMIN_TOKEN).await;
    let session = s.session(&t.agent, json!({})).await;
    let execute = |command: &str| {
        s.post(
            &t.agent,
            "/agent/execute",
            json!({"session_id": session, "command": command}),
        )
    };

    // What the parser understands never reaches the model.
    let (status, _) = execute("wait 1 second").await;
    assert_eq!(status, 202);
    assert!(seen.lock().unwrap().is_empty(), "the parser planned it");

    let (status, started) = execute("please settle Bob's invoice of five dollars").await;
    assert_eq!(status, 202, "{started}");
    assert_eq!(started["steps"][0]["tool"], "transfer");
    assert_eq!(started["steps"][0]["args"]["amount"], "5");
    assert_eq!(started["steps"][1]["tool"], "wait");
    let (auth, request) = seen.lock().unwrap()[0].clone();
    assert_eq!(auth.as_deref(), Some("Bearer sk-test"));
    assert_eq!(request["model"], "test-model");
    let offered: Vec<&str> = request["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    for tool in ["transfer", "x402_payment", "http_get", "wait", "swap"] {
        assert!(offered.contains(&tool), "{tool} offered: {offered:?}");
    }
    let (_, audit) = s.get(ADMIN_TOKEN, "/audit?limit=50").await;
    assert!(
        audit.to_string().contains("\"planner\":\"llm\""),
        "the plan's origin is audited: {audit}"
    );

    // Proposals are checked like hand-written steps, and a model that proposes nothing says why.
    for (command, expected) in [
        (
            "pay Bob a thousand",
            "the planner's plan (llm): step 0 (transfer): amount \"1e3\"",
        ),
        (
            "rob the bank",
            "the planner's plan (llm): step 0: unknown tool \"empty_the_vault\"",
        ),
        ("do the thing", "I cannot tell what to pay or where."),
    ] {
        let (status, problem) = execute(command).await;
        assert_eq!(status, 422, "{command}: {problem}");
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains(expected), "{command}: {detail}");
    }
    assert_eq!(
        s.count("executions").await,
        2,
        "refused plans store nothing"
    );
    s.finish().await;
}
