//! The budget ledger. Every change is made inside a [`WriteTx`], which holds the tenant's lock, and is also a
//! compare-and-set on the row's version: two writers can never both apply a change computed from one reading.

use crate::{Result, StoreError, WriteTx, decimal};
use paygent_domain::Decimal;
use paygent_domain::budget::Usage;
use sqlx::{Any, Executor, Row};
use std::collections::BTreeMap;
use uuid::Uuid;

/// A change to one ledger row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delta {
    pub spent: Decimal,
    pub reserved: Decimal,
}

/// Today's usage of one session, by ledger key.
pub async fn day_usage<'e>(
    exec: impl Executor<'e, Database = Any>,
    session_id: Uuid,
    day: &str,
) -> Result<BTreeMap<String, Usage>> {
    let rows = sqlx::query(
        "SELECT ledger, spent, reserved FROM budget_usage WHERE session_id = $1 AND day = $2",
    )
    .bind(session_id.to_string())
    .bind(day)
    .fetch_all(exec)
    .await?;
    rows.iter()
        .map(|r| {
            let usage = Usage {
                spent: decimal(&r.try_get::<String, _>(1)?)?,
                reserved: decimal(&r.try_get::<String, _>(2)?)?,
            };
            Ok((r.try_get(0)?, usage))
        })
        .collect()
}

/// Applies `delta` to one ledger row, creating it at zero if needed.
pub async fn apply(
    tx: &mut WriteTx,
    session_id: Uuid,
    day: &str,
    ledger: &str,
    delta: Delta,
) -> Result<()> {
    let tenant = tx.tenant_id().to_string();
    let current = sqlx::query(
        "SELECT spent, reserved, version FROM budget_usage WHERE session_id = $1 AND day = $2 AND ledger = $3",
    )
    .bind(session_id.to_string())
    .bind(day)
    .bind(ledger)
    .fetch_optional(tx.conn())
    .await?;
    let done = match current {
        None => {
            sqlx::query(
                "INSERT INTO budget_usage (tenant_id, session_id, day, ledger, spent, reserved, version) \
                 VALUES ($1, $2, $3, $4, $5, $6, 1)",
            )
            .bind(tenant)
            .bind(session_id.to_string())
            .bind(day)
            .bind(ledger)
            .bind(delta.spent.to_string())
            .bind(delta.reserved.to_string())
            .execute(tx.conn())
            .await?
        }
        Some(row) => {
            let spent = decimal(&row.try_get::<String, _>(0)?)? + delta.spent;
            let reserved = decimal(&row.try_get::<String, _>(1)?)? + delta.reserved;
            let version: i64 = row.try_get(2)?;
            sqlx::query(
                "UPDATE budget_usage SET spent = $4, reserved = $5, version = version + 1 \
                 WHERE session_id = $1 AND day = $2 AND ledger = $3 AND version = $6",
            )
            .bind(session_id.to_string())
            .bind(day)
            .bind(ledger)
            .bind(spent.to_string())
            .bind(reserved.to_string())
            .bind(version)
            .execute(tx.conn())
            .await?
        }
    };
    if done.rows_affected() != 1 {
        return Err(StoreError::Corrupt(format!(
            "budget row {session_id}/{day}/{ledger} changed under a writer: lost lock"
        )));
    }
    Ok(())
}
