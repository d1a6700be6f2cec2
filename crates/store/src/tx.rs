//! The one way to change state: a transaction that locks its tenant's row, then writes the change, its audit
//! entries and its events together, so none can exist without the others.

use crate::budgets::LedgerRows;
use crate::db::{Arg, Conn, Db, Query, Row, inlined, query};
use crate::deferred::{Changes, Deferred};
use crate::pg::{Ahead, Closing, PgTx};
use crate::policies::RulesCache;
use crate::{Engine, Result, Store, StoreError};
use chrono::{DateTime, Utc};
use paygent_domain::audit::AuditAction;
use paygent_domain::audit::AuditEntry;
use paygent_domain::event::EventKind;
use paygent_domain::velocity::Window;
use serde::Serialize;
use serde_json::Value;
use std::sync::LazyLock;
use uuid::Uuid;

/// An event as written to the outbox, ready to fan out once its transaction commits.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub tenant_id: Uuid,
    pub seq: i64,
    #[serde(rename = "type")]
    pub kind: EventKind,
    pub session_id: Option<Uuid>,
    pub payload: Value,
    pub created_at: String,
}

impl Event {
    /// The thing the event is about (a payment, request, execution...): every event names its subject as `id`.
    pub fn subject(&self) -> Option<Uuid> {
        self.payload.get("id").and_then(Value::as_str)?.parse().ok()
    }

    /// Whether the event is about the thing with this id (a payment, request, execution...): every event names
    /// its subject as `id`.
    pub fn is_about(&self, id: Uuid) -> bool {
        self.subject() == Some(id)
    }
}

pub struct WriteTx {
    conn: Conn,
    tenant_id: Uuid,
    now: DateTime<Utc>,
    audit_seq: i64,
    audit_head: String,
    event_seq: i64,
    kill_switch: Option<String>,
    audit: Vec<AuditEntry>,
    events: Vec<Event>,
    rules: RulesCache,
    /// The store's instance, named in the event nudge.
    instance: Uuid,
    ledgers: LedgerRows,
    /// The session [`Store::begin_about`] read with the lock, by (session, default policy), until it is taken.
    prefetched: Option<((Uuid, Uuid), Option<Row>)>,
    /// The approval request [`Store::begin_about`] read with the lock, until it is taken.
    prefetched_approval: Option<(Uuid, Option<Row>)>,
    /// The standing approvals and payee history [`Store::begin_about`] read with the lock, until taken.
    prefetched_standing: Option<StandingRead>,
    /// The key that acts, and its name, as of the lock.
    actor: Option<(Uuid, String)>,
    /// How many of the acting key's requests wait on people, as of the lock, until this write changes it.
    actor_pending: Option<i64>,
    /// The write left the circuit breaker's marks.
    marked: bool,
    /// The tenant's last event before this write.
    events_before: i64,
}

/// The tenant's head, and the acting key's name (`$2`, NULL for the system) if it is live at `$3`: read once the
/// lock is held (on PostgreSQL just after it, [`LOCK`]), so a key revoked a moment ago writes nothing, at no extra
/// round trip. With them, how many of that key's requests wait on people, which the cap on them reads when the
/// write files one.
macro_rules! head {
    () => {
        "SELECT audit_seq, audit_head, event_seq, kill_switch, \
         (SELECT name FROM api_keys WHERE id = $2 AND tenant_id = $1 AND revoked_at IS NULL \
          AND (expires_at IS NULL OR expires_at > $3)), \
         (SELECT pending FROM key_pending WHERE key_id = $2) FROM tenants WHERE id = $1"
    };
}
const HEAD: &str = head!();

