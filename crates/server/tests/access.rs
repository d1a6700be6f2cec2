//! Authentication, roles, tenants and bad input, over real HTTP on both databases.

use paygent_engine::domain::Role;
use paygent_testkit::{ADMIN_TOKEN, Backend, TestServer, on_both_databases};
use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

on_both_databases!(
    agents_never_decide,
    tenants_never_see_each_other,
    keys_are_stored_hashed_and_need_admins,
    bad_input_gets_a_problem_and_writes_nothing,
    service_endpoints_answer,
    each_key_is_rate_limited,
    people_list_sessions_and_admins_verify_the_chain,
    agents_reach_only_their_own,
    the_key_that_asks_never_decides,
    revoked_and_expired_keys_stop_at_once,
    lists_page_with_links,
    decided_requests_are_found_by_filters,
);

async fn agents_never_decide(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let session = s.session(&t.agent, json!({})).await;
    let (_, p) = s.pay(&t.agent, session, "20", "USDC").await;
    let approval = p["approval_id"].as_str().unwrap();
    for (path, body) in [
        ("approve", json!({})),
        ("reject", json!({"reason": "no"})),
        ("edit", json!({"edited_args": {"amount": "1"}})),
    ] {
        let (status, problem) = s
            .post(&t.agent, &format!("/approvals/{approval}/{path}"), body)
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {problem}");
        assert_eq!(problem["status"], 403);
    }
    let (status, _) = s.get(&t.agent, "/approvals/pending").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, own) = s.get(&t.agent, &format!("/approvals/{approval}")).await;
    assert_eq!(status, StatusCode::OK, "an agent reads its own request");
    assert_eq!(own["status"], "pending");
    let (status, _) = s.pay(&t.approver, session, "1", "USDC").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "approvers do not spend");
    let (_, still) = s.get(&t.approver, &format!("/approvals/{approval}")).await;
    assert_eq!(still["status"], "pending");
    s.finish().await;
}

async fn tenants_never_see_each_other(backend: Backend) {
    let s = TestServer::start(backend).await;
    let a = s.team(ADMIN_TOKEN).await;
    let other_admin = s.tenant("other").await;
    let b = s.team(&other_admin).await;
    let session = s.session(&a.agent, json!({})).await;
    let (_, p) = s.pay(&a.agent, session, "20", "USDC").await;
    let approval = p["approval_id"].as_str().unwrap();
    let payment = p["id"].as_str().unwrap();

    for path in [
        format!("/approvals/{approval}"),
        format!("/payments/{payment}"),
        format!("/sessions/{session}"),
    ] {
        let (status, body) = s.get(&b.approver.clone(), &path).await;
        let (status_admin, _) = s.get(&b.admin, &path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        assert_eq!(status_admin, StatusCode::NOT_FOUND, "{path}");
    }
    let (status, _) = s.decide(&b.approver, &approval, "approve", json!({})).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "another tenant's approver cannot decide"
    );
    let (status, _) = s
        .post(
            &b.agent,
            "/payments/execute-approved",
            json!({"approval_id": approval}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = s.pay(&b.agent, session, "1", "USDC").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nor pay from its session");
    let (_, pending) = s.get(&b.approver, "/approvals/pending").await;
    assert_eq!(pending, json!([]));
    let (_, listed) = s.get(&b.admin, "/payments").await;
    assert_eq!(listed, json!([]));
    let (_, audit) = s.get(&b.admin, "/audit").await;
    assert!(
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["subject"] != format!("approval:{approval}")),
        "audit trails are per tenant"
    );
    let (status, _) = s.post(&b.admin, "/tenants", json!({"name": "third"})).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "only the default tenant's admins create tenants"
    );

    let (_, still) = s.get(&a.approver, &format!("/approvals/{approval}")).await;
    assert_eq!(still["status"], "pending");
    s.finish().await;
}

