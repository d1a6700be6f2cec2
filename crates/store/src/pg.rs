//! PostgreSQL: one tenant's concurrent writes committed in groups, under one hold of its row lock.
//!
//! Every write of a tenant holds the tenant's row lock (`FOR UPDATE`) for its audit chain and event sequence, so
//! a tenant's writes run one after another whatever the pool's size. Paying for that lock, a `BEGIN` and a
//! `COMMIT` (with its WAL flush) once per write made each one queue behind the last one's disk flush. Here the
//! writes of one tenant in this process queue fairly on an in-process lock instead, and each runs inside the
//! tenant's open group: one transaction, one row lock hold, one flush for all of them. A write that sends more
//! than its first round trip's reads does so in a savepoint of its own, which rolls it back alone should it fail
//! ([`PgTx::savepoint`]); one that does not (a payment the guard allows, a decision) needs none. A committer
//! commits the group as soon as it gets the lock, so writers that queued before it join the group and later
//! ones start the next. As on SQLite ([`crate::lite`]), a write's `commit` returns only once its group is
//! durable, and a failed group fails every write in it, none half-written. Other instances still serialize on
//! the row lock, now once per group. The committer takes the group's transaction out of the tenant's turn before
//! it sends the `COMMIT` ([`seal`]): the next writes open the next group on another connection meanwhile, and its
//! lock waits at PostgreSQL for the first group to end, so one group's flush overlaps the next one's first
//! round trip instead of holding up the tenant's writes.
//!
//! A write's last statement (its held-back writes, audit entries and events, [`Closing`]) is not sent when the
//! write commits: it waits in the group and goes in front of the next write's first statements, in that write's
//! round trip, or just before the group's `COMMIT`. The write is answered only once its group is durable anyway,
//! and one tenant's writes run one after another, so each round trip saved is one less wait for all of them.
//! The price: a closing statement that fails fails its whole group (still none half-written), and the write
//! whose round trip carried it starts over in a new group. A message of several statements cannot bind
//! parameters, and planning a closing statement from its text each time cost more than the round trip saved
//! (BENCHMARKS.md), so each shape of closing statement is prepared once on a connection and executed by name.
//! The closing statements of writes in a row that only insert and update single rows (a payment the guard allows,
//! a decision, their audit entries and events) go as one statement of one insert or update per table
//! ([`deferred::merged`]), which costs PostgreSQL a third less than one statement each; should it fail, its
//! writes learn the database's words from their group's failure.
//!
//! A write's first round trip reads what it is about (the tenant's head, its session and budget rows, the
//! request it decides). The writes waiting for the tenant's turn say beforehand what they will read ([`Ahead`]),
//! and the write whose turn it is sends those reads behind its own, in its round trip (a session several of them
//! read, with its budget rows, once for all of them). A waiting write whose turn
//! comes in the same group then uses them and sends nothing until it commits, unless a write kept since changed
//! what they read ([`Touched`]: a write that sent statements of its own may have changed anything, one that did
//! not only what its closing statement writes); then it reads again. The closing statements of writes that sent
//! nothing wait together for the group's next message.
//!
//! Under the group's lock hold, what no other writer can change is kept by the group, not read or written per
//! write: the tenant's head (its audit chain and event sequence, [`Head`]) and the budget rows its writes change
//! answer its next writes and are written once, just before its `COMMIT` ([`GroupLedgers`]), as are the spend
//! rollups they add to ([`GroupRollups`]), the breaker's marks they leave ([`GroupMarks`]) and the keys' counts
//! of requests waiting on people they move ([`GroupPending`]); the breaker's windows are read once
//! ([`GroupWindows`]) and handed to the tenant's next group while nobody else has written ([`Carried`]). A
//! session's payments all change the same few rows, so a group of them writes each once.

use crate::approvals::GroupPending;
use crate::budgets::{Changed, GroupLedgers, LedgerRows};
use crate::db::{Arg, Row, inlined, placeholders};
use crate::deferred::{self, Changes, Deferred, Rendered};
use crate::spend::GroupRollups;
use crate::tx::{FirstReads, Plan};
use crate::velocity::{Carried, Found, GroupMarks, GroupWindows};
use crate::{Outcome, Result, StoreError};
use paygent_domain::velocity::{Mark, Window};
use sqlx::pool::PoolConnection;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Postgres};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard, oneshot, watch};
use uuid::Uuid;

/// Writes grouped in one commit at most: other instances wait for the row lock while a group is open.
const MAX_GROUP: usize = 64;

/// Past this many remembered tenants, those no writer holds any more are forgotten (and past as many carried
/// windows, one tenant's).
const REMEMBERED: usize = 1024;

/// The breaker's windows one write keeps for its group at most (a payment reads at most 16).
const MOST_WINDOWS_SEEN: usize = 64;

/// Shapes of statement (closing statements, reads sent together) prepared on one connection at most; past it, a
/// new shape goes as plain text.
const MOST_PREPARED: usize = 128;

/// Writes whose reads go ahead in one message at most.
const MOST_AHEAD: usize = 32;

/// Writes queued for reads ahead, per tenant, at most.
const MOST_WAITING: usize = 256;

/// The names of the statement shapes prepared on the connection, read as a group opens its transaction.
const PREPARED_NAMES: &str =
    "SELECT name FROM pg_prepared_statements WHERE name LIKE 'paygent\\_c%'; ";

/// The pool, and the groups of the tenants being written to.
#[derive(Debug)]
pub(crate) struct Pg {
    pub(crate) pool: PgPool,
    groups: Mutex<HashMap<Uuid, Weak<AsyncMutex<Group>>>>,
    acquire_timeout: Duration,
    pub(crate) commits: Arc<crate::Commits>,
    carried: CarriedWindows,
    waiting: Waiting,
}

/// By tenant, the breaker's windows its last committed group in this instance knew ([`Carried`]).
type CarriedWindows = Arc<Mutex<HashMap<Uuid, Carried>>>;

/// A tenant's writes in this process: its open transaction, if any.
#[derive(Debug)]
struct Group {
    tenant: Uuid,
    carried: CarriedWindows,
    waiting: Waiting,
    commits: Arc<crate::Commits>,
    pool: PgPool,
    acquire_timeout: Duration,
    open: Option<Open>,
    /// A committer waits for the lock already.
    committer_queued: bool,
}

