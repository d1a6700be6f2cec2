//! Email approvals over the real API, on both databases, with a real SMTP server on loopback (aiosmtpd): the
//! mail, its link's confirmation page, and the one press that decides.

use paygent_testkit::mail::MailSink;
use paygent_testkit::{ADMIN_TOKEN, Backend, Settings, TestServer, Wiring, on_both_databases};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

on_both_databases!(
    a_mailed_link_shows_a_page_and_its_button_decides_once,
    a_link_decides_only_the_action_it_was_mailed_for_and_only_in_time,
    an_escalation_mails_the_group_it_reaches,
);

/// A server that mails through `sink`, with its notifiers running, and an approver key mailed at
/// alice@example.test; the key's id.
async fn with_mail(backend: Backend, sink: &MailSink) -> (TestServer, String) {
    let mailer = sink.mailer();
    let wiring = Wiring(Arc::new(move |p| p.with_mailer(mailer.clone())));
    let settings = Settings {
        wiring: Some(wiring),
        ..Settings::default()
    };
    let s = TestServer::start_with(backend, settings).await;
    std::mem::forget(s.paygent.spawn_notifiers(Duration::from_millis(50)));
    let key = json!({"name": "Alice", "role": "approver", "email": "alice@example.test"});
    let (status, key) = s.post(ADMIN_TOKEN, "/keys", key).await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    (s, key["id"].as_str().unwrap().to_owned())
}

/// An agent `name` bound to a policy of `rules` (plus mail to Alice and to an address no key has) asks for 25
/// USDC; the request's id and the agent's token.
async fn asked(s: &TestServer, name: &str, mut rules: Value) -> (String, String) {
    rules["notify"] = json!({"email": ["alice@example.test", "nobody@example.test"]});
    let (_, agent) = s.bound_agent(name, rules).await;
    let session = s.session(&agent, json!({})).await;
    let body = json!({"session_id": session, "amount": "25", "currency": "USDC",
        "recipient": paygent_testkit::PAYEE, "description": "weather data"});
    let (status, paid) = s.post(&agent, "/payments", body).await;
    assert_eq!(status, StatusCode::CREATED, "{paid}");
    (paid["approval_id"].as_str().unwrap().to_owned(), agent)
}

async fn page(s: &TestServer, url: &str) -> (StatusCode, String) {
    let resp = s.http.get(url).send().await.unwrap();
    let status = resp.status();
    let kind = resp.headers()[reqwest::header::CONTENT_TYPE].clone();
    assert_eq!(kind, "text/html; charset=utf-8");
    (status, resp.text().await.unwrap())
}

/// Submits the page's form as a browser would (the test's values are words and spaces).
async fn press(s: &TestServer, url: &str, form: &[(&str, &str)]) -> (StatusCode, String) {
    let action = url.split('?').next().unwrap();
    let body: Vec<String> = form
        .iter()
        .map(|(k, v)| format!("{k}={}", v.replace(' ', "+")))
        .collect();
    let resp = s
        .http
        .post(action)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.join("&"))
        .send()
        .await
        .unwrap();
    (resp.status(), resp.text().await.unwrap())
}

