//! The approvals inbox in a real headless Chromium, against a real server on loopback.

use chromiumoxide::Page;
use chromiumoxide::page::ScreenshotParams;
use paygent_inbox_tests::{Chromium, eval, serious_violations, wait_until};
use paygent_testkit::{ADMIN_TOKEN, Backend, Team, TestServer};
use serde_json::json;

async fn sign_in(page: &Page, token: &str) {
    fill(page, "#token", token).await;
    click(page, "#sign-in button[type=submit]").await;
    wait_until(
        page,
        "!document.querySelector('#inbox').hidden",
        "the inbox after sign-in",
    )
    .await;
    wait_until(
        page,
        "document.querySelector('#live').classList.contains('on')",
        "the live connection",
    )
    .await;
}

fn item(approval: &str) -> String {
    format!("[data-approval-id='{approval}']")
}

async fn appears(page: &Page, approval: &str) {
    wait_until(
        page,
        &format!("!!document.querySelector(\"{}\")", item(approval)),
        "the request to appear",
    )
    .await;
}

async fn leaves(page: &Page, approval: &str) {
    wait_until(
        page,
        &format!("!document.querySelector(\"{}\")", item(approval)),
        "the request to leave",
    )
    .await;
}

/// Clicks like a person would, through the page's own event handling.
async fn click(page: &Page, selector: &str) {
    let found = eval(page, &format!("(() => {{ const e = document.querySelector(\"{selector}\"); if (!e) return false; e.scrollIntoView(); e.click(); return true; }})()")).await;
    assert_eq!(found, true, "nothing to click at {selector}");
}

/// Types into a field: sets its value and fires the input event.
async fn fill(page: &Page, selector: &str, text: &str) {
    let script = format!(
        "(() => {{ const e = document.querySelector(\"{selector}\"); if (!e) return false; e.focus(); e.value = {}; \
         e.dispatchEvent(new Event('input', {{ bubbles: true }})); return true; }})()",
        serde_json::Value::String(text.to_owned())
    );
    assert_eq!(eval(page, &script).await, true, "no field at {selector}");
}

/// The text of the element at `selector`, which must be there.
async fn text(page: &Page, selector: &str) -> String {
    let quoted = serde_json::Value::String(selector.to_owned());
    let found = eval(
        page,
        &format!("document.querySelector({quoted})?.textContent ?? null"),
    )
    .await;
    found
        .as_str()
        .unwrap_or_else(|| panic!("no element at {selector}"))
        .to_owned()
}

/// Saves a full-page screenshot as `name` among the tests' artifacts (`inbox-screenshots` in the target's
/// test directory), where docs/ takes its pictures from.
async fn screenshot(page: &Page, name: &str) {
    let artifacts = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("inbox-screenshots");
    std::fs::create_dir_all(&artifacts).unwrap();
    let params = ScreenshotParams::builder().full_page(true).build();
    page.save_screenshot(params, artifacts.join(name))
        .await
        .unwrap();
}

/// The inbox in a page the size of a phone (390 × 844 CSS pixels at 3×).
async fn at_phone_width(chrome: &Chromium, base: &str) -> Page {
    let phone = chrome.open(&format!("{base}/")).await;
    sized(&phone, 390, 844, true).await;
    phone
}

/// Sizes the page's viewport (a full-page screenshot clears the size it was given, so each one sets it again).
async fn sized(page: &Page, width: i64, height: i64, phone: bool) {
    use chromiumoxide::cdp::browser_protocol::emulation::SetDeviceMetricsOverrideParams;
    let scale = if phone { 3.0 } else { 1.0 };
    let metrics = SetDeviceMetricsOverrideParams::new(width, height, scale, phone);
    page.execute(metrics).await.unwrap();
}

async fn fits_a_phone(page: &Page) {
    let fits = eval(
        page,
        "document.documentElement.scrollWidth <= window.innerWidth",
    )
    .await;
    assert_eq!(fits, true, "no sideways scrolling at phone width");
}

