//! The audit chain over the real API, on both databases: every field an entry's hash covers matters, a cut tail
//! is named, and an anchor kept outside the database catches a chain cut and its head set back to match. The
//! trail is searched by action, actor, subject and time, a bounded stretch a read.

use paygent_testkit::{ADMIN_TOKEN, Backend, TestServer, on_both_databases};
use reqwest::StatusCode;
use serde_json::{Value, json};

on_both_databases!(
    every_hashed_field_of_an_entry_matters,
    an_anchor_kept_outside_catches_a_cut_chain_and_its_head_set_back,
    the_trail_is_searched_by_action_actor_subject_and_time,
    a_search_reads_a_bounded_stretch_and_says_where_to_go_on,
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

/// `GET /audit?{query}` as the admin, with the `Link` to the next page if there is one.
async fn search(s: &TestServer, query: &str) -> (Vec<Value>, Option<String>) {
    let resp = s
        .send(
            s.http
                .get(s.url(&format!("/audit?{query}")))
                .bearer_auth(ADMIN_TOKEN),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK, "{query}");
    let link = paygent_testkit::next_page(&resp)
        .map(|target| target.split_once('?').expect("a query").1.to_owned());
    let page: Value = resp.json().await.unwrap();
    (page["entries"].as_array().unwrap().clone(), link)
}

fn field<'a>(entries: &'a [Value], name: &str) -> Vec<&'a str> {
    entries.iter().map(|e| e[name].as_str().unwrap()).collect()
}

/// A request approved by a person and a payment allowed at once, found again by the action's family and name,
/// by the person who acted, by what the entries are about, and by time; newest first with `before`. Filters
/// that make no sense are refused 400 or 422.
async fn the_trail_is_searched_by_action_actor_subject_and_time(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let session = s.session(&t.agent, json!({})).await;
    let (_, asked) = s.pay(&t.agent, session, "20", "USDC").await;
    let approval = asked["approval_id"].as_str().unwrap();
    let (status, _) = s.decide(&t.approver, approval, "approve", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    s.pay(&t.agent, session, "1", "USDC").await;
    let approver = s.get(&t.approver, "/me").await.1["key_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let (family, _) = search(&s, "action=approval").await;
    assert_eq!(
        field(&family, "action"),
        ["approval.requested", "approval.approved"]
    );
    let (one, _) = search(&s, "action=approval.approved").await;
    assert_eq!(field(&one, "subject"), [format!("approval:{approval}")]);
    assert_eq!(field(&one, "actor"), [format!("key:{approver}")]);
    let (by, _) = search(&s, &format!("actor={approver}")).await;
    assert_eq!(field(&by, "action"), ["approval.approved"]);
    let (about, _) = search(&s, &format!("subject=approval:{approval}")).await;
    assert_eq!(
        field(&about, "action"),
        ["approval.requested", "approval.approved"]
    );
    let (mine, _) = search(
        &s,
        &format!("session_id={session}&action=payment.authorized"),
    )
    .await;
    assert_eq!(mine.len(), 1, "the payment allowed at once");
    let (system, _) = search(&s, "actor=system").await;
    assert!(system.iter().all(|e| e["actor"] == "system"));
    let (_, everything) = s.get(ADMIN_TOKEN, "/audit").await;
    let all = everything["entries"].as_array().unwrap();
    // Entries written together share their time: the expected halves are cut by time, not by position.
    let middle = all[all.len() / 2]["at"].as_str().unwrap();
    let (from, before): (Vec<Value>, Vec<Value>) = all
        .iter()
        .cloned()
        .partition(|e| e["at"].as_str().unwrap() >= middle);
    assert!(!from.is_empty() && !before.is_empty());
    assert_eq!(
        search(&s, &format!("since={middle}")).await.0,
        from,
        "at or after"
    );
    assert_eq!(
        search(&s, &format!("until={middle}")).await.0,
        before,
        "before"
    );

    let head = everything["head_seq"].as_i64().unwrap();
    let (newest, next) = search(&s, &format!("before={}&limit=2", head + 1)).await;
    assert_eq!(
        newest,
        [all[all.len() - 1].clone(), all[all.len() - 2].clone()]
    );
    assert_eq!(
        next.as_deref(),
        Some(format!("limit=2&before={}", head - 1).as_str())
    );
    let (older, _) = search(&s, next.as_deref().unwrap()).await;
    assert_eq!(older[0], all[all.len() - 3]);

    for (query, status) in [
        ("action=approvals", StatusCode::UNPROCESSABLE_ENTITY),
        ("action=approval.", StatusCode::UNPROCESSABLE_ENTITY),
        ("actor=someone", StatusCode::UNPROCESSABLE_ENTITY),
        ("after=1&before=9", StatusCode::UNPROCESSABLE_ENTITY),
        ("before=0", StatusCode::UNPROCESSABLE_ENTITY),
        ("after=-1", StatusCode::UNPROCESSABLE_ENTITY),
        ("since=yesterday", StatusCode::BAD_REQUEST),
        ("colour=red", StatusCode::BAD_REQUEST),
    ] {
        let (got, problem) = s.get(ADMIN_TOKEN, &format!("/audit?{query}")).await;
        assert_eq!(got, status, "{query}: {problem}");
    }
    let long = format!("/audit?subject={}", "x".repeat(201));
    assert_eq!(
        s.get(ADMIN_TOKEN, &long).await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    s.finish().await;
}

/// With more than a read's 1,000 entries, a filter nothing matches answers an empty page and where to go on, in
/// either direction, and following the links finds what lies beyond.
async fn a_search_reads_a_bounded_stretch_and_says_where_to_go_on(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let first = s.session(&t.agent, json!({})).await;
    for _ in 0..1050 {
        s.session(&t.agent, json!({})).await;
    }
    let last = s.session(&t.agent, json!({})).await;
    let (_, head) = s.get(ADMIN_TOKEN, "/audit?limit=1").await;
    let head = head["head_seq"].as_i64().unwrap();

    let (found, next) = search(&s, &format!("session_id={last}")).await;
    assert!(found.is_empty(), "the first 1,000 entries hold none of it");
    assert_eq!(
        next.as_deref(),
        Some(format!("session_id={last}&after=1000").as_str())
    );
    let (found, next) = search(&s, next.as_deref().unwrap()).await;
    assert_eq!(found.len(), 1);
    assert_eq!(next, None, "the head was reached");

    let back = format!("session_id={first}&before={}", head + 1);
    let (found, next) = search(&s, &back).await;
    assert!(found.is_empty());
    let on = format!("session_id={first}&before={}", head - 999);
    assert_eq!(next.as_deref(), Some(on.as_str()));
    let (found, next) = search(&s, &on).await;
    assert_eq!(found[0]["session_id"], first.to_string());
    assert_eq!(next, None, "the first entry was read");
    s.finish().await;
}