/// PostgreSQL: the statements a write's first round trip runs, prepared once on each connection, since that
/// round trip also carries the last write's closing statement and what settles it, and so uses the simple
/// protocol, which would plan them each time: the tenant's lock (taken as a group opens, [`LOCK`]), the head's
/// read, and for a write about one session, that session with its policy and its budget rows around today (for
/// a decision, those of its request's session, through the request), for a decision or an approved payment's
/// run, the approval request, and for a payment, the circuit breaker's windows and, if a person is likely to be
/// asked, the standing approvals and the payee's history.
pub(crate) static PREPARED: LazyLock<String> = LazyLock::new(|| {
    format!(
        "PREPARE paygent_lock (text) AS SELECT 1 FROM tenants WHERE id = $1 FOR UPDATE; \
         PREPARE paygent_head (text, text, text) AS {HEAD}; \
         PREPARE paygent_session (text, text, text) AS {}; \
         PREPARE paygent_days (text, text, text, text) AS {}; \
         PREPARE paygent_request_session (text, text, text) AS {}; \
         PREPARE paygent_request_days (text, text, text, text, text) AS {}; \
         PREPARE paygent_approval (text, text) AS {}; \
         PREPARE paygent_windows (text, text) AS {}; \
         PREPARE paygent_standing (text, text, text, text) AS {}; \
         PREPARE paygent_history (text, text, text, int8) AS {}",
        *crate::policies::SESSION_WITH_POLICY,
        crate::budgets::days_sql(),
        *crate::policies::SESSION_OF_REQUEST,
        crate::budgets::days_of_request_sql(),
        *crate::approvals::BY_ID,
        *crate::velocity::WINDOWS_LISTED,
        *crate::standing::IN_FORCE,
        *crate::payments::PAYEE_HISTORY
    )
});
/// The tenant's row lock, in a statement of its own before anything is read: a statement that waits for a lock
/// reads other rows as they were before it waited (PostgreSQL rechecks only the locked row), so a write queued
/// behind another instance's would read a key that instance revoked as live, and its count of waiting requests
/// as it was. The statements after it read what the lock's last holder committed.
pub(crate) const LOCK: &str = "EXECUTE paygent_lock ($1)";
const HEAD_READ: &str = "EXECUTE paygent_head ($1, $2, $3)";
/// Where the session's and its budget rows' statements are among a first round trip's, after the head's.
pub(crate) const SESSION_ROWS: std::ops::Range<usize> = 1..3;
const ABOUT: &str = "; EXECUTE paygent_session ($1, $4, $5); EXECUTE paygent_days ($4, $6, $7, $8)";
const APPROVAL: &str = "; EXECUTE paygent_approval ($1, $9)";
/// A decision's: the request (`$4`), its session and that session's budget rows.
const ABOUT_REQUEST: &str = "; EXECUTE paygent_request_session ($1, $4, $5); \
     EXECUTE paygent_request_days ($1, $4, $6, $7, $8); EXECUTE paygent_approval ($1, $4)";

/// The session a write is about (for a decision, `None`: the request's, which the request names), and the
/// tenant's default policy (the session's when it names none), for a decision or an approved payment's run the
/// approval request, and for a payment the circuit breaker's windows it is likely to read: on PostgreSQL all of
/// them, and the session's budget rows, are read in the round trip that takes the lock. The windows are a guess:
/// [`crate::velocity::windows`] uses that read only when asked for exactly them. So are the standing approvals
/// and payee history of a payment likely to go to a person ([`crate::standing::in_force_with_history`]).
#[derive(Debug, Clone)]
pub struct About {
    pub session: Option<Uuid>,
    pub default_policy: Uuid,
    pub approval: Option<Uuid>,
    pub windows: Vec<Window>,
    pub standing: Option<StandingAsked>,
}

/// The standing approvals and payee history read for a session and what it asked: the rows of each.
type StandingRead = ((Uuid, StandingAsked), Vec<Vec<Row>>);

/// A payment's session's standing approvals for `payee` (normalized), and what the tenant paid `recipient`
/// since `since` (at most `limit` payments): what a person asked about it would be shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandingAsked {
    pub payee: String,
    pub recipient: String,
    pub since: DateTime<Utc>,
    pub limit: i64,
}

impl Store {
    /// Starts a write for `tenant_id` at time `now`, taking the tenant's write lock.
    pub async fn begin(&self, tenant_id: Uuid, now: DateTime<Utc>) -> Result<WriteTx> {
        self.begin_by(tenant_id, None, now, None).await
    }

