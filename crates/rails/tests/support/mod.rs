//! Rail test helpers over the chain peers in `paygent_testkit::chain`.

pub use paygent_testkit::chain::*;

use paygent_engine::Paygent;
use paygent_rails::{ChainConfig, EvmRails, RailsConfig, TokenConfig};
use paygent_testkit::{ADMIN_TOKEN, Backend, Settings, Team, TestServer, Wiring};
pub use paygent_testkit::{status_is, wait_for};
use serde_json::{Value, json};
use std::sync::Arc;

pub trait OnChain {
    fn rails_config(&self, v1_name: &str) -> RailsConfig;
    /// A Paygent server whose engine pays on this chain.
    async fn paygent(&self, backend: Backend, v1_name: &str) -> TestServer {
        self.paygent_with(backend, v1_name, Settings::default())
            .await
    }
    /// The same, with other settings of its own.
    async fn paygent_with(&self, backend: Backend, v1_name: &str, settings: Settings)
    -> TestServer;
}

impl OnChain for LocalChain {
    fn rails_config(&self, v1_name: &str) -> RailsConfig {
        let mut config = RailsConfig {
            chains: vec![ChainConfig {
                id: self.chain_id,
                name: v1_name.into(),
                rpc_url: self.rpc.clone(),
                confirmations: 1,
            }],
            tokens: vec![TokenConfig {
                symbol: "USDC".into(),
                chain_id: self.chain_id,
                address: self.token,
                decimals: 6,
                eip712: Some(paygent_rails::Eip712Name {
                    name: "USD Coin".into(),
                    version: "2".into(),
                }),
            }],
            dexes: Vec::new(),
            wallets: Vec::new(),
        };
        config.add_wallet_key(PAYER).expect("payer key");
        config
    }

    async fn paygent_with(
        &self,
        backend: Backend,
        v1_name: &str,
        settings: Settings,
    ) -> TestServer {
        let settings = paying_by(&self.rails_config(v1_name), settings);
        TestServer::start_with(backend, settings).await
    }
}

/// `settings` with an engine that pays by the rails of `config`.
pub fn paying_by(config: &RailsConfig, settings: Settings) -> Settings {
    // The x402 peers are on loopback: allowed by configuration, as an operator would.
    let egress = paygent_engine::EgressPolicy::allowing("127.0.0.0/8").expect("allow list");
    let rails = EvmRails::new(config, paygent_engine::Egress::new(egress)).expect("rails");
    let wire = move |p: Paygent| paygent_rails::install(p, rails.clone());
    Settings {
        wiring: Some(Wiring(Arc::new(wire))),
        ..settings
    }
}

/// The chain's rails with WETH (no EIP-712 domain) and the exchange as `local`.
pub fn trading(
    chain: &LocalChain,
    exchange: &paygent_testkit::uniswap::Uniswap,
) -> paygent_rails::RailsConfig {
    let mut config = chain.rails_config("local");
    config.tokens.push(paygent_rails::TokenConfig {
        symbol: "WETH".into(),
        chain_id: chain.chain_id,
        address: exchange.weth,
        decimals: 18,
        eip712: None,
    });
    config.dexes.push(paygent_rails::DexConfig {
        name: "local".into(),
        kind: paygent_rails::DexKind::UniswapV2,
        chain_id: chain.chain_id,
        router: exchange.router,
        factory: exchange.factory,
    });
    config
}

/// A session bound to the payer's wallet.
pub async fn wallet_session(s: &TestServer, t: &Team, config: Value) -> String {
    let (status, body) = s
        .post(
            &t.agent,
            "/sessions",
            json!({"name": "rails", "wallet_address": payer(), "config": config}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().expect("id").to_owned()
}

/// The payments of `session`, newest first, as its agent sees them.
pub async fn payments(
    s: &paygent_testkit::TestServer,
    t: &paygent_testkit::Team,
    session: &str,
) -> Vec<Value> {
    let (_, body) = s
        .get(&t.agent, &format!("/payments?session_id={session}"))
        .await;
    body["items"]
        .as_array()
        .or_else(|| body.as_array())
        .cloned()
        .unwrap_or_else(|| panic!("a payment list: {body}"))
}

pub async fn team(s: &TestServer) -> Team {
    s.team(ADMIN_TOKEN).await
}

/// Starts an execution of `steps` and waits until `done` holds for it.
pub async fn run(
    s: &TestServer,
    t: &Team,
    session: &str,
    steps: Value,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let body = s.execute(&t.agent, session, steps).await;
    wait_for(s, &t.agent, body["id"].as_str().expect("id"), done).await
}

/// What most rail tests start from: a chain, the x402 peers on it, a Paygent paying there, keys, and a session
/// bound to the funded wallet, with the payee's balance before anything happened.
pub struct Rig {
    pub chain: LocalChain,
    pub peer: X402Peer,
    pub s: TestServer,
    pub t: Team,
    pub session: String,
    pub payee_before: u64,
}

impl Rig {
    pub async fn start(chain_id: u64, backend: Backend, v1_name: &str) -> Rig {
        let chain = LocalChain::start(chain_id).await;
        let peer = X402Peer::start(&chain, "base-sepolia").await;
        let s = chain.paygent(backend, v1_name).await;
        let t = team(&s).await;
        let session = wallet_session(&s, &t, json!({})).await;
        let payee_before = chain.balance(payee()).await;
        Rig {
            chain,
            peer,
            s,
            t,
            session,
            payee_before,
        }
    }
}
