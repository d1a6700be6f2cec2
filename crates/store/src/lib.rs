//! Storage for Paygent: one code path for SQLite (the embedded default) and PostgreSQL.
//!
//! Statements are written once ([`db`]) and run on PostgreSQL through sqlx, or on SQLite through rusqlite with
//! group commit ([`lite`]). Every change goes through a [`WriteTx`], which carries the change's audit entry and
//! events.

pub mod approvals;
pub mod attempts;
pub mod audit;
pub mod budgets;
pub mod db;
mod deferred;
pub mod events;
pub mod executions;
pub mod keys;
mod lite;
pub mod notifiers;
pub mod payments;
mod pg;
pub mod policies;
pub mod sessions;
pub mod spend;
pub mod standing;
pub mod sweeps;
pub mod tenants;
mod tx;
pub mod velocity;
pub mod wallets;
pub mod webhooks;

pub use db::{Db, Row};
pub use tx::{About, Event, StandingAsked, WriteTx};

use lite::Lite;
use pg::Pg;
use secrecy::SecretString;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Migrations whose SQL differs on PostgreSQL, by version: there they run this SQL instead of their file's.
const ON_POSTGRES: &[(i64, &str)] = &[(
    31,
    include_str!("../migrations_postgres/0031_tenant_references.sql"),
)];

