//! A real Paygent on loopback for tests: the engine and HTTP server in-process, over a fresh SQLite file or a
//! fresh PostgreSQL database, with a clock the test can move forward.

pub mod chain;
pub mod contract;
pub mod mail;
pub mod mcp;
pub mod prometheus;
pub mod proxy;
pub mod receiver;
pub mod slack;
pub mod uniswap;

use chrono::{DateTime, Duration, Utc};
use paygent_engine::domain::{PriceTable, Role};
use paygent_engine::{Clock, Paygent, Store, StoreOptions};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::Connection;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use uuid::Uuid;

/// The database a test server runs on: the store's own word for it.
pub use paygent_store::Backend;

/// Where tests find PostgreSQL; every test creates its own database there.
pub fn postgres_admin_url() -> String {
    std::env::var("PAYGENT_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// The admin token every test server accepts.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
/// The payee the helpers pay unless a test names another.
pub const PAYEE: &str = "0x1111111111111111111111111111111111111111";

/// System time plus an offset the test controls, in microseconds: "now" after [`TestClock::set`] is never
/// before the moment set (the ids and timestamps the store writes are that fine).
#[derive(Default)]
pub struct TestClock {
    offset_us: AtomicI64,
}

impl TestClock {
    pub fn advance(&self, by: Duration) {
        let by = by.num_microseconds().expect("a test's step fits");
        self.offset_us.fetch_add(by, Ordering::SeqCst);
    }

    /// Makes "now" be `at`, from which it runs on in real time.
    pub fn set(&self, at: DateTime<Utc>) {
        // Rounded up: the microseconds cut off the offset would put "now" a moment before `at`.
        let offset = (at - Utc::now())
            .num_microseconds()
            .expect("a test's moment fits")
            + 1;
        self.offset_us.store(offset, Ordering::SeqCst);
    }
}

impl Clock for TestClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now() + Duration::microseconds(self.offset_us.load(Ordering::SeqCst))
    }
}

pub struct TestServer {
    pub backend: Backend,
    pub base: String,
    pub database_url: String,
    pub paygent: Paygent,
    pub clock: Arc<TestClock>,
    pub http: reqwest::Client,
    settings: Settings,
    dir: Option<TempDir>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

/// A directory removed when dropped.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Changes made to each engine a test server starts (after a restart too), such as installing payment rails.
#[derive(Clone)]
pub struct Wiring(pub Arc<dyn Fn(Paygent) -> Paygent + Send + Sync>);

impl std::fmt::Debug for Wiring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Wiring")
    }
}

/// How a test server is set up beyond its database.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub wiring: Option<Wiring>,
    /// What the server may reach on agents' behalf; `None` allows loopback, where the test peers listen, by
    /// configuration as an operator would.
    pub egress: Option<paygent_engine::EgressPolicy>,
    pub live: paygent_server::LiveOptions,
    /// Off unless a test sets it, so load in tests is never throttled.
    pub rate_limit: Option<paygent_server::RateLimit>,
    /// The kernel's send buffer for each connection; the system default when `None`.
    pub send_buffer: Option<u32>,
    /// The server's default when `None`.
    pub request_timeout: Option<std::time::Duration>,
    /// `GET /metrics` from loopback without a key, as by default, unless set to false.
    pub keyless_loopback_metrics: Option<bool>,
}

/// Prices for tests: the defaults, with CRO at 0.08 as the threshold tests require.
pub fn test_prices() -> PriceTable {
    let mut prices = PriceTable::default();
    prices.set("CRO", None, "0.08").expect("valid price");
    prices
}

impl TestServer {
    pub async fn start(backend: Backend) -> TestServer {
        Self::start_with(backend, Settings::default()).await
    }

