//! Scenarios that measure a running Paygent from the outside, as its clients would. Each reports latency
//! percentiles and throughput; none asserts a timing. The same code runs in a tiny mode inside the test suite,
//! so the harness cannot rot.

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

mod spend;
pub use spend::spend_picture;

/// A running server and an admin key for it.
#[derive(Clone)]
pub struct Target {
    pub base: String,
    pub admin: String,
    http: reqwest::Client,
}

/// How much work each scenario does.
#[derive(Debug, Clone)]
pub struct Scale {
    /// Requests per load scenario and concurrency level.
    pub requests: usize,
    /// Trials of the one-at-a-time scenarios (round trip, kill, resume, fan-out).
    pub trials: usize,
    /// Sockets for the fan-out and footprint scenarios.
    pub sockets: usize,
    /// Pending approvals stored for the footprint scenario.
    pub pending: usize,
    /// When set, the guard, approval and decision scenarios run this long instead of `requests` operations, and
    /// report each 5-second window.
    pub seconds: Option<u64>,
    /// How many requests a decisions run files before it decides them: `requests` when unset.
    pub filed: Option<usize>,
}

impl Scale {
    pub fn full() -> Scale {
        Scale {
            requests: 2000,
            trials: 200,
            sockets: 1000,
            pending: 100_000,
            seconds: None,
            filed: None,
        }
    }

    pub fn tiny() -> Scale {
        Scale {
            requests: 20,
            trials: 3,
            sockets: 5,
            pending: 20,
            seconds: None,
            filed: None,
        }
    }

    /// How long a load scenario runs: `requests` operations, or `seconds`.
    fn until(&self) -> Until {
        match self.seconds {
            Some(s) => Until::Elapsed(Duration::from_secs(s)),
            None => Until::Count(self.requests),
        }
    }

    /// A scenario's name, with how long it ran when it ran for a time.
    fn named(&self, scenario: &str) -> String {
        match self.seconds {
            Some(s) => format!("{scenario}, sustained {s} s"),
            None => scenario.to_owned(),
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    pub scenario: String,
    pub concurrency: usize,
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Completed operations per second over the whole run.
    pub per_second: f64,
    pub note: String,
    /// Completed operations per second in each 5-second window of a sustained run (the last may be shorter).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<f64>,
}

impl Measurement {
    fn from_latencies(
        scenario: &str,
        concurrency: usize,
        mut lat: Vec<Duration>,
        wall: Duration,
        note: String,
    ) -> Self {
        lat.sort();
        let pick = |q: f64| {
            lat.get(((lat.len() as f64 * q).ceil() as usize).saturating_sub(1))
                .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        };
        Measurement {
            scenario: scenario.to_owned(),
            concurrency,
            count: lat.len(),
            p50_ms: pick(0.50),
            p99_ms: pick(0.99),
            max_ms: lat.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
            per_second: lat.len() as f64 / wall.as_secs_f64().max(f64::EPSILON),
            note,
            windows: Vec::new(),
        }
    }

    /// A load run's figures; a sustained run's with its 5-second windows, also in the note.
    fn from_run(scenario: &str, concurrency: usize, run: Run) -> Self {
        let windows = match run.until {
            Until::Elapsed(planned) => windows(&run.done, planned, run.wall),
            Until::Count(_) => Vec::new(),
        };
        let note = match windows.is_empty() {
            true => String::new(),
            false => {
                let each: Vec<String> = windows.iter().map(|w| format!("{w:.0}")).collect();
                format!("per s, each 5 s: {}", each.join(" · "))
            }
        };
        Measurement {
            windows,
            ..Measurement::from_latencies(scenario, concurrency, run.lat, run.wall, note)
        }
    }
}

/// The length of a sustained run's windows.
const WINDOW: Duration = Duration::from_secs(5);

/// Completions per second in each 5-second window of a run `planned` long, given when each completed; the last
/// window takes in what was still in flight when the time was up (it lasts until `wall`).
fn windows(done: &[Duration], planned: Duration, wall: Duration) -> Vec<f64> {
    let n = (planned.as_secs_f64() / WINDOW.as_secs_f64())
        .ceil()
        .max(1.0) as usize;
    let mut counts = vec![0usize; n];
    for d in done {
        let i = (d.as_secs_f64() / WINDOW.as_secs_f64()) as usize;
        if let Some(c) = counts.get_mut(i.min(n.saturating_sub(1))) {
            *c += 1;
        }
    }
    counts
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let from = WINDOW.as_secs_f64() * i as f64;
            let length = match i + 1 == n {
                true => wall.as_secs_f64() - from,
                false => WINDOW.as_secs_f64(),
            };
            *c as f64 / length.max(f64::EPSILON)
        })
        .collect()
}

const ADDR: &str = "0x1111111111111111111111111111111111111111";

/// A policy with every kind of rule the guard weighs, none of which the scenarios break: an allow list of 1,000
/// payees (the scenarios' among them) and a deny list of 500, velocity rules per session (count and dollars, and
/// identical payments) and per agent, and a two-person quorum above $20.
pub fn governed_policy() -> Value {
    let address = |i: usize| format!("0x{i:040x}");
    let mut allow: Vec<String> = (1..1000).map(|i| address(i + 10_000)).collect();
    allow.push(ADDR.to_owned());
    let deny: Vec<String> = (1..=500).map(|i| address(i + 20_000)).collect();
    json!({
        "max_pending_approvals": 100_000,
        "payees": {"allow": allow, "deny": deny, "outside_allow": "deny"},
        "velocity": [
            {"per_seconds": 60, "max_payments": 1_000_000, "max_usd": "100000000"},
            {"per_seconds": 60, "max_identical": 1_000_000},
            {"per_seconds": 3600, "scope": "agent", "max_payments": 1_000_000},
        ],
        "quorums": [{"above_usd": "20", "approvals_required": 2}],
    })
}

impl Target {
    pub fn new(base: &str, admin: &str) -> Target {
        Target {
            base: base.trim_end_matches('/').to_owned(),
            admin: admin.to_owned(),
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()
                .expect("http client"),
        }
    }

