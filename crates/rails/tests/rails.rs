//! The payment rails against real peers: a local chain (anvil), an EIP-3009 token, and the reference x402
//! service and facilitator. Balances are read on chain: a payment counts when tokens moved, exactly once.

mod support;

use alloy::providers::Provider;
use paygent_testkit::Backend;
use paygent_testkit::mcp::{McpClient, tool_result};
use paygent_testkit::proxy::{GatedProxy, Hold};
use paygent_testkit::{Settings, TestServer};
use serde_json::{Value, json};
use support::*;

paygent_testkit::on_both_databases!(
    an_x402_amount_is_a_maximum_and_the_price_is_paid,
    a_refused_payment_answers_at_once_and_ends_when_its_window_closes,
    a_restart_between_signing_and_settling_pays_once,
    a_node_whose_receipts_lag_gets_a_transfer_signed_once,
    a_stop_lets_money_already_sent_land_and_signs_nothing_after_it,
    a_stop_between_the_guard_and_the_rail_sends_nothing,
);

const V2_NETWORK: u64 = 338;

/// What moved between the payer and the payee since `before`, in units; it must be the same both ways.
async fn moved(chain: &LocalChain, payee_before: u64) -> u64 {
    let paid = FUNDS - chain.balance(payer()).await;
    let received = chain.balance(payee()).await - payee_before;
    assert_eq!(paid, received, "what left the payer must reach the payee");
    paid
}