    /// Starts a server with the given settings.
    pub async fn start_with(backend: Backend, settings: Settings) -> TestServer {
        let (database_url, dir) = match backend {
            Backend::Sqlite => {
                let dir =
                    std::env::temp_dir().join(format!("paygent-test-{}", Uuid::new_v4().simple()));
                std::fs::create_dir_all(&dir).expect("temp dir");
                let url = format!("sqlite://{}/paygent.db?mode=rwc", dir.display());
                (url, Some(TempDir(dir)))
            }
            Backend::Postgres => (create_postgres_database().await, None),
        };
        Self::serve(
            backend,
            database_url,
            dir,
            Arc::new(TestClock::default()),
            settings,
        )
        .await
    }

    /// Stops this server and starts a new one (new engine, new port) on the same database, as after a crash.
    pub async fn restart(self) -> TestServer {
        self.restart_after(async {}).await
    }

    /// Like [`TestServer::restart`], doing `while_down` between the stop and the start.
    pub async fn restart_after(
        mut self,
        while_down: impl std::future::Future<Output = ()>,
    ) -> TestServer {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.paygent.store().close().await;
        while_down.await;
        let dir = self.dir.take();
        Self::serve(
            self.backend,
            self.database_url.clone(),
            dir,
            self.clock.clone(),
            self.settings.clone(),
        )
        .await
    }

    async fn serve(
        backend: Backend,
        database_url: String,
        dir: Option<TempDir>,
        clock: Arc<TestClock>,
        settings: Settings,
    ) -> TestServer {
        let store = Store::connect(&database_url, &StoreOptions::default())
            .await
            .unwrap_or_else(|e| panic!("connecting to {database_url}: {e}"));
        // Short leases: a restarted or second instance takes over a dead one's executions within 2 s.
        let egress = settings.egress.clone().unwrap_or_else(|| {
            paygent_engine::EgressPolicy::allowing("127.0.0.0/8,::1/128").expect("allow list")
        });
        let mut paygent = Paygent::new(store, test_prices(), clock.clone())
            .with_lease(std::time::Duration::from_secs(2))
            .with_egress(paygent_engine::Egress::new(egress));
        if let Some(Wiring(wire)) = &settings.wiring {
            paygent = wire(paygent);
        }
        paygent
            .bootstrap(Some(ADMIN_TOKEN))
            .await
            .expect("bootstrap");
        paygent
            .reconcile_payments()
            .await
            .expect("reconcile payments");
        paygent
            .resume_executions()
            .await
            .expect("resume executions");
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        if let Some(size) = settings.send_buffer {
            // Accepted connections inherit it: a client that stops reading blocks the server's writes sooner.
            socket.set_send_buffer_size(size).expect("send buffer");
        }
        socket
            .bind("127.0.0.1:0".parse().expect("address"))
            .expect("bind");
        let listener = socket.listen(1024).expect("listen");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let options = paygent_server::Options {
            live: settings.live.clone(),
            rate_limit: settings
                .rate_limit
                .unwrap_or(paygent_server::RateLimit::OFF),
            request_timeout: settings
                .request_timeout
                .unwrap_or(paygent_server::REQUEST_TIMEOUT),
            keyless_loopback_metrics: settings.keyless_loopback_metrics.unwrap_or(true),
        };
        let app = paygent_server::app_with(paygent.clone(), options);
        tokio::spawn(async move {
            paygent_server::serve(listener, app, async {
                let _ = rx.await;
            })
            .await
            .expect("server runs");
        });
        TestServer {
            backend,
            base,
            database_url,
            paygent,
            clock,
            http: reqwest::Client::new(),
            settings,
            dir,
            shutdown: Some(tx),
        }
    }

    /// A second instance (engine and server) on the same database, as behind a load balancer.
    pub async fn another_instance(&self) -> TestServer {
        self.another_instance_with(self.settings.clone()).await
    }

    /// A second instance on the same database with settings of its own (other rails, say).
    pub async fn another_instance_with(&self, settings: Settings) -> TestServer {
        let (backend, url) = (self.backend, self.database_url.clone());
        Self::serve(backend, url, None, self.clock.clone(), settings).await
    }