    async fn call(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut req = self
            .http
            .request(method, format!("{}/api/v1{path}", self.base))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("calling {path}"))?;
        let status = resp.status();
        let value: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{path}: {status} {value}");
        }
        Ok(value)
    }

    /// `GET path` as the admin.
    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(&self.admin, reqwest::Method::GET, path, None)
            .await
    }

    async fn post(&self, token: &str, path: &str, body: Value) -> anyhow::Result<Value> {
        self.call(token, reqwest::Method::POST, path, Some(body))
            .await
    }

    /// Replaces the default policy's rules, as an admin would.
    pub async fn set_default_policy(&self, rules: Value) -> anyhow::Result<()> {
        self.call(
            &self.admin,
            reqwest::Method::PUT,
            "/policies/default",
            Some(rules),
        )
        .await
        .map(drop)
    }

    async fn key(&self, role: &str) -> anyhow::Result<String> {
        let k = self
            .post(
                &self.admin,
                "/keys",
                json!({"name": format!("bench {role}"), "role": role}),
            )
            .await?;
        Ok(k["token"].as_str().context("token")?.to_owned())
    }

    async fn session(&self, agent: &str) -> anyhow::Result<String> {
        let s = self
            .post(agent, "/sessions", json!({"name": "bench"}))
            .await?;
        Ok(s["id"].as_str().context("id")?.to_owned())
    }

    /// Starts an execution of `steps` on the session; the execution as the server answered.
    async fn execute(&self, agent: &str, session: &str, steps: Value) -> anyhow::Result<Value> {
        let body = json!({"session_id": session, "steps": steps});
        self.post(agent, "/agent/execute", body).await
    }

    async fn pay(&self, agent: &str, session: &str, amount: &str) -> anyhow::Result<Value> {
        let body =
            json!({"session_id": session, "amount": amount, "currency": "USDC", "recipient": ADDR});
        self.post(agent, "/payments", body).await
    }

    /// The `pay` tool called over streamable HTTP as an MCP client sends it: one JSON-RPC POST to `/mcp`, its
    /// answer read from the event stream; the payment's structured content.
    async fn pay_over_mcp(
        &self,
        agent: &str,
        session: &str,
        amount: &str,
    ) -> anyhow::Result<Value> {
        let arguments =
            json!({"session_id": session, "amount": amount, "currency": "USDC", "recipient": ADDR});
        let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "pay", "arguments": arguments}});
        let resp = self
            .http
            .post(format!("{}/mcp", self.base))
            .bearer_auth(agent)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-06-18")
            .json(&call)
            .send()
            .await?;
        let status = resp.status();
        let text = resp.text().await?;
        let data = text
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(str::trim)
            .rfind(|d| !d.is_empty())
            .with_context(|| format!("/mcp: {status} {text}"))?;
        let answer: Value = serde_json::from_str(data)?;
        Ok(answer["result"]["structuredContent"].clone())
    }

    async fn socket(&self, token: &str) -> anyhow::Result<Ws> {
        let url = format!(
            "{}/api/v1/ws?token={token}",
            self.base.replace("http://", "ws://")
        );
        // tungstenite's default 128 KiB read buffer per socket would put 128 MB of the harness's own page
        // faults into the first fan-out event.
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .read_buffer_size(4 * 1024);
        Ok(
            tokio_tungstenite::connect_async_with_config(url, Some(config), true)
                .await?
                .0,
        )
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next JSON text message on a socket.
async fn next_json(ws: &mut Ws) -> anyhow::Result<Value> {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .context("no message within 30 s")?
            .context("socket closed")??;
        if let Message::Text(t) = frame {
            return Ok(serde_json::from_str(t.as_str())?);
        }
    }
}

/// How long a load run goes on.
#[derive(Debug, Clone, Copy)]
pub enum Until {
    /// This many operations.
    Count(usize),
    /// No new operation starts after this long.
    Elapsed(Duration),
}

impl From<usize> for Until {
    fn from(n: usize) -> Until {
        Until::Count(n)
    }
}

/// What a load run measured: each operation's latency, when each completed, and the wall time.
struct Run {
    until: Until,
    lat: Vec<Duration>,
    done: Vec<Duration>,
    wall: Duration,
}

/// Runs operations over `concurrency` workers until `until`.
async fn load<F, Fut>(concurrency: usize, until: impl Into<Until>, op: F) -> anyhow::Result<Run>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let until = until.into();
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers = (0..concurrency).map(|_| {
        let (op, next) = (op.clone(), next.clone());
        tokio::spawn(async move {
            let (mut lat, mut done) = (Vec::new(), Vec::new());
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let over = match until {
                    Until::Count(n) => i >= n,
                    Until::Elapsed(d) => started.elapsed() >= d,
                };
                if over {
                    return Ok::<_, anyhow::Error>((lat, done));
                }
                let t = Instant::now();
                op(i).await?;
                lat.push(t.elapsed());
                done.push(started.elapsed());
            }
        })
    });
    let (mut lat, mut done) = (Vec::new(), Vec::new());
    for w in futures::future::join_all(workers).await {
        let (l, d) = w??;
        lat.extend(l);
        done.extend(d);
    }
    Ok(Run {
        until,
        lat,
        done,
        wall: started.elapsed(),
    })
}

fn expect_status(v: &Value, status: &str) -> anyhow::Result<()> {
    if v["status"] != status {
        bail!("expected {status}, got {v}");
    }
    Ok(())
}

/// Scenario 1: payments under the threshold, each a durable decision.
pub async fn guard_auto(
    t: &Target,
    scale: &Scale,
    concurrency: usize,
) -> anyhow::Result<Measurement> {
    let agent = t.key("agent").await?;
    let session = t.session(&agent).await?;
    let (t2, a, s) = (t.clone(), agent.clone(), session.clone());
    let run = load(concurrency, scale.until(), move |_| {
        let (t, a, s) = (t2.clone(), a.clone(), s.clone());
        async move { expect_status(&t.pay(&a, &s, "1.00").await?, "authorized") }
    })
    .await?;
    let name = scale.named("guard, auto path");
    Ok(Measurement::from_run(&name, concurrency, run))
}

