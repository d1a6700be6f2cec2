//! Approval requests. Every change of status is a conditional update on the expected current status, so two
//! racing decisions leave exactly one winner.

use crate::db::{Arg, Db, query};
use crate::deferred::{Changes, Deferred};
use crate::{Result, StoreError, WriteTx, decimal, json, opt_time, opt_uuid, time, uuid};
use chrono::{DateTime, Utc};
use paygent_domain::action::action_digest;
use paygent_domain::quorum::{Escalation, reachable};
use paygent_domain::{ApprovalStatus, Decimal, DecisionKind};
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::sync::LazyLock;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq)]
pub struct ApprovalRecord {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub session_id: Uuid,
    pub payment_id: Option<Uuid>,
    pub tool: String,
    pub args: Value,
    pub edited_args: Option<Value>,
    /// The network its (edited) action pays on, a CAIP-2 id: none when no rail carries it.
    pub network: Option<String>,
    pub reason: String,
    pub usd_value: Decimal,
    pub allowed_decisions: Vec<DecisionKind>,
    pub status: ApprovalStatus,
    pub requested_by: Uuid,
    pub deadline: DateTime<Utc>,
    pub decided_by: Option<Uuid>,
    pub decided_at: Option<DateTime<Utc>>,
    pub decision_note: Option<String>,
    /// The digest of the action the decision was about (see [`ApprovalRecord::digest`]).
    pub decided_digest: Option<String>,
    pub consumed_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    /// How many distinct people must approve its action.
    pub approvals_required: u32,
    /// The groups whose members decide it; anyone who decides, when empty.
    pub groups: Vec<String>,
    /// The approvals of its current action so far (read only where more than one is required).
    pub approvals: Vec<Vote>,
    /// The escalation steps it can reach before its deadline, how many it reached, and when the next is due.
    pub escalation: Vec<Escalation>,
    pub escalated: u32,
    pub escalate_at: Option<DateTime<Utc>>,
    /// What a person needs to decide it, as it stood when it was filed.
    pub context: Option<Value>,
}

/// One person's approval of one action of a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Vote {
    pub by: Uuid,
    pub at: DateTime<Utc>,
    pub comment: Option<String>,
}

/// What a new request is about; everything else about a pending request follows from it.
#[derive(Debug, Clone)]
pub struct NewRequest {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub session_id: Uuid,
    pub payment_id: Option<Uuid>,
    pub tool: String,
    pub args: Value,
    /// The network a rail would pay it on.
    pub network: Option<String>,
    pub reason: String,
    pub usd_value: Decimal,
    pub allowed_decisions: Vec<DecisionKind>,
    pub requested_by: Uuid,
    /// How long people have to decide it.
    pub timeout_seconds: u32,
    /// The quorum its policy sets for its value: (approvals required, groups).
    pub quorum: (u32, Vec<String>),
    /// Its policy's escalation chain.
    pub escalation: Vec<Escalation>,
}

impl ApprovalRecord {
    /// A request waiting on people from `now`, undecided.
    pub fn pending(new: NewRequest, now: DateTime<Utc>) -> ApprovalRecord {
        let escalation = reachable(&new.escalation, new.timeout_seconds);
        let escalate_at = escalation.first().map(|s| step_at(now, s));
        ApprovalRecord {
            id: new.id,
            tenant_id: new.tenant_id,
            session_id: new.session_id,
            payment_id: new.payment_id,
            tool: new.tool,
            args: new.args,
            edited_args: None,
            network: new.network,
            reason: new.reason,
            usd_value: new.usd_value,
            allowed_decisions: new.allowed_decisions,
            status: ApprovalStatus::Pending,
            requested_by: new.requested_by,
            deadline: now + chrono::Duration::seconds(new.timeout_seconds.into()),
            decided_by: None,
            decided_at: None,
            decision_note: None,
            decided_digest: None,
            consumed_at: None,
            created_at: now,
            approvals_required: new.quorum.0,
            groups: new.quorum.1,
            approvals: Vec::new(),
            escalation,
            escalated: 0,
            escalate_at,
            context: None,
        }
    }

    /// The escalation step due next, if one is left.
    pub fn next_step(&self) -> Option<&Escalation> {
        self.escalation.get(self.escalated as usize)
    }

