//! Walks the README's table of who may do what, cell by cell, over real HTTP on both databases. A row without a
//! check here, or a check without its row, fails the test: the table and the server cannot drift apart.

use paygent_engine::domain::Role;
use paygent_testkit::{ADMIN_TOKEN, Backend, Team, TestServer, on_both_databases};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

on_both_databases!(the_readme_table_holds);

/// The table's rows: the action, then the cell for admin, approver and agent.
fn table() -> Vec<(String, [String; 3])> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("README.md");
    let rows: Vec<(String, [String; 3])> = readme
        .lines()
        .skip_while(|l| !l.starts_with("| may ... |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let cells: Vec<String> = l.split('|').map(|c| c.trim().to_owned()).collect();
            (
                cells[1].clone(),
                [cells[2].clone(), cells[3].clone(), cells[4].clone()],
            )
        })
        .collect();
    assert!(rows.len() >= 10, "the README's table was found: {rows:?}");
    rows
}

/// What one role's key and its surroundings are, for one cell.
struct Cell<'a> {
    s: &'a TestServer,
    t: &'a Team,
    key: &'a str,
    /// The cell: `yes`, `no`, `own`, `all`, ...
    may: &'a str,
}

impl Cell<'_> {
    fn allowed(&self) -> bool {
        self.may != "no"
    }

    /// A 2xx when the cell allows it, 403 or 404 when it does not.
    fn expect(&self, what: &str, status: StatusCode, body: &Value) {
        if self.allowed() {
            assert!(
                status.is_success(),
                "{what} ({}): {status} {body}",
                self.may
            );
        } else {
            assert!(
                status == StatusCode::FORBIDDEN || status == StatusCode::NOT_FOUND,
                "{what} ({}): {status} {body}",
                self.may
            );
        }
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.s.post(self.key, path, body).await
    }
}

/// Another agent's session with a pending request, an authorized payment and a running execution.
struct Theirs {
    session: Uuid,
    approval: String,
    payment: String,
    execution: String,
}

async fn theirs(s: &TestServer, agent: &str) -> Theirs {
    let session = s.session(agent, json!({})).await;
    let (_, pending) = s.pay(agent, session, "20", "USDC").await;
    let (_, paid) = s.pay(agent, session, "1", "USDC").await;
    let (_, execution) = s
        .post(
            agent,
            "/agent/execute",
            json!({"session_id": session, "steps": [{"tool": "wait", "args": {"seconds": 600}}]}),
        )
        .await;
    let id = |v: &Value, k: &str| v[k].as_str().expect("id").to_owned();
    Theirs {
        session,
        approval: id(&pending, "approval_id"),
        payment: id(&paid, "id"),
        execution: id(&execution, "id"),
    }
}

