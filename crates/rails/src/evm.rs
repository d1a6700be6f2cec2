//! The EVM rail: ERC-20 transfers and x402 payments from a session's wallet, over JSON-RPC.
//!
//! Both kinds follow the engine's order: sign, hand the signed artifact to the journal, and only then send it.
//! A transfer is a raw transaction (its hash is known before it is sent; sending it again cannot pay twice, its
//! nonce sees to that). An x402 payment is an EIP-3009 authorization (its nonce can be used once on chain, so
//! its state there says whether it paid).

use crate::config::{ChainConfig, DexConfig, RailsConfig, TokenConfig};
use crate::x402::{self, Authorization, Offer, Version};
use alloy::consensus::Transaction as _;
use alloy::eips::BlockNumberOrTag;
use alloy::eips::eip2718::Encodable2718;
use alloy::network::{EthereumWallet, NetworkTransactionBuilder, TransactionBuilder};
use alloy::primitives::{Address, B256, Bytes, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::{Filter, TransactionRequest};
use alloy::signers::SignerSync;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol;
use alloy::sol_types::{Eip712Domain, SolCall, SolEvent, SolStruct};
use futures::future::BoxFuture;
use paygent_engine::domain::Decimal;
use paygent_engine::domain::policy::PaymentTool;
use paygent_engine::domain::swap::SwapTerms;
use paygent_engine::{
    Asked, Egress, Journal, PaymentOrder, Rail, RailError, Refusal, Settlement, Signed, SwapAsk,
    SwapQuoted, Unanswered,
};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

sol! {
    #[sol(rpc)]
    interface Eip3009Token {
        function balanceOf(address owner) external view returns (uint256);
        function transfer(address to, uint256 value) external returns (bool);
        function authorizationState(address authorizer, bytes32 nonce) external view returns (bool);
        event AuthorizationUsed(address indexed authorizer, bytes32 indexed nonce);
    }

    struct TransferWithAuthorization {
        address from;
        address to;
        uint256 value;
        uint256 validAfter;
        uint256 validBefore;
        bytes32 nonce;
    }
}

/// The most of a paid resource's body kept in a payment's receipt.
const MAX_BODY: usize = 64 * 1024;
/// How long an x402 authorization stays valid: the service's `maxTimeoutSeconds`, within these bounds. A
/// signed payment that was not settled must not linger: a refusal counts only once its authorization expired.
const AUTHORIZATION_SECONDS: std::ops::RangeInclusive<u64> = 10..=60;
/// How long before now an authorization becomes valid: as generous as the reference client, so a chain whose
/// blocks lag the wall clock (or a host clock ahead of it) still takes it.
const VALID_AFTER_MARGIN: u64 = 600;
/// How far back the transaction of an authorization used before an interruption is looked for (about 15 hours
/// of Cronos blocks), and how many blocks one log query spans (public nodes refuse wide ranges).
const LOG_LOOKBACK_BLOCKS: u64 = 10_000;
const LOG_WINDOW_BLOCKS: u64 = 2_000;
/// The longest pause between two looks for a transaction's receipt.
const RECEIPT_POLL: Duration = Duration::from_millis(500);
/// How long a transaction may take to be mined before its outcome counts as unknown (it is then reconciled).
const RECEIPT_TIMEOUT: Duration = Duration::from_secs(120);
/// How many blocks back the block that took a transfer's nonce is looked for, by the wallet's nonce at each
/// (within what a node that keeps no history still answers); a nonce taken before that, with no receipt found,
/// was taken by another transaction.
const TAKEN_DEEP: u64 = 64;

pub(crate) struct Chain {
    pub(crate) config: ChainConfig,
    pub(crate) caip2: String,
    pub(crate) provider: DynProvider,
}

struct Inner {
    chains: BTreeMap<u64, Chain>,
    tokens: BTreeMap<String, TokenConfig>,
    dexes: Vec<DexConfig>,
    wallets: BTreeMap<Address, PrivateKeySigner>,
    /// One transaction at a time per wallet, from reading the nonce to broadcasting, so two payments never take
    /// the same nonce.
    nonce_turns: BTreeMap<Address, tokio::sync::Mutex<()>>,
    /// Requests to x402 resources, which agents name: within the egress policy.
    egress: Egress,
}

/// Pays on EVM chains: `transfer` to an address, `x402_payment` to a URL.
#[derive(Clone)]
pub struct EvmRails {
    inner: Arc<Inner>,
}

pub(crate) fn unavailable(e: impl std::fmt::Display) -> RailError {
    RailError::Unavailable(e.to_string())
}

/// What a resource answered when asked its price.
#[derive(Debug)]
pub enum Quote {
    /// It asks for payment: what it offers.
    Offers(Vec<Offer>),
    /// It answered without asking for payment (free, or broken): its status and the start of its body.
    Unpaid { status: u16, body: String },
}

/// Why a resource's price could not be had.
#[derive(Debug, thiserror::Error)]
pub enum QuoteError {
    /// The egress policy does not let it be reached (or it is no URL): nothing will change that.
    #[error("{0}")]
    Refused(String),
    /// Not reached, for now.
    #[error("{0}")]
    Unreachable(String),
    /// It asked for payment in a form that cannot be read: nothing can be signed for it.
    #[error("{url} answered a malformed 402: {why}")]
    Malformed { url: String, why: String },
}

/// A transfer on its way to the chain: its hash, the wallet and nonce it spends, and the node's refusal when it
/// was sent ("already known", "nonce too low", ...), if any.
struct SentTransfer {
    hash: B256,
    from: Address,
    nonce: u64,
    refused_send: Option<String>,
}

/// Waits until the transfer is mined (its receipt), or can never be (another transaction took its nonce), or
/// `deadline` passes (its outcome is then unknown, and reconciled later).
async fn mined(
    chain: &Chain,
    t: &SentTransfer,
    deadline: tokio::time::Instant,
) -> Result<alloy::rpc::types::TransactionReceipt, RailError> {
    let provider = &chain.provider;
    // A node answers a sent transaction before it is mined: look again soon, then less often (a live chain makes
    // a block every few seconds).
    let mut pause = Duration::from_millis(2);
    let mut known_mined = false;
    loop {
        if let Some(r) = provider
            .get_transaction_receipt(t.hash)
            .await
            .map_err(unavailable)?
        {
            return Ok(r);
        }
        if !known_mined {
            match nonce_taker(chain, t).await? {
                Taker::Nobody => {}
                Taker::This => known_mined = true,
                Taker::Another => {
                    return Err(RailError::Superseded(
                        "another transaction took the signed transaction's nonce".into(),
                    ));
                }
            }
        }
        if tokio::time::Instant::now() > deadline {
            return Err(RailError::Unavailable(match &t.refused_send {
                _ if known_mined => {
                    "the transaction is mined, but the node has not given its receipt".into()
                }
                Some(e) => format!("broadcasting the transaction: {e}"),
                None => "the transaction was sent but not mined in time".into(),
            }));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(RECEIPT_POLL);
    }
}

/// Which transaction took a sent transfer's nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Taker {
    /// None yet, or the chain's answers do not say yet.
    Nobody,
    /// The transfer itself: it is mined, whatever its receipt's lookup says for now.
    This,
    /// Another transaction of the wallet: the transfer can never be mined.
    Another,
}

/// Who took the transfer's nonce, as the block that took it says. A missing receipt is no proof: a node may
/// answer the wallet's nonce before it has indexed the receipts of the block that moved it (anvil while it stores
/// a block, an RPC provider's replicas behind one address), and taking that for "another transaction won" would
/// sign the payment again and pay it twice. So the block where the nonce moved is found (its state read at
/// explicit block numbers) and its transactions read. A nonce taken more than `TAKEN_DEEP` blocks ago, with the
/// receipt still missing, was taken by another: no node lags its receipts that far.
async fn nonce_taker(chain: &Chain, t: &SentTransfer) -> Result<Taker, RailError> {
    let provider = &chain.provider;
    let taken_at = |block: u64| async move {
        let count = provider
            .get_transaction_count(t.from)
            .number(block)
            .await
            .map_err(unavailable)?;
        Ok::<bool, RailError>(count > t.nonce)
    };
    let mut late = provider.get_block_number().await.map_err(unavailable)?;
    if !taken_at(late).await? {
        return Ok(Taker::Nobody);
    }
    let mut early = late.saturating_sub(TAKEN_DEEP);
    if early > 0 && taken_at(early).await? {
        return Ok(Taker::Another);
    }
    // The nonce is unused at `early` (the genesis block's count is zero) and used at `late`.
    while late - early > 1 {
        let middle = early + (late - early) / 2;
        match taken_at(middle).await? {
            true => late = middle,
            false => early = middle,
        }
    }
    let Some(block) = provider
        .get_block_by_number(late.into())
        .full()
        .await
        .map_err(unavailable)?
    else {
        return Ok(Taker::Nobody);
    };
    let taker = block
        .transactions
        .txns()
        .find(|tx| tx.inner.signer() == t.from && tx.inner.nonce() == t.nonce);
    Ok(match taker {
        Some(tx) if *tx.inner.tx_hash() == t.hash => Taker::This,
        Some(_) => Taker::Another,
        None => Taker::Nobody,
    })
}

/// A signed transaction as journaled: enough to send it again, or to find it mined.
pub(crate) struct SignedTx {
    pub hash: B256,
    pub raw: Bytes,
    pub from: Address,
    pub nonce: u64,
}

impl SignedTx {
    /// The transaction a stored artifact (or one of its parts) holds; `hash` where it is kept apart.
    pub(crate) fn stored(artifact: &Value, hash: Option<&str>) -> Result<Self, RailError> {
        let hash = hash.or_else(|| artifact["hash"].as_str());
        Ok(SignedTx {
            hash: parse_stored(hash, "transaction hash")?,
            raw: stored(artifact, "raw")?,
            from: stored(artifact, "from")?,
            nonce: artifact["nonce"].as_u64().ok_or_else(|| {
                RailError::Refused("the stored attempt has no readable nonce".into())
            })?,
        })
    }
}

/// Sends a stored transaction unless this runner just did (`sent`, with the node's refusal if any) or it is
/// mined already, then waits for it to be mined and confirmed: its receipt, whatever its status. It can never
/// be mined once another transaction took its nonce (`Superseded`); past the wait its outcome is unknown.
pub(crate) async fn land(
    chain: &Chain,
    tx: &SignedTx,
    sent: Option<Option<String>>,
) -> Result<alloy::rpc::types::TransactionReceipt, RailError> {
    let provider = &chain.provider;
    // "already known", "nonce too low", "replacement underpriced": `mined` tells which matters.
    let refused_send = match sent {
        Some(refusal) => refusal,
        None if provider
            .get_transaction_receipt(tx.hash)
            .await
            .map_err(unavailable)?
            .is_none() =>
        {
            provider
                .send_raw_transaction(&tx.raw)
                .await
                .err()
                .map(|e| e.to_string())
        }
        None => None,
    };
    let deadline = tokio::time::Instant::now() + RECEIPT_TIMEOUT;
    let sent = SentTransfer {
        hash: tx.hash,
        from: tx.from,
        nonce: tx.nonce,
        refused_send,
    };
    let receipt = mined(chain, &sent, deadline).await?;
    let wanted =
        receipt.block_number.unwrap_or_default() + chain.config.confirmations.saturating_sub(1);
    while provider.get_block_number().await.map_err(unavailable)? < wanted {
        if tokio::time::Instant::now() > deadline {
            return Err(RailError::Unavailable(
                "the transaction is mined but not yet confirmed".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(receipt)
}

/// A signed x402 authorization, as the chain knows it.
struct Watched<'a> {
    token: &'a TokenConfig,
    chain: &'a Chain,
    from: Address,
    nonce: B256,
    valid_before: u64,
}

/// Where an authorization stands on chain, as of one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    /// Its nonce was used: it paid.
    Used,
    /// Unused, and the block is at or past its `validBefore`: it can never settle (every later block is later
    /// still).
    Expired,
    /// Unused and still valid: it could settle.
    Open,
}

/// The receipt of an authorization found used on chain: settled after its service refused it, or before an
/// interruption.
fn used(refusal: Option<&Refusal>) -> Value {
    match refusal {
        Some(r) => json!({"settled_late": true, "refusal": r}),
        None => {
            json!({"recovered": true, "note": "paid before an interruption; the resource's answer was not kept"})
        }
    }
}

/// An authorization whose window closed unused: after its service refused it, the payment fails; otherwise it
/// was never answered, and is signed anew.
fn expired(refusal: Option<&Refusal>) -> RailError {
    match refusal {
        Some(r) => RailError::Refused(format!(
            "{}, and the authorization expired unsettled: nothing was paid",
            r.message
        )),
        None => RailError::Superseded("the signed authorization expired unused".into()),
    }
}

/// A service's refusal of the payment it was sent, in its words, outstanding until the authorization's window
/// (`valid_before`, by the chain's clock) closes.
fn refusal(
    url: &str,
    status: u16,
    (code, said): (Option<String>, Option<String>),
    valid_before: u64,
) -> Refusal {
    let mut message = format!("{url} answered {status} after the payment was sent");
    if let Some(c) = &code {
        message.push_str(&format!(": {c}"));
    }
    if let Some(s) = said {
        message.push_str(&format!(" ({s})"));
    }
    Refusal {
        code,
        message,
        outstanding_until: i64::try_from(valid_before)
            .ok()
            .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
            .unwrap_or_default(),
    }
}

impl<'a> Watched<'a> {
    /// The authorization a stored x402 artifact carries.
    fn signed(
        token: &'a TokenConfig,
        chain: &'a Chain,
        artifact: &Value,
    ) -> Result<Self, RailError> {
        Ok(Watched {
            token,
            chain,
            from: stored(artifact, "from")?,
            nonce: stored(artifact, "nonce")?,
            valid_before: artifact["valid_before"].as_u64().unwrap_or(0),
        })
    }

    /// Where it stands as of the chain's latest block: its nonce read at that block, against that block's time.
    /// Chain time, not this server's clock: a chain whose blocks lag can settle it after the wall clock passed it.
    async fn standing(&self) -> Result<Standing, RailError> {
        let (number, time) = chain_clock(self.chain).await?;
        let used = Eip3009Token::new(self.token.address, &self.chain.provider)
            .authorizationState(self.from, self.nonce)
            .call()
            .block(number.into())
            .await
            .map_err(unavailable)?;
        Ok(match (used, time >= self.valid_before) {
            (true, _) => Standing::Used,
            (false, true) => Standing::Expired,
            (false, false) => Standing::Open,
        })
    }

    /// The transaction that used it, found by its `AuthorizationUsed` event in the recent blocks. Public RPC
    /// nodes cap how many blocks one log query spans, so the search walks back in windows.
    async fn transaction(&self) -> Option<String> {
        let provider = &self.chain.provider;
        let latest = provider.get_block_number().await.ok()?;
        let oldest = latest.saturating_sub(LOG_LOOKBACK_BLOCKS);
        let mut to = latest;
        loop {
            let start = to.saturating_sub(LOG_WINDOW_BLOCKS - 1).max(oldest);
            let filter = Filter::new()
                .address(self.token.address)
                .event_signature(Eip3009Token::AuthorizationUsed::SIGNATURE_HASH)
                .topic1(self.from.into_word())
                .topic2(self.nonce)
                .from_block(start)
                .to_block(to);
            let logs = provider.get_logs(&filter).await.ok()?;
            if let Some(hash) = logs.first().and_then(|l| l.transaction_hash) {
                return Some(hash.to_string());
            }
            if start == oldest {
                return None;
            }
            to = start - 1;
        }
    }
}

/// The nonce `from`'s next transaction takes: after every one the node holds, mined or not. Read in the wallet's
/// turn.
pub(crate) async fn next_nonce(chain: &Chain, from: Address) -> Result<u64, RailError> {
    chain
        .provider
        .get_transaction_count(from)
        .pending()
        .await
        .map_err(unavailable)
}

/// The chain's clock: its latest block's number and timestamp.
pub(crate) async fn chain_clock(chain: &Chain) -> Result<(u64, u64), RailError> {
    let block = chain
        .provider
        .get_block_by_number(BlockNumberOrTag::Latest)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| unavailable("the chain has no latest block"))?;
    Ok((block.header.number, block.header.timestamp))
}

/// A transaction's gas limit: estimated (a fifth more, for the state to move a little before it is mined), the
/// estimate failing as `what` would; or fixed, for a call that would fail until an earlier transaction lands.
pub(crate) enum Gas<'a> {
    Estimate(&'a str),
    Fixed(u64),
}

/// Signs a call of `input` on `to` from `wallet` with `nonce`, at the chain's current fees: the raw transaction
/// and its hash. Nothing is sent.
pub(crate) async fn sign_call(
    chain: &Chain,
    wallet: &PrivateKeySigner,
    (to, input): (Address, Vec<u8>),
    nonce: u64,
    gas: Gas<'_>,
) -> Result<(Bytes, B256), RailError> {
    let provider = &chain.provider;
    let request = TransactionRequest::default()
        .with_from(wallet.address())
        .with_to(to)
        .with_input(input)
        .with_chain_id(chain.config.id)
        .with_nonce(nonce);
    let gas = match gas {
        Gas::Fixed(limit) => limit,
        Gas::Estimate(what) => {
            let estimate = provider
                .estimate_gas(request.clone())
                .await
                .map_err(|e| RailError::Refused(format!("{what} would fail: {e}")))?;
            estimate + estimate / 5
        }
    };
    let fees = provider
        .estimate_eip1559_fees()
        .await
        .map_err(unavailable)?;
    let envelope = request
        .with_gas_limit(gas)
        .with_max_fee_per_gas(fees.max_fee_per_gas)
        .with_max_priority_fee_per_gas(fees.max_priority_fee_per_gas)
        .build(&EthereumWallet::from(wallet.clone()))
        .await
        .map_err(|e| RailError::Refused(format!("signing a transaction: {e}")))?;
    Ok((Bytes::from(envelope.encoded_2718()), *envelope.tx_hash()))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `amount` in a token's smallest units, if it is a whole number of them.
pub fn to_units(amount: Decimal, decimals: u32) -> Option<U256> {
    let scaled = amount.checked_mul(Decimal::from(10u64.checked_pow(decimals)?))?;
    if !scaled.fract().is_zero() || scaled.is_sign_negative() {
        return None;
    }
    scaled.trunc().normalize().to_string().parse().ok()
}

/// `units` of a token as a decimal amount.
pub fn from_units(units: U256, decimals: u32) -> Option<Decimal> {
    let n = i128::try_from(units).ok()?;
    Decimal::try_from_i128_with_scale(n, decimals)
        .ok()
        .map(|d| d.normalize())
}

impl EvmRails {
    /// Rails over `config`'s chains and wallets; requests to x402 resources keep to `egress`.
    pub fn new(config: &RailsConfig, egress: Egress) -> Result<Self, crate::config::ConfigError> {
        config.validate()?;
        let chains = config
            .chains
            .iter()
            .map(|c| {
                let url = c
                    .rpc_url
                    .parse()
                    .map_err(|_| crate::config::ConfigError::BadRpcUrl(c.id))?;
                let provider = ProviderBuilder::new().connect_http(url).erased();
                Ok((
                    c.id,
                    Chain {
                        config: c.clone(),
                        caip2: format!("eip155:{}", c.id),
                        provider,
                    },
                ))
            })
            .collect::<Result<_, _>>()?;
        let wallets: BTreeMap<Address, PrivateKeySigner> = config
            .wallets
            .iter()
            .map(|w| (w.address(), w.clone()))
            .collect();
        Ok(EvmRails {
            inner: Arc::new(Inner {
                chains,
                tokens: config
                    .tokens
                    .iter()
                    .map(|t| (t.symbol.clone(), t.clone()))
                    .collect(),
                dexes: config.dexes.clone(),
                nonce_turns: wallets
                    .keys()
                    .map(|a| (*a, tokio::sync::Mutex::new(())))
                    .collect(),
                wallets,
                egress,
            }),
        })
    }

    pub(crate) fn token(&self, symbol: &str) -> Result<(&TokenConfig, &Chain), RailError> {
        let token =
            self.inner.tokens.get(symbol).ok_or_else(|| {
                RailError::Refused(format!("no token is configured for {symbol}"))
            })?;
        Ok((token, &self.inner.chains[&token.chain_id]))
    }

    /// The wallet's turn to take a nonce: held from reading the next nonce until what it signed is broadcast.
    pub(crate) async fn nonce_turn(&self, from: Address) -> tokio::sync::MutexGuard<'_, ()> {
        self.inner.nonce_turns[&from].lock().await
    }

    pub(crate) fn token_config(&self, symbol: &str) -> Result<&TokenConfig, RailError> {
        self.token(symbol).map(|(token, _)| token)
    }

    pub(crate) fn dexes(&self) -> impl Iterator<Item = &DexConfig> {
        self.inner.dexes.iter()
    }

    /// The provider of a configured chain.
    pub(crate) fn provider(&self, chain_id: u64) -> &DynProvider {
        &self.inner.chains[&chain_id].provider
    }

    pub(crate) fn wallet(&self, order: &PaymentOrder) -> Result<&PrivateKeySigner, RailError> {
        self.signer(order.wallet.as_deref())
    }

    /// The key of a wallet this rail holds.
    pub(crate) fn signer_of(&self, wallet: Address) -> Result<&PrivateKeySigner, RailError> {
        self.inner
            .wallets
            .get(&wallet)
            .ok_or_else(|| RailError::Refused(format!("no key is held here for {wallet}")))
    }

    fn signer(&self, wallet: Option<&str>) -> Result<&PrivateKeySigner, RailError> {
        wallet
            .and_then(|w| w.parse::<Address>().ok())
            .and_then(|a| self.inner.wallets.get(&a))
            .ok_or_else(|| RailError::Refused("the session's wallet has no key here".into()))
    }

    /// The offers in `offers` that Paygent can pay: scheme `exact`, a configured network and token. The error
    /// says why each offer is unusable.
    pub fn payable(&self, offers: &[Offer]) -> Result<Vec<(Offer, String)>, String> {
        let mut usable = Vec::new();
        let mut why = Vec::new();
        for (i, o) in offers.iter().enumerate() {
            if o.scheme != "exact" {
                why.push(format!("offer {i}: scheme {:?} is not supported", o.scheme));
                continue;
            }
            let token = self.inner.tokens.values().find(|t| {
                let chain = &self.inner.chains[&t.chain_id];
                let network_matches = match o.version {
                    Version::V2 => o.network == chain.caip2,
                    Version::V1 => o.network == chain.config.name,
                };
                network_matches && t.address == o.asset
            });
            match token {
                Some(t) if t.eip712.is_none() => {
                    why.push(format!("offer {i}: {}", no_domain(&t.symbol)))
                }
                Some(t) => usable.push((o.clone(), t.symbol.clone())),
                None => why.push(format!(
                    "offer {i}: asset {} on network {} is not a configured token",
                    o.asset, o.network
                )),
            }
        }
        if usable.is_empty() {
            return Err(format!("nothing offered can be paid: {}", why.join("; ")));
        }
        Ok(usable)
    }

    /// What payable offers ask, in words: "0.1 USDC or 0.2 USDT".
    pub fn asked(&self, offers: &[(Offer, String)]) -> String {
        let each: Vec<String> = offers
            .iter()
            .map(|(o, symbol)| {
                let decimals = self.inner.tokens.get(symbol).map_or(0, |t| t.decimals);
                let amount = from_units(o.amount, decimals)
                    .map_or_else(|| o.amount.to_string(), |d| d.to_string());
                format!("{amount} {symbol}")
            })
            .collect();
        each.join(" or ")
    }

    /// Asks `url` what it costs.
    pub async fn quote(&self, url: &str) -> Result<Quote, QuoteError> {
        let resp = self
            .inner
            .egress
            .get(url, None)
            .await
            .map_err(|e| match e {
                Unanswered::Refused(why) => QuoteError::Refused(why),
                Unanswered::Failed(why) => QuoteError::Unreachable(why),
            })?;
        let (status, body) = (resp.status, resp.body);
        let header = header_text(&resp.headers, x402::V2_REQUIRED);
        if status != 402 {
            let body = body_text(&body);
            return Ok(Quote::Unpaid { status, body });
        }
        x402::parse_required(header.as_deref(), &body)
            .map(Quote::Offers)
            .map_err(|why| QuoteError::Malformed {
                url: url.to_owned(),
                why,
            })
    }

    /// What `url` asks in `currency`: the least of its payable offers in that token.
    async fn asked_price(&self, url: &str, currency: &str) -> Result<Asked, RailError> {
        let offers = match self.quote(url).await {
            Ok(Quote::Offers(offers)) => offers,
            Ok(Quote::Unpaid { status, body }) => return Ok(Asked::Nothing { status, body }),
            Err(QuoteError::Unreachable(why)) => return Err(RailError::Unavailable(why)),
            Err(e) => return Err(RailError::Refused(e.to_string())),
        };
        let payable = self.payable(&offers).map_err(RailError::Refused)?;
        let (token, _) = self.token(currency)?;
        payable
            .iter()
            .filter(|(_, symbol)| *symbol == token.symbol)
            .map(|(o, _)| o.amount)
            .min()
            .and_then(|units| from_units(units, token.decimals))
            .map(Asked::Price)
            .ok_or_else(|| {
                RailError::Refused(format!(
                    "{url} asks {}, not {currency}: nothing was signed",
                    self.asked(&payable)
                ))
            })
    }

    async fn transfer(
        &self,
        order: &PaymentOrder,
        earlier: Option<Signed>,
        journal: Journal<'_>,
    ) -> Result<Settlement, RailError> {
        let (token, chain) = self.token(&order.currency)?;
        let (signed, sent) = match earlier {
            Some(s) => (s, None),
            None => {
                let wallet = self.wallet(order)?;
                let from = wallet.address();
                let to: Address = order.recipient.parse().map_err(|_| {
                    RailError::Refused("the recipient is not an EVM address".into())
                })?;
                let value = to_units(order.amount, token.decimals).ok_or_else(|| {
                    RailError::Refused(format!(
                        "{} {} is finer than the token's {} decimals",
                        order.amount, token.symbol, token.decimals
                    ))
                })?;
                let _turn = self.nonce_turn(from).await;
                let provider = &chain.provider;
                let nonce = next_nonce(chain, from).await?;
                let call = Eip3009Token::transferCall { to, value }.abi_encode();
                let (raw, hash) = sign_call(
                    chain,
                    wallet,
                    (token.address, call),
                    nonce,
                    Gas::Estimate("the transfer"),
                )
                .await?;
                let mine = Signed {
                    network: chain.caip2.clone(),
                    tx_hash: Some(hash.to_string()),
                    artifact: json!({"kind": "transaction", "raw": raw.to_string(), "from": from,
                        "nonce": nonce, "token": token.address, "to": to, "value": value.to_string()}),
                    refusal: None,
                };
                let stored = journal(mine.clone()).await?;
                // Broadcast while the nonce is still ours; a signature another runner stored is its to send.
                let sent = if stored == mine {
                    let refusal = provider.send_raw_transaction(&raw).await.err();
                    Some(refusal.map(|e| e.to_string()))
                } else {
                    None
                };
                (stored, sent)
            }
        };
        self.settle_transaction(chain, &signed, sent).await
    }

    /// Sends a stored transfer, or finds it mined, and waits for its confirmations. `sent` is this runner's own
    /// broadcast of it a moment ago (with the node's refusal, if any): then it is not looked up and sent again.
    async fn settle_transaction(
        &self,
        chain: &Chain,
        signed: &Signed,
        sent: Option<Option<String>>,
    ) -> Result<Settlement, RailError> {
        let tx = SignedTx::stored(&signed.artifact, signed.tx_hash.as_deref())?;
        let receipt = land(chain, &tx, sent).await?;
        if !receipt.status() {
            return Err(RailError::Refused(
                "the transfer reverted on chain: no tokens moved".into(),
            ));
        }
        Ok(Settlement {
            network: chain.caip2.clone(),
            tx_hash: Some(tx.hash.to_string()),
            receipt: json!({"block": receipt.block_number.unwrap_or_default(), "gas_used": receipt.gas_used,
                "confirmations": chain.config.confirmations}),
            paid: None,
        })
    }

    async fn x402(
        &self,
        order: &PaymentOrder,
        earlier: Option<Signed>,
        journal: Journal<'_>,
    ) -> Result<Settlement, RailError> {
        let (token, chain) = self.token(&order.currency)?;
        if let Some(signed) = earlier {
            return self.settle_x402(token, chain, &signed, false).await;
        }
        let wallet = self.wallet(order)?;
        let value = to_units(order.amount, token.decimals).ok_or_else(|| {
            RailError::Refused("the amount is finer than the token allows".into())
        })?;
        let refused = |e: QuoteError| RailError::Refused(e.to_string());
        let offers = match self.quote(&order.recipient).await.map_err(refused)? {
            Quote::Offers(offers) => offers,
            Quote::Unpaid { status, .. } => {
                return Err(RailError::Refused(format!(
                    "{} answered {status} without asking for payment",
                    order.recipient
                )));
            }
        };
        let offers = self.payable(&offers).map_err(RailError::Refused)?;
        // The price may have moved since the guard decided: never more than was authorized.
        let offer = offers
            .iter()
            .filter(|(o, symbol)| *symbol == token.symbol && o.amount <= value)
            .min_by_key(|(o, _)| o.amount)
            .map(|(o, _)| o.clone())
            .ok_or_else(|| {
                RailError::Refused(format!(
                    "the service now asks {}, above the {} {} that was authorized: nothing was signed",
                    self.asked(&offers),
                    order.amount,
                    order.currency
                ))
            })?;
        let (_, chain_time) = chain_clock(chain).await?;
        let auth = sign_authorization(wallet, token, chain.config.id, &offer, chain_time)?;
        // The payment's own id, not the agent's idempotency key: unique across tenants at a service that
        // dedupes on it, and the same for every resend of this one signed payment.
        let payment_id = format!("pay_{}", order.payment_id.simple());
        let (header_name, header_value) = x402::payment_header(&offer, &auth, &payment_id);
        let mine = Signed {
            network: chain.caip2.clone(),
            tx_hash: None,
            artifact: json!({"kind": "x402", "url": order.recipient, "header_name": header_name,
                "header_value": header_value, "from": auth.from, "nonce": auth.nonce,
                "valid_before": auth.valid_before, "pay_to": offer.pay_to, "value": auth.value.to_string(),
                "version": if offer.version == Version::V1 { 1 } else { 2 }}),
            refusal: None,
        };
        let stored = journal(mine.clone()).await?;
        self.settle_x402(token, chain, &stored, stored == mine)
            .await
    }

    /// Sends a stored x402 payment, or finds it settled. `fresh` says this runner signed it a moment ago, so it
    /// cannot have been sent before and the chain need not be asked first.
    async fn settle_x402(
        &self,
        token: &TokenConfig,
        chain: &Chain,
        signed: &Signed,
        fresh: bool,
    ) -> Result<Settlement, RailError> {
        let a = &signed.artifact;
        let (url, header_name, header_value): (String, String, String) = (
            stored(a, "url")?,
            stored(a, "header_name")?,
            stored(a, "header_value")?,
        );
        let auth = Watched::signed(token, chain, a)?;
        // What the authorization moves; older artifacts did not say, and paid what was authorized.
        let value = a["value"].as_str().and_then(|v| v.parse::<U256>().ok());
        let paid = |receipt: Value, tx_hash: Option<String>| Settlement {
            network: signed.network.clone(),
            tx_hash,
            receipt,
            paid: value.and_then(|v| from_units(v, token.decimals)),
        };
        let standing = if fresh {
            Standing::Open
        } else {
            auth.standing().await?
        };
        match (standing, &signed.refusal) {
            (Standing::Used, refusal) => {
                return Ok(paid(used(refusal.as_ref()), auth.transaction().await));
            }
            (Standing::Open, None) => {}
            // Refused once: never sent again, only watched until the chain says how it ended.
            (Standing::Open, Some(r)) => return Err(RailError::Outstanding(r.clone())),
            (Standing::Expired, refusal) => return Err(expired(refusal.as_ref())),
        }
        let paying = Some((header_name.as_str(), header_value.as_str()));
        let resp = self
            .inner
            .egress
            .get(&url, paying)
            .await
            .map_err(|e| unavailable(format!("paying {url}: {e}")))?;
        let settlement = header_text(&resp.headers, x402::V2_RESPONSE)
            .or_else(|| header_text(&resp.headers, x402::V1_RESPONSE));
        let status = resp.status;
        if (200..300).contains(&status) || auth.standing().await? == Standing::Used {
            let settlement = settlement.as_deref().and_then(x402::parse_settlement);
            let tx = match settlement.as_ref().and_then(|s| s["transaction"].as_str()) {
                Some(t) => Some(t.to_owned()),
                None => auth.transaction().await,
            };
            let body = body_text(&resp.body);
            return Ok(paid(
                json!({"status": status, "body": body, "settlement": settlement}),
                tx,
            ));
        }
        let required = header_text(&resp.headers, x402::V2_REQUIRED);
        let said = x402::refusal(settlement.as_deref(), required.as_deref(), &resp.body);
        Err(RailError::Outstanding(refusal(
            &url,
            status,
            said,
            auth.valid_before,
        )))
    }

    async fn balance_list(&self, wallet: &str) -> Result<Value, RailError> {
        let owner: Address = wallet
            .parse()
            .map_err(|_| RailError::Refused("the wallet is not an EVM address".into()))?;
        let mut out = Vec::new();
        for token in self.inner.tokens.values() {
            let chain = &self.inner.chains[&token.chain_id];
            let units = Eip3009Token::new(token.address, &chain.provider)
                .balanceOf(owner)
                .call()
                .await
                .map_err(unavailable)?;
            let amount = from_units(units, token.decimals)
                .map_or_else(|| units.to_string(), |d| d.to_string());
            out.push(
                json!({"currency": token.symbol, "amount": amount, "network": chain.caip2,
                "token": token.address}),
            );
        }
        Ok(Value::Array(out))
    }
}

/// A text field of a stored signed artifact, parsed.
fn stored<T: std::str::FromStr>(artifact: &Value, key: &str) -> Result<T, RailError> {
    parse_stored(artifact[key].as_str(), key)
}

fn parse_stored<T: std::str::FromStr>(text: Option<&str>, what: &str) -> Result<T, RailError> {
    text.and_then(|t| t.parse().ok())
        .ok_or_else(|| RailError::Refused(format!("the stored attempt has no readable {what}")))
}

fn header_text(headers: &reqwest::header::HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn body_text(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX_BODY)]);
    text.into_owned()
}

