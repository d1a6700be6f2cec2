//! Swaps traded for real: Uniswap V2 as published on npm, on anvil, with a pool of 10,000 test USDC against 5
//! WETH. What moved is read on chain: the wallet's tokens, the pool's answer, the router's allowance.

#[allow(dead_code)] // each test binary uses its part of the shared helpers
mod support;

use alloy::primitives::U256;
use alloy::providers::Provider;
use paygent_engine::domain::Decimal;
use paygent_testkit::Backend;
use paygent_testkit::mcp::{McpClient, tool_result};
use paygent_testkit::uniswap::Uniswap;
use serde_json::{Value, json};
use std::time::Duration;
use support::*;

paygent_testkit::on_both_databases!(a_swap_above_the_threshold_waits_for_a_person_and_trades_once);

const CHAIN: u64 = 338;

/// A Paygent trading on a fresh chain's exchange; swaps above $25 go to a person.
struct Market {
    chain: LocalChain,
    exchange: Uniswap,
    s: paygent_testkit::TestServer,
    t: paygent_testkit::Team,
    session: String,
}

fn wei(eth: u64) -> U256 {
    U256::from(eth) * U256::from(10u64).pow(U256::from(18))
}

impl Market {
    async fn open(backend: Backend) -> Market {
        let chain = LocalChain::start(CHAIN).await;
        let exchange = chain.uniswap(U256::from(10_000_000_000u64), wei(5)).await;
        let config = trading(&chain, &exchange);
        let s = paygent_testkit::TestServer::start_with(
            backend,
            paying_by(&config, Default::default()),
        )
        .await;
        let t = team(&s).await;
        let rules = json!({"thresholds": {"swap": "25"}});
        let (status, policy) = s.put(&t.admin, "/policies/default", rules).await;
        assert_eq!(status, 200, "{policy}");
        let session = wallet_session(&s, &t, json!({})).await;
        Market {
            chain,
            exchange,
            s,
            t,
            session,
        }
    }

    /// Starts a swap of `usdc` for WETH as an execution's one step; its id.
    async fn swap(&self, usdc: &str, more: Value) -> String {
        let mut args = json!({"amount_in": usdc, "from": "USDC", "to": "WETH"});
        if let (Some(a), Some(m)) = (args.as_object_mut(), more.as_object()) {
            a.extend(m.clone());
        }
        let step = json!([{"tool": "swap", "args": args}]);
        let started = self.s.execute(&self.t.agent, &self.session, step).await;
        started["id"].as_str().expect("an execution").to_owned()
    }

    async fn until(&self, id: &str, status: &'static str) -> Value {
        wait_for(&self.s, &self.t.agent, id, status_is(status)).await
    }

    /// The same market after Paygent stopped and started again, mining back on while it was down.
    async fn restarted(self) -> Market {
        let s = self.s.restart_after(self.chain.automine(true)).await;
        Market { s, ..self }
    }

    /// Why the execution `id` failed, once it has.
    async fn failed(&self, id: &str) -> String {
        let failed = self.until(id, "failed").await;
        let error = failed["steps"][0]["error"].as_str();
        error.unwrap_or_default().to_owned()
    }

    /// The payer's test USDC and WETH, and the router's allowance of its USDC, in units.
    async fn holdings(&self) -> (u64, U256, U256) {
        (
            self.chain.balance(payer()).await,
            self.exchange.weth_of(&self.chain, payer()).await,
            self.exchange.allowance(&self.chain, payer()).await,
        )
    }

    /// What the router would give for `usdc` units now.
    async fn quoted(&self, usdc: u64) -> U256 {
        let rails = paygent_rails::EvmRails::new(
            &trading(&self.chain, &self.exchange),
            paygent_engine::Egress::new(Default::default()),
        )
        .expect("rails");
        let amount = Decimal::new(usdc as i64, 6);
        let quote = rails
            .quote_swap(None, "USDC", "WETH", amount)
            .await
            .expect("a quote");
        paygent_rails::to_units(quote.amount_out, 18).expect("units")
    }
}

fn units(text: &Value) -> U256 {
    let amount: Decimal = text.as_str().expect("an amount").parse().unwrap();
    paygent_rails::to_units(amount, 18).expect("units")
}