/// The guard's auto path through the MCP `pay` tool beside `POST /payments`, in the same run: rounds alternate
/// the two, so both see the same machine; the note gives MCP's overhead at p50 and p99.
pub async fn mcp_pay(
    t: &Target,
    scale: &Scale,
    concurrency: usize,
) -> anyhow::Result<Vec<Measurement>> {
    const ROUNDS: usize = 4;
    let agent = t.key("agent").await?;
    let session = t.session(&agent).await?;
    let per_round = scale.requests.div_ceil(ROUNDS);
    let (mut rest, mut mcp) = ((Vec::new(), Duration::ZERO), (Vec::new(), Duration::ZERO));
    for _ in 0..ROUNDS {
        for over_mcp in [false, true] {
            let (t2, a, s) = (t.clone(), agent.clone(), session.clone());
            let Run { lat, wall, .. } = load(concurrency, per_round, move |_| {
                let (t, a, s) = (t2.clone(), a.clone(), s.clone());
                async move {
                    let p = match over_mcp {
                        true => t.pay_over_mcp(&a, &s, "1.00").await?,
                        false => t.pay(&a, &s, "1.00").await?,
                    };
                    expect_status(&p, "authorized")
                }
            })
            .await?;
            let side = if over_mcp { &mut mcp } else { &mut rest };
            side.0.extend(lat);
            side.1 += wall;
        }
    }
    let rest = Measurement::from_latencies(
        "pay, POST /payments",
        concurrency,
        rest.0,
        rest.1,
        String::new(),
    );
    let mut mcp =
        Measurement::from_latencies("pay, MCP tool", concurrency, mcp.0, mcp.1, String::new());
    mcp.note = format!(
        "MCP adds {:.2} ms at p50, {:.2} ms at p99",
        mcp.p50_ms - rest.p50_ms,
        mcp.p99_ms - rest.p99_ms
    );
    Ok(vec![rest, mcp])
}

/// Files approval requests at `concurrency` until `until`; returns their ids with the measurement.
async fn file_approvals(
    t: &Target,
    until: Until,
    concurrency: usize,
) -> anyhow::Result<(Vec<String>, Run)> {
    let agent = t.key("agent").await?;
    let session = t.session(&agent).await?;
    let ids = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (t2, a, s, sink) = (t.clone(), agent.clone(), session.clone(), ids.clone());
    let run = load(concurrency, until, move |_| {
        let (t, a, s, sink) = (t2.clone(), a.clone(), s.clone(), sink.clone());
        async move {
            let p = t.pay(&a, &s, "25.00").await?;
            expect_status(&p, "pending_approval")?;
            sink.lock()
                .expect("lock")
                .push(p["approval_id"].as_str().context("approval_id")?.to_owned());
            Ok(())
        }
    })
    .await?;
    let ids = std::mem::take(&mut *ids.lock().expect("lock"));
    Ok((ids, run))
}

/// Files `n` requests at c=16, a fresh agent key for each 50,000: half of what one key may have waiting on
/// people in the harness's policy, so a sustained decisions run can file as many as it needs.
async fn file_pending(t: &Target, n: usize) -> anyhow::Result<Vec<String>> {
    const PER_KEY: usize = 50_000;
    let mut ids = Vec::with_capacity(n);
    while ids.len() < n {
        let chunk = PER_KEY.min(n - ids.len());
        ids.extend(file_approvals(t, Until::Count(chunk), 16).await?.0);
    }
    Ok(ids)
}

/// Scenario 2: payments over the threshold.
pub async fn approval_creation(
    t: &Target,
    scale: &Scale,
    concurrency: usize,
) -> anyhow::Result<Measurement> {
    let (_, run) = file_approvals(t, scale.until(), concurrency).await?;
    let name = scale.named("approval creation");
    Ok(Measurement::from_run(&name, concurrency, run))
}

/// Scenario 3: approve calls on distinct pending requests, `filed` of them (or `requests`) filed first. A
/// sustained run that decides them all before its time is up fails: file more.
pub async fn decisions(
    t: &Target,
    scale: &Scale,
    concurrency: usize,
) -> anyhow::Result<Measurement> {
    let ids = file_pending(t, scale.filed.unwrap_or(scale.requests)).await?;
    let approver = t.key("approver").await?;
    let ids = Arc::new(ids);
    let t2 = t.clone();
    let run = load(concurrency, scale.until(), move |i| {
        let (t, approver, ids) = (t2.clone(), approver.clone(), ids.clone());
        async move {
            let id = ids.get(i).with_context(|| {
                format!(
                    "all {} pending requests were decided before the time was up: raise --requests",
                    ids.len()
                )
            })?;
            let d = t
                .post(&approver, &format!("/approvals/{id}/approve"), json!({}))
                .await?;
            expect_status(&d, "approved")
        }
    })
    .await?;
    Ok(Measurement::from_run(
        &scale.named("decision"),
        concurrency,
        run,
    ))
}

/// Scenario 4: agent pays $25, the approver's socket gets the request and approves over the socket, the agent
/// executes the approved payment. Only machine time: no human delay.
pub async fn round_trip(t: &Target, scale: &Scale) -> anyhow::Result<Measurement> {
    let agent = t.key("agent").await?;
    let approver = t.key("approver").await?;
    let session = t.session(&agent).await?;
    let mut ws = t.socket(&approver).await?;
    let mut lat = Vec::new();
    let started = Instant::now();
    for _ in 0..scale.trials {
        let t0 = Instant::now();
        let p = t.pay(&agent, &session, "25.00").await?;
        let approval = p["approval_id"].clone();
        loop {
            let m = next_json(&mut ws).await?;
            if m["type"] == "approval_required" && m["data"]["id"] == approval {
                break;
            }
        }
        ws.send(Message::Text(
            json!({"type": "approve", "id": 1, "request_id": approval})
                .to_string()
                .into(),
        ))
        .await?;
        loop {
            let m = next_json(&mut ws).await?;
            if m["type"] == "ack" {
                break;
            }
            if m["type"] == "error" {
                bail!("approve failed: {m}");
            }
        }
        let paid = t
            .post(
                &agent,
                "/payments/execute-approved",
                json!({"approval_id": approval}),
            )
            .await?;
        expect_status(&paid, "authorized")?;
        lat.push(t0.elapsed());
    }
    Ok(Measurement::from_latencies(
        "round trip",
        1,
        lat,
        started.elapsed(),
        "pay → event → approve → execute".into(),
    ))
}

/// An HTTP server that accepts and never answers; it reports each accepted connection and each hang-up.
async fn silent_peer() -> anyhow::Result<(
    String,
    tokio::sync::mpsc::UnboundedReceiver<(bool, Instant)>,
)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/never", listener.local_addr()?);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf).await;
                let _ = tx.send((true, Instant::now()));
                while let Ok(n) = socket.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
                let _ = tx.send((false, Instant::now()));
            });
        }
    });
    Ok((url, rx))
}

