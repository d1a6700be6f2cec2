//! Real chain peers on 127.0.0.1 for tests and benchmarks: anvil (from npm) with the EIP-3009 test token
//! deployed from its committed artifact, and the reference x402 service and facilitator (`peers/x402-peer.mjs`).
//! `bash .ci/run` installs them (`npm ci` in `peers/`).

use alloy::network::{EthereumWallet, TransactionBuilder};
use alloy::primitives::{Address, Bytes, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::TransactionRequest;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol;
use alloy::sol_types::SolValue;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

sol! {
    #[sol(rpc)]
    interface TestUsdc {
        function mint(address to, uint256 value) external;
        function balanceOf(address owner) external view returns (uint256);
    }
}

/// anvil's well-known test keys (test keys only): deployer, facilitator, Paygent's wallet, payee.
pub const DEPLOYER: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
pub const FACILITATOR: &str = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";
pub const PAYER: &str = "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a";
pub const PAYEE: &str = "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6";

const MULTICALL3: &str = "0xcA11bde05977b3631167028862bE2a173976CA11";
/// What the payer starts with: 1,000 USDC.
pub const FUNDS: u64 = 1_000_000_000;

pub fn peers_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../peers")
}

fn address(key: &str) -> Address {
    key.parse::<PrivateKeySigner>().expect("test key").address()
}

pub fn deployer() -> Address {
    address(DEPLOYER)
}

pub fn payer() -> Address {
    address(PAYER)
}

pub fn payee() -> Address {
    address(PAYEE)
}

/// A local chain with the test token deployed and the payer funded.
pub struct LocalChain {
    pub rpc: String,
    pub chain_id: u64,
    pub token: Address,
    pub provider: DynProvider,
    _anvil: Child,
}

/// Deploys `code` (creation code and its encoded arguments) from the provider's wallet.
pub(crate) async fn deploy_with(provider: &DynProvider, code: Vec<u8>) -> Address {
    let receipt = provider
        .send_transaction(TransactionRequest::default().with_deploy_code(code))
        .await
        .expect("deploy sent")
        .get_receipt()
        .await
        .expect("deployed");
    assert!(receipt.status(), "the deployment reverted");
    receipt.contract_address.expect("a contract address")
}