    /// The arguments an execution must use: the edit if there was one.
    pub fn effective_args(&self) -> &Value {
        self.edited_args.as_ref().unwrap_or(&self.args)
    }

    /// The digest of the action this request would run: its session, tool, (edited) arguments and network.
    pub fn digest(&self) -> String {
        let network = self.network.as_deref();
        action_digest(self.session_id, &self.tool, self.effective_args(), network)
    }

    /// Whether running the request's tool with `args` on `network` (where the rails would pay it now) is the
    /// action people decided; whether they approved it is its status's to say. A request decided before digests
    /// were recorded decided the action stored with it, which no one can change after the decision.
    pub fn approves(&self, args: &Value, network: Option<&str>) -> bool {
        let running = action_digest(self.session_id, &self.tool, args, network);
        match &self.decided_digest {
            Some(decided) => *decided == running,
            None => self.digest() == running,
        }
    }
}

crate::row_type! {
    struct ApprovalRow {
        id: String,
        tenant_id: String,
        session_id: String,
        payment_id: Option<String>,
        tool: String,
        args: String,
        edited_args: Option<String>,
        network: Option<String>,
        reason: String,
        usd_value: String,
        allowed_decisions: String,
        status: String,
        requested_by: String,
        deadline: String,
        decided_by: Option<String>,
        decided_at: Option<String>,
        decision_note: Option<String>,
        decided_digest: Option<String>,
        consumed_at: Option<String>,
        created_at: String,
        approvals_required: i64,
        approver_groups: Option<String>,
        escalation: Option<String>,
        escalated: i64,
        escalate_at: Option<String>,
        context: Option<String>,
    }
}

const COLUMNS: &str = "id, tenant_id, session_id, payment_id, tool, args, edited_args, network, reason, usd_value, \
    allowed_decisions, status, requested_by, deadline, decided_by, decided_at, decision_note, decided_digest, consumed_at, \
    created_at, approvals_required, approver_groups, escalation, escalated, escalate_at, context";

impl TryFrom<ApprovalRow> for ApprovalRecord {
    type Error = StoreError;
    fn try_from(r: ApprovalRow) -> Result<Self> {
        let allowed = r
            .allowed_decisions
            .split(',')
            .map(|k| {
                DecisionKind::parse(k)
                    .ok_or_else(|| StoreError::Corrupt(format!("bad decision {k:?}")))
            })
            .collect::<Result<_>>()?;
        Ok(ApprovalRecord {
            id: uuid(&r.id)?,
            tenant_id: uuid(&r.tenant_id)?,
            session_id: uuid(&r.session_id)?,
            payment_id: opt_uuid(r.payment_id)?,
            tool: r.tool,
            args: json(&r.args)?,
            edited_args: r.edited_args.as_deref().map(json).transpose()?,
            network: r.network,
            reason: r.reason,
            usd_value: decimal(&r.usd_value)?,
            allowed_decisions: allowed,
            status: ApprovalStatus::parse(&r.status).ok_or_else(|| {
                StoreError::Corrupt(format!("bad approval status {:?}", r.status))
            })?,
            requested_by: uuid(&r.requested_by)?,
            deadline: time(&r.deadline)?,
            decided_by: opt_uuid(r.decided_by)?,
            decided_at: opt_time(r.decided_at)?,
            decision_note: r.decision_note,
            decided_digest: r.decided_digest,
            consumed_at: opt_time(r.consumed_at)?,
            created_at: time(&r.created_at)?,
            approvals_required: u32::try_from(r.approvals_required)
                .map_err(|_| StoreError::Corrupt("bad approvals_required".into()))?,
            groups: match r.approver_groups {
                Some(text) => crate::parsed(&text, "approver groups")?,
                None => Vec::new(),
            },
            approvals: Vec::new(),
            escalation: match r.escalation {
                Some(text) => crate::parsed(&text, "escalation")?,
                None => Vec::new(),
            },
            escalated: u32::try_from(r.escalated)
                .map_err(|_| StoreError::Corrupt("bad escalated".into()))?,
            escalate_at: opt_time(r.escalate_at)?,
            context: r.context.as_deref().map(json).transpose()?,
        })
    }
}

fn select(filter: &str) -> String {
    format!("SELECT {COLUMNS} FROM approval_requests WHERE {filter}")
}

