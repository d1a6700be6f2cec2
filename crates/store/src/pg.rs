//! PostgreSQL: one tenant's concurrent writes committed in groups, under one hold of its row lock.
//!
//! Every write of a tenant takes the tenant's row lock (`FOR UPDATE`) for its audit chain and event sequence, so
//! a tenant's writes run one after another whatever the pool's size. Paying for that lock, a `BEGIN` and a
//! `COMMIT` (with its WAL flush) once per write made each one queue behind the last one's disk flush. Here the
//! writes of one tenant in this process queue fairly on an in-process lock instead, and each runs as a savepoint
//! inside the tenant's open group: one transaction, one row lock hold, one flush for all of them. A committer
//! commits the group as soon as it gets the lock, so writers that queued before it join the group and later
//! ones start the next. As on SQLite ([`crate::lite`]), a write's `commit` returns only once its group is
//! durable, and a failed group fails every write in it, none half-written. Other instances still serialize on
//! the row lock, now once per group.

use crate::deferred::Deferred;
use crate::{Outcome, Result, StoreError};
use sqlx::pool::PoolConnection;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Postgres};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard, watch};
use uuid::Uuid;

/// Writes grouped in one commit at most: other instances wait for the row lock while a group is open.
const MAX_GROUP: usize = 64;

/// Past this many remembered tenants, those no writer holds any more are forgotten.
const REMEMBERED: usize = 1024;

/// The pool, and the groups of the tenants being written to.
#[derive(Debug)]
pub(crate) struct Pg {
    pub(crate) pool: PgPool,
    groups: Mutex<HashMap<Uuid, Weak<AsyncMutex<Group>>>>,
    acquire_timeout: Duration,
    pub(crate) commits: Arc<crate::Commits>,
}

/// A tenant's writes in this process: its open transaction, if any.
#[derive(Debug)]
struct Group {
    commits: Arc<crate::Commits>,
    open: Option<Open>,
    /// A committer waits for the lock already.
    committer_queued: bool,
}

#[derive(Debug)]
struct Open {
    conn: GroupConn,
    members: usize,
    outcome: watch::Sender<Outcome>,
    /// What the last write left in its savepoint: settled by whoever takes the group next.
    left: Left,
}

/// What the last write left: nothing yet (the transaction is not begun), or its savepoint, still to be
/// released (it committed) or rolled back (it was dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Left {
    Nothing,
    Kept,
    Undone,
}

impl Left {
    /// The statements that settle what the last write left, before the next one's savepoint.
    fn settle(self) -> &'static str {
        match self {
            Left::Nothing => "BEGIN; ",
            Left::Kept => "RELEASE SAVEPOINT paygent_tx; ",
            Left::Undone => "ROLLBACK TO SAVEPOINT paygent_tx; RELEASE SAVEPOINT paygent_tx; ",
        }
    }
}

impl Pg {
    pub(crate) fn new(pool: PgPool, acquire_timeout: Duration) -> Arc<Pg> {
        Arc::new(Pg {
            pool,
            groups: Mutex::new(HashMap::new()),
            acquire_timeout,
            commits: Arc::default(),
        })
    }

    /// The tenant's group: one per tenant while anyone holds it.
    fn group(&self, tenant_id: Uuid) -> Arc<AsyncMutex<Group>> {
        let mut groups = self.groups.lock().expect("groups");
        if let Some(group) = groups.get(&tenant_id).and_then(Weak::upgrade) {
            return group;
        }
        if groups.len() >= REMEMBERED {
            groups.retain(|_, g| g.strong_count() > 0);
        }
        let group = Arc::new(AsyncMutex::new(Group {
            commits: self.commits.clone(),
            open: None,
            committer_queued: false,
        }));
        groups.insert(tenant_id, Arc::downgrade(&group));
        group
    }

    /// Starts a write for `tenant_id`: waits (fairly, in arrival order) for the tenant's group, with a connection
    /// for it if it has none. The write's savepoint is opened by its first statement ([`PgTx::start`]).
    pub(crate) async fn begin(&self, tenant_id: Uuid) -> Result<PgTx> {
        let group = self.group(tenant_id);
        let turn = tokio::time::timeout(self.acquire_timeout, group.clone().lock_owned());
        let mut guard = self
            .commits
            .queued(turn)
            .await
            .map_err(|_| StoreError::Busy)?;
        if guard.open.is_none() {
            let conn = tokio::time::timeout(self.acquire_timeout, self.pool.acquire())
                .await
                .map_err(|_| StoreError::Busy)??;
            guard.open = Some(Open {
                conn: GroupConn(Some(conn)),
                members: 0,
                outcome: watch::channel(None).0,
                left: Left::Nothing,
            });
        }
        Ok(PgTx {
            guard: Some(guard),
            group,
            held: Vec::new(),
        })
    }
}

/// Commits the group's open transaction, if any, and tells its writes how it went. The last write's savepoint
/// is released first: were the transaction aborted, that fails, where a bare `COMMIT` would roll back and say
/// nothing.
async fn commit(group: &mut Group) {
    let Some(open) = group.open.take() else {
        return;
    };
    if open.left == Left::Nothing {
        // No write began it: the connection goes back as it came.
        drop(open.conn.release());
        return;
    }
    if open.members == 0 {
        // Every write in it was dropped: nothing to keep.
        let _ = open.conn.end("ROLLBACK".into()).await;
        return;
    }
    let outcome = open
        .conn
        .end(format!("{}COMMIT", open.left.settle()))
        .await
        .map_err(|e| e.to_string());
    match &outcome {
        Ok(()) => group.commits.add(open.members),
        Err(e) => {
            tracing::error!(error = %e, writes = open.members, "PostgreSQL group commit failed")
        }
    }
    open.outcome.send_replace(Some(outcome));
}

