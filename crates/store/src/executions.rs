//! Executions and their steps. Status changes are conditional on the status the writer expects, so a kill
//! and a step finishing at the same moment cannot both win.

use crate::db::{Db, query};
use crate::{Result, StoreError, WriteTx, decimal, json, opt_time, opt_uuid, time, uuid};
use chrono::{DateTime, Utc};
use paygent_domain::Decimal;
use paygent_domain::execution::{ExecutionStatus, StepStatus};
use serde_json::Value;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq)]
pub struct ExecutionRecord {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub session_id: Uuid,
    pub status: ExecutionStatus,
    pub command: Option<String>,
    pub error: Option<String>,
    pub current_step: i64,
    pub cost_usd: Decimal,
    pub created_by: Uuid,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StepRecord {
    pub execution_id: Uuid,
    pub idx: i64,
    pub tool: String,
    pub args: Value,
    pub status: StepStatus,
    pub result: Option<Value>,
    pub error: Option<String>,
    pub approval_id: Option<Uuid>,
    pub payment_id: Option<Uuid>,
    pub cost_usd: Option<Decimal>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
}

/// Who starts an execution, where, and what was asked.
#[derive(Debug, Clone)]
pub struct NewExecution {
    pub tenant_id: Uuid,
    pub session_id: Uuid,
    pub command: Option<String>,
    pub created_by: Uuid,
}

impl ExecutionRecord {
    /// An execution starting `now`, running its first step, with nothing spent.
    pub fn started(new: NewExecution, now: DateTime<Utc>) -> ExecutionRecord {
        ExecutionRecord {
            id: Uuid::now_v7(),
            tenant_id: new.tenant_id,
            session_id: new.session_id,
            status: ExecutionStatus::Running,
            command: new.command,
            error: None,
            current_step: 0,
            cost_usd: Decimal::ZERO,
            created_by: new.created_by,
            created_at: now,
            updated_at: now,
            finished_at: None,
        }
    }
}

impl StepRecord {
    /// Step `idx` of an execution, not yet run.
    pub fn pending(execution_id: Uuid, idx: usize, tool: String, args: Value) -> StepRecord {
        StepRecord {
            execution_id,
            idx: idx as i64,
            tool,
            args,
            status: StepStatus::Pending,
            result: None,
            error: None,
            approval_id: None,
            payment_id: None,
            cost_usd: None,
            started_at: None,
            finished_at: None,
            duration_ms: None,
        }
    }
}

crate::row_type! {
    struct ExecutionRow {
        id: String,
        tenant_id: String,
        session_id: String,
        status: String,
        command: Option<String>,
        error: Option<String>,
        current_step: i64,
        cost_usd: String,
        created_by: String,
        created_at: String,
        updated_at: String,
        finished_at: Option<String>,
    }
}

crate::row_type! {
    struct StepRow {
        execution_id: String,
        idx: i64,
        tool: String,
        args: String,
        status: String,
        result: Option<String>,
        error: Option<String>,
        approval_id: Option<String>,
        payment_id: Option<String>,
        cost_usd: Option<String>,
        started_at: Option<String>,
        finished_at: Option<String>,
        duration_ms: Option<i64>,
    }
}

const COLUMNS: &str = "id, tenant_id, session_id, status, command, error, current_step, cost_usd, created_by, \
    created_at, updated_at, finished_at";
const STEP_COLUMNS: &str = "execution_id, idx, tool, args, status, result, error, approval_id, payment_id, cost_usd, \
    started_at, finished_at, duration_ms";

fn bad(what: &str, v: &str) -> StoreError {
    StoreError::Corrupt(format!("bad {what} {v:?}"))
}

impl TryFrom<ExecutionRow> for ExecutionRecord {
    type Error = StoreError;
    fn try_from(r: ExecutionRow) -> Result<Self> {
        Ok(ExecutionRecord {
            id: uuid(&r.id)?,
            tenant_id: uuid(&r.tenant_id)?,
            session_id: uuid(&r.session_id)?,
            status: ExecutionStatus::parse(&r.status)
                .ok_or_else(|| bad("execution status", &r.status))?,
            command: r.command,
            error: r.error,
            current_step: r.current_step,
            cost_usd: decimal(&r.cost_usd)?,
            created_by: uuid(&r.created_by)?,
            created_at: time(&r.created_at)?,
            updated_at: time(&r.updated_at)?,
            finished_at: opt_time(r.finished_at)?,
        })
    }
}

impl TryFrom<StepRow> for StepRecord {
    type Error = StoreError;
    fn try_from(r: StepRow) -> Result<Self> {
        Ok(StepRecord {
            execution_id: uuid(&r.execution_id)?,
            idx: r.idx,
            tool: r.tool,
            args: json(&r.args)?,
            status: StepStatus::parse(&r.status).ok_or_else(|| bad("step status", &r.status))?,
            result: r.result.as_deref().map(json).transpose()?,
            error: r.error,
            approval_id: opt_uuid(r.approval_id)?,
            payment_id: opt_uuid(r.payment_id)?,
            cost_usd: r.cost_usd.as_deref().map(decimal).transpose()?,
            started_at: opt_time(r.started_at)?,
            finished_at: opt_time(r.finished_at)?,
            duration_ms: r.duration_ms,
        })
    }
}

fn select(filter: &str) -> String {
    format!("SELECT {COLUMNS} FROM executions WHERE {filter}")
}

/// Stores a new execution with its planned steps.
pub async fn insert(tx: &mut WriteTx, e: &ExecutionRecord, steps: &[StepRecord]) -> Result<()> {
    query(format!(
        "INSERT INTO executions ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
    ))
    .bind(e.id.to_string())
    .bind(e.tenant_id.to_string())
    .bind(e.session_id.to_string())
    .bind(e.status.as_str())
    .bind(e.command.clone())
    .bind(e.error.clone())
    .bind(e.current_step)
    .bind(e.cost_usd.to_string())
    .bind(e.created_by.to_string())
    .bind(paygent_domain::time::format(e.created_at))
    .bind(paygent_domain::time::format(e.updated_at))
    .bind(e.finished_at.map(paygent_domain::time::format))
    .execute(tx.conn())
    .await?;
    for s in steps {
        query(format!(
            "INSERT INTO execution_steps ({STEP_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)"
        ))
        .bind(s.execution_id.to_string())
        .bind(s.idx)
        .bind(&s.tool)
        .bind(s.args.to_string())
        .bind(s.status.as_str())
        .execute(tx.conn())
        .await?;
    }
    Ok(())
}

pub async fn get(db: Db<'_>, tenant_id: Uuid, id: Uuid) -> Result<Option<ExecutionRecord>> {
    crate::by_id::<ExecutionRow, _>(db, select("tenant_id = $1 AND id = $2"), tenant_id, id).await
}

pub async fn steps(db: Db<'_>, id: Uuid) -> Result<Vec<StepRecord>> {
    query(format!(
        "SELECT {STEP_COLUMNS} FROM execution_steps WHERE execution_id = $1 ORDER BY idx"
    ))
    .bind(id.to_string())
    .records::<StepRow, _>(db)
    .await
}

/// Executions, newest first, optionally of one session.
pub async fn list(db: Db<'_>, scope: crate::Scope) -> Result<Vec<ExecutionRecord>> {
    let sql = select(&crate::scoped("executions", true));
    crate::in_scope::<ExecutionRow, _>(db, sql, scope).await
}

/// A tenant's executions not yet ended, optionally of one session.
pub async fn active_in(
    tx: &mut WriteTx,
    session_id: Option<Uuid>,
    limit: i64,
) -> Result<Vec<ExecutionRecord>> {
    let tenant = tx.tenant_id().to_string();
    query(select(
        "tenant_id = $1 AND status IN ('running', 'awaiting_approval', 'frozen') AND ($2 IS NULL OR session_id = $2) \
         LIMIT $3",
    ))
    .bind(tenant)
    .bind(session_id.map(|s| s.to_string()))
    .bind(limit)
    .records::<ExecutionRow, _>(tx.conn())
.await
}

/// Moves an execution to `to` if it is in one of `from`; returns whether it moved.
pub async fn transition(
    tx: &mut WriteTx,
    id: Uuid,
    from: &[ExecutionStatus],
    to: ExecutionStatus,
    error: Option<&str>,
) -> Result<bool> {
    let now = tx.now_text();
    let tenant = tx.tenant_id().to_string();
    let from: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
    let finished = to.is_terminal().then(|| now.clone());
    let places: Vec<String> = (0..from.len()).map(|i| format!("${}", i + 7)).collect();
    let mut update = query(format!(
        "UPDATE executions SET status = $3, error = COALESCE($4, error), updated_at = $5, \
         finished_at = COALESCE($6, finished_at) \
         WHERE tenant_id = $1 AND id = $2 AND status IN ({})",
        places.join(", ")
    ))
    .bind(tenant)
    .bind(id.to_string())
    .bind(to.as_str())
    .bind(error)
    .bind(now)
    .bind(finished);
    for status in from {
        update = update.bind(status);
    }
    let done = update.execute(tx.conn()).await?;
    Ok(done == 1)
}

/// Moves a running execution to its next step, adding the finished step's cost.
pub async fn advance(
    tx: &mut WriteTx,
    id: Uuid,
    next_step: i64,
    cost_usd: Decimal,
) -> Result<bool> {
    let now = tx.now_text();
    let tenant = tx.tenant_id().to_string();
    // Only from the step before: a second runner finishing the same step (after a takeover) changes nothing.
    let current = query(
        "SELECT cost_usd FROM executions \
         WHERE tenant_id = $1 AND id = $2 AND status = 'running' AND current_step = $3",
    )
    .bind(&tenant)
    .bind(id.to_string())
    .bind(next_step - 1)
    .fetch_optional(tx.conn())
    .await?;
    let Some(row) = current else {
        return Ok(false);
    };
    let total = decimal(&row.get::<String>(0)?)? + cost_usd;
    let done = query(
        "UPDATE executions SET current_step = $3, cost_usd = $4, updated_at = $5 \
         WHERE tenant_id = $1 AND id = $2 AND status = 'running' AND current_step = $6",
    )
    .bind(tenant)
    .bind(id.to_string())
    .bind(next_step)
    .bind(total.to_string())
    .bind(now)
    .bind(next_step - 1)
    .execute(tx.conn())
    .await?;
    Ok(done == 1)
}

/// What a step became.
pub struct StepUpdate<'a> {
    pub execution_id: Uuid,
    pub idx: i64,
    pub status: StepStatus,
    pub result: Option<&'a Value>,
    pub error: Option<&'a str>,
    pub approval_id: Option<Uuid>,
    pub payment_id: Option<Uuid>,
    pub cost_usd: Option<Decimal>,
    /// Set when the step starts; kept from the first start when it is re-run after a restart.
    pub started: bool,
    pub finished: bool,
}