/// A $50 swap goes to a person with its quote, price impact and least out; approved, it trades exactly the
/// quoted-and-bounded amounts once, and leaves the router's allowance as it was. A $10 swap trades at once.
async fn a_swap_above_the_threshold_waits_for_a_person_and_trades_once(backend: Backend) {
    let m = Market::open(backend).await;
    let (usdc_before, weth_before, allowance_before) = m.holdings().await;
    let expected = m.quoted(50_000_000).await;

    let id = m.swap("50", json!({})).await;
    let paused = m.until(&id, "awaiting_approval").await;
    let approval = paused["steps"][0]["approval_id"].as_str().unwrap();
    let (_, request) =
        m.s.get(&m.t.approver, &format!("/approvals/{approval}"))
            .await;
    assert_eq!(request["tool"], "swap", "{request}");
    assert_eq!(request["usd_value"], "50", "{request}");
    assert_eq!(request["allowed_decisions"], json!(["approve", "reject"]));
    let terms = &request["args"]["swap"];
    assert_eq!(units(&terms["expected_out"]), expected, "{terms}");
    assert_eq!(
        units(&terms["min_out"]),
        expected * U256::from(9_950) / U256::from(10_000),
        "the policy's default 50 bps: {terms}"
    );
    assert_eq!(
        (terms["dex"].clone(), terms["to"].clone()),
        (json!("local"), json!("WETH"))
    );
    assert!(terms["price_impact_bps"].as_u64().unwrap() > 30, "{terms}");
    assert_eq!(
        request["args"]["recipient"]
            .as_str()
            .unwrap()
            .to_lowercase(),
        m.exchange.router.to_string().to_lowercase(),
        "the swap pays the router"
    );
    let edit = json!({"edited_args": {"amount": "5"}});
    let (status, _) = m.s.decide(&m.t.approver, approval, "edit", edit).await;
    assert_eq!(status, 422, "a swap is approved or rejected as quoted");
    assert_eq!(
        m.holdings().await.0,
        usdc_before,
        "nothing traded while waiting"
    );

    let (status, _) =
        m.s.decide(&m.t.approver, approval, "approve", json!({}))
            .await;
    assert_eq!(status, 200);
    let done = m.until(&id, "completed").await;
    let result = &done["steps"][0]["result"];
    assert_eq!(result["amount_in"], "50", "{result}");
    assert_eq!(
        units(&result["amount_out"]),
        expected,
        "nobody traded between: {result}"
    );
    assert!(units(&result["amount_out"]) >= units(&result["min_out"]));
    assert!(
        result["tx_hash"]
            .as_str()
            .is_some_and(|h| h.starts_with("0x"))
    );
    let (usdc, weth, allowance) = m.holdings().await;
    assert_eq!(
        usdc_before - usdc,
        50_000_000,
        "exactly 50 USDC left the wallet"
    );
    assert_eq!(
        weth - weth_before,
        expected,
        "exactly what the pool said came in"
    );
    assert_eq!(allowance, allowance_before, "the allowance is what it was");

    // Under the threshold: at once, and once. An allowance someone gave the router before is left as it was.
    let given = U256::from(7_000_000u64);
    m.exchange.allow_router(&m.chain, given).await;
    let small = m.quoted(10_000_000).await;
    let id = m.swap("10", json!({})).await;
    let done = m.until(&id, "completed").await;
    assert!(done["steps"][0]["approval_id"].is_null(), "{done}");
    let (usdc_after, weth_after, allowance) = m.holdings().await;
    assert_eq!(usdc - usdc_after, 10_000_000);
    assert_eq!(weth_after - weth, small);
    assert_eq!(allowance, given, "the allowance given before is untouched");
    // Two swaps at once from the one wallet: each trades once, and the allowance is still what was given.
    let (a, b) = tokio::join!(m.swap("3", json!({})), m.swap("4", json!({})));
    m.until(&a, "completed").await;
    m.until(&b, "completed").await;
    let (usdc_end, _, allowance) = m.holdings().await;
    assert_eq!(usdc_after - usdc_end, 7_000_000);
    assert_eq!(allowance, given, "after two trades in flight at once");
    let swaps = payments(&m.s, &m.t, &m.session).await;
    assert_eq!(swaps.len(), 4, "one payment per swap: {swaps:?}");
    assert!(
        swaps
            .iter()
            .all(|p| p["tool"] == "swap" && p["status"] == "executed")
    );
    m.s.finish().await;
}