/// The page's files carry a tag of their content: a browser that holds a file already is answered 304 without
/// it, one that holds another version gets the file.
#[tokio::test]
async fn the_page_is_fetched_again_only_when_it_changed() {
    let s = TestServer::start(Backend::Sqlite).await;
    for path in [
        "/",
        "/app.js",
        "/app.css",
        "/events.js",
        "/vendor/uplot.js",
        "/vendor/uplot.css",
    ] {
        let url = format!("{}{path}", s.base);
        let first = s.http.get(&url).send().await.unwrap();
        assert_eq!(first.status(), 200, "{path}");
        let tag = first.headers()["etag"].clone();
        let body = first.bytes().await.unwrap();
        let held = s
            .http
            .get(&url)
            .header("if-none-match", &tag)
            .send()
            .await
            .unwrap();
        assert_eq!(held.status(), 304, "{path}");
        assert_eq!(held.headers()["etag"], tag);
        assert!(held.headers().contains_key("content-security-policy"));
        assert!(held.bytes().await.unwrap().is_empty(), "{path}");
        let stale = s
            .http
            .get(&url)
            .header("if-none-match", "\"0\"")
            .send()
            .await
            .unwrap();
        assert_eq!(stale.status(), 200, "{path}");
        assert_eq!(stale.bytes().await.unwrap(), body);
    }
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_decide_in_the_inbox() {
    let s = TestServer::start(Backend::Sqlite).await;
    let t = s.team(ADMIN_TOKEN).await;
    let session = s
        .session(&t.agent, json!({"daily_limits": {"USDC": "1000"}}))
        .await;
    let chrome = Chromium::launch().await;
    let page = chrome.open(&s.base).await;
    let csp =
        s.http.get(&s.base).send().await.unwrap().headers()["content-security-policy"].clone();
    assert!(csp.to_str().unwrap().contains("script-src 'self'"));

    // An agent key is turned away.
    fill(&page, "#token", &t.agent).await;
    click(&page, "#sign-in button[type=submit]").await;
    wait_until(
        &page,
        "!document.querySelector('#sign-in-error').hidden",
        "the sign-in error",
    )
    .await;
    sign_in(&page, &t.approver).await;
    assert_eq!(
        eval(
            &page,
            "document.querySelector('#who-role').textContent.split(' ')[0]"
        )
        .await,
        "approver"
    );

    // A payment appears without a reload; approve it.
    let (_, p) = s.pay(&t.agent, session, "25", "USDC").await;
    let approval = p["approval_id"].as_str().unwrap().to_owned();
    appears(&page, &approval).await;
    assert_eq!(eval(&page, "document.title").await, "(1) Paygent inbox");
    let shown = eval(
        &page,
        &format!(
            "document.querySelector(\"{} .usd\").textContent",
            item(&approval)
        ),
    )
    .await;
    assert_eq!(shown, "$25");
    // The card names the exact action an approval binds to: its digest, in full on the element.
    let (_, request) = s.get(&t.approver, &format!("/approvals/{approval}")).await;
    let digest = request["digest"].as_str().unwrap();
    let card = item(&approval);
    let on_card = eval(
        &page,
        &format!("document.querySelector(\"{card} .digest\").dataset.digest"),
    )
    .await;
    assert_eq!(on_card, digest);
    let text = text(&page, &format!("{card} .digest")).await;
    assert!(text.contains(&digest[..19]), "{text}");
    wait_until(
        &page,
        &format!(
            "document.querySelector(\"{} .budget\").textContent.includes('reserved 25')",
            item(&approval)
        ),
        "the budget",
    )
    .await;
    click(&page, &format!("{} button.approve", item(&approval))).await;
    leaves(&page, &approval).await;
    let (_, paid) = s
        .post(
            &t.agent,
            "/payments/execute-approved",
            json!({"approval_id": approval}),
        )
        .await;
    assert_eq!(paid["status"], "authorized");

    // Reject with a reason.
    let (_, p) = s.pay(&t.agent, session, "40", "USDC").await;
    let approval = p["approval_id"].as_str().unwrap().to_owned();
    appears(&page, &approval).await;
    click(&page, &format!("{} button.reject", item(&approval))).await;
    fill(
        &page,
        &format!("{} .reject-form input[name=reason]", item(&approval)),
        "unknown vendor",
    )
    .await;
    click(&page, &format!("{} .reject-form button", item(&approval))).await;
    leaves(&page, &approval).await;
    let (_, stored) = s.get(&t.approver, &format!("/approvals/{approval}")).await;
    assert_eq!(stored["decision"]["note"], "unknown vendor");

    // Edit down: the edited amount executes. Edit above what was asked: the error shows, it stays pending.
    let (_, p) = s.pay(&t.agent, session, "30", "USDC").await;
    let down = p["approval_id"].as_str().unwrap().to_owned();
    let (_, p) = s.pay(&t.agent, session, "15", "USDC").await;
    let up = p["approval_id"].as_str().unwrap().to_owned();
    appears(&page, &up).await;
    click(&page, &format!("{} button.edit", item(&down))).await;
    fill(
        &page,
        &format!("{} .edit-form input[name=amount]", item(&down)),
        "12",
    )
    .await;
    click(&page, &format!("{} .edit-form button", item(&down))).await;
    leaves(&page, &down).await;
    let (_, paid) = s
        .post(
            &t.agent,
            "/payments/execute-approved",
            json!({"approval_id": down}),
        )
        .await;
    assert_eq!(paid["amount"], "12");
    click(&page, &format!("{} button.edit", item(&up))).await;
    fill(
        &page,
        &format!("{} .edit-form input[name=amount]", item(&up)),
        "50",
    )
    .await;
    click(&page, &format!("{} .edit-form button", item(&up))).await;
    wait_until(
        &page,
        &format!("!document.querySelector(\"{} .problem\").hidden", item(&up)),
        "the refusal",
    )
    .await;
    let problem = eval(
        &page,
        &format!(
            "document.querySelector(\"{} .problem\").textContent",
            item(&up)
        ),
    )
    .await;
    assert!(
        problem.as_str().unwrap().contains("cannot raise"),
        "{problem}"
    );
    let (_, still) = s.get(&t.approver, &format!("/approvals/{up}")).await;
    assert_eq!(still["status"], "pending");

    // A second browser sees the first one's decision live; a stale view shows the conflict plainly.
    let second = chrome.open(&s.base).await;
    sign_in(&second, &t.admin).await;
    appears(&second, &up).await;
    assert_eq!(
        eval(&second, "!document.querySelector('#admin-tools').hidden").await,
        true
    );
    click(&page, &format!("{} button.approve", item(&up))).await;
    leaves(&second, &up).await;
    let (_, p) = s.pay(&t.agent, session, "60", "USDC").await;
    let contested = p["approval_id"].as_str().unwrap().to_owned();
    appears(&second, &contested).await;
    appears(&page, &contested).await;
    eval(
        &second,
        "state.socket.onclose = null; state.socket.close(); true",
    )
    .await;
    click(&page, &format!("{} button.approve", item(&contested))).await;
    leaves(&page, &contested).await;
    click(&second, &format!("{} button.approve", item(&contested))).await;
    wait_until(
        &second,
        &format!(
            "!document.querySelector(\"{} .problem\").hidden",
            item(&contested)
        ),
        "the conflict",
    )
    .await;
    let conflict = eval(
        &second,
        &format!(
            "document.querySelector(\"{} .problem\").textContent",
            item(&contested)
        ),
    )
    .await;
    assert!(
        conflict
            .as_str()
            .unwrap()
            .starts_with("Someone else decided first"),
        "{conflict}"
    );
    // Reconnected, it replays what it missed: the contested request leaves.
    eval(&second, "connect(); true").await;
    leaves(&second, &contested).await;

    // Another tenant's approver sees nothing of this one.
    let (_, p) = s.pay(&t.agent, session, "70", "USDC").await;
    let ours = p["approval_id"].as_str().unwrap().to_owned();
    appears(&page, &ours).await;
    let outsider = chrome.open(&s.base).await;
    let other = s.team(&s.tenant("other").await).await;
    sign_in(&outsider, &other.approver).await;
    wait_until(
        &outsider,
        "document.querySelector('#count').textContent === '0'",
        "an empty inbox",
    )
    .await;

    // Screenshots at desktop and phone width, kept as test artifacts.
    screenshot(&page, "inbox-desktop.png").await;
    let phone = at_phone_width(&chrome, &s.base).await;
    sign_in(&phone, &t.approver).await;
    appears(&phone, &ours).await;
    screenshot(&phone, "inbox-phone.png").await;
    fits_a_phone(&phone).await;

    // Killing a session from the inbox takes two clicks and cancels its requests live.
    let doomed = s.session(&t.agent, json!({})).await;
    let (_, p) = s.pay(&t.agent, doomed, "45", "USDC").await;
    let victim = p["approval_id"].as_str().unwrap().to_owned();
    appears(&page, &victim).await;
    click(&page, &format!("{} button.kill-session", item(&victim))).await;
    let armed = eval(
        &page,
        &format!(
            "document.querySelector(\"{} button.kill-session\").textContent",
            item(&victim)
        ),
    )
    .await;
    assert_eq!(armed, "Really kill this session?");
    let (_, alive) = s.get(&t.agent, &format!("/sessions/{doomed}")).await;
    assert_eq!(alive["state"], "active", "one click only arms the button");
    click(&page, &format!("{} button.kill-session", item(&victim))).await;
    leaves(&page, &victim).await;
    let (_, killed) = s.get(&t.agent, &format!("/sessions/{doomed}")).await;
    assert_eq!(killed["state"], "killed");

    // An execution shows up live, and can be cancelled from the inbox (two clicks).
    let worker = s.session(&t.agent, json!({})).await;
    let (_, running) = s
        .post(
            &t.agent,
            "/agent/execute",
            json!({"session_id": worker, "command": "wait 3600 seconds"}),
        )
        .await;
    let execution = running["id"].as_str().unwrap().to_owned();
    let row = format!("[data-execution-id='{execution}']");
    wait_until(
        &page,
        &format!("!!document.querySelector(\"{row} button.cancel-execution\")"),
        "the running execution",
    )
    .await;
    click(&page, &format!("{row} button.cancel-execution")).await;
    click(&page, &format!("{row} button.cancel-execution")).await;
    wait_until(
        &page,
        &format!("(document.querySelector(\"{row}\")?.textContent ?? '').includes('cancelled')"),
        "the cancelled execution",
    )
    .await;
    let (_, cancelled) = s.get(&t.agent, &format!("/executions/{execution}")).await;
    assert_eq!(cancelled["status"], "cancelled");

    // The admin's emergency stop (two clicks) shows a banner in every open browser.
    click(&second, "#engage").await;
    click(&second, "#engage").await;
    for p in [&page, &second, &phone] {
        wait_until(
            p,
            "!document.querySelector('#stop-banner').hidden",
            "the stop banner",
        )
        .await;
    }
    leaves(&page, &ours).await;
    let (_, stop) = s.get(&t.agent, "/kill-switch").await;
    assert_eq!(stop["engaged"], true);
    s.finish().await;
}

/// An execution of one $20 transfer in `session` that waited on the approver, who approved it; returns its id and
/// the request's, once it completed.
async fn approved_execution(s: &TestServer, t: &Team, session: uuid::Uuid) -> (String, String) {
    let paid = json!([{"tool": "transfer",
        "args": {"to": paygent_testkit::PAYEE, "amount": "20", "currency": "USDC"}}]);
    let execution = s.execute(&t.agent, session, paid).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let asked = paygent_testkit::wait_for(s, &t.agent, &execution, |e| {
        e["steps"][0]["approval_id"].is_string()
    })
    .await;
    let approval = asked["steps"][0]["approval_id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.decide(&t.approver, &approval, "approve", json!({})).await;
    let completed = paygent_testkit::status_is("completed");
    paygent_testkit::wait_for(s, &t.agent, &execution, completed).await;
    (execution, approval)
}

/// The other views: an execution's steps, sessions with their budgets, the audit trail with a chain check, and an
/// edit of the recipient.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_show_steps_budgets_and_the_audit_chain() {
    let s = TestServer::start(Backend::Sqlite).await;
    let t = s.team(ADMIN_TOKEN).await;
    let session = s
        .session(&t.agent, json!({"daily_limits": {"USDC": "500"}}))
        .await;
    let (hello, _) = paygent_testkit::hello_server().await;
    let steps = json!([
        {"tool": "http_get", "args": {"url": hello}},
        {"tool": "transfer", "args": {"to": paygent_testkit::PAYEE, "amount": "3", "currency": "USDC"}}]);
    let started = s.execute(&t.agent, session, steps).await;
    let execution = started["id"].as_str().unwrap().to_owned();
    let chrome = Chromium::launch().await;
    let page = chrome.open(&s.base).await;
    sign_in(&page, ADMIN_TOKEN).await;

    // Executions: selecting one shows its steps with their results.
    click(&page, "#views [data-view=executions]").await;
    let row = format!("[data-execution-id='{execution}']");
    wait_until(
        &page,
        &format!(
            "(document.querySelector(\"{row} .what\")?.textContent ?? '').includes('completed')"
        ),
        "the completed execution",
    )
    .await;
    click(&page, &format!("{row} .what")).await;
    wait_until(
        &page,
        &format!("document.querySelectorAll(\"{row} .steps li\").length === 2"),
        "the execution's steps",
    )
    .await;
    let meta = text(&page, &format!("{row} .meta")).await;
    assert!(
        meta.starts_with("test …") && meta.contains(" · Agent · step "),
        "the session and agent by name: {meta}"
    );
    let steps = eval(
        &page,
        &format!("[...document.querySelectorAll(\"{row} .steps li\")].map(li => li.textContent)"),
    )
    .await;
    assert!(steps[0].as_str().unwrap().contains("http_get"), "{steps}");
    assert!(
        steps[0].as_str().unwrap().contains("HTTP 200: hello"),
        "{steps}"
    );
    assert!(
        steps[1].as_str().unwrap().contains("authorized 3 USDC"),
        "{steps}"
    );
    assert_eq!(
        eval(&page, "document.querySelector('#inbox').hidden").await,
        true
    );

    // A step that waited on a person says who decided it, and how soon.
    let elsewhere = s.session(&t.agent, json!({})).await;
    let (waited, _) = approved_execution(&s, &t, elsewhere).await;
    let row = format!("[data-execution-id='{waited}']");
    wait_until(
        &page,
        &format!(
            "(document.querySelector(\"{row} .what\")?.textContent ?? '').includes('completed')"
        ),
        "the approved execution",
    )
    .await;
    click(&page, &format!("{row} .what")).await;
    let step = format!("(document.querySelector(\"{row} .steps li\")?.textContent ?? '')");
    wait_until(
        &page,
        &format!("{step}.includes('approved by Approver after')"),
        "who decided the step",
    )
    .await;

    // Budgets: each session with today's spend.
    click(&page, "#views [data-view=budgets]").await;
    wait_until(
        &page,
        &format!("(document.querySelector(\"[data-session-id='{session}'] .budget\")?.textContent ?? '').includes('USDC: spent 3')"),
        "the session's budget",
    )
    .await;

    // Audit: the latest entries, and the chain verified on the server.
    click(&page, "#views [data-view=audit]").await;
    wait_until(
        &page,
        "document.querySelectorAll('#audit-list li').length > 0",
        "audit entries",
    )
    .await;
    click(&page, "#verify-chain").await;
    wait_until(
        &page,
        "document.querySelector('#chain-result').textContent.startsWith('Chain verified')",
        "the chain check",
    )
    .await;
    let told = eval(
        &page,
        "[...document.querySelectorAll('#audit-list li .what')].map(p => p.textContent)",
    )
    .await;
    let paid = "Agent was let pay 3 USDC to 0x1111…1111 ($3)";
    assert!(
        told.as_array().unwrap().iter().any(|w| w == paid),
        "an entry in words, its actor by name: {told}"
    );
    // An entry about a session leads to the session's spend.
    let link = "document.querySelector('#audit-list .open-session')";
    let linked = eval(&page, &format!("{link}.dataset.sessionId")).await;
    click(&page, "#audit-list .open-session").await;
    let scoped = format!(
        "!document.querySelector('#spend').hidden && document.querySelector('#spend-scope').value === 'session_id={}'",
        linked.as_str().unwrap()
    );
    wait_until(&page, &scoped, "the session's spend").await;

    // Edit the recipient of a request: the payment goes where the person said.
    click(&page, "#views [data-view=inbox]").await;
    let (_, p) = s.pay(&t.agent, session, "25", "USDC").await;
    let approval = p["approval_id"].as_str().unwrap().to_owned();
    appears(&page, &approval).await;
    click(&page, &format!("{} button.edit", item(&approval))).await;
    let other = "0x2222222222222222222222222222222222222222";
    fill(
        &page,
        &format!("{} .edit-form input[name=recipient]", item(&approval)),
        other,
    )
    .await;
    click(
        &page,
        &format!("{} .edit-form button[type=submit]", item(&approval)),
    )
    .await;
    leaves(&page, &approval).await;
    let (_, executed) = s
        .post(
            &t.agent,
            "/payments/execute-approved",
            json!({"approval_id": approval}),
        )
        .await;
    assert_eq!(executed["recipient"], other, "{executed}");
    assert_eq!(executed["amount"], "25");

    click(&page, "#views [data-view=audit]").await;
    screenshot(&page, "inbox-audit.png").await;
    s.finish().await;
}

/// The texts of the audit entries shown, their words or their metadata (`.what` or `.meta`).
async fn audit_texts(page: &Page, part: &str) -> Vec<String> {
    let texts = eval(
        page,
        &format!("[...document.querySelectorAll('#audit-list li {part}')].map(p => p.textContent)"),
    )
    .await;
    serde_json::from_value(texts).unwrap()
}

/// Searches the audit trail with the filter form as it is filled (the list empties as the search begins).
async fn search_audit(page: &Page, what: &str) {
    click(page, "#audit-filter button[type=submit]").await;
    wait_until(
        page,
        "document.querySelectorAll('#audit-list li').length > 0 || !document.querySelector('#no-audit').hidden",
        what,
    )
    .await;
}

/// The audit trail narrowed by what happened and by who did it, one object's history, and its links: to a
/// decided request, to an execution's timeline (its step's wait on a person drawn), to a payment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_is_searched_and_leads_to_what_it_tells() {
    let s = TestServer::start(Backend::Sqlite).await;
    let t = s.team(ADMIN_TOKEN).await;
    let session = s.session(&t.agent, json!({})).await;
    let (execution, approval) = approved_execution(&s, &t, session).await;
    let (_, small) = s.pay(&t.agent, session, "1", "USDC").await;
    let small = small["id"].as_str().unwrap().to_owned();
    let approver = s.get(&t.approver, "/me").await.1["key_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let chrome = Chromium::launch().await;
    let page = chrome.open(&s.base).await;
    sign_in(&page, ADMIN_TOKEN).await;
    click(&page, "#views [data-view=audit]").await;
    wait_until(
        &page,
        "document.querySelectorAll('#audit-list li').length > 0",
        "audit entries",
    )
    .await;
    let seqs = eval(
        &page,
        "[...document.querySelectorAll('#audit-list li')].map(li => Number(li.dataset.seq))",
    )
    .await;
    let seqs: Vec<i64> = serde_json::from_value(seqs).unwrap();
    assert!(
        seqs.windows(2).all(|w| w[0] > w[1]),
        "newest first: {seqs:?}"
    );

    // What happened: approval requests only.
    fill(&page, "#audit-filter [name=action]", "approval").await;
    search_audit(&page, "the approval entries").await;
    let metas = audit_texts(&page, ".meta").await;
    assert_eq!(metas.len(), 2, "{metas:?}");
    assert!(
        metas[0].contains("approval.approved") && metas[1].contains("approval.requested"),
        "{metas:?}"
    );
    // Who did it: the approver, picked by name.
    fill(&page, "#audit-filter [name=action]", "").await;
    let named = text(&page, &format!("#audit-actor option[value='{approver}']")).await;
    assert_eq!(named, "Approver");
    fill(&page, "#audit-actor", &approver).await;
    search_audit(&page, "the approver's entries").await;
    assert_eq!(audit_texts(&page, ".what").await, ["Approver approved"]);

    // The request's whole history, then the request itself.
    click(&page, "#audit-list .history").await;
    wait_until(
        &page,
        "!document.querySelector('#audit-about').hidden && document.querySelectorAll('#audit-list li').length === 1",
        "the request's history by the approver",
    )
    .await;
    fill(&page, "#audit-actor", "").await;
    search_audit(&page, "the request's history").await;
    let metas = audit_texts(&page, ".meta").await;
    assert_eq!(metas.len(), 2, "{metas:?}");
    let last8 = &approval[approval.len() - 8..];
    assert!(
        metas
            .iter()
            .all(|m| m.contains(&format!("approval …{last8}"))),
        "{metas:?}"
    );
    click(&page, "#audit-list .open-object").await;
    let decided = format!("{} .outcome", item(&approval));
    wait_until(
        &page,
        &format!("!document.querySelector('#decided').hidden && (document.querySelector(\"{decided}\")?.textContent ?? '').startsWith('approved by Approver')"),
        "the decided request",
    )
    .await;

    // The execution, with its timeline: the step's wait on a person drawn on its lane.
    click(&page, "#views [data-view=audit]").await;
    click(&page, "#audit-all").await;
    fill(&page, "#audit-filter [name=action]", "execution").await;
    search_audit(&page, "the execution entries").await;
    click(&page, "#audit-list .open-object").await;
    let row = format!("[data-execution-id='{execution}']");
    wait_until(
        &page,
        &format!("!document.querySelector('#executions').hidden && !!document.querySelector(\"{row} .timeline .lane .wait\")"),
        "the execution's timeline",
    )
    .await;
    let took = text(&page, &format!("{row} .took")).await;
    assert!(
        took.starts_with("Took ") && took.contains(" · 1 step · $20 · "),
        "{took}"
    );
    assert!(took.ends_with(" waiting on people"), "{took}");
    let lane = eval(
        &page,
        &format!("document.querySelector(\"{row} .lane .run\").style.width"),
    )
    .await;
    assert!(lane.as_str().unwrap().ends_with('%'), "{lane}");

    // A payment is told under its entry.
    click(&page, "#views [data-view=audit]").await;
    fill(&page, "#audit-filter [name=action]", "payment").await;
    search_audit(&page, "the payment entries").await;
    let short = &small[small.len() - 8..];
    let clicked = eval(
        &page,
        &format!("(() => {{ const li = [...document.querySelectorAll('#audit-list li')].find(li => li.querySelector('.meta').textContent.includes('payment …{short}')); li.querySelector('.open-object').click(); return !!li; }})()"),
    )
    .await;
    assert_eq!(clicked, true);
    wait_until(
        &page,
        "[...document.querySelectorAll('#audit-list .object')].some(p => p.textContent.startsWith('Payment authorized: 1 USDC ($1) to 0x1111…1111'))",
        "the payment told",
    )
    .await;
    s.finish().await;
}

/// Admins read and change policies in the inbox, the server checks what they type, and approvers only read;
/// a request's card says which policy sent it to a person.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_read_and_admins_change_policies() {
    let s = TestServer::start(Backend::Sqlite).await;
    let t = s.team(ADMIN_TOKEN).await;
    let chrome = Chromium::launch().await;
    let page = chrome.open(&s.base).await;
    sign_in(&page, ADMIN_TOKEN).await;
    click(&page, "#views [data-view=policies]").await;
    let default = "[data-policy-name='default']";
    wait_until(
        &page,
        &format!("!!document.querySelector(\"{default} .save-policy\")"),
        "the default policy, editable",
    )
    .await;
    fill(
        &page,
        &format!("{default} .rules"),
        r#"{"approval_threshold_usd": -1}"#,
    )
    .await;
    click(&page, &format!("{default} .save-policy")).await;
    wait_until(
        &page,
        &format!("document.querySelector(\"{default} .policy-result\").textContent.startsWith('Not saved')"),
        "the server's refusal",
    )
    .await;
    fill(
        &page,
        &format!("{default} .rules"),
        r#"{"approval_threshold_usd": "4"}"#,
    )
    .await;
    click(&page, &format!("{default} .save-policy")).await;
    wait_until(
        &page,
        &format!(
            "(document.querySelector(\"{default} .what\")?.textContent ?? '').includes('version 1')"
        ),
        "the saved version",
    )
    .await;
    let (_, read) = s.get(&t.approver, "/policies/default").await;
    assert_eq!(read["approval_threshold_usd"], "4");

    let session = s.session(&t.agent, json!({})).await;
    let (_, p) = s.pay(&t.agent, session, "5", "USDC").await;
    let approval = p["approval_id"]
        .as_str()
        .expect("a person decides $5 now")
        .to_owned();
    click(&page, "#views [data-view=inbox]").await;
    appears(&page, &approval).await;
    let reason = eval(
        &page,
        &format!(
            "document.querySelector(\"{} .reason\").textContent",
            item(&approval)
        ),
    )
    .await;
    assert!(
        reason.as_str().unwrap().contains("policy \"default\" v1"),
        "{reason}"
    );

    let other = chrome.open(&s.base).await;
    sign_in(&other, &t.approver).await;
    click(&other, "#views [data-view=policies]").await;
    wait_until(
        &other,
        &format!("!!document.querySelector(\"{default} .rules\")"),
        "the policy for the approver",
    )
    .await;
    let editable = eval(
        &other,
        &format!(
            "[!document.querySelector(\"{default} .rules\").readOnly, !!document.querySelector('.save-policy'), \
             !document.querySelector('#new-policy').hidden]"
        ),
    )
    .await;
    assert_eq!(
        editable,
        json!([false, false, false]),
        "approvers only read"
    );
}