/// An HTTP server that answers 200 and reports when each request arrives.
async fn hello_peer() -> anyhow::Result<(String, tokio::sync::mpsc::UnboundedReceiver<Instant>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hello", listener.local_addr()?);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf).await;
                let _ = tx.send(Instant::now());
                let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
                let _ = socket.write_all(reply).await;
            });
        }
    });
    Ok((url, rx))
}

/// Scenario 5a: from the cancel request to the in-flight step observed aborted (the peer sees the hang-up).
pub async fn kill_latency(t: &Target, scale: &Scale) -> anyhow::Result<Measurement> {
    let agent = t.key("agent").await?;
    let session = t.session(&agent).await?;
    let (url, mut peer) = silent_peer().await?;
    let mut lat = Vec::new();
    let started = Instant::now();
    for _ in 0..scale.trials {
        let steps = json!([{"tool": "http_get", "args": {"url": url}}]);
        let e = t.execute(&agent, &session, steps).await?;
        let id = e["id"].as_str().context("id")?.to_owned();
        match peer.recv().await {
            Some((true, _)) => {}
            other => bail!("expected the step to connect, got {other:?}"),
        }
        let t0 = Instant::now();
        t.post(&agent, &format!("/executions/{id}/cancel"), json!({}))
            .await?;
        match peer.recv().await {
            Some((false, at)) => lat.push(at.saturating_duration_since(t0)),
            other => bail!("expected the step to hang up, got {other:?}"),
        }
    }
    Ok(Measurement::from_latencies(
        "kill latency",
        1,
        lat,
        started.elapsed(),
        "cancel request → step aborted".into(),
    ))
}

/// Scenario 5b: from the approve request to the next step starting.
pub async fn resume_latency(t: &Target, scale: &Scale) -> anyhow::Result<Measurement> {
    let agent = t.key("agent").await?;
    let approver = t.key("approver").await?;
    let session = t.session(&agent).await?;
    let (url, mut peer) = hello_peer().await?;
    let mut ws = t.socket(&approver).await?;
    let mut lat = Vec::new();
    let started = Instant::now();
    for _ in 0..scale.trials {
        let steps = json!([
            {"tool": "transfer", "args": {"to": ADDR, "amount": "25", "currency": "USDC"}},
            {"tool": "http_get", "args": {"url": url}},
        ]);
        let e = t.execute(&agent, &session, steps).await?;
        let approval = loop {
            let m = next_json(&mut ws).await?;
            if m["type"] == "execution_paused" && m["data"]["id"] == e["id"] {
                break m["data"]["approval_id"]
                    .as_str()
                    .context("approval_id")?
                    .to_owned();
            }
        };
        let t0 = Instant::now();
        t.post(
            &approver,
            &format!("/approvals/{approval}/approve"),
            json!({}),
        )
        .await?;
        let at = peer.recv().await.context("the next step never started")?;
        lat.push(at.saturating_duration_since(t0));
    }
    Ok(Measurement::from_latencies(
        "resume latency",
        1,
        lat,
        started.elapsed(),
        "approve request → next step starts".into(),
    ))
}

/// Scenario 5c: how late after its deadline an overdue request is expired (the sweeper), seen as the `expired`
/// event's transaction time minus the request's deadline.
pub async fn timeout_precision(t: &Target, scale: &Scale) -> anyhow::Result<Measurement> {
    let agent = t.key("agent").await?;
    let approver = t.key("approver").await?;
    let s = t
        .post(
            &agent,
            "/sessions",
            json!({"config": {"approval_timeout_seconds": 1}}),
        )
        .await?;
    let session = s["id"].as_str().context("id")?.to_owned();
    let mut ws = t.socket(&approver).await?;
    let trials = scale.trials.min(20);
    let mut lat = Vec::new();
    let started = Instant::now();
    for _ in 0..trials {
        let p = t.pay(&agent, &session, "25.00").await?;
        let approval = p["approval_id"].clone();
        let deadline = loop {
            let m = next_json(&mut ws).await?;
            if m["type"] == "approval_required" && m["data"]["id"] == approval {
                break unix_seconds(m["data"]["deadline"].as_str().context("deadline")?)?;
            }
        };
        let expired_at = loop {
            let m = next_json(&mut ws).await?;
            if m["type"] == "expired" && m["data"]["id"] == approval {
                break unix_seconds(m["at"].as_str().context("at")?)?;
            }
        };
        lat.push(Duration::from_secs_f64((expired_at - deadline).max(0.0)));
    }
    let note = "deadline → expired by the sweeper".to_owned();
    Ok(Measurement::from_latencies(
        "timeout precision",
        1,
        lat,
        started.elapsed(),
        note,
    ))
}

/// Scenario 6: from an event's transaction time to its receipt, with `clients` sockets connected.
pub async fn fanout(t: &Target, scale: &Scale, clients: usize) -> anyhow::Result<Measurement> {
    let agent = t.key("agent").await?;
    let approver = t.key("approver").await?;
    let session = t.session(&agent).await?;
    let mut sockets = Vec::with_capacity(clients);
    for _ in 0..clients {
        sockets.push(t.socket(&approver).await?);
    }
    let mut event = async || {
        t.pay(&agent, &session, "25.00").await?;
        let received = futures::future::join_all(sockets.iter_mut().map(|ws| async move {
            let m = next_json(ws).await?;
            let at = m["at"].as_str().context("at")?;
            let sent = unix_seconds(at)?;
            Ok::<_, anyhow::Error>(Duration::from_secs_f64((now_unix() - sent).max(0.0)))
        }))
        .await;
        received.into_iter().collect::<anyhow::Result<Vec<_>>>()
    };
    // The first event is reported apart: each socket's first frame grows its buffers.
    let first = event().await?.into_iter().max().unwrap_or_default();
    let mut lat = Vec::new();
    let started = Instant::now();
    for _ in 0..scale.trials {
        lat.extend(event().await?);
    }
    let note = format!(
        "event transaction time → received (same clock); the first event, not counted, reached all in {:.1} ms",
        first.as_secs_f64() * 1e3
    );
    Ok(Measurement::from_latencies(
        &format!("fan-out, {clients} clients"),
        1,
        lat,
        started.elapsed(),
        note,
    ))
}

fn now_unix() -> f64 {
    chrono::Utc::now().timestamp_micros() as f64 / 1e6
}

