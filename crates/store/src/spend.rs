//! Spend rollups: the hours and payee days that charts read instead of payments.

use crate::db::{Db, placeholders, query};
use crate::{Result, WriteTx, decimal};
use paygent_domain::money::Decimal;
use paygent_domain::spend::{RollupChange, RollupRow};
use std::collections::{BTreeMap, HashSet};
use std::sync::LazyLock;
use uuid::Uuid;

/// SQLite: the six rows of a spend, each created at its first spend and added to after (`dec_add` is the
/// store's own function adding decimal strings).
static WRITE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO spend_rollups (tenant_id, owner, bucket, payee, usd, payments) VALUES {} \
         ON CONFLICT (tenant_id, owner, bucket, payee) DO UPDATE SET usd = dec_add(spend_rollups.usd, excluded.usd), \
         payments = spend_rollups.payments + excluded.payments",
        placeholders(1, 6, 6)
    )
});

/// PostgreSQL: rows added to, in a statement of one shape however many: `$2` is a
/// JSON array of `{owner, bucket, payee, usd, payments}`.
const ROLLUPS_LISTED: &str = "INSERT INTO spend_rollups (tenant_id, owner, bucket, payee, usd, payments) \
     SELECT $1, r.owner, r.bucket, r.payee, r.usd, r.payments FROM jsonb_to_recordset(CAST($2 AS jsonb)) \
     AS r(owner text, bucket text, payee text, usd text, payments bigint) \
     ON CONFLICT (tenant_id, owner, bucket, payee) DO UPDATE SET \
     usd = (spend_rollups.usd::numeric + excluded.usd::numeric)::text, \
     payments = spend_rollups.payments + excluded.payments";

/// Adds a spend's [changes](paygent_domain::spend::Spent::changes) to their rows: on SQLite in one statement, on
/// PostgreSQL with the write's group ([`GroupRollups`]).
pub async fn fold(tx: &mut WriteTx, changes: &[RollupChange; 6]) -> Result<()> {
    if let Some(pg) = tx.pg() {
        pg.roll_up(changes);
        return Ok(());
    }
    let tenant = tx.tenant_id().to_string();
    let mut write = query(WRITE.as_str());
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

/// PostgreSQL: what the writes of one group (one hold of the tenant's lock) added to the spend rollups, summed by
/// row, written once as the group commits. A tenant's payments of one hour, agent, session or payee add to the
/// same few rows, and updating such a row once per payment cost PostgreSQL more than the payment's own row did
/// (BENCHMARKS.md); nothing reads a rollup inside a write (charts read committed rows). A write's changes join
/// the group only once it keeps its savepoint; they go with the group's transaction.
#[derive(Debug, Default)]
pub(crate) struct GroupRollups(BTreeMap<(String, String, String), (Decimal, i64)>);

impl GroupRollups {
    pub(crate) fn add(&mut self, changes: &[RollupChange]) {
        for c in changes {
            let key = (c.owner.clone(), c.bucket.clone(), c.payee.clone());
            let row = self.0.entry(key).or_default();
            *row = (row.0 + c.usd, row.1 + c.payments);
        }
    }

    /// The statement that adds them to their rows of `tenant`'s, to go in a message of several (empty when there
    /// is nothing to add).
    pub(crate) fn statement(&self, tenant: Uuid, prepared: &mut HashSet<String>) -> Result<String> {
        let rows = (self.0.iter())
            .map(|((owner, bucket, payee), (usd, payments))| {
                let usd = usd.normalize().to_string();
                serde_json::json!({"owner": owner, "bucket": bucket, "payee": payee, "usd": usd, "payments": payments})
            })
            .collect();
        crate::pg::listed(ROLLUPS_LISTED, tenant, rows, prepared)
    }
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
