//! SQLite: one writer connection, readers beside it, and group commit.
//!
//! Writes run on the caller's thread, each write transaction as a savepoint inside one physical transaction
//! (a batch). A committer thread commits the batch (one fsync for all of it) as soon as it gets the writer, and
//! the writer lock is fair: writers that queued before the committer join the batch, later ones start the next.
//! A write transaction's `commit` returns only once its batch is on disk, so "answered" still means "durable";
//! a failed batch fails every write in it, none half-written.

use crate::velocity::MarkCache;
use crate::{Outcome, Result, StoreError};
use paygent_domain::velocity::Mark;
use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;
use tokio::sync::{OwnedMutexGuard, watch};

/// Writes grouped in one commit at most; more wait for the next.
const MAX_BATCH: usize = 256;

struct Writer {
    conn: Connection,
    commits: Arc<crate::Commits>,
    batch: Option<Batch>,
    closed: bool,
    /// The breaker's recent marks as this writer's batch sees them: forgotten when a batch fails or another
    /// connection wrote to the file (`data_version`), so they never differ from what the database would say.
    marks: MarkCache,
    data_version: i64,
}

struct Batch {
    members: usize,
    outcome: watch::Sender<Outcome>,
}

pub(crate) struct Lite {
    path: PathBuf,
    writer: Arc<tokio::sync::Mutex<Writer>>,
    readers: Mutex<Vec<Connection>>,
    /// Set by `close`: reads are refused too, as a closed pool's are.
    closed: AtomicBool,
    /// Nudges the committer: a write ended and its batch waits.
    nudges: mpsc::Sender<()>,
    pub(crate) commits: Arc<crate::Commits>,
    acquire_timeout: Duration,
}

impl std::fmt::Debug for Lite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lite").field("path", &self.path).finish()
    }
}

fn open(path: &Path, writer: bool) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.set_prepared_statement_cache_capacity(128);
    conn.execute_batch("PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL;")?;
    add_decimals(&conn)?;
    if writer {
        conn.execute_batch("PRAGMA journal_mode = WAL;")?;
    } else {
        // Writes that bypass the writer would bypass group commit and the single-writer queue.
        conn.execute_batch("PRAGMA query_only = ON;")?;
    }
    Ok(conn)
}

/// `dec_add(a, b)`: the exact sum of two decimal strings, which SQLite has no type for (PostgreSQL's numeric
/// does it there), so a running total is added to in one statement. A string that is not a decimal fails the
/// statement, and with it the transaction.
fn add_decimals(conn: &Connection) -> rusqlite::Result<()> {
    use rusqlite::functions::FunctionFlags;
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    conn.create_scalar_function("dec_add", 2, flags, |ctx| {
        let term = |i: usize| -> rusqlite::Result<paygent_domain::Decimal> {
            let text = ctx
                .get_raw(i)
                .as_str()
                .map_err(|e| rusqlite::Error::UserFunctionError(e.into()))?;
            paygent_domain::Decimal::from_str_exact(text)
                .map_err(|e| rusqlite::Error::UserFunctionError(e.into()))
        };
        Ok((term(0)? + term(1)?).normalize().to_string())
    })
}

impl Lite {
    /// Opens the database file (already created and migrated) and starts its committer thread.
    pub(crate) fn open(path: &Path, acquire_timeout: Duration) -> Result<Arc<Lite>> {
        let commits = Arc::new(crate::Commits::default());
        let writer = Arc::new(tokio::sync::Mutex::new(Writer {
            conn: open(path, true)?,
            commits: commits.clone(),
            batch: None,
            closed: false,
            marks: MarkCache::default(),
            data_version: 0,
        }));
        let (tx, rx) = mpsc::channel();
        let committer = writer.clone();
        std::thread::Builder::new()
            .name("paygent-sqlite-commit".into())
            .spawn(move || {
                // Ends when the store is dropped (its sender with it).
                while rx.recv().is_ok() {
                    while rx.try_recv().is_ok() {}
                    let mut w = committer.blocking_lock();
                    commit(&mut w);
                }
            })
            .map_err(|e| StoreError::Corrupt(format!("cannot start the commit thread: {e}")))?;
        Ok(Arc::new(Lite {
            path: path.to_owned(),
            writer,
            readers: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
            nudges: tx,
            commits,
            acquire_timeout,
        }))
    }