/// A server whose default policy has `rules`, an agent's session, and the inbox signed in as an approver.
async fn approver_under(
    rules: serde_json::Value,
) -> (TestServer, Team, uuid::Uuid, Chromium, Page) {
    let s = TestServer::start(Backend::Sqlite).await;
    let t = s.team(ADMIN_TOKEN).await;
    let (status, policy) = s.put(ADMIN_TOKEN, "/policies/default", rules).await;
    assert_eq!(status, 200, "{policy}");
    let session = s.session(&t.agent, json!({})).await;
    let chrome = Chromium::launch().await;
    let page = chrome.open(&s.base).await;
    sign_in(&page, &t.approver).await;
    (s, t, session, chrome, page)
}

/// A session the circuit breaker freezes shows up in the inbox at once, with why; a person unfreezes it there
/// (a second click confirms), and it pays again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_see_and_unfreeze_a_frozen_session() {
    let rules = json!({"velocity": [{"per_seconds": 60, "max_payments": 1}]});
    let (s, t, session, _chrome, page) = approver_under(rules).await;
    s.pay(&t.agent, session, "1", "USDC").await;
    let (_, tripped) = s.pay(&t.agent, session, "1", "USDC").await;
    assert_eq!(tripped["reason"], "circuit_breaker");

    let alert = format!("#frozen-list [data-session-id='{session}']");
    wait_until(
        &page,
        &format!("!!document.querySelector(\"{alert}\")"),
        "the frozen session's alert",
    )
    .await;
    let text = text(&page, &alert).await;
    assert!(text.contains("velocity[0]"), "{text}");
    assert!(text.contains("more than 1 payments within 60 s"), "{text}");
    click(&page, &format!("{alert} button.unfreeze")).await;
    let (_, view) = s.get(&t.approver, &format!("/sessions/{session}")).await;
    assert_eq!(view["state"], "frozen", "one click only arms the button");
    click(&page, &format!("{alert} button.unfreeze")).await;
    wait_until(
        &page,
        &format!("!document.querySelector(\"{alert}\")"),
        "the alert to go",
    )
    .await;
    let (_, view) = s.get(&t.approver, &format!("/sessions/{session}")).await;
    assert_eq!(view["state"], "active", "{view}");
    let (_, paid) = s.pay(&t.agent, session, "1", "USDC").await;
    assert_eq!(paid["status"], "authorized");
    s.finish().await;
}

