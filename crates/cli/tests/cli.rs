//! The `paygent` binary itself: `serve` on its embedded default, and the commands people run against a server.

use paygent_testkit::{ADMIN_TOKEN, Backend, TestServer, on_both_databases};
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};

on_both_databases!(
    audit_verify_names_the_first_bad_entry,
    approvals_commands_decide
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
    for id in &ids {
        assert!(text.contains(id.as_str()), "{text}");
    }

    let out = paygent(
        &s,
        &t.approver,
        &["approvals", "approve", &ids[0], "--comment", "fine"],
    )
    .await;
    assert!(out.status.success());
    assert!(stdout(&out).contains("approved"));
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

/// The README's first command: `paygent serve` on a fresh data directory, with nothing else running.
#[test]
fn serve_starts_on_an_embedded_sqlite_file() {
    let dir = std::env::temp_dir().join(format!("paygent-serve-{}", uuid::Uuid::new_v4().simple()));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_paygent"))
        .arg("serve")
        .env("PAYGENT_DATA_DIR", &dir)
        .env("PAYGENT_LISTEN", format!("127.0.0.1:{port}"))
        .env_remove("DATABASE_URL")
        .env_remove("PAYGENT_ADMIN_TOKEN")
        .env_remove("PAYGENT_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let banner = lines.next().unwrap().unwrap();
    assert!(banner.contains("first admin key"), "{banner}");
    let token = lines.next().unwrap().unwrap();
    assert!(token.starts_with("pgk_"), "{token}");

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
        for _ in 0..100 {
            let ready = http
                .get(format!("http://127.0.0.1:{port}/readyz"))
                .send()
                .await;
            if let Ok(r) = ready {
                let keys = http
                    .post(format!("http://127.0.0.1:{port}/api/v1/keys"))
                    .bearer_auth(&token)
                    .json(&json!({"name": "bot", "role": "agent"}))
                    .send()
                    .await
                    .unwrap();
                return (r.status(), keys.status());
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("the server never answered");
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
