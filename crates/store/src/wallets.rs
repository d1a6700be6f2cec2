//! Wallets: which tenant owns each wallet Paygent holds a key for.

use crate::db::{Db, query};
use crate::{Result, Store, WriteTx, uuid};
use uuid::Uuid;

/// Records `address` (lower-case) as `tenant_id`'s unless some tenant owns it already; returns whether it did.
pub async fn register(store: &Store, address: &str, tenant_id: Uuid, now: &str) -> Result<bool> {
    let done = query(
        "INSERT INTO wallets (address, tenant_id, created_at) VALUES ($1, $2, $3) \
         ON CONFLICT (address) DO NOTHING",
    )
    .bind(address.to_owned())
    .bind(tenant_id.to_string())
    .bind(now.to_owned())
    .execute(store.writer())
    .await?;
    Ok(done == 1)
}

/// Gives `address` to `tenant_id`; returns whether it is registered at all.
pub async fn assign(tx: &mut WriteTx, address: &str, tenant_id: Uuid) -> Result<bool> {
    let done = query("UPDATE wallets SET tenant_id = $2 WHERE address = $1")
        .bind(address.to_owned())
        .bind(tenant_id.to_string())
        .execute(tx.conn())
        .await?;
    Ok(done == 1)
}

/// The tenant that owns `address`, if any.
pub async fn owner(db: Db<'_>, address: &str) -> Result<Option<Uuid>> {
    query("SELECT tenant_id FROM wallets WHERE address = $1")
        .bind(address.to_owned())
        .fetch_optional(db)
        .await?
        .map(|r| uuid(&r.get::<String>(0)?))
        .transpose()
}

/// A tenant's wallets, by address.
pub async fn of_tenant(db: Db<'_>, tenant_id: Uuid) -> Result<Vec<String>> {
    query("SELECT address FROM wallets WHERE tenant_id = $1 ORDER BY address LIMIT 1000")
        .bind(tenant_id.to_string())
        .fetch_all(db)
        .await?
        .into_iter()
        .map(|r| r.get::<String>(0))
        .collect()
}