/// A request that needs two people shows its quorum; one person's approval keeps the card, counted, with the
/// approve button spent; another person's approval (here over the API) completes it and the card leaves. A
/// request nobody decides shows its escalation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_and_an_escalation_are_shown() {
    let rules = json!({"quorums": [{"above_usd": "100", "approvals_required": 2}],
        "escalation": [{"after_seconds": 60, "group": "leads"}]});
    let (s, t, session, _chrome, page) = approver_under(rules).await;
    let (_, p) = s.pay(&t.agent, session, "500", "USDC").await;
    let id = p["approval_id"].as_str().unwrap().to_owned();
    appears(&page, &id).await;
    let quorum = format!("{} .quorum", item(&id));
    assert_eq!(text(&page, &quorum).await, "Approvals 0 of 2");
    let card = eval(
        &page,
        &format!("document.querySelector(\"{}\").textContent", item(&id)),
    )
    .await;
    let card = card.as_str().unwrap();
    assert!(
        card.contains("Agent in session test · policy default v1"),
        "{card}"
    );
    assert!(card.contains("First payment to this payee"), "{card}");
    click(&page, &format!("{} button.approve", item(&id))).await;
    wait_until(
        &page,
        &format!("document.querySelector(\"{quorum}\").dataset.approvals === '1'"),
        "the person's approval, counted",
    )
    .await;
    assert!(text(&page, &quorum).await.starts_with("Approvals 1 of 2 ("));
    let disabled = format!(
        "document.querySelector(\"{} button.approve\").disabled",
        item(&id)
    );
    assert_eq!(eval(&page, &disabled).await, true);
    let (_, view) = s.get(&t.approver, &format!("/approvals/{id}")).await;
    assert_eq!(view["status"], "pending");
    let second = s
        .key(&t.admin, paygent_engine::domain::Role::Approver)
        .await;
    let (status, done) = s.decide(&second, &id, "approve", json!({})).await;
    assert_eq!(
        (status.as_u16(), done["status"].clone()),
        (200, json!("approved"))
    );
    leaves(&page, &id).await;

    // Nobody decides the next one for a minute: it is escalated, and its card says so.
    let (_, p) = s.pay(&t.agent, session, "500", "USDC").await;
    let id = p["approval_id"].as_str().unwrap().to_owned();
    appears(&page, &id).await;
    s.clock.advance(chrono::Duration::seconds(61));
    assert_eq!(s.paygent.escalate_due().await.unwrap(), 1);
    let quorum = format!("{} .quorum", item(&id));
    wait_until(
        &page,
        &format!("document.querySelector(\"{quorum}\").textContent.includes('escalated to leads')"),
        "the escalation on the card",
    )
    .await;
    s.finish().await;
}

