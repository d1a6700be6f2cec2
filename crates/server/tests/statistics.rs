//! Plans that do not depend on the database's janitor: on a PostgreSQL table nobody else analyzes, with 100,000
//! pending requests, a decision finds its request by primary key instead of walking the index of every pending
//! one, and the server analyzes the table again once it doubled, not at every tenth. PostgreSQL only: SQLite
//! plans lookups by key without statistics.

use paygent_testkit::{ADMIN_TOKEN, Backend, TestServer};
use reqwest::StatusCode;
use serde_json::json;
use sqlx::{Connection, Row};
use std::time::Duration;

/// Files `n` requests of 25 USDC in `session` and approves each.
async fn decided(s: &TestServer, agent: &str, approver: &str, session: uuid::Uuid, n: usize) {
    for _ in 0..n {
        let (_, paid) = s.pay(agent, session, "25", "USDC").await;
        let id = paid["approval_id"]
            .as_str()
            .unwrap_or_else(|| panic!("{paid}"));
        let path = format!("/approvals/{id}/approve");
        let (status, body) = s.post(approver, &path, json!({})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_find_their_request_by_key_on_a_table_nobody_else_analyzes() {
    let s = TestServer::start(Backend::Postgres).await;
    s.sql("ALTER TABLE approval_requests SET (autovacuum_enabled = false, toast.autovacuum_enabled = false)")
        .await;
    let t = s.team(ADMIN_TOKEN).await;
    let session = s
        .session(&t.agent, json!({"daily_limits": {"USDC": "1000000"}}))
        .await;
    // While the table is small, each pooled connection caches the decision's plan.
    decided(&s, &t.agent, &t.approver, session, 40).await;
    let (_, template) = s.pay(&t.agent, session, "25", "USDC").await;
    s.copy_pending(template["approval_id"].as_str().unwrap(), 100_000)
        .await;
    let analyzed = s.paygent.store().keep_statistics().await.unwrap();
    assert!(
        analyzed.iter().any(|t| t == "approval_requests"),
        "{analyzed:?}"
    );
    let again = s.paygent.store().keep_statistics().await.unwrap();
    assert!(
        !again.iter().any(|t| t == "approval_requests"),
        "analyzed once: {again:?}"
    );
    // Changes short of the table's own size leave it be: each analyze reads up to 30,000 rows, and a plan made
    // once the table is past a few pages stays right (autovacuum would analyze again at a tenth).
    s.sql(
        "UPDATE approval_requests SET decision_note = 'touched' WHERE id IN \
         (SELECT id FROM approval_requests WHERE status = 'pending' LIMIT 20000)",
    )
    .await;
    let changes = || async {
        let mut conn = sqlx::PgConnection::connect(&s.database_url).await.unwrap();
        let row = sqlx::query(
            "SELECT n_mod_since_analyze FROM pg_stat_user_tables WHERE relname = 'approval_requests'",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();
        row.get::<i64, _>(0)
    };
    let what = "the 20,000 changes in the statistics";
    paygent_testkit::eventually(Duration::from_secs(15), what, changes, |n| *n >= 20_000).await;
    let grown = s.paygent.store().keep_statistics().await.unwrap();
    assert!(
        !grown.iter().any(|t| t == "approval_requests"),
        "analyzed after changes to a fifth of it: {grown:?}"
    );
    // Another agent: the copies are the first one's, as many as it may have waiting.
    let other = s
        .key(ADMIN_TOKEN, paygent_engine::domain::Role::Agent)
        .await;
    let session = s.session(&other, json!({})).await;
    decided(&s, &other, &t.approver, session, 40).await;

    // The server's connections hand in their statistics as they close.
    s.paygent.store().close().await;
    // Updates and index reads, once all 80 updates are counted.
    let counted = || async {
        let mut conn = sqlx::PgConnection::connect(&s.database_url).await.unwrap();
        let row = sqlx::query(
            "SELECT t.n_tup_upd, i.idx_tup_read FROM pg_stat_user_tables t \
             JOIN pg_stat_user_indexes i ON i.relid = t.relid \
             WHERE t.relname = 'approval_requests' AND i.indexrelname = 'approvals_pending'",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();
        (row.get::<i64, _>(0), row.get::<i64, _>(1))
    };
    let what = "the 80 decisions in the statistics";
    let within = Duration::from_secs(10);
    let (_, walked) = paygent_testkit::eventually(within, what, counted, |c| c.0 >= 80).await;
    assert!(
        walked < 100_000,
        "40 decisions read {walked} entries of the index of pending requests: at least one walked them all"
    );
    s.finish().await;
}