/// Why x402 cannot pay with a token configured without an EIP-712 domain.
fn no_domain(symbol: &str) -> String {
    format!(
        "{symbol} has no EIP-712 domain configured (eip712_name, eip712_version): x402 pays only with EIP-3009 \
         tokens"
    )
}

/// Signs an EIP-3009 authorization for `offer` with a fresh random nonce and a short validity window, anchored
/// on both clocks: valid from well before the earlier of this server's and the chain's (`chain_time`, its latest
/// block), until the offer's timeout after the later of them.
pub fn sign_authorization(
    wallet: &PrivateKeySigner,
    token: &TokenConfig,
    chain_id: u64,
    offer: &Offer,
    chain_time: u64,
) -> Result<Authorization, RailError> {
    let Some(ours) = &token.eip712 else {
        return Err(RailError::Refused(no_domain(&token.symbol)));
    };
    if let Some((name, version)) = &offer.eip712
        && (*name != ours.name || *version != ours.version)
    {
        return Err(RailError::Refused(format!(
            "the service names the token {name:?} version {version:?}, but {} is {:?} version {:?}",
            token.symbol, ours.name, ours.version
        )));
    }
    let now = now_secs();
    let nonce = B256::from(rand::random::<[u8; 32]>());
    let valid_after = now.min(chain_time).saturating_sub(VALID_AFTER_MARGIN);
    let valid_before = now.max(chain_time)
        + offer
            .max_timeout_seconds
            .clamp(*AUTHORIZATION_SECONDS.start(), *AUTHORIZATION_SECONDS.end());
    let message = TransferWithAuthorization {
        from: wallet.address(),
        to: offer.pay_to,
        value: offer.amount,
        validAfter: U256::from(valid_after),
        validBefore: U256::from(valid_before),
        nonce,
    };
    let domain = Eip712Domain::new(
        Some(ours.name.clone().into()),
        Some(ours.version.clone().into()),
        Some(U256::from(chain_id)),
        Some(token.address),
        None,
    );
    let sig = wallet
        .sign_hash_sync(&message.eip712_signing_hash(&domain))
        .map_err(|e| RailError::Refused(format!("signing the authorization: {e}")))?;
    let mut signature = [0u8; 65];
    signature[..32].copy_from_slice(&sig.r().to_be_bytes::<32>());
    signature[32..64].copy_from_slice(&sig.s().to_be_bytes::<32>());
    signature[64] = 27 + u8::from(sig.v());
    Ok(Authorization {
        from: wallet.address(),
        to: offer.pay_to,
        value: offer.amount,
        valid_after,
        valid_before,
        nonce,
        signature,
    })
}