#[derive(Debug)]
struct Open {
    conn: GroupConn,
    members: usize,
    outcome: watch::Sender<Outcome>,
    /// Which group this is, for reads sent ahead in it ([`Ahead`]).
    id: u64,
    /// What the last write left: settled by whoever takes the group next.
    left: Left,
    /// The closing statements of the writes kept since the group's last message, in order: sent in front of its
    /// next one.
    closings: Vec<Closing>,
    /// What each write kept in the group changed before the group commits, in order.
    kept: Vec<Touched>,
    /// The statement shapes prepared on the connection, by name.
    prepared: HashSet<String>,
    /// The breaker's windows the group's writes read, and the marks they kept.
    windows: GroupWindows,
    /// The windows the tenant's last group here knew, until the group's first write reads the chain's head.
    carried: Option<Carried>,
    /// The tenant's head as the last write kept left it, written as the group commits; and whether a kept write
    /// appended events, so other instances are nudged.
    head: Option<Head>,
    nudge: Option<Uuid>,
    /// What the group's kept writes added to the spend rollups, written as it commits.
    rollups: GroupRollups,
    /// The budget rows its kept writes saw and changed, the changed written as it commits.
    ledgers: GroupLedgers,
    /// The breaker's marks its kept writes left, written as it commits.
    marks: GroupMarks,
    /// How its kept writes moved keys' counts of requests waiting on people, written as it commits.
    pending: GroupPending,
}