    /// Stops the server, leaving its database in place.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.paygent.store().close().await;
    }

    /// Stops the server and, on PostgreSQL, drops the test's database.
    pub async fn finish(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.paygent.store().close().await;
        if self.backend == Backend::Postgres {
            drop_postgres_database(&self.database_url).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.base)
    }

    /// Sends JSON (or nothing) with a bearer token; returns the status and the parsed body.
    pub async fn call(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let method_of_call = method.clone();
        let mut req = self.http.request(method, self.url(path)).bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let content_type = content_type(&resp);
        let text = resp.text().await.expect("body");
        let typed = content_type.as_deref().filter(|_| !text.is_empty());
        contract::check(&method_of_call, &format!("/api/v1{path}"), status, typed);
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// The live WebSocket's address for `token`, with `query` (`&after_seq=3`...) after it.
    pub fn ws_url(&self, token: &str, query: &str) -> String {
        let base = self.base.replace("http://", "ws://");
        format!("{base}/api/v1/ws?token={token}{query}")
    }

    /// Opens the live WebSocket as `token`, held to the published document: the upgrade, or the refusal, whose
    /// answer comes back.
    pub async fn socket(&self, token: &str, query: &str) -> Result<Socket, Refused> {
        use tokio_tungstenite::tungstenite::Error;
        let check = |status, content_type| {
            contract::check(&Method::GET, "/api/v1/ws", status, content_type)
        };
        match tokio_tungstenite::connect_async(self.ws_url(token, query)).await {
            Ok((socket, answer)) => {
                check(answer.status(), None);
                Ok(socket)
            }
            Err(Error::Http(refused)) => {
                let content_type = refused.headers().get(reqwest::header::CONTENT_TYPE);
                check(refused.status(), content_type.and_then(|v| v.to_str().ok()));
                Err(*refused)
            }
            Err(e) => panic!("the WebSocket failed: {e}"),
        }
    }

    /// Sends a request a test built by hand (to set headers, or read them back), held to the published document
    /// as [`TestServer::call`]'s are.
    pub async fn send(&self, req: reqwest::RequestBuilder) -> reqwest::Response {
        let req = req.build().expect("a well-formed request");
        let (method, path) = (req.method().clone(), req.url().path().to_owned());
        let resp = self.http.execute(req).await.expect("request");
        contract::check(
            &method,
            &path,
            resp.status(),
            content_type(&resp).as_deref(),
        );
        resp
    }

    pub async fn post(&self, token: &str, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(token, Method::POST, path, Some(body)).await
    }

    pub async fn get(&self, token: &str, path: &str) -> (StatusCode, Value) {
        self.call(token, Method::GET, path, None).await
    }

    pub async fn put(&self, token: &str, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(token, Method::PUT, path, Some(body)).await
    }

    /// Copies the pending request `template` `n` times straight into the database, with ids that sort before it:
    /// tens of thousands of pending requests, made fast.
    pub async fn copy_pending(&self, template: &str, n: usize) {
        let (numbers, id, from) = match self.backend {
            Backend::Sqlite => (
                format!(
                    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n}) "
                ),
                "printf('%08d-0000-4000-8000-000000000000', i)",
                "n".to_owned(),
            ),
            Backend::Postgres => (
                String::new(),
                "lpad(i::text, 8, '0') || '-0000-4000-8000-000000000000'",
                format!("generate_series(1, {n}) AS n(i)"),
            ),
        };
        let copied = self
            .sql(&format!(
                "{numbers}INSERT INTO approval_requests (id, tenant_id, session_id, payment_id, tool, args, \
                 reason, usd_value, allowed_decisions, status, requested_by, deadline, created_at) \
                 SELECT {id}, a.tenant_id, a.session_id, NULL, a.tool, a.args, a.reason, a.usd_value, \
                 a.allowed_decisions, 'pending', a.requested_by, a.deadline, a.created_at \
                 FROM {from}, approval_requests a WHERE a.id = '{template}'"
            ))
            .await;
        assert_eq!(copied, n as u64);
        // As the store counts every request its key has waiting.
        self.sql(&format!(
            "UPDATE key_pending SET pending = pending + {n} \
             WHERE key_id = (SELECT requested_by FROM approval_requests WHERE id = '{template}')"
        ))
        .await;
    }

    /// Waits until every stop's sweep has finished (what the stops left pending is cancelled); panics after
    /// 120 s (tens of thousands of requests in a debug build).
    pub async fn swept(&self) {
        let left = || self.count("stop_sweeps");
        let within = std::time::Duration::from_secs(120);
        eventually(within, "every stop's sweep to finish", left, |n| *n == 0).await;
    }

    /// A person approves the request `approval`, then the agent executes it; returns the payment.
    /// `POST /approvals/{approval}/{decision}` (`approve`, `reject` or `edit`) as `token`.
    pub async fn decide(
        &self,
        token: &str,
        approval: impl std::fmt::Display,
        decision: &str,
        body: Value,
    ) -> (StatusCode, Value) {
        let path = format!("/approvals/{approval}/{decision}");
        self.post(token, &path, body).await
    }

    pub async fn approve_and_execute(&self, approver: &str, agent: &str, approval: &str) -> Value {
        let (status, decided) = self.decide(approver, approval, "approve", json!({})).await;
        assert_eq!(status, StatusCode::OK, "{decided}");
        let body = json!({"approval_id": approval});
        let (status, paid) = self.post(agent, "/payments/execute-approved", body).await;
        assert_eq!(status, StatusCode::OK, "{paid}");
        paid
    }

    /// Reads `GET /events?{query}` as `token` until its text satisfies `done`; panics after 10 s without.
    pub async fn events_until(
        &self,
        token: &str,
        query: &str,
        done: impl Fn(&str) -> bool,
    ) -> String {
        let mut sse = self
            .http
            .get(self.url(&format!("/events?{query}")))
            .bearer_auth(token)
            .send()
            .await
            .expect("the event stream opens");
        let mut text = String::new();
        while !done(&text) {
            let chunk = tokio::time::timeout(std::time::Duration::from_secs(10), sse.chunk())
                .await
                .expect("events within 10 s")
                .expect("the stream reads")
                .expect("the stream is open");
            text.push_str(std::str::from_utf8(&chunk).expect("UTF-8"));
        }
        text
    }

    /// A new key of `role` in the admin's tenant.
    pub async fn key(&self, admin: &str, role: Role) -> String {
        let (status, body) = self
            .post(
                admin,
                "/keys",
                json!({"name": format!("{role:?}"), "role": role.as_str()}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["token"].as_str().expect("token").to_owned()
    }

    /// A new tenant; returns its admin token.
    pub async fn tenant(&self, name: &str) -> String {
        let (status, body) = self
            .post(ADMIN_TOKEN, "/tenants", json!({"name": name}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["admin_key"]["token"]
            .as_str()
            .expect("token")
            .to_owned()
    }

    /// A new session for `agent`, with optional config.
    pub async fn session(&self, agent: &str, config: Value) -> Uuid {
        let (status, body) = self
            .post(
                agent,
                "/sessions",
                json!({"name": "test", "config": config}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_str().expect("id").parse().expect("uuid")
    }

    /// Runs a payment through the guard; returns status and body.
    pub async fn pay(
        &self,
        agent: &str,
        session: Uuid,
        amount: &str,
        currency: &str,
    ) -> (StatusCode, Value) {
        self.post(
            agent,
            "/payments",
            json!({
                "session_id": session,
                "amount": amount,
                "currency": currency,
                "recipient": PAYEE,
            }),
        )
        .await
    }

    /// Starts an execution of `steps` on the session as `agent`; the execution as the server accepted it (202).
    pub async fn execute(
        &self,
        agent: &str,
        session: impl std::fmt::Display,
        steps: Value,
    ) -> Value {
        let body = json!({"session_id": session.to_string(), "steps": steps});
        let (status, body) = self.post(agent, "/agent/execute", body).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        body
    }

    /// Rows in `table`, read straight from the database.
    pub async fn count(&self, table: &str) -> i64 {
        self.scalar(&format!("SELECT COUNT(*) FROM {table}")).await
    }

    /// A single integer read straight from the database.
    pub async fn scalar(&self, query: &str) -> i64 {
        paygent_store::db::query(query.to_owned())
            .fetch_one(self.paygent.store().reader())
            .await
            .and_then(|row| row.get(0))
            .expect("scalar query")
    }

    /// A single text value read straight from the database.
    pub async fn text(&self, query: &str) -> String {
        paygent_store::db::query(query.to_owned())
            .fetch_one(self.paygent.store().reader())
            .await
            .and_then(|row| row.get(0))
            .expect("text query")
    }

    /// Runs raw SQL against the database, as an attacker with database access would.
    pub async fn sql(&self, statement: &str) -> u64 {
        paygent_store::db::query(statement.to_owned())
            .execute(self.paygent.store().writer())
            .await
            .expect("sql")
    }
}

impl TestServer {
    /// An agent key of the first tenant bound to a new policy of `rules` named `name`; returns (policy id,
    /// agent token).
    pub async fn bound_agent(&self, name: &str, rules: Value) -> (String, String) {
        let mut body = rules;
        body["name"] = json!(name);
        let (status, policy) = self.post(ADMIN_TOKEN, "/policies", body).await;
        assert_eq!(status, StatusCode::CREATED, "{policy}");
        let id = policy["id"].as_str().expect("policy id").to_owned();
        let key = json!({"name": name, "role": "agent", "policy_id": id});
        let (status, key) = self.post(ADMIN_TOKEN, "/keys", key).await;
        assert_eq!(status, StatusCode::CREATED, "{key}");
        assert_eq!(key["policy_id"], json!(id));
        (id, key["token"].as_str().expect("token").to_owned())
    }
}

/// Keys for the three roles of one tenant.
pub struct Team {
    pub admin: String,
    pub approver: String,
    pub agent: String,
}

impl TestServer {
    pub async fn team(&self, admin: &str) -> Team {
        Team {
            admin: admin.to_owned(),
            approver: self.key(admin, Role::Approver).await,
            agent: self.key(admin, Role::Agent).await,
        }
    }
}

/// Drops a database made by [`create_postgres_database`], even with connections still open.
pub async fn drop_postgres_database(url: &str) {
    let name = url.rsplit('/').next().unwrap_or_default();
    let mut conn = sqlx::PgConnection::connect(&postgres_admin_url())
        .await
        .expect("pg admin");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await
    .expect("drop test database");
}

/// Creates a fresh, empty PostgreSQL database and returns its URL.
pub async fn create_postgres_database() -> String {
    let admin = postgres_admin_url();
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL must be running at {admin} for these tests: {e}"));
    let name = format!("paygent_t_{}", Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let (base, _) = admin.rsplit_once('/').expect("url has a database");
    format!("{base}/{name}")
}

/// Declares an async test body `fn(Backend)` as one test per database: `name::sqlite` and `name::postgres`.
#[macro_export]
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name($crate::Backend::Postgres).await
            }
        }
    )*};
}

/// A plain HTTP peer on loopback that answers every request with 200 "hello" and counts them.
pub async fn hello_server() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hello", listener.local_addr().expect("addr"));
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf).await;
                let reply =
                    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
                let _ = socket.write_all(reply).await;
            });
        }
    });
    (url, hits)
}