/// The columns a new request is written with.
const INSERTED: &str = "id, tenant_id, session_id, payment_id, tool, args, reason, usd_value, allowed_decisions, \
    status, requested_by, deadline, created_at, approvals_required, approver_groups, escalation, escalate_at, \
    context, network";

pub async fn insert(tx: &mut WriteTx, a: &ApprovalRecord) -> Result<()> {
    let allowed: Vec<&str> = a.allowed_decisions.iter().map(|k| k.as_str()).collect();
    let values: Vec<Arg> = vec![
        a.id.to_string().into(),
        a.tenant_id.to_string().into(),
        a.session_id.to_string().into(),
        a.payment_id.map(|p| p.to_string()).into(),
        (&a.tool).into(),
        a.args.to_string().into(),
        (&a.reason).into(),
        a.usd_value.to_string().into(),
        allowed.join(",").into(),
        a.status.as_str().into(),
        a.requested_by.to_string().into(),
        paygent_domain::time::format(a.deadline).into(),
        paygent_domain::time::format(a.created_at).into(),
        i64::from(a.approvals_required).into(),
        (!a.groups.is_empty())
            .then(|| Value::from(a.groups.clone()).to_string())
            .into(),
        (!a.escalation.is_empty())
            .then(|| serde_json::to_string(&a.escalation).expect("steps serialize"))
            .into(),
        a.escalate_at.map(paygent_domain::time::format).into(),
        a.context.as_ref().map(Value::to_string).into(),
        a.network.clone().into(),
    ];
    tx.hold(
        Deferred::insert("approval_requests", INSERTED, values, 1).changing(Changes::Row(a.id)),
    )
    .await?;
    if a.status == ApprovalStatus::Pending {
        waiting(tx, &[(a.requested_by.to_string(), 1)]).await?;
    }
    Ok(())
}

/// Moves keys' counts of requests waiting on people by the given amounts: on SQLite at once, on PostgreSQL with
/// the write's group ([`GroupPending`]).
async fn waiting(tx: &mut WriteTx, changes: &[(String, i64)]) -> Result<()> {
    if let Some(pg) = tx.pg() {
        pg.count_waiting(changes);
        return Ok(());
    }
    let tenant = tx.tenant_id().to_string();
    for (key, by) in changes {
        let q = query(
            "INSERT INTO key_pending (key_id, tenant_id, pending) VALUES ($1, $2, $3) \
             ON CONFLICT (key_id) DO UPDATE SET pending = key_pending.pending + excluded.pending",
        )
        .bind(key.clone())
        .bind(tenant.clone())
        .bind(*by);
        tx.defer("key_pending", q, 1).await?;
    }
    tx.pending_changed();
    Ok(())
}

/// PostgreSQL: keys' counts moved in one statement of one shape however many: `$2` is a JSON array of
/// `{key_id, by}`.
const PENDING_LISTED: &str = "INSERT INTO key_pending (key_id, tenant_id, pending) \
     SELECT r.key_id, $1, r.by FROM jsonb_to_recordset(CAST($2 AS jsonb)) AS r(key_id text, by bigint) \
     ON CONFLICT (key_id) DO UPDATE SET pending = key_pending.pending + excluded.pending";

/// PostgreSQL: how the writes of one group (one hold of the tenant's lock) moved keys' counts of requests waiting
/// on people, summed by key, written once as the group commits. An agent's requests all count on one row, which
/// each filing and each decision updated, one statement and one row version each, as the group's other hot rows
/// were. The group's writes read a count as the database has it with the group's changes and their own laid over
/// ([`pending_of_key`]). A write's changes join the group only once it keeps its savepoint.
#[derive(Debug, Default)]
pub(crate) struct GroupPending(BTreeMap<String, i64>);

impl GroupPending {
    pub(crate) fn add(&mut self, changes: &[(String, i64)]) {
        for (key, by) in changes {
            *self.0.entry(key.clone()).or_default() += by;
        }
    }

    /// How far the group moved `key`'s count.
    pub(crate) fn of(&self, key: &str) -> i64 {
        self.0.get(key).copied().unwrap_or(0)
    }

    /// The statement that moves the counts of `tenant`'s keys, to go in a message of several (empty when none
    /// moved).
    pub(crate) fn statement(&self, tenant: Uuid, prepared: &mut HashSet<String>) -> Result<String> {
        let rows = (self.0.iter())
            .filter(|(_, by)| **by != 0)
            .map(|(key, by)| serde_json::json!({"key_id": key, "by": by}))
            .collect();
        crate::pg::listed(PENDING_LISTED, tenant, rows, prepared)
    }
}