/// What a kept write changed in the database before its group commits: statements of its own (anything), or
/// only the tables its closing statement writes. Reads sent ahead for a later write hold for it only if no write
/// kept since they were sent changed what they read ([`PgTx::read_ahead`]).
#[derive(Debug)]
enum Touched {
    Statements,
    Tables(Vec<(&'static str, Changes)>),
}

impl Touched {
    fn stales(&self, plan: &Plan) -> bool {
        match self {
            Touched::Statements => true,
            Touched::Tables(changes) => changes.iter().any(|(t, c)| plan.reads(t, c)),
        }
    }
}

/// A write waiting for its tenant's turn: its first round trip's reads may go in the message of a write ahead of
/// it in the same group ([`started`]), and then it needs no round trip of its own when its turn comes.
#[derive(Debug)]
pub(crate) struct Ahead {
    reads: FirstReads,
    found: Mutex<Option<ReadAhead>>,
}

/// Reads sent ahead: in which group, after how many of its kept writes, and their rows.
#[derive(Debug)]
struct ReadAhead {
    group: u64,
    since: usize,
    plan: Plan,
    rows: Vec<Vec<Row>>,
}

impl Ahead {
    pub(crate) fn new(reads: FirstReads) -> Arc<Ahead> {
        Arc::new(Ahead {
            reads,
            found: Mutex::new(None),
        })
    }

    pub(crate) fn reads(&self) -> &FirstReads {
        &self.reads
    }
}

/// By tenant, the writes waiting for its turn whose reads may go ahead ([`Ahead`]), in arrival order, and where
/// a committer was queued among them: those behind it will be in the next group.
type Waiting = Arc<Mutex<HashMap<Uuid, VecDeque<Queued>>>>;

#[derive(Debug)]
enum Queued {
    Write(Weak<Ahead>),
    Committer,
}

/// Queues `entry` behind the tenant's others, unless [`MOST_WAITING`] are queued.
fn queue(waiting: &Waiting, tenant: Uuid, entry: Queued) {
    let mut all = waiting.lock().expect("waiting");
    let queue = all.entry(tenant).or_default();
    if queue.len() >= MOST_WAITING {
        queue.retain(|q| !matches!(q, Queued::Write(w) if w.strong_count() == 0));
    }
    if queue.len() < MOST_WAITING {
        queue.push_back(entry);
    }
}

/// Takes out the first entry `is` matches, if any.
fn dequeue(waiting: &Waiting, tenant: Uuid, is: impl Fn(&Queued) -> bool) {
    let mut all = waiting.lock().expect("waiting");
    let Some(queue) = all.get_mut(&tenant) else {
        return;
    };
    if let Some(at) = queue.iter().position(is) {
        queue.remove(at);
    }
    if queue.is_empty() {
        all.remove(&tenant);
    }
}

/// Takes out the waiting writes queued in front of the first committer, [`MOST_AHEAD`] at most.
fn writes_ahead(waiting: &Waiting, tenant: Uuid) -> Vec<Arc<Ahead>> {
    let mut all = waiting.lock().expect("waiting");
    let Some(queue) = all.get_mut(&tenant) else {
        return Vec::new();
    };
    let (mut taken, mut stop) = (Vec::new(), false);
    queue.retain(|q| match q {
        _ if stop => true,
        Queued::Committer => {
            stop = true;
            true
        }
        Queued::Write(w) => match w.upgrade() {
            Some(ahead) if taken.len() < MOST_AHEAD => {
                taken.push(ahead);
                false
            }
            alive => alive.is_some(),
        },
    });
    if queue.is_empty() {
        all.remove(&tenant);
    }
    taken
}

/// The tenant's head as a write leaves it: its audit chain's last entry and its event sequence, and the instance
/// to name in the nudge to other instances when it appended events. Every write of a group changes it, so the
/// group hands it from write to write ([`PgTx::group_head`]) and writes it once, with one nudge, as it commits.
#[derive(Debug, Clone)]
pub(crate) struct Head {
    pub(crate) audit_seq: i64,
    pub(crate) audit_head: String,
    pub(crate) event_seq: i64,
    pub(crate) nudge: Option<Uuid>,
}

impl Head {
    /// The statements that write the group's head and nudge other instances, to go in a message of several
    /// (empty when no write was kept).
    fn statement(open: &Open, tenant: Uuid) -> Result<String> {
        let Some(head) = &open.head else {
            return Ok(String::new());
        };
        let args = [
            tenant.to_string().into(),
            head.audit_seq.into(),
            head.audit_head.clone().into(),
            head.event_seq.into(),
        ];
        let mut text = inlined(crate::tx::HEAD_UPDATE, &args)? + "; ";
        if let Some(instance) = open.nudge {
            let nudge = crate::events::nudge(tenant, head.event_seq, instance);
            let args = [crate::events::CHANNEL.into(), nudge.into()];
            text += &(inlined("SELECT pg_notify($1, $2)", &args)? + "; ");
        }
        Ok(text)
    }
}

/// A write's last statement, held back until the group's next round trip: its writes, and where its own error
/// goes, so the write learns why (a duplicate key, say) rather than only that its group failed. Sent alone, it
/// checks its own counts and fails if they are wrong, so nothing sent after it in its message runs; the inserts
/// and single-row updates of several writes in a row go as one statement ([`deferred::merged`]), which checks
/// its counts the same way.
#[derive(Debug)]
pub(crate) struct Closing {
    /// Its writes, until the statement that carries them is composed.
    writes: Vec<Deferred>,
    /// The tables it writes, and which of their rows: reads sent before it and used after it are stale if they
    /// read those ([`Touched`]).
    changes: Vec<(&'static str, Changes)>,
    owner: Option<oneshot::Sender<StoreError>>,
}

/// How many closings, in order, one statement of a message carries, and how many statements it makes (its shape's
/// `PREPARE` is one more).
struct Sent {
    closings: usize,
    statements: usize,
}

impl Closing {
    /// `writes` as a write's closing statement, if there are any.
    pub(crate) fn new(writes: Vec<Deferred>) -> Option<Closing> {
        if writes.is_empty() {
            return None;
        }
        let changes = (writes.iter())
            .map(|w| (w.table, w.changes.clone()))
            .collect();
        Some(Closing {
            writes,
            changes,
            owner: None,
        })
    }

    /// Whether all its writes go with others of their kind ([`deferred::merged`]).
    fn merges(&self) -> bool {
        self.writes.iter().all(Deferred::merges)
    }

    /// Its writes as one statement of CTEs that fails unless each changed the rows it should ([`shaped`]), and
    /// how many statements that makes.
    fn alone(&mut self, prepared: &mut HashSet<String>) -> Result<(String, usize)> {
        let mut args = Vec::new();
        let rendered = Rendered::new(std::mem::take(&mut self.writes), &mut args);
        shaped(&rendered.selecting(&rendered.asserted()), &args, prepared)
    }

    /// Whether each statement `sent` in front of the rest of `ran` completed; their results are taken out of
    /// `ran`. The closings the first that did not carried, with its error, if one did not.
    fn first_failed(
        closings: Vec<Closing>,
        sent: &[Sent],
        ran: &mut Ran,
    ) -> Option<(Vec<Closing>, StoreError)> {
        let mut before = 0;
        for s in sent {
            if ran.results.len() < s.statements {
                // It did not complete: the error is its own.
                let error = ran.error.take().unwrap_or(StoreError::Closed);
                let carried = closings.into_iter().skip(before).take(s.closings);
                return Some((carried.collect(), error));
            }
            ran.results.drain(..s.statements);
            before += s.closings;
        }
        None
    }

    /// The statement that carried `closings` failed with `error`: a lone write is told why, and its group fails.
    /// Writes whose inserts went as one statement learn it from their group's failure, which gives the database's
    /// words: which of them broke it is not known.
    async fn failed(mut closings: Vec<Closing>, open: Open, error: StoreError) {
        let why = error.to_string();
        if let [closing] = &mut closings[..]
            && let Some(owner) = closing.owner.take()
        {
            let _ = owner.send(error);
        }
        open.fail(&why).await;
    }
}

/// `sql` as it goes in a message of several: its shape's prepared statement executed with its values as
/// literals, prepared in the same message when the connection has not got it yet (as plain text past
/// [`MOST_PREPARED`] shapes); and how many statements that makes. A prepared statement is planned once, where
/// plain text would be planned every time.
pub(crate) fn shaped(
    sql: &str,
    args: &[Arg],
    prepared: &mut HashSet<String>,
) -> Result<(String, usize)> {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let types: Vec<&str> = args.iter().map(Arg::pg_type).collect();
    let mut shape = DefaultHasher::new();
    (sql, &types).hash(&mut shape);
    let name = format!("paygent_c{:016x}", shape.finish());
    let known = prepared.contains(&name);
    if !known && prepared.len() >= MOST_PREPARED {
        return Ok((inlined(sql, args)?, 1));
    }
    let execute = format!("EXECUTE {name} {}", placeholders(1, 1, args.len()));
    let execute = inlined(&execute, args)?;
    if known {
        return Ok((execute, 1));
    }
    let prepare = format!("PREPARE {name} ({}) AS {sql}; ", types.join(", "));
    prepared.insert(name);
    Ok((prepare + &execute, 2))
}

/// A group's rows of one kind (`rows`, JSON values its `sql` reads from `$2`, with the tenant as `$1`) as a statement
/// to go in front of the group's `COMMIT`: prepared once per connection like any shape; empty when there are none.
pub(crate) fn listed(
    sql: &str,
    tenant: Uuid,
    rows: Vec<serde_json::Value>,
    prepared: &mut HashSet<String>,
) -> Result<String> {
    if rows.is_empty() {
        return Ok(String::new());
    }
    let args = [
        tenant.to_string().into(),
        serde_json::Value::from(rows).to_string().into(),
    ];
    Ok(shaped(sql, &args, prepared)?.0 + "; ")
}

/// The results of each of several queries sent in one message as `statements[i]` statements each: those of
/// its last (the one before is its shape's `PREPARE`).
fn last_of_each<T>(results: Vec<Vec<T>>, statements: &[usize]) -> Result<Vec<Vec<T>>> {
    let mut results = results.into_iter();
    (statements.iter())
        .map(|&n| {
            let last = n.checked_sub(1).and_then(|i| results.nth(i));
            last.ok_or_else(|| StoreError::Corrupt("fewer results than statements".into()))
        })
        .collect()
}

/// What the last write left: nothing yet (the transaction is not begun), nothing to settle (it sent nothing but
/// its first round trip's reads, so it opened no savepoint: [`PgTx::savepoint`]), or its savepoint, still to be
/// released (it committed) or rolled back (it was dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Left {
    Nothing,
    Read,
    Kept,
    Undone,
}

impl Left {
    /// The statements that settle what the last write left, before the next one's statements.
    fn settle(self) -> &'static str {
        match self {
            Left::Nothing => "BEGIN; ",
            Left::Read => "",
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
            carried: Arc::default(),
            waiting: Arc::default(),
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
            tenant: tenant_id,
            carried: self.carried.clone(),
            waiting: self.waiting.clone(),
            commits: self.commits.clone(),
            pool: self.pool.clone(),
            acquire_timeout: self.acquire_timeout,
            open: None,
            committer_queued: false,
        }));
        groups.insert(tenant_id, Arc::downgrade(&group));
        group
    }

    /// Starts a write for `tenant_id`: waits (fairly, in arrival order) for the tenant's group, with a connection
    /// for it if it has none. The write's first statements run in its first round trip ([`PgTx::start`]), or,
    /// for a write about something, in the round trip of a write ahead of it ([`PgTx::read_ahead`]).
    pub(crate) async fn begin(&self, tenant_id: Uuid, ahead: &Arc<Ahead>) -> Result<PgTx> {
        let group = self.group(tenant_id);
        let goes_ahead = ahead.reads.may_go_ahead();
        if goes_ahead {
            queue(
                &self.waiting,
                tenant_id,
                Queued::Write(Arc::downgrade(ahead)),
            );
        }
        let turn = tokio::time::timeout(self.acquire_timeout, group.clone().lock_owned());
        let turn = self.commits.queued(turn).await;
        if goes_ahead {
            dequeue(
                &self.waiting,
                tenant_id,
                |q| matches!(q, Queued::Write(w) if w.as_ptr() == Arc::as_ptr(ahead)),
            );
        }
        let mut guard = turn.map_err(|_| StoreError::Busy)?;
        guard.opened().await?;
        Ok(PgTx {
            guard: Some(guard),
            group,
            held: Vec::new(),
            seen: Vec::new(),
            marks: Vec::new(),
            read_with_lock: None,
            carried: None,
            rollups: Vec::new(),
            ledgers_changed: Vec::new(),
            waiting: Vec::new(),
        })
    }
}

