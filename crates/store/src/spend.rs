//! Spend rollups: the hours and payee days that charts read instead of payments.

use crate::db::{Db, placeholders, query};
use crate::{Result, WriteTx, decimal};
use paygent_domain::spend::{RollupChange, RollupRow};
use std::collections::HashMap;

/// Adds each change to its row, creating rows at zero as needed: one read and one write. The read and the
/// write are one step because the transaction holds the tenant's write lock.
pub async fn fold(tx: &mut WriteTx, changes: &[RollupChange]) -> Result<()> {
    if changes.is_empty() {
        return Ok(());
    }
    let tenant = tx.tenant_id().to_string();
    let sql = format!(
        "SELECT owner, bucket, payee, usd, payments FROM spend_rollups WHERE tenant_id = $1 \
         AND (owner, bucket, payee) IN (VALUES {})",
        placeholders(2, changes.len(), 3)
    );
    let mut read = query(sql).bind(tenant.clone());
    for c in changes {
        read = read
            .bind(c.owner.clone())
            .bind(c.bucket.clone())
            .bind(c.payee.clone());
    }
    let mut rows = HashMap::new();
    for r in read.fetch_all(tx.conn()).await? {
        let key: (String, String, String) = (r.get(0)?, r.get(1)?, r.get(2)?);
        rows.insert(key, (decimal(&r.get::<String>(3)?)?, r.get::<i64>(4)?));
    }
    let sql = format!(
        "INSERT INTO spend_rollups (tenant_id, owner, bucket, payee, usd, payments) VALUES {} \
         ON CONFLICT (tenant_id, owner, bucket, payee) DO UPDATE SET usd = excluded.usd, \
         payments = excluded.payments",
        placeholders(1, changes.len(), 6)
    );
    let mut write = query(sql);
    for c in changes {
        let key = (c.owner.clone(), c.bucket.clone(), c.payee.clone());
        let (usd, payments) = rows.get(&key).copied().unwrap_or_default();
        write = write
            .bind(tenant.clone())
            .bind(key.0)
            .bind(key.1)
            .bind(key.2)
            .bind((usd + c.usd).normalize().to_string())
            .bind(payments + c.payments);
    }
    write.execute(tx.conn()).await?;
    Ok(())
}

/// An owner's rows with buckets from `first` to `last`, both included.
pub async fn rows(
    db: Db<'_>,
    tenant_id: uuid::Uuid,
    owner: &str,
    (first, last): (&str, &str),
) -> Result<Vec<RollupRow>> {
    let rows = query(
        "SELECT bucket, payee, usd, payments FROM spend_rollups WHERE tenant_id = $1 AND owner = $2 \
         AND bucket >= $3 AND bucket <= $4",
    )
    .bind(tenant_id.to_string())
    .bind(owner.to_owned())
    .bind(first.to_owned())
    .bind(last.to_owned())
    .fetch_all(db)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(RollupRow {
                bucket: r.get(0)?,
                payee: r.get(1)?,
                usd: decimal(&r.get::<String>(2)?)?,
                payments: r.get(3)?,
            })
        })
        .collect()
}