    /// Starts a write made by the key `key_id`: refused with [`StoreError::KeyNotLive`] if that key was revoked
    /// or has expired, as of the tenant's lock.
    pub async fn begin_as(
        &self,
        tenant_id: Uuid,
        key_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<WriteTx> {
        self.begin_by(tenant_id, Some(key_id), now, None).await
    }

    /// Starts a write made by `key_id` about one session, as [`Store::begin_as`].
    pub async fn begin_about(
        &self,
        tenant_id: Uuid,
        key_id: Uuid,
        now: DateTime<Utc>,
        about: About,
    ) -> Result<WriteTx> {
        self.begin_by(tenant_id, Some(key_id), now, Some(about))
            .await
    }

    async fn begin_by(
        &self,
        tenant_id: Uuid,
        key_id: Option<Uuid>,
        now: DateTime<Utc>,
        about: Option<About>,
    ) -> Result<WriteTx> {
        let args = [
            tenant_id.to_string().into(),
            key_id.map(|k| k.to_string()).into(),
            paygent_domain::time::format(now).into(),
        ];
        // On PostgreSQL the row lock serializes the tenant's writers (a lock, not a new row version per write),
        // taken in the round trip that opens the group's transaction; SQLite has one writer already.
        let (conn, row, read) = match &self.engine {
            Engine::Pg(pg) => {
                let about = about.clone();
                let reads = FirstReads {
                    args: args.to_vec(),
                    now,
                    about,
                };
                let (tx, row, read) = begun(pg, tenant_id, reads).await?;
                (Conn::Pg(Box::new(tx)), row, read)
            }
            Engine::Lite(lite) => {
                let mut conn = Conn::Lite(lite.begin().await?);
                let head = Query::with_args(HEAD, args.to_vec());
                let row = head.fetch_optional(Db::Tx(&mut conn)).await?;
                (conn, row, None)
            }
        };
        let row = row.ok_or(StoreError::UnknownTenant(tenant_id))?;
        let actor = match (key_id, row.get::<Option<String>>(4)?) {
            (Some(id), Some(name)) => Some((id, name)),
            (Some(_), None) => return Err(StoreError::KeyNotLive),
            (None, _) => None,
        };
        let mut tx = WriteTx {
            conn,
            tenant_id,
            now,
            audit_seq: row.get(0)?,
            audit_head: row.get(1)?,
            event_seq: row.get(2)?,
            kill_switch: row.get(3)?,
            audit: Vec::new(),
            events: Vec::new(),
            rules: self.rules.clone(),
            instance: self.instance,
            ledgers: LedgerRows::default(),
            prefetched: None,
            prefetched_approval: None,
            prefetched_standing: None,
            actor_pending: match actor {
                Some(_) => Some(row.get::<Option<i64>>(5)?.unwrap_or(0)),
                None => None,
            },
            actor,
            marked: false,
            events_before: 0,
        };
        if let Conn::Pg(pg) = &mut tx.conn {
            // The group's head, which it writes only as it commits, over what the lock read.
            if let Some(head) = pg.group_head() {
                (tx.audit_seq, tx.audit_head) = (head.audit_seq, head.audit_head);
                tx.event_seq = head.event_seq;
            }
            pg.locked(&tx.audit_head);
        }
        tx.events_before = tx.event_seq;
        if let (Some(about), Some(read)) = (about, read) {
            tx.keep_read(about, read)?;
        }
        if let Conn::Pg(pg) = &tx.conn {
            // What the group's kept writes left, not yet in the database.
            pg.answer_ledgers(&mut tx.ledgers);
        }
        Ok(tx)
    }
}

impl WriteTx {
    /// Keeps what the first round trip read about `about`, each until taken: the session's budget rows, the
    /// session, the approval request, the standing approvals and payee history, and the breaker's windows.
    fn keep_read(&mut self, about: About, read: Read) -> Result<()> {
        if let Some(session) = read.session_id {
            crate::budgets::seen_days(self, session, &read.days, read.budget)?;
            self.prefetched = Some(((session, about.default_policy), read.session));
        }
        self.prefetched_approval = about.approval.zip(read.approval);
        self.prefetched_standing = about.session.zip(about.standing).zip(read.standing);
        if let (Some(rows), Conn::Pg(pg)) = (read.windows, &mut self.conn) {
            let found = crate::velocity::placed(&rows, about.windows.len())?;
            pg.read_with_lock(about.windows, found);
        }
        Ok(())
    }
}

/// What `slot` holds, taken out, if it was read for `key`; otherwise it stays.
pub(crate) fn take_if<K: PartialEq, V>(slot: &mut Option<(K, V)>, key: K) -> Option<V> {
    match slot.take() {
        Some((read, value)) if read == key => Some(value),
        other => {
            *slot = other;
            None
        }
    }
}

/// What a write about a session read in its first round trip.
struct Read {
    /// The session's id (none when a decision's request is not there), and the session with its policy.
    session_id: Option<Uuid>,
    session: Option<Row>,
    /// The days whose budget rows were read, and those rows.
    days: [String; 3],
    budget: Vec<Row>,
    /// The approval request (`Some(None)`: there is no such request).
    approval: Option<Option<Row>>,
    /// The rows of the breaker's windows, if any were asked for.
    windows: Option<Vec<Row>>,
    /// The rows of the standing approvals and of the payee's history, if asked for.
    standing: Option<Vec<Vec<Row>>>,
}

/// PostgreSQL: what a write's first round trip reads: the head, and for a write about a session, the session and
/// its budget rows around today, and what else its `about` names. Composed as it is sent, by the write or by one
/// ahead of it ([`Ahead`]), since whether the breaker's windows need reading depends on its group then.
#[derive(Debug)]
pub(crate) struct FirstReads {
    args: Vec<Arg>,
    now: DateTime<Utc>,
    about: Option<About>,
}

/// How the rows of a write's first round trip read back: on which days the budget rows are, whether the windows
/// and the standing approvals were read, and how many statements it made.
#[derive(Debug)]
pub(crate) struct Plan {
    days: [String; 3],
    windows: bool,
    /// The recipient whose payee history was read, if it was.
    history: Option<String>,
    /// The session read with its budget rows, if one was ([`FirstReads::session_read`]).
    session: Option<SessionRead>,
    approval: Option<Uuid>,
    statements: usize,
}

impl FirstReads {
    /// A write about nothing in particular goes on to statements of its own: its reads are not sent ahead.
    pub(crate) fn may_go_ahead(&self) -> bool {
        self.about.is_some()
    }