/// An HTTP peer on `bind` (an address on loopback) that answers every request with `head` (a status line and
/// headers, without the blank line) and then `body_len` bytes of body. Returns its base URL and how many body
/// bytes it managed to write in all.
pub async fn canned_server(
    bind: &str,
    head: String,
    body_len: usize,
) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind(format!("{bind}:0"))
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let written = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = written.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let (head, counter) = (head.clone(), counter.clone());
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf).await;
                let head =
                    format!("{head}\r\nContent-Length: {body_len}\r\nConnection: close\r\n\r\n");
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = vec![b'x'; 64 * 1024];
                let mut left = body_len;
                while left > 0 {
                    let n = left.min(chunk.len());
                    if socket.write_all(&chunk[..n]).await.is_err() {
                        return;
                    }
                    counter.fetch_add(n, Ordering::SeqCst);
                    left -= n;
                }
            });
        }
    });
    (url, written)
}

/// An HTTP peer that accepts and never answers. The returned flag turns true when a client hangs up on it.
pub async fn silent_server() -> (String, Arc<std::sync::atomic::AtomicBool>) {
    silent_server_on("127.0.0.1").await
}

/// [`silent_server`] on another loopback address.
pub async fn silent_server_on(bind: &str) -> (String, Arc<std::sync::atomic::AtomicBool>) {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind(format!("{bind}:0"))
        .await
        .expect("bind");
    let url = format!("http://{}/never", listener.local_addr().expect("addr"));
    let hung_up = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = hung_up.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let flag = flag.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = socket.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
                flag.store(true, Ordering::SeqCst);
            });
        }
    });
    (url, hung_up)
}

