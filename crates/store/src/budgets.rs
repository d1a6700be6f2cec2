//! The budget ledgers: a session's per day, and a key's per period (across all its sessions). Every change is
//! made inside a [`WriteTx`], which holds the tenant's lock, and is also a compare-and-set on the row's version:
//! two writers can never both apply a change computed from one reading.

use crate::db::{Db, placeholders, query};
use crate::{Result, WriteTx, decimal};
use chrono::{DateTime, Utc};
use paygent_domain::Decimal;
use paygent_domain::budget::Usage;
use std::collections::{BTreeMap, HashMap};
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

/// Rows by (bucket, ledger key), with their versions.
type Versioned = BTreeMap<(String, String), (Usage, i64)>;

/// The ledger rows a write transaction has seen, by (table, owner, bucket), each bucket's rows by ledger key
/// with their versions: all of the bucket's rows, those it has not being at zero.
pub(crate) type LedgerRows = HashMap<(&'static str, Uuid, String), BTreeMap<String, (Usage, i64)>>;

/// The owner's usage in `buckets`, in every ledger.
pub async fn usage(db: Db<'_>, t: Ledgers, owner: Uuid, buckets: &[&str]) -> Result<UsageBook> {
    Ok(read(db, t, owner, buckets)
        .await?
        .into_iter()
        .map(|(k, (u, _))| (k, u))
        .collect())
}

/// The owner's usage in `buckets` as the transaction sees it: read once, then kept with what it writes.
pub async fn usage_in(
    tx: &mut WriteTx,
    t: Ledgers,
    owner: Uuid,
    buckets: &[&str],
) -> Result<UsageBook> {
    Ok(read_in(tx, t, owner, buckets)
        .await?
        .into_iter()
        .map(|(k, (u, _))| (k, u))
        .collect())
}

async fn read_in(tx: &mut WriteTx, t: Ledgers, owner: Uuid, buckets: &[&str]) -> Result<Versioned> {
    let key = |b: &str| (t.table, owner, b.to_owned());
    let unseen: Vec<&str> = buckets
        .iter()
        .copied()
        .filter(|b| !tx.ledgers().contains_key(&key(b)))
        .collect();
    if !unseen.is_empty() {
        let rows = read(tx.conn(), t, owner, &unseen).await?;
        seen(tx.ledgers(), t, owner, &unseen, rows);
    }
    let seen = tx.ledgers();
    Ok(buckets
        .iter()
        .flat_map(|b| {
            let rows = seen.get(&key(b)).into_iter().flatten();
            rows.map(|(ledger, row)| (((*b).to_owned(), ledger.clone()), *row))
        })
        .collect())
}

/// Keeps `rows`, all the rows of the owner's `buckets`, as the transaction has seen them.
fn seen(ledgers: &mut LedgerRows, t: Ledgers, owner: Uuid, buckets: &[&str], rows: Versioned) {
    for b in buckets {
        ledgers.insert((t.table, owner, (*b).to_owned()), BTreeMap::new());
    }
    for ((bucket, ledger), row) in rows {
        let rows = ledgers.entry((t.table, owner, bucket)).or_default();
        rows.insert(ledger, row);
    }
}

/// The session's budget days around `now` (its day is one of them whatever its time zone), and the statement
/// that reads all their rows, `$1` the session and the days after it.
pub(crate) fn days_around(now: DateTime<Utc>) -> [String; 3] {
    let today = now.date_naive();
    [today.pred_opt(), Some(today), today.succ_opt()].map(|d| d.unwrap_or(today).to_string())
}

/// The statement that reads a session's rows on three days: `$1` the session, `$2`..`$4` the days.
pub(crate) fn days_sql() -> String {
    read_sql(SESSION_DAYS, ("$1", 2), 3)
}

/// As [`days_sql`], of the session of the tenant's (`$1`) approval request `$2`, `$3`..`$5` the days.
pub(crate) fn days_of_request_sql() -> String {
    read_sql(SESSION_DAYS, (crate::approvals::REQUEST_SESSION, 3), 3)
}

/// Keeps the rows [`days_sql`] read of the session's `days`, as the transaction has seen them.
pub(crate) fn seen_days(
    tx: &mut WriteTx,
    session: Uuid,
    days: &[String; 3],
    rows: Vec<crate::Row>,
) -> Result<()> {
    let days = days.each_ref().map(String::as_str);
    seen(tx.ledgers(), SESSION_DAYS, session, &days, versioned(rows)?);
    Ok(())
}

/// The owner's rows in `buckets`, with their versions.
async fn read(db: Db<'_>, t: Ledgers, owner: Uuid, buckets: &[&str]) -> Result<Versioned> {
    let mut statement = query(read_sql(t, ("$1", 2), buckets.len())).bind(owner.to_string());
    for b in buckets {
        statement = statement.bind((*b).to_owned());
    }
    versioned(statement.fetch_all(db).await?)
}

/// Reads an owner's (`$1`) rows in `buckets` buckets (`$2`…).
/// The statement that reads an owner's rows in `buckets` buckets: the owner is `owner` (a parameter, or an
/// expression of parameters), the buckets the parameters from `first` on.
fn read_sql(t: Ledgers, (owner, first): (&str, usize), buckets: usize) -> String {
    format!(
        "SELECT {bucket}, ledger, spent, reserved, version FROM {table} WHERE {column} = {owner} AND {bucket} IN ({})",
        (first..first + buckets)
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", "),
        table = t.table,
        column = t.owner,
        bucket = t.bucket,
    )
}