/// Another trader moves the price between the approval and the trade, past the approved least out: nothing is
/// signed or traded, the step fails with both quotes, and the budget gets the swap's value back; or, where the
/// policy says `ask_again`, people are asked again on the new quote.
#[tokio::test]
async fn a_price_that_moved_past_the_bound_trades_nothing() {
    let m = Market::open(Backend::Sqlite).await;
    let before = m.holdings().await;
    let id = m.swap("50", json!({})).await;
    let paused = m.until(&id, "awaiting_approval").await;
    let approval = paused["steps"][0]["approval_id"].as_str().unwrap();
    m.exchange
        .buy_weth(&m.chain, U256::from(1_000_000_000u64))
        .await;
    let (status, _) =
        m.s.decide(&m.t.approver, approval, "approve", json!({}))
            .await;
    assert_eq!(status, 200);
    let error = m.failed(&id).await;
    assert!(error.contains("the price moved"), "{error}");
    assert!(
        error.contains("when approved") && error.contains("is quoted"),
        "both quotes: {error}"
    );
    assert_eq!(
        m.holdings().await,
        before,
        "no token and no allowance moved"
    );
    let swaps = payments(&m.s, &m.t, &m.session).await;
    assert_eq!(swaps[0]["status"], "failed", "{swaps:?}");
    assert_eq!(m.s.count("payment_attempts").await, 0, "nothing was signed");
    let (_, budget) =
        m.s.get(&m.t.agent, &format!("/sessions/{}/budget", m.session))
            .await;
    let zero =
        |v: &Value| v.as_str().and_then(|d| d.parse::<Decimal>().ok()) == Some(Decimal::ZERO);
    assert!(
        zero(&budget["usd"]["spent"]) && zero(&budget["usd"]["reserved"]),
        "{budget}"
    );
    assert_eq!(swaps[0]["reason"], "price_moved", "{swaps:?}");

    // Where the policy says so, people are asked again on a new quote; approved, it trades once at that price.
    let rules = json!({"thresholds": {"swap": "25"}, "swaps": {"on_price_moved": "ask_again"}});
    let (status, _) = m.s.put(&m.t.admin, "/policies/default", rules).await;
    assert_eq!(status, 200);
    let id = m.swap("50", json!({})).await;
    let paused = m.until(&id, "awaiting_approval").await;
    let first = paused["steps"][0]["approval_id"]
        .as_str()
        .unwrap()
        .to_owned();
    m.exchange
        .buy_weth(&m.chain, U256::from(500_000_000u64))
        .await;
    let moved = m.quoted(50_000_000).await;
    m.s.decide(&m.t.approver, &first, "approve", json!({}))
        .await;
    let asked_again = || async {
        let (_, e) = m.s.get(&m.t.agent, &format!("/executions/{id}")).await;
        e
    };
    let within = Duration::from_secs(30);
    let again = paygent_testkit::eventually(within, "a new request", asked_again, |e| {
        e["status"] == "awaiting_approval" && e["steps"][0]["approval_id"] != first.as_str()
    })
    .await;
    let second = again["steps"][0]["approval_id"].as_str().unwrap();
    let (_, request) =
        m.s.get(&m.t.approver, &format!("/approvals/{second}"))
            .await;
    assert_eq!(
        units(&request["args"]["swap"]["expected_out"]),
        moved,
        "the new quote: {request}"
    );
    assert_eq!(
        m.holdings().await,
        before,
        "nothing traded on the old approval"
    );
    m.s.decide(&m.t.approver, second, "approve", json!({}))
        .await;
    let done = m.until(&id, "completed").await;
    assert_eq!(
        units(&done["steps"][0]["result"]["amount_out"]),
        moved,
        "{done}"
    );
    assert_eq!(before.0 - m.holdings().await.0, 50_000_000, "traded once");
    m.s.finish().await;
}

/// The policy bounds what agents trade: a looser slippage than it allows, a trade that moves the pool too far,
/// a token it does not list. Each is denied with its rule, and nothing is signed; nor is a trade the wallet
/// cannot pay for.
#[tokio::test]
async fn the_policy_bounds_slippage_price_impact_and_tokens() {
    let m = Market::open(Backend::Sqlite).await;
    let before = m.holdings().await;
    let loose = m.swap("5", json!({"max_slippage_bps": 500})).await;
    let why = m.failed(&loose).await;
    assert!(why.contains("swaps.max_slippage_bps"), "{why}");
    // 900 of a 10,000 pool moves its price about 8%.
    let big = m.swap("900", json!({})).await;
    let why = m.failed(&big).await;
    assert!(why.contains("swaps.max_price_impact_bps"), "{why}");
    let rules = json!({"thresholds": {"swap": "25"}, "swaps": {"tokens": ["USDC", "CRO"]}});
    let (status, _) = m.s.put(&m.t.admin, "/policies/default", rules).await;
    assert_eq!(status, 200);
    let unlisted = m.swap("5", json!({})).await;
    let why = m.failed(&unlisted).await;
    assert!(
        why.contains("swaps.tokens") && why.contains("WETH"),
        "{why}"
    );
    let (status, _) =
        m.s.put(
            &m.t.agent,
            "/policies/default",
            json!({"swaps": {"max_slippage_bps": 10000}}),
        )
        .await;
    assert_eq!(status, 403, "an agent never loosens its own bounds");
    let (status, problem) =
        m.s.put(
            &m.t.admin,
            "/policies/default",
            json!({"swaps": {"default_slippage_bps": 200}}),
        )
        .await;
    assert_eq!(status, 422, "{problem}");
    // A trade the wallet cannot pay for is refused before anything is signed.
    let rules = json!({"thresholds": {"swap": "5000"}, "swaps": {"max_price_impact_bps": 5000}});
    let (status, _) = m.s.put(&m.t.admin, "/policies/default", rules).await;
    assert_eq!(status, 200);
    let more = m.swap("1500", json!({})).await;
    let why = m.failed(&more).await;
    assert!(why.contains("the wallet holds 1000 USDC"), "{why}");
    assert_eq!(m.holdings().await, before);
    assert_eq!(m.s.count("payment_attempts").await, 0, "nothing was signed");
    m.s.finish().await;
}