impl Group {
    /// Opens a transaction for the group, with a connection from the pool, unless one is open.
    async fn opened(&mut self) -> Result<()> {
        if self.open.is_none() {
            let conn = tokio::time::timeout(self.acquire_timeout, self.pool.acquire())
                .await
                .map_err(|_| StoreError::Busy)??;
            static GROUPS: AtomicU64 = AtomicU64::new(0);
            self.open = Some(Open {
                conn: GroupConn(Some(conn)),
                members: 0,
                outcome: watch::channel(None).0,
                id: GROUPS.fetch_add(1, Ordering::Relaxed),
                left: Left::Nothing,
                closings: Vec::new(),
                kept: Vec::new(),
                prepared: HashSet::new(),
                windows: GroupWindows::default(),
                carried: self.carried.lock().expect("carried").remove(&self.tenant),
                head: None,
                nudge: None,
                rollups: GroupRollups::default(),
                ledgers: GroupLedgers::default(),
                marks: GroupMarks::default(),
                pending: GroupPending::default(),
            });
        }
        Ok(())
    }
}

/// A group's transaction taken out of the group to be committed, so the tenant's next writes open the next group
/// while its `COMMIT` is under way: that group's lock waits at PostgreSQL until this one ends, so it reads what
/// this one leaves (or, should it fail, what was there before it).
struct Sealed {
    open: Open,
    tenant: Uuid,
    commits: Arc<crate::Commits>,
}

/// Takes the group's open transaction, if any, out to be committed ([`Sealed::commit`]). The breaker's windows its
/// writes asked for go to the tenant's next group now; that group keeps them only if the chain's head it reads
/// with the lock is the one this group leaves ([`Carried`]), which it is not should this group fail.
fn seal(group: &mut Group) -> Option<Sealed> {
    let mut open = group.open.take()?;
    let head = open.head.as_ref().map(|h| h.audit_head.clone());
    let windows = std::mem::take(&mut open.windows);
    if let Some(carried) = head.and_then(|head| Carried::new(head, windows)) {
        let mut all = group.carried.lock().expect("carried");
        if all.len() >= REMEMBERED {
            let any = all.keys().next().copied();
            any.and_then(|tenant| all.remove(&tenant));
        }
        all.insert(group.tenant, carried);
    }
    Some(Sealed {
        open,
        tenant: group.tenant,
        commits: group.commits.clone(),
    })
}

impl Sealed {
    /// Commits and tells the group's writes how it went, in one round trip: the last writes' closing statements,
    /// the release of its savepoint if it opened one, what the group keeps for its commit, the tenant's head
    /// (every kept write leaves one: were the transaction aborted, its update fails, where a bare `COMMIT` would
    /// roll back and say nothing), and the `COMMIT`.
    async fn commit(self) {
        let Sealed {
            open,
            tenant,
            commits,
        } = self;
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
        let Ok((open, _)) = send(open, |open| commit_sql(open, tenant)).await else {
            return;
        };
        drop(open.conn.release());
        commits.add(open.members);
        open.outcome.send_replace(Some(Ok(())));
    }
}

/// The message that commits a group, after the closing statements of its last writes.
fn commit_sql(open: &mut Open, tenant: Uuid) -> Result<String> {
    let rollups = open.rollups.statement(tenant, &mut open.prepared)?;
    let ledgers = open.ledgers.statements(tenant, &mut open.prepared)?;
    let marks = open.marks.statement(tenant, &mut open.prepared)?;
    let pending = open.pending.statement(tenant, &mut open.prepared)?;
    let head = Head::statement(open, tenant)?;
    let settle = open.left.settle();
    Ok(format!(
        "{settle}{rollups}{ledgers}{marks}{pending}{head}COMMIT"
    ))
}

impl Open {
    /// Whether the group knows the breaker's windows `wanted`, or the windows carried from the tenant's last
    /// group do (if they hold).
    fn knows_windows(&self, wanted: &[Window]) -> bool {
        self.windows.knows(wanted) || self.carried.as_ref().is_some_and(|c| c.knows(wanted))
    }

    /// Fails the transaction: every write in it fails.
    async fn fail(self, why: &str) {
        tracing::error!(error = %why, writes = self.members, "PostgreSQL group rolled back");
        self.outcome.send_replace(Some(Err(why.to_owned())));
        let _ = self.conn.end("ROLLBACK".into()).await;
    }
}

