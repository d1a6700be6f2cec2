//! Reading the event outbox for replay by sequence number, pruning it, and hearing of new events written by
//! other instances.

use crate::db::query;
use crate::{Backend, Event, Result, Store, json, opt_uuid, uuid};
use chrono::{DateTime, Utc};
use paygent_domain::event::EventKind;
use secrecy::ExposeSecret;
use sqlx::postgres::PgListener;
use uuid::Uuid;

/// The PostgreSQL NOTIFY channel that carries "tenant T has events up to seq N", from the instance I, as
/// `T:N:I`.
pub(crate) const CHANNEL: &str = "paygent_events";

/// A nudge's payload.
pub(crate) fn nudge(tenant: Uuid, seq: i64, instance: Uuid) -> String {
    format!("{tenant}:{seq}:{instance}")
}

/// What an [`EventNudges`] hears.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nudge {
    /// This tenant has events up to this sequence number.
    Tenant(Uuid, i64),
    /// The listening connection was lost and restored: nudges may have been missed.
    Resync,
}

/// PostgreSQL LISTEN for events committed by other instances. An instance's own commits are not heard: its
/// writers hand their events to its hub themselves, and reading them back for every nudge cost a query a write.
pub struct EventNudges {
    listener: PgListener,
    instance: Uuid,
}

impl EventNudges {
    pub async fn next(&mut self) -> Result<Nudge> {
        loop {
            let Some(n) = self.listener.try_recv().await? else {
                return Ok(Nudge::Resync);
            };
            if let Some(nudge) = heard(n.payload(), self.instance) {
                return Ok(nudge);
            }
        }
    }
}

/// What a payload says, or none when this instance sent it. One without an instance (an older release's) is
/// another's; one that does not parse calls for a resync.
fn heard(payload: &str, instance: Uuid) -> Option<Nudge> {
    let mut parts = payload.splitn(3, ':');
    let tenant = parts.next().and_then(|t| Uuid::parse_str(t).ok());
    let seq = parts.next().and_then(|s| s.parse().ok());
    let from = parts.next().and_then(|i| Uuid::parse_str(i).ok());
    match (tenant, seq, from) {
        (Some(_), Some(_), Some(from)) if from == instance => None,
        (Some(tenant), Some(seq), _) => Some(Nudge::Tenant(tenant, seq)),
        _ => Some(Nudge::Resync),
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
        Ok(Some(EventNudges {
            listener,
            instance: self.instance,
        }))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_hears_only_other_instances_nudges() {
        let (tenant, me, other) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        assert_eq!(heard(&nudge(tenant, 7, me), me), None);
        let from_other = heard(&nudge(tenant, 7, other), me);
        assert_eq!(from_other, Some(Nudge::Tenant(tenant, 7)));
        let older_release = heard(&format!("{tenant}:7"), me);
        assert_eq!(older_release, Some(Nudge::Tenant(tenant, 7)));
        assert_eq!(heard("garbled", me), Some(Nudge::Resync));
    }
}
