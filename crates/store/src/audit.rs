//! Reading the audit trail. Entries are only ever written by [`crate::WriteTx::audit`].

use crate::db::query;
use crate::{Result, Store, json, opt_uuid, uuid};
use paygent_domain::audit::{Actions, AuditEntry, AuditFilter, AuditWindow};
use paygent_domain::time;
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

/// The read of [`Store::audit_entries`], in one order or the other.
macro_rules! audit_sql {
    ($order:literal) => {
        concat!(
            "SELECT tenant_id, seq, at, actor, action, subject, session_id, data, prev_hash, hash FROM audit_log \
             WHERE tenant_id = $1 AND seq >= $2 AND seq <= $3 AND ($4 IS NULL OR session_id = $4) \
             AND ($5 IS NULL OR action LIKE $5 ESCAPE '!') AND ($6 IS NULL OR actor = $6) \
             AND ($7 IS NULL OR subject = $7) AND ($8 IS NULL OR at >= $8) AND ($9 IS NULL OR at < $9) \
             ORDER BY seq ",
            $order,
            " LIMIT $10"
        )
    };
}

impl Store {
    /// The entries of `window` that match `filter`, in the window's order, at most `limit`.
    pub async fn audit_entries(
        &self,
        tenant_id: Uuid,
        filter: &AuditFilter,
        window: AuditWindow,
        limit: i64,
    ) -> Result<Vec<AuditEntry>> {
        let sql = if window.newest_first {
            audit_sql!("DESC")
        } else {
            audit_sql!("ASC")
        };
        let rows = query(sql)
            .bind(tenant_id.to_string())
            .bind(window.first)
            .bind(window.last)
            .bind(filter.session_id.map(|s| s.to_string()))
            .bind(filter.actions.map(like))
            .bind(filter.actor.clone())
            .bind(filter.subject.clone())
            .bind(filter.since.map(time::format))
            .bind(filter.until.map(time::format))
            .bind(limit)
            .fetch_all(self.reader())
            .await?;
        rows.into_iter().map(entry).collect()
    }

    /// Every entry after `after_seq`, in order, at most `limit`: the chain as stored, past its recorded head too,
    /// for a check that must see what does not belong.
    pub async fn audit_chain(
        &self,
        tenant_id: Uuid,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<AuditEntry>> {
        let rows = query(
            "SELECT tenant_id, seq, at, actor, action, subject, session_id, data, prev_hash, hash FROM audit_log \
             WHERE tenant_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(tenant_id.to_string())
        .bind(after_seq)
        .bind(limit)
        .fetch_all(self.reader())
        .await?;
        rows.into_iter().map(entry).collect()
    }
}

/// An entry as its row holds it.
fn entry(row: crate::Row) -> Result<AuditEntry> {
    let r = AuditRow::try_from(row)?;
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
}

/// An action or a family of them as a `LIKE` pattern, `!` escaping (`kill_switch` has a `_`).
fn like(actions: Actions) -> String {
    let escaped = |name: &str| {
        name.replace('!', "!!")
            .replace('_', "!_")
            .replace('%', "!%")
    };
    match actions {
        Actions::One(action) => escaped(action.as_str()),
        Actions::Family(family) => format!("{}.%", escaped(family)),
    }
}