/// The migrations as PostgreSQL runs them: the same versions, with [`ON_POSTGRES`]'s SQL where it has some.
fn postgres_migrator() -> sqlx::migrate::Migrator {
    use sqlx::SqlSafeStr;
    use sqlx::migrate::Migration;
    let migrations = (MIGRATOR.migrations.iter())
        .map(
            |m| match ON_POSTGRES.iter().find(|(v, _)| *v == m.version) {
                Some((_, sql)) => Migration::new(
                    m.version,
                    m.description.clone(),
                    m.migration_type,
                    sql.into_sql_str(),
                    m.no_tx,
                ),
                None => m.clone(),
            },
        )
        .collect::<Vec<_>>();
    sqlx::migrate::Migrator {
        migrations: migrations.into(),
        ignore_missing: MIGRATOR.ignore_missing,
        locking: MIGRATOR.locking,
        no_tx: MIGRATOR.no_tx,
        table_name: MIGRATOR.table_name.clone(),
        create_schemas: MIGRATOR.create_schemas.clone(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the database writer stayed busy")]
    Busy,
    #[error("the store is closed")]
    Closed,
    #[error("the transaction could not be committed: {0}")]
    Commit(String),
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
    /// The configured database URL cannot be used: said without its password.
    #[error("bad DATABASE_URL: {0}")]
    BadUrl(String),
    #[error("unknown tenant {0}")]
    UnknownTenant(Uuid),
    #[error("the key was revoked or has expired")]
    KeyNotLive,
}

/// PostgreSQL's connection options from `url`. A database on this host's loopback is reached without TLS unless
/// the URL or `PGSSLMODE` names a mode: sqlx's default (`prefer`) negotiates TLS there, which protects nothing
/// the host itself does not see and cost about a fifth of the database's CPU under load (BENCHMARKS.md).
fn pg_options(url: &str) -> Result<PgConnectOptions> {
    let options = PgConnectOptions::from_str(url).map_err(bad_url)?;
    let query = url.split_once('?').map_or("", |(_, q)| q);
    let named =
        (query.split('&')).any(|p| matches!(p.split('=').next(), Some("sslmode" | "ssl-mode")));
    let host = options.get_host();
    let loopback = host == "localhost"
        || (host.trim_start_matches('[').trim_end_matches(']'))
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    let asked = named || std::env::var_os("PGSSLMODE").is_some();
    Ok(match loopback && !asked {
        true => options.ssl_mode(PgSslMode::Disable),
        false => options,
    })
}

/// A URL that does not parse, said by kind only: the parser's message may quote the URL, password and all.
fn bad_url(e: sqlx::Error) -> StoreError {
    let kind = match e {
        sqlx::Error::Configuration(_) => "it does not parse as a database URL",
        _ => "it is not a usable database URL",
    };
    StoreError::BadUrl(kind.into())
}

impl StoreError {
    /// True when the database refused a duplicate key.
    pub fn is_unique_violation(&self) -> bool {
        match self {
            StoreError::Db(sqlx::Error::Database(e)) => e.is_unique_violation(),
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => matches!(
                e.extended_code,
                rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                    | rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
            ),
            _ => false,
        }
    }

    /// True when the database refused a row whose reference names nothing (a foreign key).
    pub fn is_foreign_key_violation(&self) -> bool {
        match self {
            StoreError::Db(sqlx::Error::Database(e)) => e.is_foreign_key_violation(),
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => {
                e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY
            }
            _ => false,
        }
    }

    /// True once this process closed its store: background work stops.
    pub fn is_closed(&self) -> bool {
        matches!(
            self,
            StoreError::Db(sqlx::Error::PoolClosed) | StoreError::Closed
        )
    }

    /// True when the database could not be reached or could not take the work now, rather than refusing it:
    /// worth a retry. A connection cut mid-handshake shows as an I/O, TLS or protocol error; a database shutting
    /// down or starting up answers SQLSTATE class 08 (connection exception) or 57P (operator intervention), and
    /// one out of connections or memory class 53 (insufficient resources). SQLite is unavailable when its file
    /// is locked by another process, or cannot be written.
    pub fn is_unavailable(&self) -> bool {
        use rusqlite::ErrorCode as C;
        match self {
            StoreError::Db(
                sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::Protocol(_)
                | sqlx::Error::WorkerCrashed
                | sqlx::Error::BeginFailed,
            ) => true,
            StoreError::Db(sqlx::Error::Database(e)) => e.code().is_some_and(|c| {
                c.starts_with("08") || c.starts_with("57P") || c.starts_with("53")
            }),
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => matches!(
                e.code,
                C::DatabaseBusy
                    | C::DatabaseLocked
                    | C::SystemIoFailure
                    | C::DiskFull
                    | C::CannotOpen
            ),
            StoreError::Busy | StoreError::Closed | StoreError::Commit(_) => true,
            _ => false,
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// How a group of writes ended, for the writes in it: `None` while open.
pub(crate) type Outcome = Option<std::result::Result<(), String>>;

/// Waits until the group a write joined has ended: `Ok` once it is durable. `lost` says why, should the group
/// vanish without an outcome.
pub(crate) async fn durable(
    mut outcome: tokio::sync::watch::Receiver<Outcome>,
    lost: &str,
) -> Result<()> {
    let done = outcome
        .wait_for(Option::is_some)
        .await
        .map_err(|_| StoreError::Commit(lost.to_owned()))?
        .clone();
    done.expect("waited for").map_err(StoreError::Commit)
}

/// How many groups of writes this process committed, and how many writes they held: their ratio is how much
/// group commit saves.
/// Also how many writes wait now to join one, and how many found their first round trip made by a write ahead
/// of them (PostgreSQL: [`crate::pg::Ahead`]).
#[derive(Debug, Default)]
pub(crate) struct Commits {
    groups: std::sync::atomic::AtomicU64,
    writes: std::sync::atomic::AtomicU64,
    waiting: std::sync::atomic::AtomicU64,
    pub(crate) read_ahead: std::sync::atomic::AtomicU64,
}

impl Commits {
    pub(crate) fn add(&self, writes: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        self.groups.fetch_add(1, Relaxed);
        self.writes.fetch_add(writes as u64, Relaxed);
    }

    /// Counts a write as waiting for its turn until `turn` resolves (or is dropped).
    pub(crate) async fn queued<T>(&self, turn: impl std::future::Future<Output = T>) -> T {
        use std::sync::atomic::Ordering::Relaxed;
        struct Waiting<'a>(&'a std::sync::atomic::AtomicU64);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Relaxed);
            }
        }
        self.waiting.fetch_add(1, Relaxed);
        let _waiting = Waiting(&self.waiting);
        turn.await
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Connection settings beyond the URL.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// PostgreSQL's pool size.
    pub max_connections: u32,
    /// How long a caller waits for a connection (PostgreSQL) or for the writer (SQLite).
    pub acquire_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

/// A pooled PostgreSQL connection idle this long is pinged before use.
const IDLE_BEFORE_PING: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub(crate) enum Engine {
    Pg(Arc<Pg>),
    Lite(Arc<Lite>),
}

/// The database. SQLite allows one writer at a time: writes queue in-process for its one writer connection and
/// are committed in groups, beside reader connections; PostgreSQL uses one pool for both.
#[derive(Clone, Debug)]
pub struct Store {
    engine: Engine,
    /// Kept to open PostgreSQL listeners; it may carry a password, so it never prints.
    url: Arc<SecretString>,
    rules: policies::RulesCache,
    /// This process's connection to the database, named in its event nudges so it can tell its own apart.
    instance: Uuid,
}

impl Store {
    /// Connects to `url` (`sqlite://...` or `postgres://...`) and runs the migrations.
    pub async fn connect(url: &str, options: &StoreOptions) -> Result<Store> {
        let engine = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let connect = pg_options(url)?;
            // Migrated first, on a connection of its own: every connection of the pool prepares statements on
            // the tables the migrations make.
            let mut conn = connect.connect().await?;
            postgres_migrator().run(&mut conn).await?;
            conn.close().await?;
            let pool = PgPoolOptions::new()
                .max_connections(options.max_connections)
                .acquire_timeout(options.acquire_timeout)
                // sqlx pings a connection on every acquire by default: a round trip per read and per group,
                // about as much work again as the request itself at load. Only a connection idle long enough
                // for the database to have gone away meanwhile is pinged (and replaced if it fails).
                .test_before_acquire(false)
                .before_acquire(|conn, meta| {
                    Box::pin(async move {
                        if meta.idle_for < IDLE_BEFORE_PING {
                            return Ok(true);
                        }
                        sqlx::Connection::ping(conn).await.map(|()| true)
                    })
                })
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        sqlx::raw_sql(sqlx::AssertSqlSafe(tx::PREPARED.as_str()))
                            .execute(conn)
                            .await
                            .map(drop)
                    })
                })
                .connect_with(connect)
                .await?;
            Engine::Pg(Pg::new(pool, options.acquire_timeout))
        } else if url.starts_with("sqlite:") {
            let connect = SqliteConnectOptions::from_str(url)
                .map_err(bad_url)?
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(5));
            let path = connect.get_filename().to_owned();
            let in_memory = url.contains(":memory:") || url.contains("mode=memory");
            if in_memory || path.as_os_str().is_empty() {
                return Err(StoreError::BadUrl(
                    "Paygent keeps its state in a SQLite file, not in memory".into(),
                ));
            }
            // sqlx creates the file as the URL says and migrates it; rusqlite then does the work.
            let mut conn = connect.connect().await?;
            MIGRATOR.run(&mut conn).await?;
            conn.close().await?;
            Engine::Lite(Lite::open(&path, options.acquire_timeout)?)
        } else {
            return Err(StoreError::BadUrl(format!(
                "it must start with sqlite: or postgres://, not {:?}",
                url.split(':').next().unwrap_or("")
            )));
        };
        Ok(Store {
            engine,
            url: Arc::new(SecretString::from(url)),
            rules: policies::RulesCache::default(),
            instance: Uuid::new_v4(),
        })
    }

    /// The groups of writes committed by this process so far, and the writes in them.
    pub fn commits(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let commits = self.commit_counts();
        (commits.groups.load(Relaxed), commits.writes.load(Relaxed))
    }

    fn commit_counts(&self) -> &Commits {
        match &self.engine {
            Engine::Pg(pg) => &pg.commits,
            Engine::Lite(lite) => &lite.commits,
        }
    }

    /// Writes waiting now for their turn: for the writer on SQLite, for their tenant's group on PostgreSQL.
    /// How many writes found their first round trip's reads made by a write ahead of them in their group.
    pub fn reads_ahead(&self) -> u64 {
        let used = &self.commit_counts().read_ahead;
        used.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn writes_waiting(&self) -> u64 {
        let waiting = &self.commit_counts().waiting;
        waiting.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn backend(&self) -> Backend {
        match self.engine {
            Engine::Pg(_) => Backend::Postgres,
            Engine::Lite(_) => Backend::Sqlite,
        }
    }

    /// Keeps the planner's statistics from going stale whether or not the database's own janitor runs. On
    /// PostgreSQL, analyzes each of its tables whose changes since it was last analyzed outnumber the rows it had
    /// then (plus 50): an analyze is what replaces plans cached while a table was small (a scan of its one page, or
    /// of an index of every pending request), which would otherwise go on reading every row to find one by id. A
    /// table is analyzed again once it doubled, not at every tenth as autovacuum does: each analyze reads up to
    /// 30,000 rows, and at every tenth, tables growing under load took an eighth of PostgreSQL's work
    /// (BENCHMARKS.md), while a plan made once its table is past a few pages stays right. SQLite plans lookups by
    /// key without statistics. Returns the tables analyzed.
    pub async fn keep_statistics(&self) -> Result<Vec<String>> {
        if self.backend() != Backend::Postgres {
            return Ok(Vec::new());
        }
        let rows = db::query(
            "SELECT s.relname::text FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid \
             WHERE s.schemaname = current_schema() AND s.n_mod_since_analyze > 50 + GREATEST(c.reltuples, 0) \
             ORDER BY s.relname",
        )
        .fetch_all(self.reader())
        .await?;
        let mut analyzed = Vec::new();
        for row in rows {
            let table: String = row.get(0)?;
            db::query(format!("ANALYZE \"{}\"", table.replace('"', "\"\"")))
                .execute(self.writer())
                .await?;
            analyzed.push(table);
        }
        Ok(analyzed)
    }

    /// Reads outside a write transaction: committed data only.
    pub fn reader(&self) -> Db<'_> {
        Db::Read(self)
    }

    /// Single statements that belong to no tenant's transaction (execution leases), each its own transaction.
    pub fn writer(&self) -> Db<'_> {
        Db::Write(self)
    }

    /// True when the database answers.
    pub async fn ping(&self) -> bool {
        db::query("SELECT 1").execute(self.reader()).await.is_ok()
    }

    pub async fn close(&self) {
        match &self.engine {
            Engine::Pg(pg) => pg.pool.close().await,
            Engine::Lite(lite) => lite.close().await,
        }
    }
}