fn versioned(rows: Vec<crate::Row>) -> Result<Versioned> {
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
    Ok(by_ledger(book))
}

/// A session's usage on one day as the transaction sees it, by ledger key.
pub async fn day_usage_in(
    tx: &mut WriteTx,
    session_id: Uuid,
    day: &str,
) -> Result<BTreeMap<String, Usage>> {
    let book = usage_in(tx, SESSION_DAYS, session_id, &[day]).await?;
    Ok(by_ledger(book))
}

fn by_ledger(book: UsageBook) -> BTreeMap<String, Usage> {
    book.into_iter().map(|((_, l), u)| (l, u)).collect()
}

/// Applies each `(bucket, ledger, delta)` to its row, creating rows at zero as needed, each row compare-and-set on
/// the version the transaction saw: on SQLite in one statement, on PostgreSQL with the write's group
/// ([`GroupLedgers`]).
pub async fn apply(
    tx: &mut WriteTx,
    t: Ledgers,
    owner: Uuid,
    changes: &[(&str, &str, Delta)],
) -> Result<()> {
    let mut buckets: Vec<&str> = changes.iter().map(|c| c.0).collect();
    buckets.sort_unstable();
    buckets.dedup();
    let current = read_in(tx, t, owner, &buckets).await?;
    let mut rows = Vec::with_capacity(changes.len());
    for (bucket, ledger, delta) in changes {
        let key = ((*bucket).to_owned(), (*ledger).to_owned());
        let (usage, version) = current.get(&key).copied().unwrap_or_default();
        let after = Usage {
            spent: usage.spent + delta.spent,
            reserved: usage.reserved + delta.reserved,
        };
        let seen = tx
            .ledgers()
            .entry((t.table, owner, key.0.clone()))
            .or_default();
        seen.insert(key.1.clone(), (after, version + 1));
        rows.push(Changed {
            ledgers: t,
            owner,
            bucket: key.0,
            ledger: key.1,
            after,
            version: version + 1,
        });
    }
    match tx.pg() {
        Some(pg) => {
            pg.changed_ledgers(rows);
            Ok(())
        }
        None => {
            let write = Changed::statement(t, &rows, tx.tenant_id());
            tx.defer(t.table, write, rows.len() as u64).await
        }
    }
}

/// A ledger row as a write left it, at its new version.
#[derive(Debug, Clone)]
pub(crate) struct Changed {
    ledgers: Ledgers,
    owner: Uuid,
    bucket: String,
    ledger: String,
    after: Usage,
    version: i64,
}

impl Changed {
    /// SQLite: the rows, all of `t`'s, in one statement: a new row is written at version 1; an existing one
    /// only if it is still at the version before.
    fn statement(t: Ledgers, rows: &[Changed], tenant: Uuid) -> crate::db::Query {
        let sql = format!(
            "INSERT INTO {table} (tenant_id, {owner}, {bucket}, ledger, spent, reserved, version) VALUES {} \
             ON CONFLICT ({owner}, {bucket}, ledger) DO UPDATE SET spent = excluded.spent, \
             reserved = excluded.reserved, version = excluded.version \
             WHERE {table}.version = excluded.version - 1",
            placeholders(1, rows.len(), 7),
            table = t.table,
            owner = t.owner,
            bucket = t.bucket,
        );
        let mut write = query(sql);
        for r in rows {
            write = write
                .bind(tenant.to_string())
                .bind(r.owner.to_string())
                .bind(r.bucket.clone())
                .bind(r.ledger.clone())
                .bind(r.after.spent.to_string())
                .bind(r.after.reserved.to_string())
                .bind(r.version);
        }
        write
    }
}