/// Seconds since the epoch of an RFC 3339 timestamp.
fn unix_seconds(s: &str) -> anyhow::Result<f64> {
    let at =
        chrono::DateTime::parse_from_rfc3339(s).with_context(|| format!("bad timestamp {s:?}"))?;
    Ok(at.timestamp_micros() as f64 / 1e6)
}

/// Scenario 7: the database's own rate at the same work: one single-row transaction per operation, with the
/// same settings Paygent uses, at `concurrency`.
pub async fn ceiling(
    database_url: &str,
    scale: &Scale,
    concurrency: usize,
) -> anyhow::Result<Measurement> {
    const CREATE: &str =
        "CREATE TABLE IF NOT EXISTS bench_ceiling (id TEXT PRIMARY KEY, at TEXT NOT NULL)";
    const INSERT: &str = "INSERT INTO bench_ceiling (id, at) VALUES ($1, $2)";
    const AT: &str = "2026-01-01T00:00:00.000000Z";
    let Run { lat, wall, .. } = if database_url.starts_with("sqlite:") {
        // The one writer, as Paygent has it, each transaction committed on its own.
        let path =
            <sqlx::sqlite::SqliteConnectOptions as std::str::FromStr>::from_str(database_url)?
                .get_filename()
                .to_owned();
        let conn = rusqlite::Connection::open(path)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 5000; PRAGMA synchronous = FULL;",
        )?;
        conn.execute_batch(CREATE)?;
        let conn = Arc::new(std::sync::Mutex::new(conn));
        load(concurrency, scale.requests, move |_| {
            let conn = conn.clone();
            async move {
                tokio::task::spawn_blocking(move || {
                    let c = conn.lock().expect("ceiling connection");
                    c.execute_batch("BEGIN IMMEDIATE")?;
                    c.prepare_cached(INSERT)?
                        .execute((uuid::Uuid::new_v4().to_string(), AT))?;
                    c.execute_batch("COMMIT")
                })
                .await??;
                Ok(())
            }
        })
        .await?
    } else {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(concurrency as u32)
            .connect(database_url)
            .await?;
        sqlx::query(CREATE).execute(&pool).await?;
        load(concurrency, scale.requests, move |_| {
            let pool = pool.clone();
            async move {
                let mut tx = pool.begin().await?;
                sqlx::query(INSERT)
                    .bind(uuid::Uuid::new_v4().to_string())
                    .bind(AT)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }
        })
        .await?
    };
    Ok(Measurement::from_latencies(
        "database ceiling",
        concurrency,
        lat,
        wall,
        "one single-row transaction".into(),
    ))
}

/// The server's resident memory, from /proc.
pub fn rss_mb(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmRSS")?;
    Ok(kb / 1024.0)
}

