//! Which chains and tokens Paygent pays on, and with which wallets. Keys come from the environment or a key
//! file, never from the database, and are never printed.

use alloy::primitives::Address;
use alloy::signers::local::PrivateKeySigner;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;

/// An EVM chain Paygent can pay on.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ChainConfig {
    /// The EIP-155 chain id (25 for Cronos, 338 for its testnet).
    pub id: u64,
    /// The x402 v1 network name, e.g. `cronos-testnet`; v2 uses `eip155:<id>`.
    pub name: String,
    pub rpc_url: String,
    /// Blocks on top of the one holding a transfer before it counts as paid.
    #[serde(default = "one")]
    pub confirmations: u64,
}

impl std::fmt::Debug for ChainConfig {
    /// The RPC URL prints as its origin: node providers put API keys in the path, the query or the user part.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let origin = reqwest::Url::parse(&self.rpc_url)
            .map(|u| u.origin().ascii_serialization())
            .unwrap_or_else(|_| "<unparsable>".into());
        f.debug_struct("ChainConfig")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("rpc_url", &format!("{origin}/…"))
            .field("confirmations", &self.confirmations)
            .finish()
    }
}

fn one() -> u64 {
    1
}

/// An ERC-20 token: transferred (and traded) by any wallet, paid over x402 only with an EIP-712 domain.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// The currency symbol payments name, e.g. `USDC`. One symbol is one token on one chain.
    pub symbol: String,
    pub chain_id: u64,
    pub address: Address,
    pub decimals: u32,
    /// The domain EIP-3009 signatures commit to, as x402's `exact` scheme pays; none for tokens without
    /// EIP-3009 (WETH, WCRO), which x402 refuses.
    pub eip712: Option<Eip712Name>,
}

/// An EIP-712 domain's name and version, e.g. "USD Coin" version "2".
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Eip712Name {
    pub name: String,
    pub version: String,
}

/// An exchange on one chain that swaps are quoted and traded on.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DexConfig {
    /// How agents and policies name it, e.g. `vvs`.
    pub name: String,
    pub kind: DexKind,
    pub chain_id: u64,
    /// Trades and quotes (`getAmountsOut`).
    pub router: Address,
    /// Finds a pair's pool, whose reserves give the price before a trade.
    pub factory: Address,
}

/// The protocols Paygent trades on.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DexKind {
    /// Uniswap V2 and its copies (VVS Finance on Cronos): constant-product pools, a 0.3% fee.
    UniswapV2,
}

/// The rails' whole configuration.
#[derive(Clone, Default)]
pub struct RailsConfig {
    pub chains: Vec<ChainConfig>,
    pub tokens: Vec<TokenConfig>,
    pub dexes: Vec<DexConfig>,
    pub wallets: Vec<PrivateKeySigner>,
}

impl fmt::Debug for RailsConfig {
    /// Wallets show as their addresses: a key must never reach a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let wallets: Vec<Address> = self.wallets.iter().map(|w| w.address()).collect();
        f.debug_struct("RailsConfig")
            .field("chains", &self.chains)
            .field("tokens", &self.tokens)
            .field("dexes", &self.dexes)
            .field("wallets", &wallets)
            .finish()
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("token {symbol} is on chain {chain_id}, which is not configured")]
    UnknownChain { symbol: String, chain_id: u64 },
    #[error("token symbol {0} is configured twice: one symbol is one token")]
    DuplicateToken(String),
    #[error("chain {0} is configured twice")]
    DuplicateChain(u64),
    #[error("exchange {name} is on chain {chain_id}, which is not configured")]
    UnknownDexChain { name: String, chain_id: u64 },
    #[error("exchange {0} is configured twice")]
    DuplicateDex(String),
    #[error("chain {0}'s rpc_url is not a URL")]
    BadRpcUrl(u64),
    #[error("a wallet key must be 32 bytes of hex (0x optional)")]
    BadKey,
    /// Never says more: a wrong password and a damaged file look alike on purpose.
    #[error("the wallet keystore could not be opened: wrong password or not a keystore file")]
    BadKeystore,
    #[error("unknown preset {0:?}: use cronos or cronos-testnet")]
    UnknownPreset(String),
}

fn address(text: &str) -> Address {
    text.parse().expect("a valid address")
}

impl RailsConfig {
    /// The shipped networks: Cronos (chain 25) or its testnet (chain 338), with bridged USDC (USDC.e), whose
    /// EIP-712 domain differs between the two. Cronos also knows VVS Finance (its router and factory as verified
    /// on the Cronos explorer); the tokens traded there, such as WCRO, are configured with their prices.
    pub fn preset(name: &str) -> Result<Self, ConfigError> {
        let (chain, token) = match name {
            "cronos" => (
                ChainConfig {
                    id: 25,
                    name: "cronos".into(),
                    rpc_url: "https://evm.cronos.org".into(),
                    confirmations: 1,
                },
                TokenConfig {
                    symbol: "USDC".into(),
                    chain_id: 25,
                    address: address("0xf951eC28187D9E5Ca673Da8FE6757E6f0Be5F77C"),
                    decimals: 6,
                    eip712: Some(Eip712Name {
                        name: "Bridged USDC (Stargate)".into(),
                        version: "2".into(),
                    }),
                },
            ),
            "cronos-testnet" => (
                ChainConfig {
                    id: 338,
                    name: "cronos-testnet".into(),
                    rpc_url: "https://evm-t3.cronos.org".into(),
                    confirmations: 1,
                },
                TokenConfig {
                    symbol: "USDC".into(),
                    chain_id: 338,
                    address: address("0xc01efAaF7C5C61bEbFAeb358E1161b537b8bC0e0"),
                    decimals: 6,
                    eip712: Some(Eip712Name {
                        name: "Bridged USDC (Stargate)".into(),
                        version: "1".into(),
                    }),
                },
            ),
            other => return Err(ConfigError::UnknownPreset(other.into())),
        };
        let dexes = match chain.id {
            25 => vec![DexConfig {
                name: "vvs".into(),
                kind: DexKind::UniswapV2,
                chain_id: 25,
                router: address("0x145863Eb42Cf62847A6Ca784e6416C1682b1b2Ae"),
                factory: address("0x3B44B2a187a7b3824131F8db5a74194D0a42Fc15"),
            }],
            _ => Vec::new(),
        };
        Ok(RailsConfig {
            chains: vec![chain],
            tokens: vec![token],
            dexes,
            wallets: Vec::new(),
        })
    }

