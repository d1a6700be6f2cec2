//! Paygent as an MCP server, driven by the official MCP TypeScript SDK client over both transports: streamable
//! HTTP at `/mcp`, and stdio through `paygent mcp`. Nothing runs without a person's approval, and nothing a
//! wait that ended or a cancelled call leaves behind is paid.

use paygent_testkit::mcp::{McpClient, tool_result};
use paygent_testkit::{ADMIN_TOKEN, Backend, Settings, TestServer, on_both_databases};
use serde_json::{Value, json};

on_both_databases!(over_http_nothing_runs_without_a_person);

const TO: &str = "0x00000000000000000000000000000000000000a0";

const TOOLS: [&str; 9] = [
    "balance",
    "budget",
    "get_execution",
    "get_payment",
    "paid_fetch",
    "pay",
    "run",
    "swap",
    "wait_for_approval",
];

fn pay(amount: &str) -> Value {
    json!({"amount": amount, "currency": "USDC", "recipient": TO, "description": "weather data"})
}

/// A payment of `amount` that must wait for a person: its approval id.
async fn asked(client: &mut McpClient, amount: &str) -> String {
    let (p, text, failed) = tool_result(&client.call("pay", pay(amount)).await);
    assert_eq!(
        (p["status"].as_str(), failed),
        (Some("pending_approval"), false),
        "{p}"
    );
    assert!(
        text.contains("wait_for_approval") && text.contains("do not retry"),
        "{text}"
    );
    assert!(
        text.contains("asked of the tenant's approvers until"),
        "{text}"
    );
    assert_eq!(p["approval"]["approvals_required"], 1, "{p}");
    assert!(p["approval"]["deadline"].is_string(), "{p}");
    p["approval_id"]
        .as_str()
        .expect("an approval id")
        .to_owned()
}

/// Starts waiting on `approval` for up to `seconds`; returns the call.
async fn wait(client: &mut McpClient, approval: &str, seconds: u64) -> u64 {
    let args = json!({"approval_id": approval, "timeout_seconds": seconds});
    client.start_call("wait_for_approval", args).await
}

/// A $25 payment a person approves while the model waits for it: the approval and what the wait answered.
async fn approved_while_waiting(
    s: &TestServer,
    approver: &str,
    client: &mut McpClient,
) -> (String, Value) {
    let approval = asked(client, "25").await;
    let waiting = wait(client, &approval, 30).await;
    let (status, _) = s.decide(approver, &approval, "approve", json!({})).await;
    assert_eq!(status, 200);
    let (paid, text, failed) = tool_result(&client.answer(waiting).await);
    assert_eq!(
        (paid["status"].as_str(), failed),
        (Some("authorized"), false),
        "{paid} {text}"
    );
    assert_eq!(paid["approval_id"].as_str(), Some(approval.as_str()));
    (approval, paid)
}

/// How many payments the agent's MCP session holds, by status.
async fn payments(s: &TestServer, agent: &str, session: &str) -> Vec<String> {
    let (_, list) = s
        .get(agent, &format!("/payments?session_id={session}"))
        .await;
    let items = list["items"]
        .as_array()
        .or_else(|| list.as_array())
        .cloned()
        .unwrap_or_default();
    items
        .iter()
        .map(|p| p["status"].as_str().unwrap_or_default().to_owned())
        .collect()
}

