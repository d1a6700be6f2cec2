//! Reading the event outbox, for replay by sequence number.

use crate::{Event, Result, Store, json, opt_uuid, uuid};
use sqlx::FromRow;
use uuid::Uuid;

#[derive(FromRow)]
struct EventRow {
    tenant_id: String,
    seq: i64,
    #[sqlx(rename = "type")]
    kind: String,
    session_id: Option<String>,
    payload: String,
    created_at: String,
}

impl Store {
    /// Events after `after_seq`, in order.
    pub async fn events_after(
        &self,
        tenant_id: Uuid,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<Event>> {
        let rows = sqlx::query_as::<_, EventRow>(
            "SELECT tenant_id, seq, type, session_id, payload, created_at FROM events \
             WHERE tenant_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(tenant_id.to_string())
        .bind(after_seq)
        .bind(limit)
        .fetch_all(self.reader())
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(Event {
                    tenant_id: uuid(&r.tenant_id)?,
                    seq: r.seq,
                    kind: r.kind,
                    session_id: opt_uuid(r.session_id)?,
                    payload: json(&r.payload)?,
                    created_at: r.created_at,
                })
            })
            .collect()
    }
}
