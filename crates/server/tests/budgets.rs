//! Budgets under concurrency, reservations, currencies, time zones and changes, on both databases.

use chrono::{Duration, TimeZone, Utc};
use futures::future::join_all;
use paygent_testkit::{ADMIN_TOKEN, Backend, TestServer, on_both_databases};
use reqwest::StatusCode;
use rust_decimal::Decimal;
use serde_json::{Value, json};

on_both_databases!(
    concurrent_payments_never_overspend,
    pending_approvals_hold_reservations,
    over_budget_can_route_to_a_person,
    currencies_are_isolated_but_usd_limits_all,
    the_day_rolls_over_at_local_midnight,
    budget_changes_are_audited_and_lowering_breaks_nothing,
    bad_budget_input_changes_nothing,
    edits_rebook_and_executions_settle,
    spend_is_drawn_per_scope_from_what_was_paid,
);

fn dec(v: &Value) -> Decimal {
    Decimal::from_str_exact(
        v.as_str()
            .unwrap_or_else(|| panic!("not a decimal string: {v}")),
    )
    .unwrap()
}

async fn budget(s: &TestServer, token: &str, session: uuid::Uuid) -> Value {
    let (status, body) = s.get(token, &format!("/sessions/{session}/budget")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn concurrent_payments_never_overspend(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let session = s
        .session(&t.agent, json!({"daily_limits": {"USDC": "50"}}))
        .await;
    let results = join_all((0..200).map(|_| s.pay(&t.agent, session, "1.00", "USDC"))).await;
    let mut authorized = 0;
    let mut denied = 0;
    for (status, body) in &results {
        assert_eq!(*status, StatusCode::CREATED, "{body}");
        match body["status"].as_str().unwrap() {
            "authorized" => authorized += 1,
            "denied" => {
                assert_eq!(body["reason"], "budget_exceeded");
                assert!(
                    body["detail"]
                        .as_str()
                        .unwrap()
                        .contains("limit is 50; 0 USDC available"),
                    "{body}"
                );
                denied += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((authorized, denied), (50, 150));
    let b = budget(&s, &t.agent, session).await;
    assert_eq!(dec(&b["currencies"]["USDC"]["spent"]), Decimal::new(50, 0));
    assert_eq!(dec(&b["currencies"]["USDC"]["reserved"]), Decimal::ZERO);
    assert_eq!(dec(&b["currencies"]["USDC"]["available"]), Decimal::ZERO);
    assert_eq!(s.count("events WHERE type = 'budget_exceeded'").await, 150);
    assert_eq!(
        s.count("audit_log WHERE action = 'budget.exceeded'").await,
        150
    );
    s.finish().await;
}

async fn pending_approvals_hold_reservations(backend: Backend) {
    let s = TestServer::start(backend).await;
    // Noon, so that the 15 minutes this test lets pass never cross into the next budget day.
    let noon = chrono::Utc::now()
        .date_naive()
        .and_hms_opt(12, 0, 0)
        .unwrap();
    s.clock.set(noon.and_utc());
    let t = s.team(ADMIN_TOKEN).await;
    let session = s
        .session(&t.agent, json!({"daily_limits": {"USDC": "100"}}))
        .await;
    let mut statuses = Vec::new();
    let mut approvals = Vec::new();
    for _ in 0..5 {
        let (_, p) = s.pay(&t.agent, session, "30", "USDC").await;
        statuses.push(p["status"].as_str().unwrap().to_owned());
        if let Some(a) = p["approval_id"].as_str() {
            approvals.push(a.to_owned());
        }
    }
    assert_eq!(
        statuses,
        [
            "pending_approval",
            "pending_approval",
            "pending_approval",
            "denied",
            "denied"
        ],
        "three pending requests hold $90; the fourth does not fit"
    );
    let b = budget(&s, &t.approver, session).await;
    assert_eq!(
        dec(&b["currencies"]["USDC"]["reserved"]),
        Decimal::new(90, 0)
    );
    assert_eq!(
        dec(&b["currencies"]["USDC"]["available"]),
        Decimal::new(10, 0)
    );

    let (status, _) = s
        .decide(
            &t.approver,
            &approvals[0],
            "reject",
            json!({"reason": "no"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let b = budget(&s, &t.approver, session).await;
    assert_eq!(
        dec(&b["currencies"]["USDC"]["reserved"]),
        Decimal::new(60, 0),
        "rejecting frees $30"
    );
    let (_, p) = s.pay(&t.agent, session, "30", "USDC").await;
    assert_eq!(
        p["status"], "pending_approval",
        "and the freed $30 can be asked for again"
    );

    // Expiry releases too.
    s.clock.advance(Duration::seconds(901));
    let (status, _) = s
        .decide(&t.approver, &approvals[1], "approve", json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let b = budget(&s, &t.approver, session).await;
    assert_eq!(
        dec(&b["currencies"]["USDC"]["reserved"]),
        Decimal::new(60, 0)
    );
    s.finish().await;
}

async fn over_budget_can_route_to_a_person(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let config = json!({"daily_limits": {"USDC": "5"}, "on_budget_exceeded": "require_approval"});
    let session = s.session(&t.agent, config).await;
    let (_, small) = s.pay(&t.agent, session, "4", "USDC").await;
    assert_eq!(small["status"], "authorized");
    let (_, over) = s.pay(&t.agent, session, "2", "USDC").await;
    assert_eq!(
        over["status"], "pending_approval",
        "under the threshold, but over budget"
    );
    let approval = over["approval_id"].as_str().unwrap();
    let (_, request) = s.get(&t.approver, &format!("/approvals/{approval}")).await;
    assert!(
        request["reason"]
            .as_str()
            .unwrap()
            .starts_with("over budget"),
        "{request}"
    );
    s.approve_and_execute(&t.approver, &t.agent, approval).await;
    let b = budget(&s, &t.agent, session).await;
    assert_eq!(dec(&b["currencies"]["USDC"]["spent"]), Decimal::new(6, 0));
    assert_eq!(
        dec(&b["currencies"]["USDC"]["available"]),
        Decimal::new(-1, 0),
        "a person approved past it"
    );
    s.finish().await;
}

async fn currencies_are_isolated_but_usd_limits_all(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let session = s
        .session(&t.agent, json!({"daily_limits": {"USDC": "10"}}))
        .await;
    assert_eq!(
        s.pay(&t.agent, session, "10", "USDC").await.1["status"],
        "authorized"
    );
    assert_eq!(
        s.pay(&t.agent, session, "1", "USDC").await.1["status"],
        "denied"
    );
    assert_eq!(
        s.pay(&t.agent, session, "100", "CRO").await.1["status"],
        "authorized",
        "a USDC limit does not limit CRO"
    );

    let usd = s
        .session(
            &t.agent,
            json!({"daily_limit_usd": "20", "max_per_payment_usd": "9"}),
        )
        .await;
    assert_eq!(
        s.pay(&t.agent, usd, "9", "USDC").await.1["status"],
        "authorized"
    );
    assert_eq!(
        s.pay(&t.agent, usd, "100", "CRO").await.1["status"],
        "authorized",
        "$8 of CRO: $17 in all"
    );
    let (_, denied) = s.pay(&t.agent, usd, "50", "CRO").await;
    assert_eq!(denied["status"], "denied", "$4 more of CRO passes $20");
    assert!(
        denied["detail"].as_str().unwrap().contains("USD"),
        "{denied}"
    );
    let (_, too_big) = s.pay(&t.agent, usd, "9.01", "USDC").await;
    assert_eq!(too_big["reason"], "budget_exceeded");
    assert!(
        too_big["detail"].as_str().unwrap().contains("at most $9"),
        "{too_big}"
    );
    let b = budget(&s, &t.agent, usd).await;
    assert_eq!(dec(&b["usd"]["spent"]), Decimal::new(17, 0));
    assert_eq!(dec(&b["usd"]["available"]), Decimal::new(3, 0));
    assert_eq!(dec(&b["currencies"]["CRO"]["spent"]), Decimal::new(100, 0));
    assert!(b["currencies"]["CRO"]["limit"].is_null());
    s.finish().await;
}

async fn the_day_rolls_over_at_local_midnight(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    // 14:59 UTC is 23:59 in Tokyo; two minutes later Tokyo has a new day, UTC does not.
    s.clock
        .set(Utc.with_ymd_and_hms(2026, 3, 10, 14, 59, 0).unwrap());
    let tokyo = s
        .session(
            &t.agent,
            json!({"daily_limits": {"USDC": "10"}, "budget_time_zone": "Asia/Tokyo"}),
        )
        .await;
    let utc = s
        .session(&t.agent, json!({"daily_limits": {"USDC": "10"}}))
        .await;
    for session in [tokyo, utc] {
        assert_eq!(
            s.pay(&t.agent, session, "10", "USDC").await.1["status"],
            "authorized"
        );
        assert_eq!(
            s.pay(&t.agent, session, "1", "USDC").await.1["status"],
            "denied"
        );
    }
    let b = budget(&s, &t.agent, tokyo).await;
    assert_eq!(b["day"], "2026-03-10");
    assert_eq!(b["resets_at"], "2026-03-10T15:00:00Z");

    s.clock.advance(Duration::minutes(2));
    assert_eq!(
        s.pay(&t.agent, tokyo, "1", "USDC").await.1["status"],
        "authorized",
        "a new day in Tokyo"
    );
    assert_eq!(
        s.pay(&t.agent, utc, "1", "USDC").await.1["status"],
        "denied",
        "still the same day in UTC"
    );
    let b = budget(&s, &t.agent, tokyo).await;
    assert_eq!(b["day"], "2026-03-11");
    assert_eq!(dec(&b["currencies"]["USDC"]["spent"]), Decimal::ONE);
    s.finish().await;
}

async fn budget_changes_are_audited_and_lowering_breaks_nothing(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let session = s
        .session(&t.agent, json!({"daily_limits": {"USDC": "100"}}))
        .await;
    assert_eq!(
        s.pay(&t.agent, session, "10", "USDC").await.1["status"],
        "authorized"
    );
    assert_eq!(
        s.pay(&t.agent, session, "10", "USDC").await.1["status"],
        "authorized"
    );
    let (_, pending) = s.pay(&t.agent, session, "15", "USDC").await;
    assert_eq!(pending["status"], "pending_approval");

    let path = format!("/sessions/{session}/budget");
    let (status, _) = s
        .call(&t.agent, reqwest::Method::PUT, &path, Some(json!({})))
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "agents do not set their own budgets"
    );
    let (status, b) = s
        .call(
            &t.approver,
            reqwest::Method::PUT,
            &path,
            Some(json!({"daily_limits": {"USDC": "5"}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{b}");
    assert_eq!(
        dec(&b["currencies"]["USDC"]["available"]),
        Decimal::new(-30, 0)
    );

    let (_, denied) = s.pay(&t.agent, session, "1", "USDC").await;
    assert_eq!(denied["reason"], "budget_exceeded");
    let approval = pending["approval_id"].as_str().unwrap();
    let (status, _) = s.decide(&t.approver, &approval, "approve", json!({})).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a request filed before the change can still be decided"
    );
    let (status, _) = s
        .post(
            &t.agent,
            "/payments/execute-approved",
            json!({"approval_id": approval}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, session_view) = s.get(&t.agent, &format!("/sessions/{session}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        dec(&session_view["budget"]["currencies"]["USDC"]["spent"]),
        Decimal::new(35, 0)
    );

    let (_, audit) = s.get(&t.admin, "/audit?limit=1000").await;
    let change = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "budget.changed")
        .expect("the change is audited");
    assert_eq!(change["data"]["old"]["daily_limits"]["USDC"], "100");
    assert_eq!(change["data"]["new"]["daily_limits"]["USDC"], "5");
    s.finish().await;
}

async fn bad_budget_input_changes_nothing(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let session = s
        .session(&t.agent, json!({"daily_limits": {"USDC": "100"}}))
        .await;
    let before = budget(&s, &t.approver, session).await;
    let audit_before = s.count("audit_log").await;
    let path = format!("/sessions/{session}/budget");
    for (body, expected) in [
        (
            json!({"daily_limits": {"USDC": "-1"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"daily_limits": {"DOGE": "10"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"budget_time_zone": "Mars/Olympus_Mons"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"daily_limit_usd": "-5"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"daily_limits": {"USDC": 10}}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"daily_limits": {"USDC": "1e3"}}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"on_budget_exceeded": "shrug"}),
            StatusCode::BAD_REQUEST,
        ),
        (json!({"limits": {}}), StatusCode::BAD_REQUEST),
    ] {
        let (status, problem) = s
            .call(&t.approver, reqwest::Method::PUT, &path, Some(body.clone()))
            .await;
        assert_eq!(status, expected, "{body}: {problem}");
        assert_eq!(problem["status"], expected.as_u16());
        assert!(problem["detail"].is_string());
    }
    let (status, _) = s
        .post(
            &t.agent,
            "/sessions",
            json!({"config": {"budget_time_zone": "Nowhere"}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        budget(&s, &t.approver, session).await,
        before,
        "nothing changed"
    );
    assert_eq!(s.count("audit_log").await, audit_before);
    s.finish().await;
}

async fn edits_rebook_and_executions_settle(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let session = s
        .session(&t.agent, json!({"daily_limits": {"USDC": "100"}}))
        .await;
    let (_, a) = s.pay(&t.agent, session, "30", "USDC").await;
    let (_, b) = s.pay(&t.agent, session, "60", "USDC").await;
    let (a, b) = (
        a["approval_id"].as_str().unwrap(),
        b["approval_id"].as_str().unwrap(),
    );
    let usdc = |v: &Value| v["currencies"]["USDC"].clone();

    // Raising b by $20 needs $20 more than the $10 left: refused with the budget's words, nothing moves.
    let (status, problem) = s
        .decide(
            &t.admin,
            &b,
            "edit",
            json!({"edited_args": {"amount": "80"}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("budget"),
        "{problem}"
    );
    let (_, still) = s.get(&t.admin, &format!("/approvals/{b}")).await;
    assert_eq!(still["status"], "pending");
    assert_eq!(
        dec(&usdc(&budget(&s, &t.admin, session).await)["reserved"]),
        Decimal::new(90, 0)
    );

    // Raising it by $10 fits exactly.
    let (status, _) = s
        .decide(
            &t.admin,
            &b,
            "edit",
            json!({"edited_args": {"amount": "70"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        dec(&usdc(&budget(&s, &t.admin, session).await)["reserved"]),
        Decimal::new(100, 0)
    );
    // Lowering always fits, and frees the difference.
    s.decide(
        &t.approver,
        &a,
        "edit",
        json!({"edited_args": {"amount": "20"}}),
    )
    .await;
    let now = usdc(&budget(&s, &t.admin, session).await);
    assert_eq!(dec(&now["reserved"]), Decimal::new(90, 0));

    for approval in [a, b] {
        let (status, _) = s
            .post(
                &t.agent,
                "/payments/execute-approved",
                json!({"approval_id": approval}),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    let now = usdc(&budget(&s, &t.admin, session).await);
    assert_eq!(dec(&now["reserved"]), Decimal::ZERO);
    assert_eq!(dec(&now["spent"]), Decimal::new(90, 0));

    // A payment the agent reports failed gives its spend back.
    let (_, p) = s.pay(&t.agent, session, "5", "USDC").await;
    let path = format!("/payments/{}/outcome", p["id"].as_str().unwrap());
    let (status, _) = s.post(&t.agent, &path, json!({"status": "failed"})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        dec(&usdc(&budget(&s, &t.admin, session).await)["spent"]),
        Decimal::new(90, 0)
    );
    // One reported failed with a transaction may have moved money: its spend stays.
    let (_, p) = s.pay(&t.agent, session, "4", "USDC").await;
    let path = format!("/payments/{}/outcome", p["id"].as_str().unwrap());
    let hash = format!("0x{}", "cd".repeat(32));
    let (status, failed) = s
        .post(
            &t.agent,
            &path,
            json!({"status": "failed", "tx_hash": hash}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{failed}");
    assert_eq!(
        dec(&usdc(&budget(&s, &t.admin, session).await)["spent"]),
        Decimal::new(94, 0)
    );
    s.finish().await;
}

/// `GET /spend?{query}` as `token`: status and body.
async fn spend(s: &TestServer, token: &str, query: &str) -> (StatusCode, Value) {
    s.get(token, &format!("/spend?{query}")).await
}

/// (USD, payments) of a point of a spend picture.
fn point(v: &Value) -> (Decimal, i64) {
    (dec(&v["usd"]), v["payments"].as_i64().unwrap())
}

/// Spend per tenant, agent and session, by hour and day, with top payees and limits, equals what was paid: a
/// failed payment is taken back, an approved one counts once executed, another day's lands on its day; agents,
/// two scopes at once, strangers and bad ids are refused.
async fn spend_is_drawn_per_scope_from_what_was_paid(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let payee = paygent_testkit::PAYEE.to_owned();
    let rules = json!({"limits": [{"period": "day", "usd": "1000"}],
        "payees": {"labels": {&payee: "Weather API"}}});
    let (_, bound) = s.bound_agent("Ops Bot", rules).await;
    let (sa, sb) = (
        s.session(&bound, json!({"daily_limit_usd": "100"})).await,
        s.session(&bound, json!({})).await,
    );
    let sc = s.session(&t.agent, json!({})).await;
    let noon = Utc::now()
        .date_naive()
        .and_hms_opt(12, 0, 0)
        .unwrap()
        .and_utc();
    s.clock.set(noon - Duration::days(2));
    assert_eq!(s.pay(&bound, sa, "3", "USDC").await.0, StatusCode::CREATED);
    s.clock.set(noon);
    let other = "0x2222222222222222222222222222222222222222";
    let body = json!({"session_id": sa, "amount": "4", "currency": "USDC", "recipient": other});
    assert_eq!(
        s.post(&bound, "/payments", body).await.0,
        StatusCode::CREATED
    );
    let (_, asked) = s.pay(&bound, sb, "25", "USDC").await;
    let approval = asked["approval_id"].as_str().unwrap();
    let (_, before) = spend(&s, &t.approver, "").await;
    assert_eq!(
        point(&before["days"][29]).1,
        1,
        "a pending payment is not spend"
    );
    s.approve_and_execute(&t.approver, &bound, approval).await;
    let (_, failed) = s.pay(&bound, sa, "5", "USDC").await;
    let path = format!("/payments/{}/outcome", failed["id"].as_str().unwrap());
    assert_eq!(
        s.post(&bound, &path, json!({"status": "failed"})).await.0,
        StatusCode::OK
    );
    assert_eq!(
        s.pay(&t.agent, sc, "2", "USDC").await.0,
        StatusCode::CREATED
    );

    let (status, tenant) = spend(&s, &t.approver, "").await;
    assert_eq!(status, StatusCode::OK, "{tenant}");
    assert_eq!(tenant["scope"], "tenant");
    let (hours, days) = (
        tenant["hours"].as_array().unwrap(),
        tenant["days"].as_array().unwrap(),
    );
    assert_eq!((hours.len(), days.len()), (24, 30));
    let d = |n: i64| (Decimal::new(n, 0), 0);
    assert_eq!(point(&hours[23]), (d(31).0, 3), "this hour: 4 + 25 + 2");
    assert_eq!(point(&days[29]), (d(31).0, 3));
    assert_eq!(point(&days[27]), (d(3).0, 1), "two days ago");
    assert_eq!(point(&days[28]), d(0));
    let paid = spent_today(&s).await;
    assert_eq!(
        paid,
        d(31).0,
        "the picture equals the payments the API lists"
    );
    let top: Vec<(String, Decimal)> = tenant["top_payees"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["payee"].as_str().unwrap().to_owned(), dec(&p["usd"])))
        .collect();
    assert_eq!(top, [(payee.clone(), d(30).0), (other.to_owned(), d(4).0)]);
    assert!(
        tenant["top_payees"][0].get("label").is_none(),
        "the default policy names none"
    );

    let (_, me) = s.get(&bound, "/me").await;
    let agent = me["key_id"].as_str().unwrap();
    let (status, mine) = spend(&s, &t.admin, &format!("agent_id={agent}")).await;
    assert_eq!(status, StatusCode::OK, "{mine}");
    assert_eq!(
        (mine["scope"].as_str(), mine["name"].as_str()),
        (Some("agent"), Some("Ops Bot"))
    );
    assert_eq!(point(&mine["days"][29]), (d(29).0, 2));
    assert_eq!(point(&mine["days"][27]), (d(3).0, 1));
    let named = &mine["top_payees"][0];
    assert_eq!(
        (named["payee"].as_str(), named["label"].as_str()),
        (Some(payee.as_str()), Some("Weather API"))
    );
    let limit = &mine["limits"][0];
    assert_eq!(
        (limit["period"].as_str(), dec(&limit["limit"])),
        (Some("day"), d(1000).0)
    );
    assert_eq!(
        (dec(&limit["spent"]), dec(&limit["reserved"])),
        (d(29).0, d(0).0),
        "{mine}"
    );

    let (_, one) = spend(&s, &t.approver, &format!("session_id={sa}")).await;
    assert_eq!(
        (one["scope"].as_str(), one["name"].as_str()),
        (Some("session"), Some("test"))
    );
    assert_eq!(
        point(&one["days"][29]),
        (d(4).0, 1),
        "the failed 5 is taken back"
    );
    let usd = &one["budget"]["usd"];
    assert_eq!(
        (dec(&usd["limit"]), dec(&usd["spent"])),
        (d(100).0, d(4).0),
        "{one}"
    );
    assert_eq!(one["limits"], json!([]));

    for (labels, field) in [
        (
            json!({&payee: "x".repeat(101)}),
            format!("payees.labels[{payee:?}]"),
        ),
        (json!({"bob": "Bob"}), "payees.labels[\"bob\"]".to_owned()),
    ] {
        let body = json!({"name": "labelled", "payees": {"labels": labels}});
        let (status, problem) = s.post(ADMIN_TOKEN, "/policies", body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains(&field),
            "{problem}"
        );
    }
    let stranger = s.team(&s.tenant("other").await).await;
    let (_, theirs) = spend(&s, &stranger.approver, "").await;
    assert_eq!(
        point(&theirs["days"][29]),
        d(0),
        "another tenant's spend is its own"
    );
    let unknown = uuid::Uuid::now_v7();
    for (token, query, want) in [
        (&t.agent, String::new(), StatusCode::FORBIDDEN),
        (&bound, format!("session_id={sa}"), StatusCode::FORBIDDEN),
        (
            &t.approver,
            format!("agent_id={agent}&session_id={sa}"),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            &t.approver,
            format!("agent_id={unknown}"),
            StatusCode::NOT_FOUND,
        ),
        (
            &stranger.approver,
            format!("session_id={sa}"),
            StatusCode::NOT_FOUND,
        ),
        (
            &stranger.approver,
            format!("agent_id={agent}"),
            StatusCode::NOT_FOUND,
        ),
        (
            &t.approver,
            "agent_id=ops".to_owned(),
            StatusCode::BAD_REQUEST,
        ),
        (
            &t.approver,
            "colour=red".to_owned(),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let (status, problem) = spend(&s, token, &query).await;
        assert_eq!(status, want, "{query}: {problem}");
        assert_eq!(problem["status"], want.as_u16(), "{problem}");
    }
    s.finish().await;
}

/// The USD value of today's spent payments (authorized or executed), as `GET /payments` lists them.
async fn spent_today(s: &TestServer) -> Decimal {
    let (status, list) = s.get(ADMIN_TOKEN, "/payments?limit=500").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let today = Utc::now().date_naive().to_string();
    list.as_array()
        .unwrap()
        .iter()
        .filter(|p| matches!(p["status"].as_str(), Some("authorized" | "executed")))
        .filter(|p| p["created_at"].as_str().unwrap().starts_with(&today))
        .map(|p| dec(&p["usd_value"]))
        .sum()
}
