//! `paygent-bench`: starts a release `paygent serve` on loopback and measures it. See BENCHMARKS.md.

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use paygent_bench::{Measurement, Scale, Target};
use std::process::{Child, Command, Stdio};

#[derive(Parser)]
#[command(about = "Measure a real paygent serve over HTTP and WebSocket")]
struct Args {
    #[arg(value_enum, default_value = "all")]
    scenario: Scenario,
    /// The server's database: a fresh SQLite file by default, or a postgres:// URL (an empty database).
    #[arg(long)]
    db: Option<String>,
    /// Print JSON instead of markdown.
    #[arg(long)]
    json: bool,
    /// A few requests per scenario, to check the harness itself.
    #[arg(long)]
    tiny: bool,
    /// The default policy the agents run under: `default` (its defaults), or `governed` (payee lists, velocity
    /// rules and a quorum, none of which the scenarios break).
    #[arg(long, value_enum, default_value = "default")]
    policy: PolicyKind,
    /// Requests per load scenario and concurrency level (2,000 by default).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    requests: Option<u32>,
    /// Also run the guard, approval and decision scenarios for this many seconds each (after their counted
    /// runs), reporting the throughput of every 5-second window; a sustained decisions run files 1.5 times what
    /// the faster counted run decided in that time first.
    #[arg(long, value_parser = clap::value_parser!(u64).range(5..=3600))]
    seconds: Option<u64>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PolicyKind {
    Default,
    Governed,
}

/// Sets the default policy the scenarios run under. The load scenarios keep up to 100,000 requests of one agent
/// waiting on people: above the default cap. A server from before policies has no cap (nor the endpoint), which
/// is how old and new are compared.
async fn set_policy(t: &Target, kind: PolicyKind) -> anyhow::Result<()> {
    let rules = match kind {
        PolicyKind::Default => serde_json::json!({"max_pending_approvals": 100_000}),
        PolicyKind::Governed => paygent_bench::governed_policy(),
    };
    match (t.set_default_policy(rules).await, kind) {
        (Err(e), PolicyKind::Default) => eprintln!("the default policy was left as it is: {e:#}"),
        (result, _) => result?,
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    All,
    Guard,
    Approvals,
    Decisions,
    RoundTrip,
    Kill,
    Resume,
    Timeout,
    Fanout,
    Ceiling,
    Footprint,
    /// An x402 payment on a local chain to the reference TypeScript service and the Python SDK one: through
    /// Paygent, by the reference client and by a direct client, in turn.
    X402,
    /// The emergency stop with 0, 10,000 and 100,000 requests pending: its answer, and the sweep after it.
    Stop,
    /// The `pay` tool over MCP (streamable HTTP) beside `POST /payments`, alternating in one run
    Mcp,
    /// The guard's auto path on 1, 2 and 3 instances of one PostgreSQL database (needs --db postgres://...), for
    /// one tenant and for 30, beside one instance on SQLite.
    Instances,
    /// The guard and approval creation with three webhooks subscribed beside none, and the delivery lag.
    Webhooks,
    /// A $1 swap on a local Uniswap V2 through Paygent beside a direct client's, in turn.
    Swap,
    /// The spend picture (`GET /spend`) with 1,000,000 payments stored (`--requests` sets how many), beside the
    /// hourly totals summed from the payments table.
    Spend,
}

const ADMIN: &str = "bench-admin-token-0123456789";

struct Server {
    child: Child,
    dir: std::path::PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The release `paygent` binary beside this one, built if it is missing.
fn server_binary() -> anyhow::Result<std::path::PathBuf> {
    if let Ok(bin) = std::env::var("PAYGENT_BIN") {
        return Ok(bin.into());
    }
    let bin = std::env::current_exe()?.with_file_name("paygent");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let built = Command::new(cargo)
            .args(["build", "--release", "-p", "paygent"])
            .status()?;
        if !built.success() || !bin.exists() {
            bail!(
                "could not build {}; run `cargo build --release -p paygent`",
                bin.display()
            );
        }
    }
    Ok(bin)
}

fn start_server(
    db: &str,
    dir: &std::path::Path,
    extra_env: &[(&str, String)],
) -> anyhow::Result<(Server, String)> {
    // A port picked here can be taken by another socket before the server binds it: then the server exits, and
    // the harness tries another.
    for _ in 0..3 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new(server_binary()?)
            .arg("serve")
            .envs(extra_env.iter().map(|(k, v)| (k, v)))
            .env("PAYGENT_LISTEN", format!("127.0.0.1:{port}"))
            .env("PAYGENT_DATA_DIR", dir)
            .env("DATABASE_URL", db)
            .env("PAYGENT_ADMIN_TOKEN", ADMIN)
            .env("PAYGENT_LOG", "warn")
            // The harness is one client hammering with few keys: measure the engine, not the limiter.
            .env("PAYGENT_RATE_LIMIT", "0")
            // The fan-out and footprint scenarios hold a thousand sockets of one key.
            .env("PAYGENT_STREAMS_PER_KEY", "5000")
            // The harness's peers listen on loopback.
            .env("PAYGENT_EGRESS_ALLOW", "127.0.0.0/8")
            .stdout(Stdio::null())
            .spawn()
            .context("starting paygent serve")?;
        let mut server = Server {
            child,
            dir: dir.to_owned(),
        };
        for _ in 0..600 {
            if server.child.try_wait()?.is_some() {
                break;
            }
            if answers_health(port) {
                return Ok((server, format!("http://127.0.0.1:{port}")));
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    bail!("paygent serve did not start")
}

/// True when an HTTP server answers on `port` (a bare TCP connect can even reach itself).
fn answers_health(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(2)));
    let mut head = [0u8; 12];
    stream
        .write_all(b"GET /healthz HTTP/1.0\r\n\r\n")
        .and_then(|_| stream.read_exact(&mut head))
        .is_ok_and(|_| head.starts_with(b"HTTP/1.") && head.ends_with(b"200"))
}

/// Runs the guard on 1, 2 and 3 instances sharing the PostgreSQL database `db` (the first is the harness's own
/// server), for one tenant and then for 30 tenants, then on one SQLite instance, in the same run.
async fn instances(
    db: &str,
    dir: &std::path::Path,
    scale: &Scale,
    first: &Target,
) -> anyhow::Result<Vec<Measurement>> {
    if !db.starts_with("postgres") {
        bail!("the instances scenario needs --db postgres://... (an empty database)");
    }
    let mut servers = Vec::new();
    let mut targets = vec![first.clone()];
    for i in 1..3 {
        let instance_dir = dir.join(format!("instance-{i}"));
        std::fs::create_dir_all(&instance_dir)?;
        let (server, base) = start_server(db, &instance_dir, &[])?;
        servers.push(server);
        targets.push(Target::new(&base, ADMIN));
    }
    let one = vec![paygent_bench::payer(first).await?];
    let many = paygent_bench::tenant_payers(first, 30).await?;
    let mut lines = Vec::new();
    for payers in [&one, &many] {
        for k in 1..=3 {
            lines.push(paygent_bench::guard_spread(&targets[..k], payers, scale, 16).await?);
        }
    }
    drop(servers);
    let sqlite_dir = dir.join("sqlite");
    std::fs::create_dir_all(&sqlite_dir)?;
    let sqlite_db = format!("sqlite://{}/paygent.db?mode=rwc", sqlite_dir.display());
    let (sqlite, base) = start_server(&sqlite_db, &sqlite_dir, &[])?;
    let on_sqlite = Target::new(&base, ADMIN);
    let payers = [paygent_bench::payer(&on_sqlite).await?];
    let mut line = paygent_bench::guard_spread(&[on_sqlite], &payers, scale, 16).await?;
    line.note = "one instance on SQLite, for comparison".into();
    lines.push(line);
    drop(sqlite);
    Ok(lines)
}

/// Whether `peers/<path>` is installed; if not, says the scenario is skipped and how to install `what`.
fn peers_installed(path: &str, scenario: &str, what: &str) -> bool {
    let there = paygent_testkit::chain::peers_dir().join(path).exists();
    if !there {
        eprintln!("{scenario} scenario skipped: run `npm ci --prefix peers` to install {what}");
    }
    there
}

/// Runs the x402 scenario against its own server, configured to pay on a fresh local chain whose reference x402
/// service and facilitator run beside it (`npm ci --prefix peers` installs them).
async fn x402(db: &str, dir: &std::path::Path, scale: &Scale) -> anyhow::Result<Vec<Measurement>> {
    use paygent_testkit::chain::{LocalChain, ReferenceClient, X402Peer};
    if !peers_installed("node_modules", "x402", "anvil and the x402 peers") {
        return Ok(vec![]);
    }
    let chain = LocalChain::start(338).await;
    let peer = X402Peer::start(&chain, "base-sepolia").await;
    let python = if paygent_testkit::chain::peers_dir().join(".venv").exists() {
        Some(peer.python(&chain).await)
    } else {
        eprintln!("x402 to the Python service skipped: .ci/run installs its SDK in peers/.venv");
        None
    };
    let (paid, config) =
        paygent_bench::PaidResource::on(&chain, peer.url("/v2/cheap"), "TypeScript service");
    let (server, target) = chain_server(db, dir, "x402", &config)?;
    let mut reference = ReferenceClient::start(&chain).await;
    let mut lines = paygent_bench::x402_payment(&target, scale, &paid, &mut reference).await?;
    if let Some(python) = &python {
        let paid = paygent_bench::PaidResource {
            url: python.url("/py/cheap"),
            service: "Python service".into(),
            ..paid
        };
        lines.extend(paygent_bench::x402_payment(&target, scale, &paid, &mut reference).await?);
    }
    drop(server);
    Ok(lines)
}

/// A server of its own paying on a local chain as `config` (a paygent.toml) says, from the funded test wallet:
/// its database a fresh SQLite file in `dir/name`, or the same PostgreSQL (new sessions, new keys).
fn chain_server(
    db: &str,
    dir: &std::path::Path,
    name: &str,
    config: &str,
) -> anyhow::Result<(Server, Target)> {
    let own = dir.join(name);
    std::fs::create_dir_all(&own)?;
    let config_file = own.join("paygent.toml");
    std::fs::write(&config_file, config)?;
    let own_db = if db.starts_with("postgres") {
        db.to_owned()
    } else {
        format!("sqlite://{}/paygent.db?mode=rwc", own.display())
    };
    let env = [
        ("PAYGENT_CONFIG", config_file.display().to_string()),
        (
            "PAYGENT_WALLET_KEY",
            paygent_testkit::chain::PAYER.to_owned(),
        ),
    ];
    let (server, base) = start_server(&own_db, &own, &env)?;
    Ok((server, Target::new(&base, ADMIN)))
}

/// Runs the swap scenario against its own server, trading on a fresh local chain with Uniswap V2 (from npm) and
/// a pool of 10,000 test USDC against 5 WETH.
async fn swaps(db: &str, dir: &std::path::Path, scale: &Scale) -> anyhow::Result<Vec<Measurement>> {
    use paygent_testkit::chain::{LocalChain, payer};
    if !peers_installed("node_modules/@uniswap", "swap", "anvil and Uniswap V2") {
        return Ok(vec![]);
    }
    let chain = LocalChain::start(338).await;
    use paygent_testkit::uniswap::U256;
    let weth = U256::from(5_000_000_000_000_000_000u128);
    let exchange = chain.uniswap(U256::from(10_000_000_000u64), weth).await;
    let config = paygent_bench::trading_config(&chain, &exchange);
    let (server, target) = chain_server(db, dir, "swap", &config)?;
    let wallet = payer().to_string();
    let lines = paygent_bench::swap(&target, scale, &wallet, (&chain, &exchange)).await?;
    drop(server);
    Ok(lines)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let rev = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!("{cores} cores, {cpu}, revision {rev}")
}

/// The stop scenario at each size: five trials each, three at 100,000 (two in the tiny mode).
async fn stops(t: &Target, db: &str, scale: &Scale) -> anyhow::Result<Vec<Measurement>> {
    let sizes = if scale.requests < 100 {
        [(0, 2), (10, 2), (100, 2)]
    } else {
        [(0, 5), (10_000, 5), (100_000, 3)]
    };
    let mut lines = Vec::new();
    for (n, trials) in sizes {
        lines.extend(paygent_bench::stop_with_pending(t, db, n, trials).await?);
    }
    Ok(lines)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut scale = if args.tiny {
        Scale::tiny()
    } else {
        Scale::full()
    };
    if let Some(n) = args.requests {
        scale.requests = n as usize;
    }
    let dir = std::env::temp_dir().join(format!("paygent-bench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let db = args
        .db
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}/paygent.db?mode=rwc", dir.display()));
    // The webhooks scenario's receiver listens on loopback.
    let egress = [("PAYGENT_EGRESS_ALLOW", "127.0.0.1/32".to_owned())];
    let (server, base) = start_server(&db, &dir, &egress)?;
    let pid = server.child.id();
    let t = Target::new(&base, ADMIN);
    set_policy(&t, args.policy).await?;
    use paygent_bench as b;
    let (lines, footprint) = match args.scenario {
        Scenario::All => b::all(&t, &db, &scale, pid).await?,
        Scenario::Guard => (
            counted_and_sustained(&t, &scale, &args, b::guard_auto).await?,
            vec![],
        ),
        Scenario::Approvals => (
            counted_and_sustained(&t, &scale, &args, b::approval_creation).await?,
            vec![],
        ),
        Scenario::Decisions => (
            counted_and_sustained(&t, &scale, &args, b::decisions).await?,
            vec![],
        ),
        Scenario::RoundTrip => (vec![b::round_trip(&t, &scale).await?], vec![]),
        Scenario::Kill => (vec![b::kill_latency(&t, &scale).await?], vec![]),
        Scenario::Resume => (vec![b::resume_latency(&t, &scale).await?], vec![]),
        Scenario::Timeout => (vec![b::timeout_precision(&t, &scale).await?], vec![]),
        Scenario::Fanout => (
            vec![
                b::fanout(&t, &scale, 1).await?,
                b::fanout(&t, &scale, scale.sockets).await?,
            ],
            vec![],
        ),
        Scenario::Ceiling => (vec![b::ceiling(&db, &scale, 16).await?], vec![]),
        Scenario::Footprint => (vec![], b::footprint(&t, &scale, pid).await?),
        Scenario::X402 | Scenario::Swap => (vec![], vec![]),
        Scenario::Stop => (stops(&t, &db, &scale).await?, vec![]),
        Scenario::Instances => (instances(&db, &dir, &scale, &t).await?, vec![]),
        Scenario::Webhooks => (b::webhooks(&t, &scale).await?, vec![]),
        Scenario::Spend => {
            let stored = args.requests.map_or(1_000_000, |n| n as usize);
            (b::spend_picture(&t, &db, stored, 200).await?, vec![])
        }
        Scenario::Mcp => {
            let mut lines = b::mcp_pay(&t, &scale, 1).await?;
            lines.extend(b::mcp_pay(&t, &scale, 16).await?);
            (lines, vec![])
        }
    };
    let mut lines = lines;
    if args.scenario == Scenario::All {
        lines.extend(b::webhooks(&t, &scale).await?);
    }
    if matches!(args.scenario, Scenario::All | Scenario::X402) {
        lines.extend(x402(&db, &dir, &scale).await?);
    }
    if matches!(args.scenario, Scenario::All | Scenario::Swap) {
        lines.extend(swaps(&db, &dir, &scale).await?);
    }
    let backend = if db.starts_with("postgres") {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    if args.json {
        let report = serde_json::json!({"machine": machine(), "database": backend, "measurements": lines,
            "footprint_mb": footprint});
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_markdown(&machine(), backend, &lines, &footprint);
    }
    drop(server);
    Ok(())
}

/// A load scenario at c=1 and c=16 for `--requests`, then, with `--seconds`, for that long. A sustained
/// decisions run files first 1.5 times what the faster counted run decided in that time (at least `--requests`).
async fn counted_and_sustained<F>(
    t: &Target,
    scale: &Scale,
    args: &Args,
    scenario: F,
) -> anyhow::Result<Vec<Measurement>>
where
    F: AsyncFn(&Target, &Scale, usize) -> anyhow::Result<Measurement>,
{
    let mut lines = Vec::new();
    for c in [1, 16] {
        lines.push(scenario(t, scale, c).await?);
    }
    if let Some(seconds) = args.seconds {
        // A short counted run at c=1 is slower than a sustained one: the faster rate bounds both.
        let fastest = lines[0].per_second.max(lines[1].per_second);
        let enough = (fastest * seconds as f64 * 1.5).ceil() as usize;
        let sustained = Scale {
            seconds: Some(seconds),
            filed: Some(enough.max(scale.requests)),
            ..scale.clone()
        };
        for c in [1, 16] {
            lines.push(scenario(t, &sustained, c).await?);
        }
    }
    Ok(lines)
}

fn print_markdown(
    machine: &str,
    backend: &str,
    lines: &[Measurement],
    footprint: &[(String, f64)],
) {
    println!("Paygent benchmark on {backend}; {machine}\n");
    if !lines.is_empty() {
        println!("| scenario | c | n | p50 ms | p99 ms | max ms | per s | note |");
        println!("|---|---:|---:|---:|---:|---:|---:|---|");
        for m in lines {
            println!(
                "| {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.0} | {} |",
                m.scenario,
                m.concurrency,
                m.count,
                m.p50_ms,
                m.p99_ms,
                m.max_ms,
                m.per_second,
                m.note
            );
        }
        let rate = |name: &str| {
            lines
                .iter()
                .find(|m| m.scenario == name && m.concurrency == 16)
                .map(|m| m.per_second)
        };
        if let (Some(guard), Some(ceiling)) = (rate("guard, auto path"), rate("database ceiling")) {
            println!(
                "\nGuard throughput / database ceiling at c=16: {:.2}",
                guard / ceiling
            );
        }
    }
    if !footprint.is_empty() {
        println!("\n| server RSS | MB |\n|---|---:|");
        for (what, mb) in footprint {
            println!("| {what} | {mb:.1} |");
        }
    }
}