/// Reads one row of a tenant's table by id (`sql` binds `$1` tenant, `$2` id) and converts it.
pub(crate) async fn by_id<R, T>(
    db: Db<'_>,
    sql: impl Into<std::borrow::Cow<'static, str>>,
    tenant_id: Uuid,
    id: Uuid,
) -> Result<Option<T>>
where
    R: TryFrom<Row, Error = StoreError>,
    T: TryFrom<R, Error = StoreError>,
{
    db::query(sql)
        .bind(tenant_id.to_string())
        .bind(id.to_string())
        .record::<R, _>(db)
        .await
}

/// Which of a tenant's rows a list may return: optionally one session's, optionally only those on the sessions
/// one key created (what an agent may see), at most `limit` of them after the row `after` (a cursor: the last
/// row's id).
#[derive(Debug, Clone, Copy)]
pub struct Scope {
    pub tenant_id: Uuid,
    pub session_id: Option<Uuid>,
    pub owner: Option<Uuid>,
    pub after: Option<Uuid>,
    pub limit: i64,
}

/// The condition, order and limit that keep rows of `table` (with `tenant_id`, `session_id`, `created_at` and
/// `id`) within a [`Scope`] bound as [`in_scope`] binds it; `newest_first` says which way its pages run.
pub(crate) fn scoped(table: &str, newest_first: bool) -> String {
    let (past, order) = if newest_first {
        ("<", "DESC")
    } else {
        (">", "ASC")
    };
    format!(
        "tenant_id = $1 AND ($2 IS NULL OR session_id = $2) \
         AND ($4 IS NULL OR session_id IN (SELECT id FROM sessions WHERE tenant_id = $1 AND created_by = $4)) \
         AND ($5 IS NULL OR (created_at, id) {past} (SELECT created_at, id FROM {table} WHERE id = $5)) \
         ORDER BY created_at {order}, id {order} LIMIT $3"
    )
}