    /// Adds a wallet from its private key in hex.
    pub fn add_wallet_key(&mut self, hex_key: &str) -> Result<Address, ConfigError> {
        let signer: PrivateKeySigner = hex_key.trim().parse().map_err(|_| ConfigError::BadKey)?;
        let address = signer.address();
        if !self.wallets.iter().any(|w| w.address() == address) {
            self.wallets.push(signer);
        }
        Ok(address)
    }

    /// Adds a wallet from an encrypted JSON keystore (Web3 Secret Storage, as geth and foundry write it).
    pub fn add_wallet_keystore(
        &mut self,
        path: &std::path::Path,
        password: &str,
    ) -> Result<Address, ConfigError> {
        let signer =
            PrivateKeySigner::decrypt_keystore(path, password.trim_end_matches(['\n', '\r']))
                .map_err(|_| ConfigError::BadKeystore)?;
        let address = signer.address();
        if !self.wallets.iter().any(|w| w.address() == address) {
            self.wallets.push(signer);
        }
        Ok(address)
    }

    /// Checks that every token and exchange names a configured chain and that symbols, exchanges and chains are
    /// unique.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut chains = BTreeMap::new();
        for c in &self.chains {
            if chains.insert(c.id, c).is_some() {
                return Err(ConfigError::DuplicateChain(c.id));
            }
        }
        let mut symbols = BTreeMap::new();
        for t in &self.tokens {
            if !chains.contains_key(&t.chain_id) {
                return Err(ConfigError::UnknownChain {
                    symbol: t.symbol.clone(),
                    chain_id: t.chain_id,
                });
            }
            if symbols.insert(t.symbol.as_str(), t).is_some() {
                return Err(ConfigError::DuplicateToken(t.symbol.clone()));
            }
        }
        let mut dexes = BTreeMap::new();
        for d in &self.dexes {
            if !chains.contains_key(&d.chain_id) {
                let (name, chain_id) = (d.name.clone(), d.chain_id);
                return Err(ConfigError::UnknownDexChain { name, chain_id });
            }
            if dexes.insert(d.name.as_str(), d).is_some() {
                return Err(ConfigError::DuplicateDex(d.name.clone()));
            }
        }
        Ok(())
    }

    /// Whether there is anything to pay with: a chain, a token and a wallet.
    pub fn is_active(&self) -> bool {
        !self.chains.is_empty() && !self.tokens.is_empty() && !self.wallets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// anvil's first well-known test key; a test key only.
    const KEY: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

    #[test]
    fn presets_are_valid_and_wallets_never_print_their_keys() {
        for name in ["cronos", "cronos-testnet"] {
            let mut c = RailsConfig::preset(name).unwrap();
            c.validate().unwrap();
            assert!(!c.is_active(), "no wallet yet");
            let address = c.add_wallet_key(KEY).unwrap();
            assert!(c.is_active());
            let printed = format!("{c:?}");
            assert!(printed.contains(&format!("{address:?}")), "{printed}");
            assert!(!printed.contains(&KEY[2..]), "the key leaked: {printed}");
        }
        assert!(matches!(
            RailsConfig::preset("mainnet"),
            Err(ConfigError::UnknownPreset(_))
        ));
        let chain = ChainConfig {
            id: 25,
            name: "cronos".into(),
            rpc_url: "https://user:pw@rpc.example/v3/sk_provider_key?apikey=q".into(),
            confirmations: 1,
        };
        let printed = format!("{chain:?}");
        for secret in ["pw", "sk_provider_key", "apikey"] {
            assert!(!printed.contains(secret), "{secret} in {printed}");
        }
        assert!(printed.contains("https://rpc.example"), "{printed}");
    }

    #[test]
    fn wallets_open_from_encrypted_keystores() {
        let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/paygent-test-wallet.json");
        let mut c = RailsConfig::default();
        let address = c.add_wallet_keystore(&file, "correct horse\n").unwrap();
        assert_eq!(
            address,
            "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
                .parse::<Address>()
                .unwrap()
        );
        assert_eq!(
            c.add_wallet_keystore(&file, "wrong"),
            Err(ConfigError::BadKeystore)
        );
        assert_eq!(c.wallets.len(), 1);
    }

    #[test]
    fn bad_configs_are_refused() {
        let mut c = RailsConfig::preset("cronos").unwrap();
        assert_eq!(c.add_wallet_key("0x1234"), Err(ConfigError::BadKey));
        c.tokens.push(c.tokens[0].clone());
        assert_eq!(
            c.validate(),
            Err(ConfigError::DuplicateToken("USDC".into()))
        );
        c.tokens[1].symbol = "USDT".into();
        c.tokens[1].chain_id = 1;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::UnknownChain { chain_id: 1, .. })
        ));
    }
}
