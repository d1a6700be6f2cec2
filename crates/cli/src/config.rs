//! `paygent serve` settings: a TOML file, overridden by the environment.

use anyhow::{Context, bail};
use paygent_engine::EgressPolicy;
use paygent_engine::domain::PriceTable;
use paygent_engine::notify::email::Mailer;
use paygent_engine::notify::slack::SlackApp;
use paygent_planner::LlmPlanner;
use paygent_rails::{ChainConfig, DexConfig, RailsConfig, TokenConfig as RailToken};
use secrecy::ExposeSecret;
use secrecy::SecretString;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The file's keys. `network`, `[[chains]]`, `[[dexes]]` and the chain fields of `[[tokens]]` configure the rails;
/// wallet keys come only from the environment or a key file. A key it does not know is refused: a misspelt
/// setting never falls back to its default unnoticed.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    network: Option<String>,
    #[serde(default)]
    chains: Vec<ChainConfig>,
    #[serde(default)]
    dexes: Vec<DexConfig>,
    wallet_key_file: Option<PathBuf>,
    wallet_keystore: Option<PathBuf>,
    listen: Option<String>,
    database_url: Option<SecretString>,
    data_dir: Option<PathBuf>,
    admin_token: Option<SecretString>,
    event_retention_days: Option<u32>,
    rate_limit_per_second: Option<u32>,
    egress_allow: Option<String>,
    slack_api_url: Option<String>,
    slack_bot_token: Option<SecretString>,
    slack_signing_secret: Option<SecretString>,
    smtp_url: Option<SecretString>,
    mail_from: Option<String>,
    public_url: Option<String>,
    #[serde(default)]
    prices: BTreeMap<String, String>,
    #[serde(default)]
    tokens: Vec<TokenConfig>,
}

/// A currency; with `chain_id` and `address` it is also a token the rails transfer, and with its EIP-712 domain
/// one x402 pays with.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenConfig {
    symbol: String,
    decimals: u32,
    chain_id: Option<u64>,
    address: Option<String>,
    eip712_name: Option<String>,
    eip712_version: Option<String>,
}

impl TokenConfig {
    fn on_chain(&self) -> anyhow::Result<Option<RailToken>> {
        let Some(chain_id) = self.chain_id else {
            return Ok(None);
        };
        let missing =
            |k: &str| anyhow::anyhow!("token {} on chain {chain_id} needs {k}", self.symbol);
        Ok(Some(RailToken {
            symbol: self.symbol.clone(),
            chain_id,
            address: self
                .address
                .as_deref()
                .ok_or_else(|| missing("address"))?
                .parse()
                .with_context(|| format!("token {}'s address", self.symbol))?,
            decimals: self.decimals,
            eip712: self.eip712()?,
        }))
    }

    /// Both parts of the EIP-712 domain, or neither (a token without EIP-3009, which x402 cannot pay with).
    fn eip712(&self) -> anyhow::Result<Option<paygent_rails::Eip712Name>> {
        match (&self.eip712_name, &self.eip712_version) {
            (Some(name), Some(version)) => Ok(Some(paygent_rails::Eip712Name {
                name: name.clone(),
                version: version.clone(),
            })),
            (None, None) => Ok(None),
            _ => anyhow::bail!(
                "token {} needs both eip712_name and eip712_version, or neither (then x402 cannot pay with it)",
                self.symbol
            ),
        }
    }
}