#[tokio::test]
async fn a_cheap_x402_call_pays_once_and_returns_the_resource() {
    let Rig {
        chain,
        peer,
        s,
        t,
        session,
        payee_before,
    } = Rig::start(V2_NETWORK, Backend::Sqlite, "local").await;

    let url = peer.url("/v2/cheap");
    let done = run(
        &s,
        &t,
        &session,
        json!([{"tool": "x402_payment", "args": {"url": url, "max_amount": "1"}}]),
        |e| e["status"] != "running" && e["status"] != "pending",
    )
    .await;
    assert_eq!(done["status"], "completed", "{done}");
    let result = &done["steps"][0]["result"];
    assert_eq!(result["status"], "executed", "{result}");
    assert_eq!(result["amount"], "0.1");
    let body: Value = serde_json::from_str(result["receipt"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["data"], "the v2/cheap resource");
    assert!(
        result["tx_hash"].as_str().unwrap().starts_with("0x"),
        "{result}"
    );
    assert_eq!(result["network"], "eip155:338");
    assert_eq!(
        moved(&chain, payee_before).await,
        100_000,
        "exactly $0.10 moved"
    );
    assert_eq!(peer.served().await["v2/cheap"], 1);

    // The same signed authorization, sent again, is refused: the nonce is spent on chain.
    let header: Value =
        serde_json::from_str(&s.text("SELECT signed FROM payment_attempts").await).unwrap();
    let replay = reqwest::Client::new()
        .get(&url)
        .header(
            header["header_name"].as_str().unwrap(),
            header["header_value"].as_str().unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        replay.status(),
        402,
        "a replayed authorization must not be accepted"
    );
    assert_eq!(
        moved(&chain, payee_before).await,
        100_000,
        "the replay moved nothing"
    );
    assert_eq!(peer.served().await["v2/cheap"], 1);
    assert_eq!(
        payments(&s, &t, &session).await.len(),
        1,
        "one payment recorded"
    );

    // A resource that asks for nothing is fetched, and nothing is paid or recorded.
    let free =
        json!([{"tool": "x402_payment", "args": {"url": peer.url("/free"), "max_amount": "1"}}]);
    let done = run(&s, &t, &session, free, ended).await;
    assert_eq!(done["status"], "completed", "{done}");
    let result = &done["steps"][0]["result"];
    assert_eq!(
        (result["paid"].as_bool(), result["status"].as_u64()),
        (Some(false), Some(200)),
        "{result}"
    );
    assert!(
        result["body"]
            .as_str()
            .unwrap()
            .contains("the free resource"),
        "{result}"
    );
    assert_eq!(
        payments(&s, &t, &session).await.len(),
        1,
        "nothing more recorded"
    );

    // A service that declares the payment-identifier extension is told the payment's id, to dedupe on.
    let identified = json!({"session_id": session, "amount": "1", "currency": "USDC",
        "recipient": peer.url("/v2/identified"), "idempotency_key": "identified-1"});
    let (status, paid) = s.post(&t.agent, "/payments", identified).await;
    assert_eq!(
        (status.as_u16(), paid["status"].as_str()),
        (201, Some("executed")),
        "{paid}"
    );
    let body: Value = serde_json::from_str(paid["receipt"]["body"].as_str().unwrap()).unwrap();
    let id = paid["id"].as_str().unwrap().replace('-', "");
    assert_eq!(body["payment_id"], format!("pay_{id}"), "{body}");
    s.finish().await;
}

fn ended(e: &Value) -> bool {
    !matches!(e["status"].as_str(), Some("running" | "pending"))
}

#[tokio::test]
async fn a_premium_call_waits_for_a_person_and_pays_once_approved() {
    let Rig {
        chain,
        peer,
        s,
        t,
        session,
        payee_before,
    } = Rig::start(V2_NETWORK, Backend::Sqlite, "local").await;
    let step = json!([{"tool": "x402_payment", "args": {"url": peer.url("/v2/premium"), "max_amount": "30"}}]);

    // Approve: paid once, with the price the service asked and the approver saw.
    let paused = run(&s, &t, &session, step.clone(), ended).await;
    assert_eq!(paused["status"], "awaiting_approval", "{paused}");
    let approval = paused["steps"][0]["approval_id"].as_str().unwrap();
    let (_, request) = s.get(&t.approver, &format!("/approvals/{approval}")).await;
    assert_eq!(
        request["args"]["amount"], "25",
        "the person sees the real price: {request}"
    );
    assert_eq!(
        moved(&chain, payee_before).await,
        0,
        "nothing is paid before the decision"
    );
    let (status, _) = s.decide(&t.approver, &approval, "approve", json!({})).await;
    assert_eq!(status, 200);
    let id = paused["id"].as_str().unwrap();
    let done = wait_for(&s, &t.agent, id, status_is("completed")).await;
    assert_eq!(done["steps"][0]["result"]["status"], "executed", "{done}");
    assert_eq!(moved(&chain, payee_before).await, 25_000_000);
    // A second approve, or the agent asking to execute again, pays nothing more.
    let (again, _) = s.decide(&t.approver, &approval, "approve", json!({})).await;
    assert_eq!(again, 409);
    let (status, replay) = s
        .post(
            &t.agent,
            "/payments/execute-approved",
            json!({"approval_id": approval}),
        )
        .await;
    assert_eq!(status, 200, "{replay}");
    assert_eq!(replay["status"], "executed");
    assert_eq!(moved(&chain, payee_before).await, 25_000_000, "paid once");
    assert_eq!(peer.served().await["v2/premium"], 1);

    // Reject: the execution ends and nothing moves.
    let paused = run(&s, &t, &session, step, ended).await;
    let approval = paused["steps"][0]["approval_id"].as_str().unwrap();
    let (status, _) = s
        .decide(
            &t.approver,
            &approval,
            "reject",
            json!({"reason": "too dear"}),
        )
        .await;
    assert_eq!(status, 200);
    wait_for(
        &s,
        &t.agent,
        paused["id"].as_str().unwrap(),
        status_is("rejected"),
    )
    .await;
    assert_eq!(
        moved(&chain, payee_before).await,
        25_000_000,
        "a rejection pays nothing"
    );
    s.finish().await;
}

#[tokio::test]
async fn transfers_move_tokens_on_chain_and_a_kill_moves_nothing() {
    let Rig {
        chain,
        peer: _,
        s,
        t,
        session,
        payee_before,
    } = Rig::start(V2_NETWORK, Backend::Postgres, "local").await;

    let (status, paid) = s
        .post(
            &t.agent,
            "/payments",
            json!({"session_id": session, "amount": "5", "currency": "USDC",
            "recipient": payee().to_string(), "idempotency_key": "rent-1"}),
        )
        .await;
    assert_eq!(status, 201, "{paid}");
    assert_eq!(paid["status"], "executed", "{paid}");
    assert_eq!(paid["network"], "eip155:338");
    assert_eq!(moved(&chain, payee_before).await, 5_000_000, "5 USDC moved");
    let (_, shown) = s
        .get(
            &t.agent,
            &format!("/payments/{}", paid["id"].as_str().unwrap()),
        )
        .await;
    assert!(
        shown["receipt"]["block"].as_u64().unwrap() > 0,
        "the block is kept: {shown}"
    );
    let (_, again) = s
        .post(
            &t.agent,
            "/payments",
            json!({"session_id": session, "amount": "5", "currency": "USDC",
            "recipient": payee().to_string(), "idempotency_key": "rent-1"}),
        )
        .await;
    assert_eq!(again["id"], paid["id"]);
    assert_eq!(again["tx_hash"], paid["tx_hash"]);
    assert_eq!(
        moved(&chain, payee_before).await,
        5_000_000,
        "a retried request pays nothing more"
    );

    // A transfer waiting for a person, then killed: nothing moves.
    let steps = json!([{"tool": "transfer", "args": {"to": payee().to_string(), "amount": "15", "currency": "USDC"}}]);
    let paused = run(&s, &t, &session, steps, ended).await;
    assert_eq!(paused["status"], "awaiting_approval", "{paused}");
    let id = paused["id"].as_str().unwrap();
    let (status, _) = s
        .post(&t.agent, &format!("/executions/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, 200);
    wait_for(&s, &t.agent, id, status_is("cancelled")).await;
    let approval = paused["steps"][0]["approval_id"].as_str().unwrap();
    let (status, _) = s.decide(&t.approver, &approval, "approve", json!({})).await;
    assert_eq!(status, 409, "a cancelled request cannot be approved");
    assert_eq!(
        moved(&chain, payee_before).await,
        5_000_000,
        "the killed transfer moved nothing"
    );

    let (status, balance) = s
        .get(&t.agent, &format!("/sessions/{session}/balance"))
        .await;
    assert_eq!(status, 200, "{balance}");
    assert_eq!(balance["balances"][0]["amount"], "995");
    assert_eq!(balance["balances"][0]["currency"], "USDC");
    let (status, checked) = s
        .post(
            &t.agent,
            "/agent/execute",
            json!({"session_id": session, "command": "Check my USDC balance"}),
        )
        .await;
    assert_eq!(status, 202, "{checked}");
    let done = wait_for(&s, &t.agent, checked["id"].as_str().unwrap(), ended).await;
    assert_eq!(
        done["steps"][0]["result"]["balances"][0]["amount"], "995",
        "{done}"
    );
    s.finish().await;
}

#[tokio::test]
async fn payments_that_cannot_be_made_sign_nothing_and_fail_clearly() {
    let Rig {
        chain,
        peer,
        s,
        t,
        session,
        payee_before,
    } = Rig::start(V2_NETWORK, Backend::Sqlite, "local").await;
    // A refusal is final once the chain's clock passes the authorization's end: the chain must make blocks.
    chain.mine_every(1).await;

    for (path, max, expected) in [
        (
            "/v2/cheap",
            "0.05",
            "asks 0.1 USDC, above the agent's maximum of 0.05 USDC: nothing was signed",
        ),
        (
            "/bad/malformed",
            "1",
            "answered a malformed 402: the PAYMENT-REQUIRED header is not base64",
        ),
        ("/bad/unknown-asset", "1", "is not a configured token"),
        (
            "/bad/always-402",
            "1",
            "answered 402 after the payment was sent: payment required, and the authorization expired unsettled",
        ),
    ] {
        let step =
            json!([{"tool": "x402_payment", "args": {"url": peer.url(path), "max_amount": max}}]);
        let done = run(&s, &t, &session, step, ended).await;
        assert_eq!(done["status"], "failed", "{path}: {done}");
        let error = done["steps"][0]["error"].as_str().unwrap();
        assert!(
            error.contains(expected),
            "{path}: {error:?} should say {expected:?}"
        );
    }
    assert_eq!(moved(&chain, payee_before).await, 0, "nothing moved");
    let (_, budget) = s
        .get(&t.agent, &format!("/sessions/{session}/budget"))
        .await;
    assert_eq!(
        budget["usd"]["spent"]
            .as_str()
            .unwrap()
            .parse::<f64>()
            .unwrap(),
        0.0,
        "failed payments give their budget back: {budget}"
    );

    // A service that refuses and then settles anyway: the payment is recorded as made, once.
    let step = json!([{"tool": "x402_payment", "args": {"url": peer.url("/bad/settles-late"), "max_amount": "1"}}]);
    let done = run(&s, &t, &session, step, ended).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(
        done["steps"][0]["result"]["receipt"]["settled_late"], true,
        "{done}"
    );
    assert_eq!(
        moved(&chain, payee_before).await,
        100_000,
        "the late settlement is the one payment"
    );
    let list = payments(&s, &t, &session).await;
    assert_eq!(list.len(), 5);
    assert_eq!(
        list.iter().filter(|p| p["status"] == "failed").count(),
        4,
        "{list:?}"
    );
    assert_eq!(
        s.count("payment_attempts").await,
        2,
        "only the misbehaving services got a signature"
    );
    s.finish().await;
}

/// On a chain whose block timestamps lag the wall clock, an authorization is signed so the chain takes it, and
/// a refused one is watched by the chain's clock: a service that settles it after this server's clock passed its
/// `validBefore` (but before the chain's did) has been paid, once, and nothing is declared failed before.
#[tokio::test]
async fn a_lagging_chain_takes_the_authorization_and_its_clock_decides_expiry() {
    let rig = Rig::start(V2_NETWORK, Backend::Sqlite, "local").await;
    let (chain, peer, s) = (&rig.chain, &rig.peer, &rig.s);
    chain.lag_behind(40).await;
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(chain.time().await + 30 < wall, "the chain lags");

    let cheap = json!([{"tool": "x402_payment", "args": {"url": peer.url("/v2/cheap"), "max_amount": "1"}}]);
    let done = run(s, &rig.t, &rig.session, cheap, ended).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(moved(chain, rig.payee_before).await, 100_000);

    // The service's offer allows 10 s; it settles on chain itself 13 s after refusing, by when the reference
    // facilitator (which checks the window by its own clock) would no longer settle it.
    let late = peer.url("/bad/settles-late?after=13000&direct=1");
    let step = json!([{"tool": "x402_payment", "args": {"url": late, "max_amount": "1"}}]);
    let done = run(s, &rig.t, &rig.session, step, ended).await;
    assert_eq!(done["status"], "completed", "{done}");
    let receipt = &done["steps"][0]["result"]["receipt"];
    assert_eq!(receipt["settled_late"], true, "{done}");
    let late_attempt = "SELECT signed FROM payment_attempts WHERE signed LIKE '%settles-late%'";
    let signed: Value = serde_json::from_str(&s.text(late_attempt).await).unwrap();
    assert!(
        signed["valid_before"].as_u64().unwrap() < wall + 20,
        "settled after the wall clock passed the authorization's end: {signed}"
    );
    assert_eq!(
        moved(chain, rig.payee_before).await,
        200_000,
        "the late settlement is the one payment"
    );
    rig.s.finish().await;
}

/// `POST /payments` to an x402 URL: the amount is the most the agent would pay. The guard decides on the price
/// the service asks, a price above the maximum is refused before anything is signed, a person approves the
/// price, and the rail pays what it asks at pay time only up to what was approved.
async fn an_x402_amount_is_a_maximum_and_the_price_is_paid(backend: Backend) {
    let rig = Rig::start(V2_NETWORK, backend, "local").await;
    let (chain, peer, s, t) = (&rig.chain, &rig.peer, &rig.s, &rig.t);
    let pay = |path: &str, max: &str| json!({"session_id": rig.session, "amount": max, "currency": "USDC", "recipient": peer.url(path)});

    // A maximum above the price pays the price, and the budget holds the price.
    let (status, paid) = s.post(&t.agent, "/payments", pay("/v2/cheap", "1")).await;
    assert_eq!(status, 201, "{paid}");
    assert_eq!(paid["status"], "executed", "{paid}");
    assert_eq!(
        (paid["amount"].as_str(), paid["max_amount"].as_str()),
        (Some("0.1"), Some("1"))
    );
    assert_eq!(
        moved(chain, rig.payee_before).await,
        100_000,
        "the price moved, not the maximum"
    );
    let (_, budget) = s
        .get(&t.agent, &format!("/sessions/{}/budget", rig.session))
        .await;
    assert_eq!(
        budget["usd"]["spent"]
            .as_str()
            .map(|v| v.parse::<f64>().unwrap()),
        Some(0.1),
        "{budget}"
    );

    // A price above the maximum is refused before anything is signed, without asking anyone.
    let (status, refused) = s
        .post(&t.agent, "/payments", pay("/v2/cheap", "0.05"))
        .await;
    assert_eq!(status, 201, "{refused}");
    assert_eq!(refused["status"], "failed", "{refused}");
    let reason = refused["reason"].as_str().unwrap();
    assert!(
        reason.contains("asks 0.1 USDC, above the agent's maximum of 0.05 USDC"),
        "{reason}"
    );
    assert_eq!(
        s.count("payment_attempts").await,
        1,
        "nothing was signed for it"
    );
    assert_eq!(s.count("approval_requests").await, 0, "nobody was asked");

    // A dry run prices the same way, and writes nothing.
    let (status, dry) = s
        .post(&t.agent, "/payments/evaluate", pay("/v2/cheap", "1"))
        .await;
    assert_eq!(
        (
            status.as_u16(),
            dry["verdict"].as_str(),
            dry["usd_value"].as_str()
        ),
        (200, Some("allow"), Some("0.1")),
        "{dry}"
    );
    let (_, dry) = s
        .post(&t.agent, "/payments/evaluate", pay("/v2/cheap", "0.05"))
        .await;
    assert_eq!(dry["verdict"], "deny", "{dry}");
    assert!(
        dry["reason"]
            .as_str()
            .unwrap()
            .contains("above the agent's maximum"),
        "{dry}"
    );
    assert_eq!(s.count("payments").await, 2);

    // A resource that asks for nothing has nothing to pay: a problem, and no payment.
    let (status, problem) = s.post(&t.agent, "/payments", pay("/free", "1")).await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(
        problem["type"], "urn:paygent:problem:nothing-to-pay",
        "{problem}"
    );
    assert_eq!(s.count("payments").await, 2);

    // A person approves the price ($25, above the $10 threshold), not the maximum.
    let (_, premium) = s
        .post(&t.agent, "/payments", pay("/v2/premium", "30"))
        .await;
    assert_eq!(premium["status"], "pending_approval", "{premium}");
    let approval = premium["approval_id"].as_str().unwrap();
    let (_, request) = s.get(&t.approver, &format!("/approvals/{approval}")).await;
    assert_eq!(request["args"]["amount"], "25", "{request}");
    let (status, _) = s.decide(&t.approver, approval, "approve", json!({})).await;
    assert_eq!(status, 200);
    let executed = execute_approved(s, t, approval).await;
    assert_eq!(executed["status"], "executed", "{executed}");
    assert_eq!(moved(chain, rig.payee_before).await, 25_100_000);

    // The price moves after the approval: a lower one is paid (and is what the budget holds), a higher one
    // never.
    let spent_before = spent(s, t, &rig.session).await;
    let lowered = approved_at_price(s, t, peer, &pay("/v2/variable", "20"), "12", "11").await;
    assert_eq!(lowered["status"], "executed", "{lowered}");
    assert_eq!(lowered["amount"], "11", "what was paid: {lowered}");
    assert_eq!(moved(chain, rig.payee_before).await, 36_100_000);
    assert_eq!(
        spent(s, t, &rig.session).await - spent_before,
        11.0,
        "the budget holds what was paid"
    );
    let raised = approved_at_price(s, t, peer, &pay("/v2/variable", "20"), "12", "13").await;
    assert_eq!(raised["status"], "failed", "{raised}");
    let reason = raised["reason"].as_str().unwrap();
    assert!(
        reason.contains("now asks 13 USDC, above the 12 USDC that was authorized"),
        "{reason}"
    );
    assert_eq!(
        moved(chain, rig.payee_before).await,
        36_100_000,
        "nothing more moved"
    );
    assert_eq!(
        spent(s, t, &rig.session).await - spent_before,
        11.0,
        "the refused one gave its budget back"
    );

    // A resource the egress policy does not let Paygent reach is the agent's mistake, not an outage: the
    // payment fails with the policy's words (never a 5xx), and nothing is signed.
    let inward = json!({"session_id": rig.session, "amount": "1", "currency": "USDC",
        "recipient": "http://10.0.0.1/inside"});
    let (status, refused) = s.post(&t.agent, "/payments", inward).await;
    assert_eq!(
        (status.as_u16(), refused["status"].as_str()),
        (201, Some("failed")),
        "{refused}"
    );
    let reason = refused["reason"].as_str().unwrap();
    assert!(
        reason.contains("refused by the egress policy: 10.0.0.1 is a private address"),
        "{reason}"
    );

    // A killed session's payment is denied without asking anyone a price on its behalf: a resource that
    // cannot be reached would answer 503 had it been asked.
    let kill = format!("/sessions/{}/kill", rig.session);
    assert_eq!(s.post(&t.approver, &kill, json!({})).await.0, 200);
    let unreachable = json!({"session_id": rig.session, "amount": "1", "currency": "USDC",
        "recipient": "http://127.0.0.1:9/never-asked"});
    let (status, denied) = s.post(&t.agent, "/payments", unreachable.clone()).await;
    assert_eq!(status, 201, "{denied}");
    assert_eq!(
        (denied["status"].as_str(), denied["reason"].as_str()),
        (Some("denied"), Some("killed")),
        "{denied}"
    );
    // Nor while the tenant's emergency stop is engaged, for a live session.
    let live = wallet_session(s, t, json!({})).await;
    let engage = json!({"engaged": true, "reason": "drill"});
    assert_eq!(s.post(&t.admin, "/kill-switch", engage).await.0, 200);
    let stopped = json!({"session_id": live, "amount": "1", "currency": "USDC",
        "recipient": "http://127.0.0.1:9/never-asked"});
    let (status, denied) = s.post(&t.agent, "/payments", stopped).await;
    assert_eq!(
        (status.as_u16(), denied["reason"].as_str()),
        (201, Some("killed")),
        "{denied}"
    );
    rig.s.finish().await;
}

/// A service that refuses the payment it is sent: `POST /payments` answers at once with the refusal (the
/// service's reason) and until when the signed authorization could still settle, without waiting for that; a
/// retry with the same idempotency key gets the same state and signs nothing; once the chain's clock passes the
/// window the payment is `failed` and its budget is back.
async fn a_refused_payment_answers_at_once_and_ends_when_its_window_closes(backend: Backend) {
    let rig = Rig::start(V2_NETWORK, backend, "local").await;
    let (chain, peer, s, t) = (&rig.chain, &rig.peer, &rig.s, &rig.t);
    chain.mine_every(1).await;
    let payment = json!({"session_id": rig.session, "amount": "1", "currency": "USDC",
        "recipient": peer.url("/bad/always-402"), "idempotency_key": "refused-1"});
    let started = std::time::Instant::now();
    let (status, answered) = s.post(&t.agent, "/payments", payment.clone()).await;
    let took = started.elapsed();
    assert_eq!(status, 201, "{answered}");
    assert_eq!(answered["status"], "authorized", "still open: {answered}");
    let refusal = &answered["refusal"];
    assert_eq!(
        refusal["code"], "payment required",
        "the service's own reason: {answered}"
    );
    assert!(
        refusal["message"]
            .as_str()
            .unwrap()
            .contains("answered 402 after the payment was sent"),
        "{refusal}"
    );
    let until: chrono::DateTime<chrono::Utc> = refusal["outstanding_until"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let signed: Value =
        serde_json::from_str(&s.text("SELECT signed FROM payment_attempts").await).unwrap();
    assert_eq!(
        until.timestamp(),
        signed["valid_before"].as_i64().unwrap(),
        "the authorization's own end"
    );
    // Its window is 10 s: an answer well inside it did not wait for it.
    assert!(
        took < std::time::Duration::from_secs(5),
        "answered after {took:?}"
    );

    let (status, again) = s.post(&t.agent, "/payments", payment.clone()).await;
    assert_eq!(status, 201, "{again}");
    assert_eq!(
        (&again["id"], &again["status"]),
        (&answered["id"], &answered["status"]),
        "{again}"
    );
    assert_eq!(again["refusal"], answered["refusal"]);
    let attempt: Value =
        serde_json::from_str(&s.text("SELECT signed FROM payment_attempts").await).unwrap();
    assert_eq!(
        (s.count("payment_attempts").await, &attempt["nonce"]),
        (1, &signed["nonce"]),
        "nothing signed twice"
    );

    let path = format!("/payments/{}", answered["id"].as_str().unwrap());
    let read = || async { s.get(&t.agent, &path).await.1 };
    let what = "the unsettled payment to end";
    let within = std::time::Duration::from_secs(60);
    let ended =
        paygent_testkit::eventually(within, what, read, |p| p["status"] != "authorized").await;
    assert_eq!(ended["status"], "failed", "{ended}");
    let reason = ended["reason"].as_str().unwrap();
    assert!(
        reason.contains("payment required, and the authorization expired unsettled"),
        "{reason}"
    );
    assert!(
        chain.time().await >= until.timestamp() as u64,
        "not before the chain's clock passed its window"
    );
    assert_eq!(moved(chain, rig.payee_before).await, 0, "nothing moved");
    assert_eq!(spent(s, t, &rig.session).await, 0.0, "its budget is back");
    rig.s.finish().await;
}

/// A service built with Coinbase's Python SDK (FastAPI middleware), settled by the reference facilitator, is
/// paid as the reference TypeScript service is: its price within the maximum, a person approving the premium
/// one, a price above the maximum refused before anything is signed, each paid once.
#[tokio::test]
async fn a_python_sdk_service_is_paid_like_the_reference_one() {
    let rig = Rig::start(V2_NETWORK, Backend::Sqlite, "local").await;
    let (chain, s, t) = (&rig.chain, &rig.s, &rig.t);
    let python = rig.peer.python(chain).await;
    let pay = |path: &str, max: &str| json!({"session_id": rig.session, "amount": max, "currency": "USDC", "recipient": python.url(path)});
    let (status, paid) = s.post(&t.agent, "/payments", pay("/py/cheap", "1")).await;
    assert_eq!(
        (status.as_u16(), paid["status"].as_str()),
        (201, Some("executed")),
        "{paid}"
    );
    assert_eq!(paid["amount"], "0.1");
    let body: Value = serde_json::from_str(paid["receipt"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["data"], "the py/cheap resource");
    assert!(
        paid["tx_hash"].as_str().unwrap().starts_with("0x"),
        "{paid}"
    );
    assert_eq!(moved(chain, rig.payee_before).await, 100_000);

    let (_, refused) = s
        .post(&t.agent, "/payments", pay("/py/cheap", "0.05"))
        .await;
    assert_eq!(refused["status"], "failed", "{refused}");
    assert_eq!(
        s.count("payment_attempts").await,
        1,
        "nothing signed for a price above the maximum"
    );

    let (_, premium) = s
        .post(&t.agent, "/payments", pay("/py/premium", "30"))
        .await;
    assert_eq!(
        (premium["status"].as_str(), premium["amount"].as_str()),
        (Some("pending_approval"), Some("25")),
        "{premium}"
    );
    let approval = premium["approval_id"].as_str().unwrap();
    let (status, _) = s.decide(&t.approver, approval, "approve", json!({})).await;
    assert_eq!(status, 200);
    let executed = execute_approved(s, t, approval).await;
    assert_eq!(executed["status"], "executed", "{executed}");
    assert_eq!(moved(chain, rig.payee_before).await, 25_100_000);
    assert_eq!(
        python.served().await,
        json!({"py/cheap": 1, "py/premium": 1}),
        "each served once"
    );
    rig.s.finish().await;
}

/// Today's USD spend of a session.
async fn spent(s: &paygent_testkit::TestServer, t: &paygent_testkit::Team, session: &str) -> f64 {
    let (_, budget) = s
        .get(&t.agent, &format!("/sessions/{session}/budget"))
        .await;
    budget["usd"]["spent"].as_str().unwrap().parse().unwrap()
}

async fn execute_approved(
    s: &paygent_testkit::TestServer,
    t: &paygent_testkit::Team,
    approval: &str,
) -> Value {
    let path = "/payments/execute-approved";
    let (status, body) = s
        .post(&t.agent, path, json!({"approval_id": approval}))
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// A payment to the variable resource while it asks `asked`, approved, and executed once it asks `then`.
async fn approved_at_price(
    s: &paygent_testkit::TestServer,
    t: &paygent_testkit::Team,
    peer: &X402Peer,
    payment: &Value,
    asked: &str,
    then: &str,
) -> Value {
    let set = |dollars: &str| reqwest::get(peer.url(&format!("/set-price?dollars={dollars}")));
    set(asked).await.unwrap();
    let (_, filed) = s.post(&t.agent, "/payments", payment.clone()).await;
    assert_eq!(
        (filed["status"].as_str(), filed["amount"].as_str()),
        (Some("pending_approval"), Some(asked)),
        "{filed}"
    );
    let approval = filed["approval_id"].as_str().unwrap();
    let (status, _) = s.decide(&t.approver, approval, "approve", json!({})).await;
    assert_eq!(status, 200);
    set(then).await.unwrap();
    execute_approved(s, t, approval).await
}

/// A chain that has made no block for a minute, and one whose clock is an hour behind the wall clock: the
/// authorization is valid from before the chain's latest block, so the reference facilitator (which simulates
/// the transfer at that block) takes it, as it takes the reference client's.
#[tokio::test]
async fn a_chain_without_new_blocks_or_an_hour_behind_takes_the_payment() {
    for lag in [60, 3600] {
        let rig = Rig::start(V2_NETWORK, Backend::Sqlite, "local").await;
        rig.chain.lag_behind(lag).await;
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(
            rig.chain.time().await + lag - 5 <= wall,
            "the chain's clock is {lag} s behind"
        );
        let payment = json!({"session_id": rig.session, "amount": "1", "currency": "USDC",
            "recipient": rig.peer.url("/v2/cheap")});
        let (status, paid) = rig.s.post(&rig.t.agent, "/payments", payment).await;
        assert_eq!(
            (status.as_u16(), paid["status"].as_str()),
            (201, Some("executed")),
            "{lag} s: {paid}"
        );
        assert_eq!(
            moved(&rig.chain, rig.payee_before).await,
            100_000,
            "{lag} s behind: paid once"
        );
        rig.s.finish().await;
    }
}

#[tokio::test]
async fn x402_version_1_pays_through_the_reference_facilitator() {
    // The reference facilitator knows v1 networks by name only, so this chain is base-sepolia's id.
    let Rig {
        chain,
        peer,
        s,
        t,
        session,
        payee_before,
    } = Rig::start(84532, Backend::Sqlite, "base-sepolia").await;
    let step =
        json!([{"tool": "x402_payment", "args": {"url": peer.url("/v1/0.25"), "max_amount": "1"}}]);
    let done = run(&s, &t, &session, step, ended).await;
    assert_eq!(done["status"], "completed", "{done}");
    let result = &done["steps"][0]["result"];
    assert_eq!(result["status"], "executed");
    assert!(
        result["receipt"]["body"]
            .as_str()
            .unwrap()
            .contains("the v1/0.25 resource")
    );
    assert_eq!(moved(&chain, payee_before).await, 250_000);
    s.finish().await;
}

/// A restart while an x402 settlement waits in the pool, while a signed transfer was dropped from the pool, and
/// after another transaction took a signed transfer's nonce: each pays exactly once.
async fn a_restart_between_signing_and_settling_pays_once(backend: Backend) {
    let Rig {
        chain,
        peer,
        s,
        t,
        session,
        payee_before,
    } = Rig::start(V2_NETWORK, backend, "local").await;

    // An x402 payment whose settlement is stuck in the pool when Paygent dies.
    chain.automine(false).await;
    let step = json!([{"tool": "x402_payment", "args": {"url": peer.url("/v2/cheap"), "max_amount": "1"}}]);
    let started = s.execute(&t.agent, &session, step).await;
    let attempts = || async { json!(s.count("payment_attempts").await) };
    let what = "the payment's attempt";
    paygent_testkit::eventually(std::time::Duration::from_secs(30), what, attempts, |n| {
        n != 0
    })
    .await;
    let pool = || async {
        let status: Value = chain
            .provider
            .raw_request("txpool_status".into(), ())
            .await
            .unwrap();
        status["pending"].clone()
    };
    let what = "the settlement in the pool";
    paygent_testkit::eventually(std::time::Duration::from_secs(30), what, pool, |n| {
        n != "0x0"
    })
    .await;
    let s = s.restart_after(chain.automine(true)).await;
    let id = started["id"].as_str().unwrap();
    let done = wait_for(&s, &t.agent, id, ended).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["steps"][0]["result"]["status"], "executed", "{done}");
    let payment = done["steps"][0]["payment_id"].as_str().unwrap();
    let (_, recorded) = s.get(&t.agent, &format!("/payments/{payment}")).await;
    assert_eq!(recorded["receipt"]["recovered"], true, "{recorded}");
    assert!(
        recorded["tx_hash"]
            .as_str()
            .is_some_and(|h| h.starts_with("0x")),
        "the settling transaction is found on chain: {recorded}"
    );
    assert_eq!(
        moved(&chain, payee_before).await,
        100_000,
        "paid once across the restart"
    );

    // A transfer signed and stored, then dropped from the pool before it was mined: the restart sends the same
    // transaction again, and it pays once.
    let before = moved(&chain, payee_before).await;
    let transfer = json!({"session_id": session, "amount": "2", "currency": "USDC",
        "recipient": payee().to_string(), "idempotency_key": "crash-1"});
    let (hash, _) = signed_then_lost(&s, &t, &chain, &transfer).await;
    let s = s.restart_after(chain.automine(true)).await;
    let (_, paid) = s.post(&t.agent, "/payments", transfer).await;
    assert_eq!(paid["status"], "executed", "{paid}");
    assert_eq!(
        paid["tx_hash"],
        hash.as_str(),
        "the same transaction, sent again"
    );
    assert_eq!(
        moved(&chain, payee_before).await - before,
        2_000_000,
        "paid once"
    );

    // A transfer signed and stored whose nonce another transaction of the wallet took while Paygent was down:
    // it can never be mined, so it is signed anew, once, and paid once.
    let before = moved(&chain, payee_before).await;
    let transfer = json!({"session_id": session, "amount": "3", "currency": "USDC",
        "recipient": payee().to_string(), "idempotency_key": "crash-2"});
    let (stale_hash, stale) = signed_then_lost(&s, &t, &chain, &transfer).await;
    let nonce = stale["nonce"].as_u64().unwrap();
    let s = s
        .restart_after(async {
            chain.send_from_payer(nonce).await;
            chain.automine(true).await;
        })
        .await;
    let (_, paid) = s.post(&t.agent, "/payments", transfer).await;
    assert_eq!(paid["status"], "executed", "{paid}");
    assert_ne!(
        paid["tx_hash"],
        stale_hash.as_str(),
        "signed anew with a fresh nonce"
    );
    assert_eq!(
        moved(&chain, payee_before).await - before,
        3_000_000,
        "paid once"
    );
    s.finish().await;
}

/// A node that answers the wallet's nonce before it has indexed the receipt of the block that moved it (anvil
/// while it stores a block; an RPC provider's replicas behind a load balancer): the transfer is mined, its
/// receipt "not found". It must not count as beaten to its nonce by another transaction and be signed again:
/// the block that took the nonce says which transaction did, and the payment waits for its receipt.
async fn a_node_whose_receipts_lag_gets_a_transfer_signed_once(backend: Backend) {
    let chain = LocalChain::start(V2_NETWORK).await;
    let rpc = GatedProxy::start(&chain.rpc).await;
    let mut config = chain.rails_config("local");
    config.chains[0].rpc_url = rpc.base.clone();
    let s = TestServer::start_with(backend, paying_by(&config, Settings::default())).await;
    let t = team(&s).await;
    let session = wallet_session(&s, &t, json!({})).await;
    let (payee_before, nonce_before) = (
        chain.balance(payee()).await,
        chain.provider.get_transaction_count(payer()).await.unwrap(),
    );

    rpc.lag_receipts(true);
    let transfer = json!({"session_id": session, "amount": "2", "currency": "USDC",
        "recipient": payee().to_string(), "idempotency_key": "lagging"});
    let request = reqwest::Client::new()
        .post(s.url("/payments"))
        .bearer_auth(&t.agent)
        .json(&transfer);
    let answer = tokio::spawn(request.send());
    // Mined at once (automine); the runner keeps asking for its receipt, and is told "not found".
    let moved_already = || async { json!(chain.balance(payee()).await - payee_before) };
    let what = "the transfer mined";
    paygent_testkit::eventually(
        std::time::Duration::from_secs(30),
        what,
        moved_already,
        |m| *m != json!(0),
    )
    .await;
    let hidden = || async { json!(rpc.receipts_hidden()) };
    let what = "receipts asked for after it was mined";
    paygent_testkit::eventually(std::time::Duration::from_secs(30), what, hidden, |n| {
        n.as_u64().unwrap_or(0) >= 6
    })
    .await;
    rpc.lag_receipts(false);

    let answered = answer.await.unwrap().unwrap();
    assert!(answered.status().is_success(), "{}", answered.status());
    let (_, paid) = s.post(&t.agent, "/payments", transfer).await;
    assert_eq!(paid["status"], "executed", "{paid}");
    let attempt = s.text("SELECT tx_hash FROM payment_attempts").await;
    assert_eq!(
        paid["tx_hash"],
        attempt.as_str(),
        "the first signature is what paid"
    );
    assert_eq!(
        chain.provider.get_transaction_count(payer()).await.unwrap() - nonce_before,
        1,
        "one transaction signed and sent"
    );
    assert_eq!(
        chain.balance(payee()).await - payee_before,
        2_000_000,
        "paid once"
    );
    s.finish().await;
}

/// Starts a transfer with mining off, waits until its signed transaction is journaled, then drops it from the
/// pool and hangs up: as if Paygent died between signing and the transaction being mined. Returns the stored
/// hash and signed artifact.
async fn signed_then_lost(
    s: &paygent_testkit::TestServer,
    t: &paygent_testkit::Team,
    chain: &LocalChain,
    transfer: &Value,
) -> (String, Value) {
    chain.automine(false).await;
    let open =
        "SELECT COUNT(*) FROM payment_attempts WHERE receipt IS NULL AND tx_hash IS NOT NULL";
    let request = reqwest::Client::new()
        .post(s.url("/payments"))
        .bearer_auth(&t.agent)
        .json(transfer);
    let waiting = tokio::spawn(request.send());
    let sent = || async { json!(s.scalar(open).await) };
    let what = "the transfer sent";
    paygent_testkit::eventually(std::time::Duration::from_secs(30), what, sent, |n| n != 0).await;
    let open_attempt = "FROM payment_attempts WHERE receipt IS NULL AND tx_hash IS NOT NULL";
    let hash = s.text(&format!("SELECT tx_hash {open_attempt}")).await;
    let signed =
        serde_json::from_str(&s.text(&format!("SELECT signed {open_attempt}")).await).unwrap();
    // Journaled comes before sent: drop the transaction only once it is in the pool, or it would be sent after.
    let pooled = || async {
        let found: Value = chain
            .provider
            .raw_request("eth_getTransactionByHash".into(), (hash.clone(),))
            .await
            .unwrap();
        found
    };
    let what = "the transfer in the pool";
    paygent_testkit::eventually(std::time::Duration::from_secs(30), what, pooled, |t| {
        !t.is_null()
    })
    .await;
    let _: Value = chain
        .provider
        .raw_request("anvil_dropTransaction".into(), (hash.clone(),))
        .await
        .unwrap();
    waiting.abort();
    (hash, signed)
}

#[tokio::test]
async fn wallets_belong_to_their_tenant_sqlite() {
    wallets_belong_to_their_tenant(Backend::Sqlite).await
}

#[tokio::test]
async fn wallets_belong_to_their_tenant_postgres() {
    wallets_belong_to_their_tenant(Backend::Postgres).await
}

/// The configured wallet is the default tenant's: another tenant's session cannot name it until the operator
/// gives it away, and a policy may narrow which of its tenant's wallets a key's sessions use, at once.
async fn wallets_belong_to_their_tenant(backend: Backend) {
    let chain = LocalChain::start(V2_NETWORK).await;
    let s = chain.paygent(backend, "local").await;
    let t = team(&s).await;
    let other = s.team(&s.tenant("other").await).await;
    let with_wallet = json!({"wallet_address": payer()});
    let (status, problem) = s.post(&other.agent, "/sessions", with_wallet.clone()).await;
    assert_eq!(status, 422, "not its tenant's wallet: {problem}");
    let (_, listed) = s.get(&t.approver, "/wallets").await;
    assert_eq!(listed, json!([payer().to_string().to_lowercase()]));
    wallet_session(&s, &t, json!({})).await;

    let (status, _) = s
        .put(
            &other.admin,
            &format!("/wallets/{}", payer()),
            json!({"tenant_id": other_tenant(&s, &other).await}),
        )
        .await;
    assert_eq!(status, 403, "only the operator assigns wallets");
    let nobody = json!({"tenant_id": uuid::Uuid::new_v4()});
    let wallet = format!("/wallets/{}", payer());
    let (status, problem) = s.put(&t.admin, &wallet, nobody).await;
    assert_eq!(status, 404, "no such tenant: {problem}");
    let (_, still) = s.get(&t.approver, "/wallets").await;
    assert_eq!(still, listed, "the wallet stays its tenant's");
    let (status, _) = s
        .put(
            &t.admin,
            &format!("/wallets/{}", payer()),
            json!({"tenant_id": other_tenant(&s, &other).await}),
        )
        .await;
    assert_eq!(status, 204);
    let (status, body) = s.post(&other.agent, "/sessions", with_wallet.clone()).await;
    assert_eq!(status, 201, "{body}");
    let (status, _) = s.post(&t.agent, "/sessions", with_wallet.clone()).await;
    assert_eq!(status, 422, "given away");

    let narrow = json!({"wallets": ["0x00000000000000000000000000000000000000a1"]});
    let (status, _) = s.put(&other.admin, "/policies/default", narrow).await;
    assert_eq!(status, 200);
    let (status, problem) = s.post(&other.agent, "/sessions", with_wallet).await;
    assert_eq!(status, 422, "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("wallets"));
    let (_, p) = s
        .post(
            &other.agent,
            "/payments",
            json!({"session_id": body["id"], "amount": "1", "currency": "USDC", "recipient": payee()}),
        )
        .await;
    assert_eq!(
        p["status"], "denied",
        "an open session obeys the narrower policy: {p}"
    );
    assert_eq!(p["reason"], "policy_denied");
    assert_eq!(chain.balance(payer()).await, FUNDS, "nothing moved");
    s.finish().await;
}

async fn other_tenant(s: &paygent_testkit::TestServer, other: &paygent_testkit::Team) -> String {
    s.get(&other.admin, "/me").await.1["tenant_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// While a rail carries a payment (signed, waiting to be mined), the agent's word on its outcome is refused: a
/// `failed` report would have given the budget back while the money moves.
#[tokio::test]
async fn a_rail_payment_takes_no_outcome_from_the_agent() {
    let chain = LocalChain::start(V2_NETWORK).await;
    let s = chain.paygent(Backend::Sqlite, "local").await;
    let t = team(&s).await;
    let session = wallet_session(&s, &t, json!({})).await;
    let payee_before = chain.balance(payee()).await;
    chain.automine(false).await;
    let request = reqwest::Client::new()
        .post(s.url("/payments"))
        .bearer_auth(&t.agent)
        .json(
            &json!({"session_id": session, "amount": "2", "currency": "USDC",
            "recipient": payee().to_string()}),
        );
    let paying = tokio::spawn(request.send());
    let open =
        "SELECT COUNT(*) FROM payment_attempts WHERE receipt IS NULL AND tx_hash IS NOT NULL";
    let what = "the transfer signed and sent";
    let sent = || s.scalar(open);
    paygent_testkit::eventually(std::time::Duration::from_secs(30), what, sent, |n| *n == 1).await;
    let id = s.text("SELECT payment_id FROM payment_attempts").await;
    let path = format!("/payments/{id}/outcome");
    let (status, problem) = s.post(&t.agent, &path, json!({"status": "failed"})).await;
    assert_eq!(status, 409, "{problem}");
    chain.automine(true).await;
    let paid: Value = paying.await.unwrap().unwrap().json().await.unwrap();
    assert_eq!(paid["status"], "executed", "{paid}");
    assert_eq!(chain.balance(payee()).await - payee_before, 2_000_000);
    s.finish().await;
}

/// A payment whose rail has not finished when its request's time is nearly up is answered, never cut off: 201,
/// `authorized` and `in_flight`, with the hash of the transaction already sent. It goes on, and a retry with the
/// same idempotency key gets its one outcome: the money moves once.
#[tokio::test]
async fn a_payment_that_outlives_its_request_is_answered_in_flight() {
    let chain = LocalChain::start(V2_NETWORK).await;
    let settings = paygent_testkit::Settings {
        request_timeout: Some(std::time::Duration::from_secs(1)),
        ..paygent_testkit::Settings::default()
    };
    let s = chain.paygent_with(Backend::Sqlite, "local", settings).await;
    let t = team(&s).await;
    let session = wallet_session(&s, &t, json!({})).await;
    let payee_before = chain.balance(payee()).await;
    chain.automine(false).await;
    let transfer = json!({"session_id": session, "amount": "2", "currency": "USDC",
        "recipient": payee().to_string(), "idempotency_key": "slow-1"});
    let pay = || {
        let request = s.http.post(s.url("/payments")).bearer_auth(&t.agent);
        request.json(&transfer).send()
    };
    let answered = pay().await.unwrap();
    assert_eq!(answered.status(), 201, "never a 408 for a payment");
    let in_flight: Value = answered.json().await.unwrap();
    assert_eq!(
        (
            in_flight["status"].as_str(),
            in_flight["in_flight"].as_bool()
        ),
        (Some("authorized"), Some(true)),
        "{in_flight}"
    );
    let sent = s.text("SELECT tx_hash FROM payment_attempts").await;
    assert_eq!(
        in_flight["tx_hash"], sent,
        "the transaction already sent: {in_flight}"
    );
    let (_, read) = s
        .get(
            &t.agent,
            &format!("/payments/{}", in_flight["id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(
        (read["status"].as_str(), read.get("in_flight")),
        (Some("authorized"), None),
        "{read}"
    );
    chain.automine(true).await;
    let retry = pay().await.unwrap();
    assert_eq!(retry.status(), 201);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    let paid: Value = retry.json().await.unwrap();
    assert_eq!(paid["status"], "executed", "{paid}");
    assert_eq!(paid["tx_hash"], sent);
    assert_eq!(
        chain.balance(payee()).await - payee_before,
        2_000_000,
        "paid once"
    );
    assert_eq!(s.count("payments").await, 1);
    s.finish().await;
}

#[tokio::test]
async fn an_approval_binds_the_network_its_payment_pays_on() {
    let Rig {
        chain,
        peer: _,
        s,
        t,
        session,
        payee_before,
    } = Rig::start(V2_NETWORK, Backend::Sqlite, "local").await;
    let transfer = json!({"session_id": session, "amount": "25", "currency": "USDC",
        "recipient": payee().to_string()});
    let (status, asked) = s.post(&t.agent, "/payments", transfer).await;
    assert_eq!(status, 201, "{asked}");
    assert_eq!(asked["status"], "pending_approval", "{asked}");
    let approval = asked["approval_id"].as_str().unwrap();
    let (_, request) = s.get(&t.approver, &format!("/approvals/{approval}")).await;
    assert_eq!(request["network"], "eip155:338", "{request}");
    let session_id = session.parse().unwrap();
    let bound = paygent_engine::domain::action::action_digest(
        session_id,
        "transfer",
        &request["args"],
        Some("eip155:338"),
    );
    assert_eq!(
        request["digest"],
        bound.as_str(),
        "the digest binds the network"
    );
    let (_, audit) = s
        .get(&t.admin, &format!("/audit?session_id={session}&limit=100"))
        .await;
    let filed = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "approval.requested")
        .unwrap_or_else(|| panic!("the request is audited: {audit}"));
    assert_eq!(filed["data"]["network"], "eip155:338", "{filed}");
    assert_eq!(filed["data"]["digest"], bound.as_str(), "{filed}");
    let (status, _) = s.decide(&t.approver, approval, "approve", json!({})).await;
    assert_eq!(status, 200);

    // Another instance whose configuration puts the same token on chain 25.
    let mut elsewhere = chain.rails_config("local");
    elsewhere.chains[0].id = 25;
    elsewhere.tokens[0].chain_id = 25;
    let moved_token = s
        .another_instance_with(paying_by(&elsewhere, Default::default()))
        .await;
    let execute = json!({"approval_id": approval});
    let (status, refused) = moved_token
        .post(&t.agent, "/payments/execute-approved", execute.clone())
        .await;
    assert_eq!(status, 409, "{refused}");
    assert!(
        refused["detail"].as_str().unwrap().contains("digest"),
        "{refused}"
    );
    assert_eq!(moved(&chain, payee_before).await, 0, "nothing moved");
    let (status, paid) = s
        .post(&t.agent, "/payments/execute-approved", execute)
        .await;
    assert_eq!(status, 200, "{paid}");
    assert_eq!(paid["status"], "executed", "{paid}");
    assert_eq!(paid["network"], "eip155:338");
    assert_eq!(
        moved(&chain, payee_before).await,
        25_000_000,
        "paid once, where approved"
    );

    // An instance with no rails authorizes a payment for its agent to pay: bound to no network, no rail signs it.
    let no_rails = s.another_instance_with(Default::default()).await;
    let small = json!({"session_id": session, "amount": "1", "currency": "USDC",
        "recipient": payee().to_string(), "idempotency_key": "unbound-1"});
    let (status, unbound) = no_rails.post(&t.agent, "/payments", small.clone()).await;
    assert_eq!(status, 201, "{unbound}");
    assert_eq!(unbound["status"], "authorized", "{unbound}");
    assert_eq!(unbound["network"], Value::Null, "{unbound}");
    let (_, retried) = s.post(&t.agent, "/payments", small).await;
    assert_eq!(retried["id"], unbound["id"]);
    assert_eq!(retried["status"], "failed", "{retried}");
    let reason = retried["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("authorized on network none, not eip155:338"),
        "{retried}"
    );
    assert_eq!(
        s.count("payment_attempts").await,
        1,
        "only the approved payment was signed"
    );
    assert_eq!(
        moved(&chain, payee_before).await,
        25_000_000,
        "nothing more moved"
    );
    for other in [moved_token, no_rails] {
        other.stop().await;
    }
    s.finish().await;
}

/// An agent's MCP client fetches an x402 resource with `paid_fetch`: its price is paid on chain once and the
/// body comes back; a price above the most the model would pay signs nothing. Without a session, the key's MCP
/// session pays from the tenant's one wallet.
#[tokio::test]
async fn an_mcp_client_pays_for_a_resource_with_paid_fetch() {
    let Rig {
        chain,
        peer,
        s,
        t,
        session: _,
        payee_before,
    } = Rig::start(V2_NETWORK, Backend::Sqlite, "local").await;
    let mcp = format!("{}/mcp", s.base);
    let mut client = McpClient::http(&mcp, &t.agent).await.expect("connects");
    let fetch = json!({"url": peer.url("/v2/cheap"), "max_amount": "1"});
    let (execution, body, failed) = tool_result(&client.call("paid_fetch", fetch).await);
    assert!(!failed, "{execution}");
    let body: Value = serde_json::from_str(&body).expect("the resource's JSON body");
    assert_eq!(body["data"], "the v2/cheap resource");
    assert_eq!(
        execution["steps"][0]["result"]["amount"], "0.1",
        "{execution}"
    );
    assert_eq!(
        moved(&chain, payee_before).await,
        100_000,
        "exactly its price moved"
    );

    let too_little = json!({"url": peer.url("/v2/cheap"), "max_amount": "0.05"});
    let (refused, text, failed) = tool_result(&client.call("paid_fetch", too_little).await);
    assert!(
        failed && text.contains("above the agent's maximum of 0.05 USDC"),
        "{refused} {text}"
    );
    assert_eq!(
        moved(&chain, payee_before).await,
        100_000,
        "nothing more moved"
    );
    assert_eq!(peer.served().await["v2/cheap"], 1);

    let (balance, _, failed) = tool_result(&client.call("balance", json!({})).await);
    assert!(!failed, "{balance}");
    assert_eq!(balance["balances"][0]["amount"], "999.9", "{balance}");
    client.close().await;
    s.finish().await;
}

/// The emergency stop and a session kill, each while an execution's first payment is on its way: a transfer
/// being broadcast (its `eth_sendRawTransaction` held by a proxy before the chain) or waiting for its receipt,
/// and an x402 payment signed and waiting for the service's answer (its facilitator's settlement unmined). What
/// was sent lands once and is recorded as executed, its reservation spent, the audit trail saying so after the
/// stop; the execution is cancelled, its step names the payment, and its second transfer is never signed.
async fn a_stop_lets_money_already_sent_land_and_signs_nothing_after_it(backend: Backend) {
    let chain = LocalChain::start(V2_NETWORK).await;
    let peer = X402Peer::start(&chain, "base-sepolia").await;
    // Paygent reaches the chain through a proxy that can hold its broadcast.
    let rpc = GatedProxy::start(&chain.rpc).await;
    let mut config = chain.rails_config("local");
    config.chains[0].rpc_url = rpc.base.clone();
    let server = TestServer::start_with(backend, paying_by(&config, Settings::default())).await;
    let (s, t) = (&server, &team(&server).await);
    let (chain, payee_before) = (&chain, chain.balance(payee()).await);
    let to = payee().to_string();
    let transfer =
        json!({"tool": "transfer", "args": {"to": to, "amount": "2", "currency": "USDC"}});
    let x402 =
        json!({"tool": "x402_payment", "args": {"url": peer.url("/v2/cheap"), "max_amount": "1"}});
    let mut landed = 0;
    // Where the payment is when the stop commits: its transaction held on its way to the chain, or sent and
    // waiting to be mined (a transfer's receipt, an x402 facilitator's settlement).
    let (broadcast, mined) = (true, false);
    for (stop, first, (price, units), held_at_broadcast) in [
        (
            "kill_switch.engaged",
            &transfer,
            ("2", 2_000_000),
            broadcast,
        ),
        ("session.killed", &transfer, ("2", 2_000_000), broadcast),
        ("kill_switch.engaged", &transfer, ("2", 2_000_000), mined),
        ("session.killed", &transfer, ("2", 2_000_000), mined),
        ("kill_switch.engaged", &x402, ("0.1", 100_000), mined),
        ("session.killed", &x402, ("0.1", 100_000), mined),
    ] {
        let session = wallet_session(s, t, json!({})).await;
        match held_at_broadcast {
            true => rpc.arm(Hold::Containing("eth_sendRawTransaction")),
            false => chain.automine(false).await,
        }
        let then =
            json!({"tool": "transfer", "args": {"to": to, "amount": "3", "currency": "USDC"}});
        let started = s.execute(&t.agent, &session, json!([first, then])).await;
        let id = started["id"].as_str().expect("id");
        let signed = format!(
            "SELECT COUNT(*) FROM payment_attempts a JOIN payments p ON p.id = a.payment_id \
             WHERE p.session_id = '{session}'"
        );
        let read = || async { json!(s.scalar(&signed).await) };
        let what = "one payment signed";
        paygent_testkit::eventually(std::time::Duration::from_secs(30), what, read, |n| {
            *n == json!(1)
        })
        .await;
        if held_at_broadcast {
            rpc.held().await;
        }
        let subject = stop_now(s, t, stop, &session).await;
        let done = wait_for(s, &t.agent, id, ended).await;
        assert_eq!(done["status"], "cancelled", "{done}");
        match held_at_broadcast {
            true => rpc.open(),
            false => chain.automine(true).await,
        }

        let path = format!("/payments?session_id={session}");
        let read = || async { s.get(&t.agent, &path).await.1 };
        let executed = |p: &Value| p[0]["status"] == "executed";
        let paid = paygent_testkit::eventually(
            std::time::Duration::from_secs(30),
            "the payment executed",
            read,
            executed,
        )
        .await;
        let items = paid.as_array().expect("a list");
        assert_eq!(
            items.len(),
            1,
            "the second transfer was never asked for: {paid}"
        );
        assert_eq!(items[0]["amount"], price, "{paid}");
        let (_, execution) = s.get(&t.agent, &format!("/executions/{id}")).await;
        let step = &execution["steps"][0];
        assert_eq!(
            (&step["status"], &step["payment_id"]),
            (&json!("cancelled"), &items[0]["id"]),
            "the cancelled step names the payment it had under way: {execution}"
        );
        assert_eq!(s.scalar(&signed).await, 1, "nothing else was signed");
        landed += units;
        assert_eq!(
            moved(chain, payee_before).await,
            landed,
            "what was sent landed, once"
        );
        let (_, budget) = s
            .get(&t.agent, &format!("/sessions/{session}/budget"))
            .await;
        let usdc = &budget["currencies"]["USDC"];
        assert_eq!(
            (&usdc["spent"], &usdc["reserved"]),
            (&json!(price), &json!("0")),
            "{budget}"
        );
        let payment = items[0]["id"].as_str().expect("id");
        assert_landed_after(s, t, (stop, &subject), payment).await;
        if stop == "kill_switch.engaged" {
            let release = json!({"engaged": false});
            assert_eq!(s.post(&t.admin, "/kill-switch", release).await.0, 200);
        }
    }
    server.finish().await;
}

/// The emergency stop, then a session kill, each after the guard allowed an x402 payment and while the rail asks
/// the service its price again (that request held by a proxy until the stop has committed): the rail's check
/// before it sends refuses, so nothing is sent, nothing moves and nothing stays reserved.
async fn a_stop_between_the_guard_and_the_rail_sends_nothing(backend: Backend) {
    let rig = Rig::start(V2_NETWORK, backend, "local").await;
    let (s, t) = (&rig.s, &rig.t);
    for stop in ["kill_switch.engaged", "session.killed"] {
        // The guard asks the price first; the rail's asking again is the second request.
        let proxy = GatedProxy::start(&rig.peer.url("")).await;
        proxy.arm(Hold::Nth(2));
        let session = wallet_session(s, t, json!({})).await;
        let body = json!({"session_id": session, "amount": "1", "currency": "USDC",
            "recipient": format!("{}/v2/cheap", proxy.base)});
        let paying = tokio::spawn(
            reqwest::Client::new()
                .post(s.url("/payments"))
                .bearer_auth(&t.agent)
                .json(&body)
                .send(),
        );
        proxy.held().await;
        stop_now(s, t, stop, &session).await;
        proxy.open();
        let answer = paying.await.expect("joined").expect("answered");
        let paid: Value = answer.json().await.expect("json");
        assert_eq!(paid["status"], "failed", "{paid}");
        assert!(
            paid["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("killed")),
            "the stop is the reason: {paid}"
        );
        let sent = format!(
            "SELECT COUNT(*) FROM payment_attempts a JOIN payments p ON p.id = a.payment_id \
             WHERE p.session_id = '{session}'"
        );
        assert_eq!(
            s.scalar(&sent).await,
            0,
            "nothing was journaled, so nothing sent"
        );
        assert_eq!(
            moved(&rig.chain, rig.payee_before).await,
            0,
            "nothing moved"
        );
        let (_, budget) = s
            .get(&t.agent, &format!("/sessions/{session}/budget"))
            .await;
        let usdc = &budget["currencies"]["USDC"];
        let zero = |v: &Value| {
            v.as_str()
                .is_some_and(|s| s.chars().all(|c| c == '0' || c == '.'))
        };
        assert!(
            zero(&usdc["spent"]) && zero(&usdc["reserved"]),
            "nothing spent or reserved: {budget}"
        );
        if stop == "kill_switch.engaged" {
            let release = json!({"engaged": false});
            assert_eq!(s.post(&t.admin, "/kill-switch", release).await.0, 200);
        }
    }
    rig.s.finish().await;
}

/// Engages the emergency stop (`kill_switch.engaged`) or kills `session` (`session.killed`); returns the subject
/// its audit entry names.
async fn stop_now(
    s: &paygent_testkit::TestServer,
    t: &paygent_testkit::Team,
    stop: &str,
    session: &str,
) -> String {
    let (status, body, subject) = match stop {
        "kill_switch.engaged" => {
            let engage = json!({"engaged": true, "reason": "drill"});
            let (status, body) = s.post(&t.admin, "/kill-switch", engage).await;
            (status, body, "tenant".to_owned())
        }
        _ => {
            let path = format!("/sessions/{session}/kill");
            let (status, body) = s.post(&t.approver, &path, json!({"reason": "drill"})).await;
            (status, body, format!("session:{session}"))
        }
    };
    assert_eq!(status, 200, "{body}");
    subject
}

/// The audit trail has `payment` executed after the stop's entry (`action` on `subject`).
async fn assert_landed_after(
    s: &paygent_testkit::TestServer,
    t: &paygent_testkit::Team,
    (action, subject): (&str, &str),
    payment: &str,
) {
    let (_, audit) = s.get(&t.admin, "/audit?limit=1000").await;
    let last = |action: &str, subject: &str| {
        audit["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .filter(|e| e["action"] == action && e["subject"] == subject)
            .filter_map(|e| e["seq"].as_i64())
            .next_back()
    };
    let stopped = last(action, subject).expect("the stop is audited");
    let paid =
        last("payment.executed", &format!("payment:{payment}")).expect("the landing is audited");
    assert!(
        stopped < paid,
        "the trail has the landing after the stop: {audit}"
    );
}

/// Uniswap V2 as published, with a pool of 10,000 USDC against 5 WETH (WETH configured without an EIP-712
/// domain): a quote is the router's own answer, the constant product with its 0.3% fee, with the pool's reserves,
/// how much worse than the pool's price it is, and the least a trade may give after a slippage bound; an
/// exchange, a pool or an amount that is not there, or a token traded for itself, is refused with the reason.
#[tokio::test]
async fn a_swap_is_quoted_from_the_pool_itself() {
    use alloy::primitives::U256;
    use paygent_engine::domain::Decimal;
    let chain = LocalChain::start(V2_NETWORK).await;
    let (usdc, weth) = (
        U256::from(10_000_000_000u64),
        U256::from(5u64) * U256::from(10u64).pow(U256::from(18)),
    );
    let exchange = chain.uniswap(usdc, weth).await;
    let mut config = trading(&chain, &exchange);
    let egress = paygent_engine::Egress::new(Default::default());
    let rails = paygent_rails::EvmRails::new(&config, egress).unwrap();
    let d = |s: &str| s.parse::<Decimal>().unwrap();

    let quote = rails
        .quote_swap(None, "USDC", "WETH", d("100"))
        .await
        .unwrap();
    let units_in = U256::from(100_000_000u64);
    let expected =
        units_in * U256::from(997) * weth / (usdc * U256::from(1000) + units_in * U256::from(997));
    assert_eq!(
        quote.amount_out,
        paygent_rails::from_units(expected, 18).unwrap()
    );
    assert_eq!(quote.reserves, (usdc, weth));
    assert_eq!(
        (&*quote.dex, &*quote.from, &*quote.to),
        ("local", "USDC", "WETH")
    );
    // 100 of a 10,000 pool: the price moves about 1%, the fee 0.3%.
    assert_eq!(quote.price_impact_bps, 129, "{quote:?}");
    let bounded = expected * U256::from(9_950) / U256::from(10_000);
    assert_eq!(
        quote.min_out(50),
        paygent_rails::from_units(bounded, 18).unwrap()
    );
    let back = rails
        .quote_swap(Some("local"), "WETH", "USDC", d("0.01"))
        .await
        .unwrap();
    assert_eq!(back.reserves, (weth, usdc));
    assert!(
        back.amount_out > d("19.8") && back.amount_out < d("20"),
        "{back:?}"
    );

    let refused = |r: Result<paygent_rails::SwapQuote, paygent_engine::RailError>| match r {
        Err(paygent_engine::RailError::Refused(why)) => why,
        other => panic!("refused, not {other:?}"),
    };
    let unknown = refused(rails.quote_swap(Some("vvs"), "USDC", "WETH", d("1")).await);
    assert!(unknown.contains("no exchange named vvs"), "{unknown}");
    let itself = refused(rails.quote_swap(None, "WETH", "WETH", d("1")).await);
    assert!(itself.contains("not WETH for itself"), "{itself}");
    // A token configured on the chain that no pool trades.
    config.tokens.push(paygent_rails::TokenConfig {
        symbol: "DAI".into(),
        chain_id: chain.chain_id,
        address: alloy::primitives::Address::repeat_byte(0xda),
        decimals: 18,
        eip712: None,
    });
    let egress = paygent_engine::Egress::new(Default::default());
    let rails = paygent_rails::EvmRails::new(&config, egress).unwrap();
    let no_pool = refused(rails.quote_swap(None, "WETH", "DAI", d("1")).await);
    assert!(no_pool.contains("has no pool of WETH and DAI"), "{no_pool}");
    let finer = refused(rails.quote_swap(None, "USDC", "WETH", d("0.0000001")).await);
    assert!(finer.contains("not an amount to trade"), "{finer}");
    let unconfigured = refused(rails.quote_swap(None, "CRO", "WETH", d("1")).await);
    assert!(
        unconfigured.contains("no token is configured for CRO"),
        "{unconfigured}"
    );
}