async fn check(c: &Cell<'_>, row: &str) {
    let (s, t) = (c.s, c.t);
    match row {
        "make keys and tenants, revoke keys" => {
            let (status, body) = c.post("/keys", json!({"name": "k", "role": "agent"})).await;
            c.expect("make a key", status, &body);
            let victim = s
                .post(ADMIN_TOKEN, "/keys", json!({"name": "v", "role": "agent"}))
                .await
                .1;
            let path = format!("/keys/{}", victim["id"].as_str().unwrap());
            let (status, body) = s.call(c.key, Method::DELETE, &path, None).await;
            c.expect("revoke a key", status, &body);
        }
        "write policies" => {
            let name = Uuid::new_v4().to_string();
            let (status, body) = c.post("/policies", json!({"name": name})).await;
            c.expect("create a policy", status, &body);
            let (status, body) = s.put(c.key, "/policies/default", json!({})).await;
            c.expect("change the default", status, &body);
        }
        "read policies and the tenant's wallets" => {
            for path in ["/policies/default", "/policies", "/wallets"] {
                let (status, body) = s.get(c.key, path).await;
                c.expect(path, status, &body);
            }
        }
        "open sessions, pay, run executions, execute approved payments" => {
            let (status, session) = c.post("/sessions", json!({})).await;
            c.expect("open a session", status, &session);
            let mine = match session["id"].as_str() {
                Some(id) => id.parse().unwrap(),
                None => s.session(&t.agent, json!({})).await,
            };
            let (status, body) = s.pay(c.key, mine, "1", "USDC").await;
            c.expect("pay", status, &body);
            let steps = json!([{"tool": "wait", "args": {"seconds": 1}}]);
            let (status, body) = c
                .post(
                    "/agent/execute",
                    json!({"session_id": mine, "steps": steps}),
                )
                .await;
            c.expect("run an execution", status, &body);
            let (_, asked) = s
                .pay(&t.agent, s.session(&t.agent, json!({})).await, "20", "USDC")
                .await;
            let approval = asked["approval_id"].as_str().unwrap();
            s.decide(&t.approver, &approval, "approve", json!({})).await;
            let (status, body) = c
                .post(
                    "/payments/execute-approved",
                    json!({"approval_id": approval}),
                )
                .await;
            if c.may == "own" {
                assert_eq!(status, StatusCode::OK, "the agent executes its own: {body}");
                let other = theirs(s, &s.key(&t.admin, Role::Agent).await).await;
                let (status, _) = s.pay(c.key, other.session, "1", "USDC").await;
                assert_eq!(
                    status,
                    StatusCode::NOT_FOUND,
                    "but never pays on another's session"
                );
            } else {
                c.expect("execute an approved payment", status, &body);
            }
        }
        "read sessions, payments, approvals, executions" => {
            let other = theirs(s, &s.key(&t.admin, Role::Agent).await).await;
            let paths = [
                format!("/sessions/{}", other.session),
                format!("/payments/{}", other.payment),
                format!("/approvals/{}", other.approval),
                format!("/executions/{}", other.execution),
            ];
            for path in paths {
                let (status, body) = s.get(c.key, &path).await;
                match c.may {
                    "all" => assert_eq!(status, StatusCode::OK, "{path}: {body}"),
                    _ => assert_eq!(status, StatusCode::NOT_FOUND, "{path} ({}): {body}", c.may),
                }
            }
            if c.may == "own" {
                let mine = theirs(s, c.key).await;
                let path = format!("/approvals/{}", mine.approval);
                assert_eq!(s.get(c.key, &path).await.0, StatusCode::OK, "its own");
            }
        }
        "list pending and decided approvals" => {
            for list in ["pending", "decided"] {
                let (status, body) = s.get(c.key, &format!("/approvals/{list}")).await;
                c.expect(list, status, &body);
            }
        }
        "read spend (tenant, agent, session)" => {
            let (_, me) = s.get(&t.agent, "/me").await;
            let session = theirs(s, &t.agent).await.session;
            let agent = me["key_id"].as_str().unwrap();
            for query in [
                String::new(),
                format!("agent_id={agent}"),
                format!("session_id={session}"),
            ] {
                let (status, body) = s.get(c.key, &format!("/spend?{query}")).await;
                c.expect(&query, status, &body);
            }
        }
        "decide an approval request (never one it asked for)" => {
            let other = theirs(s, &t.agent).await;
            let path = format!("/approvals/{}/approve", other.approval);
            let (status, body) = c.post(&path, json!({})).await;
            c.expect("decide", status, &body);
            // Of the people, only admins ask for payments: one never decides its own.
            if c.allowed() && c.key == t.admin {
                let session = s.session(c.key, json!({})).await;
                let (_, own) = s.pay(c.key, session, "20", "USDC").await;
                let path = format!(
                    "/approvals/{}/approve",
                    own["approval_id"].as_str().unwrap()
                );
                assert_eq!(
                    c.post(&path, json!({})).await.0,
                    StatusCode::FORBIDDEN,
                    "four eyes"
                );
            }
        }
        "report an outcome (of a payment it asked for, that no rail carries)" => {
            let session = match c.may {
                "no" => s.session(&t.agent, json!({})).await,
                _ => s.session(c.key, json!({})).await,
            };
            let asker = if c.may == "no" {
                t.agent.as_str()
            } else {
                c.key
            };
            let (_, paid) = s.pay(asker, session, "1", "USDC").await;
            let path = format!("/payments/{}/outcome", paid["id"].as_str().unwrap());
            let (status, body) = c.post(&path, json!({"status": "failed"})).await;
            c.expect("report its own payment's outcome", status, &body);
            let other = theirs(s, &s.key(&t.admin, Role::Agent).await).await;
            let path = format!("/payments/{}/outcome", other.payment);
            let (status, body) = c.post(&path, json!({"status": "failed"})).await;
            assert!(
                status == StatusCode::FORBIDDEN || status == StatusCode::NOT_FOUND,
                "never another key's: {status} {body}"
            );
        }
        "cancel an execution" => {
            let other = theirs(s, &s.key(&t.admin, Role::Agent).await).await;
            let path = format!("/executions/{}/cancel", other.execution);
            let (status, body) = c.post(&path, json!({})).await;
            match c.may {
                "own" => {
                    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
                    let mine = theirs(s, c.key).await;
                    let path = format!("/executions/{}/cancel", mine.execution);
                    assert_eq!(c.post(&path, json!({})).await.0, StatusCode::OK);
                }
                _ => c.expect("cancel", status, &body),
            }
        }
        "kill a session, change its budget" => {
            let session = s.session(&t.agent, json!({})).await;
            let (status, body) = s
                .put(
                    c.key,
                    &format!("/sessions/{session}/budget"),
                    json!({"daily_limit_usd": "5"}),
                )
                .await;
            c.expect("change a budget", status, &body);
            let (status, body) = c
                .post(&format!("/sessions/{session}/kill"), json!({}))
                .await;
            c.expect("kill a session", status, &body);
        }
        "engage the emergency stop, read the audit trail" => {
            let (status, body) = s.get(c.key, "/audit").await;
            c.expect("read the audit trail", status, &body);
            let (status, body) = c.post("/kill-switch", json!({"engaged": false})).await;
            c.expect("release the stop", status, &body);
        }
        "stream events" => stream(c).await,
        other => panic!("the README's row {other:?} has no check here"),
    }
}