/// A person approves a payment and lets it stand for $40 in the inbox: the card leaves, the standing approval is
/// listed, and the agent's next payment to that payee goes without asking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_is_let_stand_from_the_inbox() {
    let (s, t, session, _chrome, page) = approver_under(json!({})).await;
    let (_, p) = s.pay(&t.agent, session, "25", "USDC").await;
    let id = p["approval_id"].as_str().unwrap().to_owned();
    appears(&page, &id).await;
    click(&page, &format!("{} button.stand", item(&id))).await;
    fill(
        &page,
        &format!("{} .stand-form input[name=max_usd]", item(&id)),
        "40",
    )
    .await;
    click(
        &page,
        &format!("{} .stand-form button[type=submit]", item(&id)),
    )
    .await;
    leaves(&page, &id).await;
    let (_, standing) = s.get(&t.approver, "/standing-approvals").await;
    assert_eq!(standing[0]["max_usd"], "40", "{standing}");
    assert_eq!(standing[0]["approval_id"], id.as_str());
    let (_, next) = s.pay(&t.agent, session, "30", "USDC").await;
    assert_eq!(next["status"], "authorized", "{next}");
    s.finish().await;
}

/// A swap's request tells people what they would approve: what it sells, the least it buys and the quote that came
/// from, the exchange, the price impact and the slippage bound; approve or reject only. (The request is a
/// payment's, stored as a swap's would be: swaps traded on a chain are in the rails' tests.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_request_shows_its_quote() {
    let s = TestServer::start(Backend::Sqlite).await;
    let t = s.team(ADMIN_TOKEN).await;
    let session = s.session(&t.agent, json!({})).await;
    let (_, p) = s.pay(&t.agent, session, "25", "USDC").await;
    let id = p["approval_id"].as_str().unwrap().to_owned();
    let args = json!({"amount": "50", "currency": "USDC", "description": null,
        "recipient": "0x145863Eb42Cf62847A6Ca784e6416C1682b1b2Ae", "swap": {"dex": "vvs", "to": "WCRO",
        "expected_out": "512.5", "min_out": "509.93", "price_impact_bps": 81, "max_slippage_bps": 50}});
    s.sql(&format!(
        "UPDATE approval_requests SET tool = 'swap', args = '{args}', allowed_decisions = 'approve,reject' \
         WHERE id = '{id}'"
    ))
    .await;
    let chrome = Chromium::launch().await;
    let page = chrome.open(&s.base).await;
    sign_in(&page, &t.approver).await;
    appears(&page, &id).await;
    let what = text(&page, &format!("{} .what", item(&id))).await;
    assert_eq!(
        what,
        "Swap 50 USDC for at least 509.93 WCRO (quoted 512.5) on vvs · price impact 0.81% · slippage bound 0.50%"
    );
    let edit = eval(
        &page,
        &format!(
            "document.querySelector(\"{} button.edit\").hidden",
            item(&id)
        ),
    )
    .await;
    assert_eq!(edit, true, "a swap is approved or rejected as quoted");
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decided_requests_are_searched_and_paged() {
    let s = TestServer::start(Backend::Sqlite).await;
    let t = s.team(ADMIN_TOKEN).await;
    let session = s.session(&t.agent, json!({})).await;
    let mut filed = Vec::new();
    for amount in ["20", "30", "40"] {
        let (_, p) = s.pay(&t.agent, session, amount, "USDC").await;
        filed.push(p["approval_id"].as_str().unwrap().to_owned());
    }
    let (approved, rejected, pending) = (&filed[0], &filed[1], &filed[2]);
    s.decide(&t.approver, approved, "approve", json!({})).await;
    let reason = json!({"reason": "too much for weather data"});
    s.decide(&t.approver, rejected, "reject", reason).await;
    let chrome = Chromium::launch().await;
    let page = chrome.open(&s.base).await;
    sign_in(&page, &t.approver).await;

    click(&page, "#views [data-view=decided]").await;
    let listed =
        "[...document.querySelectorAll('#decided-list li')].map(li => li.dataset.approvalId)";
    wait_until(
        &page,
        &format!("{listed}.length === 2"),
        "the two decided requests",
    )
    .await;
    assert_eq!(
        eval(&page, listed).await,
        json!([rejected, approved]),
        "newest first, not the pending one"
    );
    assert!(
        !eval(&page, listed)
            .await
            .to_string()
            .contains(pending.as_str())
    );
    let (_, me) = s.get(&t.agent, "/me").await;
    let agent = me["key_id"].as_str().unwrap();
    let option = text(&page, &format!("#decided-agent option[value='{agent}']")).await;
    assert_eq!(option, "Agent", "the agent filter names agents");
    screenshot(&page, "decided-desktop.png").await;
    let phone = at_phone_width(&chrome, &s.base).await;
    sign_in(&phone, &t.approver).await;
    click(&phone, "#views [data-view=decided]").await;
    wait_until(
        &phone,
        &format!("{listed}.length === 2"),
        "the list at phone width",
    )
    .await;
    screenshot(&phone, "decided-phone.png").await;
    fits_a_phone(&phone).await;
    let outcome = eval(
        &page,
        &format!(
            "document.querySelector(\"{} .outcome\").textContent",
            item(rejected)
        ),
    )
    .await;
    assert!(
        outcome.as_str().unwrap().contains("rejected by Approver"),
        "{outcome}"
    );
    assert!(
        outcome
            .as_str()
            .unwrap()
            .contains("too much for weather data"),
        "{outcome}"
    );

    fill(&page, "#decided-filter [name=outcome]", "approved").await;
    click(&page, "#decided-filter button[type=submit]").await;
    wait_until(
        &page,
        &format!("JSON.stringify({listed}) === '[\"{approved}\"]'"),
        "only the approved one",
    )
    .await;

    // More than a page: the rest comes with "More", from the server's cursor.
    s.copy_pending(approved, 60).await;
    s.sql("UPDATE approval_requests SET status = 'expired' WHERE id LIKE '%-0000-4000-8000-000000000000'")
        .await;
    fill(&page, "#decided-filter [name=outcome]", "").await;
    click(&page, "#decided-filter button[type=submit]").await;
    wait_until(
        &page,
        &format!("{listed}.length === 50"),
        "a first page of 50",
    )
    .await;
    click(&page, "#decided-more").await;
    wait_until(
        &page,
        &format!("{listed}.length === 62"),
        "all 62 after More",
    )
    .await;
    wait_until(
        &page,
        "document.querySelector('#decided-more').hidden",
        "no more after the last page",
    )
    .await;
    s.finish().await;
}

