//! Stop sweeps: the cancellations a committed stop still owes, taken up by any instance.

use crate::db::{Db, query};
use crate::{Result, WriteTx, opt_uuid, uuid};
use uuid::Uuid;

/// A stop's sweep still to finish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sweep {
    pub id: Uuid,
    pub tenant_id: Uuid,
    /// The killed session; none for the tenant's emergency stop.
    pub session_id: Option<Uuid>,
    pub reason: String,
    /// How many requests it cancelled so far.
    pub cancelled: i64,
}

crate::row_type! {
    struct SweepRow {
        id: String,
        tenant_id: String,
        session_id: Option<String>,
        reason: String,
        cancelled: i64,
    }
}

impl TryFrom<SweepRow> for Sweep {
    type Error = crate::StoreError;
    fn try_from(r: SweepRow) -> Result<Self> {
        Ok(Sweep {
            id: uuid(&r.id)?,
            tenant_id: uuid(&r.tenant_id)?,
            session_id: opt_uuid(r.session_id)?,
            reason: r.reason,
            cancelled: r.cancelled,
        })
    }
}

const COLUMNS: &str = "id, tenant_id, session_id, reason, cancelled";

/// Records a stop's sweep, in the stop's own transaction.
pub async fn open(
    tx: &mut WriteTx,
    id: Uuid,
    session_id: Option<Uuid>,
    reason: &str,
) -> Result<()> {
    let (tenant, now) = (tx.tenant_id().to_string(), tx.now_text());
    query(
        "INSERT INTO stop_sweeps (id, tenant_id, session_id, reason, cancelled, created_at) \
         VALUES ($1, $2, $3, $4, 0, $5)",
    )
    .bind(id.to_string())
    .bind(tenant)
    .bind(session_id.map(|s| s.to_string()))
    .bind(reason.to_owned())
    .bind(now)
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// The sweep as this transaction sees it; none once finished or called off.
pub async fn get(tx: &mut WriteTx, id: Uuid) -> Result<Option<Sweep>> {
    let tenant = tx.tenant_id().to_string();
    query(format!(
        "SELECT {COLUMNS} FROM stop_sweeps WHERE tenant_id = $1 AND id = $2"
    ))
    .bind(tenant)
    .bind(id.to_string())
    .record::<SweepRow, _>(tx.conn())
    .await
}

/// Sweeps still to finish, oldest first, across tenants.
pub async fn open_sweeps(db: Db<'_>, limit: i64) -> Result<Vec<Sweep>> {
    query(format!(
        "SELECT {COLUMNS} FROM stop_sweeps ORDER BY created_at, id LIMIT $1"
    ))
    .bind(limit)
    .records::<SweepRow, _>(db)
    .await
}

/// Adds a batch's count to the sweep.
pub async fn add(tx: &mut WriteTx, id: Uuid, cancelled: i64) -> Result<()> {
    query("UPDATE stop_sweeps SET cancelled = cancelled + $2 WHERE id = $1")
        .bind(id.to_string())
        .bind(cancelled)
        .execute(tx.conn())
        .await?;
    Ok(())
}

/// Ends a sweep; returns whether this transaction ended it.
pub async fn close(tx: &mut WriteTx, id: Uuid) -> Result<bool> {
    let done = query("DELETE FROM stop_sweeps WHERE id = $1")
        .bind(id.to_string())
        .execute(tx.conn())
        .await?;
    Ok(done == 1)
}

/// Calls off the sweeps of a scope whose stop was lifted (the emergency stop released, a session revived).
pub async fn call_off(tx: &mut WriteTx, session_id: Option<Uuid>) -> Result<()> {
    let tenant = tx.tenant_id().to_string();
    query(
        "DELETE FROM stop_sweeps WHERE tenant_id = $1 AND \
         (($2 IS NULL AND session_id IS NULL) OR session_id = $2)",
    )
    .bind(tenant)
    .bind(session_id.map(|s| s.to_string()))
    .execute(tx.conn())
    .await?;
    Ok(())
}