impl Rail for EvmRails {
    fn name(&self) -> &'static str {
        "evm"
    }

    fn wallets(&self) -> Vec<String> {
        self.inner.wallets.keys().map(|a| a.to_string()).collect()
    }

    fn carries(&self, order: &PaymentOrder) -> bool {
        let wallet = order.wallet.as_deref();
        self.network(order.tool, &order.currency, wallet).is_some()
    }

    /// Transfers and x402 payments in a configured token, from a wallet it holds the key of: on the token's chain.
    fn network(&self, tool: PaymentTool, currency: &str, wallet: Option<&str>) -> Option<String> {
        let (token, chain) = self.token(currency).ok()?;
        let trades = || self.dexes().any(|d| d.chain_id == token.chain_id);
        let carried = match tool {
            PaymentTool::Transfer | PaymentTool::X402Payment => true,
            PaymentTool::Swap => trades(),
        };
        (carried && self.signer(wallet).is_ok()).then(|| chain.caip2.clone())
    }

    fn quote_swap<'a>(&'a self, ask: &'a SwapAsk) -> BoxFuture<'a, Result<SwapQuoted, RailError>> {
        Box::pin(async move {
            let (dex, amount) = (ask.dex.as_deref(), ask.amount_in);
            let q = EvmRails::quote_swap(self, dex, &ask.from, &ask.to, amount).await?;
            let terms = SwapTerms {
                min_out: q.min_out(ask.max_slippage_bps),
                dex: q.dex,
                to: q.to,
                expected_out: q.amount_out,
                price_impact_bps: q.price_impact_bps,
                max_slippage_bps: ask.max_slippage_bps,
            };
            Ok(SwapQuoted {
                router: q.router.to_string(),
                terms,
            })
        })
    }

    fn price<'a>(
        &'a self,
        url: &'a str,
        currency: &'a str,
    ) -> BoxFuture<'a, Result<Asked, RailError>> {
        Box::pin(self.asked_price(url, currency))
    }

    fn pay<'a>(
        &'a self,
        order: &'a PaymentOrder,
        earlier: Option<Signed>,
        journal: Journal<'a>,
    ) -> BoxFuture<'a, Result<Settlement, RailError>> {
        Box::pin(async move {
            match order.tool {
                PaymentTool::Transfer => self.transfer(order, earlier, journal).await,
                PaymentTool::X402Payment => self.x402(order, earlier, journal).await,
                PaymentTool::Swap => self.trade(order, earlier, journal).await,
            }
        })
    }

    fn balances<'a>(&'a self, wallet: &'a str) -> BoxFuture<'a, Result<Value, RailError>> {
        Box::pin(self.balance_list(wallet))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real chains' RPC endpoints and paid services are https: the clients must speak TLS. Nothing listens on
    /// this port, so the error must be a refused connection, not an unsupported scheme.
    #[tokio::test]
    async fn https_endpoints_are_reachable() {
        let err = reqwest::get("https://127.0.0.1:9/").await.unwrap_err();
        let why = format!("{err:?}");
        assert!(why.contains("ConnectionRefused"), "{why}");
    }

    #[test]
    fn amounts_convert_to_units_exactly() {
        let d = |s: &str| s.parse::<Decimal>().unwrap();
        assert_eq!(to_units(d("0.10"), 6), Some(U256::from(100_000)));
        assert_eq!(to_units(d("25"), 6), Some(U256::from(25_000_000)));
        assert_eq!(to_units(d("0.0000001"), 6), None, "finer than the token");
        assert_eq!(to_units(d("-1"), 6), None);
        assert_eq!(
            to_units(d("1.5"), 18),
            Some(U256::from(1_500_000_000_000_000_000u128))
        );
        assert_eq!(from_units(U256::from(100_000), 6), Some(d("0.1")));
        assert_eq!(from_units(U256::MAX, 6), None);
    }
    /// WETH has no EIP-712 domain: configured without one, it is a token to transfer, and x402 neither counts
    /// an offer of it as payable nor signs for it, and says why.
    #[test]
    fn a_token_without_a_domain_is_never_paid_over_x402() {
        let weth = TokenConfig {
            symbol: "WETH".into(),
            chain_id: 31337,
            address: Address::repeat_byte(0xee),
            decimals: 18,
            eip712: None,
        };
        let config = RailsConfig {
            chains: vec![ChainConfig {
                id: 31337,
                name: "local".into(),
                rpc_url: "http://127.0.0.1:9".into(),
                confirmations: 1,
            }],
            tokens: vec![weth.clone()],
            dexes: Vec::new(),
            wallets: vec![PrivateKeySigner::random()],
        };
        let rails = EvmRails::new(&config, Egress::new(Default::default())).unwrap();
        let offer = Offer {
            version: Version::V2,
            raw: Value::Null,
            resource: None,
            scheme: "exact".into(),
            network: "eip155:31337".into(),
            amount: U256::from(1),
            asset: weth.address,
            pay_to: Address::repeat_byte(2),
            max_timeout_seconds: 60,
            eip712: None,
            identifier: None,
        };
        let why = "WETH has no EIP-712 domain configured";
        let refused = rails.payable(std::slice::from_ref(&offer)).unwrap_err();
        assert!(refused.contains(why), "{refused}");
        let signed = sign_authorization(&config.wallets[0], &weth, 31337, &offer, 0);
        assert!(matches!(signed, Err(RailError::Refused(r)) if r.contains(why)));
    }
}