    /// The statements, their values written in, and how they read back; the windows are not read again if the
    /// group `knows_windows` already.
    /// The session a write about a named session reads, with the policy it falls back on and the days of its
    /// budget rows: writes that read the same may share one read ([`crate::pg::Ahead`]).
    pub(crate) fn session_read(&self) -> Option<SessionRead> {
        let a = self.about.as_ref()?;
        let days = crate::budgets::days_around(self.now);
        a.session.map(|s| (s, a.default_policy, days))
    }

    /// The statements, their values written in, and how they read back; the windows are not read again if the
    /// group `knows_windows` already, nor the session and its budget rows unless `session` (another write's
    /// read of them goes in their place, [`SESSION_ROWS`]).
    pub(crate) fn sql(
        &self,
        knows_windows: impl Fn(&[Window]) -> bool,
        session: bool,
    ) -> Result<(String, Plan)> {
        let (mut sql, mut args) = (HEAD_READ.to_owned(), self.args.clone());
        let days = crate::budgets::days_around(self.now);
        let about = self.about.as_ref();
        let windows = about.is_some_and(|a| !a.windows.is_empty() && !knows_windows(&a.windows));
        // Only a payment's: its session is named.
        let standing = about.and_then(|a| a.standing.as_ref().filter(|_| a.session.is_some()));
        let mut statements = 1;
        if let Some(a) = about {
            statements += about_sql(a, &days, (&mut sql, &mut args), session);
            if windows {
                args.push(crate::velocity::listed(&a.windows).into());
                sql.push_str(&format!("; EXECUTE paygent_windows ($1, ${})", args.len()));
                statements += 1;
            }
        }
        if let Some(asked) = standing {
            standing_sql(asked, &mut sql, &mut args);
            statements += 2;
        }
        let plan = Plan {
            days,
            windows,
            history: standing.map(|s| s.recipient.clone()),
            session: self.session_read().filter(|_| session),
            approval: about.and_then(|a| a.approval),
            statements,
        };
        Ok((inlined(&sql, &args)?, plan))
    }
}

/// A named session, the policy it falls back on, and the days of its budget rows.
pub(crate) type SessionRead = (Uuid, Uuid, [String; 3]);

impl Plan {
    pub(crate) fn statements(&self) -> usize {
        self.statements
    }