/// Waits for a sent transaction's receipt; it must have succeeded.
pub(crate) async fn confirm<N: alloy::network::Network>(
    sent: Result<alloy::providers::PendingTransactionBuilder<N>, alloy::contract::Error>,
) {
    let receipt = sent.expect("sent").get_receipt().await.expect("mined");
    use alloy::network::ReceiptResponse;
    assert!(
        receipt.status(),
        "the transaction {} from {} to {:?} reverted",
        receipt.transaction_hash(),
        receipt.from(),
        receipt.to()
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("addr")
        .port()
}

impl LocalChain {
    pub async fn start(chain_id: u64) -> LocalChain {
        let anvil = peers_dir().join("node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil");
        assert!(
            anvil.exists(),
            "anvil is missing: run `npm ci --prefix peers` (bash .ci/run does)"
        );
        let port = free_port();
        let child = Command::new(anvil)
            .args([
                "--port",
                &port.to_string(),
                "--chain-id",
                &chain_id.to_string(),
                "--silent",
            ])
            .kill_on_drop(true)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("anvil starts");
        let rpc = format!("http://127.0.0.1:{port}");
        let deployer: PrivateKeySigner = DEPLOYER.parse().expect("key");
        let provider = ProviderBuilder::new()
            .wallet(EthereumWallet::from(deployer))
            .connect_http(rpc.parse().expect("url"))
            .erased();
        let up = || async { provider.get_chain_id().await.is_ok() };
        let within = std::time::Duration::from_secs(30);
        crate::eventually(within, "anvil to answer", up, |up| *up).await;
        let artifacts: Value = serde_json::from_str(
            &std::fs::read_to_string(peers_dir().join("contracts/artifacts.json"))
                .expect("contract artifacts"),
        )
        .expect("artifacts are JSON");
        let code = |name: &str, key: &str| -> Bytes {
            artifacts[name][key]
                .as_str()
                .expect("bytecode")
                .parse()
                .expect("hex")
        };
        let multicall: Address = MULTICALL3.parse().expect("address");
        let _: Value = provider
            .raw_request(
                "anvil_setCode".into(),
                (multicall, code("Multicall3", "deployedBytecode")),
            )
            .await
            .expect("Multicall3 in place");
        let mut deploy = code("TestUSDC", "bytecode").to_vec();
        deploy
            .extend(("USD Coin".to_owned(), "2".to_owned(), "USDC".to_owned()).abi_encode_params());
        let token = deploy_with(&provider, deploy).await;
        confirm(
            TestUsdc::new(token, &provider)
                .mint(payer(), U256::from(FUNDS))
                .send()
                .await,
        )
        .await;
        LocalChain {
            rpc,
            chain_id,
            token,
            provider,
            _anvil: child,
        }
    }

    pub async fn balance(&self, who: Address) -> u64 {
        let units = TestUsdc::new(self.token, &self.provider)
            .balanceOf(who)
            .call()
            .await
            .expect("balance");
        u64::try_from(units).expect("small balance")
    }

    /// A provider that signs as the payer: a test acting in Paygent's wallet beside it.
    pub fn as_payer(&self) -> DynProvider {
        let payer: PrivateKeySigner = PAYER.parse().expect("key");
        ProviderBuilder::new()
            .wallet(EthereumWallet::from(payer))
            .connect_http(self.rpc.parse().expect("url"))
            .erased()
    }

    /// Sends 1 wei from the payer's wallet to the payee with `nonce`, taking that nonce from anything else.
    pub async fn send_from_payer(&self, nonce: u64) {
        let wallet = self.as_payer();
        let tx = TransactionRequest::default()
            .with_to(payee())
            .with_value(U256::from(1))
            .with_nonce(nonce);
        let _pending = wallet.send_transaction(tx).await.expect("sent");
    }

    /// A block every `seconds`, whether or not anything waits to be mined, as a live chain makes them (anvil
    /// otherwise mines only when a transaction comes, so its clock stands still between them).
    pub async fn mine_every(&self, seconds: u64) {
        self.rpc_call("evm_setIntervalMining", json!([seconds]))
            .await;
    }

    /// Sets the chain's clock `seconds` behind the wall clock and mines a block there, as on a chain whose block
    /// timestamps lag; later blocks go on from that time.
    pub async fn lag_behind(&self, seconds: u64) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        self.rpc_call("evm_setTime", json!([now - seconds])).await;
        self.rpc_call("evm_mine", json!([])).await;
    }

    /// The latest block's timestamp.
    pub async fn time(&self) -> u64 {
        let block = self
            .provider
            .get_block_by_number(alloy::eips::BlockNumberOrTag::Latest)
            .await
            .expect("latest block")
            .expect("a block");
        block.header.timestamp
    }

    async fn rpc_call(&self, method: &'static str, params: Value) {
        let _: Value = self
            .provider
            .raw_request(method.into(), params)
            .await
            .unwrap_or_else(|e| panic!("{method}: {e}"));
    }

    /// Mining on or off: with it off, a sent transaction waits in the pool, as on a slow chain.
    pub async fn automine(&self, on: bool) {
        self.rpc_call("evm_setAutomine", json!([on])).await;
        if on {
            self.rpc_call("evm_mine", json!([])).await;
        }
    }
}

/// The reference x402 service and facilitator, settling on `chain`.
pub struct X402Peer {
    pub service: String,
    /// The reference facilitator, for services built with other SDKs.
    pub facilitator: String,
    _process: Child,
}

/// A peer process's output, a JSON document per line.
pub(crate) type Said = tokio::io::Lines<BufReader<ChildStdout>>;

