//! Spend rollups: the hours and payee days that charts read instead of payments.

use crate::db::{Db, placeholders, query};
use crate::{Result, WriteTx, decimal};
use paygent_domain::spend::{RollupChange, RollupRow};
use std::sync::LazyLock;

/// The six rows of a spend, each created at its first spend and added to after: SQLite adds the decimal strings
/// with `dec_add` (the store's own function), PostgreSQL with numeric.
static WRITE: LazyLock<[String; 2]> = LazyLock::new(|| {
    let write = |add: &str| {
        format!(
            "INSERT INTO spend_rollups (tenant_id, owner, bucket, payee, usd, payments) VALUES {} \
             ON CONFLICT (tenant_id, owner, bucket, payee) DO UPDATE SET usd = {add}, \
             payments = spend_rollups.payments + excluded.payments",
            placeholders(1, 6, 6)
        )
    };
    [
        write("dec_add(spend_rollups.usd, excluded.usd)"),
        write("(spend_rollups.usd::numeric + excluded.usd::numeric)::text"),
    ]
});

/// Adds a spend's [changes](paygent_domain::spend::Spent::changes) to their rows, in one statement.
pub async fn fold(tx: &mut WriteTx, changes: &[RollupChange; 6]) -> Result<()> {
    let tenant = tx.tenant_id().to_string();
    let mut write = query(WRITE[usize::from(tx.on_postgres())].as_str());
    for c in changes {
        write = write
            .bind(tenant.clone())
            .bind(c.owner.clone())
            .bind(c.bucket.clone())
            .bind(c.payee.clone())
            .bind(c.usd.normalize().to_string())
            .bind(c.payments);
    }
    tx.defer("spend_rollups", write, changes.len() as u64).await
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