    /// The session it reads with its budget rows, if it reads one.
    pub(crate) fn session_read(&self) -> Option<&SessionRead> {
        self.session.as_ref()
    }

    /// Whether the reads depend on the rows of `table` a write changed (`changes`) as they are in the database,
    /// so that the write makes them stale. The audit chain and events are never read back; payments only in the
    /// payee history read; an approval request only by a write about it. (What a group writes only as it
    /// commits, such as budget rows and the breaker's marks, is laid over the reads by the group.)
    pub(crate) fn reads(&self, table: &str, changes: &Changes) -> bool {
        match (table, changes) {
            (_, Changes::Unread) | ("audit_log" | "events", _) => false,
            ("payments", Changes::PaidTo(to)) => self.history.as_ref() == Some(to),
            ("payments", _) => self.history.is_some(),
            ("approval_requests", Changes::Row(id)) => self.approval == Some(*id),
            ("approval_requests", _) => self.approval.is_some(),
            _ => true,
        }
    }
}

/// PostgreSQL: waits for the tenant's turn, then has what the write is about: read ahead by the write before it
/// in its group ([`Ahead`]), or read in its own first round trip.
async fn begun(
    pg: &crate::pg::Pg,
    tenant_id: Uuid,
    reads: FirstReads,
) -> Result<(PgTx, Option<Row>, Option<Read>)> {
    let ahead = Ahead::new(reads);
    let mut tx = pg.begin(tenant_id, &ahead).await?;
    let (row, read) = match tx.read_ahead(&ahead) {
        Some((plan, rows)) => parsed(rows, &plan, ahead.reads().about.as_ref())?,
        None => first_round_trip(&mut tx, ahead.reads()).await?,
    };
    Ok((tx, row, read))
}

/// PostgreSQL: the write's first round trip (the group's first write takes the lock); a write about nothing in
/// particular also opens its savepoint.
async fn first_round_trip(
    tx: &mut PgTx,
    reads: &FirstReads,
) -> Result<(Option<Row>, Option<Read>)> {
    let (sql, plan) = reads.sql(|w| tx.may_know_windows(w), true)?;
    // A write about nothing in particular (a session made, a key revoked) goes on to statements of its own:
    // its savepoint opens now, in this round trip, rather than in one of its own before them.
    let results = tx.start(&sql, reads.about.is_none()).await?;
    // Those that settle and open in front of its own are not its.
    let own = results.len().saturating_sub(plan.statements());
    parsed(
        crate::db::rows_of(&results[own..])?,
        &plan,
        reads.about.as_ref(),
    )
}

/// The head's row and what was read about `about` from the rows of a first round trip's statements.
fn parsed(
    results: Vec<Vec<Row>>,
    plan: &Plan,
    about: Option<&About>,
) -> Result<(Option<Row>, Option<Read>)> {
    let mut results = results.into_iter().rev();
    let mut rows = || -> Result<Vec<Row>> { Ok(results.next().unwrap_or_default()) };
    let read = match about {
        Some(a) => {
            let standing = match plan.history {
                Some(_) => {
                    let history = rows()?;
                    Some(vec![rows()?, history])
                }
                None => None,
            };
            let windows = match plan.windows {
                true => Some(rows()?),
                false => None,
            };
            let approval = match a.approval {
                Some(_) => Some(rows()?.into_iter().next()),
                None => None,
            };
            let (budget, session) = (rows()?, rows()?);
            let session_id = match (a.session, &approval) {
                (Some(id), _) => Some(id),
                (None, Some(Some(request))) => Some(crate::approvals::session_of(request)?),
                (None, _) => None,
            };
            Some(Read {
                session_id,
                session: session.into_iter().next(),
                days: plan.days.clone(),
                budget,
                approval,
                windows,
                standing,
            })
        }
        None => None,
    };
    Ok((rows()?.into_iter().next(), read))
}

/// The statements (and their values) that read what a write is about: its session (named, or its request's),
/// the session's budget rows on `days` (a named session's only if `session`), and the request; how many
/// statements that makes.
fn about_sql(
    a: &About,
    days: &[String; 3],
    (sql, args): (&mut String, &mut Vec<Arg>),
    session: bool,
) -> usize {
    let default_policy = a.default_policy.to_string().into();
    match (a.session, a.approval) {
        (None, Some(request)) => {
            sql.push_str(ABOUT_REQUEST);
            args.extend([request.to_string().into(), default_policy]);
            args.extend(days.iter().map(Arg::from));
            3
        }
        (named, approval) => {
            let read = session || named.is_none();
            if read {
                sql.push_str(ABOUT);
            }
            args.extend([named.map(|s| s.to_string()).into(), default_policy]);
            args.extend(days.iter().map(Arg::from));
            if let Some(approval) = approval {
                sql.push_str(APPROVAL);
                args.push(approval.to_string().into());
            }
            2 * usize::from(read) + usize::from(approval.is_some())
        }
    }
}

/// The standing approvals in force (`$4`, the session, `$3`, the time) and the payee's history, read after the
/// rest of the first round trip.
fn standing_sql(asked: &StandingAsked, sql: &mut String, args: &mut Vec<Arg>) {
    let n = args.len();
    args.extend([
        asked.payee.clone().into(),
        asked.recipient.clone().into(),
        paygent_domain::time::format(asked.since).into(),
        asked.limit.into(),
    ]);
    sql.push_str(&format!(
        "; EXECUTE paygent_standing ($1, $4, ${}, $3); EXECUTE paygent_history ($1, ${}, ${}, ${})",
        n + 1,
        n + 2,
        n + 3,
        n + 4
    ));
}

impl WriteTx {
    /// Where this transaction's statements run.
    pub fn conn(&mut self) -> Db<'_> {
        Db::Tx(&mut self.conn)
    }