/// An agent named "Ops Bot" under a daily limit of $1,000 and a policy that calls the test payee "Weather API",
/// and its session with a $100 budget, which paid 3 USDC.
async fn ops_bot(s: &TestServer) -> (String, uuid::Uuid) {
    let labels = json!({paygent_testkit::PAYEE: "Weather API"});
    let rules = json!({"limits": [{"period": "day", "usd": "1000"}], "payees": {"labels": labels}});
    let (_, bot) = s.bound_agent("Ops Bot", rules).await;
    let session = s.session(&bot, json!({"daily_limit_usd": "100"})).await;
    let (status, paid) = s.pay(&bot, session, "3", "USDC").await;
    assert_eq!(paid["status"], "authorized", "{status}: {paid}");
    (bot, session)
}

/// The spend view draws bars, charts and top payees from data the test made, and its numbers are the API's:
/// for the tenant, an agent picked by name (its policy's limit) and a session (its budget, with a reservation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_is_drawn_from_what_was_paid() {
    let s = TestServer::start(Backend::Sqlite).await;
    let t = s.team(ADMIN_TOKEN).await;
    let (bot, session) = ops_bot(&s).await;
    let other = "0x2222222222222222222222222222222222222222";
    let body =
        json!({"session_id": session, "amount": "4.50", "currency": "USDC", "recipient": other});
    s.post(&bot, "/payments", body).await;
    let (_, pending) = s.pay(&bot, session, "25", "USDC").await;
    let pending = pending["approval_id"].as_str().unwrap().to_owned();
    let (_, api) = s.get(&t.approver, "/spend").await;
    let chrome = Chromium::launch().await;
    let page = chrome.open(&s.base).await;
    sign_in(&page, &t.approver).await;
    click(&page, "#views [data-view=spend]").await;
    let rows = "[...document.querySelectorAll('#spend-days tr[data-start]')]";
    wait_until(&page, &format!("{rows}.length === 1"), "today's figures").await;
    let shown = eval(
        &page,
        &format!(
            "{rows}.map(tr => [tr.dataset.start, tr.cells[1].textContent, tr.cells[2].textContent])"
        ),
    )
    .await;
    let today = &api["days"][29];
    let start = today["start"].as_str().unwrap().to_owned();
    assert_eq!(
        shown,
        json!([[start, today["usd"], "2"]]),
        "the page's figures are the API's: {api}"
    );
    let payees = eval(
        &page,
        "[...document.querySelectorAll('#spend-payees li')].map(li => li.textContent)",
    )
    .await;
    assert_eq!(
        payees,
        json!([
            "0x2222…2222: 4.5 USD in 1 payment",
            "0x1111…1111: 3 USD in 1 payment"
        ]),
        "payees by their ends, the most paid first: {api}"
    );
    let drawn =
        "document.querySelectorAll('#spend-hours-chart canvas, #spend-days-chart canvas').length";
    assert_eq!(eval(&page, drawn).await, 2, "both charts are drawn");

    let (_, me) = s.get(&bot, "/me").await;
    let agent = format!("agent_id={}", me["key_id"].as_str().unwrap());
    let option = text(&page, &format!("#spend-scope option[value='{agent}']")).await;
    assert_eq!(option, "Ops Bot", "the agent by name");
    let bars = "[...document.querySelectorAll('#spend-limits .bar-label')].map(p => p.textContent)";
    // What the page should say of a limit line, from the API's own figures.
    let said = |label: &str, l: &serde_json::Value| {
        let figure = |k: &str| l[k].as_str().unwrap().to_owned();
        let line = format!(
            "{label}: {} spent, {} reserved of {}",
            figure("spent"),
            figure("reserved"),
            figure("limit")
        );
        json!([line]).to_string()
    };
    let (_, mine) = s.get(&t.approver, &format!("/spend?{agent}")).await;
    assert_eq!(mine["limits"][0]["period"], "day", "{mine}");
    fill(&page, "#spend-scope", &agent).await;
    let limit = said("USD this day", &mine["limits"][0]);
    wait_until(
        &page,
        &format!("JSON.stringify({bars}) === {limit:?}"),
        "the agent's limit",
    )
    .await;
    let (_, one) = s
        .get(&t.approver, &format!("/spend?session_id={session}"))
        .await;
    fill(&page, "#spend-scope", &format!("session_id={session}")).await;
    let budget = said("USD today", &one["budget"]["usd"]);
    wait_until(
        &page,
        &format!("JSON.stringify({bars}) === {budget:?}"),
        "the session's budget",
    )
    .await;
    let width = eval(
        &page,
        "document.querySelector('#spend-limits .bar .reserved').style.width",
    )
    .await;
    assert_eq!(width, "25%");
    let first = format!(
        "document.querySelector(\"#spend-payees li[data-payee='{}']\")?.textContent",
        paygent_testkit::PAYEE
    );
    let labelled = "Weather API (0x1111…1111): 3 USD in 1 payment";
    let named = format!("{first} === {labelled:?}");
    wait_until(&page, &named, "the payee by its policy's label").await;
    let card = format!(
        "document.querySelector(\"{} .payee-history\").textContent",
        item(&pending)
    );
    let card = eval(&page, &card).await;
    let card = card.as_str().unwrap();
    assert!(
        card.starts_with("Weather API — Paid $3"),
        "the card names the payee: {card}"
    );
    screenshot(&page, "spend-desktop.png").await;

    let phone = at_phone_width(&chrome, &s.base).await;
    sign_in(&phone, &t.approver).await;
    click(&phone, "#views [data-view=spend]").await;
    wait_until(
        &phone,
        &format!("{rows}.length === 1"),
        "the figures at phone width",
    )
    .await;
    screenshot(&phone, "spend-phone.png").await;
    fits_a_phone(&phone).await;
    s.finish().await;
}