/// Reads a tenant's rows within a scope, with `sql` (built on [`scoped`]) binding `$1` tenant, `$2` session (or
/// NULL), `$3` limit, `$4` owner (or NULL) and `$5` the cursor (or NULL), and converts them.
pub(crate) async fn in_scope<R, T>(
    db: Db<'_>,
    sql: impl Into<std::borrow::Cow<'static, str>>,
    scope: Scope,
) -> Result<Vec<T>>
where
    R: TryFrom<Row, Error = StoreError>,
    T: TryFrom<R, Error = StoreError>,
{
    db::query(sql)
        .bind(scope.tenant_id.to_string())
        .bind(scope.session_id.map(|s| s.to_string()))
        .bind(scope.limit)
        .bind(scope.owner.map(|s| s.to_string()))
        .bind(scope.after.map(|s| s.to_string()))
        .records::<R, _>(db)
        .await
}

/// Converts a row into its record type through the struct that reads the row.
pub(crate) fn record<R, T>(row: Row) -> Result<T>
where
    R: TryFrom<Row, Error = StoreError>,
    T: TryFrom<R, Error = StoreError>,
{
    R::try_from(row).and_then(T::try_from)
}

/// Converts rows into their record type, as [`record`].
pub(crate) fn records<R, T>(rows: Vec<Row>) -> Result<Vec<T>>
where
    R: TryFrom<Row, Error = StoreError>,
    T: TryFrom<R, Error = StoreError>,
{
    rows.into_iter().map(record::<R, T>).collect()
}