/// Scenario 8: resident memory as found, then with `scale.pending` approvals stored, then with `scale.sockets`
/// sockets connected.
pub async fn footprint(t: &Target, scale: &Scale, pid: u32) -> anyhow::Result<Vec<(String, f64)>> {
    let mut out = vec![("at start of scenario".to_owned(), rss_mb(pid)?)];
    file_approvals(t, Until::Count(scale.pending), 16).await?;
    out.push((
        format!("{} pending approvals stored", scale.pending),
        rss_mb(pid)?,
    ));
    let approver = t.key("approver").await?;
    let mut sockets = Vec::with_capacity(scale.sockets);
    for _ in 0..scale.sockets {
        sockets.push(t.socket(&approver).await?);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    out.push((format!("{} sockets connected", scale.sockets), rss_mb(pid)?));
    Ok(out)
}

/// Every scenario, in order, as measurement lines; the footprint comes back separately.
pub async fn all(
    t: &Target,
    database_url: &str,
    scale: &Scale,
    pid: u32,
) -> anyhow::Result<(Vec<Measurement>, Vec<(String, f64)>)> {
    let idle = ("idle, fresh start".to_owned(), rss_mb(pid)?);
    let mut m = Vec::new();
    for c in [1, 16] {
        m.push(guard_auto(t, scale, c).await?);
    }
    for c in [1, 16] {
        m.extend(mcp_pay(t, scale, c).await?);
    }
    for c in [1, 16] {
        m.push(approval_creation(t, scale, c).await?);
    }
    for c in [1, 16] {
        m.push(decisions(t, scale, c).await?);
    }
    m.push(round_trip(t, scale).await?);
    m.push(kill_latency(t, scale).await?);
    m.push(resume_latency(t, scale).await?);
    m.push(timeout_precision(t, scale).await?);
    m.push(fanout(t, scale, 1).await?);
    m.push(
        fanout(
            t,
            &Scale {
                trials: scale.trials.min(50),
                ..scale.clone()
            },
            scale.sockets,
        )
        .await?,
    );
    m.push(ceiling(database_url, scale, 16).await?);
    let mut footprint = footprint(t, scale, pid).await?;
    footprint.insert(0, idle);
    Ok((m, footprint))
}

/// A paid x402 resource on a local chain, and the wallet that pays it, for the payment scenario.
#[derive(Clone)]
pub struct PaidResource {
    /// The resource's URL; it costs $0.10.
    pub url: String,
    /// Which service answers there, in the measurements' names.
    pub service: String,
    /// The rails Paygent was started with; the direct client signs with the same wallet and token.
    pub rails: paygent_rails::RailsConfig,
}

impl PaidResource {
    /// The resource at `url`, paid on `chain` from its funded test wallet, with the config file that makes a
    /// `paygent serve` pay there (the wallet key goes in `PAYGENT_WALLET_KEY`, never in the file).
    pub fn on(
        chain: &paygent_testkit::chain::LocalChain,
        url: String,
        service: &str,
    ) -> (PaidResource, String) {
        let chain_config = paygent_rails::ChainConfig {
            id: chain.chain_id,
            name: "local".into(),
            rpc_url: chain.rpc.clone(),
            confirmations: 1,
        };
        let token = paygent_rails::TokenConfig {
            symbol: "USDC".into(),
            chain_id: chain.chain_id,
            address: chain.token,
            decimals: 6,
            eip712: Some(paygent_rails::Eip712Name {
                name: "USD Coin".into(),
                version: "2".into(),
            }),
        };
        let file = format!(
            "[[chains]]\nid = {}\nname = \"local\"\nrpc_url = \"{}\"\n\n[[tokens]]\nsymbol = \"USDC\"\n\
             decimals = 6\nchain_id = {}\naddress = \"{}\"\neip712_name = \"USD Coin\"\neip712_version = \"2\"\n",
            chain.chain_id, chain.rpc, chain.chain_id, chain.token
        );
        let mut rails = paygent_rails::RailsConfig {
            chains: vec![chain_config],
            tokens: vec![token],
            dexes: Vec::new(),
            wallets: Vec::new(),
        };
        rails
            .add_wallet_key(paygent_testkit::chain::PAYER)
            .expect("the test key is valid");
        let service = service.to_owned();
        (
            PaidResource {
                url,
                service,
                rails,
            },
            file,
        )
    }
}

/// Scenario 9: a $0.10 x402 payment to one service end to end (402, guard, EIP-712 signature, journal, paid
/// request, settlement on the local chain), through Paygent and, in the same run and in turn, by the reference
/// client (`@x402/fetch`) and by a minimal direct client with no guard. The differences are Paygent's overhead.
pub async fn x402_payment(
    t: &Target,
    scale: &Scale,
    paid: &PaidResource,
    reference: &mut paygent_testkit::chain::ReferenceClient,
) -> anyhow::Result<Vec<Measurement>> {
    let agent = t.key("agent").await?;
    let wallet = paid.rails.wallets.first().context("a wallet")?;
    let session = t
        .post(
            &agent,
            "/sessions",
            json!({"name": "bench x402", "wallet_address": wallet.address()}),
        )
        .await?;
    let session = session["id"].as_str().context("id")?.to_owned();
    let (mut through, mut by_reference, mut direct) = (Vec::new(), Vec::new(), Vec::new());
    let started = Instant::now();
    for _ in 0..scale.trials {
        let t0 = Instant::now();
        let body = json!({"session_id": session, "amount": "0.10", "currency": "USDC", "recipient": paid.url});
        let p = t.post(&agent, "/payments", body).await?;
        expect_status(&p, "executed")?;
        through.push(t0.elapsed());
        let (took, status) = reference.pay(&paid.url).await;
        if status != 200 {
            bail!("the reference client's payment answered {status}");
        }
        by_reference.push(took);
        let t0 = Instant::now();
        pay_directly(&t.http, paid).await?;
        direct.push(t0.elapsed());
    }
    let wall = started.elapsed();
    let [m_through, m_reference, m_direct] =
        [&mut through, &mut by_reference, &mut direct].map(|l| median_ms(l));
    let vs = |other: f64| m_through / other.max(f64::EPSILON);
    let note = format!(
        "p50 {:.2}x the reference client's ({:+.1} ms), {:.2}x the direct client's",
        vs(m_reference),
        m_through - m_reference,
        vs(m_direct)
    );
    let name = |who: &str| format!("x402 $0.10 to the {}, {who}", paid.service);
    Ok(vec![
        Measurement::from_latencies(&name("through Paygent"), 1, through, wall, note),
        Measurement::from_latencies(
            &name("reference client (@x402/fetch)"),
            1,
            by_reference,
            wall,
            String::new(),
        ),
        Measurement::from_latencies(
            &name("direct client (no guard)"),
            1,
            direct,
            wall,
            String::new(),
        ),
    ])
}

/// The paygent.toml that makes a `paygent serve` trade on `exchange` on `chain`: the test USDC, WETH (no EIP-712
/// domain) and the exchange as `local` (the wallet key goes in `PAYGENT_WALLET_KEY`, never in the file).
pub fn trading_config(
    chain: &paygent_testkit::chain::LocalChain,
    exchange: &paygent_testkit::uniswap::Uniswap,
) -> String {
    format!(
        "[prices]\nWETH = \"2000\"\n\n[[chains]]\nid = {id}\nname = \"local\"\nrpc_url = \"{rpc}\"\n\n\
         [[tokens]]\nsymbol = \"USDC\"\ndecimals = 6\nchain_id = {id}\naddress = \"{usdc}\"\n\
         eip712_name = \"USD Coin\"\neip712_version = \"2\"\n\n[[tokens]]\nsymbol = \"WETH\"\ndecimals = 18\n\
         chain_id = {id}\naddress = \"{weth}\"\n\n[[dexes]]\nname = \"local\"\nkind = \"uniswap_v2\"\n\
         chain_id = {id}\nrouter = \"{router}\"\nfactory = \"{factory}\"\n",
        id = chain.chain_id,
        rpc = chain.rpc,
        usdc = chain.token,
        weth = exchange.weth,
        router = exchange.router,
        factory = exchange.factory,
    )
}

/// Scenario: a $1 swap of test USDC for WETH on Uniswap V2 (from npm, on a local chain), through Paygent (an
/// execution's `swap` step: quote, guard, quote again, sign the approve and the swap, journal them, send them,
/// read the pool's event), and in turn in the same run by a direct client from the same wallet (quote, approve,
/// swap; no guard). Paygent's end is the `execution_completed` event on a socket. The difference is its overhead.
pub async fn swap(
    t: &Target,
    scale: &Scale,
    wallet: &str,
    (chain, exchange): (
        &paygent_testkit::chain::LocalChain,
        &paygent_testkit::uniswap::Uniswap,
    ),
) -> anyhow::Result<Vec<Measurement>> {
    let agent = t.key("agent").await?;
    let body = json!({"name": "bench swap", "wallet_address": wallet});
    let session = t.post(&agent, "/sessions", body).await?;
    let session = session["id"].as_str().context("id")?.to_owned();
    let mut ws = t.socket(&agent).await?;
    let steps = json!([{"tool": "swap", "args": {"amount_in": "1", "from": "USDC", "to": "WETH"}}]);
    let (mut through, mut direct) = (Vec::new(), Vec::new());
    let started = Instant::now();
    for _ in 0..scale.trials {
        let t0 = Instant::now();
        let e = t.execute(&agent, &session, steps.clone()).await?;
        loop {
            let m = next_json(&mut ws).await?;
            match (m["type"].as_str(), m["data"]["id"] == e["id"]) {
                (Some("execution_completed"), true) => break,
                (Some("execution_failed"), true) => bail!("the swap failed: {m}"),
                _ => {}
            }
        }
        through.push(t0.elapsed());
        let t0 = Instant::now();
        let one = paygent_testkit::uniswap::U256::from(1_000_000u64);
        exchange.swap_directly(chain, one).await;
        direct.push(t0.elapsed());
    }
    let wall = started.elapsed();
    let [m_through, m_direct] = [&mut through, &mut direct].map(|l| median_ms(l));
    let note = format!(
        "p50 {:.2}x the direct client's ({:+.1} ms)",
        m_through / m_direct.max(f64::EPSILON),
        m_through - m_direct
    );
    Ok(vec![
        Measurement::from_latencies("swap $1 USDC→WETH, through Paygent", 1, through, wall, note),
        Measurement::from_latencies(
            "swap $1 USDC→WETH, direct client (no guard)",
            1,
            direct,
            wall,
            String::new(),
        ),
    ])
}

/// The median of `l`, in milliseconds.
fn median_ms(l: &mut [Duration]) -> f64 {
    l.sort();
    l[l.len() / 2].as_secs_f64() * 1000.0
}

/// The x402 exchange with no guard and no bookkeeping: what any client must do at least.
async fn pay_directly(http: &reqwest::Client, paid: &PaidResource) -> anyhow::Result<()> {
    use paygent_rails::x402;
    let first = http.get(&paid.url).send().await?;
    let header = first
        .headers()
        .get(x402::V2_REQUIRED)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned);
    let body = first.bytes().await?;
    let offers = x402::parse_required(header.as_deref(), &body).map_err(anyhow::Error::msg)?;
    let token = paid.rails.tokens.first().context("a token")?;
    let wallet = paid.rails.wallets.first().context("a wallet")?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let auth = paygent_rails::sign_authorization(wallet, token, token.chain_id, &offers[0], now)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let id = format!("pay_{}", uuid::Uuid::new_v4().simple());
    let (name, value) = x402::payment_header(&offers[0], &auth, &id);
    let paid_resp = http.get(&paid.url).header(name, value).send().await?;
    if !paid_resp.status().is_success() {
        bail!("the direct payment answered {}", paid_resp.status());
    }
    Ok(())
}