/// PostgreSQL: the ledger rows of one group of a tenant's writes (one hold of its row lock, under which nobody
/// else changes them): every row of the buckets its kept writes saw, as they left them, which answer the group's
/// next writes; and the rows they changed, written once as the group commits, each compare-and-set on the
/// version the database has. A session's payments all change the same few rows, and updating such a row once
/// per payment cost PostgreSQL more than the payment's own row did (BENCHMARKS.md). A write's rows join the group
/// only once it keeps its savepoint.
#[derive(Debug, Default)]
pub(crate) struct GroupLedgers {
    seen: LedgerRows,
    /// By (table, owner, bucket, ledger): the row as last left, and the version the database has it at.
    changed: BTreeMap<(&'static str, Uuid, String, String), (Changed, i64)>,
}

impl GroupLedgers {
    /// A write of the group kept its savepoint: the rows it saw, and those it changed, in order. Every bucket
    /// seen is kept (a group's writes are few, and each sees few): a changed row read again from the database
    /// would be read as it was before the group.
    pub(crate) fn kept(&mut self, seen: LedgerRows, changed: Vec<Changed>) {
        self.seen.extend(seen);
        for row in changed {
            let key = (
                row.ledgers.table,
                row.owner,
                row.bucket.clone(),
                row.ledger.clone(),
            );
            let base = row.version - 1;
            let entry = self
                .changed
                .entry(key)
                .or_insert_with(|| (row.clone(), base));
            entry.0 = row;
        }
    }

    /// What the group's kept writes left of the buckets they saw, over what `write` read from the database.
    pub(crate) fn answer(&self, write: &mut LedgerRows) {
        write.extend(self.seen.iter().map(|(k, v)| (k.clone(), v.clone())));
    }

    /// The statements that write the changed rows, to go in a message of several (empty when none changed): one
    /// per table, each failing unless every row was at the version the group read.
    pub(crate) fn statements(
        &self,
        tenant: Uuid,
        prepared: &mut std::collections::HashSet<String>,
    ) -> Result<String> {
        let mut text = String::new();
        for t in [SESSION_DAYS, KEY_PERIODS] {
            let rows = (self.changed.values())
                .filter(|(r, _)| r.ledgers.table == t.table)
                .map(|(r, base)| {
                    serde_json::json!([
                        r.owner.to_string(),
                        r.bucket,
                        r.ledger,
                        r.after.spent.to_string(),
                        r.after.reserved.to_string(),
                        base + 1
                    ])
                })
                .collect();
            text += &crate::pg::listed(&group_sql(t), tenant, rows, prepared)?;
        }
        Ok(text)
    }
}

/// PostgreSQL: the rows of one table a group changed (`$2`, a JSON array of `[owner, bucket, ledger, spent,
/// reserved, version]`), each new at version 1 or compare-and-set on the version before; the statement fails
/// unless every row was written.
fn group_sql(t: Ledgers) -> String {
    format!(
        "WITH r AS (SELECT v->>0 AS o, v->>1 AS b, v->>2 AS l, v->>3 AS s, v->>4 AS re, \
         CAST(v->>5 AS BIGINT) AS ve FROM jsonb_array_elements(CAST($2 AS jsonb)) AS v), \
         w AS (INSERT INTO {table} (tenant_id, {owner}, {bucket}, ledger, spent, reserved, version) \
         SELECT $1, o, b, l, s, re, ve FROM r ON CONFLICT ({owner}, {bucket}, ledger) DO UPDATE SET \
         spent = excluded.spent, reserved = excluded.reserved, version = excluded.version \
         WHERE {table}.version = excluded.version - 1 RETURNING 1) \
         SELECT CAST(CASE WHEN (SELECT COUNT(*) FROM w) = (SELECT COUNT(*) FROM r) THEN '1' \
         ELSE '{table} rows changed where others were expected (another writer changed them)' END AS INT)",
        table = t.table,
        owner = t.owner,
        bucket = t.bucket,
    )
}

#[cfg(test)]
mod tests {
    use chrono::{FixedOffset, TimeZone, Utc};

    #[test]
    fn the_days_around_now_hold_every_time_zones_day() {
        for (y, m, d, h) in [
            (2026, 3, 10, 0),
            (2026, 3, 10, 11),
            (2026, 12, 31, 23),
            (2027, 1, 1, 0),
        ] {
            let now = Utc.with_ymd_and_hms(y, m, d, h, 30, 0).unwrap();
            let days = super::days_around(now);
            for hours in -12..=14 {
                let zone = FixedOffset::east_opt(hours * 3600).unwrap();
                let day = now.with_timezone(&zone).date_naive().to_string();
                assert!(
                    days.contains(&day),
                    "{day} at UTC{hours:+} for {now}: {days:?}"
                );
            }
        }
    }
}