/// Counts the requests of `rows` (their `requested_by` in column `asker`) as no longer waiting, one statement
/// per key.
async fn stopped_waiting_all(tx: &mut WriteTx, rows: &[crate::Row], asker: usize) -> Result<()> {
    let mut askers: BTreeMap<String, i64> = Default::default();
    for r in rows {
        *askers.entry(r.get::<String>(asker)?).or_default() -= 1;
    }
    waiting(tx, &askers.into_iter().collect::<Vec<_>>()).await
}

/// Counts a request that stopped waiting (`asker` is its `requested_by`, if the update returned it).
async fn stopped_waiting(tx: &mut WriteTx, asker: Option<String>) -> Result<bool> {
    match asker {
        Some(key) => waiting(tx, &[(key, -1)]).await.map(|()| true),
        None => Ok(false),
    }
}

/// The request, with the approvals of its current action where it needs more than one.
pub async fn get(mut db: Db<'_>, tenant_id: Uuid, id: Uuid) -> Result<Option<ApprovalRecord>> {
    let found: Option<ApprovalRecord> =
        crate::by_id::<ApprovalRow, _>(db.again(), BY_ID.as_str(), tenant_id, id).await?;
    match found {
        Some(request) => with_votes(db, request).await.map(Some),
        None => Ok(None),
    }
}

/// Pending requests, oldest first, with the approvals so far of those that need more than one.
pub async fn pending(db: Db<'_>, scope: crate::Scope) -> Result<Vec<ApprovalRecord>> {
    listed(db, "status = 'pending'", false, scope).await
}

/// Decided requests (any status but pending), newest first, with their approvals where they needed more than
/// one. The index of decided requests (tenant, time, id) holds only them, so a page reads no pending request.
pub async fn decided(db: Db<'_>, scope: crate::Scope) -> Result<Vec<ApprovalRecord>> {
    listed(db, "status <> 'pending'", true, scope).await
}

async fn listed(
    mut db: Db<'_>,
    status: &str,
    newest_first: bool,
    scope: crate::Scope,
) -> Result<Vec<ApprovalRecord>> {
    let sql = select(&format!(
        "{status} AND {}",
        crate::scoped("approval_requests", newest_first)
    ));
    let mut list: Vec<ApprovalRecord> =
        crate::in_scope::<ApprovalRow, _>(db.again(), sql, scope).await?;
    for request in list.iter_mut().filter(|r| r.approvals_required > 1) {
        request.approvals = votes(db.again(), request.id, &request.digest()).await?;
    }
    Ok(list)
}

crate::row_type! {
    struct VoteRow {
        key_id: String,
        at: String,
        comment: Option<String>,
    }
}

impl TryFrom<VoteRow> for Vote {
    type Error = StoreError;
    fn try_from(r: VoteRow) -> Result<Self> {
        Ok(Vote {
            by: uuid(&r.key_id)?,
            at: time(&r.at)?,
            comment: r.comment,
        })
    }
}

/// The approvals of one action of a request, in the order they came: at most as many as people may be asked.
pub async fn votes(db: Db<'_>, approval_id: Uuid, digest: &str) -> Result<Vec<Vote>> {
    query(
        "SELECT key_id, at, comment FROM approval_votes WHERE approval_id = $1 AND digest = $2 \
         ORDER BY at, key_id LIMIT 100",
    )
    .bind(approval_id.to_string())
    .bind(digest.to_owned())
    .records::<VoteRow, _>(db)
    .await
}

/// Records `by`'s approval of the action `digest` of a request; false if they approved that action before.
pub async fn vote(
    tx: &mut WriteTx,
    approval_id: Uuid,
    digest: &str,
    by: Uuid,
    comment: Option<&str>,
) -> Result<bool> {
    let now = tx.now_text();
    let done = query(
        "INSERT INTO approval_votes (approval_id, digest, key_id, comment, at) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (approval_id, digest, key_id) DO NOTHING",
    )
    .bind(approval_id.to_string())
    .bind(digest.to_owned())
    .bind(by.to_string())
    .bind(comment)
    .bind(now)
    .execute(tx.conn())
    .await?;
    Ok(done == 1)
}

