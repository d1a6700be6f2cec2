//! The store on real databases: SQLite's group commit (a file on disk, reopened) and the statement layer on
//! both SQLite and PostgreSQL.

use chrono::{DateTime, Utc};
use paygent_domain::audit::{AuditAction, AuditEntry};
use paygent_domain::event::EventKind;
use paygent_domain::velocity::Mark;
use paygent_domain::{ApprovalStatus, DecisionKind};
use paygent_store::approvals::{self, ApprovalRecord};
use paygent_store::budgets::{self, Delta, KEY_PERIODS};
use paygent_store::db::query;
use paygent_store::{Store, StoreOptions};
use paygent_store::{spend, velocity};
use serde_json::json;
use sqlx::Connection;
use std::path::PathBuf;
use std::sync::Arc;
use uuid::Uuid;

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn sqlite_url() -> (String, TempDir) {
    let dir = std::env::temp_dir().join(format!("paygent-store-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    (
        format!("sqlite://{}/paygent.db?mode=rwc", dir.display()),
        TempDir(dir),
    )
}

/// A fresh PostgreSQL database, dropped with the guard.
struct PgDatabase {
    admin: String,
    name: String,
}

impl PgDatabase {
    async fn create() -> (String, PgDatabase) {
        let admin = std::env::var("PAYGENT_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let name = format!("paygent_t_{}", Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .expect("PostgreSQL must be running for these tests");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create database");
        let (base, _) = admin.rsplit_once('/').expect("url has a database");
        (format!("{base}/{name}"), PgDatabase { admin, name })
    }

    async fn drop(self) {
        let mut conn = sqlx::PgConnection::connect(&self.admin)
            .await
            .expect("pg admin");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .execute(&mut conn)
        .await
        .expect("drop database");
    }
}

/// Asserts that `writes` writes were committed since `before` (a reading of `Store::commits`), in fewer commits.
fn shared_commits(store: &Store, before: (u64, u64), writes: usize) {
    let (groups, written) = store.commits();
    let (groups, written) = (groups - before.0, written - before.1);
    assert_eq!(written, writes as u64, "every write counted once");
    assert!(
        groups < written,
        "{written} writes in {groups} commits: none shared one"
    );
}

async fn with_tenant(url: &str) -> (Store, Uuid) {
    let store = Store::connect(url, &StoreOptions::default())
        .await
        .expect("connect");
    let tenant = Uuid::new_v4();
    assert!(store.ensure_tenant(tenant, "t", Utc::now()).await.unwrap());
    (store, tenant)
}

/// Reads the tenant's whole audit chain and checks every link.
async fn chain(store: &Store, tenant: Uuid) -> Vec<AuditEntry> {
    let entries = store.audit_chain(tenant, 0, 100_000).await.unwrap();
    let mut prev = "0".repeat(64);
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e.seq, i as i64 + 1, "gap-free sequence");
        assert_eq!(e.prev_hash, prev, "linked to the entry before");
        assert_eq!(e.hash, e.compute_hash(), "entry {} unchanged", e.seq);
        prev = e.hash.clone();
    }
    assert_eq!(
        store.audit_head(tenant).await.unwrap(),
        (entries.len() as i64, prev)
    );
    entries
}

/// The subjects of the tenant's audit chain, in order.
async fn subjects(store: &Store, tenant: Uuid) -> Vec<String> {
    chain(store, tenant)
        .await
        .into_iter()
        .map(|e| e.subject)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_on_sqlite_all_commit_and_survive_a_reopen() {
    let (url, _dir) = sqlite_url();
    let (store, tenant) = with_tenant(&url).await;
    let before = store.commits();
    let writes = 300;
    let tasks: Vec<_> = (0..writes)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut tx = store.begin(tenant, Utc::now()).await?;
                tx.audit(
                    "test",
                    AuditAction::PaymentAuthorized,
                    &format!("w:{i}"),
                    None,
                    json!({"i": i}),
                )
                .await?;
                tx.event(EventKind::Approved, None, json!({"i": i})).await?;
                tx.commit().await
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().expect("committed").len(), 1);
    }
    shared_commits(&store, before, writes);
    // Every write that answered is visible to readers at once, in one unbroken chain.
    assert_eq!(chain(&store, tenant).await.len(), writes);
    store.close().await;
    assert!(store.audit_head(tenant).await.unwrap_err().is_closed());
    assert!(
        store
            .begin(tenant, Utc::now())
            .await
            .err()
            .unwrap()
            .is_closed()
    );
    drop(store);

    let reopened = Store::connect(&url, &StoreOptions::default())
        .await
        .unwrap();
    let entries = chain(&reopened, tenant).await;
    assert_eq!(entries.len(), writes);
    let mut subjects: Vec<_> = entries.iter().map(|e| e.subject.clone()).collect();
    subjects.sort();
    subjects.dedup();
    assert_eq!(subjects.len(), writes, "each write exactly once");
    assert_eq!(
        reopened.event_range(tenant).await.unwrap(),
        (Some(1), writes as i64)
    );
}

/// A write about a session, whose first round trip reads what its session's writes do (on PostgreSQL it opens
/// its savepoint only as it sends more).
fn about() -> paygent_store::About {
    paygent_store::About {
        session: Some(Uuid::new_v4()),
        default_policy: Uuid::new_v4(),
        approval: None,
        windows: Vec::new(),
        standing: None,
    }
}

/// A write dropped in the middle of a group leaves nothing, not even a change to its tenant's row, while the
/// writes queued with it commit. Two more writers queue behind the first, so all three run in one group. The
/// first opens its savepoint in its first round trip, the others as they send a statement of their own.
async fn a_dropped_write_leaves_nothing(url: &str) {
    let (store, tenant) = with_tenant(url).await;
    let key = agent_key(&store, tenant).await;
    let before = store.commits();
    let first = store.begin(tenant, Utc::now()).await.unwrap();
    let spawn = |keep: bool, name: &'static str| {
        let store = store.clone();
        tokio::spawn(async move {
            let mut tx = store.begin_about(tenant, key, Utc::now(), about()).await?;
            assert_eq!(tx.kill_switch(), None, "{name} sees no dropped write");
            tx.set_kill_switch(Some(name)).await?;
            tx.audit("test", AuditAction::SessionCreated, name, None, json!({}))
                .await?;
            if keep {
                tx.set_kill_switch(None).await?;
                tx.commit().await.map(|_| true)
            } else {
                Ok(false)
            }
        })
    };
    let dropped = spawn(false, "dropped");
    let kept = spawn(true, "kept");
    writes_queued(&store, 2).await;
    let mut first = first;
    first
        .audit(
            "test",
            AuditAction::SessionCreated,
            "first",
            None,
            json!({}),
        )
        .await
        .unwrap();
    first.commit().await.unwrap();
    assert!(!dropped.await.unwrap().unwrap());
    assert!(kept.await.unwrap().unwrap());
    shared_commits(&store, before, 2);
    let subjects = subjects(&store, tenant).await;
    assert_eq!(subjects, ["first", "kept"]);
    let stop = query("SELECT kill_switch FROM tenants WHERE id = $1")
        .bind(tenant.to_string())
        .fetch_one(store.reader())
        .await
        .unwrap();
    assert_eq!(stop.get::<Option<String>>(0).unwrap(), None);
    store.close().await;
}

/// A new active session of `key`'s.
async fn with_session(store: &Store, tenant: Uuid, key: Uuid) -> Uuid {
    let session = Uuid::new_v4();
    let mut tx = store.begin(tenant, Utc::now()).await.unwrap();
    let record = paygent_store::sessions::SessionRecord {
        id: session,
        tenant_id: tenant,
        name: None,
        wallet_address: None,
        config: Default::default(),
        state: paygent_domain::SessionState::Active,
        frozen: None,
        breaker_since: None,
        created_by: key,
        created_at: Utc::now(),
        policy_id: None,
    };
    paygent_store::sessions::insert(&mut tx, &record)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    session
}

/// Writes queued for their tenant's turn: a first that holds it, then `writes`, each queued in order once the
/// one before is. How each went, the first's first.
async fn in_turn<F, W>(
    store: &Store,
    tenant: Uuid,
    writes: Vec<F>,
) -> Vec<paygent_store::Result<()>>
where
    F: FnOnce(Store) -> W,
    W: std::future::Future<Output = paygent_store::Result<Vec<paygent_store::Event>>>
        + Send
        + 'static,
{
    let mut first = store.begin(tenant, Utc::now()).await.unwrap();
    let mut writers = Vec::new();
    for (i, write) in writes.into_iter().enumerate() {
        writers.push(tokio::spawn(write(store.clone())));
        writes_queued(store, i as u64 + 1).await;
    }
    (first.audit(
        "test",
        AuditAction::SessionCreated,
        "first",
        None,
        json!({}),
    ))
    .await
    .unwrap();
    let mut done = vec![first.commit().await.map(drop)];
    for writer in writers {
        done.push(writer.await.unwrap().map(drop));
    }
    done
}

/// [`in_turn`], each write inserting one of `payments` with an audit entry and an event.
async fn pay_in_turn(
    store: &Store,
    tenant: Uuid,
    key: Uuid,
    payments: &[paygent_store::payments::PaymentRecord],
) -> Vec<paygent_store::Result<()>> {
    let writes = payments.iter().cloned().map(|payment| {
        move |store: Store| async move {
            let about = paygent_store::About {
                session: Some(payment.session_id),
                ..about()
            };
            let mut tx = store.begin_about(tenant, key, Utc::now(), about).await?;
            paygent_store::payments::insert(&mut tx, &payment).await?;
            let (id, memo) = (payment.id.to_string(), &payment.description);
            let session = Some(payment.session_id);
            (tx.audit(
                "test",
                AuditAction::PaymentAuthorized,
                &id,
                session,
                json!({"memo": memo}),
            ))
            .await?;
            tx.event(EventKind::Cancelled, session, json!({"memo": memo}))
                .await?;
            tx.commit().await
        }
    });
    in_turn(store, tenant, writes.collect()).await
}

