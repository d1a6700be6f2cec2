//! Tenants: the walls between customers. Each one has its own audit chain and event sequence.

use crate::db::query;
use crate::{Result, Store};
use chrono::{DateTime, Utc};
use uuid::Uuid;

impl Store {
    /// Creates the tenant if it does not exist. Returns true when it was created.
    pub async fn ensure_tenant(&self, id: Uuid, name: &str, now: DateTime<Utc>) -> Result<bool> {
        let done = query(
            "INSERT INTO tenants (id, name, created_at) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING",
        )
        .bind(id.to_string())
        .bind(name)
        .bind(paygent_domain::time::format(now))
        .execute(self.writer())
        .await?;
        Ok(done == 1)
    }

    /// The tenant's emergency stop record, if engaged.
    pub async fn kill_switch(&self, tenant_id: Uuid) -> Result<Option<String>> {
        let row = query("SELECT kill_switch FROM tenants WHERE id = $1")
            .bind(tenant_id.to_string())
            .fetch_one(self.reader())
            .await?;
        row.get(0)
    }

    /// The recorded head of a tenant's audit chain: (last seq, its hash).
    pub async fn audit_head(&self, tenant_id: Uuid) -> Result<(i64, String)> {
        let row = query("SELECT audit_seq, audit_head FROM tenants WHERE id = $1")
            .bind(tenant_id.to_string())
            .fetch_one(self.reader())
            .await?;
        Ok((row.get(0)?, row.get(1)?))
    }
}
