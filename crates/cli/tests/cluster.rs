//! Several real `paygent serve` processes on one PostgreSQL database, as behind a load balancer: any instance
//! serves any request, decisions and kills reach the instance running the execution, events reach every
//! subscriber, and a dead instance's executions are taken over once, after its leases expire.

mod common;

use common::{Serve, agent_and_session, spawn_serve, wait_ready};
use futures::StreamExt;
use paygent_testkit::{ADMIN_TOKEN, eventually, hello_server, silent_server, status_is};
use serde_json::{Value, json};
use std::sync::atomic::Ordering;
use std::time::Duration;

const ADDR: &str = "0x1111111111111111111111111111111111111111";

struct Cluster {
    url: String,
    dir: std::path::PathBuf,
    instances: Vec<Serve>,
    bases: Vec<String>,
    http: reqwest::Client,
}

impl Cluster {
    /// `n` instances on a fresh database, started at once, with 4-second execution leases (long enough that a
    /// busy test machine does not look like a dead instance).
    async fn start(n: usize) -> Cluster {
        let url = paygent_testkit::create_postgres_database().await;
        let dir =
            std::env::temp_dir().join(format!("paygent-cluster-{}", uuid::Uuid::new_v4().simple()));
        let env = [
            ("DATABASE_URL", url.as_str()),
            ("PAYGENT_ADMIN_TOKEN", ADMIN_TOKEN),
            ("PAYGENT_DATA_DIR", dir.to_str().unwrap()),
            ("PAYGENT_LEASE_SECONDS", "4"),
            // Four tests run at once, three instances each, all on one PostgreSQL (100 connections at most).
            ("PAYGENT_DB_MAX_CONNECTIONS", "4"),
            ("PAYGENT_RATE_LIMIT", "0"),
        ];
        let started: Vec<(Serve, u16)> = (0..n).map(|_| spawn_serve(&env)).collect();
        let bases = started.iter().map(|(_, port)| wait_ready(*port)).collect();
        Cluster {
            url,
            dir,
            instances: started.into_iter().map(|(c, _)| c).collect(),
            bases,
            http: reqwest::Client::new(),
        }
    }

    async fn call(&self, on: usize, token: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}/api/v1{path}", self.bases[on]);
        let req = match body {
            Some(b) => self.http.post(url).json(&b),
            None => self.http.get(url),
        };
        let resp = req.bearer_auth(token).send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// How many executions instance `on` is driving now, from its metrics.
    async fn running(&self, on: usize) -> f64 {
        let url = format!("{}/metrics", self.bases[on]);
        let asked = self.http.get(url).bearer_auth(ADMIN_TOKEN).send().await;
        let text = asked.unwrap().text().await.unwrap();
        let samples = paygent_testkit::prometheus::parsed(&text).await;
        paygent_testkit::prometheus::sample(&samples, "paygent_executions_running", &[])
    }

    async fn key(&self, role: &str) -> String {
        let (_, k) = self
            .call(
                0,
                ADMIN_TOKEN,
                "/keys",
                Some(json!({"name": role, "role": role})),
            )
            .await;
        k["token"].as_str().unwrap().to_owned()
    }

    async fn execute(&self, on: usize, agent: &str, session: &str, steps: Value) -> String {
        let body = json!({"session_id": session, "steps": steps});
        let (status, e) = self.call(on, agent, "/agent/execute", Some(body)).await;
        assert_eq!(status, 202, "{e}");
        e["id"].as_str().unwrap().to_owned()
    }

    /// Polls an execution on instance `on` until `done` holds; panics after 30 s.
    async fn wait_for(
        &self,
        on: usize,
        token: &str,
        id: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let path = format!("/executions/{id}");
        let read = || async { self.call(on, token, &path, None).await.1 };
        let what = format!("execution {id} on instance {on} to reach the expected state");
        eventually(Duration::from_secs(30), &what, read, done).await
    }

    /// Approves on instance `on`; the approval must succeed.
    async fn approve(&self, on: usize, approver: &str, approval: &str) {
        let path = format!("/approvals/{approval}/approve");
        let (status, body) = self.call(on, approver, &path, Some(json!({}))).await;
        assert_eq!(status, 200, "{body}");
    }

    fn sigkill(&mut self, i: usize) {
        self.instances[i].kill().unwrap();
        self.instances[i].wait().unwrap();
    }

