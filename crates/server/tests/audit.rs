//! The audit chain over the real API, on both databases: every field an entry's hash covers matters, a cut tail
//! is named, and an anchor kept outside the database catches a chain cut and its head set back to match.

use paygent_testkit::{ADMIN_TOKEN, Backend, TestServer, on_both_databases};
use reqwest::StatusCode;
use serde_json::{Value, json};

on_both_databases!(
    every_hashed_field_of_an_entry_matters,
    an_anchor_kept_outside_catches_a_cut_chain_and_its_head_set_back,
);

const DEFAULT: &str = "(SELECT id FROM tenants WHERE name = 'default')";

async fn verify(s: &TestServer, query: &str) -> Value {
    let (status, check) = s.get(ADMIN_TOKEN, &format!("/audit/verify{query}")).await;
    assert_eq!(status, StatusCode::OK, "{check}");
    check
}

/// Each column an entry's hash covers, changed in the database, breaks the chain at that entry (an entry moved
/// to another tenant or another place is missing from its own); put back, the chain holds again. Another
/// tenant's chain copied in whole, head and all, is told apart. A cut tail is named too.
async fn every_hashed_field_of_an_entry_matters(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let session = s.session(&t.agent, json!({})).await;
    s.pay(&t.agent, session, "20", "USDC").await;
    s.tenant("elsewhere").await;
    let at = |column: &str| {
        format!(
            "SELECT {column} FROM audit_log WHERE tenant_id = {DEFAULT} AND session_id IS NOT NULL ORDER BY seq LIMIT 1"
        )
    };
    let seq = s.scalar(&at("seq")).await;
    let entry = format!("tenant_id = {DEFAULT} AND seq = {seq}");
    let elsewhere = "(SELECT id FROM tenants WHERE name = 'elsewhere')";
    let changes = [
        ("at", "'2020-01-01T00:00:00.000000Z'"),
        ("actor", "'key:forged'"),
        ("action", "'policy.changed'"),
        ("subject", "'payment:forged'"),
        ("session_id", "NULL"),
        ("data", "'{}'"),
        ("prev_hash", "'00'"),
        ("tenant_id", elsewhere),
        ("seq", "seq + 1000000"),
    ];
    assert_eq!(verify(&s, "").await["verified"], true);
    for (column, forged) in changes {
        let original = s.text(&at(&format!("CAST({column} AS TEXT)"))).await;
        s.sql(&format!(
            "UPDATE audit_log SET {column} = {forged} WHERE {entry}"
        ))
        .await;
        let check = verify(&s, "").await;
        assert_eq!(check["verified"], false, "{column}: {check}");
        let problem = check["problem"].as_str().unwrap();
        assert!(
            problem.contains(&format!("entry {seq} ")),
            "{column}: {problem}"
        );
        let restore = match column {
            "tenant_id" => format!(
                "UPDATE audit_log SET tenant_id = {DEFAULT} WHERE tenant_id = {elsewhere} AND seq = {seq}"
            ),
            "seq" => format!(
                "UPDATE audit_log SET seq = {seq} WHERE tenant_id = {DEFAULT} AND seq = {}",
                seq + 1_000_000
            ),
            _ => format!(
                "UPDATE audit_log SET {column} = '{}' WHERE {entry}",
                original.replace('\'', "''")
            ),
        };
        s.sql(&restore).await;
        assert_eq!(verify(&s, "").await["verified"], true, "{column} put back");
    }

    // Another tenant's whole chain passed off as this one's, its head too: each hash covers its tenant.
    let copycat = s.tenant("copycat").await;
    let theirs = "(SELECT id FROM tenants WHERE name = 'copycat')";
    s.sql(&format!("DELETE FROM audit_log WHERE tenant_id = {theirs}"))
        .await;
    s.sql(&format!(
        "INSERT INTO audit_log (tenant_id, seq, at, actor, action, subject, session_id, data, prev_hash, hash) \
         SELECT {theirs}, seq, at, actor, action, subject, session_id, data, prev_hash, hash FROM audit_log \
         WHERE tenant_id = {DEFAULT}"
    ))
    .await;
    s.sql(
        "UPDATE tenants SET audit_seq = (SELECT audit_seq FROM tenants WHERE name = 'default'), \
         audit_head = (SELECT audit_head FROM tenants WHERE name = 'default') WHERE name = 'copycat'",
    )
    .await;
    let (_, check) = s.get(&copycat, "/audit/verify").await;
    assert_eq!(check["verified"], false, "{check}");
    assert!(
        check["problem"]
            .as_str()
            .unwrap()
            .starts_with("entry 1 was altered"),
        "{check}"
    );

    let head = s
        .scalar(&format!(
            "SELECT MAX(seq) FROM audit_log WHERE tenant_id = {DEFAULT}"
        ))
        .await;
    s.sql(&format!(
        "DELETE FROM audit_log WHERE tenant_id = {DEFAULT} AND seq = {head}"
    ))
    .await;
    let check = verify(&s, "").await;
    assert_eq!(check["verified"], false);
    assert_eq!(
        check["problem"],
        format!(
            "entries after {} are missing: the chain's head is entry {head}",
            head - 1
        )
    );
    s.finish().await;
}

/// The chain's head is in the same database as the chain: whoever cuts the tail and sets the head back leaves a
/// chain that holds. An anchor saved from an earlier answer catches it; a wrong anchor is named; half an anchor
/// is refused.
async fn an_anchor_kept_outside_catches_a_cut_chain_and_its_head_set_back(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let session = s.session(&t.agent, json!({})).await;
    s.pay(&t.agent, session, "20", "USDC").await;
    let check = verify(&s, "").await;
    let (seq, hash) = (
        check["head_seq"].as_i64().unwrap(),
        check["head_hash"].as_str().unwrap().to_owned(),
    );
    let anchored = format!("?seq={seq}&hash={hash}");
    assert_eq!(verify(&s, &anchored).await["verified"], true);
    let wrong = verify(&s, &format!("?seq={seq}&hash=00")).await;
    assert_eq!(wrong["verified"], false);
    assert!(
        wrong["problem"]
            .as_str()
            .unwrap()
            .contains("not the anchored one"),
        "{wrong}"
    );
    let (status, _) = s
        .get(ADMIN_TOKEN, &format!("/audit/verify?seq={seq}"))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = s
        .get(&t.approver, &format!("/audit/verify{anchored}"))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let previous = s
        .text(&format!(
            "SELECT hash FROM audit_log WHERE tenant_id = {DEFAULT} AND seq = {}",
            seq - 1
        ))
        .await;
    s.sql(&format!(
        "DELETE FROM audit_log WHERE tenant_id = {DEFAULT} AND seq = {seq}"
    ))
    .await;
    s.sql(&format!(
        "UPDATE tenants SET audit_seq = {}, audit_head = '{previous}' WHERE name = 'default'",
        seq - 1
    ))
    .await;
    assert_eq!(
        verify(&s, "").await["verified"],
        true,
        "the chain alone cannot tell"
    );
    let cut = verify(&s, &anchored).await;
    assert_eq!(cut["verified"], false, "{cut}");
    assert!(
        cut["problem"]
            .as_str()
            .unwrap()
            .contains("not in the chain"),
        "{cut}"
    );
    s.finish().await;
}
