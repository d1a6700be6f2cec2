//! Reading the audit trail. Entries are only ever written by [`crate::WriteTx::audit`].

use crate::db::query;
use crate::{Result, Store, json, opt_uuid, uuid};
use paygent_domain::audit::AuditEntry;
use uuid::Uuid;

crate::row_type! {
    struct AuditRow {
        tenant_id: String,
        seq: i64,
        at: String,
        actor: String,
        action: String,
        subject: String,
        session_id: Option<String>,
        data: String,
        prev_hash: String,
        hash: String,
    }
}

impl Store {
    /// Entries after `after_seq`, in order, optionally only one session's.
    pub async fn audit_entries(
        &self,
        tenant_id: Uuid,
        session_id: Option<Uuid>,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<AuditEntry>> {
        let rows = query(
            "SELECT tenant_id, seq, at, actor, action, subject, session_id, data, prev_hash, hash FROM audit_log \
             WHERE tenant_id = $1 AND seq > $2 AND ($3 IS NULL OR session_id = $3) ORDER BY seq LIMIT $4",
        )
        .bind(tenant_id.to_string())
        .bind(after_seq)
        .bind(session_id.map(|s| s.to_string()))
        .bind(limit)
        .fetch_all(self.reader())
        .await?;
        rows.into_iter()
            .map(|r| {
                let r = AuditRow::try_from(r)?;
                Ok(AuditEntry {
                    tenant_id: uuid(&r.tenant_id)?,
                    seq: r.seq,
                    at: r.at,
                    actor: r.actor,
                    action: r.action,
                    subject: r.subject,
                    session_id: opt_uuid(r.session_id)?,
                    data: json(&r.data)?,
                    prev_hash: r.prev_hash,
                    hash: r.hash,
                })
            })
            .collect()
    }
}