/// Starts a peer process given its `PEER_CONFIG`, and reads the one JSON line it prints once it listens.
pub(crate) async fn peer(mut command: Command, what: &str, config: &Value) -> (Child, Value, Said) {
    let mut child = command
        .env("PEER_CONFIG", config.to_string())
        .kill_on_drop(true)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("{what} starts: {e}"));
    let mut said = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = next_said(&mut said, what).await;
    (child, first, said)
}

/// The next JSON line a peer prints, within 30 s.
async fn next_said(said: &mut Said, what: &str) -> Value {
    let line = tokio::time::timeout(std::time::Duration::from_secs(30), said.next_line())
        .await
        .unwrap_or_else(|_| panic!("{what} answers within 30 s"))
        .expect("stdout readable")
        .unwrap_or_else(|| panic!("{what} printed a line"));
    serde_json::from_str(&line).expect("a JSON line")
}

/// The reference x402 client (`@x402/fetch`), paying from the funded test wallet when told to: what Paygent's
/// x402 payments are compared with.
pub struct ReferenceClient {
    process: Child,
    said: Said,
}

impl ReferenceClient {
    /// The client, paying on `chain` in its test token.
    pub async fn start(chain: &LocalChain) -> ReferenceClient {
        let mut node = Command::new("node");
        node.arg(peers_dir().join("x402-client.mjs"));
        let config = json!({"key": PAYER, "network": format!("eip155:{}", chain.chain_id),
            "asset": chain.token});
        let (process, _, said) = peer(node, "the reference x402 client", &config).await;
        ReferenceClient { process, said }
    }

    /// Pays for `url`, and answers how long it took, as the client measured it, and the final status.
    pub async fn pay(&mut self, url: &str) -> (std::time::Duration, u16) {
        use tokio::io::AsyncWriteExt;
        let stdin = self.process.stdin.as_mut().expect("stdin");
        stdin
            .write_all(format!("{url}\n").as_bytes())
            .await
            .expect("the client takes a URL");
        let answer = next_said(&mut self.said, "the reference x402 client").await;
        let ms = answer["ms"].as_f64().expect("ms");
        let status = answer["status"].as_u64().expect("status");
        (
            std::time::Duration::from_secs_f64(ms / 1000.0),
            status as u16,
        )
    }
}

impl X402Peer {
    pub async fn start(chain: &LocalChain, v1_name: &str) -> X402Peer {
        let config = json!({"rpc": chain.rpc, "chainId": chain.chain_id, "v1Network": v1_name,
            "facilitatorKey": FACILITATOR, "asset": chain.token, "name": "USD Coin", "version": "2",
            "payTo": payee()});
        let mut node = Command::new("node");
        node.arg(peers_dir().join("x402-peer.mjs"));
        let (child, urls, _) = peer(node, "the x402 peer", &config).await;
        X402Peer {
            service: urls["service"].as_str().expect("service url").to_owned(),
            facilitator: urls["facilitator"]
                .as_str()
                .expect("facilitator url")
                .to_owned(),
            _process: child,
        }
    }

    /// The same resources' prices (`/py/cheap` $0.10, `/py/premium` $25) from a service built with Coinbase's
    /// Python SDK (its FastAPI middleware), settled by this peer's reference facilitator.
    pub async fn python(&self, chain: &LocalChain) -> X402Peer {
        let config = json!({"facilitator": self.facilitator, "chainId": chain.chain_id,
            "asset": chain.token, "name": "USD Coin", "version": "2", "payTo": payee()});
        let mut python = Command::new(peers_dir().join(".venv/bin/python"));
        python.arg(peers_dir().join("x402-python.py"));
        let (child, urls, _) = peer(python, "the Python x402 service", &config).await;
        X402Peer {
            service: urls["service"].as_str().expect("service url").to_owned(),
            facilitator: self.facilitator.clone(),
            _process: child,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.service)
    }

    /// How many times each paid resource was served.
    pub async fn served(&self) -> Value {
        reqwest::get(self.url("/served"))
            .await
            .expect("served")
            .json()
            .await
            .expect("json")
    }
}
