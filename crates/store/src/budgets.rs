//! The budget ledger. Every change is made inside a [`WriteTx`], which holds the tenant's lock, and is also a
//! compare-and-set on the row's version: two writers can never both apply a change computed from one reading.

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

/// Today's usage of one session, by ledger key.
pub async fn day_usage(db: Db<'_>, session_id: Uuid, day: &str) -> Result<BTreeMap<String, Usage>> {
    let rows = query(
        "SELECT ledger, spent, reserved FROM budget_usage WHERE session_id = $1 AND day = $2",
    )
    .bind(session_id.to_string())
    .bind(day)
    .fetch_all(db)
    .await?;
    rows.iter()
        .map(|r| {
            let usage = Usage {
                spent: decimal(&r.get::<String>(1)?)?,
                reserved: decimal(&r.get::<String>(2)?)?,
            };
            Ok((r.get(0)?, usage))
        })
        .collect()
}

/// Applies each `(ledger, delta)` to its row, creating rows at zero as needed: one read and one write for all of
/// them, each row compare-and-set on the version it was read at.
pub async fn apply(
    tx: &mut WriteTx,
    session_id: Uuid,
    day: &str,
    changes: &[(&str, Delta)],
) -> Result<()> {
    let (first, second) = match changes {
        [one] => (one.0, one.0),
        [one, two] => (one.0, two.0),
        _ => {
            return Err(StoreError::Corrupt(
                "a booking changes one or two ledgers".into(),
            ));
        }
    };
    let rows = query(
        "SELECT ledger, spent, reserved, version FROM budget_usage \
         WHERE session_id = $1 AND day = $2 AND ledger IN ($3, $4)",
    )
    .bind(session_id.to_string())
    .bind(day)
    .bind(first)
    .bind(second)
    .fetch_all(tx.conn())
    .await?;
    let mut current = BTreeMap::new();
    for r in &rows {
        let usage = Usage {
            spent: decimal(&r.get::<String>(1)?)?,
            reserved: decimal(&r.get::<String>(2)?)?,
        };
        current.insert(r.get::<String>(0)?, (usage, r.get::<i64>(3)?));
    }
    // A new row is written at version 1; an existing one only if it is still at the version read above.
    let sql = format!(
        "INSERT INTO budget_usage (tenant_id, session_id, day, ledger, spent, reserved, version) VALUES {} \
         ON CONFLICT (session_id, day, ledger) DO UPDATE SET spent = excluded.spent, \
         reserved = excluded.reserved, version = excluded.version \
         WHERE budget_usage.version = excluded.version - 1",
        placeholders(1, changes.len(), 7)
    );
    let mut statement = query(sql);
    for (ledger, delta) in changes {
        let (usage, version) = current.get(*ledger).copied().unwrap_or_default();
        statement = statement
            .bind(tx.tenant_id().to_string())
            .bind(session_id.to_string())
            .bind(day.to_owned())
            .bind((*ledger).to_owned())
            .bind((usage.spent + delta.spent).to_string())
            .bind((usage.reserved + delta.reserved).to_string())
            .bind(version + 1);
    }
    let done = statement.execute(tx.conn()).await?;
    if done != changes.len() as u64 {
        return Err(StoreError::Corrupt(format!(
            "budget rows of {session_id}/{day} changed under a writer: lost lock"
        )));
    }
    Ok(())
}