/// An agent and its session, in the default tenant: who pays in the one-tenant scenarios.
pub async fn payer(t: &Target) -> anyhow::Result<(String, String)> {
    let agent = t.key("agent").await?;
    let session = t.session(&agent).await?;
    Ok((agent, session))
}

/// An agent and its session in each of `n` new tenants (made by the default tenant's admin): many tenants' writes
/// do not queue on one tenant's lock.
pub async fn tenant_payers(t: &Target, n: usize) -> anyhow::Result<Vec<(String, String)>> {
    let mut payers = Vec::with_capacity(n);
    for i in 0..n {
        let name = json!({"name": format!("bench tenant {i}")});
        let tenant = t.post(&t.admin, "/tenants", name).await?;
        let admin = tenant["admin_key"]["token"]
            .as_str()
            .context("admin token")?;
        let key = json!({"name": "bench agent", "role": "agent"});
        let agent = t.post(admin, "/keys", key).await?;
        let agent = agent["token"].as_str().context("agent token")?.to_owned();
        let session = t.session(&agent).await?;
        payers.push((agent, session));
    }
    Ok(payers)
}

/// Scenario 10: the guard's auto path at `concurrency`, requests spread round-robin over several instances of
/// one database (issue 9), each payer's over all of them, the payers (one tenant's, or many tenants') in turn.
pub async fn guard_spread(
    instances: &[Target],
    payers: &[(String, String)],
    scale: &Scale,
    concurrency: usize,
) -> anyhow::Result<Measurement> {
    let targets: Arc<Vec<Target>> = Arc::new(instances.to_vec());
    let payers: Arc<Vec<(String, String)>> = Arc::new(payers.to_vec());
    let (k, n) = (targets.len().max(1), payers.len().max(1));
    let Run { lat, wall, .. } = load(concurrency, scale.requests, move |i| {
        let (targets, payers) = (targets.clone(), payers.clone());
        async move {
            let (t, (a, s)) = (&targets[i % k], &payers[(i / k) % n]);
            expect_status(&t.pay(a, s, "1.00").await?, "authorized")
        }
    })
    .await?;
    let tenants = match n {
        1 => String::new(),
        n => format!(", {n} tenants"),
    };
    Ok(Measurement::from_latencies(
        &format!("guard, auto path, {k} instance(s){tenants}"),
        concurrency,
        lat,
        wall,
        String::new(),
    ))
}

/// Where the stop scenario puts its pending requests: straight into the server's database, as copies of one real
/// request (filing 100,000 through the API would measure filing, for minutes).
pub(crate) enum Seeder {
    Lite(Arc<std::sync::Mutex<rusqlite::Connection>>),
    Pg(sqlx::PgPool),
}

impl Seeder {
    async fn connect(database_url: &str) -> anyhow::Result<Seeder> {
        if database_url.starts_with("sqlite:") {
            let path =
                <sqlx::sqlite::SqliteConnectOptions as std::str::FromStr>::from_str(database_url)?
                    .get_filename()
                    .to_owned();
            let conn = rusqlite::Connection::open(path)?;
            conn.execute_batch("PRAGMA busy_timeout = 5000;")?;
            return Ok(Seeder::Lite(Arc::new(std::sync::Mutex::new(conn))));
        }
        Ok(Seeder::Pg(
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .connect(database_url)
                .await?,
        ))
    }

