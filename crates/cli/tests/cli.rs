//! The `paygent` binary itself: `serve` on its embedded default, and the commands people run against a server.

mod common;

use common::{Lines, agent_and_session, serving_port, spawn_serve, wait_ready};
use paygent_testkit::{ADMIN_TOKEN, Backend, TestServer, eventually, on_both_databases};
use serde_json::json;
use std::process::{Command, Output, Stdio};

on_both_databases!(
    sessions_commands_show_and_unfreeze,
    audit_verify_names_the_first_bad_entry,
    approvals_commands_decide,
    kill_commands_stop_money,
    policies_commands_write_and_read,
    run_follows_an_execution_to_its_end,
    a_paused_execution_survives_sigkill,
    answered_payments_survive_sigkill_under_load,
);

/// Runs `paygent args...` against `server` with `token`, off the async runtime.
async fn paygent(server: &TestServer, token: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_paygent"));
    cmd.args(args)
        .env("PAYGENT_SERVER", &server.base)
        .env("PAYGENT_TOKEN", token);
    tokio::task::spawn_blocking(move || cmd.output().expect("paygent runs"))
        .await
        .expect("joined")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

async fn audit_verify_names_the_first_bad_entry(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let session = s.session(&t.agent, json!({})).await;
    for amount in ["1", "2", "30", "4"] {
        s.pay(&t.agent, session, amount, "USDC").await;
    }
    let ok = paygent(&s, ADMIN_TOKEN, &["audit", "verify"]).await;
    assert!(ok.status.success(), "{}", stdout(&ok));
    assert!(
        stdout(&ok).contains("audit chain OK: 8 entries"),
        "{}",
        stdout(&ok)
    );

    let denied = paygent(&s, &t.approver, &["audit", "verify"]).await;
    assert!(!denied.status.success(), "only admins read the audit");

    let tenant = paygent_engine::DEFAULT_TENANT;
    let changed = s
        .sql(&format!(
            "UPDATE audit_log SET data = '{{\"usd_value\": \"0.01\"}}' WHERE tenant_id = '{tenant}' AND seq = 5"
        ))
        .await;
    assert_eq!(changed, 1);
    let bad = paygent(&s, ADMIN_TOKEN, &["audit", "verify"]).await;
    assert!(!bad.status.success());
    assert!(
        stdout(&bad).contains("BROKEN at entry 5"),
        "{}",
        stdout(&bad)
    );

    s.sql(&format!(
        "DELETE FROM audit_log WHERE tenant_id = '{tenant}' AND seq = 3"
    ))
    .await;
    let bad = paygent(&s, ADMIN_TOKEN, &["audit", "verify"]).await;
    assert!(!bad.status.success());
    assert!(
        stdout(&bad).contains("BROKEN at entry 3"),
        "{}",
        stdout(&bad)
    );

    s.sql(&format!(
        "DELETE FROM audit_log WHERE tenant_id = '{tenant}' AND seq >= 3"
    ))
    .await;
    let bad = paygent(&s, ADMIN_TOKEN, &["audit", "verify"]).await;
    assert!(
        !bad.status.success(),
        "a cut tail is caught by the recorded head"
    );
    assert!(
        stdout(&bad).contains("BROKEN at entry 3"),
        "{}",
        stdout(&bad)
    );
    s.finish().await;
}

/// `run` starts a command and follows it: to its end, or only its start with `--detach`; the server's refusal
/// reaches the person as the exit status and the problem's detail.
async fn run_follows_an_execution_to_its_end(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let session = s.session(&t.agent, json!({})).await.to_string();
    let out = paygent(
        &s,
        &t.agent,
        &["run", "wait 1 second", "--session", &session],
    )
    .await;
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("completed"), "{text}");
    assert!(text.contains("step 0 wait: done"), "{text}");

    let pay = format!("Transfer 50 USDC to {}", paygent_testkit::PAYEE);
    let args = ["run", pay.as_str(), "--session", &session, "--detach"];
    let out = paygent(&s, &t.agent, &args).await;
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("started"), "{text}");
    let id = text.split_whitespace().nth(1).expect("the execution's id");
    paygent_testkit::wait_for(&s, &t.agent, id, |e| e["status"] == "awaiting_approval").await;
    let pending = paygent(&s, &t.approver, &["approvals", "list"]).await;
    assert!(stdout(&pending).contains("50"), "{}", stdout(&pending));

    let out = paygent(
        &s,
        &t.agent,
        &["run", "Buy me a coffee", "--session", &session],
    )
    .await;
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("422"),
        "{:?}",
        out
    );
    s.finish().await;
}

