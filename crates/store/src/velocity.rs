//! The circuit breaker's marks: each counted payment's running totals in each scope a velocity rule counts.

use crate::db::query;
use crate::{Result, WriteTx, decimal, time};
use chrono::{DateTime, Utc};
use paygent_domain::velocity::Mark;

fn mark(row: &crate::Row) -> Result<Mark> {
    Ok(Mark {
        seq: row.get(1)?,
        usd_total: decimal(&row.get::<String>(2)?)?,
        usd: decimal(&row.get::<String>(3)?)?,
        at: time(&row.get::<String>(4)?)?,
    })
}

/// A scope's first mark after `after` (none when its window is empty) and its last mark, in one statement of
/// two index lookups.
pub async fn window(
    tx: &mut WriteTx,
    scope: &str,
    after: DateTime<Utc>,
) -> Result<(Option<Mark>, Option<Mark>)> {
    let tenant = tx.tenant_id().to_string();
    let rows = query(
        "SELECT * FROM (SELECT CAST(0 AS BIGINT) AS side, seq, usd_total, usd, at FROM velocity_marks \
         WHERE tenant_id = $1 AND scope = $2 AND at > $3 ORDER BY at, seq LIMIT 1) first_mark \
         UNION ALL SELECT * FROM (SELECT CAST(1 AS BIGINT) AS side, seq, usd_total, usd, at FROM velocity_marks \
         WHERE tenant_id = $1 AND scope = $2 ORDER BY seq DESC LIMIT 1) last_mark",
    )
    .bind(tenant)
    .bind(scope.to_owned())
    .bind(paygent_domain::time::format(after))
    .fetch_all(tx.conn())
    .await?;
    let (mut first, mut last) = (None, None);
    for row in &rows {
        match row.get::<i64>(0)? {
            0 => first = Some(mark(row)?),
            _ => last = Some(mark(row)?),
        }
    }
    Ok((first, last))
}

/// Leaves a payment's mark in `scope`.
pub async fn leave(tx: &mut WriteTx, scope: &str, m: &Mark) -> Result<()> {
    let (tenant, at) = (
        tx.tenant_id().to_string(),
        paygent_domain::time::format(m.at),
    );
    query(
        "INSERT INTO velocity_marks (tenant_id, scope, seq, at, usd_total, usd) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(tenant)
    .bind(scope.to_owned())
    .bind(m.seq)
    .bind(at)
    .bind(m.usd_total.to_string())
    .bind(m.usd.to_string())
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// Deletes up to `limit` marks from before `before` (older than any window reaches); returns how many.
pub async fn prune(store: &crate::Store, before: DateTime<Utc>, limit: i64) -> Result<u64> {
    query(
        "DELETE FROM velocity_marks WHERE (tenant_id, scope, seq) IN \
         (SELECT tenant_id, scope, seq FROM velocity_marks WHERE at < $1 LIMIT $2)",
    )
    .bind(paygent_domain::time::format(before))
    .bind(limit)
    .execute(store.writer())
    .await
}