    /// Copies the pending request `template` `n` times, with ids of their own: a number, then the rest of a
    /// random UUID.
    async fn copy_pending(&self, template: &str, n: usize) -> anyhow::Result<()> {
        let rest = &uuid::Uuid::new_v4().to_string()[8..];
        const COLUMNS: &str = "tenant_id, session_id, NULL, tool, args, reason, usd_value, allowed_decisions, \
            'pending', requested_by, deadline, created_at";
        const INTO: &str = "INSERT INTO approval_requests (id, tenant_id, session_id, payment_id, tool, args, \
            reason, usd_value, allowed_decisions, status, requested_by, deadline, created_at)";
        match self {
            Seeder::Lite(conn) => {
                let sql = format!(
                    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n}) {INTO} \
                     SELECT printf('%08d', i) || '{rest}', {COLUMNS} \
                     FROM n, approval_requests WHERE id = ?1"
                );
                let (conn, template) = (conn.clone(), template.to_owned());
                tokio::task::spawn_blocking(move || {
                    conn.lock()
                        .expect("seeder")
                        .execute(&sql, [template])
                        .map(drop)
                })
                .await??;
            }
            Seeder::Pg(pool) => {
                let sql = format!(
                    "{INTO} SELECT lpad(i::text, 8, '0') || '{rest}', {COLUMNS} \
                     FROM generate_series(1, {n}) AS n(i), approval_requests WHERE id = $1"
                );
                // Only numbers of ours are formatted into it.
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(template)
                    .execute(pool)
                    .await?;
            }
        }
        Ok(())
    }

    /// Waits until no stop has a sweep left to do; fails after ten minutes.
    async fn swept(&self) -> anyhow::Result<()> {
        const OPEN: &str = "SELECT COUNT(*) FROM stop_sweeps";
        for _ in 0..300_000 {
            let open: i64 = match self {
                Seeder::Lite(conn) => {
                    let conn = conn.clone();
                    tokio::task::spawn_blocking(move || {
                        conn.lock()
                            .expect("seeder")
                            .query_row(OPEN, [], |r| r.get(0))
                    })
                    .await??
                }
                Seeder::Pg(pool) => sqlx::query_scalar(OPEN).fetch_one(pool).await?,
            };
            if open == 0 {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        bail!("the stop's sweep did not finish within ten minutes")
    }
}

/// Scenario 10 (issue 15): the emergency stop with `n` requests pending, `trials` times: how long its answer
/// takes (request to response), and how long the sweep that cancels them takes after it (response to the last
/// one cancelled).
pub async fn stop_with_pending(
    t: &Target,
    database_url: &str,
    n: usize,
    trials: usize,
) -> anyhow::Result<[Measurement; 2]> {
    let seeder = Seeder::connect(database_url).await?;
    let (mut answers, mut sweeps) = (Vec::new(), Vec::new());
    for _ in 0..trials {
        let agent = t.key("agent").await?;
        let session = t.session(&agent).await?;
        let template = t.pay(&agent, &session, "25.00").await?;
        let template = template["approval_id"].as_str().context("approval_id")?;
        seeder.copy_pending(template, n.saturating_sub(1)).await?;
        let started = Instant::now();
        t.post(&t.admin, "/kill-switch", json!({"engaged": true}))
            .await?;
        answers.push(started.elapsed());
        let answered = Instant::now();
        seeder.swept().await?;
        sweeps.push(answered.elapsed());
        t.post(&t.admin, "/kill-switch", json!({"engaged": false}))
            .await?;
    }
    let swept: Duration = sweeps.iter().sum();
    let scenario = format!("stop, {n} pending");
    let answer = Measurement::from_latencies(
        &scenario,
        1,
        answers,
        Duration::ZERO,
        "request → answer".into(),
    );
    let mut sweep = Measurement::from_latencies(&scenario, 1, sweeps, swept, String::new());
    sweep.per_second = (n * trials) as f64 / swept.as_secs_f64().max(f64::EPSILON);
    sweep.note = "answer → last request cancelled (per s: requests cancelled)".into();
    Ok([
        Measurement {
            per_second: 0.0,
            ..answer
        },
        sweep,
    ])
}

/// A webhook receiver on loopback that times each delivery from its event's commit (the body's `at`).
struct LagReceiver {
    url: String,
    lags: Arc<std::sync::Mutex<Vec<Duration>>>,
}

impl LagReceiver {
    async fn start() -> anyhow::Result<LagReceiver> {
        let lags: Arc<std::sync::Mutex<Vec<Duration>>> = Arc::default();
        let kept = lags.clone();
        let take = move |body: String| {
            let kept = kept.clone();
            async move {
                let at = serde_json::from_str::<Value>(&body).ok().and_then(|e| {
                    e["at"]
                        .as_str()
                        .and_then(|a| a.parse::<chrono::DateTime<chrono::Utc>>().ok())
                });
                if let Some(lag) = at.and_then(|at| (chrono::Utc::now() - at).to_std().ok()) {
                    kept.lock().expect("lags").push(lag);
                }
                axum::http::StatusCode::NO_CONTENT
            }
        };
        let app = axum::Router::new().route("/hook/{n}", axum::routing::post(take));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(LagReceiver { url, lags })
    }

    fn taken(&self) -> Vec<Duration> {
        self.lags.lock().expect("lags").clone()
    }
}

/// Scenario 11: webhooks' cost and lag (issue 19). In one run: the guard's auto path and approval creation at
/// c=16 with no webhook, then with three endpoints subscribed to every event (the receiver answers at once), and
/// the delivery lag from each event's commit to its receiver. Needs a server whose egress policy lets it reach
/// loopback.
pub async fn webhooks(t: &Target, scale: &Scale) -> anyhow::Result<Vec<Measurement>> {
    let mut lines = vec![
        guard_auto(t, scale, 16).await?,
        approval_creation(t, scale, 16).await?,
    ];
    let receiver = LagReceiver::start().await?;
    for n in 0..3 {
        let hook = json!({"url": format!("{}/hook/{n}", receiver.url)});
        t.post(&t.admin, "/webhooks", hook).await?;
    }
    let (guard, asked) = (
        guard_auto(t, scale, 16).await?,
        approval_creation(t, scale, 16).await?,
    );
    let started = Instant::now();
    let expected = 3 * scale.requests;
    while receiver.taken().len() < expected && started.elapsed() < Duration::from_secs(300) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lags = receiver.taken();
    if lags.len() < expected {
        bail!(
            "{} of {expected} deliveries arrived within 300 s",
            lags.len()
        );
    }
    for (with, without) in [(guard, 0), (asked, 1)] {
        let ratio = with.per_second / lines[without].per_second.max(f64::EPSILON);
        lines[without].scenario.push_str(", no webhook");
        lines.push(Measurement {
            scenario: format!("{}, 3 webhooks", with.scenario),
            note: format!("{ratio:.2}x the throughput with none"),
            ..with
        });
    }
    let note = "from each approval_required event's commit to its receiver, 3 endpoints".to_owned();
    let wall = started.elapsed();
    lines.push(Measurement::from_latencies(
        "webhook delivery lag",
        3,
        lags,
        wall,
        note,
    ));
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sustained_run_is_counted_in_five_second_windows() {
        let at = |s: f64| Duration::from_secs_f64(s);
        let done = [at(0.1), at(4.9), at(5.0), at(9.0), at(10.2)];
        let rates = windows(&done, at(10.0), at(10.4));
        assert_eq!(rates.len(), 2);
        assert!((rates[0] - 2.0 / 5.0).abs() < 1e-9, "{rates:?}");
        assert!(
            (rates[1] - 3.0 / 5.4).abs() < 1e-9,
            "the last takes in what was in flight: {rates:?}"
        );
    }
}