/// Reads rows of two ids, such as (tenant, request).
pub(crate) fn id_pairs(rows: Vec<Row>) -> Result<Vec<(Uuid, Uuid)>> {
    rows.into_iter()
        .map(|r| Ok((uuid(&r.get::<String>(0)?)?, uuid(&r.get::<String>(1)?)?)))
        .collect()
}

/// Parses a stored UUID, or reports corruption.
pub(crate) fn uuid(s: &str) -> Result<Uuid> {
    Uuid::parse_str(s).map_err(|_| StoreError::Corrupt(format!("bad uuid {s:?}")))
}

pub(crate) fn opt_uuid(s: Option<String>) -> Result<Option<Uuid>> {
    s.as_deref().map(uuid).transpose()
}

pub(crate) fn time(s: &str) -> Result<chrono::DateTime<chrono::Utc>> {
    paygent_domain::time::parse(s)
        .ok_or_else(|| StoreError::Corrupt(format!("bad timestamp {s:?}")))
}

pub(crate) fn opt_time(s: Option<String>) -> Result<Option<chrono::DateTime<chrono::Utc>>> {
    s.as_deref().map(time).transpose()
}

/// Reads stored JSON as `T`, or reports which stored `what` is corrupt.
pub(crate) fn parsed<T: serde::de::DeserializeOwned>(s: &str, what: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

pub(crate) fn json(s: &str) -> Result<serde_json::Value> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("bad json: {e}")))
}

pub(crate) fn decimal(s: &str) -> Result<paygent_domain::money::Decimal> {
    paygent_domain::money::Decimal::from_str_exact(s)
        .map_err(|_| StoreError::Corrupt(format!("bad decimal {s:?}")))
}
