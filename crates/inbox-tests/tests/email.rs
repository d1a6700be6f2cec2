//! An approval by email in a real headless Chromium: a real SMTP server on loopback takes the mail, the browser
//! follows its link, reads the confirmation page and presses its button.

use paygent_inbox_tests::{Chromium, eval, wait_until};
use paygent_testkit::mail::MailSink;
use paygent_testkit::{ADMIN_TOKEN, Backend, Settings, TestServer, Wiring};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_approves_from_a_mail_in_the_browser() {
    let sink = MailSink::start().await;
    let mailer = sink.mailer();
    let settings = Settings {
        wiring: Some(Wiring(Arc::new(move |p| p.with_mailer(mailer.clone())))),
        ..Settings::default()
    };
    let s = TestServer::start_with(Backend::Sqlite, settings).await;
    let _notifiers = s.paygent.spawn_notifiers(Duration::from_millis(50));
    let alice = json!({"name": "Alice", "role": "approver", "email": "alice@example.test"});
    let (_, alice) = s.post(ADMIN_TOKEN, "/keys", alice).await;
    let rules = json!({"notify": {"email": ["alice@example.test"]}});
    let (_, agent) = s.bound_agent("Ops Bot", rules).await;
    let session = s.session(&agent, json!({})).await;
    let (_, paid) = s.pay(&agent, session, "25", "USDC").await;
    let id = paid["approval_id"].as_str().unwrap().to_owned();
    let mail = sink.mail_to("alice@example.test", &id).await;
    let link = MailSink::link(&mail, "Approve:", &s.base);

    let chrome = Chromium::launch().await;
    let page = chrome.open(&link).await;
    let heading = eval(&page, "document.querySelector('h1').textContent").await;
    assert!(
        heading
            .as_str()
            .unwrap()
            .contains("Ops Bot asks to transfer 25 USDC"),
        "{heading}"
    );
    assert_eq!(eval(&page, "document.activeElement.id").await, "approve");
    let (_, request) = s.get(ADMIN_TOKEN, &format!("/approvals/{id}")).await;
    assert_eq!(
        request["status"], "pending",
        "opening the page decided nothing"
    );

    // The press submits the form: the page navigates to the answer.
    let button = page
        .find_element("#approve")
        .await
        .expect("the Approve button");
    button.click().await.expect("it is pressed");
    page.wait_for_navigation().await.expect("the answer loads");
    wait_until(
        &page,
        "document.querySelector('h1') && document.querySelector('h1').textContent === 'approved'",
        "the page that says it is approved",
    )
    .await;
    let (_, request) = s.get(ADMIN_TOKEN, &format!("/approvals/{id}")).await;
    assert_eq!(request["status"], "approved", "{request}");
    assert_eq!(request["decision"]["by"], alice["id"]);

    let again = chrome.open(&link).await;
    let refused = eval(&again, "document.querySelector('#problem').textContent").await;
    assert!(
        refused.as_str().unwrap().contains("was used"),
        "a replayed link: {refused}"
    );
    s.finish().await;
}