/// The mail says what is asked and links to a page; opening the page (twice, as a scanner and a person would)
/// decides nothing; its button approves as Alice's key, once: pressed again, or the page opened again, the link
/// is gone. A rejection through another mail keeps its reason.
async fn a_mailed_link_shows_a_page_and_its_button_decides_once(backend: Backend) {
    let sink = MailSink::start().await;
    let (s, alice) = with_mail(backend, &sink).await;
    let (id, agent) = asked(&s, "Ops Bot", json!({})).await;
    let mail = sink.mail_to("alice@example.test", &id).await;
    let subject = mail["subject"].as_str().unwrap();
    assert!(
        subject.contains("Ops Bot asks to transfer 25 USDC"),
        "{subject}"
    );
    assert!(
        mail["body"]
            .as_str()
            .unwrap()
            .contains("The agent says: weather data"),
        "{mail}"
    );
    let approve = MailSink::link(&mail, "Approve:", &s.base);

    for _ in 0..2 {
        let (status, html) = page(&s, &approve).await;
        assert_eq!(status, StatusCode::OK, "{html}");
        assert!(
            html.contains("<strong>25 USDC</strong>") && html.contains("Alice"),
            "{html}"
        );
    }
    let (_, request) = s.get(ADMIN_TOKEN, &format!("/approvals/{id}")).await;
    assert_eq!(
        request["status"], "pending",
        "a GET decides nothing: {request}"
    );

    let (status, html) = press(&s, &approve, &[("decision", "approve")]).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(html.contains("approved"), "{html}");
    let (_, request) = s.get(ADMIN_TOKEN, &format!("/approvals/{id}")).await;
    assert_eq!(request["status"], "approved", "{request}");
    assert_eq!(request["decision"]["by"], alice.as_str());
    let (status, html) = press(&s, &approve, &[("decision", "approve")]).await;
    assert_eq!(status, StatusCode::GONE, "a replayed link: {html}");
    assert_eq!(page(&s, &approve).await.0, StatusCode::GONE);

    let session = s.session(&agent, json!({})).await;
    let body = json!({"session_id": session, "amount": "30", "currency": "USDC",
        "recipient": paygent_testkit::PAYEE});
    let (_, paid) = s.post(&agent, "/payments", body).await;
    let other = paid["approval_id"].as_str().unwrap();
    let mail = sink.mail_to("alice@example.test", other).await;
    let reject = MailSink::link(&mail, "Reject:", &s.base);
    let (status, html) = press(
        &s,
        &reject,
        &[("decision", "reject"), ("reason", "not this vendor")],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{html}");
    let (_, request) = s.get(ADMIN_TOKEN, &format!("/approvals/{other}")).await;
    assert_eq!(request["status"], "rejected");
    assert_eq!(request["decision"]["note"], "not this vendor");
    let to_nobody = sink
        .mails()
        .await
        .iter()
        .filter(|m| m["to"][0] == "nobody@example.test")
        .count();
    assert_eq!(
        to_nobody, 0,
        "an address no deciding key has is mailed nothing"
    );

    // Links are kept a week past their expiry, then pruned.
    assert_eq!(s.count("decision_links").await, 2);
    s.clock.advance(chrono::Duration::days(7));
    s.paygent
        .prune_told(chrono::Duration::days(7))
        .await
        .unwrap();
    assert_eq!(s.count("decision_links").await, 2);
    s.clock.advance(chrono::Duration::days(1));
    s.paygent
        .prune_told(chrono::Duration::days(7))
        .await
        .unwrap();
    assert_eq!(s.count("decision_links").await, 0);
    s.finish().await;
}

/// A link decides the action it was mailed for: after an edit (a quorum keeps the request waiting) it is
/// refused. Past its expiry it is gone; an unknown token finds nothing; a press that is not a decision, or by
/// a key revoked since, is refused; none of them decides anything.
async fn a_link_decides_only_the_action_it_was_mailed_for_and_only_in_time(backend: Backend) {
    let sink = MailSink::start().await;
    let (s, alice) = with_mail(backend, &sink).await;
    let t = s.team(ADMIN_TOKEN).await;
    let quorum = json!({"quorums": [{"above_usd": "10", "approvals_required": 2}]});
    let (id, _) = asked(&s, "Ops Bot", quorum).await;
    let mail = sink.mail_to("alice@example.test", &id).await;
    let approve = MailSink::link(&mail, "Approve:", &s.base);
    let (status, html) = press(&s, &approve, &[("decision", "edit")]).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{html}");
    let edit = json!({"edited_args": {"amount": "20"}});
    let (status, edited) = s.decide(&t.approver, &id, "edit", edit).await;
    assert_eq!(status, StatusCode::OK, "{edited}");
    assert_eq!(edited["status"], "pending");
    let (status, html) = press(&s, &approve, &[("decision", "approve")]).await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "the action changed since it was mailed: {html}"
    );
    let (_, request) = s.get(ADMIN_TOKEN, &format!("/approvals/{id}")).await;
    assert_eq!(
        request["approvals"].as_array().unwrap().len(),
        1,
        "{request}"
    );

    let (late, _) = asked(&s, "Late Bot", json!({})).await;
    let mail = sink.mail_to("alice@example.test", &late).await;
    let approve = MailSink::link(&mail, "Approve:", &s.base);
    s.clock.advance(chrono::Duration::minutes(16));
    assert_eq!(page(&s, &approve).await.0, StatusCode::GONE);
    let (status, _) = press(&s, &approve, &[("decision", "approve")]).await;
    assert_eq!(status, StatusCode::GONE);
    let unknown = format!("{}/decide/not-a-token", s.base);
    assert_eq!(page(&s, &unknown).await.0, StatusCode::NOT_FOUND);
    let (_, request) = s.get(ADMIN_TOKEN, &format!("/approvals/{late}")).await;
    assert_eq!(request["decision"], Value::Null, "{request}");

    let (revoked, _) = asked(&s, "Other Bot", json!({})).await;
    let mail = sink.mail_to("alice@example.test", &revoked).await;
    let approve = MailSink::link(&mail, "Approve:", &s.base);
    let gone = s
        .call(
            ADMIN_TOKEN,
            reqwest::Method::DELETE,
            &format!("/keys/{alice}"),
            None,
        )
        .await;
    assert_eq!(gone.0, StatusCode::NO_CONTENT);
    let (status, html) = press(&s, &approve, &[("decision", "approve")]).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "a revoked key decides nothing: {html}"
    );
    let (_, request) = s.get(ADMIN_TOKEN, &format!("/approvals/{revoked}")).await;
    assert_eq!(request["status"], "pending", "{request}");

    s.finish().await;
}

