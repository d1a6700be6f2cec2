//! Reading the event outbox for replay by sequence number, pruning it, and hearing of new events written by
//! other instances.

use crate::db::query;
use crate::{Backend, Event, Result, Store, json, opt_uuid, uuid};
use chrono::{DateTime, Utc};
use paygent_domain::event::EventKind;
use secrecy::ExposeSecret;
use sqlx::postgres::PgListener;
use uuid::Uuid;

/// The PostgreSQL NOTIFY channel that carries "tenant T has events up to seq N", as `T:N`.
pub(crate) const CHANNEL: &str = "paygent_events";

/// What an [`EventNudges`] hears.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nudge {
    /// This tenant has events up to this sequence number.
    Tenant(Uuid, i64),
    /// The listening connection was lost and restored: nudges may have been missed.
    Resync,
}

/// PostgreSQL LISTEN for events committed by any instance.
pub struct EventNudges(PgListener);

impl EventNudges {
    pub async fn next(&mut self) -> Result<Nudge> {
        Ok(match self.0.try_recv().await? {
            Some(n) => n
                .payload()
                .split_once(':')
                .and_then(|(t, s)| Some(Nudge::Tenant(Uuid::parse_str(t).ok()?, s.parse().ok()?)))
                .unwrap_or(Nudge::Resync),
            None => Nudge::Resync,
        })
    }
}

crate::row_type! {
    struct EventRow {
        tenant_id: String,
        seq: i64,
        kind: String,
        session_id: Option<String>,
        payload: String,
        created_at: String,
    }
}

impl Store {
    /// Events after `after_seq`, in order.
    pub async fn events_after(
        &self,
        tenant_id: Uuid,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<Event>> {
        let rows = query(
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
                let r = EventRow::try_from(r)?;
                Ok(Event {
                    tenant_id: uuid(&r.tenant_id)?,
                    seq: r.seq,
                    kind: EventKind::parse(&r.kind).ok_or_else(|| {
                        crate::StoreError::Corrupt(format!("unknown event type {:?}", r.kind))
                    })?,
                    session_id: opt_uuid(r.session_id)?,
                    payload: json(&r.payload)?,
                    created_at: r.created_at,
                })
            })
            .collect()
    }
}

impl Store {
    /// Nudges from every instance's commits, on PostgreSQL; SQLite has one instance, and needs none.
    pub async fn event_nudges(&self) -> Result<Option<EventNudges>> {
        if self.backend() != Backend::Postgres {
            return Ok(None);
        }
        let mut listener = PgListener::connect(self.url.expose_secret()).await?;
        listener.listen(CHANNEL).await?;
        Ok(Some(EventNudges(listener)))
    }

    /// Every tenant's latest event sequence number.
    pub async fn event_heads(&self) -> Result<Vec<(Uuid, i64)>> {
        let rows = query("SELECT id, event_seq FROM tenants")
            .fetch_all(self.reader())
            .await?;
        rows.iter()
            .map(|r| Ok((uuid(&r.get::<String>(0)?)?, r.get(1)?)))
            .collect()
    }

    /// The oldest event still kept for a tenant, and the tenant's latest: (first, head).
    pub async fn event_range(&self, tenant_id: Uuid) -> Result<(Option<i64>, i64)> {
        let row = query(
            "SELECT (SELECT MIN(seq) FROM events WHERE tenant_id = $1), event_seq FROM tenants WHERE id = $1",
        )
        .bind(tenant_id.to_string())
        .fetch_one(self.reader())
        .await?;
        Ok((row.get(0)?, row.get(1)?))
    }

    /// Deletes events created before `before`; returns how many.
    pub async fn prune_events(&self, before: DateTime<Utc>) -> Result<u64> {
        let done = query("DELETE FROM events WHERE created_at < $1")
            .bind(paygent_domain::time::format(before))
            .execute(self.writer())
            .await?;
        Ok(done)
    }
}