async fn over_http_nothing_runs_without_a_person(backend: Backend) {
    // A short request limit: a wait on a person outlives it, bounded by its own timeout instead.
    let settings = Settings {
        request_timeout: Some(std::time::Duration::from_secs(1)),
        ..Settings::default()
    };
    let s = TestServer::start_with(backend, settings).await;
    let t = s.team(ADMIN_TOKEN).await;
    let mut client = McpClient::http(&format!("{}/mcp", s.base), &t.agent)
        .await
        .expect("connects");
    let mut names: Vec<String> = client
        .tools()
        .await
        .iter()
        .map(|tool| {
            assert!(
                tool["description"].as_str().is_some_and(|d| d.len() > 40),
                "{tool}"
            );
            assert_eq!(tool["inputSchema"]["type"], "object", "{tool}");
            tool["name"].as_str().unwrap().to_owned()
        })
        .collect();
    names.sort();
    assert_eq!(names, TOOLS);

    let (small, _, failed) = tool_result(&client.call("pay", pay("1")).await);
    assert_eq!(
        (small["status"].as_str(), failed),
        (Some("authorized"), false),
        "{small}"
    );
    let session = small["session_id"].as_str().unwrap().to_owned();

    // The session's budget as a resource; another agent's session is as unknown as a missing one.
    let listed = client.resources().await;
    assert_eq!(
        listed["result"]["resources"][0]["uri"], "paygent://mcp-session/budget",
        "{listed}"
    );
    let read = client.read("paygent://mcp-session/budget").await;
    let budget: Value =
        serde_json::from_str(read["result"]["contents"][0]["text"].as_str().unwrap()).unwrap();
    assert_eq!(budget["session_id"], session.as_str(), "{budget}");
    let stranger = s
        .key(ADMIN_TOKEN, paygent_engine::domain::Role::Agent)
        .await;
    let theirs = s.session(&stranger, json!({})).await;
    let read = client
        .read(&format!("paygent://sessions/{theirs}/budget"))
        .await;
    assert!(
        read["error"]
            .as_str()
            .is_some_and(|e| e.contains("not found")),
        "{read}"
    );
    let (_, their_payment) = s.pay(&stranger, theirs, "1", "USDC").await;
    let looked = client
        .call("get_payment", json!({"payment_id": their_payment["id"]}))
        .await;
    let (_, text, failed) = tool_result(&looked);
    assert!(failed && text.contains("payment not found"), "{text}");

    // Approved while the model waits: it runs once, and asking again answers the same payment.
    let (approval, paid) = approved_while_waiting(&s, &t.approver, &mut client).await;
    let again = client
        .call("wait_for_approval", json!({"approval_id": approval}))
        .await;
    assert_eq!(
        tool_result(&again).0["id"],
        paid["id"],
        "the same payment, not a second one"
    );
    let authorized = payments(&s, &t.agent, &session).await;
    assert_eq!(
        authorized.iter().filter(|s| *s == "authorized").count(),
        2,
        "{authorized:?}"
    );

    // Rejected: the person's reason, and nothing paid.
    let approval = asked(&mut client, "26").await;
    let (status, _) = s
        .decide(
            &t.approver,
            &approval,
            "reject",
            json!({"reason": "too much for weather"}),
        )
        .await;
    assert_eq!(status, 200);
    let (rejected, text, failed) = tool_result(
        &client
            .call("wait_for_approval", json!({"approval_id": approval}))
            .await,
    );
    assert_eq!(
        (rejected["status"].as_str(), failed),
        (Some("rejected"), true),
        "{rejected}"
    );
    assert!(text.contains("too much for weather"), "{text}");

    // A wait that ends unanswered says so, and the request still waits for a person.
    let approval = asked(&mut client, "27").await;
    let short = json!({"approval_id": approval, "timeout_seconds": 2});
    let waiting = client.start_call("wait_for_approval", short).await;
    let (pending, text, _) = tool_result(&client.answer(waiting).await);
    assert_eq!(pending["status"], "pending", "{pending}");
    assert!(text.contains("Call wait_for_approval again"), "{text}");
    let progress = client.progress_of(waiting);
    assert!(!progress.is_empty(), "a waiting call reports progress");
    assert_eq!(progress[0]["total"], 2, "{progress:?}");

    // Nobody decides before the deadline: expired, and nothing paid.
    let waiting = wait(&mut client, &approval, 30).await;
    s.clock.advance(chrono::Duration::seconds(901));
    assert!(s.paygent.expire_overdue().await.unwrap() >= 1);
    let (expired, text, failed) = tool_result(&client.answer(waiting).await);
    assert_eq!(
        (expired["status"].as_str(), failed),
        (Some("expired"), true),
        "{expired}"
    );
    assert!(text.contains("nothing was paid"), "{text}");

    // The client gives up in the middle of a wait: the request stays pending, and nothing is paid.
    let approval = asked(&mut client, "28").await;
    let waiting = wait(&mut client, &approval, 30).await;
    client.cancel(waiting).await;
    let cancelled = client.answer(waiting).await;
    assert!(cancelled.get("error").is_some(), "{cancelled}");
    let (_, request) = s.get(&t.approver, &format!("/approvals/{approval}")).await;
    assert_eq!(request["status"], "pending", "{request}");
    let statuses = payments(&s, &t.agent, &session).await;
    assert_eq!(
        statuses.iter().filter(|s| *s == "authorized").count(),
        2,
        "{statuses:?}"
    );

    // The key is revoked while it waits: the wait ends at once, and the key's next call is turned away.
    let waiting = wait(&mut client, &approval, 30).await;
    client.under_way(waiting).await;
    let (_, me) = s.get(&t.agent, "/me").await;
    let key = me["key_id"].as_str().unwrap();
    let path = format!("/keys/{key}");
    let revoked = s
        .call(ADMIN_TOKEN, reqwest::Method::DELETE, &path, None)
        .await;
    assert_eq!(revoked.0, 204);
    let (ended, text, failed) = tool_result(&client.answer(waiting).await);
    assert!(failed && text.contains("revoked"), "{ended} {text}");
    let after = client
        .call("get_payment", json!({"payment_id": small["id"]}))
        .await;
    assert!(
        after["error"].as_str().is_some_and(|e| e.contains("401")),
        "{after}"
    );
    client.close().await;

    // A key that may not pay gets the engine's refusal as text; no key at all is turned away.
    let mut person = McpClient::http(&format!("{}/mcp", s.base), &t.approver)
        .await
        .expect("connects");
    let (refusal, text, failed) = tool_result(&person.call("pay", pay("1")).await);
    assert!(
        failed && text.contains("only agents and admins"),
        "{refusal} {text}"
    );
    let other = tool_result(
        &person
            .call("get_payment", json!({"payment_id": small["id"]}))
            .await,
    );
    assert_eq!(
        other.0["id"], small["id"],
        "people read the tenant's payments"
    );
    person.close().await;
    let nobody = McpClient::http(&format!("{}/mcp", s.base), "pk_not_a_key").await;
    assert!(nobody.is_err_and(|e| e.contains("401")), "no key, no MCP");
    s.finish().await;
}

/// `paygent mcp` relays the same tools over stdio, as a desktop client launches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_stdio_the_same_tools_answer() {
    let s = TestServer::start(Backend::Sqlite).await;
    let t = s.team(ADMIN_TOKEN).await;
    let bin = env!("CARGO_BIN_EXE_paygent");
    let server = s.base.clone();
    let args = [
        "mcp",
        "--server",
        server.as_str(),
        "--token",
        t.agent.as_str(),
    ];
    let mut client = McpClient::stdio(bin, &args).await.expect("connects");
    assert_eq!(client.tools().await.len(), TOOLS.len());
    let (small, _, _) = tool_result(&client.call("pay", pay("1")).await);
    assert_eq!(small["status"], "authorized", "{small}");
    approved_while_waiting(&s, &t.approver, &mut client).await;
    client.close().await;

    let bad = [
        "mcp",
        "--server",
        server.as_str(),
        "--token",
        "pk_not_a_key",
    ];
    let refused = McpClient::stdio(bin, &bad).await;
    assert!(refused.is_err(), "a bad key cannot connect");
    s.finish().await;
}