/// Everything `serve` needs, resolved. Its `Debug` prints no secret: the admin token and the database URL (which
/// may carry a password) are redacted, wallet keys print as addresses, the planner's key not at all.
#[derive(Debug)]
pub struct ServeConfig {
    pub listen: String,
    pub database_url: SecretString,
    pub data_dir: PathBuf,
    pub admin_token: Option<SecretString>,
    pub prices: PriceTable,
    pub max_connections: u32,
    /// How long the event log is kept for replay.
    pub event_retention_days: u32,
    /// Requests per second each key may make (bursts of twice that); 0 turns the limit off.
    pub rate_limit_per_second: u32,
    /// Chains, tokens and wallets to pay with; inactive (decision-only) without all three.
    pub rails: RailsConfig,
    /// How long an execution lease lasts: how soon another instance takes over a dead one's executions.
    pub lease: std::time::Duration,
    /// An OpenAI-compatible chat-completions model to plan what the parser refuses (its key never prints).
    pub planner: Option<LlmPlanner>,
    /// What requests made on an agent's behalf may reach (`PAYGENT_EGRESS_ALLOW` lets private addresses through).
    pub egress: EgressPolicy,
    /// WebSocket and SSE streams one key may hold open on this instance.
    pub streams_per_key: usize,
    /// Whether `GET /metrics` answers loopback without a key (`PAYGENT_METRICS_KEYLESS_LOOPBACK`, default true).
    pub keyless_loopback_metrics: bool,
    /// The Slack app requests are posted as (its token and signing secret never print).
    pub slack: Option<SlackApp>,
    /// The mail server requests are mailed through (its URL, which may hold a password, never prints).
    pub mailer: Option<Mailer>,
}

const PRICE_PREFIX: &str = "PAYGENT_PRICE_";

/// The environment's settings: a variable set to nothing counts as unset.
struct Env<'a>(&'a BTreeMap<String, String>);

impl Env<'_> {
    fn get(&self, name: &str) -> Option<String> {
        self.0.get(name).filter(|v| !v.is_empty()).cloned()
    }

    /// `true` or `false` from the environment, else `default`.
    fn flag(&self, name: &str, default: bool) -> anyhow::Result<bool> {
        match self.get(name) {
            Some(v) => v
                .parse()
                .map_err(|_| anyhow::anyhow!("{name} must be true or false, not {v:?}")),
            None => Ok(default),
        }
    }

    /// A number from the environment, else from the file, else `default`.
    fn number<T: std::str::FromStr>(
        &self,
        name: &str,
        file: Option<T>,
        default: T,
    ) -> anyhow::Result<T> {
        match self.get(name) {
            Some(n) => n
                .parse()
                .map_err(|_| anyhow::anyhow!("{name} must be a whole number, not {n:?}")),
            None => Ok(file.unwrap_or(default)),
        }
    }
}

