//! The one way to change state: a transaction that locks its tenant's row, then writes the change, its audit
//! entries and its events together, so none can exist without the others.

use crate::db::{Conn, Db, query};
use crate::{Engine, Result, Store, StoreError};
use chrono::{DateTime, Utc};
use paygent_domain::audit::AuditEntry;
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

/// An event as written to the outbox, ready to fan out once its transaction commits.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub tenant_id: Uuid,
    pub seq: i64,
    #[serde(rename = "type")]
    pub kind: String,
    pub session_id: Option<Uuid>,
    pub payload: Value,
    pub created_at: String,
}

pub struct WriteTx {
    conn: Conn,
    tenant_id: Uuid,
    now: DateTime<Utc>,
    audit_seq: i64,
    audit_head: String,
    event_seq: i64,
    kill_switch: Option<String>,
    events: Vec<Event>,
}

const HEAD: &str =
    "SELECT audit_seq, audit_head, event_seq, kill_switch FROM tenants WHERE id = $1";
const HEAD_FOR_UPDATE: &str =
    "SELECT audit_seq, audit_head, event_seq, kill_switch FROM tenants WHERE id = $1 FOR UPDATE";

impl Store {
    /// Starts a write for `tenant_id` at time `now`, taking the tenant's write lock.
    pub async fn begin(&self, tenant_id: Uuid, now: DateTime<Utc>) -> Result<WriteTx> {
        // On PostgreSQL the row lock serializes the tenant's writers (a lock, not a new row version per write);
        // SQLite has one writer already.
        let (mut conn, sql) = match &self.engine {
            Engine::Pg(pool) => (Conn::Pg(pool.begin().await?), HEAD_FOR_UPDATE),
            Engine::Lite(lite) => (Conn::Lite(lite.begin().await?), HEAD),
        };
        let row = query(sql)
            .bind(tenant_id.to_string())
            .fetch_optional(Db::Tx(&mut conn))
            .await?
            .ok_or(StoreError::UnknownTenant(tenant_id))?;
        Ok(WriteTx {
            conn,
            tenant_id,
            now,
            audit_seq: row.get(0)?,
            audit_head: row.get(1)?,
            event_seq: row.get(2)?,
            kill_switch: row.get(3)?,
            events: Vec::new(),
        })
    }
}

impl WriteTx {
    /// Where this transaction's statements run.
    pub fn conn(&mut self) -> Db<'_> {
        Db::Tx(&mut self.conn)
    }

    pub fn tenant_id(&self) -> Uuid {
        self.tenant_id
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.now
    }

    /// The tenant's emergency stop record, if it is engaged, as of this transaction's lock.
    pub fn kill_switch(&self) -> Option<&str> {
        self.kill_switch.as_deref()
    }

    /// Engages (`Some`) or releases (`None`) the tenant's emergency stop.
    pub async fn set_kill_switch(&mut self, record: Option<&str>) -> Result<()> {
        query("UPDATE tenants SET kill_switch = $2 WHERE id = $1")
            .bind(self.tenant_id.to_string())
            .bind(record)
            .execute(Db::Tx(&mut self.conn))
            .await?;
        self.kill_switch = record.map(str::to_owned);
        Ok(())
    }

    /// The transaction's timestamp in the stored format.
    pub fn now_text(&self) -> String {
        paygent_domain::time::format(self.now)
    }

    /// Appends an entry to the tenant's hash chain.
    pub async fn audit(
        &mut self,
        actor: &str,
        action: &str,
        subject: &str,
        session_id: Option<Uuid>,
        data: Value,
    ) -> Result<()> {
        let mut entry = AuditEntry {
            tenant_id: self.tenant_id,
            seq: self.audit_seq + 1,
            at: self.now_text(),
            actor: actor.to_owned(),
            action: action.to_owned(),
            subject: subject.to_owned(),
            session_id,
            data,
            prev_hash: self.audit_head.clone(),
            hash: String::new(),
        };
        entry.hash = entry.compute_hash();
        query(
            "INSERT INTO audit_log (tenant_id, seq, at, actor, action, subject, session_id, data, prev_hash, hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(entry.tenant_id.to_string())
        .bind(entry.seq)
        .bind(&entry.at)
        .bind(&entry.actor)
        .bind(&entry.action)
        .bind(&entry.subject)
        .bind(entry.session_id.map(|s| s.to_string()))
        .bind(entry.data.to_string())
        .bind(&entry.prev_hash)
        .bind(&entry.hash)
        .execute(Db::Tx(&mut self.conn))
        .await?;
        self.audit_seq = entry.seq;
        self.audit_head = entry.hash;
        Ok(())
    }

    /// Appends an event with the tenant's next sequence number.
    pub async fn event(
        &mut self,
        kind: &str,
        session_id: Option<Uuid>,
        payload: Value,
    ) -> Result<()> {
        let event = Event {
            tenant_id: self.tenant_id,
            seq: self.event_seq + 1,
            kind: kind.to_owned(),
            session_id,
            payload,
            created_at: self.now_text(),
        };
        query(
            "INSERT INTO events (tenant_id, seq, type, session_id, payload, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(event.tenant_id.to_string())
        .bind(event.seq)
        .bind(&event.kind)
        .bind(event.session_id.map(|s| s.to_string()))
        .bind(event.payload.to_string())
        .bind(&event.created_at)
        .execute(Db::Tx(&mut self.conn))
        .await?;
        self.event_seq = event.seq;
        self.events.push(event);
        Ok(())
    }

    /// Records the new chain head and commits. Returns the events to fan out. On PostgreSQL, other instances
    /// are nudged by NOTIFY, which PostgreSQL delivers only if and when the transaction commits.
    pub async fn commit(mut self) -> Result<Vec<Event>> {
        if matches!(self.conn, Conn::Pg(_)) && !self.events.is_empty() {
            query("SELECT pg_notify($1, $2)")
                .bind(crate::events::CHANNEL)
                .bind(format!("{}:{}", self.tenant_id, self.event_seq))
                .execute(Db::Tx(&mut self.conn))
                .await?;
        }
        query("UPDATE tenants SET audit_seq = $2, audit_head = $3, event_seq = $4 WHERE id = $1")
            .bind(self.tenant_id.to_string())
            .bind(self.audit_seq)
            .bind(&self.audit_head)
            .bind(self.event_seq)
            .execute(Db::Tx(&mut self.conn))
            .await?;
        match self.conn {
            Conn::Pg(tx) => tx.commit().await?,
            Conn::Lite(tx) => tx.commit().await?,
        }
        Ok(self.events)
    }
}
