//! The one way to change state: a transaction that locks its tenant's row, then writes the change, its audit
//! entries and its events together, so none can exist without the others.

use crate::db::{Arg, Conn, Db, Query, placeholders, query};
use crate::policies::RulesCache;
use crate::{Engine, Result, Store, StoreError};
use chrono::{DateTime, Utc};
use paygent_domain::audit::AuditAction;
use paygent_domain::audit::AuditEntry;
use paygent_domain::event::EventKind;
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

/// An event as written to the outbox, ready to fan out once its transaction commits.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub tenant_id: Uuid,
    pub seq: i64,
    #[serde(rename = "type")]
    pub kind: EventKind,
    pub session_id: Option<Uuid>,
    pub payload: Value,
    pub created_at: String,
}

impl Event {
    /// The thing the event is about (a payment, request, execution...): every event names its subject as `id`.
    pub fn subject(&self) -> Option<Uuid> {
        self.payload.get("id").and_then(Value::as_str)?.parse().ok()
    }

    /// Whether the event is about the thing with this id (a payment, request, execution...): every event names
    /// its subject as `id`.
    pub fn is_about(&self, id: Uuid) -> bool {
        self.subject() == Some(id)
    }
}

pub struct WriteTx {
    conn: Conn,
    tenant_id: Uuid,
    now: DateTime<Utc>,
    audit_seq: i64,
    audit_head: String,
    event_seq: i64,
    kill_switch: Option<String>,
    audit: Vec<AuditEntry>,
    events: Vec<Event>,
    rules: RulesCache,
}

/// The tenant's head, and whether the acting key (`$2`, NULL for the system) is live at `$3`: read in the same
/// statement as the lock, so a key revoked a moment ago writes nothing, at no extra round trip.
macro_rules! head {
    () => {
        "SELECT audit_seq, audit_head, event_seq, kill_switch, \
         (SELECT COUNT(*) FROM api_keys WHERE id = $2 AND tenant_id = $1 AND revoked_at IS NULL \
          AND (expires_at IS NULL OR expires_at > $3)) FROM tenants WHERE id = $1"
    };
}
const HEAD: &str = head!();
const HEAD_FOR_UPDATE: &str = concat!(head!(), " FOR UPDATE");

impl Store {
    /// Starts a write for `tenant_id` at time `now`, taking the tenant's write lock.
    pub async fn begin(&self, tenant_id: Uuid, now: DateTime<Utc>) -> Result<WriteTx> {
        self.begin_by(tenant_id, None, now).await
    }

