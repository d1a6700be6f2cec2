//! Storage for Paygent: one sqlx code path for SQLite (the embedded default) and PostgreSQL.
//!
//! Values cross the `Any` driver as text and integers only: ids and timestamps as TEXT, money as exact decimal
//! strings. Every change goes through a [`WriteTx`], which carries the change's audit entry and events.

pub mod approvals;
pub mod attempts;
pub mod audit;
pub mod budgets;
pub mod events;
pub mod executions;
pub mod keys;
pub mod payments;
pub mod sessions;
pub mod tenants;
mod tx;

pub use tx::{Event, WriteTx};

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};
use std::str::FromStr;
use std::time::Duration;
use uuid::Uuid;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
    #[error("unknown tenant {0}")]
    UnknownTenant(Uuid),
}

impl StoreError {
    /// True when the database refused a duplicate key.
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, StoreError::Db(sqlx::Error::Database(e)) if e.is_unique_violation())
    }

    /// True once this process closed its pool: background work stops.
    pub fn is_closed(&self) -> bool {
        matches!(self, StoreError::Db(sqlx::Error::PoolClosed))
    }

    /// True when the database could not be reached rather than refusing the work: worth a retry.
    /// A connection cut mid-handshake shows as an I/O, TLS or protocol error; a database shutting down or
    /// starting up answers SQLSTATE class 08 (connection exception) or 57P (operator intervention), and one out
    /// of connections or memory class 53 (insufficient resources).
    pub fn is_unavailable(&self) -> bool {
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
            _ => false,
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Connection settings beyond the URL.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// PostgreSQL pool size, and SQLite's reader pool size.
    pub max_connections: u32,
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

/// The database. SQLite allows one writer at a time, so it gets a single-connection writer pool (writers queue
/// in-process instead of spinning on SQLITE_BUSY) beside a reader pool; PostgreSQL uses one pool for both.
#[derive(Clone, Debug)]
pub struct Store {
    reader: AnyPool,
    writer: AnyPool,
    backend: Backend,
    /// Kept to open PostgreSQL's LISTEN connection for event nudges.
    url: String,
}

impl Store {
    /// Connects to `url` (`sqlite://...` or `postgres://...`) and runs the migrations.
    pub async fn connect(url: &str, options: &StoreOptions) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            return Err(StoreError::Corrupt(format!(
                "DATABASE_URL must start with sqlite: or postgres://, got {:?}",
                url.split(':').next().unwrap_or("")
            )));
        };
        let connect = AnyConnectOptions::from_str(url)?;
        let pool = |size: u32| {
            AnyPoolOptions::new()
                .max_connections(size)
                .acquire_timeout(options.acquire_timeout)
                .after_connect(move |conn, _| {
                    Box::pin(async move {
                        if backend == Backend::Sqlite {
                            conn.execute(
                                "PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON; \
                                 PRAGMA busy_timeout = 5000; PRAGMA synchronous = FULL;",
                            )
                            .await?;
                        }
                        Ok(())
                    })
                })
                .connect_with(connect.clone())
        };
        let store = match backend {
            Backend::Postgres => {
                let p = pool(options.max_connections).await?;
                Store {
                    reader: p.clone(),
                    writer: p,
                    backend,
                    url: url.to_owned(),
                }
            }
            Backend::Sqlite => {
                let writer = pool(1).await?;
                MIGRATOR.run(&writer).await?;
                Store {
                    reader: pool(options.max_connections).await?,
                    writer,
                    backend,
                    url: url.to_owned(),
                }
            }
        };
        if backend == Backend::Postgres {
            MIGRATOR.run(&store.writer).await?;
        }
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The pool for reads outside a write transaction.
    pub fn reader(&self) -> &AnyPool {
        &self.reader
    }

    /// The writers' pool, for single statements that belong to no tenant's transaction (execution leases).
    pub fn writer(&self) -> &AnyPool {
        &self.writer
    }

    /// True when the database answers.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.reader).await.is_ok()
    }

    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }
}

/// Reads one row of a tenant's table by id and converts it into its record type.
pub(crate) async fn by_id<'e, R, T>(
    exec: impl sqlx::Executor<'e, Database = sqlx::Any>,
    sql: sqlx::AssertSqlSafe<String>,
    tenant_id: Uuid,
    id: Uuid,
) -> Result<Option<T>>
where
    R: for<'r> sqlx::FromRow<'r, sqlx::any::AnyRow> + Send + Unpin,
    T: TryFrom<R, Error = StoreError>,
{
    sqlx::query_as::<_, R>(sql)
        .bind(tenant_id.to_string())
        .bind(id.to_string())
        .fetch_optional(exec)
        .await?
        .map(T::try_from)
        .transpose()
}

/// Reads a tenant's rows, optionally of one session, with `sql` binding `$1` tenant, `$2` session (or NULL)
/// and `$3` limit, and converts them into their record type.
pub(crate) async fn by_session<'e, R, T>(
    exec: impl sqlx::Executor<'e, Database = sqlx::Any>,
    sql: sqlx::AssertSqlSafe<String>,
    tenant_id: Uuid,
    session_id: Option<Uuid>,
    limit: i64,
) -> Result<Vec<T>>
where
    R: for<'r> sqlx::FromRow<'r, sqlx::any::AnyRow> + Send + Unpin,
    T: TryFrom<R, Error = StoreError>,
{
    sqlx::query_as::<_, R>(sql)
        .bind(tenant_id.to_string())
        .bind(session_id.map(|s| s.to_string()))
        .bind(limit)
        .fetch_all(exec)
        .await?
        .into_iter()
        .map(T::try_from)
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

pub(crate) fn json(s: &str) -> Result<serde_json::Value> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("bad json: {e}")))
}

pub(crate) fn decimal(s: &str) -> Result<paygent_domain::money::Decimal> {
    paygent_domain::money::Decimal::from_str_exact(s)
        .map_err(|_| StoreError::Corrupt(format!("bad decimal {s:?}")))
}