/// axe-core finds no serious or critical violation on the sign-in form or in any view, each showing what a
/// tenant with a little history has: a pending request, a decided one, an execution with its steps open,
/// sessions with budgets, spend with a budget bar, policies, and the audit trail with its chain checked. Each view
/// fits a phone too; both widths are saved as screenshots (docs/console takes them from there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_view_is_accessible_and_fits_a_phone() {
    let s = TestServer::start(Backend::Sqlite).await;
    let t = s.team(ADMIN_TOKEN).await;
    let (bot, session) = ops_bot(&s).await;
    let (_, decided) = s.pay(&bot, session, "30", "USDC").await;
    let decided = decided["approval_id"].as_str().unwrap();
    s.decide(&t.approver, decided, "approve", json!({})).await;
    s.pay(&bot, session, "25", "USDC").await;
    let steps = json!([{"tool": "transfer", "args": {"to": paygent_testkit::PAYEE, "amount": "2", "currency": "USDC"}}]);
    let execution = s.execute(&bot, session, steps).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let shown = Shown { session, execution };
    let chrome = Chromium::launch().await;
    let page = chrome.open(&s.base).await;
    let mut found = vec![("sign-in", serious_violations(&page).await)];
    sign_in(&page, ADMIN_TOKEN).await;
    for view in VIEWS {
        sized(&page, 1280, 800, false).await;
        shown.open(&page, view).await;
        found.push((view, serious_violations(&page).await));
        screenshot(&page, &format!("console-{view}.png")).await;
    }
    let violations: Vec<_> = found.into_iter().filter(|(_, v)| !v.is_empty()).collect();
    assert!(violations.is_empty(), "{violations:#?}");
    let phone = at_phone_width(&chrome, &s.base).await;
    sign_in(&phone, ADMIN_TOKEN).await;
    for view in VIEWS {
        sized(&phone, 390, 844, true).await;
        shown.open(&phone, view).await;
        screenshot(&phone, &format!("console-{view}-phone.png")).await;
        fits_a_phone(&phone).await;
    }
    s.finish().await;
}

