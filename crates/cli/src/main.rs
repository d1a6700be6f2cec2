//! `paygent`: the server and a command line for the people who decide.

mod client;
mod config;
mod mcp;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use client::Client;
use config::ServeConfig;
use paygent_engine::domain::Decimal;
use paygent_engine::domain::audit::ChainVerifier;
use paygent_engine::domain::execution::ExecutionStatus;
use paygent_engine::{
    ApprovalView, AuditPage, ExecutionView, KillSwitchView, Paygent, PolicyView, SessionView,
    Store, StoreOptions, SystemClock,
};
use reqwest::Method;
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use uuid::Uuid;

#[derive(Parser)]
#[command(
    name = "paygent",
    version,
    about = "The control plane between AI agents and money"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct Remote {
    /// The Paygent server to talk to.
    #[arg(
        long,
        env = "PAYGENT_SERVER",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    server: String,
    /// An API key (approver or admin for decisions, admin for the audit).
    #[arg(long, env = "PAYGENT_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        /// A TOML config file; the environment overrides it.
        #[arg(long, env = "PAYGENT_CONFIG")]
        config: Option<PathBuf>,
    },
    /// List and decide approval requests.
    Approvals {
        #[command(flatten)]
        remote: Remote,
        #[command(subcommand)]
        action: ApprovalAction,
    },
    /// Run a plain-language command as an execution of a session (agent key), and follow it to its end.
    Run {
        #[command(flatten)]
        remote: Remote,
        /// E.g. "Transfer 5 USDC to 0x... then fetch https://...".
        command: String,
        #[arg(long)]
        session: Uuid,
        /// Return at once instead of following the execution.
        #[arg(long)]
        detach: bool,
    },
    /// Stop money from moving: one execution, one session, or everything (the emergency stop).
    Kill {
        #[command(flatten)]
        remote: Remote,
        #[command(subcommand)]
        scope: KillScope,
    },
    /// Look at a session, and unfreeze one the circuit breaker froze (approvers and admins).
    Sessions {
        #[command(flatten)]
        remote: Remote,
        #[command(subcommand)]
        action: SessionAction,
    },
    /// Read and write the policies agents are bound to (admins write, approvers read).
    Policies {
        #[command(flatten)]
        remote: Remote,
        #[command(subcommand)]
        action: PolicyAction,
    },
    /// Check the audit trail.
    Audit {
        #[command(flatten)]
        remote: Remote,
        #[command(subcommand)]
        action: AuditAction,
    },
    /// Speak MCP on stdin and stdout for a local client (Claude Desktop or Code, an agent framework), relayed to
    /// the server's `/mcp`: every tool call is made as the agent key given here.
    Mcp {
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Subcommand)]
enum ApprovalAction {
    /// Pending requests, oldest first.
    List {
        #[arg(long)]
        session_id: Option<Uuid>,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    Approve {
        id: Uuid,
        #[arg(long)]
        comment: Option<String>,
        #[command(flatten)]
        seen: Seen,
        /// And let the session go on paying this payee up to this many USD in total without asking again...
        #[arg(long, requires = "stand_minutes")]
        stand_usd: Option<String>,
        /// ...for this many minutes.
        #[arg(long, requires = "stand_usd")]
        stand_minutes: Option<u32>,
    },
    Reject {
        id: Uuid,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        seen: Seen,
    },
    /// Edit and approve: `--set amount=12.00 --set recipient=0x...`.
    Edit {
        id: Uuid,
        #[arg(long = "set", value_name = "FIELD=VALUE", required = true)]
        set: Vec<String>,
        #[arg(long)]
        comment: Option<String>,
        #[command(flatten)]
        seen: Seen,
    },
}

#[derive(clap::Args)]
struct Seen {
    /// The digest `approvals list` showed for the request: the decision lands only on that action.
    #[arg(long)]
    digest: Option<String>,
}

#[derive(Subcommand)]
enum PolicyAction {
    /// The tenant's policies, the default first.
    List,
    /// One policy (`default` or an id), as JSON.
    Show { id: String },
    /// A new policy: `--rules '{"approval_threshold_usd": "25"}'` or `--rules @rules.json`.
    Create {
        name: String,
        #[arg(long, default_value = "{}")]
        rules: String,
    },
    /// Replace a policy's rules (`default` or an id): a new version.
    Set {
        id: String,
        #[arg(long)]
        rules: String,
    },
}

#[derive(Subcommand)]
enum SessionAction {
    /// Its state (and why it is frozen), and today's spend.
    Show { id: Uuid },
    /// Let a frozen session pay again; its velocity rules count from now.
    Unfreeze {
        id: Uuid,
        #[arg(long)]
        comment: Option<String>,
    },
}

#[derive(Subcommand)]
enum KillScope {
    /// Kill a session: its pending approvals are cancelled and it takes no new payments.
    Session {
        id: Uuid,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Cancel one execution: its in-flight step is aborted.
    Execution { id: Uuid },
    /// Engage the emergency stop for the whole tenant (admins).
    All {
        #[arg(long)]
        reason: Option<String>,
    },
    /// Release the emergency stop (admins).
    Release,
}

#[derive(Subcommand)]
enum AuditAction {
    /// Walk the whole hash chain; exits non-zero and names the first bad entry if it is broken.
    Verify,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => serve(config.as_deref()).await,
        Command::Approvals { remote, action } => approvals(remote, action).await,
        Command::Kill { remote, scope } => kill(remote, scope).await,
        Command::Sessions { remote, action } => sessions(remote, action).await,
        Command::Policies { remote, action } => policies(remote, action).await,
        Command::Run {
            remote,
            command,
            session,
            detach,
        } => run(remote, command, session, detach).await,
        Command::Audit {
            remote,
            action: AuditAction::Verify,
        } => verify(remote).await,
        Command::Mcp { remote } => match remote.token {
            Some(token) => mcp::relay(&remote.server, &token)
                .await
                .map(|()| ExitCode::SUCCESS),
            None => Err(anyhow::anyhow!("no key: pass --token or set PAYGENT_TOKEN")),
        },
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config_file: Option<&Path>) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PAYGENT_LOG")
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .init();
    let env = std::env::vars().collect();
    let config = ServeConfig::load(config_file, &env)?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    let options = StoreOptions {
        max_connections: config.max_connections,
        ..StoreOptions::default()
    };
    let store = Store::connect(config.database_url.expose_secret(), &options)
        .await
        .context("opening the database")?;
    let mut paygent = Paygent::new(store, config.prices.clone(), Arc::new(SystemClock))
        .with_lease(config.lease)
        .with_egress(paygent_engine::Egress::new(config.egress.clone()));
    if config.rails.is_active() {
        let rails = paygent_rails::EvmRails::new(&config.rails, paygent.egress().clone())?;
        paygent = paygent_rails::install(paygent, rails);
        tracing::info!(rails = ?config.rails, "payments are carried out on chain");
    } else if !config.rails.chains.is_empty() {
        tracing::warn!("chains are configured but no wallet key: payments stay decision-only");
    }
    if let Some(planner) = config.planner.clone() {
        tracing::info!(?planner, "commands the parser refuses go to the planner");
        paygent = paygent.with_planner(planner);
    }
    if let Some(app) = config.slack.clone() {
        tracing::info!(
            ?app,
            "requests whose policy names a Slack channel are posted there"
        );
        paygent = paygent.with_slack(app);
    }
    if let Some(mailer) = config.mailer.clone() {
        tracing::info!(?mailer, "requests whose policy names addresses are mailed");
        paygent = paygent.with_mailer(mailer);
    }
    if let Some(key) = paygent
        .bootstrap(config.admin_token.as_ref().map(|t| t.expose_secret()))
        .await?
    {
        let path = config.data_dir.join("admin-token");
        save_secret(&path, &key.token)?;
        println!(
            "Created the first admin key (shown once; also saved to {}):\n{}",
            path.display(),
            key.token
        );
    }
    let reconciled = paygent.reconcile_payments().await?;
    if reconciled > 0 {
        tracing::info!(reconciled, "reconciled payments signed before a stop");
    }
    let resumed = paygent.resume_executions().await?;
    if resumed > 0 {
        tracing::info!(resumed, "resumed executions left running or paused");
    }
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    tracing::info!(listen = %listener.local_addr()?, backend = ?paygent.store().backend(), "paygent serving");
    // Overdue requests expire within a quarter second of their deadline.
    let retention = chrono::Duration::days(config.event_retention_days.into());
    let mut background = vec![
        paygent.spawn_sweeper(std::time::Duration::from_millis(250), retention),
        paygent.spawn_webhooks(std::time::Duration::from_millis(200)),
    ];
    background.extend(paygent.spawn_notifiers(std::time::Duration::from_millis(500)));
    let app = paygent_server::app_with(paygent, server_options(&config));
    paygent_server::serve(listener, app, shutdown_signal()).await?;
    background.iter().for_each(tokio::task::JoinHandle::abort);
    Ok(ExitCode::SUCCESS)
}

/// The HTTP side's settings from the configuration.
fn server_options(config: &ServeConfig) -> paygent_server::Options {
    paygent_server::Options {
        rate_limit: paygent_server::RateLimit {
            per_second: config.rate_limit_per_second,
            burst: config.rate_limit_per_second.saturating_mul(2),
        },
        live: paygent_server::LiveOptions {
            streams_per_key: config.streams_per_key,
            ..Default::default()
        },
        keyless_loopback_metrics: config.keyless_loopback_metrics,
        ..Default::default()
    }
}

/// Writes a secret readable by its owner only.
fn save_secret(path: &Path, secret: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("saving {}", path.display()))?;
    writeln!(f, "{secret}")?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler installs");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}

async fn approvals(remote: Remote, action: ApprovalAction) -> anyhow::Result<ExitCode> {
    let client = Client::new(&remote.server, remote.token)?;
    let (path, body) = match action {
        ApprovalAction::List { session_id, json } => {
            let query = session_id
                .map(|s| format!("?session_id={s}"))
                .unwrap_or_default();
            let list: Vec<ApprovalView> = client
                .call(Method::GET, &format!("/approvals/pending{query}"), None)
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print_pending(&list);
            }
            return Ok(ExitCode::SUCCESS);
        }
        ApprovalAction::Approve {
            id,
            comment,
            seen,
            stand_usd,
            stand_minutes,
        } => {
            let standing = stand_usd.map(|usd| json!({"max_usd": usd, "minutes": stand_minutes}));
            let body = json!({"comment": comment, "digest": seen.digest, "standing": standing});
            (format!("/approvals/{id}/approve"), body)
        }
        ApprovalAction::Reject { id, reason, seen } => (
            format!("/approvals/{id}/reject"),
            json!({"reason": reason, "digest": seen.digest}),
        ),
        ApprovalAction::Edit {
            id,
            set,
            comment,
            seen,
        } => {
            let mut edited = serde_json::Map::new();
            for pair in set {
                let Some((k, v)) = pair.split_once('=') else {
                    bail!("--set takes FIELD=VALUE, got {pair:?}");
                };
                edited.insert(k.to_owned(), Value::String(v.to_owned()));
            }
            (
                format!("/approvals/{id}/edit"),
                json!({"edited_args": edited, "comment": comment, "digest": seen.digest}),
            )
        }
    };
    let decided: ApprovalView = client.call(Method::POST, &path, Some(body)).await?;
    let (approvals, required) = (decided.approvals.len(), decided.approvals_required);
    let quorum = (required > 1).then(|| format!(" (approvals {approvals} of {required})"));
    let digest = decided
        .decision
        .and_then(|d| d.digest)
        .unwrap_or(decided.digest);
    println!(
        "{} {} {digest}{}",
        decided.id,
        decided.status.as_str(),
        quorum.unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}

async fn run(
    remote: Remote,
    command: String,
    session: Uuid,
    detach: bool,
) -> anyhow::Result<ExitCode> {
    let client = Client::new(&remote.server, remote.token)?;
    let body = json!({"session_id": session, "command": command});
    let mut execution: ExecutionView = client
        .call(Method::POST, "/agent/execute", Some(body))
        .await?;
    let id = execution.id;
    println!("execution {id} started");
    let mut last = None;
    loop {
        if last != Some(execution.status) {
            println!("{}", execution.status.as_str());
            last = Some(execution.status);
        }
        if detach || execution.status.is_terminal() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        execution = client
            .call(Method::GET, &format!("/executions/{id}"), None)
            .await?;
    }
    for step in &execution.steps {
        let error = step.error.as_ref().map(|e| format!(" ({e})"));
        println!(
            "  step {} {}: {}{}",
            step.idx,
            step.tool,
            step.status.as_str(),
            error.unwrap_or_default()
        );
    }
    Ok(match execution.status {
        ExecutionStatus::Completed
        | ExecutionStatus::Running
        | ExecutionStatus::AwaitingApproval
        | ExecutionStatus::Frozen => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    })
}

async fn kill(remote: Remote, scope: KillScope) -> anyhow::Result<ExitCode> {
    let client = Client::new(&remote.server, remote.token)?;
    match scope {
        KillScope::Session { id, reason } => {
            let path = format!("/sessions/{id}/kill");
            let session: SessionView = client
                .call(Method::POST, &path, Some(json!({"reason": reason})))
                .await?;
            println!("session {} is {}", session.id, session.state.as_str());
        }
        KillScope::Execution { id } => {
            let path = format!("/executions/{id}/cancel");
            let execution: ExecutionView =
                client.call(Method::POST, &path, Some(json!({}))).await?;
            println!(
                "execution {} is {}",
                execution.id,
                execution.status.as_str()
            );
        }
        KillScope::All { reason } => {
            let body = json!({"engaged": true, "reason": reason});
            let stop: KillSwitchView = client
                .call(Method::POST, "/kill-switch", Some(body))
                .await?;
            println!("emergency stop engaged: {}", stop.engaged);
        }
        KillScope::Release => {
            let body = json!({"engaged": false});
            let stop: KillSwitchView = client
                .call(Method::POST, "/kill-switch", Some(body))
                .await?;
            println!("emergency stop engaged: {}", stop.engaged);
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn sessions(remote: Remote, action: SessionAction) -> anyhow::Result<ExitCode> {
    let client = Client::new(&remote.server, remote.token)?;
    let session: SessionView = match action {
        SessionAction::Show { id } => {
            let path = format!("/sessions/{id}");
            client.call(Method::GET, &path, None).await?
        }
        SessionAction::Unfreeze { id, comment } => {
            let path = format!("/sessions/{id}/unfreeze");
            let body = json!({"comment": comment});
            client.call(Method::POST, &path, Some(body)).await?
        }
    };
    println!("session {} is {}", session.id, session.state.as_str());
    if let Some(freeze) = &session.frozen {
        println!(
            "  frozen at {} by {}: {} (payment {})",
            freeze.at, freeze.rule, freeze.detail, freeze.payment_id
        );
    }
    let usd = &session.budget.usd;
    println!(
        "  today: spent {} USD, reserved {} USD",
        usd.spent, usd.reserved
    );
    Ok(ExitCode::SUCCESS)
}

/// Rules given inline as JSON, or as `@path` to a JSON file.
fn read_rules(rules: &str) -> anyhow::Result<Value> {
    let text = match rules.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?,
        None => rules.to_owned(),
    };
    serde_json::from_str(&text).context("--rules must be a JSON object")
}

async fn policies(remote: Remote, action: PolicyAction) -> anyhow::Result<ExitCode> {
    let client = Client::new(&remote.server, remote.token)?;
    let policy: PolicyView = match action {
        PolicyAction::List => {
            let list: Vec<PolicyView> = client.call(Method::GET, "/policies", None).await?;
            for p in list {
                let dollars = |d: Option<Decimal>| d.map_or("-".to_owned(), |d| d.to_string());
                println!(
                    "{}  {:<20} v{:<3} threshold ${:<8} max per payment ${}",
                    p.id,
                    p.name,
                    p.version,
                    dollars(Some(p.rules.approval_threshold_usd)),
                    dollars(p.rules.max_per_payment_usd),
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        PolicyAction::Show { id } => {
            client
                .call(Method::GET, &format!("/policies/{id}"), None)
                .await?
        }
        PolicyAction::Create { name, rules } => {
            let mut body = read_rules(&rules)?;
            body["name"] = Value::String(name);
            client.call(Method::POST, "/policies", Some(body)).await?
        }
        PolicyAction::Set { id, rules } => {
            let body = read_rules(&rules)?;
            let path = format!("/policies/{id}");
            client.call(Method::PUT, &path, Some(body)).await?
        }
    };
    println!("{}", serde_json::to_string_pretty(&policy)?);
    Ok(ExitCode::SUCCESS)
}

fn print_pending(list: &[ApprovalView]) {
    if list.is_empty() {
        println!("no pending approval requests");
        return;
    }
    for a in list {
        let arg = |k: &str| {
            a.effective_args()
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_owned()
        };
        println!(
            "{}  ${:>12}  {:<12} {} {} -> {}  (expires {})  {}  {}{}",
            a.id,
            a.usd_value,
            a.tool,
            arg("amount"),
            arg("currency"),
            arg("recipient"),
            a.deadline
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            a.reason,
            a.digest,
            a.network
                .as_deref()
                .map(|n| format!(" on {n}"))
                .unwrap_or_default(),
        );
        if let Some(c) = &a.context {
            println!("    {}", context_line(c));
        }
        if a.approvals_required > 1 {
            let by: Vec<String> = a.approvals.iter().map(|v| v.by.to_string()).collect();
            println!(
                "    approvals {} of {}{}{}",
                a.approvals.len(),
                a.approvals_required,
                if by.is_empty() {
                    String::new()
                } else {
                    format!(" by {}", by.join(", "))
                },
                if a.groups.is_empty() {
                    String::new()
                } else {
                    format!(", from {}", a.groups.join(", "))
                },
            );
        }
    }
}

/// Who asked where, under which policy, in the agent's words, and what the payee was paid before.
fn context_line(c: &paygent_engine::context::DecisionContext) -> String {
    let name =
        |n: &paygent_engine::context::Named| n.name.clone().unwrap_or_else(|| n.id.to_string());
    let mut line = format!(
        "{} in session {} · policy {} v{}",
        name(&c.agent),
        name(&c.session),
        c.policy.name,
        c.policy.version
    );
    match &c.payee {
        Some(p) if p.first_payment => line.push_str(" · first payment to this payee"),
        Some(p) => line.push_str(&format!(
            " · paid ${} to this payee in 30 days ({} payments)",
            p.paid_30d_usd, p.payments_30d
        )),
        None => {}
    }
    if let Some(said) = &c.description {
        line.push_str(&format!(" · \"{said}\""));
    }
    line
}

/// Pages through the audit trail from the first entry, verifying each link, up to the head seen at the start.
async fn verify(remote: Remote) -> anyhow::Result<ExitCode> {
    let client = Client::new(&remote.server, remote.token)?;
    let mut verifier = ChainVerifier::default();
    let mut after = 0i64;
    let mut head: Option<(i64, String)> = None;
    loop {
        let page: AuditPage = client
            .call(
                Method::GET,
                &format!("/audit?after={after}&limit=1000"),
                None,
            )
            .await?;
        let head_seq = head
            .get_or_insert_with(|| (page.head_seq, page.head_hash.clone()))
            .0;
        let entries = page.entries.into_iter().map(|line| line.entry);
        let mut progressed = false;
        for e in entries.filter(|e| e.seq <= head_seq) {
            if let Err(broken) = verifier.push(&e) {
                println!("audit chain BROKEN at entry {}: {broken}", broken.seq());
                return Ok(ExitCode::FAILURE);
            }
            after = e.seq;
            progressed = true;
        }
        if !progressed || after >= head_seq {
            break;
        }
    }
    let (head_seq, head_hash) = head.unwrap_or_default();
    match verifier.finish(head_seq, &head_hash) {
        Ok(n) => {
            println!("audit chain OK: {n} entries, head {head_hash}");
            Ok(ExitCode::SUCCESS)
        }
        Err(broken) => {
            println!("audit chain BROKEN at entry {}: {broken}", broken.seq());
            Ok(ExitCode::FAILURE)
        }
    }
}