/// Gives a pending request the action a person edited it to (its arguments and the network they pay on), still
/// pending (the quorum counts again for the new action); false if it was no longer pending.
pub async fn amend(tx: &mut WriteTx, id: Uuid, edit: Edit<'_>) -> Result<bool> {
    let tenant = tx.tenant_id().to_string();
    let done = query(
        "UPDATE approval_requests SET edited_args = $3, network = $4 \
         WHERE tenant_id = $1 AND id = $2 AND status = 'pending'",
    )
    .bind(tenant)
    .bind(id.to_string())
    .bind(edit.args.to_string())
    .bind(edit.network.map(str::to_owned))
    .execute(tx.conn())
    .await?;
    Ok(done == 1)
}

/// The action an edit makes: its arguments, and the network a rail would pay them on.
#[derive(Clone, Copy)]
pub struct Edit<'a> {
    pub args: &'a Value,
    pub network: Option<&'a str>,
}

/// Pending requests whose deadline has passed, across tenants, most overdue first: (tenant, request).
pub async fn overdue(db: Db<'_>, now: DateTime<Utc>, limit: i64) -> Result<Vec<(Uuid, Uuid)>> {
    pending_due(db, "deadline", now, limit).await
}

/// Pending requests whose `moment` (a time column) is at or before `now`, across tenants, the earliest first:
/// an index range of pending requests, never the table.
async fn pending_due(
    db: Db<'_>,
    moment: &'static str,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<(Uuid, Uuid)>> {
    let rows = query(format!(
        "SELECT tenant_id, id FROM approval_requests WHERE status = 'pending' AND {moment} <= $1 \
         ORDER BY {moment} LIMIT $2"
    ))
    .bind(paygent_domain::time::format(now))
    .bind(limit)
    .fetch_all(db)
    .await?;
    crate::id_pairs(rows)
}

/// A decision to record; it lands only on a pending request whose deadline has not passed.
pub struct Decided<'a> {
    pub id: Uuid,
    pub to: ApprovalStatus,
    pub by: Uuid,
    pub note: Option<&'a str>,
    pub edited_args: Option<&'a Value>,
    /// The digest of the action decided: the request's own, or its edit's.
    pub digest: &'a str,
    /// The network of the action decided.
    pub network: Option<&'a str>,
}

/// The session of the tenant's (`$1`) approval request `$2`, as an expression: what a decision's first round trip
/// reads the session and its budget rows through.
pub(crate) const REQUEST_SESSION: &str =
    "(SELECT session_id FROM approval_requests WHERE tenant_id = $1 AND id = $2)";

/// The session of a request as [`BY_ID`] reads it (its third column).
pub(crate) fn session_of(row: &crate::Row) -> Result<Uuid> {
    uuid(&row.get::<String>(2)?)
}

/// The request by id, as [`get`] reads it (without its approvals).
pub(crate) static BY_ID: LazyLock<String> = LazyLock::new(|| select("tenant_id = $1 AND id = $2"));

/// The request `id` as the transaction sees it, with the approvals of its current action where it needs more
/// than one: read under the tenant's lock, on PostgreSQL in the lock's own round trip when the write was begun
/// about it.
pub async fn current(tx: &mut WriteTx, id: Uuid) -> Result<Option<ApprovalRecord>> {
    let Some(row) = tx.take_prefetched_approval(id) else {
        let tenant_id = tx.tenant_id();
        return get(tx.conn(), tenant_id, id).await;
    };
    let Some(row) = row else {
        return Ok(None);
    };
    let request = ApprovalRecord::try_from(ApprovalRow::try_from(row)?)?;
    with_votes(tx.conn(), request).await.map(Some)
}

/// A decision's changes to a request, and the request they land on: `$2` of tenant `$1`, still pending and not
/// overdue at the decision's time (`$5`).
const DECIDED: &str = "status = $3, decided_by = $4, decided_at = $5, decision_note = $6, edited_args = $7, \
    decided_digest = $8, network = $9";
const STILL_PENDING: &str = "tenant_id = $1 AND id = $2 AND status = 'pending' AND deadline > $5";