/// A TCP link to a database that a test can cut and restore, as a network or database outage looks to Paygent:
/// open connections break and new ones are refused until it is restored.
pub struct DatabaseLink {
    pub port: u16,
    up: Arc<std::sync::atomic::AtomicBool>,
    open: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl DatabaseLink {
    pub async fn to(target: &str) -> DatabaseLink {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let open: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (flag, tasks, target) = (up.clone(), open.clone(), target.to_owned());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !flag.load(Ordering::SeqCst) {
                    continue;
                }
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                tasks.lock().expect("links").push(task);
            }
        });
        DatabaseLink { port, up, open }
    }

    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for task in self.open.lock().expect("links").drain(..) {
            task.abort();
        }
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// Reads with `read` until `done` holds for what it returns, for at most `within`; then panics naming `what` it
/// waited for and the last reading, so a bug fails the test in seconds instead of hanging CI. Every test that
/// waits for a state polls through this.
pub async fn eventually<T: std::fmt::Debug, F: std::future::Future<Output = T>>(
    within: std::time::Duration,
    what: &str,
    mut read: impl FnMut() -> F,
    done: impl Fn(&T) -> bool,
) -> T {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let seen = read().await;
        if done(&seen) {
            return seen;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("waited {within:?} for {what}; last seen: {seen:?}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Polls an execution until `done` holds for it; panics after 30 s.
pub async fn wait_for(
    s: &TestServer,
    token: &str,
    id: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let path = format!("/executions/{id}");
    let read = || async { s.get(token, &path).await.1 };
    let what = format!("execution {id} to reach the expected state");
    eventually(std::time::Duration::from_secs(30), &what, read, done).await
}

/// A `done` for [`wait_for`]: the execution is in `status`.
pub fn status_is(status: &'static str) -> impl Fn(&Value) -> bool {
    move |e| e["status"] == status
}

/// A live WebSocket to the server.
pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;
/// The server's answer to a WebSocket it refused.
pub type Refused = tokio_tungstenite::tungstenite::http::Response<Option<Vec<u8>>>;

/// The target of a list's `Link: <...>; rel="next"` (a path with its query), if the page has one.
pub fn next_page(resp: &reqwest::Response) -> Option<String> {
    let link = resp
        .headers()
        .get(reqwest::header::LINK)?
        .to_str()
        .expect("a text header");
    assert!(link.ends_with("rel=\"next\""), "{link}");
    Some(link[1..link.find('>').expect("<target>")].to_owned())
}

fn content_type(resp: &reqwest::Response) -> Option<String> {
    resp.headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}