impl FileConfig {
    fn read(file: Option<&Path>) -> anyhow::Result<FileConfig> {
        let Some(path) = file else {
            return Ok(FileConfig::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing config {}", path.display()))
    }

    /// Token prices: tokens' own first, then `[prices]`, then `PAYGENT_PRICE_<SYMBOL>` over both.
    fn prices(&self, env: &Env) -> anyhow::Result<PriceTable> {
        let mut prices = PriceTable::default();
        for t in &self.tokens {
            let price = prices
                .get(&t.symbol)
                .map(|c| c.usd_price.to_string())
                .or_else(|| self.prices.get(&t.symbol).cloned());
            let Some(price) = price else {
                bail!("token {} has no price: add it under [prices]", t.symbol);
            };
            prices
                .set(&t.symbol, Some(t.decimals), &price)
                .with_context(|| format!("token {}", t.symbol))?;
        }
        let from_env = env.0.iter().filter_map(|(k, v)| {
            k.strip_prefix(PRICE_PREFIX)
                .map(|s| (s.to_owned(), v.clone()))
        });
        for (symbol, price) in self.prices.clone().into_iter().chain(from_env) {
            prices
                .set(&symbol, None, &price)
                .with_context(|| format!("price of {symbol}"))?;
        }
        Ok(prices)
    }

    /// The payment rails: a network preset, the file's chains, tokens and exchanges, and wallets from the
    /// environment or key files. Every token must have a price.
    fn rails(&self, env: &Env, prices: &PriceTable) -> anyhow::Result<RailsConfig> {
        let mut rails = match env.get("PAYGENT_NETWORK").or(self.network.clone()) {
            Some(preset) => RailsConfig::preset(&preset)?,
            None => RailsConfig::default(),
        };
        rails.chains.extend(self.chains.iter().cloned());
        rails.dexes.extend(self.dexes.iter().cloned());
        for t in &self.tokens {
            if let Some(token) = t.on_chain()? {
                rails.tokens.retain(|known| known.symbol != token.symbol);
                rails.tokens.push(token);
            }
        }
        self.add_wallets(env, &mut rails)?;
        rails.validate()?;
        if let Some(t) = rails
            .tokens
            .iter()
            .find(|t| prices.get(&t.symbol).is_none())
        {
            bail!("token {} has no price: add it under [prices]", t.symbol);
        }
        Ok(rails)
    }

    fn add_wallets(&self, env: &Env, rails: &mut RailsConfig) -> anyhow::Result<()> {
        if let Some(key) = env.get("PAYGENT_WALLET_KEY") {
            rails.add_wallet_key(&key).context("PAYGENT_WALLET_KEY")?;
        }
        let key_file = env.get("PAYGENT_WALLET_KEY_FILE").map(PathBuf::from);
        if let Some(path) = key_file.or(self.wallet_key_file.clone()) {
            let key = std::fs::read_to_string(&path)
                .with_context(|| format!("reading the wallet key file {}", path.display()))?;
            rails
                .add_wallet_key(&key)
                .with_context(|| format!("the wallet key file {}", path.display()))?;
        }
        let keystore = env.get("PAYGENT_WALLET_KEYSTORE").map(PathBuf::from);
        if let Some(path) = keystore.or(self.wallet_keystore.clone()) {
            let password = match env.get("PAYGENT_WALLET_KEYSTORE_PASSWORD_FILE") {
                Some(file) => std::fs::read_to_string(&file)
                    .with_context(|| format!("reading the keystore password file {file}"))?,
                None => env.get("PAYGENT_WALLET_KEYSTORE_PASSWORD").context(
                    "a wallet keystore needs PAYGENT_WALLET_KEYSTORE_PASSWORD or _PASSWORD_FILE",
                )?,
            };
            rails
                .add_wallet_keystore(&path, &password)
                .with_context(|| format!("the wallet keystore {}", path.display()))?;
        }
        Ok(())
    }
}

/// The LLM planner, if configured. The operator named its endpoint (an LLM on loopback is common): that host is
/// allowed, and the rest of the egress policy (redirects, caps) holds.
fn planner(env: &Env, egress: &EgressPolicy) -> anyhow::Result<Option<LlmPlanner>> {
    match (env.get("PAYGENT_LLM_URL"), env.get("PAYGENT_LLM_MODEL")) {
        (Some(url), Some(model)) => {
            let host = reqwest::Url::parse(&url)
                .ok()
                .and_then(|u| u.host_str().map(str::to_owned))
                .context("PAYGENT_LLM_URL must be an http(s) URL")?;
            let reach = paygent_engine::Egress::new(egress.clone().also_allowing(&host)?);
            let key = env.get("PAYGENT_LLM_API_KEY");
            Ok(Some(LlmPlanner::new(&url, &model, key, reach)))
        }
        (None, None) => Ok(None),
        _ => bail!("PAYGENT_LLM_URL and PAYGENT_LLM_MODEL go together"),
    }
}

impl ServeConfig {
    /// Reads `file` if given, then applies the environment `env` (name, value pairs) over it.
    pub fn load(file: Option<&Path>, env: &BTreeMap<String, String>) -> anyhow::Result<Self> {
        let parsed = FileConfig::read(file)?;
        let env = Env(env);
        let data_dir = env
            .get("PAYGENT_DATA_DIR")
            .map(PathBuf::from)
            .or(parsed.data_dir.clone())
            .unwrap_or_else(|| PathBuf::from("./paygent-data"));
        let database_url = env
            .get("DATABASE_URL")
            .map(SecretString::from)
            .or(parsed.database_url.clone())
            .unwrap_or_else(|| {
                let file = absolute(&data_dir).join("paygent.db");
                SecretString::from(format!("sqlite://{}?mode=rwc", file.display()))
            });
        let prices = parsed.prices(&env)?;
        let rails = parsed.rails(&env, &prices)?;
        let lease_seconds: u64 = env.number("PAYGENT_LEASE_SECONDS", None, 10)?;
        if !(1..=3600).contains(&lease_seconds) {
            bail!("PAYGENT_LEASE_SECONDS must be a whole number from 1 to 3600");
        }
        let allow = env
            .get("PAYGENT_EGRESS_ALLOW")
            .or(parsed.egress_allow.clone());
        let egress = EgressPolicy::allowing(allow.as_deref().unwrap_or_default())
            .context("PAYGENT_EGRESS_ALLOW")?;
        Ok(ServeConfig {
            slack: slack(&env, &parsed)?,
            mailer: mailer(&env, &parsed)?,
            planner: planner(&env, &egress)?,
            egress,
            streams_per_key: env.number("PAYGENT_STREAMS_PER_KEY", None, 64)?,
            keyless_loopback_metrics: env.flag("PAYGENT_METRICS_KEYLESS_LOOPBACK", true)?,
            lease: std::time::Duration::from_secs(lease_seconds),
            rails,
            listen: env
                .get("PAYGENT_LISTEN")
                .or(parsed.listen)
                .unwrap_or_else(|| "127.0.0.1:8080".into()),
            database_url,
            data_dir,
            admin_token: env
                .get("PAYGENT_ADMIN_TOKEN")
                .map(SecretString::from)
                .or(parsed.admin_token),
            prices,
            max_connections: env.number("PAYGENT_DB_MAX_CONNECTIONS", None, 16)?,
            event_retention_days: env.number(
                "PAYGENT_EVENT_RETENTION_DAYS",
                parsed.event_retention_days,
                7,
            )?,
            rate_limit_per_second: env.number(
                "PAYGENT_RATE_LIMIT",
                parsed.rate_limit_per_second,
                200,
            )?,
        })
    }
}

/// The Slack app, when both its bot token and its signing secret are given (one without the other is refused).
fn slack(env: &Env, file: &FileConfig) -> anyhow::Result<Option<SlackApp>> {
    let secret = |name: &str, from_file: &Option<SecretString>| {
        env.get(name).map(SecretString::from).or(from_file.clone())
    };
    let token = secret("PAYGENT_SLACK_BOT_TOKEN", &file.slack_bot_token);
    let signing = secret("PAYGENT_SLACK_SIGNING_SECRET", &file.slack_signing_secret);
    let (bot_token, signing_secret) = match (token, signing) {
        (None, None) => return Ok(None),
        (Some(t), Some(s)) => (t, s),
        _ => bail!("Slack needs both PAYGENT_SLACK_BOT_TOKEN and PAYGENT_SLACK_SIGNING_SECRET"),
    };
    let api_url = env
        .get("PAYGENT_SLACK_API_URL")
        .or(file.slack_api_url.clone())
        .unwrap_or_else(|| "https://slack.com/api".into());
    reqwest::Url::parse(&api_url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .with_context(|| {
            format!("PAYGENT_SLACK_API_URL must be an http(s) URL, not {api_url:?}")
        })?;
    Ok(Some(SlackApp {
        api_url,
        bot_token,
        signing_secret,
    }))
}

/// The mailer, when the SMTP server, the sender and the public URL links point to are all given.
fn mailer(env: &Env, file: &FileConfig) -> anyhow::Result<Option<Mailer>> {
    let smtp = env
        .get("PAYGENT_SMTP_URL")
        .map(SecretString::from)
        .or(file.smtp_url.clone());
    let from = env.get("PAYGENT_MAIL_FROM").or(file.mail_from.clone());
    let public = env.get("PAYGENT_PUBLIC_URL").or(file.public_url.clone());
    match (smtp, from, public) {
        (None, None, None) => Ok(None),
        (Some(smtp), Some(from), Some(public)) => Mailer::new(smtp.expose_secret(), &from, &public)
            .map(Some)
            .map_err(|e| anyhow::anyhow!("mail: {e}")),
        _ => {
            bail!("mail needs PAYGENT_SMTP_URL, PAYGENT_MAIL_FROM and PAYGENT_PUBLIC_URL together")
        }
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;
    use paygent_engine::domain::Decimal;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_use_an_embedded_sqlite_file() {
        let c = ServeConfig::load(None, &env(&[])).unwrap();
        assert_eq!(c.listen, "127.0.0.1:8080");
        let url = c.database_url.expose_secret();
        assert!(url.starts_with("sqlite:///"), "{url}");
        assert!(url.ends_with("paygent-data/paygent.db?mode=rwc"));
        assert_eq!(c.prices.get("CRO").unwrap().usd_price, Decimal::new(10, 2));
    }

    #[test]
    fn the_environment_overrides_the_file() {
        let dir = std::env::temp_dir().join(format!("paygent-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("paygent.toml");
        std::fs::write(
            &file,
            r#"
listen = "127.0.0.1:9000"
[prices]
USDC = "1"
CRO = "0.10"
WBTC = "60000"
[[chains]]
id = 338
name = "local"
rpc_url = "http://127.0.0.1:8545"
[[tokens]]
symbol = "WBTC"
chain_id = 338
address = "0x0000000000000000000000000000000000000001"
decimals = 8
eip712_name = "Wrapped BTC"
eip712_version = "1"
"#,
        )
        .unwrap();
        let c = ServeConfig::load(
            Some(&file),
            &env(&[
                ("PAYGENT_LISTEN", "127.0.0.1:9001"),
                ("PAYGENT_PRICE_CRO", "0.08"),
            ]),
        )
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:9001");
        assert_eq!(c.prices.get("CRO").unwrap().usd_price, Decimal::new(8, 2));
        assert_eq!(c.prices.get("WBTC").unwrap().decimals, 8);
        assert_eq!(c.rails.tokens[0].symbol, "WBTC");
        let domain = c.rails.tokens[0].eip712.as_ref().unwrap();
        assert_eq!((&*domain.name, &*domain.version), ("Wrapped BTC", "1"));
        assert!(!c.rails.is_active(), "no wallet key: decision-only");
        assert!(ServeConfig::load(Some(&file), &env(&[("PAYGENT_PRICE_CRO", "-1")])).is_err());
        let key = "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a";
        let with_wallet =
            ServeConfig::load(Some(&file), &env(&[("PAYGENT_WALLET_KEY", key)])).unwrap();
        assert!(with_wallet.rails.is_active());
        assert!(
            !format!("{with_wallet:?}").contains(&key[2..]),
            "keys never print"
        );
        let preset =
            ServeConfig::load(None, &env(&[("PAYGENT_NETWORK", "cronos-testnet")])).unwrap();
        assert_eq!(preset.rails.chains[0].id, 338);
        let cronos = ServeConfig::load(None, &env(&[("PAYGENT_NETWORK", "cronos")])).unwrap();
        let vvs = &cronos.rails.dexes[0];
        assert_eq!(
            (&*vvs.name, vvs.chain_id),
            ("vvs", 25),
            "VVS Finance on Cronos"
        );
        assert!(ServeConfig::load(None, &env(&[("PAYGENT_WALLET_KEY", "0x12")])).is_err());
        let planned = ServeConfig::load(
            None,
            &env(&[
                ("PAYGENT_LLM_URL", "http://127.0.0.1:1/v1"),
                ("PAYGENT_LLM_MODEL", "m"),
                ("PAYGENT_LLM_API_KEY", "sk-never-printed"),
            ]),
        )
        .unwrap();
        assert!(planned.planner.is_some());
        assert!(!format!("{planned:?}").contains("sk-never-printed"));
        assert!(ServeConfig::load(None, &env(&[("PAYGENT_LLM_URL", "http://x/v1")])).is_err());
        std::fs::write(&file, "listen = \"127.0.0.1:9000\"\nrate_limit = 5\n").unwrap();
        let typo = ServeConfig::load(Some(&file), &env(&[])).unwrap_err();
        assert!(
            format!("{typo:#}").contains("unknown field `rate_limit`"),
            "{typo:#}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A token without EIP-3009 (WETH) is configured without a domain; half a domain is a mistake, said so.
    #[test]
    fn weth_without_a_domain_and_an_exchange_are_configured_half_a_domain_is_not() {
        let dir = std::env::temp_dir().join(format!("paygent-weth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("paygent.toml");
        let config = |extra: &str| {
            format!(
                "[prices]\nWETH = \"3000\"\n[[chains]]\nid = 338\nname = \"local\"\nrpc_url = \"http://127.0.0.1:8545\"\n\
                 [[tokens]]\nsymbol = \"WETH\"\nchain_id = 338\naddress = \"0x00000000000000000000000000000000000000ee\"\n\
                 decimals = 18\n{extra}[[dexes]]\nname = \"vvs\"\nkind = \"uniswap_v2\"\nchain_id = 338\n\
                 router = \"0x00000000000000000000000000000000000000a1\"\n\
                 factory = \"0x00000000000000000000000000000000000000f1\"\n"
            )
        };
        std::fs::write(&file, config("")).unwrap();
        let c = ServeConfig::load(Some(&file), &env(&[])).unwrap();
        assert_eq!(c.rails.tokens[0].symbol, "WETH");
        assert_eq!(c.rails.tokens[0].eip712, None);
        assert_eq!(c.rails.dexes[0].name, "vvs");
        assert_eq!(c.rails.dexes[0].kind, paygent_rails::DexKind::UniswapV2);
        std::fs::write(&file, config("eip712_name = \"Wrapped Ether\"\n")).unwrap();
        let half = ServeConfig::load(Some(&file), &env(&[])).unwrap_err();
        assert!(
            format!("{half:#}").contains("needs both eip712_name and eip712_version, or neither"),
            "{half:#}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn secrets_never_print() {
        let c = ServeConfig::load(
            None,
            &env(&[
                (
                    "DATABASE_URL",
                    "postgres://paygent:hunter2@db.internal/paygent",
                ),
                ("PAYGENT_ADMIN_TOKEN", "pg_admin_never_printed"),
                ("PAYGENT_SLACK_BOT_TOKEN", "xoxb-never-printed"),
                (
                    "PAYGENT_SLACK_SIGNING_SECRET",
                    "slack-signing-never-printed",
                ),
            ]),
        )
        .unwrap();
        assert_eq!(c.slack.as_ref().unwrap().api_url, "https://slack.com/api");
        let printed = format!("{c:?}");
        for secret in [
            "hunter2",
            "pg_admin_never_printed",
            "xoxb-never-printed",
            "slack-signing-never-printed",
        ] {
            assert!(!printed.contains(secret), "{secret} in {printed}");
        }
        assert_eq!(
            c.database_url.expose_secret(),
            "postgres://paygent:hunter2@db.internal/paygent",
            "the value is kept, only its printing is redacted"
        );
        assert!(
            ServeConfig::load(None, &env(&[("PAYGENT_RATE_LIMIT", "lots")]))
                .unwrap_err()
                .to_string()
                .contains("PAYGENT_RATE_LIMIT must be a whole number")
        );
        let half = ServeConfig::load(None, &env(&[("PAYGENT_SLACK_BOT_TOKEN", "xoxb-1")]));
        assert!(
            half.is_err(),
            "a bot token without a signing secret is refused"
        );
        let lease = ServeConfig::load(None, &env(&[("PAYGENT_LEASE_SECONDS", "0")]));
        assert!(lease.is_err(), "a lease of 0 s is refused");
    }
}