/// Records a decision on `current`, the request as the transaction read it under the tenant's lock: the request
/// as it becomes (with the approvals of its action where it needs more than one), or none if it was no longer
/// pending or is overdue. The update is conditional still, and held back (one round trip fewer on PostgreSQL):
/// under the lock nothing else changes the row, and if something did, the write fails rather than land twice.
pub async fn decide(
    tx: &mut WriteTx,
    current: &ApprovalRecord,
    d: Decided<'_>,
) -> Result<Option<ApprovalRecord>> {
    let now = tx.now();
    if current.status != ApprovalStatus::Pending || current.deadline <= now {
        return Ok(None);
    }
    let decided = ApprovalRecord {
        status: d.to,
        decided_by: Some(d.by),
        decided_at: Some(now),
        decision_note: d.note.map(str::to_owned),
        edited_args: d.edited_args.cloned(),
        decided_digest: Some(d.digest.to_owned()),
        network: d.network.map(str::to_owned),
        approvals: Vec::new(),
        ..current.clone()
    };
    let values = vec![
        tx.tenant_id().to_string().into(),
        d.id.to_string().into(),
        d.to.as_str().into(),
        d.by.to_string().into(),
        tx.now_text().into(),
        d.note.into(),
        d.edited_args.map(Value::to_string).into(),
        d.digest.into(),
        d.network.into(),
    ];
    let update = Deferred::update("approval_requests", DECIDED, STILL_PENDING, values);
    tx.hold(update.changing(Changes::Row(d.id))).await?;
    stopped_waiting(tx, Some(decided.requested_by.to_string())).await?;
    with_votes(tx.conn(), decided).await.map(Some)
}

/// `request` with the approvals of its current action, where it needs more than one.
async fn with_votes(db: Db<'_>, mut request: ApprovalRecord) -> Result<ApprovalRecord> {
    if request.approvals_required > 1 {
        request.approvals = votes(db, request.id, &request.digest()).await?;
    }
    Ok(request)
}

/// Ends a pending request as expired or cancelled; returns false if it was no longer pending.
pub async fn end(
    tx: &mut WriteTx,
    id: Uuid,
    to: ApprovalStatus,
    note: Option<&str>,
) -> Result<bool> {
    let now = tx.now_text();
    let tenant = tx.tenant_id().to_string();
    let done = query(
        "UPDATE approval_requests SET status = $3, decided_at = $4, decision_note = $5 \
         WHERE tenant_id = $1 AND id = $2 AND status = 'pending' RETURNING requested_by",
    )
    .bind(tenant)
    .bind(id.to_string())
    .bind(to.as_str())
    .bind(now)
    .bind(note)
    .fetch_optional(tx.conn())
    .await?;
    let asker = done.map(|r| r.get::<String>(0)).transpose()?;
    stopped_waiting(tx, asker).await
}

/// How many of the requests `key` asked for wait on people: one row, kept with every change, and for the key
/// that acts read with the lock; on PostgreSQL with the changes its group has not written yet laid over.
pub async fn pending_of_key(tx: &mut WriteTx, key: Uuid) -> Result<i64> {
    let unwritten = tx
        .pg()
        .map_or(0, |pg| pg.unwritten_pending(&key.to_string()));
    if let Some(pending) = tx.actor_pending(key) {
        return Ok(pending + unwritten);
    }
    let row = query("SELECT pending FROM key_pending WHERE key_id = $1")
        .bind(key.to_string())
        .fetch_optional(tx.conn())
        .await?;
    let written: i64 = row.map_or(Ok(0), |r| r.get(0))?;
    Ok(written + unwritten)
}

/// How many requests wait on people in every tenant, counting no further than `most`: in the order of the index
/// of pending requests by deadline, which holds no other, so neither database reads a decided one.
pub async fn pending_count(db: Db<'_>, most: i64) -> Result<i64> {
    let row = query(
        "SELECT COUNT(*) FROM (SELECT 1 FROM approval_requests WHERE status = 'pending' ORDER BY deadline \
         LIMIT $1) capped",
    )
    .bind(most)
    .fetch_one(db)
    .await?;
    row.get(0)
}