/// A request nobody decided in time climbs to the group `lead_s`: its people with an address are mailed a link
/// (a key of a group whose name only looks alike, `lead-s`, is not; nor the asker), and the link decides as them.
async fn an_escalation_mails_the_group_it_reaches(backend: Backend) {
    let sink = MailSink::start().await;
    let (s, _) = with_mail(backend, &sink).await;
    let mut people = Vec::new();
    for (name, group) in [("Bob", "lead_s"), ("Dave", "lead-s")] {
        let email = format!("{}@example.test", name.to_lowercase());
        let key = json!({"name": name, "role": "approver", "groups": [group], "email": email});
        let (status, key) = s.post(ADMIN_TOKEN, "/keys", key).await;
        assert_eq!(status, StatusCode::CREATED, "{key}");
        people.push(key["id"].as_str().unwrap().to_owned());
    }
    let rules = json!({"escalation": [{"after_seconds": 60, "group": "lead_s"}]});
    let (id, _) = asked(&s, "Ops Bot", rules).await;
    sink.mail_to("alice@example.test", &id).await;
    let to = |mails: &[Value], who: &str| mails.iter().filter(|m| m["to"][0] == who).count();
    assert_eq!(
        to(&sink.mails().await, "bob@example.test"),
        0,
        "not before it climbs"
    );

    s.clock.advance(chrono::Duration::seconds(61));
    assert_eq!(s.paygent.escalate_due().await.unwrap(), 1);
    let mail = sink.mail_to("bob@example.test", &id).await;
    let mails = sink.mails().await;
    assert_eq!(
        to(&mails, "dave@example.test"),
        0,
        "another group: {mails:?}"
    );
    assert_eq!(to(&mails, "alice@example.test"), 1, "mailed once");
    let approve = MailSink::link(&mail, "Approve:", &s.base);
    let (status, html) = press(&s, &approve, &[("decision", "approve")]).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    let (_, request) = s.get(ADMIN_TOKEN, &format!("/approvals/{id}")).await;
    assert_eq!(request["decision"]["by"], people[0].as_str(), "{request}");
    s.finish().await;
}