async fn approvals_commands_decide(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let session = s.session(&t.agent, json!({})).await;
    let mut ids = Vec::new();
    for amount in ["11", "12", "13"] {
        let (_, p) = s.pay(&t.agent, session, amount, "USDC").await;
        ids.push(p["approval_id"].as_str().unwrap().to_owned());
    }
    let list = paygent(&s, &t.approver, &["approvals", "list"]).await;
    assert!(list.status.success());
    let text = stdout(&list);
    let mut digests = Vec::new();
    for id in &ids {
        let (_, request) = s.get(&t.approver, &format!("/approvals/{id}")).await;
        let digest = request["digest"].as_str().unwrap().to_owned();
        let line = text
            .lines()
            .find(|l| l.starts_with(id.as_str()))
            .unwrap_or_default();
        assert!(
            line.contains(&digest),
            "each request with its action's digest: {text}"
        );
        digests.push(digest);
    }
    assert!(
        text.contains("Agent in session test · policy default v0 · first payment to this payee"),
        "who asked where, and the payee's history: {text}"
    );

    let other = format!("sha256:{}", "0".repeat(64));
    let args = ["approvals", "approve", &ids[0], "--digest", &other];
    let refused = paygent(&s, &t.approver, &args).await;
    assert!(
        !refused.status.success(),
        "another action's digest: {}",
        stdout(&refused)
    );
    assert!(String::from_utf8_lossy(&refused.stderr).contains("409"));
    let args = [
        "approvals",
        "approve",
        &ids[0],
        "--comment",
        "fine",
        "--digest",
        &digests[0],
        "--stand-usd",
        "30",
        "--stand-minutes",
        "60",
    ];
    let out = paygent(&s, &t.approver, &args).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = stdout(&out);
    assert!(
        said.contains("approved") && said.contains(&digests[0]),
        "{said}"
    );
    let (_, standing) = s.get(&t.approver, "/standing-approvals").await;
    assert_eq!(
        standing[0]["max_usd"], "30",
        "the approval stands: {standing}"
    );
    let out = paygent(
        &s,
        &t.approver,
        &["approvals", "reject", &ids[1], "--reason", "too much"],
    )
    .await;
    assert!(out.status.success());
    let out = paygent(
        &s,
        &t.approver,
        &["approvals", "edit", &ids[2], "--set", "amount=5"],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let again = paygent(&s, &t.approver, &["approvals", "approve", &ids[1]]).await;
    assert!(
        !again.status.success(),
        "a decided request cannot be decided again"
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("409"));
    let agent = paygent(&s, &t.agent, &["approvals", "list"]).await;
    assert!(!agent.status.success(), "agents cannot list approvals");

    let (_, rejected) = s.get(&t.approver, &format!("/approvals/{}", ids[1])).await;
    assert_eq!(rejected["decision"]["note"], "too much");
    let (_, edited) = s.get(&t.approver, &format!("/approvals/{}", ids[2])).await;
    assert_eq!(edited["edited_args"]["amount"], "5");
    let empty = paygent(&s, &t.approver, &["approvals", "list"]).await;
    assert!(stdout(&empty).contains("no pending approval requests"));
    s.finish().await;
}

async fn kill_commands_stop_money(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let session = s.session(&t.agent, json!({})).await;
    let id = session.to_string();
    let out = paygent(
        &s,
        &t.approver,
        &["kill", "session", &id, "--reason", "looping"],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout(&out).contains("killed"));
    assert_eq!(
        s.pay(&t.agent, session, "1", "USDC").await.1["reason"],
        "killed"
    );

    let other = s.session(&t.agent, json!({})).await;
    let refused = paygent(&s, &t.approver, &["kill", "all"]).await;
    assert!(
        !refused.status.success(),
        "approvers cannot pull the global stop"
    );
    let out = paygent(&s, &t.admin, &["kill", "all", "--reason", "incident"]).await;
    assert!(stdout(&out).contains("engaged: true"), "{}", stdout(&out));
    assert_eq!(
        s.pay(&t.agent, other, "1", "USDC").await.1["reason"],
        "killed"
    );
    let out = paygent(&s, &t.admin, &["kill", "release"]).await;
    assert!(stdout(&out).contains("engaged: false"));
    assert_eq!(
        s.pay(&t.agent, other, "1", "USDC").await.1["status"],
        "authorized"
    );
    s.finish().await;
}

/// A session the circuit breaker froze shows why, and a person unfreezes it from the command line; an agent
/// cannot.
async fn sessions_commands_show_and_unfreeze(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let rules = json!({"velocity": [{"per_seconds": 60, "max_payments": 1}]});
    assert_eq!(s.put(ADMIN_TOKEN, "/policies/default", rules).await.0, 200);
    let session = s.session(&t.agent, json!({})).await;
    s.pay(&t.agent, session, "1", "USDC").await;
    let (_, tripped) = s.pay(&t.agent, session, "1", "USDC").await;
    assert_eq!(tripped["reason"], "circuit_breaker");
    let id = session.to_string();
    let shown = stdout(&paygent(&s, &t.approver, &["sessions", "show", &id]).await);
    assert!(shown.contains("is frozen"), "{shown}");
    assert!(
        shown.contains("velocity[0]: more than 1 payments within 60 s"),
        "{shown}"
    );
    let refused = paygent(&s, &t.agent, &["sessions", "unfreeze", &id]).await;
    assert!(!refused.status.success(), "agents never unfreeze");
    let out = paygent(
        &s,
        &t.approver,
        &["sessions", "unfreeze", &id, "--comment", "ok"],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout(&out).contains("is active"), "{}", stdout(&out));
    assert_eq!(
        s.pay(&t.agent, session, "1", "USDC").await.1["status"],
        "authorized"
    );
    s.finish().await;
}

/// The README's first command: `paygent serve` on a fresh data directory, with nothing else running.
#[test]
fn serve_starts_on_an_embedded_sqlite_file() {
    let dir = std::env::temp_dir().join(format!("paygent-serve-{}", uuid::Uuid::new_v4().simple()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_paygent"))
        .arg("serve")
        .env("PAYGENT_DATA_DIR", &dir)
        .env("PAYGENT_LISTEN", "127.0.0.1:0")
        .env_remove("DATABASE_URL")
        .env_remove("PAYGENT_ADMIN_TOKEN")
        .env_remove("PAYGENT_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let output = Lines::of(child.stdout.take().unwrap());
    let banner = output.next("banner");
    assert!(banner.contains("first admin key"), "{banner}");
    let token = output.next("admin token");
    assert!(token.starts_with("pgk_"), "{token}");
    let port = serving_port(output);

    let saved = dir.join("admin-token");
    assert_eq!(std::fs::read_to_string(&saved).unwrap().trim(), token);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&saved).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(dir.join("paygent.db").exists());

    let rt = tokio::runtime::Runtime::new().unwrap();
    let status = rt.block_on(async {
        let http = reqwest::Client::new();
        let ready = || async {
            let asked = http.get(format!("http://127.0.0.1:{port}/readyz")).send();
            asked.await.ok().map(|r| r.status())
        };
        let within = std::time::Duration::from_secs(10);
        let ready = eventually(within, "the server to answer", ready, Option::is_some).await;
        let keys = http
            .post(format!("http://127.0.0.1:{port}/api/v1/keys"))
            .bearer_auth(&token)
            .json(&json!({"name": "bot", "role": "agent"}))
            .send()
            .await
            .unwrap();
        (ready.unwrap(), keys.status())
    });
    assert_eq!(status.0, reqwest::StatusCode::OK);
    assert_eq!(
        status.1,
        reqwest::StatusCode::CREATED,
        "the printed key is an admin key"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// Where the real binary runs to be killed: a fresh data directory, and a fresh database of `backend`.
struct CrashSite {
    dir: std::path::PathBuf,
    db: String,
    backend: Backend,
}

impl CrashSite {
    async fn new(backend: Backend) -> CrashSite {
        let dir =
            std::env::temp_dir().join(format!("paygent-crash-{}", uuid::Uuid::new_v4().simple()));
        let db = match backend {
            Backend::Sqlite => format!("sqlite://{}/paygent.db?mode=rwc", dir.display()),
            Backend::Postgres => paygent_testkit::create_postgres_database().await,
        };
        CrashSite { dir, db, backend }
    }

    /// Drops the PostgreSQL database (the test removes its directory itself).
    async fn finish(self) {
        if self.backend == Backend::Postgres {
            paygent_testkit::drop_postgres_database(&self.db).await;
        }
    }
}

/// The real binary, killed with SIGKILL while an execution waits for a person, picks it up after a restart.
async fn a_paused_execution_survives_sigkill(backend: Backend) {
    let site = CrashSite::new(backend).await;
    a_paused_execution_survives_sigkill_at(&site.dir, &site.db).await;
    site.finish().await;
}

async fn a_paused_execution_survives_sigkill_at(dir: &std::path::Path, db: &str) {
    // On PostgreSQL other instances may be alive, so the dead one's lease on the execution must lapse first.
    let env = [
        ("PAYGENT_ADMIN_TOKEN", ADMIN_TOKEN),
        ("PAYGENT_DATA_DIR", dir.to_str().unwrap()),
        ("DATABASE_URL", db),
        ("PAYGENT_LEASE_SECONDS", "2"),
    ];
    let http = reqwest::Client::new();
    let call = |base: String, token: String, path: String, body: Option<serde_json::Value>| {
        let http = http.clone();
        async move {
            let req = match body {
                Some(b) => http.post(format!("{base}/api/v1{path}")).json(&b),
                None => http.get(format!("{base}/api/v1{path}")),
            };
            req.bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    };
    let (mut first, port) = spawn_serve(&env);
    let base = wait_ready(port);
    let agent = call(
        base.clone(),
        ADMIN_TOKEN.into(),
        "/keys".into(),
        Some(json!({"name": "a", "role": "agent"})),
    )
    .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let session = call(
        base.clone(),
        agent.clone(),
        "/sessions".into(),
        Some(json!({})),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let command =
        "Transfer 25 USDC to 0x1111111111111111111111111111111111111111 then wait 1 second";
    let execution = call(
        base.clone(),
        agent.clone(),
        "/agent/execute".into(),
        Some(json!({"session_id": session, "command": command})),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/executions/{execution}");
    let read = |base: &String| call(base.clone(), agent.clone(), path.clone(), None);
    let within = std::time::Duration::from_secs(30);
    let waiting = |e: &serde_json::Value| e["status"] == "awaiting_approval";
    let paused = eventually(
        within,
        "the execution to wait on a person",
        || read(&base),
        waiting,
    )
    .await;
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();

    let (mut second, port) = spawn_serve(&env);
    let base = wait_ready(port);
    let approval = paused["steps"][0]["approval_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let approved = call(
        base.clone(),
        ADMIN_TOKEN.into(),
        format!("/approvals/{approval}/approve"),
        Some(json!({})),
    )
    .await;
    assert_eq!(approved["status"], "approved");
    let completed = |e: &serde_json::Value| e["status"] == "completed";
    eventually(
        within,
        "the execution to complete",
        || read(&base),
        completed,
    )
    .await;
    let payments = call(
        base.clone(),
        agent.clone(),
        format!("/payments?session_id={session}"),
        None,
    )
    .await;
    assert_eq!(payments.as_array().unwrap().len(), 1, "no step ran twice");
    second.kill().unwrap();
    second.wait().unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// Group commit answers a write only once its group is durable: the real binary, killed with SIGKILL while eight
/// clients pay as fast as they can (so groups are open), has every payment it answered after the restart, once,
/// with an unbroken audit chain.
async fn answered_payments_survive_sigkill_under_load(backend: Backend) {
    let site = CrashSite::new(backend).await;
    answered_payments_survive_sigkill_under_load_at(&site.dir, &site.db).await;
    site.finish().await;
}

async fn answered_payments_survive_sigkill_under_load_at(dir: &std::path::Path, db: &str) {
    let env = [
        ("PAYGENT_ADMIN_TOKEN", ADMIN_TOKEN),
        ("PAYGENT_DATA_DIR", dir.to_str().unwrap()),
        ("DATABASE_URL", db),
        ("PAYGENT_RATE_LIMIT", "0"),
    ];
    let http = reqwest::Client::new();
    let (mut first, port) = spawn_serve(&env);
    let base = wait_ready(port);
    let post = |base: String, token: String, path: &str, body: serde_json::Value| {
        http.post(format!("{base}/api/v1{path}"))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    let (agent, session) = agent_and_session(&http, &base, ADMIN_TOKEN).await;

    let answered = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let (http, base, agent, session, answered) =
                (http.clone(), base.clone(), agent.clone(), session.clone(), answered.clone());
            tokio::spawn(async move {
                for i in 0.. {
                    let key = format!("c{c}-{i}");
                    let sent = http
                        .post(format!("{base}/api/v1/payments"))
                        .bearer_auth(&agent)
                        .json(&json!({"session_id": session, "amount": "0.01", "currency": "USDC",
                            "recipient": "0x1111111111111111111111111111111111111111", "idempotency_key": key}))
                        .send()
                        .await;
                    let Ok(response) = sent else { return };
                    assert_eq!(response.status(), 201);
                    let body: serde_json::Value = response.json().await.unwrap();
                    answered.lock().unwrap().push((key, body["id"].as_str().unwrap().to_owned()));
                }
            })
        })
        .collect();
    let count = || async { serde_json::json!(answered.lock().unwrap().len()) };
    let what = "300 payments answered";
    eventually(std::time::Duration::from_secs(60), what, count, |n| {
        n.as_u64() >= Some(300)
    })
    .await;
    first.kill().unwrap(); // SIGKILL, with writes in flight
    first.wait().unwrap();
    for c in clients {
        c.await.unwrap();
    }
    let answered = answered.lock().unwrap().clone();

    let (_second, port) = spawn_serve(&env);
    let base = wait_ready(port);
    let get = |path: String| {
        http.get(format!("{base}/api/v1{path}"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
    };
    for (key, id) in &answered {
        let payment: serde_json::Value = get(format!("/payments/{id}"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(payment["status"], "authorized", "{key}: {payment}");
    }
    // Retrying an answered request finds the same payment instead of paying again.
    let (key, id) = &answered[0];
    let again = post(base.clone(), agent.clone(), "/payments", json!({"session_id": session, "amount": "0.01",
        "currency": "USDC", "recipient": "0x1111111111111111111111111111111111111111", "idempotency_key": key}))
        .await
        .unwrap();
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(
        again.json::<serde_json::Value>().await.unwrap()["id"],
        id.as_str()
    );
    let check: serde_json::Value = get("/audit/verify".into())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(check["verified"], true, "{check}");
    assert!(check["entries"].as_i64().unwrap() >= answered.len() as i64);
    let _ = std::fs::remove_dir_all(dir);
}

/// The benchmark harness's scenarios, in tiny mode against the real binary: they run and count correctly.
/// Timings are reported by the harness, never asserted here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn benchmark_scenarios_run() {
    let dir = std::env::temp_dir().join(format!(
        "paygent-bench-test-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let db = format!("sqlite://{}/paygent.db?mode=rwc", dir.display());
    let env = [
        ("PAYGENT_ADMIN_TOKEN", ADMIN_TOKEN),
        ("PAYGENT_DATA_DIR", dir.to_str().unwrap()),
        ("DATABASE_URL", db.as_str()),
        // The webhooks scenario's receiver is on loopback.
        ("PAYGENT_EGRESS_ALLOW", "127.0.0.1/32"),
    ];
    let (mut child, port) = spawn_serve(&env);
    let base = wait_ready(port);
    let target = paygent_bench::Target::new(&base, ADMIN_TOKEN);
    let scale = paygent_bench::Scale::tiny();
    let (lines, footprint) = paygent_bench::all(&target, &db, &scale, child.id())
        .await
        .unwrap();
    assert_eq!(lines.len(), 17);
    for m in &lines {
        let expected = match m.scenario.as_str() {
            "round trip" | "kill latency" | "resume latency" | "timeout precision"
            | "fan-out, 1 clients" => scale.trials,
            s if s.starts_with("fan-out") => scale.trials * scale.sockets,
            _ => scale.requests,
        };
        assert_eq!(m.count, expected, "{m:?}");
        assert!(m.p50_ms <= m.p99_ms && m.p99_ms <= m.max_ms, "{m:?}");
    }
    assert_eq!(footprint.len(), 4);
    assert!(footprint.iter().all(|(_, mb)| *mb > 1.0));
    let [answer, sweep] = paygent_bench::stop_with_pending(&target, &db, 100, 2)
        .await
        .unwrap();
    assert_eq!((answer.count, sweep.count), (2, 2));
    assert!(sweep.per_second > 0.0, "{sweep:?}");
    // The spend picture over seeded payments (it checks today's total against what it seeded).
    let pictures = paygent_bench::spend_picture(&target, &db, 2_000, 3)
        .await
        .unwrap();
    let counts: Vec<usize> = pictures.iter().map(|m| m.count).collect();
    assert_eq!(counts, [3, 3, 3, 3], "{pictures:?}");
    // Three webhooks beside none, and every delivery timed.
    let hooked = paygent_bench::webhooks(&target, &scale).await.unwrap();
    let counts: Vec<usize> = hooked.iter().map(|m| m.count).collect();
    let n = scale.requests;
    assert_eq!(counts, [n, n, n, n, 3 * n], "{hooked:?}");
    // Under the governed policy (payee lists, velocity rules, a quorum) the load scenarios still run.
    target
        .set_default_policy(paygent_bench::governed_policy())
        .await
        .unwrap();
    let guard = paygent_bench::guard_auto(&target, &scale, 4).await.unwrap();
    let asked = paygent_bench::approval_creation(&target, &scale, 4)
        .await
        .unwrap();
    assert_eq!((guard.count, asked.count), (scale.requests, scale.requests));
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// The real binary on a fresh SQLite file, configured by `config` (a paygent.toml) and paying from the funded test
/// wallet (its key in the environment): the process, its base URL, and its directory to remove.
fn serve_configured(config: &str, name: &str) -> (common::Serve, String, std::path::PathBuf) {
    let dir =
        std::env::temp_dir().join(format!("paygent-{name}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let config_file = dir.join("paygent.toml");
    std::fs::write(&config_file, config).unwrap();
    let db = format!("sqlite://{}/paygent.db?mode=rwc", dir.display());
    let env = [
        ("PAYGENT_ADMIN_TOKEN", ADMIN_TOKEN),
        ("PAYGENT_DATA_DIR", dir.to_str().unwrap()),
        ("DATABASE_URL", db.as_str()),
        ("PAYGENT_CONFIG", config_file.to_str().unwrap()),
        ("PAYGENT_WALLET_KEY", paygent_testkit::chain::PAYER),
    ];
    let (child, port) = spawn_serve(&env);
    (child, wait_ready(port), dir)
}

/// The real binary, configured by file and environment to pay on a local chain: the x402 benchmark scenario runs
/// against it in tiny mode, and every payment it reports moved $0.10 on chain, through Paygent, by the reference
/// client or directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_pays_on_chain_and_the_x402_benchmark_runs() {
    use paygent_testkit::chain::{LocalChain, ReferenceClient, X402Peer, payee};
    let chain = LocalChain::start(338).await;
    let peer = X402Peer::start(&chain, "base-sepolia").await;
    let (paid, config) =
        paygent_bench::PaidResource::on(&chain, peer.url("/v2/cheap"), "TypeScript service");
    let (mut child, base, dir) = serve_configured(&config, "x402");
    let before = chain.balance(payee()).await;
    let scale = paygent_bench::Scale::tiny();
    let target = paygent_bench::Target::new(&base, ADMIN_TOKEN);
    let mut reference = ReferenceClient::start(&chain).await;
    let lines = paygent_bench::x402_payment(&target, &scale, &paid, &mut reference)
        .await
        .unwrap();
    assert_eq!(lines.len(), 3);
    assert!(lines.iter().all(|m| m.count == scale.trials), "{lines:?}");
    let payments = 3 * scale.trials as u64;
    assert_eq!(chain.balance(payee()).await - before, payments * 100_000);
    assert_eq!(peer.served().await["v2/cheap"], payments);
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// The real binary, configured by file to trade on a local Uniswap V2: the swap benchmark scenario runs against it
/// in tiny mode, and every swap it reports moved $1 of the wallet's USDC once, through Paygent or directly, and
/// left the router's allowance as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_trades_on_chain_and_the_swap_benchmark_runs() {
    use paygent_testkit::chain::{FUNDS, LocalChain, payer};
    use paygent_testkit::uniswap::U256;
    let chain = LocalChain::start(338).await;
    let weth = U256::from(5_000_000_000_000_000_000u128);
    let exchange = chain.uniswap(U256::from(10_000_000_000u64), weth).await;
    let config = paygent_bench::trading_config(&chain, &exchange);
    let (mut child, base, dir) = serve_configured(&config, "swap");
    let scale = paygent_bench::Scale::tiny();
    let target = paygent_bench::Target::new(&base, ADMIN_TOKEN);
    let wallet = payer().to_string();
    let lines = paygent_bench::swap(&target, &scale, &wallet, (&chain, &exchange))
        .await
        .unwrap();
    assert_eq!(lines.len(), 2);
    assert!(lines.iter().all(|m| m.count == scale.trials), "{lines:?}");
    let swaps = 2 * scale.trials as u64;
    assert_eq!(FUNDS - chain.balance(payer()).await, swaps * 1_000_000);
    assert_eq!(exchange.allowance(&chain, payer()).await, U256::ZERO);
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// Admins write policies from the command line, approvers read them, and the written rules bind at once.
async fn policies_commands_write_and_read(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let set = paygent(
        &s,
        ADMIN_TOKEN,
        &[
            "policies",
            "set",
            "default",
            "--rules",
            r#"{"approval_threshold_usd": "2"}"#,
        ],
    )
    .await;
    assert!(
        set.status.success(),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );
    assert!(stdout(&set).contains("\"version\": 1"), "{}", stdout(&set));
    let rules = std::env::temp_dir().join(format!("rules-{}.json", uuid::Uuid::new_v4()));
    std::fs::write(&rules, r#"{"max_per_payment_usd": "50"}"#).unwrap();
    let file = format!("@{}", rules.display());
    let created = paygent(
        &s,
        ADMIN_TOKEN,
        &["policies", "create", "ops", "--rules", &file],
    )
    .await;
    std::fs::remove_file(&rules).unwrap();
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let refused = paygent(&s, &t.approver, &["policies", "create", "mine"]).await;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("403"));
    let list = paygent(&s, &t.approver, &["policies", "list"]).await;
    let text = stdout(&list);
    assert!(
        text.contains("default") && text.contains("threshold $2 "),
        "{text}"
    );
    assert!(
        text.contains("ops") && text.contains("max per payment $50"),
        "{text}"
    );
    let session = s.session(&t.agent, json!({})).await;
    let (_, p) = s.pay(&t.agent, session, "3", "USDC").await;
    assert_eq!(
        p["status"], "pending_approval",
        "the default written by the CLI binds: {p}"
    );
    s.finish().await;
}