    pub fn tenant_id(&self) -> Uuid {
        self.tenant_id
    }

    /// The PostgreSQL transaction, for statements sent together in one message.
    pub(crate) fn pg(&mut self) -> Option<&mut PgTx> {
        match &mut self.conn {
            Conn::Pg(pg) => Some(pg.as_mut()),
            Conn::Lite(_) => None,
        }
    }

    /// The SQLite write transaction, which holds the writer and so the breaker's marks it keeps.
    pub(crate) fn lite(&mut self) -> Option<&mut crate::lite::LiteTx> {
        match &mut self.conn {
            Conn::Lite(lite) => Some(lite),
            Conn::Pg(_) => None,
        }
    }

    /// Where statements run, beside the store's parsed policy rules.
    pub(crate) fn with_rules(&mut self) -> (Db<'_>, &RulesCache) {
        (Db::Tx(&mut self.conn), &self.rules)
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.now
    }

    /// The tenant's emergency stop record, if it is engaged, as of this transaction's lock.
    pub fn kill_switch(&self) -> Option<&str> {
        self.kill_switch.as_deref()
    }

    /// Engages (`Some`) or releases (`None`) the tenant's emergency stop.
    pub async fn set_kill_switch(&mut self, record: Option<&str>) -> Result<()> {
        query("UPDATE tenants SET kill_switch = $2 WHERE id = $1")
            .bind(self.tenant_id.to_string())
            .bind(record)
            .execute(Db::Tx(&mut self.conn))
            .await?;
        self.kill_switch = record.map(str::to_owned);
        Ok(())
    }

    /// The transaction's timestamp in the stored format.
    pub fn now_text(&self) -> String {
        paygent_domain::time::format(self.now)
    }

    /// Changes one of this tenant's rows with `sql` binding `$1` tenant, `$2` id and `$3` value; whether a row
    /// changed (the condition in `sql` held).
    pub(crate) async fn change_one(
        &mut self,
        sql: &'static str,
        id: Uuid,
        value: impl Into<Arg>,
    ) -> Result<bool> {
        let done = query(sql)
            .bind(self.tenant_id.to_string())
            .bind(id.to_string())
            .bind(value)
            .execute(self.conn())
            .await?;
        Ok(done == 1)
    }