/// The inbox's views, in the order of their buttons.
const VIEWS: [&str; 7] = [
    "inbox",
    "decided",
    "executions",
    "budgets",
    "spend",
    "policies",
    "audit",
];

/// What the views of [`every_view_is_accessible_and_fits_a_phone`] show: a session's spend, an execution's steps.
struct Shown {
    session: uuid::Uuid,
    execution: String,
}

impl Shown {
    /// Opens `view` and waits for its content, with the execution's steps open, the session's spend and the
    /// chain checked.
    async fn open(&self, page: &Page, view: &str) {
        click(page, &format!("#views [data-view={view}]")).await;
        let content = match view {
            "inbox" => "#items li",
            "decided" => "#decided-list li",
            "executions" => "#execution-list li",
            "budgets" => "#session-list li",
            "spend" => "#spend-days tr[data-start]",
            "policies" => "#policy-list li",
            _ => "#audit-list li",
        };
        let ready = format!("document.querySelectorAll(\"{content}\").length > 0");
        wait_until(page, &ready, view).await;
        match view {
            "executions" => {
                let row = format!("[data-execution-id='{}']", self.execution);
                click(page, &format!("{row} .what")).await;
                let steps = format!("!!document.querySelector(\"{row} .steps li\")");
                wait_until(page, &steps, "its steps").await;
            }
            "spend" => {
                fill(
                    page,
                    "#spend-scope",
                    &format!("session_id={}", self.session),
                )
                .await;
                let bars = "document.querySelectorAll('#spend-limits .bar').length === 1";
                wait_until(page, bars, "the session's budget bar").await;
            }
            "audit" => {
                click(page, "#verify-chain").await;
                let checked = "document.querySelector('#chain-result').textContent !== ''";
                wait_until(page, checked, "the check").await;
            }
            _ => {}
        }
    }
}