/// Fails the group's open transaction, if any.
async fn fail(group: &mut Group, why: &str) {
    if let Some(open) = group.open.take() {
        open.fail(why).await;
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
    // Writes queued behind it will be in the next group: none sends its reads ahead in this one.
    queue(&state.waiting, state.tenant, Queued::Committer);
    let group = group.clone();
    runtime.spawn(async move {
        let mut state = group.lock_owned().await;
        state.committer_queued = false;
        dequeue(&state.waiting, state.tenant, |q| {
            matches!(q, Queued::Committer)
        });
        let sealed = seal(&mut state);
        drop(state);
        if let Some(sealed) = sealed {
            sealed.commit().await;
        }
    });
}

/// A write transaction on PostgreSQL: a part of its tenant's open group, in a savepoint once it sends more than
/// reads.
#[derive(Debug)]
pub struct PgTx {
    guard: Option<OwnedMutexGuard<Group>>,
    group: Arc<AsyncMutex<Group>>,
    /// Writes held back until the next statement or the commit ([`crate::deferred`]).
    held: Vec<Deferred>,
    /// The breaker's windows this write read before it left a mark, and the marks it leaves: its group's once
    /// it keeps its savepoint ([`GroupWindows`]).
    seen: Vec<(Window, Found)>,
    marks: Vec<(String, Mark)>,
    /// The windows guessed and read in this write's first round trip, until asked for.
    read_with_lock: Option<(Vec<Window>, Vec<Found>)>,
    /// The windows carried from the tenant's last group, when they hold as of this write's lock.
    carried: Option<GroupWindows>,
    /// What the write adds to the spend rollups: its group's once it is kept.
    rollups: Vec<paygent_domain::spend::RollupChange>,
    /// The budget rows the write changed, in order: its group's once it is kept.
    ledgers_changed: Vec<Changed>,
    /// How the write moved keys' counts of requests waiting on people: its group's once it is kept.
    waiting: Vec<(String, i64)>,
}

impl PgTx {
    /// The connection the group's statements run on.
    pub(crate) fn conn(&mut self) -> Result<&mut PgConnection> {
        let open = self.guard.as_mut().and_then(|g| g.open.as_mut());
        Ok(open.ok_or(StoreError::Closed)?.conn.get())
    }

    /// Runs the write's first statements, `sql` (simple protocol, so its values are literals), reads: in the same
    /// round trip, the last write's closing statement runs, what it left is settled, and with `savepoint` this
    /// one's savepoint opens ([`PgTx::savepoint`]) before `sql`. Returns the rows of each statement, in order
    /// (those that settle and open first). Should the last write's closing statement fail, its group fails, and
    /// this write starts over, once, in a new group.
    pub(crate) async fn start(&mut self, sql: &str, savepoint: bool) -> Result<Vec<Vec<PgRow>>> {
        let group = self.guard.as_mut().ok_or(StoreError::Closed)?;
        let carried = group.open.as_ref().is_some_and(|o| !o.closings.is_empty());
        let sql = match savepoint {
            true => format!("SAVEPOINT paygent_tx; {sql}"),
            false => sql.to_owned(),
        };
        let started = match started(group, &sql).await {
            Err(_) if carried => {
                group.opened().await?;
                started(group, &sql).await
            }
            done => done,
        };
        if savepoint
            && started.is_ok()
            && let Some(open) = group.open.as_mut()
        {
            open.left = Left::Undone;
        }
        started
    }

    /// Runs `queries`, reads, after what the write held back (sent in its savepoint), in one message: the rows of
    /// each. Should the message fail, the group fails (a statement it prepared may or may not exist now).
    pub(crate) async fn read_together(
        &mut self,
        queries: &[(&str, &[Arg])],
    ) -> Result<Vec<Vec<PgRow>>> {
        self.flush().await?;
        let group = self.guard.as_mut().ok_or(StoreError::Closed)?;
        let mut statements = Vec::with_capacity(queries.len());
        let results = sent(group, |open| {
            let mut text = String::new();
            for (sql, args) in queries {
                let (statement, n) = shaped(sql, args, &mut open.prepared)?;
                text.push_str(&statement);
                text.push_str("; ");
                statements.push(n);
            }
            Ok(text)
        })
        .await?;
        last_of_each(results, &statements)
    }

    /// The reads a write ahead of this one sent for it ([`Ahead`]), if they were sent in this group and nothing
    /// kept since changed what they read: the write's first round trip, already made. The last kept write must
    /// have left nothing to settle (no savepoint).
    pub(crate) fn read_ahead(&mut self, ahead: &Ahead) -> Option<(Plan, Vec<Vec<Row>>)> {
        let found = ahead.found.lock().expect("found").take()?;
        let group = self.guard.as_ref()?;
        let open = group.open.as_ref()?;
        let since = open.kept.get(found.since..)?;
        let fresh = found.group == open.id
            && open.left == Left::Read
            && !since.iter().any(|t| t.stales(&found.plan));
        if fresh {
            (group.commits.read_ahead).fetch_add(1, Ordering::Relaxed);
        }
        fresh.then_some((found.plan, found.rows))
    }

    /// The breaker's windows, while the write has left no mark: read with the lock if those were exactly these
    /// (taken once), or if its group knows them all.
    pub(crate) fn known_windows(&mut self, wanted: &[Window]) -> Option<Vec<Found>> {
        if !self.marks.is_empty() {
            return None;
        }
        if let Some(found) = crate::tx::take_if(&mut self.read_with_lock, wanted.to_vec()) {
            self.saw_windows(wanted, &found);
            return Some(found);
        }
        if let Some(found) = self.carried.as_mut().and_then(|c| c.known(wanted)) {
            return Some(found);
        }
        let open = self.guard.as_mut()?.open.as_mut()?;
        open.windows.known(wanted)
    }

    /// Whether the breaker's windows `wanted` may be known without reading them: the group knows them, or the
    /// windows carried from the tenant's last group do (if they hold: [`PgTx::locked`] tells).
    pub(crate) fn may_know_windows(&self, wanted: &[Window]) -> bool {
        let open = self.guard.as_ref().and_then(|g| g.open.as_ref());
        open.is_some_and(|o| o.knows_windows(wanted))
    }

    /// The write took the tenant's lock and read the audit chain's `head`: the windows carried from the
    /// tenant's last group are this write's if the head is the one that group left, and are dropped otherwise.
    /// They become the group's only once the write is kept, as the windows it reads.
    pub(crate) fn locked(&mut self, head: &str) {
        let open = self.guard.as_mut().and_then(|g| g.open.as_mut());
        let Some(open) = open.filter(|o| o.members == 0) else {
            return;
        };
        self.carried = open.carried.take().and_then(|c| c.valid_at(head));
    }

    /// The windows guessed and read in the write's first round trip.
    pub(crate) fn read_with_lock(&mut self, windows: Vec<Window>, mut found: Vec<Found>) {
        self.lay_marks_over(&windows, &mut found);
        self.read_with_lock = Some((windows, found));
    }

    /// Windows read from the database, with the marks the group's kept writes and this one left laid over them:
    /// those are written only as the group commits.
    pub(crate) fn lay_marks_over(&self, wanted: &[Window], found: &mut [Found]) {
        let open = self.guard.as_ref().and_then(|g| g.open.as_ref());
        let kept = open.into_iter().flat_map(|o| o.marks.listed());
        let own = self.marks.iter().map(|(scope, m)| (scope.as_str(), *m));
        let marks: Vec<(&str, Mark)> = kept.chain(own).collect();
        crate::velocity::laid_over(wanted, found, &marks);
    }

    /// Windows this write read, for the next writes of its group if it is kept and had left no mark.
    pub(crate) fn saw_windows(&mut self, wanted: &[Window], found: &[Found]) {
        if self.marks.is_empty() && self.seen.len() + wanted.len() <= MOST_WINDOWS_SEEN {
            self.seen
                .extend(wanted.iter().cloned().zip(found.iter().copied()));
        }
    }

    /// The breaker's marks this write leaves.
    pub(crate) fn stage_marks(&mut self, marks: &[(String, Mark)]) {
        self.marks.extend_from_slice(marks);
    }

    /// Adds a spend to the rollups as the group commits ([`GroupRollups`]).
    pub(crate) fn roll_up(&mut self, changes: &[paygent_domain::spend::RollupChange]) {
        self.rollups.extend_from_slice(changes);
    }

    /// Moves keys' counts of requests waiting on people as the group commits ([`GroupPending`]).
    pub(crate) fn count_waiting(&mut self, changes: &[(String, i64)]) {
        self.waiting.extend_from_slice(changes);
    }

    /// How far the group's kept writes and this one moved `key`'s count, not yet in the database.
    pub(crate) fn unwritten_pending(&self, key: &str) -> i64 {
        let open = self.guard.as_ref().and_then(|g| g.open.as_ref());
        let own = (self.waiting.iter())
            .filter(|(k, _)| k == key)
            .map(|(_, by)| by);
        open.map_or(0, |o| o.pending.of(key)) + own.sum::<i64>()
    }

    /// The tenant's head as the group's last kept write left it: not yet in the database.
    pub(crate) fn group_head(&self) -> Option<Head> {
        let open = self.guard.as_ref().and_then(|g| g.open.as_ref())?;
        open.head.clone()
    }

    /// Budget rows the write changed, written as its group commits ([`GroupLedgers`]).
    pub(crate) fn changed_ledgers(&mut self, rows: Vec<Changed>) {
        self.ledgers_changed.extend(rows);
    }

    /// The budget rows the write's group knows, as its kept writes left them, over those in `write`.
    pub(crate) fn answer_ledgers(&self, write: &mut LedgerRows) {
        if let Some(open) = self.guard.as_ref().and_then(|g| g.open.as_ref()) {
            open.ledgers.answer(write);
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

    /// Sends the writes held back, in one statement, in the write's savepoint.
    pub(crate) async fn flush(&mut self) -> Result<()> {
        if self.held.is_empty() {
            return Ok(());
        }
        self.savepoint().await?;
        let held = std::mem::take(&mut self.held);
        crate::deferred::flush(self.conn()?, held).await
    }

    /// Opens the write's savepoint unless it has one, before it sends anything past its first round trip's reads:
    /// what it sends may then fail alone, rolled back to the savepoint, and its group goes on. A write that sends
    /// nothing more (its held-back writes go in its closing statement, whose failure fails the group anyway)
    /// opens none: no subtransaction, and nothing to settle after it. A write likely to send more opens it in its
    /// first round trip instead ([`PgTx::start`]), saving this one.
    pub(crate) async fn savepoint(&mut self) -> Result<()> {
        let group = self.guard.as_mut().ok_or(StoreError::Closed)?;
        if group.open.as_ref().ok_or(StoreError::Closed)?.left != Left::Read {
            return Ok(());
        }
        sent(group, |_| Ok("SAVEPOINT paygent_tx".to_owned())).await?;
        group.open.as_mut().ok_or(StoreError::Closed)?.left = Left::Undone;
        Ok(())
    }

    /// The writes held back, for the commit's statement to carry.
    pub(crate) fn take_held(&mut self) -> Vec<Deferred> {
        std::mem::take(&mut self.held)
    }

    /// Keeps this write in its group, its `closing` statement (if it has one) held for the group's next round trip
    /// (leaving the tenant at `head`, and the budget rows `seen` as they are), and waits until the group is
    /// committed.
    pub(crate) async fn commit(
        mut self,
        closing: Option<Closing>,
        head: Head,
        seen: LedgerRows,
    ) -> Result<()> {
        let mut state = self.guard.take().ok_or(StoreError::Closed)?;
        let Some(open) = state.open.as_mut() else {
            return Err(StoreError::Commit("the group was lost".into()));
        };
        let (owner, mut own_error) = oneshot::channel();
        let closing = closing.map(|c| Closing {
            owner: Some(owner),
            ..c
        });
        if let Some(carried) = self.carried.take().filter(|_| open.members == 0) {
            open.windows = carried;
        }
        open.windows
            .kept(std::mem::take(&mut self.seen), &self.marks);
        open.rollups.add(&self.rollups);
        open.marks.add(&self.marks);
        open.pending.add(&self.waiting);
        (open.ledgers).kept(seen, std::mem::take(&mut self.ledgers_changed));
        open.kept.push(match open.left {
            // It sent statements of its own, in its savepoint.
            Left::Undone => Touched::Statements,
            _ => Touched::Tables(closing.iter().flat_map(|c| c.changes.clone()).collect()),
        });
        if open.left == Left::Undone {
            open.left = Left::Kept;
        }
        open.closings.extend(closing);
        open.nudge = head.nudge.or(open.nudge);
        open.head = Some(head);
        open.members += 1;
        let outcome = open.outcome.subscribe();
        // A full group commits at once, in a task of its own: a caller cancelled meanwhile cannot cut it short.
        match (open.members >= MAX_GROUP)
            .then(|| seal(&mut state))
            .flatten()
        {
            Some(sealed) => drop(tokio::spawn(sealed.commit())),
            None => queue_committer(&self.group, &mut state),
        }
        drop(state);
        let durable = crate::durable(outcome, "the group's transaction was dropped").await;
        // Sent before the group's outcome, when it was this write's statement that failed it.
        durable.map_err(|e| own_error.try_recv().unwrap_or(e))
    }
}

impl Drop for PgTx {
    /// A write dropped without commit leaves no trace: whoever takes the group next rolls back its savepoint, if
    /// it opened one (one that only read has nothing to undo), and a committer is queued so the group never waits
    /// on a write that will not come.
    fn drop(&mut self) {
        if let Some(mut state) = self.guard.take() {
            queue_committer(&self.group, &mut state);
        }
    }
}

/// Runs a write's first statements, `sql`, in the group's open transaction (what settles the last write in
/// front, and when the group opens, the names of the statements prepared on its connection and the tenant's
/// lock), and behind them the reads of the writes waiting for their turn in this group ([`Ahead`]), which each
/// get theirs. Returns the rows of the rest.
async fn started(group: &mut Group, sql: &str) -> Result<Vec<Vec<PgRow>>> {
    let open = group.open.as_ref().ok_or(StoreError::Closed)?;
    let (opening, since, id) = (open.left == Left::Nothing, open.kept.len(), open.id);
    let mut aheads = writes_ahead(&group.waiting, group.tenant);
    let mut plans = Vec::with_capacity(aheads.len());
    let tenant = group.tenant;
    let mut results = sent(group, |open| {
        let mut text = started_sql(open, tenant, sql)?;
        aheads.retain(|ahead| match ahead_sql(ahead, open, &plans) {
            Ok((reads, plan)) => {
                text.push_str("; ");
                text.push_str(&reads);
                plans.push(plan);
                true
            }
            Err(_) => false,
        });
        Ok(text)
    })
    .await?;
    let open = group.open.as_mut().ok_or(StoreError::Closed)?;
    open.left = Left::Read;
    if opening {
        // After `BEGIN`'s: the names of the statements prepared on the connection.
        match prepared_names(results.get(1)) {
            Ok(names) => open.prepared = names,
            Err(e) => {
                fail(group, &e.to_string()).await;
                return Err(e);
            }
        }
    }
    let total = plans
        .iter()
        .map(|(plan, _)| plan.statements())
        .sum::<usize>();
    let theirs = results.split_off(results.len().saturating_sub(total));
    let handed = handed(theirs, &plans)?;
    for ((ahead, (plan, _)), rows) in aheads.iter().zip(plans).zip(handed) {
        let read = rows.map(|rows| ReadAhead {
            group: id,
            since,
            plan,
            rows,
        });
        *ahead.found.lock().expect("found") = read;
    }
    Ok(results)
}

/// The rows of each waiting write's reads sent ahead, from `results`, those of the session it shares with
/// another (`plans`, [`ahead_sql`]) put in where its own would be; none if they cannot be.
fn handed(
    results: Vec<Vec<PgRow>>,
    plans: &[(Plan, Option<usize>)],
) -> Result<Vec<Option<Vec<Vec<Row>>>>> {
    let mut results = results.into_iter();
    let mut handed: Vec<Option<Vec<Vec<Row>>>> = Vec::with_capacity(plans.len());
    for (plan, shared) in plans {
        let own: Vec<_> = results.by_ref().take(plan.statements()).collect();
        let mut rows = Some(crate::db::rows_of(&own)?);
        if let Some(from) = shared {
            let at = crate::tx::SESSION_ROWS;
            let read = handed.get(*from).and_then(|h| h.as_ref()?.get(at.clone()));
            rows = rows.zip(read).map(|(mut rows, read)| {
                rows.splice(at.start..at.start, read.iter().cloned());
                rows
            });
        }
        handed.push(rows);
    }
    Ok(handed)
}

/// The reads of a write waiting for its turn, to go in the message of the write ahead of it, after the reads
/// `before` of other waiting writes: a session (with its budget rows on the same days) one of them reads already
/// is not read again, and the index of that one goes with the plan.
fn ahead_sql(
    ahead: &Ahead,
    open: &Open,
    before: &[(Plan, Option<usize>)],
) -> Result<(String, (Plan, Option<usize>))> {
    let session = ahead.reads.session_read();
    let shared = session.and_then(|s| {
        before
            .iter()
            .position(|(p, _)| p.session_read() == Some(&s))
    });
    let (sql, plan) = ahead
        .reads
        .sql(|w| open.knows_windows(w), shared.is_none())?;
    Ok((sql, (plan, shared)))
}

/// What goes in front of a write's first statements `sql`: what settles the last write, and when the group opens,
/// the names of the statements prepared on its connection and the tenant's lock.
fn started_sql(open: &mut Open, tenant: Uuid, sql: &str) -> Result<String> {
    let opening = match open.left {
        Left::Nothing => {
            let lock = inlined(crate::tx::LOCK, &[tenant.to_string().into()])?;
            format!("{PREPARED_NAMES}{lock}; ")
        }
        Left::Read | Left::Kept | Left::Undone => String::new(),
    };
    let settle = open.left.settle();
    Ok(format!("{settle}{opening}{sql}"))
}

/// Sends a message of the group's ([`send`]), its transaction back in the group unless it failed.
async fn sent(
    group: &mut Group,
    body: impl FnOnce(&mut Open) -> Result<String>,
) -> Result<Vec<Vec<PgRow>>> {
    // Taken out while the statements run: a caller cancelled here drops the group, whose writes then fail,
    // rather than leave its savepoints in a state nobody knows.
    let open = group.open.take().ok_or(StoreError::Closed)?;
    let (open, results) = send(open, body).await?;
    group.open = Some(open);
    Ok(results)
}

/// Sends a message of the group's: the closing statements of the writes kept since its last one, then `body`,
/// composed after them. Returns the rows of `body`'s statements, in order. Should a closing statement fail, its
/// write learns why; should anything fail, the group fails.
async fn send(
    mut open: Open,
    body: impl FnOnce(&mut Open) -> Result<String>,
) -> Result<(Open, Vec<Vec<PgRow>>)> {
    let mut closings = std::mem::take(&mut open.closings);
    let composed = closings_text(&mut closings, &mut open.prepared)
        .and_then(|(text, sent)| Ok((text + &body(&mut open)?, sent)));
    let (mut ran, sent) = match composed {
        Ok((sql, sent)) => (run(open.conn.get(), sql).await, sent),
        Err(e) => {
            let all = (!closings.is_empty()).then_some(Sent {
                closings: closings.len(),
                statements: 1,
            });
            (Ran::failed(e), all.into_iter().collect())
        }
    };
    if let Some((carried, e)) = Closing::first_failed(closings, &sent, &mut ran) {
        let why = e.to_string();
        Closing::failed(carried, open, e).await;
        return Err(StoreError::Commit(why));
    }
    match ran.error {
        Some(e) => {
            open.fail(&e.to_string()).await;
            Err(e)
        }
        None => Ok((open, ran.results)),
    }
}

/// The closing statements of the writes kept since the group's last message, to go in front of others in a
/// message, and what each statement carries: a closing alone, or several in a row whose writes all merge, as one.
fn closings_text(
    closings: &mut [Closing],
    prepared: &mut HashSet<String>,
) -> Result<(String, Vec<Sent>)> {
    let (mut text, mut sent) = (String::new(), Vec::new());
    let mut rest = closings;
    while !rest.is_empty() {
        let run = rest.iter().take_while(|c| c.merges()).count();
        let ((statement, statements), carried) = match run {
            0 | 1 => (rest[0].alone(prepared)?, 1),
            n => {
                let writes = rest[..n]
                    .iter_mut()
                    .flat_map(|c| std::mem::take(&mut c.writes));
                let (sql, args) = deferred::merged(writes)?;
                (shaped(&sql, &args, prepared)?, n)
            }
        };
        text.push_str(&statement);
        text.push_str("; ");
        sent.push(Sent {
            closings: carried,
            statements,
        });
        rest = &mut rest[carried..];
    }
    Ok((text, sent))
}

fn prepared_names(rows: Option<&Vec<PgRow>>) -> Result<HashSet<String>> {
    use sqlx::Row as _;
    let rows = rows.map_or(&[][..], Vec::as_slice);
    rows.iter()
        .map(|r| r.try_get::<String, _>(0).map_err(StoreError::from))
        .collect()
}

/// What a message of statements did: the rows of each statement that completed, in order, and the error that
/// stopped the rest, if one did.
struct Ran {
    results: Vec<Vec<PgRow>>,
    error: Option<StoreError>,
}

impl Ran {
    fn failed(error: StoreError) -> Ran {
        Ran {
            results: Vec::new(),
            error: Some(error),
        }
    }
}

/// Runs `sql`, one or more statements in the simple protocol.
async fn run(conn: &mut PgConnection, sql: String) -> Ran {
    use futures::TryStreamExt;
    let mut results = vec![Vec::new()];
    let done = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .fetch_many(conn)
        .try_for_each(|step| {
            match step {
                sqlx::Either::Left(_) => results.push(Vec::new()),
                sqlx::Either::Right(row) => results.last_mut().expect("one").push(row),
            }
            std::future::ready(Ok(()))
        })
        .await;
    // The last list is that of a statement that did not complete (or of none, after the last).
    results.pop();
    Ran {
        results,
        error: done.err().map(StoreError::from),
    }
}

#[cfg(test)]
mod tests {
    use super::{Closing, MOST_PREPARED, Ran, Sent, closings_text, last_of_each, shaped};
    use crate::db::query;
    use crate::deferred::Deferred;
    use std::collections::HashSet;

    /// A write's closing statement of one insert, or of one update, of table `t`.
    fn closing(insert: bool) -> Closing {
        let write = match insert {
            true => Deferred::insert("t", "a, b", vec!["x".into(), 1.into()], 1),
            false => Deferred::new("t", query("UPDATE t SET b = $1").bind(2), 1),
        };
        Closing::new(vec![write]).unwrap()
    }

    #[test]
    fn closings_that_only_insert_go_as_one_statement_in_a_row_and_others_alone() {
        let mut closings: Vec<Closing> = [true, true, false, true, false, true, true, true]
            .into_iter()
            .map(closing)
            .collect();
        let mut prepared = HashSet::new();
        let (text, sent) = closings_text(&mut closings, &mut prepared).unwrap();
        let carried: Vec<usize> = sent.iter().map(|s| s.closings).collect();
        assert_eq!(carried, [2, 1, 1, 1, 3]);
        let merged = text.matches("jsonb_populate_recordset").count();
        assert_eq!(merged, 1, "prepared once: {text}");
        assert!(
            text.contains(r#"'[{"a":"x","b":1},{"a":"x","b":1},{"a":"x","b":1}]'"#),
            "{text}"
        );
        // One shape of merged inserts (two rows or three alike), the update's, the lone insert's.
        assert_eq!(prepared.len(), 3, "{prepared:?}");
        let statements: Vec<usize> = sent.iter().map(|s| s.statements).collect();
        assert_eq!(statements, [2, 2, 2, 1, 1]);
    }

    #[test]
    fn the_closings_a_failed_statement_carried_are_the_ones_told() {
        let sent = [
            Sent {
                closings: 2,
                statements: 1,
            },
            Sent {
                closings: 1,
                statements: 2,
            },
        ];
        let failed_at = |completed: usize| {
            let closings: Vec<Closing> = (0..3).map(|i| closing(i < 2)).collect();
            let mut ran = Ran {
                results: (0..completed).map(|_| Vec::new()).collect(),
                error: Some(crate::StoreError::Busy),
            };
            let failed = Closing::first_failed(closings, &sent, &mut ran);
            failed.map(|(carried, _)| carried.iter().map(Closing::merges).collect::<Vec<_>>())
        };
        assert_eq!(failed_at(0), Some(vec![true, true]));
        assert_eq!(
            failed_at(2),
            Some(vec![false]),
            "its PREPARE ran, not its EXECUTE"
        );
        assert_eq!(failed_at(3), None);
    }

    #[test]
    fn each_query_gets_the_rows_of_its_own_last_statement() {
        // A query prepared in the message (two statements), one already prepared, another prepared.
        let results = vec![vec![], vec!["a"], vec!["b", "c"], vec![], vec![]];
        assert_eq!(
            last_of_each(results.clone(), &[2, 1, 2]).unwrap(),
            vec![vec!["a"], vec!["b", "c"], vec![]]
        );
        assert_eq!(
            last_of_each(results.clone(), &[1, 1, 1, 1, 1]).unwrap(),
            results
        );
        assert!(last_of_each(results, &[2, 2, 2]).is_err());
    }

    #[test]
    fn a_shape_is_prepared_once_per_connection_and_past_the_cap_goes_as_text() {
        let args = vec!["it's".into(), 7.into(), crate::db::Arg::Text(None)];
        let mut prepared = HashSet::new();
        let (first, statements) = shaped("SELECT $1, $2, $3", &args, &mut prepared).unwrap();
        assert_eq!(statements, 2);
        let name = prepared.iter().next().unwrap().clone();
        assert_eq!(
            first,
            format!(
                "PREPARE {name} (text, int8, text) AS SELECT $1, $2, $3; EXECUTE {name} (E'it''s', 7, NULL)"
            )
        );
        let (again, statements) = shaped("SELECT $1, $2, $3", &args, &mut prepared).unwrap();
        assert_eq!(
            (again, statements),
            (format!("EXECUTE {name} (E'it''s', 7, NULL)"), 1)
        );
        let (other, _) = shaped("SELECT $3, $2, $1", &args, &mut prepared).unwrap();
        assert!(
            other.starts_with("PREPARE ") && !other.contains(&name),
            "{other}"
        );

        let mut full: HashSet<String> = (0..MOST_PREPARED).map(|i| format!("p{i}")).collect();
        let (plain, statements) = shaped("SELECT $1, $2, $3", &args, &mut full).unwrap();
        assert_eq!(
            (plain.as_str(), statements),
            ("SELECT E'it''s', 7, NULL", 1)
        );
        assert_eq!(full.len(), MOST_PREPARED);
    }
}