    /// Appends an entry to the tenant's hash chain. It is written with the commit.
    pub async fn audit(
        &mut self,
        actor: &str,
        action: AuditAction,
        subject: &str,
        session_id: Option<Uuid>,
        data: Value,
    ) -> Result<()> {
        let mut entry = AuditEntry {
            tenant_id: self.tenant_id,
            seq: self.audit_seq + 1,
            at: self.now_text(),
            actor: actor.to_owned(),
            action: action.as_str().to_owned(),
            subject: subject.to_owned(),
            session_id,
            data,
            prev_hash: self.audit_head.clone(),
            hash: String::new(),
        };
        entry.hash = entry.compute_hash();
        self.audit_seq = entry.seq;
        self.audit_head = entry.hash.clone();
        self.audit.push(entry);
        Ok(())
    }

    /// Appends an event with the tenant's next sequence number. It is written with the commit.
    pub async fn event(
        &mut self,
        kind: EventKind,
        session_id: Option<Uuid>,
        payload: Value,
    ) -> Result<()> {
        self.event_seq += 1;
        self.events.push(Event {
            tenant_id: self.tenant_id,
            seq: self.event_seq,
            kind,
            session_id,
            payload,
            created_at: self.now_text(),
        });
        Ok(())
    }

    /// Runs a write that must change `rows` rows of `table`. On PostgreSQL it is held back and sent with the
    /// transaction's next statement or its commit ([`crate::deferred`]): an error or a wrong count then fails
    /// that statement, and with it the transaction.
    pub(crate) async fn defer(&mut self, table: &'static str, q: Query, rows: u64) -> Result<()> {
        self.hold(Deferred::new(table, q, rows)).await
    }

    /// Runs `write`: on PostgreSQL it is held back as [`WriteTx::defer`] says. A write that changes only some
    /// rows of its table says which ([`Deferred::changing`]): reads sent ahead of others still hold
    /// ([`crate::pg::Ahead`]).
    pub(crate) async fn hold(&mut self, write: Deferred) -> Result<()> {
        match &mut self.conn {
            Conn::Pg(tx) => tx.hold(write).await,
            Conn::Lite(_) => write.run(Db::Tx(&mut self.conn)).await,
        }
    }

    /// The session row [`Store::begin_about`] read with the lock, if this is the session and default policy it
    /// read it for (`Some(None)`: there is no such session). Taken once: later reads see the transaction's own
    /// changes.
    pub(crate) fn take_prefetched(
        &mut self,
        session: Uuid,
        default_policy: Uuid,
    ) -> Option<Option<Row>> {
        take_if(&mut self.prefetched, (session, default_policy))
    }

    /// The approval request [`Store::begin_about`] read with the lock, if it is `id` (`Some(None)`: there is no
    /// such request). Taken once, as the session.
    pub(crate) fn take_prefetched_approval(&mut self, id: Uuid) -> Option<Option<Row>> {
        take_if(&mut self.prefetched_approval, id)
    }

    /// The standing approvals and payee history [`Store::begin_about`] read with the lock, if they are those of
    /// `session` and `asked`: the rows of each. Taken once, as the session; the guard reads them before it writes.
    pub(crate) fn take_prefetched_standing(
        &mut self,
        session: Uuid,
        asked: StandingAsked,
    ) -> Option<Vec<Vec<Row>>> {
        take_if(&mut self.prefetched_standing, (session, asked))
    }

    /// How many of the key `id`'s requests wait on people, if it is the one that acts and this write has not
    /// changed the count.
    pub(crate) fn actor_pending(&self, id: Uuid) -> Option<i64> {
        let (key, _) = self.actor.as_ref()?;
        (*key == id).then_some(self.actor_pending).flatten()
    }

    /// This write changed how many requests of some key wait: the count read with the lock no longer holds.
    pub(crate) fn pending_changed(&mut self) {
        self.actor_pending = None;
    }

    /// The name of the key `id`, if it is the one that acts.
    pub(crate) fn actor_name(&self, id: Uuid) -> Option<&str> {
        let (key, name) = self.actor.as_ref()?;
        (*key == id).then_some(name.as_str())
    }

    /// The tenant's last event before this write: where something that follows the event log from now starts.
    pub fn events_before(&self) -> i64 {
        self.events_before
    }

    /// The write leaves the circuit breaker's marks: it must append to the audit chain too.
    pub(crate) fn leaves_marks(&mut self) {
        self.marked = true;
    }