/// Cancels up to `limit` pending requests of a session (or of the tenant), the oldest first (the order of the
/// index by tenant, status and time, so no sort); returns each cancelled request's (id, session, payment). Two
/// statements of bounded size: the ids, then one update by primary key (a plan the database cannot turn into a
/// scan per row, whatever its statistics say).
pub async fn cancel_some(
    tx: &mut WriteTx,
    session_id: Option<Uuid>,
    note: &str,
    limit: i64,
) -> Result<Vec<(Uuid, Uuid, Option<Uuid>)>> {
    let (now, tenant) = (tx.now_text(), tx.tenant_id().to_string());
    let ids: Vec<String> = query(
        "SELECT id FROM approval_requests WHERE tenant_id = $1 AND status = 'pending' \
         AND ($2 IS NULL OR session_id = $2) ORDER BY created_at LIMIT $3",
    )
    .bind(tenant)
    .bind(session_id.map(|s| s.to_string()))
    .bind(limit)
    .fetch_all(tx.conn())
    .await?
    .into_iter()
    .map(|r| r.get(0))
    .collect::<Result<_>>()?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    // By primary key alone: any plan over a status index would walk every pending request. They were read as
    // pending under the tenant's lock this transaction holds, so they still are.
    let list = (3..3 + ids.len())
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>();
    let mut update = query(format!(
        "UPDATE approval_requests SET status = 'cancelled', decided_at = $1, decision_note = $2 \
         WHERE id IN ({}) RETURNING id, session_id, payment_id, requested_by",
        list.join(", ")
    ))
    .bind(now)
    .bind(note.to_owned());
    for id in ids {
        update = update.bind(id);
    }
    let rows = update.fetch_all(tx.conn()).await?;
    stopped_waiting_all(tx, &rows, 3).await?;
    rows.into_iter()
        .map(|r| {
            let id = uuid(&r.get::<String>(0)?)?;
            let session = uuid(&r.get::<String>(1)?)?;
            Ok((id, session, crate::opt_uuid(r.get(2)?)?))
        })
        .collect()
}

/// The approved request `$2` of tenant `$1` whose right to run nobody took yet.
const UNCONSUMED: &str =
    "tenant_id = $1 AND id = $2 AND status IN ('approved', 'edited') AND consumed_at IS NULL";

/// Takes `current`'s one-time right to run, as the transaction read it under the tenant's lock: false if it is
/// not approved, or was run already. The update is conditional still, and held back (one round trip fewer on
/// PostgreSQL): under the lock nothing else takes the right, and if something did, the write fails rather than
/// run twice.
pub async fn consume(tx: &mut WriteTx, current: &ApprovalRecord) -> Result<bool> {
    if !current.status.is_consumable() || current.consumed_at.is_some() {
        return Ok(false);
    }
    let values = vec![
        tx.tenant_id().to_string().into(),
        current.id.to_string().into(),
        tx.now_text().into(),
    ];
    let update = Deferred::update("approval_requests", "consumed_at = $3", UNCONSUMED, values);
    tx.hold(update.changing(Changes::Row(current.id))).await?;
    Ok(true)
}

/// When `step` of a request filed at `filed` is due.
pub fn step_at(filed: DateTime<Utc>, step: &Escalation) -> DateTime<Utc> {
    filed + chrono::Duration::seconds(step.after_seconds.into())
}

/// Pending requests whose next escalation step is due at `now`, across tenants, the longest due first:
/// (tenant, request).
pub async fn to_escalate(db: Db<'_>, now: DateTime<Utc>, limit: i64) -> Result<Vec<(Uuid, Uuid)>> {
    pending_due(db, "escalate_at", now, limit).await
}

/// A request that reached its next escalation step: `groups` now decide it, and the step after is due at
/// `next`. Lands only on a pending request still at the step it was read at.
pub struct Escalated<'a> {
    pub id: Uuid,
    pub from: u32,
    pub next: Option<DateTime<Utc>>,
    pub groups: &'a [String],
}

/// Records an escalation; false if the request was decided or escalated meanwhile.
pub async fn escalate(tx: &mut WriteTx, e: Escalated<'_>) -> Result<bool> {
    let tenant = tx.tenant_id().to_string();
    let groups = (!e.groups.is_empty()).then(|| Value::from(e.groups.to_vec()).to_string());
    let done = query(
        "UPDATE approval_requests SET escalated = $3 + 1, escalate_at = $4, approver_groups = $5 \
         WHERE tenant_id = $1 AND id = $2 AND status = 'pending' AND escalated = $3",
    )
    .bind(tenant)
    .bind(e.id.to_string())
    .bind(i64::from(e.from))
    .bind(e.next.map(paygent_domain::time::format))
    .bind(groups)
    .execute(tx.conn())
    .await?;
    Ok(done == 1)
}
