//! The budget ledgers: a session's per day, and a key's per period (across all its sessions). Every change is
//! made inside a [`WriteTx`], which holds the tenant's lock, and is also a compare-and-set on the row's version:
//! two writers can never both apply a change computed from one reading.

use crate::db::{Db, placeholders, query};
use crate::{Result, StoreError, WriteTx, decimal};
use paygent_domain::Decimal;
use paygent_domain::budget::Usage;
use std::collections::BTreeMap;
use uuid::Uuid;

/// A change to one ledger row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delta {
    pub spent: Decimal,
    pub reserved: Decimal,
}

/// A table of ledgers: rows of (owner, bucket, ledger) with spent, reserved and a version.
#[derive(Debug, Clone, Copy)]
pub struct Ledgers {
    table: &'static str,
    owner: &'static str,
    bucket: &'static str,
}

/// A session's budget days: owner a session, bucket a day.
pub const SESSION_DAYS: Ledgers = Ledgers {
    table: "budget_usage",
    owner: "session_id",
    bucket: "day",
};

/// A key's periods across its sessions: owner a key, bucket a period such as `week:2026-11-30`.
pub const KEY_PERIODS: Ledgers = Ledgers {
    table: "key_usage",
    owner: "key_id",
    bucket: "period",
};

/// Usage by (bucket, ledger key).
pub type UsageBook = BTreeMap<(String, String), Usage>;

/// The owner's usage in `buckets`, in every ledger.
pub async fn usage(db: Db<'_>, t: Ledgers, owner: Uuid, buckets: &[&str]) -> Result<UsageBook> {
    Ok(read(db, t, owner, buckets)
        .await?
        .into_iter()
        .map(|(k, (u, _))| (k, u))
        .collect())
}

/// The owner's rows in `buckets`, with their versions.
async fn read(
    db: Db<'_>,
    t: Ledgers,
    owner: Uuid,
    buckets: &[&str],
) -> Result<BTreeMap<(String, String), (Usage, i64)>> {
    let sql = format!(
        "SELECT {bucket}, ledger, spent, reserved, version FROM {table} WHERE {owner} = $1 AND {bucket} IN ({})",
        (2..2 + buckets.len())
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", "),
        table = t.table,
        owner = t.owner,
        bucket = t.bucket,
    );
    let mut statement = query(sql).bind(owner.to_string());
    for b in buckets {
        statement = statement.bind((*b).to_owned());
    }
    versioned(statement.fetch_all(db).await?)
}

fn versioned(rows: Vec<crate::Row>) -> Result<BTreeMap<(String, String), (Usage, i64)>> {
    rows.iter()
        .map(|r| {
            let usage = Usage {
                spent: decimal(&r.get::<String>(2)?)?,
                reserved: decimal(&r.get::<String>(3)?)?,
            };
            Ok(((r.get(0)?, r.get(1)?), (usage, r.get::<i64>(4)?)))
        })
        .collect()
}

/// A session's usage on one day, by ledger key.
pub async fn day_usage(db: Db<'_>, session_id: Uuid, day: &str) -> Result<BTreeMap<String, Usage>> {
    let book = usage(db, SESSION_DAYS, session_id, &[day]).await?;
    Ok(book.into_iter().map(|((_, l), u)| (l, u)).collect())
}

/// Applies each `(bucket, ledger, delta)` to its row, creating rows at zero as needed: one read and one write
/// for all of them, each row compare-and-set on the version it was read at.
pub async fn apply(
    tx: &mut WriteTx,
    t: Ledgers,
    owner: Uuid,
    changes: &[(&str, &str, Delta)],
) -> Result<()> {
    let mut buckets: Vec<&str> = changes.iter().map(|c| c.0).collect();
    buckets.sort_unstable();
    buckets.dedup();
    let current = read(tx.conn(), t, owner, &buckets).await?;
    // A new row is written at version 1; an existing one only if it is still at the version read above.
    let sql = format!(
        "INSERT INTO {table} (tenant_id, {owner}, {bucket}, ledger, spent, reserved, version) VALUES {} \
         ON CONFLICT ({owner}, {bucket}, ledger) DO UPDATE SET spent = excluded.spent, \
         reserved = excluded.reserved, version = excluded.version \
         WHERE {table}.version = excluded.version - 1",
        placeholders(1, changes.len(), 7),
        table = t.table,
        owner = t.owner,
        bucket = t.bucket,
    );
    let mut write = query(sql);
    for (bucket, ledger, delta) in changes {
        let key = ((*bucket).to_owned(), (*ledger).to_owned());
        let (usage, version) = current.get(&key).copied().unwrap_or_default();
        write = write
            .bind(tx.tenant_id().to_string())
            .bind(owner.to_string())
            .bind(key.0)
            .bind(key.1)
            .bind((usage.spent + delta.spent).to_string())
            .bind((usage.reserved + delta.reserved).to_string())
            .bind(version + 1);
    }
    let done = write.execute(tx.conn()).await?;
    if done != changes.len() as u64 {
        return Err(StoreError::Corrupt(format!(
            "{} rows of {owner} changed under a writer: lost lock",
            t.table
        )));
    }
    Ok(())
}