    /// Runs `f` on a reader connection, on this thread.
    pub(crate) fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(StoreError::Closed);
        }
        let idle = self.readers.lock().expect("readers").pop();
        let conn = match idle {
            Some(c) => c,
            None => open(&self.path, false)?,
        };
        let out = f(&conn);
        self.readers.lock().expect("readers").push(conn);
        Ok(out?)
    }

    /// Starts a write transaction: waits for the writer (fairly, in arrival order) and opens a savepoint in the
    /// current batch, starting a batch if none is open.
    pub(crate) async fn begin(self: &Arc<Self>) -> Result<LiteTx> {
        let turn = tokio::time::timeout(self.acquire_timeout, self.writer.clone().lock_owned());
        let guard = self
            .commits
            .queued(turn)
            .await
            .map_err(|_| StoreError::Busy)?;
        if guard.closed {
            return Err(StoreError::Closed);
        }
        let mut tx = LiteTx {
            guard: Some(guard),
            lite: self.clone(),
            staged: Vec::new(),
        };
        let w = tx.guard.as_mut().expect("held");
        if w.batch.is_none() {
            w.conn.execute_batch("BEGIN IMMEDIATE")?;
            w.batch = Some(Batch {
                members: 0,
                outcome: watch::channel(None).0,
            });
            let version = w.conn.query_row("PRAGMA data_version", [], |r| r.get(0))?;
            if version != w.data_version {
                w.marks.clear();
                w.data_version = version;
            }
        }
        w.conn.execute_batch("SAVEPOINT paygent_tx")?;
        Ok(tx)
    }

    /// Commits what is open and refuses further writes.
    pub(crate) async fn close(&self) {
        let mut w = self.writer.lock().await;
        commit(&mut w);
        w.closed = true;
        self.closed.store(true, Ordering::SeqCst);
        self.readers.lock().expect("readers").clear();
    }

    fn nudge(&self) {
        // The committer outlives every Lite; a send fails only during process teardown.
        let _ = self.nudges.send(());
    }
}

/// Commits the open batch, if any, and tells its writes how it went.
fn commit(w: &mut Writer) {
    let Some(batch) = w.batch.take() else {
        return;
    };
    let outcome = if w.conn.is_autocommit() {
        // SQLite rolled the whole transaction back itself (an I/O error, a full disk).
        Err("the database rolled back the transaction".to_owned())
    } else {
        w.conn.execute_batch("COMMIT").map_err(|e| {
            let _ = w.conn.execute_batch("ROLLBACK");
            e.to_string()
        })
    };
    match &outcome {
        Ok(()) => w.commits.add(batch.members),
        Err(e) => {
            w.marks.clear();
            tracing::error!(error = %e, writes = batch.members, "SQLite commit failed")
        }
    }
    batch.outcome.send_replace(Some(outcome));
}

/// A write transaction on SQLite: a savepoint in the writer's current batch.
pub struct LiteTx {
    guard: Option<OwnedMutexGuard<Writer>>,
    lite: Arc<Lite>,
    /// The breaker's marks this transaction left, kept with the writer's once its savepoint is released.
    staged: Vec<(uuid::Uuid, String, Mark)>,
}

impl LiteTx {
    /// Runs `f` on the writer connection, on this thread.
    pub(crate) fn with<T>(
        &mut self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T> {
        let w = self.guard.as_ref().ok_or(StoreError::Closed)?;
        Ok(f(&w.conn)?)
    }

    /// The breaker's recent marks, as this transaction sees them (it holds the writer).
    pub(crate) fn marks(&self) -> Option<&MarkCache> {
        self.guard.as_ref().map(|w| &w.marks)
    }

    /// Marks this transaction left, kept with the writer's if it commits.
    pub(crate) fn stage_marks(&mut self, tenant: uuid::Uuid, marks: &[(String, Mark)]) {
        let marks = marks.iter().map(|(scope, m)| (tenant, scope.clone(), *m));
        self.staged.extend(marks);
    }

    /// Keeps this transaction's writes in the batch and waits until the batch is on disk.
    pub(crate) async fn commit(mut self) -> Result<()> {
        let mut w = self.guard.take().ok_or(StoreError::Closed)?;
        let released = w.conn.execute_batch("RELEASE paygent_tx");
        let Some(batch) = w.batch.as_mut() else {
            return Err(StoreError::Commit("the batch was lost".into()));
        };
        if let Err(e) = released {
            // The savepoint's writes cannot be told apart from the batch's any more: the whole batch fails.
            fail_batch(&mut w, &e.to_string());
            return Err(e.into());
        }
        batch.members += 1;
        let outcome = batch.outcome.subscribe();
        let full = batch.members >= MAX_BATCH;
        for (tenant, scope, mark) in self.staged.drain(..) {
            w.marks.keep(tenant, scope, mark);
        }
        if full {
            commit(&mut w);
        }
        drop(w);
        if !full {
            self.lite.nudge();
        }
        crate::durable(outcome, "the commit thread stopped").await
    }
}

/// Rolls back the whole batch: every write in it fails.
fn fail_batch(w: &mut Writer, why: &str) {
    if let Some(batch) = w.batch.take() {
        w.marks.clear();
        let _ = w.conn.execute_batch("ROLLBACK");
        tracing::error!(error = %why, writes = batch.members, "SQLite batch rolled back");
        batch.outcome.send_replace(Some(Err(why.to_owned())));
    }
}

impl Drop for LiteTx {
    /// A write transaction dropped without commit leaves no trace: its savepoint is rolled back.
    fn drop(&mut self) {
        let Some(mut w) = self.guard.take() else {
            return;
        };
        if w.batch.is_some() {
            let undone = w
                .conn
                .execute_batch("ROLLBACK TO paygent_tx; RELEASE paygent_tx");
            if let Err(e) = undone {
                fail_batch(&mut w, &e.to_string());
            }
        }
        drop(w);
        self.lite.nudge();
    }
}
