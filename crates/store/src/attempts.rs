//! Payment attempts: what a rail signed for a payment, kept before it is sent so a restart resends the same
//! thing instead of signing a second payment.

use crate::db::{Db, query};
use crate::{Result, WriteTx, time, uuid};
use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRecord {
    pub payment_id: Uuid,
    pub tenant_id: Uuid,
    pub rail: String,
    pub network: String,
    pub signed: Value,
    pub tx_hash: Option<String>,
    pub receipt: Option<Value>,
    /// Why the service refused it, while its authorization could still settle (JSON).
    pub refusal: Option<Value>,
    pub created_at: DateTime<Utc>,
}

crate::row_type! {
    struct AttemptRow {
        payment_id: String,
        tenant_id: String,
        rail: String,
        network: String,
        signed: String,
        tx_hash: Option<String>,
        receipt: Option<String>,
        refusal: Option<String>,
        created_at: String,
    }
}

const COLUMNS: &str =
    "payment_id, tenant_id, rail, network, signed, tx_hash, receipt, refusal, created_at";

impl TryFrom<AttemptRow> for AttemptRecord {
    type Error = crate::StoreError;
    fn try_from(r: AttemptRow) -> Result<Self> {
        Ok(AttemptRecord {
            payment_id: uuid(&r.payment_id)?,
            tenant_id: uuid(&r.tenant_id)?,
            rail: r.rail,
            network: r.network,
            signed: crate::json(&r.signed)?,
            tx_hash: r.tx_hash,
            receipt: r.receipt.as_deref().map(crate::json).transpose()?,
            refusal: r.refusal.as_deref().map(crate::json).transpose()?,
            created_at: time(&r.created_at)?,
        })
    }
}

pub async fn get(db: Db<'_>, payment_id: Uuid) -> Result<Option<AttemptRecord>> {
    query(format!(
        "SELECT {COLUMNS} FROM payment_attempts WHERE payment_id = $1"
    ))
    .bind(payment_id.to_string())
    .record::<AttemptRow, _>(db)
    .await
}

/// Records a signed attempt unless the payment already has one. Returns whether this one was recorded.
pub async fn insert(
    tx: &mut WriteTx,
    payment_id: Uuid,
    rail: &str,
    network: &str,
    signed: &Value,
    tx_hash: Option<&str>,
) -> Result<bool> {
    let now = tx.now_text();
    let done = query(
        "INSERT INTO payment_attempts (payment_id, tenant_id, rail, network, signed, tx_hash, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7) ON CONFLICT (payment_id) DO NOTHING",
    )
    .bind(payment_id.to_string())
    .bind(tx.tenant_id().to_string())
    .bind(rail)
    .bind(network)
    .bind(signed.to_string())
    .bind(tx_hash)
    .bind(now)
    .execute(tx.conn())
    .await?;
    Ok(done == 1)
}

/// Forgets an attempt that can never settle (its nonce went to another transaction, or its window closed), so
/// the payment can be signed anew.
pub async fn discard(tx: &mut WriteTx, payment_id: Uuid) -> Result<()> {
    query("DELETE FROM payment_attempts WHERE payment_id = $1 AND receipt IS NULL")
        .bind(payment_id.to_string())
        .execute(tx.conn())
        .await?;
    Ok(())
}

/// Records why a service refused the attempt it was sent, while it could still settle.
pub async fn refused(tx: &mut WriteTx, payment_id: Uuid, refusal: &Value) -> Result<()> {
    let now = tx.now_text();
    query("UPDATE payment_attempts SET refusal = $2, updated_at = $3 WHERE payment_id = $1")
        .bind(payment_id.to_string())
        .bind(refusal.to_string())
        .bind(now)
        .execute(tx.conn())
        .await?;
    Ok(())
}

pub async fn finish(
    tx: &mut WriteTx,
    payment_id: Uuid,
    tx_hash: Option<&str>,
    receipt: &Value,
) -> Result<()> {
    let now = tx.now_text();
    query(
        "UPDATE payment_attempts SET receipt = $2, tx_hash = COALESCE($3, tx_hash), updated_at = $4 \
         WHERE payment_id = $1",
    )
    .bind(payment_id.to_string())
    .bind(receipt.to_string())
    .bind(tx_hash)
    .bind(now)
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// Up to `limit` payments with a signed attempt and no outcome yet, in every tenant, signed before `before` if
/// given, after the payment `after` in id order: a page of what a restart, or a runner that lost touch with its
/// chain, left to reconcile.
pub async fn open(
    db: Db<'_>,
    before: Option<&str>,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<(Uuid, Uuid)>> {
    let rows = query(
        "SELECT tenant_id, payment_id FROM payment_attempts WHERE receipt IS NULL \
         AND ($1 IS NULL OR created_at < $1) AND ($2 IS NULL OR payment_id > $2) ORDER BY payment_id LIMIT $3",
    )
    .bind(before)
    .bind(after.map(|a| a.to_string()))
    .bind(limit)
    .fetch_all(db)
    .await?;
    crate::id_pairs(rows)
}