    async fn finish(mut self) {
        for child in &mut self.instances {
            let _ = child.kill();
            let _ = child.wait();
        }
        paygent_testkit::drop_postgres_database(&self.url).await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next JSON event on a live socket; panics after 10 s.
async fn next_event(socket: &mut Socket) -> Value {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("an event within 10 s")
            .unwrap()
            .unwrap();
        if let tokio_tungstenite::tungstenite::Message::Text(text) = frame {
            return serde_json::from_str(text.as_str()).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_kills_and_events_cross_instances() {
    let c = Cluster::start(3).await;
    let (agent, approver) = (c.key("agent").await, c.key("approver").await);
    let (_, session) = c.call(0, &agent, "/sessions", Some(json!({}))).await;
    let session = session["id"].as_str().unwrap().to_owned();
    let ws_url = format!(
        "{}/api/v1/ws?token={approver}&types=approval_required",
        c.bases[1].replace("http://", "ws://")
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();

    // Started on A; its payment waits for a person. B's socket hears of it, and B's approval resumes it on A.
    let (hello, hits) = hello_server().await;
    let steps = json!([
        {"tool": "transfer", "args": {"to": ADDR, "amount": "25", "currency": "USDC"}},
        {"tool": "http_get", "args": {"url": hello}},
    ]);
    let id = c.execute(0, &agent, &session, steps).await;
    let event = next_event(&mut socket).await;
    assert_eq!(event["type"], "approval_required", "{event}");
    let approval = event["data"]["id"].as_str().unwrap().to_owned();
    c.approve(1, &approver, &approval).await;
    let done = c.wait_for(2, &agent, &id, status_is("completed")).await;
    assert_eq!(done["steps"][1]["result"]["body"], "hello");
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // A kill sent to C aborts the step in flight on A: the peer sees the hang-up.
    let (silent, hung_up) = silent_server().await;
    let id = c
        .execute(
            0,
            &agent,
            &session,
            json!([{"tool": "http_get", "args": {"url": silent}}]),
        )
        .await;
    c.wait_for(0, &agent, &id, |e| e["steps"][0]["status"] == "running")
        .await;
    let (status, _) = c
        .call(
            2,
            &approver,
            &format!("/executions/{id}/cancel"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200);
    c.wait_for(1, &agent, &id, status_is("cancelled")).await;
    let hung = || async { hung_up.load(Ordering::SeqCst) };
    let what = "the step in flight to be aborted";
    eventually(Duration::from_secs(5), what, hung, |h| *h).await;
    c.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_instance_s_executions_are_taken_over_once() {
    let mut c = Cluster::start(3).await;
    let (agent, approver) = (c.key("agent").await, c.key("approver").await);
    let (_, session) = c.call(1, &agent, "/sessions", Some(json!({}))).await;
    let session = session["id"].as_str().unwrap().to_owned();
    let (hello_paused, hits_paused) = hello_server().await;
    let (hello_running, hits_running) = hello_server().await;

    // A runs one execution waiting for a person and one in the middle of a durable wait, then dies.
    let paused = c
        .execute(
            0,
            &agent,
            &session,
            json!([
                {"tool": "transfer", "args": {"to": ADDR, "amount": "25", "currency": "USDC"}},
                {"tool": "http_get", "args": {"url": hello_paused}},
            ]),
        )
        .await;
    let running = c
        .execute(
            0,
            &agent,
            &session,
            json!([
                {"tool": "wait", "args": {"seconds": 2}},
                {"tool": "http_get", "args": {"url": hello_running}},
            ]),
        )
        .await;
    let waiting = c
        .wait_for(1, &agent, &paused, status_is("awaiting_approval"))
        .await;
    c.wait_for(1, &agent, &running, |e| {
        e["steps"][0]["status"] == "running"
    })
    .await;
    c.sigkill(0);

    let approval = waiting["steps"][0]["approval_id"].as_str().unwrap();
    c.approve(1, &approver, approval).await;
    let done = c.wait_for(2, &agent, &paused, status_is("completed")).await;
    assert_eq!(done["steps"][0]["result"]["status"], "authorized");
    c.wait_for(2, &agent, &running, status_is("completed"))
        .await;
    // Taken over once each: every step ran once, and the one payment was made once. Once no live instance
    // drives an execution, none can run a step again (an ended execution's lease is never claimed).
    let running = || async { c.running(1).await + c.running(2).await };
    let what = "the live instances to drive no execution";
    eventually(Duration::from_secs(10), what, running, |n| *n == 0.0).await;
    assert_eq!(hits_paused.load(Ordering::SeqCst), 1);
    assert_eq!(hits_running.load(Ordering::SeqCst), 1);
    let (_, payments) = c
        .call(2, &agent, &format!("/payments?session_id={session}"), None)
        .await;
    assert_eq!(payments.as_array().unwrap().len(), 1, "{payments}");
    c.finish().await;
}

/// 300 concurrent $1 payments spread over three instances against a $50 limit: exactly 50 pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_one_budget() {
    let c = Cluster::start(3).await;
    let agent = c.key("agent").await;
    let (_, session) = c
        .call(
            1,
            &agent,
            "/sessions",
            Some(json!({"config": {"daily_limits": {"USDC": "50"}}})),
        )
        .await;
    let session = session["id"].as_str().unwrap().to_owned();
    let payments = (0..300).map(|i| {
        let body =
            json!({"session_id": session, "amount": "1", "currency": "USDC", "recipient": ADDR});
        let (c, agent) = (&c, &agent);
        async move { c.call(i % 3, agent, "/payments", Some(body)).await.1 }
    });
    let results = futures::future::join_all(payments).await;
    let authorized = results
        .iter()
        .filter(|p| p["status"] == "authorized")
        .count();
    let denied = results
        .iter()
        .filter(|p| p["reason"] == "budget_exceeded")
        .count();
    assert_eq!((authorized, denied), (50, 250), "{results:?}");
    let (_, budget) = c
        .call(2, &agent, &format!("/sessions/{session}/budget"), None)
        .await;
    assert_eq!(budget["currencies"]["USDC"]["spent"], "50");
    c.finish().await;
}

/// The database goes away for 5 s: requests in the meantime get 503 with Retry-After (never a 500, never half a
/// write), readiness says so, and once it is back the same requests, retried with their idempotency keys, each
/// make one payment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_gives_503_and_heals() {
    let url = paygent_testkit::create_postgres_database().await;
    let target = url
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap()
        .to_owned();
    let link = paygent_testkit::DatabaseLink::to(&target).await;
    let through_link = url.replacen(&target, &format!("127.0.0.1:{}", link.port), 1);
    let dir =
        std::env::temp_dir().join(format!("paygent-outage-{}", uuid::Uuid::new_v4().simple()));
    let env = [
        ("DATABASE_URL", through_link.as_str()),
        ("PAYGENT_ADMIN_TOKEN", ADMIN_TOKEN),
        ("PAYGENT_DATA_DIR", dir.to_str().unwrap()),
        ("PAYGENT_RATE_LIMIT", "0"),
    ];
    let (mut child, port) = spawn_serve(&env);
    let base = wait_ready(port);
    let http = reqwest::Client::new();
    let pay = |token: String, session: String, key: String| {
        let req = http
            .post(format!("{base}/api/v1/payments"))
            .bearer_auth(token)
            .json(
                &json!({"session_id": session, "amount": "1", "currency": "USDC",
                "recipient": ADDR, "idempotency_key": key}),
            );
        async move {
            let resp = req.send().await.unwrap();
            let retry_after = resp.headers().get("retry-after").cloned();
            (
                resp.status().as_u16(),
                retry_after,
                resp.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let post = |path: &str, token: &str, body: Value| {
        http.post(format!("{base}/api/v1{path}"))
            .bearer_auth(token.to_owned())
            .json(&body)
            .send()
    };
    let (agent, session) = agent_and_session(&http, &base, ADMIN_TOKEN).await;
    assert_eq!(
        pay(agent.clone(), session.clone(), "before".into()).await.0,
        201
    );

    link.cut();
    let outage = tokio::time::Instant::now();
    let mut attempts = 0;
    while outage.elapsed() < Duration::from_secs(5) {
        let (status, retry_after, problem) =
            pay(agent.clone(), session.clone(), format!("during-{attempts}")).await;
        assert_eq!(status, 503, "{problem}");
        assert!(retry_after.is_some(), "503 says when to retry");
        assert_eq!(
            problem["type"], "urn:paygent:problem:unavailable",
            "{problem}"
        );
        attempts += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503, "not ready without its database");
    link.restore();

    let ready = || async {
        http.get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .status()
    };
    let what = "ready again once the database is back";
    eventually(Duration::from_secs(10), what, ready, |s| *s == 200).await;
    for i in 0..attempts {
        let (status, _, p) = pay(agent.clone(), session.clone(), format!("during-{i}")).await;
        assert!(status == 201 || status == 200, "{status} {p}");
        let (again, _, same) = pay(agent.clone(), session.clone(), format!("during-{i}")).await;
        assert_eq!(
            same["id"], p["id"],
            "{again}: a retry finds the same payment"
        );
    }
    let list: Value = http
        .get(format!(
            "{base}/api/v1/payments?session_id={session}&limit=500"
        ))
        .bearer_auth(&agent)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        list.as_array().unwrap().len(),
        attempts + 1,
        "nothing lost, nothing doubled"
    );
    // Live events flow again: a socket opened after the outage hears the next approval request.
    let ws_url = format!(
        "{}/api/v1/ws?token={ADMIN_TOKEN}&types=approval_required",
        base.replace("http://", "ws://")
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
    let big = json!({"session_id": session, "amount": "25", "currency": "USDC", "recipient": ADDR});
    let resp = post("/payments", &agent, big).await.unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(next_event(&mut socket).await["type"], "approval_required");
    child.kill().unwrap();
    child.wait().unwrap();
    paygent_testkit::drop_postgres_database(&url).await;
    let _ = std::fs::remove_dir_all(dir);
}