    /// Starts a write made by the key `key_id`: refused with [`StoreError::KeyNotLive`] if that key was revoked
    /// or has expired, as of the tenant's lock.
    pub async fn begin_as(
        &self,
        tenant_id: Uuid,
        key_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<WriteTx> {
        self.begin_by(tenant_id, Some(key_id), now).await
    }

    async fn begin_by(
        &self,
        tenant_id: Uuid,
        key_id: Option<Uuid>,
        now: DateTime<Utc>,
    ) -> Result<WriteTx> {
        // On PostgreSQL the row lock serializes the tenant's writers (a lock, not a new row version per write);
        // SQLite has one writer already.
        let (mut conn, sql) = match &self.engine {
            Engine::Pg(pg) => (Conn::Pg(pg.begin(tenant_id).await?), HEAD_FOR_UPDATE),
            Engine::Lite(lite) => (Conn::Lite(lite.begin().await?), HEAD),
        };
        let row = query(sql)
            .bind(tenant_id.to_string())
            .bind(key_id.map(|k| k.to_string()))
            .bind(paygent_domain::time::format(now))
            .fetch_optional(Db::Tx(&mut conn))
            .await?
            .ok_or(StoreError::UnknownTenant(tenant_id))?;
        if key_id.is_some() && row.get::<i64>(4)? != 1 {
            return Err(StoreError::KeyNotLive);
        }
        Ok(WriteTx {
            conn,
            tenant_id,
            now,
            audit_seq: row.get(0)?,
            audit_head: row.get(1)?,
            event_seq: row.get(2)?,
            kill_switch: row.get(3)?,
            audit: Vec::new(),
            events: Vec::new(),
            rules: self.rules.clone(),
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

    /// Whether this transaction runs on PostgreSQL (for the few statements whose SQL differs).
    pub(crate) fn on_postgres(&self) -> bool {
        matches!(self.conn, crate::db::Conn::Pg(_))
    }

    /// Where statements run, beside the store's parsed policy rules.
    pub(crate) fn with_rules(&mut self) -> (Db<'_>, &RulesCache) {
        (Db::Tx(&mut self.conn), &self.rules)
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

    /// Changes one of this tenant's rows with `sql` binding `$1` tenant, `$2` id and `$3` value; whether a row
    /// changed (the condition in `sql` held).
    pub(crate) async fn change_one(
        &mut self,
        sql: &'static str,
        id: Uuid,
        value: impl Into<Arg>,
    ) -> Result<bool> {
        let done = query(sql)
            .bind(self.tenant_id.to_string())
            .bind(id.to_string())
            .bind(value)
            .execute(self.conn())
            .await?;
        Ok(done == 1)
    }

    /// Appends an entry to the tenant's hash chain. It is written with the commit.
    pub async fn audit(
        &mut self,
        actor: &str,
        action: AuditAction,
        subject: &str,
        session_id: Option<Uuid>,
        data: Value,
    ) -> Result<()> {
        let mut entry = AuditEntry {
            tenant_id: self.tenant_id,
            seq: self.audit_seq + 1,
            at: self.now_text(),
            actor: actor.to_owned(),
            action: action.as_str().to_owned(),
            subject: subject.to_owned(),
            session_id,
            data,
            prev_hash: self.audit_head.clone(),
            hash: String::new(),
        };
        entry.hash = entry.compute_hash();
        self.audit_seq = entry.seq;
        self.audit_head = entry.hash.clone();
        self.audit.push(entry);
        Ok(())
    }

    /// Appends an event with the tenant's next sequence number. It is written with the commit.
    pub async fn event(
        &mut self,
        kind: EventKind,
        session_id: Option<Uuid>,
        payload: Value,
    ) -> Result<()> {
        self.event_seq += 1;
        self.events.push(Event {
            tenant_id: self.tenant_id,
            seq: self.event_seq,
            kind,
            session_id,
            payload,
            created_at: self.now_text(),
        });
        Ok(())
    }

    /// Writes the audit entries, the events and the new chain head, and commits. Returns the events to fan out.
    /// On PostgreSQL all of that is one statement (one round trip under the tenant's lock), with a NOTIFY that
    /// PostgreSQL delivers to other instances only if and when the transaction commits.
    pub async fn commit(mut self) -> Result<Vec<Event>> {
        let mut args: Vec<Arg> = vec![
            self.tenant_id.to_string().into(),
            self.audit_seq.into(),
            self.audit_head.clone().into(),
            self.event_seq.into(),
        ];
        let mut parts = self.outbox_inserts(&mut args);
        match self.conn {
            Conn::Pg(_) => {
                let sql = self.one_statement(&parts, &mut args);
                Query::with_args(sql, args)
                    .execute(Db::Tx(&mut self.conn))
                    .await?;
            }
            Conn::Lite(_) => {
                // In-process statements cost no round trip; each binds its numbers from the same arguments.
                parts.push(HEAD_UPDATE.to_owned());
                for sql in parts {
                    Query::with_args(sql, args.clone())
                        .execute(Db::Tx(&mut self.conn))
                        .await?;
                }
            }
        }
        match self.conn {
            Conn::Pg(tx) => tx.commit().await?,
            Conn::Lite(tx) => tx.commit().await?,
        }
        Ok(self.events)
    }

    /// The inserts of the transaction's audit entries and events, their values appended to `args`.
    fn outbox_inserts(&self, args: &mut Vec<Arg>) -> Vec<String> {
        let tenant = self.tenant_id.to_string();
        let mut parts = Vec::new();
        if !self.audit.is_empty() {
            parts.push(format!(
                "INSERT INTO audit_log (tenant_id, seq, at, actor, action, subject, session_id, data, prev_hash, \
                 hash) VALUES {}",
                placeholders(args.len() + 1, self.audit.len(), 10)
            ));
            for e in &self.audit {
                args.extend([
                    tenant.clone().into(),
                    e.seq.into(),
                    e.at.clone().into(),
                    e.actor.clone().into(),
                    e.action.clone().into(),
                    e.subject.clone().into(),
                    e.session_id.map(|s| s.to_string()).into(),
                    e.data.to_string().into(),
                    e.prev_hash.clone().into(),
                    e.hash.clone().into(),
                ]);
            }
        }
        if !self.events.is_empty() {
            parts.push(format!(
                "INSERT INTO events (tenant_id, seq, type, session_id, payload, created_at) VALUES {}",
                placeholders(args.len() + 1, self.events.len(), 6)
            ));
            for e in &self.events {
                args.extend([
                    tenant.clone().into(),
                    e.seq.into(),
                    e.kind.as_str().to_owned().into(),
                    e.session_id.map(|s| s.to_string()).into(),
                    e.payload.to_string().into(),
                    e.created_at.clone().into(),
                ]);
            }
        }
        parts
    }

    /// PostgreSQL: the inserts as CTEs of the chain head's update, with the NOTIFY when there are events.
    fn one_statement(&self, parts: &[String], args: &mut Vec<Arg>) -> String {
        let mut ctes: Vec<String> = parts
            .iter()
            .enumerate()
            .map(|(i, sql)| format!("w{i} AS ({sql})"))
            .collect();
        let mut update = HEAD_UPDATE.to_owned();
        if !self.events.is_empty() {
            let n = args.len();
            ctes.push(format!(
                "nudge AS (SELECT pg_notify(${}, ${}))",
                n + 1,
                n + 2
            ));
            args.push(crate::events::CHANNEL.into());
            args.push(format!("{}:{}", self.tenant_id, self.event_seq).into());
            // A CTE that only reads runs only when referenced.
            update.push_str(" AND (SELECT COUNT(*) FROM nudge) = 1");
        }
        if ctes.is_empty() {
            update
        } else {
            format!("WITH {} {update}", ctes.join(", "))
        }
    }
}

/// The tenant's new chain head and event sequence, from the first four arguments of a commit.
const HEAD_UPDATE: &str =
    "UPDATE tenants SET audit_seq = $2, audit_head = $3, event_seq = $4 WHERE id = $1";