/// Fails the group's open transaction: every write in it fails.
async fn fail(group: &mut Group, why: &str) {
    if let Some(open) = group.open.take() {
        tracing::error!(error = %why, writes = open.members, "PostgreSQL group rolled back");
        open.outcome.send_replace(Some(Err(why.to_owned())));
        let _ = open.conn.end("ROLLBACK".into()).await;
    }
}

/// A group's connection, inside its transaction. It goes back to the pool only once `end` ended that
/// transaction; dropped before (an error, or a caller cancelled mid-statement) it is closed, and PostgreSQL rolls
/// the transaction back: no one is ever handed a connection inside someone else's transaction.
#[derive(Debug)]
struct GroupConn(Option<PoolConnection<Postgres>>);

impl GroupConn {
    fn get(&mut self) -> &mut PgConnection {
        self.0.as_mut().expect("held until ended")
    }

    /// The connection, outside any transaction, back to the pool.
    fn release(mut self) -> Option<PoolConnection<Postgres>> {
        self.0.take()
    }

    /// Ends the transaction with `sql` (a commit or a rollback), then hands the connection back to the pool.
    async fn end(mut self, sql: String) -> std::result::Result<(), sqlx::Error> {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(self.get())
            .await?;
        drop(self.0.take());
        Ok(())
    }
}

impl Drop for GroupConn {
    fn drop(&mut self) {
        if let Some(conn) = self.0.as_mut() {
            conn.close_on_drop();
        }
    }
}

/// Queues a committer for the group, unless one waits already. It commits once the writers queued before it
/// have had their turn.
fn queue_committer(group: &Arc<AsyncMutex<Group>>, state: &mut Group) {
    if state.committer_queued {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    state.committer_queued = true;
    let group = group.clone();
    runtime.spawn(async move {
        let mut state = group.lock_owned().await;
        state.committer_queued = false;
        commit(&mut state).await;
    });
}

/// A write transaction on PostgreSQL: a savepoint in its tenant's open group.
#[derive(Debug)]
pub struct PgTx {
    guard: Option<OwnedMutexGuard<Group>>,
    group: Arc<AsyncMutex<Group>>,
    /// Writes held back until the next statement or the commit ([`crate::deferred`]).
    held: Vec<Deferred>,
}

impl PgTx {
    /// The connection the group's statements run on.
    pub(crate) fn conn(&mut self) -> Result<&mut PgConnection> {
        let open = self.guard.as_mut().and_then(|g| g.open.as_mut());
        Ok(open.ok_or(StoreError::Closed)?.conn.get())
    }

    /// Runs the write's first statements, `sql` (simple protocol, so its values are literals): in the same round
    /// trip, what the last write left is settled and this one's savepoint opened. Returns the rows of each
    /// statement, in order (those that settle and open first).
    pub(crate) async fn start(&mut self, sql: &str) -> Result<Vec<Vec<PgRow>>> {
        use futures::TryStreamExt;
        let guard = self.guard.as_mut().ok_or(StoreError::Closed)?;
        // Taken out while the statements run: a caller cancelled here drops the group, whose writes then fail,
        // rather than leave its savepoints in a state nobody knows.
        let mut open = guard.open.take().ok_or(StoreError::Closed)?;
        let sql = format!("{}SAVEPOINT paygent_tx; {sql}", open.left.settle());
        let mut results = vec![Vec::new()];
        let done = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .fetch_many(open.conn.get())
            .try_for_each(|step| {
                match step {
                    sqlx::Either::Left(_) => results.push(Vec::new()),
                    sqlx::Either::Right(row) => results.last_mut().expect("one").push(row),
                }
                std::future::ready(Ok(()))
            })
            .await;
        open.left = Left::Undone;
        guard.open = Some(open);
        // The last statement's end began a list no statement filled.
        results.pop();
        match done {
            Ok(()) => Ok(results),
            Err(e) => {
                let e = StoreError::from(e);
                fail(guard, &e.to_string()).await;
                Err(e)
            }
        }
    }

    /// Holds `write` back until the next statement or the commit; writes held for its table go first.
    pub(crate) async fn hold(&mut self, write: Deferred) -> Result<()> {
        if self.held.iter().any(|h| h.table == write.table) {
            self.flush().await?;
        }
        self.held.push(write);
        Ok(())
    }

    /// Sends the writes held back, in one statement.
    pub(crate) async fn flush(&mut self) -> Result<()> {
        let held = std::mem::take(&mut self.held);
        crate::deferred::flush(self.conn()?, held).await
    }

    /// The writes held back, for the commit's statement to carry.
    pub(crate) fn take_held(&mut self) -> Vec<Deferred> {
        std::mem::take(&mut self.held)
    }

    /// Keeps this write in its group and waits until the group is committed.
    pub(crate) async fn commit(mut self) -> Result<()> {
        let mut state = self.guard.take().ok_or(StoreError::Closed)?;
        let Some(open) = state.open.as_mut() else {
            return Err(StoreError::Commit("the group was lost".into()));
        };
        open.left = Left::Kept;
        open.members += 1;
        let outcome = open.outcome.subscribe();
        if open.members >= MAX_GROUP {
            commit(&mut state).await;
        } else {
            queue_committer(&self.group, &mut state);
        }
        drop(state);
        crate::durable(outcome, "the group's transaction was dropped").await
    }
}

impl Drop for PgTx {
    /// A write dropped without commit leaves no trace: whoever takes the group next rolls its savepoint back,
    /// and a committer is queued so the group never waits on a write that will not come.
    fn drop(&mut self) {
        if let Some(mut state) = self.guard.take() {
            queue_committer(&self.group, &mut state);
        }
    }
}