pub async fn update_step(tx: &mut WriteTx, u: StepUpdate<'_>) -> Result<()> {
    let now = tx.now_text();
    query(
        "UPDATE execution_steps SET status = $3, result = COALESCE($4, result), error = COALESCE($5, error), \
         approval_id = COALESCE($6, approval_id), payment_id = COALESCE($7, payment_id), \
         cost_usd = COALESCE($8, cost_usd), \
         started_at = CASE WHEN $9 = 1 THEN COALESCE(started_at, $11) ELSE started_at END, \
         finished_at = CASE WHEN $10 = 1 THEN $11 ELSE finished_at END \
         WHERE execution_id = $1 AND idx = $2",
    )
    .bind(u.execution_id.to_string())
    .bind(u.idx)
    .bind(u.status.as_str())
    .bind(u.result.map(Value::to_string))
    .bind(u.error)
    .bind(u.approval_id.map(|a| a.to_string()))
    .bind(u.payment_id.map(|p| p.to_string()))
    .bind(u.cost_usd.map(|c| c.to_string()))
    .bind(u.started as i64)
    .bind(u.finished as i64)
    .bind(now)
    .execute(tx.conn())
    .await?;
    if u.finished {
        // Duration from the stored start, computed here so both databases agree.
        let started = query(
            "SELECT started_at, finished_at FROM execution_steps WHERE execution_id = $1 AND idx = $2",
        )
        .bind(u.execution_id.to_string())
        .bind(u.idx)
        .fetch_optional(tx.conn())
        .await?;
        if let Some(row) = started
            && let (Some(s), Some(f)) =
                (row.get::<Option<String>>(0)?, row.get::<Option<String>>(1)?)
        {
            let ms = (time(&f)? - time(&s)?).num_milliseconds();
            query(
                "UPDATE execution_steps SET duration_ms = $3 WHERE execution_id = $1 AND idx = $2",
            )
            .bind(u.execution_id.to_string())
            .bind(u.idx)
            .bind(ms)
            .execute(tx.conn())
            .await?;
        }
    }
    Ok(())
}