async fn keys_are_stored_hashed_and_need_admins(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let (status, _) = s
        .post(&t.approver, "/keys", json!({"name": "x", "role": "admin"}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = s
        .post(&t.agent, "/keys", json!({"name": "x", "role": "approver"}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = s
        .post(&t.admin, "/keys", json!({"name": "x", "role": "root"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    let hash = hex(&t.agent);
    let stored = s
        .scalar(&format!(
            "SELECT COUNT(*) FROM api_keys WHERE token_hash = '{hash}'"
        ))
        .await;
    assert_eq!(stored, 1, "the hash is stored");
    let clear = s
        .scalar(&format!(
            "SELECT COUNT(*) FROM api_keys WHERE token_hash = '{}'",
            t.agent
        ))
        .await;
    assert_eq!(clear, 0, "the token is not");
    let (_, audit) = s.get(&t.admin, "/audit?limit=1000").await;
    assert!(
        !audit.to_string().contains(&t.agent),
        "tokens never reach the audit trail"
    );
    s.finish().await;
}

fn hex(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn bad_input_gets_a_problem_and_writes_nothing(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let session = s.session(&t.agent, json!({})).await;
    let (_, p) = s.pay(&t.agent, session, "20", "USDC").await;
    let approval = p["approval_id"].as_str().unwrap().to_owned();
    let tables = [
        "payments",
        "approval_requests",
        "audit_log",
        "events",
        "sessions",
        "api_keys",
    ];
    let mut before = Vec::new();
    for table in tables {
        before.push(s.count(table).await);
    }

    let pay = |fields: Value| {
        let mut body = json!({
            "session_id": session, "amount": "5", "currency": "USDC",
            "recipient": "0x1111111111111111111111111111111111111111",
        });
        for (k, v) in fields.as_object().unwrap() {
            if v.is_null() {
                body.as_object_mut().unwrap().remove(k);
            } else {
                body[k] = v.clone();
            }
        }
        body.to_string()
    };
    let unknown = uuid::Uuid::new_v4();
    let huge = format!("{{\"description\": \"{}\"}}", "x".repeat(100 * 1024));
    let cases: Vec<(&str, String, String, StatusCode)> = vec![
        (
            "POST",
            "/payments".into(),
            "{".into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/payments".into(),
            "".into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/payments".into(),
            "[]".into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/payments".into(),
            pay(json!({"amount": 5})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/payments".into(),
            pay(json!({"session_id": 7})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/payments".into(),
            pay(json!({"session_id": "not-a-uuid"})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/payments".into(),
            pay(json!({"amount": null})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/payments".into(),
            pay(json!({"surprise": "1"})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/payments".into(),
            pay(json!({"amount": "-5"})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "POST",
            "/payments".into(),
            pay(json!({"amount": "0"})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "POST",
            "/payments".into(),
            pay(json!({"amount": "NaN"})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "POST",
            "/payments".into(),
            pay(json!({"amount": "1e3"})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "POST",
            "/payments".into(),
            pay(json!({"amount": "1.2.3"})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "POST",
            "/payments".into(),
            pay(json!({"amount": "99999999999999999999"})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "POST",
            "/payments".into(),
            pay(json!({"amount": "1.0000001"})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "POST",
            "/payments".into(),
            pay(json!({"currency": "DOGE"})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "POST",
            "/payments".into(),
            pay(json!({"currency": "usdc"})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "POST",
            "/payments".into(),
            pay(json!({"recipient": "0x123"})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "POST",
            "/payments".into(),
            pay(json!({"recipient": "ftp://x"})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "POST",
            "/payments".into(),
            pay(json!({"idempotency_key": ""})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "POST",
            "/payments".into(),
            pay(json!({"session_id": unknown})),
            StatusCode::NOT_FOUND,
        ),
        (
            "POST",
            "/payments".into(),
            huge.clone(),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "POST",
            "/sessions".into(),
            json!({"config": {"approval_threshold_usd": 10}}).to_string(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/sessions".into(),
            json!({"config": {"approval_timeout_seconds": 0}}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "POST",
            "/sessions".into(),
            json!({"wallet_address": "me"}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "GET",
            "/approvals/not-a-uuid".into(),
            String::new(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "GET",
            format!("/approvals/{unknown}"),
            String::new(),
            StatusCode::NOT_FOUND,
        ),
        (
            "GET",
            format!("/payments/{unknown}"),
            String::new(),
            StatusCode::NOT_FOUND,
        ),
        (
            "GET",
            format!("/sessions/{unknown}"),
            String::new(),
            StatusCode::NOT_FOUND,
        ),
        (
            "GET",
            "/payments?limit=lots".into(),
            String::new(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            format!("/approvals/{unknown}/approve"),
            "{}".into(),
            StatusCode::NOT_FOUND,
        ),
        (
            "POST",
            format!("/approvals/{approval}/approve"),
            "{\"comment\": 5}".into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            format!("/approvals/{approval}/reject"),
            "{}".into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            format!("/approvals/{approval}/edit"),
            "{\"edited_args\": \"x\"}".into(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "POST",
            "/payments/execute-approved".into(),
            json!({"approval_id": unknown}).to_string(),
            StatusCode::NOT_FOUND,
        ),
        (
            "POST",
            "/payments/execute-approved".into(),
            json!({"approval_id": approval}).to_string(),
            StatusCode::FORBIDDEN,
        ),
        (
            "GET",
            "/no-such-route".into(),
            String::new(),
            StatusCode::NOT_FOUND,
        ),
        (
            "DELETE",
            "/payments".into(),
            String::new(),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
    ];
    for (method, path, body, expected) in cases {
        // Approvers try the approval routes, and execute-approved, which only agents and admins may call.
        let approver_route = path.starts_with("/approvals")
            || (path == "/payments/execute-approved" && expected == StatusCode::FORBIDDEN);
        let token = if approver_route {
            &t.approver
        } else {
            &t.agent
        };
        let mut req = s
            .http
            .request(method.parse().unwrap(), s.url(&path))
            .bearer_auth(token);
        if method == "POST" {
            req = req
                .header(CONTENT_TYPE, "application/json")
                .body(body.clone());
        }
        let resp = s.send(req).await;
        let status = resp.status();
        let ctype = resp.headers()[CONTENT_TYPE].to_str().unwrap().to_owned();
        let problem: Value = resp.json().await.unwrap();
        let shown = if body.len() > 200 {
            "<huge body>"
        } else {
            body.as_str()
        };
        assert_eq!(status, expected, "{method} {path} {shown}: {problem}");
        assert_eq!(ctype, "application/problem+json", "{method} {path}");
        assert_eq!(problem["status"], status.as_u16());
        for field in ["type", "title", "detail"] {
            assert!(problem[field].is_string(), "{field} in {problem}");
        }
    }

    // No key, a wrong key, and JSON without its content type.
    let resp = s.send(s.http.get(s.url("/payments"))).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    let (status, _) = s.get("pgk_wrong", "/payments").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let resp = s
        .send(
            s.http
                .post(s.url("/payments"))
                .bearer_auth(&t.agent)
                .body(pay(json!({}))),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    for (table, n) in tables.iter().zip(before) {
        assert_eq!(s.count(table).await, n, "bad input wrote to {table}");
    }
    s.finish().await;
}

async fn service_endpoints_answer(backend: Backend) {
    let s = TestServer::start(backend).await;
    for path in ["/healthz", "/readyz"] {
        let resp = s.send(s.http.get(format!("{}{path}", s.base))).await;
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
    }
    let resp = s.send(s.http.get(s.url("/openapi.json"))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let doc: Value = resp.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/api/v1/keys",
        "/api/v1/sessions",
        "/api/v1/sessions/{id}",
        "/api/v1/payments",
        "/api/v1/payments/{id}",
        "/api/v1/payments/{id}/outcome",
        "/api/v1/payments/execute-approved",
        "/api/v1/approvals/pending",
        "/api/v1/approvals/{id}",
        "/api/v1/approvals/{id}/approve",
        "/api/v1/approvals/{id}/reject",
        "/api/v1/approvals/{id}/edit",
        "/api/v1/audit",
        "/api/v1/ws",
        "/api/v1/events",
        "/api/v1/spend",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is documented");
    }
    let spend = &doc["paths"]["/api/v1/spend"]["get"]["responses"];
    for status in ["200", "400", "403", "404", "422"] {
        assert!(spend[status].is_object(), "GET /spend lists {status}");
    }
    // The live channel is published as what it answers: an upgrade, or a stream of server-sent events.
    assert!(doc["paths"]["/api/v1/ws"]["get"]["responses"]["101"].is_object());
    let sse = &doc["paths"]["/api/v1/events"]["get"]["responses"]["200"]["content"];
    assert!(sse["text/event-stream"].is_object(), "{sse}");
    // Every operation publishes the statuses any request may get, and problems in their own media type.
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            operations += 1;
            let responses = op["responses"].as_object().unwrap();
            let mut shared = vec!["401", "408", "429", "500", "503"];
            if op.get("requestBody").is_some() {
                shared.extend(["400", "413", "415"]);
            }
            for status in shared {
                let problem = &responses[status]["content"]["application/problem+json"];
                assert!(problem.is_object(), "{method} {path} lists {status}");
            }
            for (status, response) in responses {
                let json = &response["content"]["application/json"]["schema"]["$ref"];
                assert_ne!(
                    json, "#/components/schemas/Problem",
                    "{method} {path} {status}"
                );
            }
        }
    }
    assert!(operations > 30, "{operations} operations");
    // Request schemas say what the server enforces.
    let schemas = &doc["components"]["schemas"];
    for (schema, field, rule) in [
        ("CreatePayment", "amount", "pattern"),
        ("CreatePayment", "currency", "pattern"),
        ("CreatePayment", "recipient", "pattern"),
        ("CreatePayment", "recipient", "maxLength"),
        ("CreatePayment", "description", "maxLength"),
        ("CreatePayment", "idempotency_key", "maxLength"),
        ("CreateSession", "wallet_address", "pattern"),
        ("CreateKey", "name", "maxLength"),
        ("Reject", "reason", "minLength"),
        ("Approve", "comment", "maxLength"),
        ("NewPolicy", "name", "maxLength"),
        ("PolicyRules", "approval_threshold_usd", "pattern"),
        ("PolicyRules", "max_approval_timeout_seconds", "maximum"),
        ("PolicyRules", "max_pending_approvals", "minimum"),
        ("PolicyRules", "limits", "maxItems"),
        ("ToolThresholds", "swap", "pattern"),
        ("SwapRules", "max_slippage_bps", "maximum"),
        ("SwapRules", "max_price_impact_bps", "maximum"),
        ("SwapRules", "tokens", "maxItems"),
        ("Limit", "usd", "pattern"),
        ("Payees", "allow", "maxItems"),
        ("SessionConfig", "approval_threshold_usd", "pattern"),
        ("SessionConfig", "approval_timeout_seconds", "maximum"),
        ("BudgetConfig", "daily_limit_usd", "pattern"),
    ] {
        let property = &schemas[schema]["properties"][field];
        assert!(
            !property[rule].is_null(),
            "{schema}.{field} has a {rule}: {property}"
        );
    }
    // Rules, policies, session configs and budgets refuse fields they do not know, and say so.
    for schema in [
        "PolicyRules",
        "NewPolicy",
        "ToolThresholds",
        "Limit",
        "Payees",
        "SwapRules",
        "SessionConfig",
        "BudgetConfig",
    ] {
        assert_eq!(schemas[schema]["additionalProperties"], false, "{schema}");
    }
    // As the document says: a problem, in its media type, for a request without a key.
    let resp = s.send(s.http.get(s.url("/payments"))).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers()[CONTENT_TYPE], "application/problem+json");
    s.finish().await;
}

async fn each_key_is_rate_limited(backend: Backend) {
    let settings = paygent_testkit::Settings {
        rate_limit: Some(paygent_server::RateLimit {
            per_second: 1,
            burst: 5,
        }),
        ..Default::default()
    };
    let s = TestServer::start_with(backend, settings).await;
    let t = s.team(ADMIN_TOKEN).await;
    for _ in 0..5 {
        assert_eq!(s.get(&t.agent, "/me").await.0, StatusCode::OK);
    }
    let resp = s.send(s.http.get(s.url("/me")).bearer_auth(&t.agent)).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.headers()["retry-after"], "1");
    assert_eq!(resp.headers()[CONTENT_TYPE], "application/problem+json");
    assert_eq!(
        s.get(&t.approver, "/me").await.0,
        StatusCode::OK,
        "other keys are not slowed"
    );
    s.finish().await;
}

async fn people_list_sessions_and_admins_verify_the_chain(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let other_agent = s
        .key(ADMIN_TOKEN, paygent_engine::domain::Role::Agent)
        .await;
    let mine = s
        .session(&t.agent, json!({"daily_limits": {"USDC": "100"}}))
        .await;
    let theirs = s.session(&other_agent, json!({})).await;
    s.pay(&t.agent, mine, "20", "USDC").await;

    // People see the tenant's sessions with today's budget; an agent sees its own; another tenant none.
    let (status, list) = s.get(&t.approver, "/sessions").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [theirs.to_string(), mine.to_string()]);
    let budget = &list[1]["budget"];
    assert_eq!(budget["currencies"]["USDC"]["reserved"], "20", "{budget}");
    let (_, own) = s.get(&t.agent, "/sessions").await;
    assert_eq!(own.as_array().unwrap().len(), 1);
    assert_eq!(own[0]["id"], mine.to_string());
    let stranger = s.tenant("stranger").await;
    let (_, none) = s.get(&stranger, "/sessions").await;
    assert_eq!(none, json!([]));
    let (status, problem) = s.get(&t.approver, "/sessions?limit=many").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");

    // The chain holds; only admins may walk it; an altered entry is named.
    let (status, check) = s.get(ADMIN_TOKEN, "/audit/verify").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(check["verified"], true, "{check}");
    assert_eq!(check["entries"], check["head_seq"]);
    let (status, _) = s.get(&t.approver, "/audit/verify").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    s.sql("UPDATE audit_log SET data = '{}' WHERE seq = 2")
        .await;
    let (_, check) = s.get(ADMIN_TOKEN, "/audit/verify").await;
    assert_eq!(check["verified"], false);
    assert_eq!(
        check["problem"],
        "entry 2 was altered: its content does not match its hash"
    );
    s.finish().await;
}

/// Two agents of one tenant: neither reaches the other's sessions or anything hanging off them (404, as across
/// tenants); people see both.
async fn agents_reach_only_their_own(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let other = s.key(&t.admin, Role::Agent).await;
    let session = s.session(&t.agent, json!({})).await;
    let (_, pending) = s.pay(&t.agent, session, "20", "USDC").await;
    let (_, paid) = s.pay(&t.agent, session, "2", "USDC").await;
    let steps = json!([{"tool": "wait", "args": {"seconds": 30}}]);
    let execution = s.execute(&t.agent, session, steps).await;
    let (approval, payment, execution) = (
        pending["approval_id"].as_str().unwrap(),
        paid["id"].as_str().unwrap(),
        execution["id"].as_str().unwrap(),
    );
    let reads = [
        format!("/sessions/{session}"),
        format!("/sessions/{session}/budget"),
        format!("/payments/{payment}"),
        format!("/approvals/{approval}"),
        format!("/executions/{execution}"),
    ];
    for path in &reads {
        let (status, body) = s.get(&other, path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        assert_eq!(s.get(&t.agent, path).await.0, StatusCode::OK, "{path}");
        assert_eq!(s.get(&t.approver, path).await.0, StatusCode::OK, "{path}");
    }
    let writes = [
        (
            format!("/payments/{payment}/outcome"),
            json!({"status": "failed"}),
        ),
        (
            "/payments/execute-approved".into(),
            json!({"approval_id": approval}),
        ),
        (format!("/executions/{execution}/cancel"), json!({})),
    ];
    for (path, body) in &writes {
        let (status, problem) = s.post(&other, path, body.clone()).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {problem}");
    }
    let (status, _) = s.pay(&other, session, "1", "USDC").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nor pay on its session");
    // Nor claim its payment by repeating its request and idempotency key.
    let keyed = json!({"session_id": session, "amount": "3", "currency": "USDC",
        "recipient": "https://api.example/data", "idempotency_key": "order-1"});
    let (status, first) = s.post(&t.agent, "/payments", keyed.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let (status, problem) = s.post(&other, "/payments", keyed.clone()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert!(problem.get("id").is_none(), "{problem}");
    let (_, again) = s.post(&t.agent, "/payments", keyed).await;
    assert_eq!(again["id"], first["id"], "its own key still gets it");
    let (status, _) = s
        .post(
            &other,
            "/agent/execute",
            json!({"session_id": session, "steps": [{"tool": "wait", "args": {"seconds": 1}}]}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nor run on it");
    for list in ["/payments", "/executions", "/sessions"] {
        let (_, listed) = s.get(&other, list).await;
        assert_eq!(listed, json!([]), "{list}");
        let (_, own) = s.get(&t.agent, list).await;
        assert!(!own.as_array().unwrap().is_empty(), "{list}");
    }
    let (_, listed) = s
        .get(&other, &format!("/payments?session_id={session}"))
        .await;
    assert_eq!(listed, json!([]));

    // A person sees it, but reports no outcome for a payment another key asked for.
    let (status, _) = s
        .post(
            &t.admin,
            &format!("/payments/{payment}/outcome"),
            json!({"status": "failed"}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, still) = s.get(&t.agent, &format!("/payments/{payment}")).await;
    assert_eq!(still["status"], "authorized", "nothing changed");
    let (_, running) = s.get(&t.agent, &format!("/executions/{execution}")).await;
    assert_eq!(running["status"], "running");
    s.finish().await;
}

/// Four eyes: whatever its role, the key that asked for a payment never decides it.
async fn the_key_that_asks_never_decides(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let session = s.session(&t.admin, json!({})).await;
    let (_, p) = s.pay(&t.admin, session, "20", "USDC").await;
    let approval = p["approval_id"].as_str().unwrap();
    for (path, body) in [
        ("approve", json!({})),
        ("reject", json!({"reason": "mine"})),
        ("edit", json!({"edited_args": {"amount": "1"}})),
    ] {
        let (status, problem) = s
            .post(&t.admin, &format!("/approvals/{approval}/{path}"), body)
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {problem}");
    }
    let (status, decided) = s.decide(&t.approver, &approval, "approve", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{decided}");
    assert_eq!(decided["status"], "approved");
    s.finish().await;
}

/// A revoked key and an expired key stop working for every request, including writes already let in.
async fn revoked_and_expired_keys_stop_at_once(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let session = s.session(&t.agent, json!({})).await;
    let (_, p) = s.pay(&t.agent, session, "20", "USDC").await;
    let approval = p["approval_id"].as_str().unwrap();
    let (_, me) = s.get(&t.approver, "/me").await;
    let key_id = me["key_id"].as_str().unwrap();
    let status = s
        .call(
            ADMIN_TOKEN,
            reqwest::Method::DELETE,
            &format!("/keys/{key_id}"),
            None,
        )
        .await
        .0;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = s.decide(&t.approver, &approval, "approve", json!({})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // A write that was let in before its key was revoked lands nothing: the key is checked under the lock.
    let agent_key = s
        .paygent
        .authenticate(&t.agent)
        .await
        .expect("the agent's key is live");
    s.sql(&format!(
        "UPDATE api_keys SET revoked_at = '2000-01-01T00:00:00.000000Z' WHERE id = '{}'",
        agent_key.key_id
    ))
    .await;
    let before = s.count("payments").await;
    let request = paygent_engine::PaymentRequest {
        session_id: session,
        amount: "1".into(),
        currency: "USDC".into(),
        recipient: "0x1111111111111111111111111111111111111111".into(),
        description: None,
        idempotency_key: None,
        swap: None,
    };
    let refused = s.paygent.submit_payment(&agent_key, request).await;
    assert!(
        matches!(refused, Err(paygent_engine::EngineError::Unauthenticated)),
        "{refused:?}"
    );
    assert_eq!(s.count("payments").await, before);

    let (status, body) = s
        .post(
            ADMIN_TOKEN,
            "/keys",
            json!({"name": "past", "role": "agent", "expires_at": "2001-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let soon = chrono::Utc::now() + chrono::Duration::seconds(60);
    let (status, key) = s
        .post(
            ADMIN_TOKEN,
            "/keys",
            json!({"name": "brief", "role": "agent", "expires_at": soon}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    let brief = key["token"].as_str().unwrap();
    assert_eq!(s.get(brief, "/me").await.0, StatusCode::OK);
    s.clock.advance(chrono::Duration::seconds(61));
    assert_eq!(
        s.get(brief, "/me").await.0,
        StatusCode::UNAUTHORIZED,
        "expired"
    );
    s.finish().await;
}

/// Follows `Link: <...>; rel="next"` from `first` to the end; returns every page's body.
async fn walk(s: &TestServer, token: &str, first: &str) -> Vec<Value> {
    let mut pages = Vec::new();
    let mut next = Some(s.url(first));
    while let Some(url) = next.take() {
        assert!(pages.len() < 100, "the pages end");
        let resp = s.send(s.http.get(&url).bearer_auth(token)).await;
        assert_eq!(resp.status(), StatusCode::OK);
        next = paygent_testkit::next_page(&resp).map(|target| format!("{}{target}", s.base));
        pages.push(resp.json::<Value>().await.unwrap());
    }
    pages
}

/// Lists page with a cursor: 2,000 pending requests in pages of 500 with `Link` headers, each once and in order,
/// and the audit trail the same way.
async fn lists_page_with_links(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let session = s.session(&t.agent, json!({})).await;
    let (_, p) = s.pay(&t.agent, session, "20", "USDC").await;
    s.copy_pending(p["approval_id"].as_str().unwrap(), 1999)
        .await;
    let pages = walk(&s, &t.approver, "/approvals/pending?limit=500").await;
    let ids: Vec<&str> = pages
        .iter()
        .flat_map(|p| p.as_array().unwrap())
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(pages.len(), 5, "four full pages, then an empty one");
    assert_eq!(ids.len(), 2000);
    assert_eq!(
        ids.iter().collect::<std::collections::BTreeSet<_>>().len(),
        2000,
        "each once"
    );
    assert_eq!(
        *ids.last().unwrap(),
        p["approval_id"].as_str().unwrap(),
        "oldest first, the real one last"
    );

    for _ in 0..10 {
        s.pay(&t.agent, session, "1", "USDC").await;
    }
    let pages = walk(&s, &t.admin, "/audit?limit=4").await;
    let seqs: Vec<i64> = pages
        .iter()
        .flat_map(|p| p["entries"].as_array().unwrap())
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    let head = pages[0]["head_seq"].as_i64().unwrap();
    assert_eq!(
        seqs,
        (1..=head).collect::<Vec<_>>(),
        "every entry once, in order"
    );
    let payments = walk(
        &s,
        &t.agent,
        &format!("/payments?session_id={session}&limit=3"),
    )
    .await;
    let count: usize = payments.iter().map(|p| p.as_array().unwrap().len()).sum();
    assert_eq!(count, 11);
    s.finish().await;
}

/// Files a request for `amount` USDC to `to` in `session` as `agent`; returns the request as people read it.
async fn request(
    s: &TestServer,
    agent: &str,
    session: uuid::Uuid,
    amount: &str,
    to: &str,
) -> Value {
    let body =
        json!({"session_id": session, "amount": amount, "currency": "USDC", "recipient": to});
    let (status, p) = s.post(agent, "/payments", body).await;
    assert_eq!(status, StatusCode::CREATED, "{p}");
    let (_, request) = s
        .get(
            ADMIN_TOKEN,
            &format!("/approvals/{}", p["approval_id"].as_str().unwrap()),
        )
        .await;
    request
}

/// The ids of `GET /approvals/decided?{query}` as the tenant's approver, in the order given.
async fn decided(s: &TestServer, t: &paygent_testkit::Team, query: &str) -> Vec<String> {
    let (status, list) = s
        .get(&t.approver, &format!("/approvals/decided?{query}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{query}: {list}");
    let ids = list.as_array().unwrap().iter();
    ids.map(|a| a["id"].as_str().unwrap().to_owned()).collect()
}

/// Decided requests, newest first, found by outcome, agent, payee, USD range and time; pages follow `Link`;
/// one call reads at most 1,000 requests, so a rare match answers a short page with the cursor to go on; agents,
/// a pending outcome and bad values are refused, and another tenant sees none.
async fn decided_requests_are_found_by_filters(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.team(ADMIN_TOKEN).await;
    let other_agent = s.key(ADMIN_TOKEN, Role::Agent).await;
    let (mine, theirs) = (
        s.session(&t.agent, json!({})).await,
        s.session(&other_agent, json!({})).await,
    );
    let elsewhere = "0x2222222222222222222222222222222222222222";
    let approved = request(&s, &t.agent, mine, "20", paygent_testkit::PAYEE).await;
    let rejected = request(&s, &t.agent, mine, "30", elsewhere).await;
    let edited = request(&s, &t.agent, mine, "40", paygent_testkit::PAYEE).await;
    let other = request(&s, &other_agent, theirs, "50", paygent_testkit::PAYEE).await;
    let pending = request(&s, &t.agent, mine, "60", paygent_testkit::PAYEE).await;
    let id = |r: &Value| r["id"].as_str().unwrap().to_owned();
    for (r, how, body) in [
        (&approved, "approve", json!({})),
        (&rejected, "reject", json!({"reason": "not this payee"})),
        (&edited, "edit", json!({"edited_args": {"amount": "35"}})),
        (&other, "approve", json!({})),
    ] {
        let (status, d) = s.decide(&t.approver, id(r), how, body).await;
        assert_eq!(status, StatusCode::OK, "{d}");
    }
    let all = decided(&s, &t, "").await;
    assert_eq!(
        all,
        [&other, &edited, &rejected, &approved].map(id),
        "newest first, never the pending one"
    );
    assert!(!all.contains(&id(&pending)));
    let (_, list) = s.get(&t.admin, "/approvals/decided?outcome=rejected").await;
    assert_eq!(list[0]["decision"]["note"], "not this payee", "{list}");
    let (_, me) = s.get(&t.approver, "/me").await;
    assert_eq!(list[0]["decision"]["by"], me["key_id"], "{me}");
    assert_eq!(
        list[0]["decision"]["by_name"], "Approver",
        "the decider by name"
    );
    let (_, one) = s
        .get(&t.admin, &format!("/approvals/{}", id(&rejected)))
        .await;
    assert_eq!(
        one["decision"]["by_name"], "Approver",
        "a read names the decider too"
    );
    assert_eq!(decided(&s, &t, "outcome=edited").await, [id(&edited)]);
    let agent = other["requested_by"].as_str().unwrap();
    assert_eq!(
        decided(&s, &t, &format!("agent={agent}")).await,
        [id(&other)]
    );
    let payee = elsewhere.to_uppercase().replace("0X", "0x");
    assert_eq!(
        decided(&s, &t, &format!("payee={payee}")).await,
        [id(&rejected)]
    );
    assert_eq!(decided(&s, &t, "max_usd=25").await, [id(&approved)]);
    assert_eq!(
        decided(&s, &t, "min_usd=45&max_usd=50.000001").await,
        [id(&other)]
    );
    assert_eq!(
        decided(&s, &t, &format!("session_id={theirs}")).await,
        [id(&other)]
    );
    let at = |r: &Value| r["created_at"].as_str().unwrap().replace('+', "%2B");
    assert_eq!(
        decided(&s, &t, &format!("until={}", at(&rejected))).await,
        [id(&approved)]
    );
    assert_eq!(
        decided(&s, &t, &format!("since={}", at(&edited))).await,
        [&other, &edited].map(id)
    );
    let pages = walk(&s, &t.approver, "/approvals/decided?limit=1").await;
    let walked: Vec<String> = pages
        .iter()
        .flat_map(|p| p.as_array().unwrap())
        .map(id)
        .collect();
    assert_eq!(walked, all, "pages of one, each once, in order");

    // 1,500 more decided requests, older than all of these: a filter only the edited one matches reads 1,000 and
    // answers it with the cursor to go on, then the rest with none.
    s.copy_pending(&id(&approved), 1500).await;
    s.sql("UPDATE approval_requests SET status = 'rejected' WHERE id LIKE '%-0000-4000-8000-000000000000'")
        .await;
    let pages = walk(&s, &t.approver, "/approvals/decided?outcome=edited").await;
    let counts: Vec<usize> = pages.iter().map(|p| p.as_array().unwrap().len()).collect();
    assert_eq!(counts, [1, 0], "1,000 read, then the other 504");

    let long = format!("payee={}", "a".repeat(2049));
    for (token, query, want) in [
        (&t.agent, "", StatusCode::FORBIDDEN),
        (&t.approver, long.as_str(), StatusCode::UNPROCESSABLE_ENTITY),
        (
            &t.approver,
            "outcome=pending",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (&t.approver, "outcome=maybe", StatusCode::BAD_REQUEST),
        (&t.approver, "min_usd=ten", StatusCode::BAD_REQUEST),
        (&t.approver, "since=yesterday", StatusCode::BAD_REQUEST),
        (&t.approver, "colour=red", StatusCode::BAD_REQUEST),
    ] {
        let (status, problem) = s.get(token, &format!("/approvals/decided?{query}")).await;
        assert_eq!(status, want, "{query}: {problem}");
        assert_eq!(problem["status"], want.as_u16(), "{problem}");
    }
    let stranger = s.team(&s.tenant("other").await).await;
    assert!(
        decided(&s, &stranger, "").await.is_empty(),
        "another tenant's approver sees none"
    );
    s.finish().await;
}