/// Reads the reader's replay of every event so far and checks it carries what the cell says.
async fn stream(c: &Cell<'_>) {
    let (s, t) = (c.s, c.t);
    let other = s.key(&t.admin, Role::Agent).await;
    let foreign = theirs(s, &other).await;
    let victim = s
        .post(ADMIN_TOKEN, "/keys", json!({"name": "v", "role": "agent"}))
        .await
        .1;
    let path = format!("/keys/{}", victim["id"].as_str().unwrap());
    s.call(ADMIN_TOKEN, Method::DELETE, &path, None).await;
    let mine = theirs(s, &t.agent).await;
    let marker = format!("\"session_id\":\"{}\"", mine.session);
    let text = s
        .events_until(c.key, "after_seq=0", |t| t.contains(&marker))
        .await;
    let foreign_seen = text.contains(&foreign.session.to_string());
    let keys_seen = text.contains("event: key_revoked");
    let expected = match c.may {
        "all" => (true, true),
        "all but keys'" => (true, false),
        "own sessions'" => (false, false),
        other => panic!("unknown stream cell {other:?}"),
    };
    assert_eq!((foreign_seen, keys_seen), expected, "{}", c.may);
}

async fn the_readme_table_holds(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    for (row, cells) in table() {
        for (key, may) in [&t.admin, &t.approver, &t.agent].into_iter().zip(&cells) {
            let cell = Cell {
                s: &s,
                t: &t,
                key,
                may,
            };
            check(&cell, &row).await;
        }
    }
    s.finish().await;
}