/// Claims an active execution's lease for `owner` until `until`, or renews it, unless another owner holds a lease
/// that is still live at `now`. Returns whether `owner` holds it now.
pub async fn claim(db: Db<'_>, id: Uuid, owner: &str, now: &str, until: &str) -> Result<bool> {
    let done = query(
        "UPDATE executions SET lease_owner = $2, lease_until = $4 \
         WHERE id = $1 AND status IN ('running', 'awaiting_approval', 'frozen') \
         AND (lease_owner IS NULL OR lease_owner = $2 OR lease_until < $3)",
    )
    .bind(id.to_string())
    .bind(owner)
    .bind(now)
    .bind(until)
    .execute(db)
    .await?;
    Ok(done == 1)
}

/// Renews every lease `owner` holds on active executions; returns how many.
pub async fn renew_leases(store: &crate::Store, owner: &str, until: &str) -> Result<u64> {
    let done = query(
        "UPDATE executions SET lease_until = $2 \
         WHERE lease_owner = $1 AND status IN ('running', 'awaiting_approval', 'frozen')",
    )
    .bind(owner)
    .bind(until)
    .execute(store.writer())
    .await?;
    Ok(done)
}

/// Active executions whose lease is free or expired at `now` (all active ones with `now` = None): (tenant, id).
pub async fn orphans(db: Db<'_>, now: Option<&str>) -> Result<Vec<(Uuid, Uuid)>> {
    let rows = query(
        "SELECT tenant_id, id FROM executions WHERE status IN ('running', 'awaiting_approval', 'frozen') \
         AND ($1 IS NULL OR lease_owner IS NULL OR lease_until < $1) ORDER BY created_at",
    )
    .bind(now)
    .fetch_all(db)
    .await?;
    crate::id_pairs(rows)
}