/// A request of `session`'s, asked by `key`, waiting on people for an hour.
fn pending_request(tenant: Uuid, session: Uuid, key: Uuid) -> ApprovalRecord {
    let new = approvals::NewRequest {
        id: Uuid::new_v4(),
        tenant_id: tenant,
        session_id: session,
        payment_id: None,
        tool: "pay".into(),
        args: json!({"amount": "20"}),
        network: None,
        reason: "over the threshold".into(),
        usd_value: 20.into(),
        allowed_decisions: vec![DecisionKind::Approve, DecisionKind::Reject],
        requested_by: key,
        timeout_seconds: 3600,
        quorum: (1, Vec::new()),
        escalation: Vec::new(),
    };
    ApprovalRecord::pending(new, Utc::now())
}

/// Decisions kept one after another in a group without a statement of their own (their requests were read
/// ahead) are sent together, on PostgreSQL their updates as one statement of rows in JSON: each lands on its
/// own request, with its note as written.
async fn decisions_sent_together_land_each_on_its_request(url: &str) {
    let (store, tenant) = with_tenant(url).await;
    let asker = agent_key(&store, tenant).await;
    let decider = agent_key(&store, tenant).await;
    let session = with_session(&store, tenant, asker).await;
    let requests: Vec<_> = (0..3)
        .map(|_| pending_request(tenant, session, asker))
        .collect();
    let mut tx = store.begin(tenant, Utc::now()).await.unwrap();
    for request in &requests {
        approvals::insert(&mut tx, request).await.unwrap();
    }
    tx.commit().await.unwrap();
    let note = |i: usize| format!("fine by me, it's {i} \\ \"ok\"");
    let writes = requests.iter().enumerate().map(|(i, request)| {
        let (id, digest) = (request.id, request.digest());
        move |store: Store| async move {
            let about = paygent_store::About {
                approval: Some(id),
                ..about()
            };
            let mut tx = store
                .begin_about(tenant, decider, Utc::now(), about)
                .await?;
            let current = approvals::current(&mut tx, id).await?.expect("filed");
            let note = note(i);
            let decided = approvals::Decided {
                id,
                to: ApprovalStatus::Approved,
                by: decider,
                note: Some(&note),
                edited_args: None,
                digest: &digest,
                network: None,
            };
            let landed = approvals::decide(&mut tx, &current, decided).await?;
            assert!(landed.is_some(), "request {i} was pending");
            (tx.audit(
                "test",
                AuditAction::ApprovalApproved,
                &id.to_string(),
                None,
                json!({}),
            ))
            .await?;
            tx.commit().await
        }
    });
    let before = store.reads_ahead();
    for done in in_turn(&store, tenant, writes.collect()).await {
        done.unwrap();
    }
    used_reads_ahead(&store, before, 2);
    for (i, request) in requests.iter().enumerate() {
        let read = approvals::get(store.reader(), tenant, request.id)
            .await
            .unwrap();
        let read = read.expect("filed");
        assert_eq!(read.status, ApprovalStatus::Approved, "request {i}");
        assert_eq!(read.decided_by, Some(decider));
        assert_eq!(read.decision_note, Some(note(i)));
        assert_eq!(read.decided_digest, Some(request.digest()));
    }
    chain(&store, tenant).await;
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_sent_together_land_each_on_its_request_on_sqlite() {
    let (url, _dir) = sqlite_url();
    decisions_sent_together_land_each_on_its_request(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_sent_together_land_each_on_its_request_on_postgres() {
    let (url, db) = PgDatabase::create().await;
    decisions_sent_together_land_each_on_its_request(&url).await;
    db.drop().await;
}

/// Writes kept one after another in a group without a statement of their own (their reads went ahead) have
/// their inserts sent together, on PostgreSQL as one statement per table of rows in JSON: every value lands as
/// written (quotes, backslashes, line breaks, text past ASCII, nulls), and the chain and events hold.
async fn inserts_sent_together_land_as_written(url: &str) {
    let (store, tenant) = with_tenant(url).await;
    let key = agent_key(&store, tenant).await;
    let session = with_session(&store, tenant, key).await;
    let at: DateTime<Utc> = "2026-12-08T00:00:00.123Z".parse().unwrap();
    let payments: Vec<_> = (0..3)
        .map(|i| paygent_store::payments::PaymentRecord {
            session_id: session,
            description: Some(format!("it's \"{i}\" \\ ü 💸\nnext")),
            approval_id: (i == 1).then(Uuid::new_v4),
            idempotency_key: Some(format!("k{i}")),
            detail: (i != 1).then(|| r#"{"a":[1,"b\\"]}"#.to_owned()),
            created_at: at,
            updated_at: at,
            ..payment_of_no_session(tenant)
        })
        .collect();
    let before = store.reads_ahead();
    for done in pay_in_turn(&store, tenant, key, &payments).await {
        done.unwrap();
    }
    used_reads_ahead(&store, before, 2);
    for payment in &payments {
        let read = paygent_store::payments::get(store.reader(), tenant, payment.id);
        assert_eq!(read.await.unwrap().as_ref(), Some(payment));
    }
    let entries = chain(&store, tenant).await;
    let paid = entries
        .iter()
        .filter(|e| e.action == AuditAction::PaymentAuthorized.as_str());
    let memos: Vec<_> = paid.map(|e| e.data["memo"].clone()).collect();
    let written: Vec<_> = payments.iter().map(|p| json!(p.description)).collect();
    assert_eq!(memos, written);
    let events = store.events_after(tenant, 0, 10).await.unwrap();
    let memos: Vec<_> = events.iter().map(|e| e.payload["memo"].clone()).collect();
    assert_eq!(memos, written);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inserts_sent_together_land_as_written_on_sqlite() {
    let (url, _dir) = sqlite_url();
    inserts_sent_together_land_as_written(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inserts_sent_together_land_as_written_on_postgres() {
    let (url, db) = PgDatabase::create().await;
    inserts_sent_together_land_as_written(&url).await;
    db.drop().await;
}

/// A row that breaks a constraint among inserts sent together fails its group, as any closing statement does:
/// every write whose inserts went with it fails too, none of them written, and the write whose row broke it is
/// told the database's words. The tenant's next write lands.
async fn an_insert_sent_together_that_fails_fails_its_group(url: &str) {
    let (store, tenant) = with_tenant(url).await;
    let key = agent_key(&store, tenant).await;
    let session = with_session(&store, tenant, key).await;
    let good = || paygent_store::payments::PaymentRecord {
        session_id: session,
        ..payment_of_no_session(tenant)
    };
    let payments = [good(), payment_of_no_session(tenant), good()];
    let done = pay_in_turn(&store, tenant, key, &payments).await;
    let error = done[2].as_ref().expect_err("a payment of no session");
    let named = error.is_foreign_key_violation() || error.to_string().contains("foreign key");
    assert!(named, "{error}");
    for (i, done) in done.iter().enumerate() {
        match store.backend() {
            paygent_store::Backend::Postgres => {
                assert!(done.is_err(), "write {i} failed with its group")
            }
            paygent_store::Backend::Sqlite => assert_eq!(done.is_ok(), i != 2, "write {i}"),
        }
    }
    for done in pay_in_turn(&store, tenant, key, &[good()]).await {
        done.unwrap();
    }
    let count = query("SELECT COUNT(*) FROM payments").fetch_one(store.reader());
    let expected = match store.backend() {
        paygent_store::Backend::Postgres => 1,
        paygent_store::Backend::Sqlite => 3,
    };
    assert_eq!(count.await.unwrap().get::<i64>(0).unwrap(), expected);
    let entries = chain(&store, tenant).await;
    let paid = entries
        .iter()
        .filter(|e| e.action == AuditAction::PaymentAuthorized.as_str());
    assert_eq!(
        paid.count(),
        expected as usize,
        "an entry for each payment written"
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insert_sent_together_that_fails_fails_its_group_on_sqlite() {
    let (url, _dir) = sqlite_url();
    an_insert_sent_together_that_fails_fails_its_group(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insert_sent_together_that_fails_fails_its_group_on_postgres() {
    let (url, db) = PgDatabase::create().await;
    an_insert_sent_together_that_fails_fails_its_group(&url).await;
    db.drop().await;
}

/// Writes queued for their tenant's turn have their first round trip's reads sent in the message of a write ahead
/// of them in the group. A queued write uses them unless a write kept since changed what they read: here the
/// first queued write pays a recipient, so the second, which reads that recipient's history, reads it again and
/// sees the payment, while the third, which reads another recipient's, uses what was read ahead, its session
/// among it, read once for both (on PostgreSQL; SQLite's writes read in process).
async fn reads_sent_ahead_hold_unless_a_write_changed_them(url: &str) {
    let (store, tenant) = with_tenant(url).await;
    let key = agent_key(&store, tenant).await;
    let session = with_session(&store, tenant, key).await;
    let since = Utc::now() - chrono::Duration::hours(1);
    let paid = move |tenant| paygent_store::payments::PaymentRecord {
        session_id: session,
        ..payment_of_no_session(tenant)
    };
    let recipient = paid(tenant).recipient;
    let asked = paygent_store::StandingAsked {
        payee: "payee".into(),
        recipient: recipient.clone(),
        since,
        limit: 10,
    };
    let policy = Uuid::new_v4();
    let about = |standing| paygent_store::About {
        session: Some(session),
        default_policy: policy,
        standing,
        ..about()
    };
    let first = store.begin(tenant, Utc::now()).await.unwrap();
    let before = store.reads_ahead();
    let payer = {
        let (store, about) = (store.clone(), about(None));
        tokio::spawn(async move {
            let mut tx = store.begin_about(tenant, key, Utc::now(), about).await?;
            paygent_store::payments::insert(&mut tx, &paid(tenant)).await?;
            tx.commit().await
        })
    };
    writes_queued(&store, 1).await;
    let reader = {
        let (store, about) = (store.clone(), about(Some(asked.clone())));
        tokio::spawn(async move {
            let mut tx = store.begin_about(tenant, key, Utc::now(), about).await?;
            let asked = (recipient.as_str(), since, 10);
            let (_, history) =
                paygent_store::standing::in_force_with_history(&mut tx, (session, "payee"), asked)
                    .await?;
            tx.commit().await?;
            Ok::<_, paygent_store::StoreError>(history.recent.len())
        })
    };
    writes_queued(&store, 2).await;
    let other = {
        let elsewhere = "0x2222222222222222222222222222222222222222";
        let asked = paygent_store::StandingAsked {
            recipient: elsewhere.into(),
            ..asked.clone()
        };
        let (store, about) = (store.clone(), about(Some(asked)));
        tokio::spawn(async move {
            let mut tx = store.begin_about(tenant, key, Utc::now(), about).await?;
            let read =
                paygent_store::policies::session_with_policy(&mut tx, session, policy).await?;
            assert_eq!(read.map(|(s, _)| s.id), Some(session));
            let asked = (elsewhere, since, 10);
            let (_, history) =
                paygent_store::standing::in_force_with_history(&mut tx, (session, "payee"), asked)
                    .await?;
            tx.commit().await?;
            Ok::<_, paygent_store::StoreError>(history.recent.len())
        })
    };
    writes_queued(&store, 3).await;
    first.commit().await.unwrap();
    payer.await.unwrap().unwrap();
    assert_eq!(
        reader.await.unwrap().unwrap(),
        1,
        "the payment made ahead of it"
    );
    assert_eq!(other.await.unwrap().unwrap(), 0);
    used_reads_ahead(&store, before, 1);
    store.close().await;
}

/// Checks that `on_postgres` writes used reads sent ahead since the store had counted `before` (none on SQLite,
/// whose writes read in process).
fn used_reads_ahead(store: &Store, before: u64, on_postgres: u64) {
    let used = match store.backend() {
        paygent_store::Backend::Postgres => on_postgres,
        paygent_store::Backend::Sqlite => 0,
    };
    assert_eq!(store.reads_ahead() - before, used);
}

#[tokio::test]
async fn reads_sent_ahead_hold_unless_a_write_changed_them_on_sqlite() {
    let (url, _dir) = sqlite_url();
    reads_sent_ahead_hold_unless_a_write_changed_them(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_sent_ahead_hold_unless_a_write_changed_them_on_postgres() {
    let (url, db) = PgDatabase::create().await;
    reads_sent_ahead_hold_unless_a_write_changed_them(&url).await;
    db.drop().await;
}

/// A key acts until the time it expires, as of each write's own time under the tenant's lock, also where its
/// reads went ahead (on PostgreSQL the last two here are read together, in the first one's round trip): the writes
/// made before that time land, the one made at it is refused.
async fn a_key_expires_for_each_write_at_its_own_time(url: &str) {
    let (store, tenant) = with_tenant(url).await;
    let expires = Utc::now() + chrono::Duration::hours(1);
    let key = key_expiring(&store, tenant, Some(expires)).await;
    let mut first = store.begin(tenant, Utc::now()).await.unwrap();
    let at = |ms: i64| {
        let store = store.clone();
        tokio::spawn(async move {
            let now = expires + chrono::Duration::milliseconds(ms);
            let mut tx = store.begin_about(tenant, key, now, about()).await?;
            let name = format!("at {ms}");
            tx.audit("test", AuditAction::SessionCreated, &name, None, json!({}))
                .await?;
            tx.commit().await
        })
    };
    let mut writes = Vec::new();
    for (n, ms) in [-2, -1, 0].into_iter().enumerate() {
        writes.push(at(ms));
        writes_queued(&store, n as u64 + 1).await;
    }
    let before = store.reads_ahead();
    (first.audit(
        "test",
        AuditAction::SessionCreated,
        "first",
        None,
        json!({}),
    ))
    .await
    .unwrap();
    first.commit().await.unwrap();
    let mut landed = Vec::new();
    for write in writes {
        landed.push(write.await.unwrap().map(|_| ()).map_err(|e| e.to_string()));
    }
    let refused = Err(paygent_store::StoreError::KeyNotLive.to_string());
    assert_eq!(landed, [Ok(()), Ok(()), refused]);
    assert_eq!(subjects(&store, tenant).await, ["first", "at -2", "at -1"]);
    used_reads_ahead(&store, before, 2);
    store.close().await;
}

#[tokio::test]
async fn a_key_expires_for_each_write_at_its_own_time_on_sqlite() {
    let (url, _dir) = sqlite_url();
    a_key_expires_for_each_write_at_its_own_time(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_expires_for_each_write_at_its_own_time_on_postgres() {
    let (url, db) = PgDatabase::create().await;
    a_key_expires_for_each_write_at_its_own_time(&url).await;
    db.drop().await;
}

/// Waits until exactly `n` writes wait for their tenant's turn.
async fn writes_queued(store: &Store, n: u64) {
    let what = format!("{n} writes queued for their turn");
    let waiting = || async { store.writes_waiting() };
    paygent_testkit::eventually(std::time::Duration::from_secs(5), &what, waiting, |w| {
        *w == n
    })
    .await;
}

/// A payment of a session that does not exist: its insert breaks a foreign key.
fn payment_of_no_session(tenant: Uuid) -> paygent_store::payments::PaymentRecord {
    let now = Utc::now();
    paygent_store::payments::PaymentRecord {
        id: Uuid::new_v4(),
        tenant_id: tenant,
        session_id: Uuid::new_v4(),
        tool: "pay".into(),
        amount: 1.into(),
        currency: "USDC".into(),
        usd_value: 1.into(),
        recipient: "0x1111111111111111111111111111111111111111".into(),
        description: None,
        status: paygent_domain::PaymentStatus::Authorized,
        reason: None,
        approval_id: None,
        tx_hash: None,
        network: None,
        idempotency_key: None,
        request_hash: "h".into(),
        requested_by: Uuid::new_v4(),
        budget_day: None,
        detail: None,
        limits_key: None,
        max_amount: None,
        swap: None,
        created_at: now,
        updated_at: now,
    }
}

/// A held-back write that fails as the write's next statement sends it fails that write alone: the writes queued
/// with it in its group commit. On PostgreSQL a write's first round trip only reads, and it opens a savepoint
/// before it sends anything more, so the failure rolls back to it.
async fn a_held_back_write_that_fails_fails_its_write_alone(url: &str) {
    let (store, tenant) = with_tenant(url).await;
    let key = agent_key(&store, tenant).await;
    let first = store.begin(tenant, Utc::now()).await.unwrap();
    let failing = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut tx = store.begin_about(tenant, key, Utc::now(), about()).await?;
            paygent_store::payments::insert(&mut tx, &payment_of_no_session(tenant)).await?;
            query("SELECT 1").fetch_one(tx.conn()).await
        })
    };
    let kept = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut tx = store.begin(tenant, Utc::now()).await?;
            tx.audit("test", AuditAction::SessionCreated, "kept", None, json!({}))
                .await?;
            tx.commit().await
        })
    };
    writes_queued(&store, 2).await;
    let mut first = first;
    (first.audit(
        "test",
        AuditAction::SessionCreated,
        "first",
        None,
        json!({}),
    ))
    .await
    .unwrap();
    first.commit().await.unwrap();
    let error = failing.await.unwrap().expect_err("a payment of no session");
    assert!(error.is_foreign_key_violation(), "{error}");
    kept.await
        .unwrap()
        .expect("the write queued behind it commits");
    assert_eq!(subjects(&store, tenant).await, ["first", "kept"]);
    let payments = query("SELECT COUNT(*) FROM payments").fetch_one(store.reader());
    assert_eq!(payments.await.unwrap().get::<i64>(0).unwrap(), 0);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_back_write_that_fails_fails_its_write_alone_on_sqlite() {
    let (url, _dir) = sqlite_url();
    a_held_back_write_that_fails_fails_its_write_alone(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_back_write_that_fails_fails_its_write_alone_on_postgres() {
    let (url, db) = PgDatabase::create().await;
    a_held_back_write_that_fails_fails_its_write_alone(&url).await;
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_write_leaves_nothing_while_the_writes_queued_with_it_commit_on_sqlite() {
    let (url, _dir) = sqlite_url();
    a_dropped_write_leaves_nothing(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_write_leaves_nothing_while_the_writes_queued_with_it_commit_on_postgres() {
    let (url, db) = PgDatabase::create().await;
    a_dropped_write_leaves_nothing(&url).await;
    db.drop().await;
}

#[tokio::test]
async fn readers_see_a_write_only_once_it_is_committed() {
    let (url, _dir) = sqlite_url();
    let (store, tenant) = with_tenant(&url).await;
    let mut tx = store.begin(tenant, Utc::now()).await.unwrap();
    tx.audit("test", AuditAction::SessionCreated, "x", None, json!({}))
        .await
        .unwrap();
    assert_eq!(store.audit_head(tenant).await.unwrap().0, 0);
    let rows = query("SELECT COUNT(*) FROM audit_log")
        .fetch_one(store.reader())
        .await
        .unwrap();
    assert_eq!(rows.get::<i64>(0).unwrap(), 0);
    tx.commit().await.unwrap();
    assert_eq!(chain(&store, tenant).await.len(), 1);
}

#[tokio::test]
async fn readers_cannot_write_on_sqlite() {
    let (url, _dir) = sqlite_url();
    let (store, _tenant) = with_tenant(&url).await;
    let err = query("DELETE FROM tenants")
        .execute(store.reader())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("readonly"), "{err}");
    assert_eq!(
        query("DELETE FROM tenants")
            .execute(store.writer())
            .await
            .unwrap(),
        1
    );
}

/// What both databases must agree on: parameters by number, typed nulls, integers and text, duplicate keys.
async fn statements_behave_the_same(store: &Store, tenant: Uuid) {
    let row = query("SELECT $2 || $1, $3, $4, CAST($5 AS BIGINT)")
        .bind("a")
        .bind("b")
        .bind(None::<String>)
        .bind(i64::MAX)
        .bind(None::<i64>)
        .fetch_one(store.reader())
        .await
        .unwrap();
    assert_eq!(row.get::<String>(0).unwrap(), "ba");
    assert_eq!(row.get::<Option<String>>(1).unwrap(), None);
    assert_eq!(row.get::<i64>(2).unwrap(), i64::MAX);
    assert_eq!(row.get::<Option<i64>>(3).unwrap(), None);
    assert!(row.get::<i64>(0).is_err(), "text is not read as a number");
    // A read's count is its rows, not the count of the connection's last write.
    assert_eq!(
        query("SELECT id FROM tenants WHERE id = $1")
            .bind(tenant.to_string())
            .execute(store.writer())
            .await
            .unwrap(),
        1
    );

    let again = query("INSERT INTO tenants (id, name, created_at) VALUES ($1, 'x', 'now')")
        .bind(tenant.to_string())
        .execute(store.writer())
        .await
        .unwrap_err();
    assert!(again.is_unique_violation(), "{again}");
    assert!(!again.is_unavailable());

    let unknown = Uuid::new_v4();
    assert!(matches!(
        store.begin(unknown, Utc::now()).await.err(),
        Some(paygent_store::StoreError::UnknownTenant(t)) if t == unknown
    ));
}

/// Several audit entries and events in one transaction are written with its commit, in order, and an
/// abandoned transaction's are not.
async fn a_commit_writes_its_entries_and_events(store: &Store, tenant: Uuid) {
    let mut tx = store.begin(tenant, Utc::now()).await.unwrap();
    let written = [
        AuditAction::KeyCreated,
        AuditAction::SessionCreated,
        AuditAction::PaymentAuthorized,
    ];
    for (i, action) in written.into_iter().enumerate() {
        tx.audit("test", action, "s", None, json!({"i": i}))
            .await
            .unwrap();
    }
    tx.event(EventKind::ApprovalRequired, None, json!({}))
        .await
        .unwrap();
    tx.event(
        EventKind::Cancelled,
        Some(Uuid::new_v4()),
        json!({"x": "y"}),
    )
    .await
    .unwrap();
    let events = tx.commit().await.unwrap();
    let mut abandoned = store.begin(tenant, Utc::now()).await.unwrap();
    abandoned
        .audit("test", AuditAction::KeyRevoked, "s", None, json!({}))
        .await
        .unwrap();
    abandoned
        .event(EventKind::KillSwitch, None, json!({}))
        .await
        .unwrap();
    drop(abandoned);
    let actions: Vec<_> = chain(store, tenant)
        .await
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(actions, written.map(|a| a.as_str()));
    assert_eq!(store.events_after(tenant, 0, 10).await.unwrap(), events);
    assert_eq!(store.event_range(tenant).await.unwrap(), (Some(1), 2));
}

#[tokio::test]
async fn statements_behave_the_same_on_sqlite() {
    let (url, _dir) = sqlite_url();
    let (store, tenant) = with_tenant(&url).await;
    statements_behave_the_same(&store, tenant).await;
    a_commit_writes_its_entries_and_events(&store, tenant).await;
}

#[tokio::test]
async fn statements_behave_the_same_on_postgres() {
    let (url, db) = PgDatabase::create().await;
    let (store, tenant) = with_tenant(&url).await;
    statements_behave_the_same(&store, tenant).await;
    a_commit_writes_its_entries_and_events(&store, tenant).await;
    store.close().await;
    db.drop().await;
}

/// One tenant's concurrent writes on PostgreSQL are committed in groups (several writes to one transaction,
/// as `txid_current` inside each tells), and every one of them lands once in one unbroken chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_on_postgres_commit_in_groups_and_keep_one_chain() {
    let (url, db) = PgDatabase::create().await;
    let (store, tenant) = with_tenant(&url).await;
    let store = Arc::new(store);
    let before = store.commits();
    let writes = 100;
    let tasks: Vec<_> = (0..writes)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut tx = store.begin(tenant, Utc::now()).await?;
                let txid = query("SELECT txid_current()::text")
                    .fetch_one(tx.conn())
                    .await?
                    .get::<String>(0)?;
                tx.audit(
                    "test",
                    AuditAction::PaymentAuthorized,
                    &format!("w:{i}"),
                    None,
                    json!({}),
                )
                .await?;
                tx.commit().await.map(|_| txid)
            })
        })
        .collect();
    let mut transactions = Vec::new();
    for t in tasks {
        transactions.push(t.await.unwrap().expect("committed"));
    }
    shared_commits(&store, before, writes);
    transactions.sort();
    transactions.dedup();
    assert!(
        transactions.len() < writes,
        "{writes} writes in {} transactions: none shared one",
        transactions.len()
    );
    let entries = chain(&store, tenant).await;
    let mut subjects: Vec<_> = entries.iter().map(|e| e.subject.clone()).collect();
    subjects.sort();
    subjects.dedup();
    assert_eq!(subjects.len(), writes, "each write exactly once");
    store.close().await;
    db.drop().await;
}

/// A URL that cannot be used says so, as a bad URL and never as corrupt data, and without its password; a store
/// whose URL carries a password never prints it.
#[tokio::test]
async fn bad_urls_are_named_and_passwords_never_print() {
    let options = StoreOptions::default();
    for url in [
        "mysql://paygent:hunter2@db/paygent",
        "postgres://paygent:hunter2@db:notaport/paygent",
        "sqlite::memory:",
    ] {
        let error = Store::connect(url, &options).await.unwrap_err();
        let said = error.to_string();
        assert!(said.starts_with("bad DATABASE_URL"), "{url}: {said}");
        assert!(!said.contains("hunter2"), "{said}");
    }
    // Trust authentication takes any password: this one only has to be in the URL.
    let (url, _db) = PgDatabase::create().await;
    let (scheme, rest) = url.split_once("://").unwrap();
    let (user, host) = rest.split_once('@').unwrap();
    let user = user.split(':').next().unwrap();
    let with_password = format!("{scheme}://{user}:hunter2@{host}");
    let store = Store::connect(&with_password, &options).await.unwrap();
    assert!(!format!("{store:?}").contains("hunter2"));
    store.close().await;
}

/// Migrates a fresh database at `url` up to, not including, migration `version`: the schema an older release
/// left behind.
async fn migrated_before(url: &str, version: i64) -> TempDir {
    let dir = std::env::temp_dir().join(format!("paygent-migrations-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("migrations");
    for entry in std::fs::read_dir(source).expect("migrations") {
        let path = entry.expect("entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).expect("a name");
        let number: i64 = name[..4].parse().expect("a numbered migration");
        if number < version {
            std::fs::copy(&path, dir.join(name)).expect("copied");
        }
    }
    let older = sqlx::migrate::Migrator::new(dir.clone())
        .await
        .expect("older migrations");
    if url.starts_with("postgres") {
        let mut conn = sqlx::PgConnection::connect(url).await.expect("connects");
        older.run(&mut conn).await.expect("older migrations run");
    } else {
        let mut conn = sqlx::SqliteConnection::connect(url)
            .await
            .expect("connects");
        older.run(&mut conn).await.expect("older migrations run");
    }
    TempDir(dir)
}

/// Runs `sql` on the database at `url`, outside the store: an older release's rows.
async fn execute_outside(url: &str, sql: String) {
    let sql = sqlx::AssertSqlSafe(sql);
    let done = if url.starts_with("postgres") {
        let mut conn = sqlx::PgConnection::connect(url).await.expect("connects");
        sqlx::query(sql).execute(&mut conn).await.map(|_| ())
    } else {
        let mut conn = sqlx::SqliteConnection::connect(url)
            .await
            .expect("connects");
        sqlx::query(sql).execute(&mut conn).await.map(|_| ())
    };
    done.expect("an older release's rows");
}

/// The breaker's marks change their key (migration 27): marks left before the upgrade are all there after it,
/// so no window starts again at an upgrade.
async fn marks_survive_the_change_of_their_key(url: &str) {
    let _older = migrated_before(url, 27).await;
    let tenant = "00000000-0000-0000-0000-0000000000aa";
    let statements = [
        format!(
            "INSERT INTO tenants (id, name, created_at) VALUES ('{tenant}', 't', '2026-12-01T00:00:00Z')"
        ),
        format!(
            "INSERT INTO velocity_marks (tenant_id, scope, seq, at, usd_total, usd) VALUES \
             ('{tenant}', 'session:a', 1, '2026-12-01T10:00:00.000000Z', '1', '1'), \
             ('{tenant}', 'session:a', 2, '2026-12-01T10:00:05.000000Z', '3.5', '2.5'), \
             ('{tenant}', 'key:b', 1, '2026-12-01T10:00:05.000000Z', '2.5', '2.5')"
        ),
    ];
    for sql in statements {
        execute_outside(url, sql).await;
    }
    let store = Store::connect(url, &StoreOptions::default())
        .await
        .expect("the upgrade runs");
    let rows = query("SELECT scope, seq, at, usd_total, usd, tenant_id FROM velocity_marks ORDER BY scope, at, seq")
        .fetch_all(store.reader())
        .await
        .expect("read");
    let found: Vec<String> = rows
        .iter()
        .map(|r| {
            let text = |i| r.get::<String>(i).expect("text");
            let seq = r.get::<i64>(1).expect("seq");
            format!(
                "{} {seq} {} {} {} {}",
                text(0),
                text(2),
                text(3),
                text(4),
                text(5)
            )
        })
        .collect();
    assert_eq!(
        found,
        [
            format!("key:b 1 2026-12-01T10:00:05.000000Z 2.5 2.5 {tenant}"),
            format!("session:a 1 2026-12-01T10:00:00.000000Z 1 1 {tenant}"),
            format!("session:a 2 2026-12-01T10:00:05.000000Z 3.5 2.5 {tenant}"),
        ]
    );
}

#[tokio::test]
async fn marks_survive_the_change_of_their_key_on_sqlite() {
    let (url, _dir) = sqlite_url();
    marks_survive_the_change_of_their_key(&url).await;
}

#[tokio::test]
async fn marks_survive_the_change_of_their_key_on_postgres() {
    let (url, db) = PgDatabase::create().await;
    marks_survive_the_change_of_their_key(&url).await;
    db.drop().await;
}

/// On PostgreSQL the tables every payment writes do not reference `tenants` by foreign key (their rows are
/// written under their tenant's row lock, so the check added nothing but cost), others do, and a write for a
/// tenant that does not exist is still refused; SQLite keeps them all.
#[tokio::test]
async fn tenants_are_referenced_by_foreign_key_where_a_write_does_not_hold_them() {
    let by_table = "SELECT conrelid::regclass::text FROM pg_constraint \
        WHERE contype = 'f' AND confrelid = 'tenants'::regclass AND conrelid::regclass::text IN ($1, $2)";
    let (url, db) = PgDatabase::create().await;
    let (store, _) = with_tenant(&url).await;
    let on_postgres = query(by_table)
        .bind("payments")
        .bind("wallets")
        .fetch_all(store.reader())
        .await
        .unwrap();
    let tables: Vec<String> = on_postgres.iter().map(|r| r.get(0).unwrap()).collect();
    assert_eq!(tables, ["wallets"]);
    let unknown = Uuid::new_v4();
    assert!(matches!(
        store.begin(unknown, Utc::now()).await.err(),
        Some(paygent_store::StoreError::UnknownTenant(t)) if t == unknown
    ));
    store.close().await;
    db.drop().await;

    let (url, _dir) = sqlite_url();
    let (store, _) = with_tenant(&url).await;
    let on_sqlite = query(
        "SELECT COUNT(*) FROM pragma_foreign_key_list('payments') WHERE \"table\" = 'tenants'",
    )
    .fetch_one(store.reader())
    .await
    .unwrap();
    assert_eq!(on_sqlite.get::<i64>(0).unwrap(), 1);
}

/// A key's usage of one period and ledger, as committed.
async fn committed_usage(store: &Store, key: Uuid) -> paygent_domain::Decimal {
    let book = budgets::usage(store.reader(), KEY_PERIODS, key, &["day:x"])
        .await
        .unwrap();
    book.get(&("day:x".to_owned(), "USDC".to_owned()))
        .map_or(paygent_domain::Decimal::ZERO, |u| u.spent)
}

/// Writes held back until a write's next statement or its commit (PostgreSQL) behave as if sent at once: a
/// later statement reads them, a second change of the same row builds on the first, and one that fails fails
/// its whole write, leaving nothing of it.
async fn held_back_writes_behave_as_if_sent_at_once(url: &str) {
    let (store, tenant) = with_tenant(url).await;
    let key = Uuid::new_v4();
    let usd = |s: &str| s.parse::<paygent_domain::Decimal>().unwrap();
    let spend = |s: &str| {
        [(
            "day:x",
            "USDC",
            Delta {
                spent: usd(s),
                reserved: usd("0"),
            },
        )]
    };
    let mut tx = store.begin(tenant, Utc::now()).await.unwrap();
    budgets::apply(&mut tx, KEY_PERIODS, key, &spend("2.5"))
        .await
        .unwrap();
    budgets::apply(&mut tx, KEY_PERIODS, key, &spend("1"))
        .await
        .unwrap();
    let seen = budgets::usage_in(&mut tx, KEY_PERIODS, key, &["day:x"])
        .await
        .unwrap();
    assert_eq!(
        seen[&("day:x".to_owned(), "USDC".to_owned())].spent,
        usd("3.5")
    );
    tx.audit("test", AuditAction::SessionCreated, "kept", None, json!({}))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(committed_usage(&store, key).await, usd("3.5"));

    // A constraint the write breaks: at most one mark per scope.
    let one_per_scope = "CREATE UNIQUE INDEX one_mark_per_scope ON velocity_marks (scope)";
    execute_outside(url, one_per_scope.into()).await;
    let mark = |seq: i64| {
        let total = usd(&seq.to_string());
        let at = Utc::now() + chrono::Duration::seconds(seq);
        let m = Mark {
            seq,
            at,
            usd_total: total,
            usd: usd("1"),
            last_seq: seq,
            last_usd_total: total,
        };
        ("session:s".to_owned(), m)
    };
    let mut tx = store.begin(tenant, Utc::now()).await.unwrap();
    let failed = async {
        budgets::apply(&mut tx, KEY_PERIODS, key, &spend("1")).await?;
        velocity::leave(&mut tx, &[mark(1), mark(2)]).await?;
        tx.audit("test", AuditAction::SessionCreated, "lost", None, json!({}))
            .await?;
        tx.commit().await
    };
    let error = failed
        .await
        .expect_err("two marks of one scope cannot both be written");
    // On PostgreSQL marks are written as the write's group commits: the group fails with the database's words.
    let duplicate = error.to_string().contains("duplicate key");
    assert!(error.is_unique_violation() || duplicate, "{error}");
    assert_eq!(
        committed_usage(&store, key).await,
        usd("3.5"),
        "nothing of it"
    );
    let subjects = subjects(&store, tenant).await;
    assert_eq!(subjects, ["kept"]);
    store.close().await;
}

#[tokio::test]
async fn held_back_writes_behave_as_if_sent_at_once_on_sqlite() {
    let (url, _dir) = sqlite_url();
    held_back_writes_behave_as_if_sent_at_once(&url).await;
}

#[tokio::test]
async fn held_back_writes_behave_as_if_sent_at_once_on_postgres() {
    let (url, db) = PgDatabase::create().await;
    held_back_writes_behave_as_if_sent_at_once(&url).await;
    db.drop().await;
}

/// A budget row changed behind the tenant's lock (here, by a statement outside the store) is not overwritten: the
/// compare-and-set on the version its group read changes nothing, and the count that says so fails the group,
/// every write in it, none of them written. The tenant's next group lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_row_changed_behind_the_lock_fails_its_group_on_postgres() {
    let (url, db) = PgDatabase::create().await;
    let (store, tenant) = with_tenant(&url).await;
    let key = Uuid::new_v4();
    let usd = |s: &str| s.parse::<paygent_domain::Decimal>().unwrap();
    let spend = [(
        "day:x",
        "USDC",
        Delta {
            spent: usd("1"),
            reserved: usd("0"),
        },
    )];
    let mut tx = store.begin(tenant, Utc::now()).await.unwrap();
    budgets::apply(&mut tx, KEY_PERIODS, key, &spend)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let audited = |subject: &'static str| {
        let store = store.clone();
        async move {
            let mut tx = store.begin(tenant, Utc::now()).await?;
            tx.audit(
                "test",
                AuditAction::SessionCreated,
                subject,
                None,
                json!({}),
            )
            .await?;
            tx.commit().await
        }
    };
    let mut tx = store.begin(tenant, Utc::now()).await.unwrap();
    budgets::usage_in(&mut tx, KEY_PERIODS, key, &["day:x"])
        .await
        .unwrap();
    execute_outside(&url, "UPDATE key_usage SET version = version + 1".into()).await;
    budgets::apply(&mut tx, KEY_PERIODS, key, &spend)
        .await
        .unwrap();
    tx.audit("test", AuditAction::SessionCreated, "lost", None, json!({}))
        .await
        .unwrap();
    let next = tokio::spawn(audited("lost too"));
    writes_queued(&store, 1).await;
    let error = tx.commit().await.expect_err("the row moved on");
    assert!(error.to_string().contains("key_usage"), "{error}");
    next.await.unwrap().expect_err("its group failed");
    audited("kept").await.expect("the next group lands");
    assert_eq!(committed_usage(&store, key).await, usd("1"));
    let subjects = subjects(&store, tenant).await;
    assert_eq!(subjects, ["kept"]);
    store.close().await;
    db.drop().await;
}

/// A scope's payments within one second grow one mark, in place: read back with its first and last totals,
/// one row however many. A mark an older release left (no last totals) reads as its first payment alone.
async fn marks_grow_within_their_second(url: &str) {
    let (store, tenant) = with_tenant(url).await;
    let usd = |s: &str| s.parse::<paygent_domain::Decimal>().unwrap();
    let second = chrono::DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap();
    let ever = chrono::DateTime::<Utc>::MIN_UTC;
    let read = |scope: &str| vec![(scope.to_owned(), second)];
    let mut last = None;
    for (ms, paid) in [(100, "1"), (600, "2.5"), (900, "0.5")] {
        let now = second + chrono::Duration::milliseconds(ms);
        let mut tx = store.begin(tenant, now).await.unwrap();
        let found = velocity::windows(&mut tx, &read("session:s"))
            .await
            .unwrap();
        assert_eq!(found[0].1, last, "the scope's last mark, as left");
        let mark = Mark::after(found[0].1.as_ref(), usd(paid), now, ever);
        leave(&mut tx, &[("session:s".to_owned(), mark)]).await;
        tx.commit().await.unwrap();
        last = Some(mark);
    }
    let mut tx = store.begin(tenant, Utc::now()).await.unwrap();
    let (first, last) = velocity::windows(&mut tx, &read("session:s"))
        .await
        .unwrap()[0];
    let totals = paygent_domain::velocity::Totals::between(first.as_ref(), last.as_ref());
    assert_eq!((totals.payments, totals.usd), (3, usd("4")));
    tx.commit().await.unwrap();
    let rows = query("SELECT COUNT(*) FROM velocity_marks")
        .fetch_all(store.reader())
        .await
        .unwrap();
    assert_eq!(rows[0].get::<i64>(0).unwrap(), 1, "one row for the second");

    let older = format!(
        "INSERT INTO velocity_marks (tenant_id, scope, seq, at, usd_total, usd) VALUES \
         ('{tenant}', 'session:old', 7, '{}', '9', '2')",
        paygent_domain::time::format(second)
    );
    execute_outside(url, older).await;
    let mut tx = store.begin(tenant, Utc::now()).await.unwrap();
    let (_, old) = velocity::windows(&mut tx, &read("session:old"))
        .await
        .unwrap()[0];
    let old = old.expect("the older release's mark");
    assert_eq!((old.last_seq, old.last_usd_total), (7, usd("9")));
    tx.commit().await.unwrap();
    store.close().await;
}

/// The windows the breaker tests read: a scope's last 60 s and 5 s, and another scope's last 60 s.
fn windows_of(
    all: &str,
    other: &str,
    now: chrono::DateTime<Utc>,
) -> Vec<(String, chrono::DateTime<Utc>)> {
    let from =
        |per| paygent_domain::velocity::window_start(now, per, chrono::DateTime::<Utc>::MIN_UTC);
    vec![
        (all.to_owned(), from(60)),
        (all.to_owned(), from(5)),
        (other.to_owned(), from(60)),
    ]
}

/// Leaves a payment's marks in the two scopes of [`windows_of`], after the last marks `found` there.
async fn leave_after(
    tx: &mut paygent_store::WriteTx,
    [all, other]: [&String; 2],
    found: &[(Option<Mark>, Option<Mark>)],
    (usd, now): (paygent_domain::Decimal, chrono::DateTime<Utc>),
) -> Vec<(String, Mark)> {
    let ever = chrono::DateTime::<Utc>::MIN_UTC;
    let marks: Vec<(String, Mark)> = [(all, found[0].1), (other, found[2].1)]
        .into_iter()
        .map(|(scope, last)| (scope.clone(), Mark::after(last.as_ref(), usd, now, ever)))
        .collect();
    leave(tx, &marks).await;
    marks
}

/// Leaves `marks` as a payment does: with an entry in the audit chain.
async fn leave(tx: &mut paygent_store::WriteTx, marks: &[(String, Mark)]) {
    velocity::leave(tx, marks).await.unwrap();
    let what = json!({"marks": marks.len()});
    (tx.audit("test", AuditAction::PaymentAuthorized, "p", None, what))
        .await
        .unwrap();
}

/// On SQLite the writer keeps the breaker's recent marks and reads windows from them: every window reads as
/// the database has it (here from a second store on the file, which never keeps a mark), through windows
/// longer than the marks kept, seconds with several payments, another connection's mark, and a write that
/// left marks and was then dropped.
#[tokio::test]
async fn marks_kept_by_the_writer_read_as_the_database_has_them() {
    let (url, _dir) = sqlite_url();
    let (store, tenant) = with_tenant(&url).await;
    let truth = Store::connect(&url, &StoreOptions::default())
        .await
        .unwrap();
    let ever = chrono::DateTime::<Utc>::MIN_UTC;
    let start = chrono::DateTime::from_timestamp(Utc::now().timestamp() - 400, 0).unwrap();
    let (all, same) = ("session:k".to_owned(), "session:k:same:x".to_owned());
    let wanted = |now| windows_of(&all, &same, now);
    let read = |store: &Store, now| {
        let wanted = wanted(now);
        let store = store.clone();
        async move {
            let mut tx = store.begin(tenant, now).await.unwrap();
            (velocity::windows(&mut tx, &wanted).await.unwrap(), tx)
        }
    };
    let steps = [
        0, 300, 900, 1_200, 2_500, 7_000, 7_100, 61_500, 62_000, 100_000, 101_000, 200_000,
    ];
    for (i, ms) in steps.into_iter().enumerate() {
        let now = start + chrono::Duration::milliseconds(ms);
        let (expected, other) = read(&truth, now).await;
        drop(other);
        let (found, mut tx) = read(&store, now).await;
        assert_eq!(found, expected, "step {i}");
        let usd = paygent_domain::Decimal::from(i as u32 + 1);
        let marks = leave_after(&mut tx, [&all, &same], &found, (usd, now)).await;
        if i == 4 {
            drop(tx);
        } else {
            tx.commit().await.unwrap();
        }
        if i == 8 {
            let (scope, m) = &marks[0];
            let next = Mark::after(Some(m), usd, now + chrono::Duration::seconds(1), ever);
            execute_outside(&url, mark_row(tenant, scope, &next)).await;
        }
    }
    let other = Uuid::new_v4();
    assert!(store.ensure_tenant(other, "o", Utc::now()).await.unwrap());
    let mut tx = store.begin(other, Utc::now()).await.unwrap();
    let theirs = velocity::windows(&mut tx, &wanted(Utc::now()))
        .await
        .unwrap();
    assert_eq!(
        theirs,
        vec![(None, None); 3],
        "another tenant's scope reads as empty"
    );
    drop(tx);
    truth.close().await;
    store.close().await;
}

#[tokio::test]
async fn marks_grow_within_their_second_on_sqlite() {
    let (url, _dir) = sqlite_url();
    marks_grow_within_their_second(&url).await;
}

#[tokio::test]
async fn marks_grow_within_their_second_on_postgres() {
    let (url, db) = PgDatabase::create().await;
    marks_grow_within_their_second(&url).await;
    db.drop().await;
}

/// A write that leaves the breaker's marks must append to the audit chain, which is how another instance tells
/// that marks may have changed: one that does not is refused, and leaves nothing.
async fn marks_without_an_audit_entry_are_refused(url: &str) {
    let (store, tenant) = with_tenant(url).await;
    let now = Utc::now();
    let window = vec![("session:u".to_owned(), now - chrono::Duration::seconds(5))];
    let mark = Mark::after(None, 1.into(), now, chrono::DateTime::<Utc>::MIN_UTC);
    let mut tx = store.begin(tenant, now).await.unwrap();
    velocity::leave(&mut tx, &[("session:u".to_owned(), mark)])
        .await
        .unwrap();
    let refused = tx.commit().await.expect_err("marks without an audit entry");
    assert!(refused.to_string().contains("audit entry"), "{refused}");
    let mut tx = store.begin(tenant, now).await.unwrap();
    let found = velocity::windows(&mut tx, &window).await.unwrap();
    assert_eq!(found, vec![(None, None)], "no mark left");
    drop(tx);
    store.close().await;
}

#[tokio::test]
async fn marks_without_an_audit_entry_are_refused_on_sqlite() {
    let (url, _dir) = sqlite_url();
    marks_without_an_audit_entry_are_refused(&url).await;
}

#[tokio::test]
async fn marks_without_an_audit_entry_are_refused_on_postgres() {
    let (url, db) = PgDatabase::create().await;
    marks_without_an_audit_entry_are_refused(&url).await;
    db.drop().await;
}

/// A spend's rollups and budget rows add up the writes that kept them, and nothing of a dropped write's. On
/// PostgreSQL the writes of one group (queued behind one another under the tenant's lock) write those rows once,
/// as the group commits, and readers see none of it before; a write reads the budget rows as the group's kept
/// writes left them.
async fn spend_and_budgets_add_up_the_writes_kept(url: &str) {
    let (store, tenant) = with_tenant(url).await;
    let (agent, session) = (Uuid::new_v4(), Uuid::new_v4());
    let at = Utc::now();
    let spend = move |usd: &str| {
        let usd = paygent_domain::Decimal::from_str_exact(usd).unwrap();
        let spent = paygent_domain::spend::Spent {
            agent,
            session,
            payee: "0xpayee",
            at,
            usd,
            payments: 1,
        };
        spent.changes()
    };
    let rows = || {
        let (store, owner) = (store.clone(), format!("session:{session}"));
        async move {
            let buckets = ("d:0", "h:9");
            let mut rows = spend::rows(store.reader(), tenant, &owner, buckets)
                .await
                .unwrap();
            rows.sort_by(|a, b| a.bucket.cmp(&b.bucket));
            (rows.iter())
                .map(|r| (r.usd.to_string(), r.payments))
                .collect::<Vec<_>>()
        }
    };
    let book = |usd: &str| {
        let spent = paygent_domain::Decimal::from_str_exact(usd).unwrap();
        let reserved = paygent_domain::Decimal::ZERO;
        [("day:x", "USDC", Delta { spent, reserved })]
    };
    let mut first = store.begin(tenant, at).await.unwrap();
    spend::fold(&mut first, &spend("1.5")).await.unwrap();
    budgets::apply(&mut first, KEY_PERIODS, agent, &book("1.5"))
        .await
        .unwrap();
    let write = |keep: bool, usd: &'static str, before: &'static str| {
        let store = store.clone();
        tokio::spawn(async move {
            let mut tx = store.begin(tenant, at).await.unwrap();
            let used = budgets::usage_in(&mut tx, KEY_PERIODS, agent, &["day:x"])
                .await
                .unwrap();
            let used = used[&("day:x".to_owned(), "USDC".to_owned())].spent;
            assert_eq!(
                used.to_string(),
                before,
                "as the group's kept writes left it"
            );
            spend::fold(&mut tx, &spend(usd)).await.unwrap();
            budgets::apply(&mut tx, KEY_PERIODS, agent, &book(usd))
                .await
                .unwrap();
            if keep {
                tx.audit("test", AuditAction::PaymentAuthorized, "p", None, json!({}))
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
            }
        })
    };
    let dropped = write(false, "100", "1.5");
    let waiting = || async { store.writes_waiting() };
    let what = "writes queued behind the first";
    paygent_testkit::eventually(std::time::Duration::from_secs(5), what, waiting, |n| {
        *n >= 1
    })
    .await;
    let kept = write(true, "0.25", "1.5");
    paygent_testkit::eventually(std::time::Duration::from_secs(5), what, waiting, |n| {
        *n >= 2
    })
    .await;
    let last = write(false, "1000", "1.75");
    paygent_testkit::eventually(std::time::Duration::from_secs(5), what, waiting, |n| {
        *n >= 3
    })
    .await;
    assert_eq!(rows().await, vec![], "nothing before a commit");
    assert_eq!(committed_usage(&store, agent).await.to_string(), "0");
    first.commit().await.unwrap();
    for write in [dropped, kept, last] {
        write.await.unwrap();
    }
    let sum = ("1.75".to_owned(), 2);
    assert_eq!(
        rows().await,
        vec![sum.clone(), sum],
        "the day's and the hour's"
    );
    assert_eq!(committed_usage(&store, agent).await.to_string(), "1.75");
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_and_budgets_add_up_the_writes_kept_on_sqlite() {
    let (url, _dir) = sqlite_url();
    spend_and_budgets_add_up_the_writes_kept(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_and_budgets_add_up_the_writes_kept_on_postgres() {
    let (url, db) = PgDatabase::create().await;
    spend_and_budgets_add_up_the_writes_kept(&url).await;
    db.drop().await;
}

/// A mark as a row written outside the store.
fn mark_row(tenant: Uuid, scope: &str, m: &Mark) -> String {
    format!(
        "INSERT INTO velocity_marks (tenant_id, scope, seq, at, usd_total, usd, last_seq, last_usd_total) \
         VALUES ('{tenant}', '{}', {}, '{}', '{}', '{}', {}, '{}')",
        scope.replace('\'', "''"),
        m.seq,
        paygent_domain::time::format(m.at),
        m.usd_total,
        m.usd,
        m.last_seq,
        m.last_usd_total
    )
}

/// On PostgreSQL a payment's breaker windows, guessed before the write, are read in the round trip that takes
/// the tenant's lock. That read answers as the database does (checked against a write that reads them apart,
/// through windows of several lengths, seconds with several payments, an older release's mark and a scope whose
/// name JSON must escape), only for exactly the windows guessed, once, and never after the write left marks.
#[tokio::test]
async fn windows_read_with_the_lock_are_the_databases_on_postgres() {
    let (url, db) = PgDatabase::create().await;
    let (store, tenant) = with_tenant(&url).await;
    let truth = Store::connect(&url, &StoreOptions::default())
        .await
        .unwrap();
    let key = agent_key(&store, tenant).await;
    let ever = chrono::DateTime::<Utc>::MIN_UTC;
    let start = chrono::DateTime::from_timestamp(Utc::now().timestamp() - 400, 0).unwrap();
    let (all, odd) = ("session:k".to_owned(), "key:\"q'\\\u{1}é,}".to_owned());
    let wanted = |now| windows_of(&all, &odd, now);
    // The windows as another instance reads them apart, then a write whose first round trip read them with the
    // lock (or, in the second of the last write here, was answered from what that write's group handed on).
    let apart_then_with_the_lock = |now| {
        let (store, truth, windows) = (store.clone(), truth.clone(), wanted(now));
        async move {
            let mut apart = truth.begin(tenant, now).await.unwrap();
            let read = velocity::windows(&mut apart, &windows).await.unwrap();
            drop(apart);
            let about = paygent_store::About {
                session: Some(Uuid::new_v4()),
                default_policy: Uuid::new_v4(),
                approval: None,
                windows,
                standing: None,
            };
            (
                read,
                store.begin_about(tenant, key, now, about).await.unwrap(),
            )
        }
    };
    let older = format!(
        "INSERT INTO velocity_marks (tenant_id, scope, seq, at, usd_total, usd) VALUES \
         ('{tenant}', '{all}', 1, '{}', '3', '3')",
        paygent_domain::time::format(start - chrono::Duration::seconds(30))
    );
    execute_outside(&url, older).await;
    for (i, ms) in [0, 300, 900, 2_500, 7_000, 61_500, 62_000, 200_000]
        .into_iter()
        .enumerate()
    {
        let now = start + chrono::Duration::milliseconds(ms);
        let (expected, mut tx) = apart_then_with_the_lock(now).await;
        let found = velocity::windows(&mut tx, &wanted(now)).await.unwrap();
        assert_eq!(found, expected, "step {i}");
        let usd = paygent_domain::Decimal::from(i as u32 + 1);
        leave_after(&mut tx, [&all, &odd], &found, (usd, now)).await;
        tx.commit().await.unwrap();
    }

    let now = chrono::SubsecRound::trunc_subsecs(Utc::now(), 6);
    let (before, mut tx) = apart_then_with_the_lock(now).await;
    let next = Mark::after(before[0].1.as_ref(), 5.into(), now, ever);
    execute_outside(&url, mark_row(tenant, &all, &next)).await;
    let other = vec![(all.clone(), now - chrono::Duration::seconds(1))];
    let guessed_wrong = velocity::windows(&mut tx, &other).await.unwrap();
    assert_eq!(
        guessed_wrong[0].1,
        Some(next),
        "other windows are read apart"
    );
    let read = velocity::windows(&mut tx, &wanted(now)).await.unwrap();
    assert_eq!(read, before, "the guessed windows, as read with the lock");
    let again = velocity::windows(&mut tx, &wanted(now)).await.unwrap();
    assert_eq!(again[0].1, Some(next), "read with the lock once only");
    drop(tx);

    let now = now + chrono::Duration::seconds(2);
    let (_, mut tx) = apart_then_with_the_lock(now).await;
    let own = Mark::after(Some(&next), 1.into(), now, ever);
    leave(&mut tx, &[(all.clone(), own)]).await;
    let after = velocity::windows(&mut tx, &wanted(now)).await.unwrap();
    assert_eq!(after[0].1, Some(own), "read after the write's own marks");
    drop(tx);
    truth.close().await;
    store.close().await;
    db.drop().await;
}

/// An agent's key in `tenant`, for writes made by a key.
async fn agent_key(store: &Store, tenant: Uuid) -> Uuid {
    key_expiring(store, tenant, None).await
}

/// An agent's key that expires at `expires_at`.
async fn key_expiring(store: &Store, tenant: Uuid, expires_at: Option<DateTime<Utc>>) -> Uuid {
    let key = Uuid::new_v4();
    let mut tx = store.begin(tenant, Utc::now()).await.unwrap();
    let record = paygent_store::keys::KeyRecord {
        id: key,
        tenant_id: tenant,
        name: "agent".into(),
        role: paygent_domain::Role::Agent,
        created_at: Utc::now(),
        expires_at,
        policy_id: None,
        groups: Vec::new(),
        slack_user: None,
        email: None,
    };
    paygent_store::keys::insert(&mut tx, &record, &format!("hash of {key}"))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    key
}

/// Whether the store's connections to PostgreSQL use TLS.
async fn over_tls(url: &str) -> bool {
    let store = Store::connect(url, &StoreOptions::default()).await.unwrap();
    let rows = query(
        "SELECT CAST(CASE WHEN ssl THEN 1 ELSE 0 END AS BIGINT) FROM pg_stat_ssl \
         WHERE pid = pg_backend_pid()",
    )
    .fetch_all(store.reader())
    .await
    .unwrap();
    store.close().await;
    rows[0].get::<i64>(0).unwrap() == 1
}

/// PostgreSQL on this host's loopback is reached without TLS (which cost a fifth of its CPU) unless the URL
/// names a mode; asked for, TLS is used. This machine's PostgreSQL offers TLS, as Debian's does by default.
#[tokio::test]
async fn postgres_on_loopback_goes_without_tls_unless_the_url_asks() {
    let (url, db) = PgDatabase::create().await;
    assert!(
        url.contains("127.0.0.1") || url.contains("localhost"),
        "{url}"
    );
    assert!(!over_tls(&url).await, "no TLS on loopback by default");
    assert!(
        over_tls(&format!("{url}?sslmode=require")).await,
        "TLS when asked"
    );
    assert!(
        over_tls(&format!("{url}?sslmode=prefer")).await,
        "TLS when preferred by name"
    );
    db.drop().await;
}

/// On PostgreSQL the writes of one group (one hold of the tenant's lock, which no other writer of the tenant
/// gets meanwhile) read the breaker's windows once: the group's next writes are answered from that read and the
/// marks its writes kept, never the marks of a write it dropped. A mark written outside the lock (which no
/// writer can do) shows which: the group does not see it, nor does the tenant's next group here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_a_group_read_answer_its_next_writes_on_postgres() {
    let (url, db) = PgDatabase::create().await;
    let (store, tenant) = with_tenant(&url).await;
    let second = chrono::DateTime::from_timestamp(Utc::now().timestamp() - 100, 0).unwrap();
    let at = move |ms| second + chrono::Duration::milliseconds(ms);
    let (all, other) = ("session:g".to_owned(), "key:g".to_owned());
    let wanted = windows_of(&all, &other, at(100));
    let mut first = store.begin(tenant, at(100)).await.unwrap();
    let found = velocity::windows(&mut first, &wanted).await.unwrap();
    assert_eq!(found, vec![(None, None); 3]);
    let kept = leave_after(&mut first, [&all, &other], &found, (1.into(), at(100))).await;
    let outside = Mark::after(
        Some(&kept[0].1),
        7.into(),
        at(1_200),
        chrono::DateTime::<Utc>::MIN_UTC,
    );
    execute_outside(&url, mark_row(tenant, &all, &outside)).await;
    let write = |keep: bool, usd: u32, ms: i64| {
        let (store, wanted, scopes) = (store.clone(), wanted.clone(), (all.clone(), other.clone()));
        tokio::spawn(async move {
            let mut tx = store.begin(tenant, at(ms)).await.unwrap();
            let found = velocity::windows(&mut tx, &wanted).await.unwrap();
            let usd = paygent_domain::Decimal::from(usd);
            leave_after(&mut tx, [&scopes.0, &scopes.1], &found, (usd, at(ms))).await;
            if keep {
                tx.commit().await.unwrap();
            }
            found
        })
    };
    let dropped = write(false, 100, 300);
    writes_queued(&store, 1).await;
    let next = write(true, 5, 500);
    writes_queued(&store, 2).await;
    first.commit().await.unwrap();
    let (all_kept, other_kept) = (Some(kept[0].1), Some(kept[1].1));
    let expected = vec![
        (all_kept, all_kept),
        (all_kept, all_kept),
        (other_kept, other_kept),
    ];
    assert_eq!(
        dropped.await.unwrap(),
        expected,
        "the first write's read and marks"
    );
    assert_eq!(
        next.await.unwrap(),
        expected,
        "nothing of the dropped write's marks"
    );

    let mut tx = store.begin(tenant, at(900)).await.unwrap();
    let read = velocity::windows(&mut tx, &wanted).await.unwrap();
    let last = read[2].1.expect("the kept write's mark");
    assert_eq!(
        (last.last_seq, last.last_usd_total),
        (2, 6.into()),
        "grown by the kept write"
    );
    assert_ne!(
        read[0].1,
        Some(outside),
        "the next group here is answered from what this one kept"
    );
    drop(tx);
    store.close().await;
    db.drop().await;
}

/// On PostgreSQL a group's marks are written once, as it commits; until then a window read from the database in
/// the group (one the group does not know) is read with the marks its kept writes and the write itself left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marks_a_group_left_are_read_before_it_commits_on_postgres() {
    let (url, db) = PgDatabase::create().await;
    let (store, tenant) = with_tenant(&url).await;
    let second = chrono::DateTime::from_timestamp(Utc::now().timestamp() - 100, 0).unwrap();
    let at = move |ms| second + chrono::Duration::milliseconds(ms);
    let (all, other) = ("session:m".to_owned(), "key:m".to_owned());
    let wanted = windows_of(&all, &other, at(100));
    let mut first = store.begin(tenant, at(100)).await.unwrap();
    let found = velocity::windows(&mut first, &wanted).await.unwrap();
    let kept = leave_after(&mut first, [&all, &other], &found, (1.into(), at(100))).await;
    let longer = vec![(all.clone(), at(0) - chrono::Duration::seconds(30))];
    let next = {
        let (store, longer) = (store.clone(), longer.clone());
        tokio::spawn(async move {
            let mut tx = store.begin(tenant, at(2_000)).await.unwrap();
            let before = velocity::windows(&mut tx, &longer).await.unwrap();
            let ever = chrono::DateTime::<Utc>::MIN_UTC;
            let own = Mark::after(before[0].1.as_ref(), 2.into(), at(2_000), ever);
            leave(&mut tx, &[(longer[0].0.clone(), own)]).await;
            let after = velocity::windows(&mut tx, &longer).await.unwrap();
            tx.commit().await.unwrap();
            (before, after, own)
        })
    };
    writes_queued(&store, 1).await;
    first.commit().await.unwrap();
    let (before, after, own) = next.await.unwrap();
    let mine = Some(kept[0].1);
    assert_eq!(before, vec![(mine, mine)], "the group's kept mark");
    assert_eq!(after, vec![(mine, Some(own))], "and the write's own");
    let truth = Store::connect(&url, &StoreOptions::default())
        .await
        .unwrap();
    let mut tx = truth.begin(tenant, at(3_000)).await.unwrap();
    let written = velocity::windows(&mut tx, &longer).await.unwrap();
    assert_eq!(written, after, "as written when the group committed");
    drop(tx);
    truth.close().await;
    store.close().await;
    db.drop().await;
}

/// On PostgreSQL the windows a committed group knew answer the tenant's next group in the same instance, without
/// a read in its first round trip, as long as nobody else wrote: every write that leaves marks appends to the
/// audit chain, so the chain's head read with the next group's lock tells. Once another instance has written,
/// the windows are read from the database. A mark written outside the lock (which no writer can do) shows which.
#[tokio::test]
async fn windows_carried_to_the_next_group_hold_until_another_instance_writes_on_postgres() {
    let (url, db) = PgDatabase::create().await;
    let (store, tenant) = with_tenant(&url).await;
    let other = Store::connect(&url, &StoreOptions::default())
        .await
        .unwrap();
    let key = agent_key(&store, tenant).await;
    let second = chrono::DateTime::from_timestamp(Utc::now().timestamp() - 100, 0).unwrap();
    let at = move |ms| second + chrono::Duration::milliseconds(ms);
    let (all, same) = ("session:c".to_owned(), "session:c:same:x".to_owned());
    let wanted = windows_of(&all, &same, at(100));
    let write = |ms| {
        let about = paygent_store::About {
            session: Some(Uuid::new_v4()),
            default_policy: Uuid::new_v4(),
            approval: None,
            windows: wanted.clone(),
            standing: None,
        };
        store.begin_about(tenant, key, at(ms), about)
    };
    let mut tx = write(100).await.unwrap();
    let found = velocity::windows(&mut tx, &wanted).await.unwrap();
    let first = leave_after(&mut tx, [&all, &same], &found, (1.into(), at(100))).await;
    tx.commit().await.unwrap();
    let ever = chrono::DateTime::<Utc>::MIN_UTC;
    let outside = Mark::after(Some(&first[0].1), 7.into(), at(1_200), ever);
    execute_outside(&url, mark_row(tenant, &all, &outside)).await;

    let mut tx = write(200).await.unwrap();
    let found = velocity::windows(&mut tx, &wanted).await.unwrap();
    let expected = |m: &Mark| (Some(*m), Some(*m));
    let (all_first, same_first) = (expected(&first[0].1), expected(&first[1].1));
    assert_eq!(
        found,
        vec![all_first, all_first, same_first],
        "the last group's read and marks"
    );
    let grown = leave_after(&mut tx, [&all, &same], &found, (2.into(), at(200))).await;
    tx.commit().await.unwrap();
    let mut tx = write(300).await.unwrap();
    let found = velocity::windows(&mut tx, &wanted).await.unwrap();
    assert_eq!(
        found[2],
        (Some(grown[1].1), Some(grown[1].1)),
        "the last group's marks, carried on"
    );
    tx.commit().await.unwrap();

    let mut tx = other.begin(tenant, at(400)).await.unwrap();
    tx.audit("test", AuditAction::SessionCreated, "s", None, json!({}))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut tx = write(500).await.unwrap();
    let found = velocity::windows(&mut tx, &wanted).await.unwrap();
    assert_eq!(
        found[0].1,
        Some(outside),
        "read from the database once another instance wrote"
    );
    drop(tx);
    other.close().await;
    store.close().await;
    db.drop().await;
}

/// Waits until one of the database's sessions waits for a lock of the kind `event` (`pg_stat_activity`'s
/// `wait_event`: `transactionid` for a row another transaction locked, `advisory`).
async fn one_waits(url: &str, event: &str, what: &str) {
    let waiting = || async {
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        let row: (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND wait_event_type = 'Lock' AND wait_event = $1",
        )
        .bind(event)
        .fetch_one(&mut conn)
        .await
        .unwrap();
        row.0
    };
    let within = std::time::Duration::from_secs(10);
    paygent_testkit::eventually(within, what, waiting, |n| *n == 1).await;
}

/// A write queued on its tenant's lock behind another instance's transaction reads what that transaction
/// committed: here a key it revoked, and a count of requests it filed for another key. A statement that waits for
/// a lock reads other rows as they were before it waited, so the lock is taken in a statement of its own.
#[tokio::test]
async fn a_write_queued_on_the_lock_reads_what_its_holder_committed_on_postgres() {
    let (url, db) = PgDatabase::create().await;
    let (store, tenant) = with_tenant(&url).await;
    let (revoked, counted) = (
        agent_key(&store, tenant).await,
        agent_key(&store, tenant).await,
    );
    let behind_the_lock = |change: String, key: Uuid| {
        let (url, store) = (url.clone(), store.clone());
        async move {
            let mut holder = sqlx::PgConnection::connect(&url).await.unwrap();
            let lock =
                format!("BEGIN; SELECT 1 FROM tenants WHERE id = '{tenant}' FOR UPDATE; {change}");
            sqlx::raw_sql(sqlx::AssertSqlSafe(lock))
                .execute(&mut holder)
                .await
                .unwrap();
            let write = tokio::spawn(async move {
                let mut tx = store.begin_as(tenant, key, Utc::now()).await?;
                paygent_store::approvals::pending_of_key(&mut tx, key).await
            });
            one_waits(&url, "transactionid", "the write to wait for the lock").await;
            sqlx::raw_sql("COMMIT").execute(&mut holder).await.unwrap();
            write.await.unwrap()
        }
    };
    let revoke =
        format!("UPDATE api_keys SET revoked_at = '2000-01-01T00:00:00Z' WHERE id = '{revoked}'");
    assert!(
        matches!(
            behind_the_lock(revoke, revoked).await,
            Err(paygent_store::StoreError::KeyNotLive)
        ),
        "revoked as the lock was taken"
    );
    let file = format!(
        "INSERT INTO key_pending (key_id, tenant_id, pending) VALUES ('{counted}', '{tenant}', 3)"
    );
    assert_eq!(
        behind_the_lock(file, counted).await.unwrap(),
        3,
        "as the lock's holder left it"
    );
    store.close().await;
    db.drop().await;
}

/// While a group's `COMMIT` is under way (held here by a deferred trigger waiting on an advisory lock), the
/// tenant's next write opens the next group, its lock waiting at PostgreSQL for the first group to end. It reads
/// the chain as that group leaves it: with the group's entry once it commits, without it once it fails.
#[tokio::test]
async fn the_next_group_opens_while_a_group_commits_on_postgres() {
    let (url, db) = PgDatabase::create().await;
    let (store, tenant) = with_tenant(&url).await;
    let mut holder = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::raw_sql(
        "CREATE FUNCTION held_commit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
         PERFORM pg_advisory_xact_lock(7); \
         IF NEW.subject = 'refused' THEN RAISE EXCEPTION 'refused at commit'; END IF; \
         RETURN NULL; END $$; \
         CREATE CONSTRAINT TRIGGER held_commit AFTER INSERT ON audit_log DEFERRABLE INITIALLY DEFERRED \
         FOR EACH ROW EXECUTE FUNCTION held_commit()",
    )
    .execute(&mut holder)
    .await
    .unwrap();
    let write = |subject: &'static str| {
        let store = store.clone();
        tokio::spawn(async move {
            let mut tx = store.begin(tenant, Utc::now()).await?;
            tx.audit(
                "test",
                AuditAction::SessionCreated,
                subject,
                None,
                json!({}),
            )
            .await?;
            tx.commit().await
        })
    };
    for (subject, kept) in [("refused", false), ("held", true)] {
        sqlx::raw_sql("SELECT pg_advisory_lock(7)")
            .execute(&mut holder)
            .await
            .unwrap();
        let first = write(subject);
        one_waits(&url, "advisory", "the commit to wait").await;
        let next = write("next");
        one_waits(&url, "transactionid", "the next group to wait for the lock").await;
        sqlx::raw_sql("SELECT pg_advisory_unlock(7)")
            .execute(&mut holder)
            .await
            .unwrap();
        assert_eq!(first.await.unwrap().is_ok(), kept, "{subject}");
        next.await.unwrap().unwrap();
    }
    assert_eq!(subjects(&store, tenant).await, ["next", "held", "next"]);
    store.close().await;
    db.drop().await;
}