/// Paygent stops after the trade's two transactions were signed and journaled and before the chain saw them
/// (dropped from the pool): after the restart the same transactions are sent, and the swap happens once.
#[tokio::test]
async fn a_restart_between_signing_and_sending_trades_once() {
    let m = Market::open(Backend::Sqlite).await;
    let (usdc_before, weth_before, allowance_before) = m.holdings().await;
    let expected = m.quoted(10_000_000).await;
    m.chain.automine(false).await;
    let id = m.swap("10", json!({})).await;
    let pooled = || async {
        let status: Value = m
            .chain
            .provider
            .raw_request("txpool_status".into(), ())
            .await
            .unwrap();
        status["pending"].clone()
    };
    paygent_testkit::eventually(
        Duration::from_secs(30),
        "the trade in the pool",
        pooled,
        |n| n == "0x2",
    )
    .await;
    let signed: Value =
        serde_json::from_str(&m.s.text("SELECT signed FROM payment_attempts").await).unwrap();
    for part in ["approve", "swap"] {
        let hash = signed[part]["hash"].as_str().unwrap().to_owned();
        let _: Value = m
            .chain
            .provider
            .raw_request("anvil_dropTransaction".into(), (hash,))
            .await
            .unwrap();
    }
    let m = m.restarted().await;
    let done = m.until(&id, "completed").await;
    let result = &done["steps"][0]["result"];
    assert_eq!(
        result["tx_hash"], signed["swap"]["hash"],
        "the same swap, sent again"
    );
    let (usdc, weth, allowance) = m.holdings().await;
    assert_eq!(usdc_before - usdc, 10_000_000, "traded once");
    assert_eq!(weth - weth_before, expected);
    assert_eq!(allowance, allowance_before);
    m.s.finish().await;
}

/// The official MCP client trades through the `swap` tool: $10 at once, told what it bought; $50 waits for a
/// person, and `wait_for_approval` trades it once approved. Each moved its USDC once. Another agent's key finds
/// no such session.
#[tokio::test]
async fn an_mcp_client_swaps_with_the_swap_tool() {
    let m = Market::open(Backend::Sqlite).await;
    let (usdc_before, _, allowance_before) = m.holdings().await;
    let mut client = McpClient::http(&format!("{}/mcp", m.s.base), &m.t.agent)
        .await
        .expect("connects");
    let args = |usdc: &str| {
        json!({"session_id": m.session, "amount_in": usdc, "from": "USDC", "to": "WETH",
            "description": "rebalancing"})
    };
    let (small, text, failed) = tool_result(&client.call("swap", args("10")).await);
    assert!(!failed, "{text}");
    assert!(
        text.starts_with("Swapped 10 USDC for 0.00") && text.contains(" WETH (payment "),
        "{text}"
    );
    assert_eq!(small["status"], "executed", "{small}");
    let (big, text, failed) = tool_result(&client.call("swap", args("50")).await);
    assert!(
        !failed && text.contains("into a swap for at least"),
        "{text}"
    );
    let approval = big["approval"]["id"].as_str().unwrap().to_owned();
    m.s.decide(&m.t.approver, &approval, "approve", json!({}))
        .await;
    let waited = json!({"approval_id": approval, "timeout_seconds": 10});
    let (done, text, failed) = tool_result(&client.call("wait_for_approval", waited).await);
    assert!(
        !failed && text.starts_with("Swapped 50 USDC for "),
        "{text}"
    );
    assert_eq!(done["status"], "executed", "{done}");
    let (usdc, _, allowance) = m.holdings().await;
    assert_eq!(usdc_before - usdc, 60_000_000, "each swap traded once");
    assert_eq!(allowance, allowance_before);
    client.close().await;

    // Another agent cannot trade in this session: it is not found, and nothing is quoted or written.
    let other =
        m.s.key(&m.t.admin, paygent_engine::domain::Role::Agent)
            .await;
    let mut theirs = McpClient::http(&format!("{}/mcp", m.s.base), &other)
        .await
        .expect("connects");
    let payments = m.s.count("payments").await;
    let (_, text, failed) = tool_result(&theirs.call("swap", args("10")).await);
    assert!(failed && text.contains("not found"), "{text}");
    assert_eq!(m.s.count("payments").await, payments);
    theirs.close().await;
    m.s.finish().await;
}