    /// The rows of ledgers this transaction read or wrote, by (table, owner, bucket): under the tenant's lock
    /// nobody else changes them, so looking again costs no statement.
    pub(crate) fn ledgers(&mut self) -> &mut LedgerRows {
        &mut self.ledgers
    }

    /// Writes the audit entries, the events and the new chain head, and commits. Returns the events to fan out.
    /// On PostgreSQL the entries and events, with the writes held back, are one statement that goes with the
    /// group's next round trip; the head, and a NOTIFY that PostgreSQL delivers to other instances only if and
    /// when the transaction commits, go once for the whole group as it commits ([`crate::pg`]).
    pub async fn commit(mut self) -> Result<Vec<Event>> {
        if self.marked && self.audit.is_empty() {
            // Another instance tells that nobody left marks from the chain's head ([`crate::velocity::Carried`]).
            return Err(StoreError::Corrupt(
                "a write left the circuit breaker's marks without an audit entry".into(),
            ));
        }
        let head: Vec<Arg> = vec![
            self.tenant_id.to_string().into(),
            self.audit_seq.into(),
            self.audit_head.clone().into(),
            self.event_seq.into(),
        ];
        let outbox = self.outbox();
        let mut closing = None;
        match &mut self.conn {
            Conn::Pg(tx) => {
                let mut writes = tx.take_held();
                writes.extend(outbox);
                closing = Closing::new(writes);
            }
            Conn::Lite(_) => {
                // In-process statements cost no round trip.
                for write in outbox {
                    write.run(Db::Tx(&mut self.conn)).await?;
                }
                Query::with_args(HEAD_UPDATE, head)
                    .execute(Db::Tx(&mut self.conn))
                    .await?;
            }
        }
        match self.conn {
            Conn::Pg(tx) => {
                let head = crate::pg::Head {
                    audit_seq: self.audit_seq,
                    audit_head: self.audit_head.clone(),
                    event_seq: self.event_seq,
                    nudge: (!self.events.is_empty()).then_some(self.instance),
                };
                let seen = std::mem::take(&mut self.ledgers);
                tx.commit(closing, head, seen).await?
            }
            Conn::Lite(tx) => tx.commit().await?,
        }
        Ok(self.events)
    }

    /// The inserts of the transaction's audit entries and events.
    fn outbox(&self) -> Vec<Deferred> {
        let tenant = self.tenant_id.to_string();
        let mut writes = Vec::new();
        if !self.audit.is_empty() {
            let mut values = Vec::with_capacity(self.audit.len() * 10);
            for e in &self.audit {
                values.extend::<[Arg; 10]>([
                    tenant.clone().into(),
                    e.seq.into(),
                    e.at.clone().into(),
                    e.actor.clone().into(),
                    e.action.clone().into(),
                    e.subject.clone().into(),
                    e.session_id.map(|s| s.to_string()).into(),
                    e.data.to_string().into(),
                    e.prev_hash.clone().into(),
                    e.hash.clone().into(),
                ]);
            }
            let rows = self.audit.len() as u64;
            writes.push(Deferred::insert("audit_log", AUDIT_COLUMNS, values, rows));
        }
        if !self.events.is_empty() {
            let mut values = Vec::with_capacity(self.events.len() * 6);
            for e in &self.events {
                values.extend::<[Arg; 6]>([
                    tenant.clone().into(),
                    e.seq.into(),
                    e.kind.as_str().into(),
                    e.session_id.map(|s| s.to_string()).into(),
                    e.payload.to_string().into(),
                    e.created_at.clone().into(),
                ]);
            }
            let rows = self.events.len() as u64;
            writes.push(Deferred::insert("events", EVENT_COLUMNS, values, rows));
        }
        writes
    }
}

const AUDIT_COLUMNS: &str =
    "tenant_id, seq, at, actor, action, subject, session_id, data, prev_hash, hash";
const EVENT_COLUMNS: &str = "tenant_id, seq, type, session_id, payload, created_at";

/// The tenant's new chain head and event sequence, from the first four arguments of a commit.
pub(crate) const HEAD_UPDATE: &str =
    "UPDATE tenants SET audit_seq = $2, audit_head = $3, event_seq = $4 WHERE id = $1";
