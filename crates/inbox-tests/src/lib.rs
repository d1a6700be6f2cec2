//! A headless Chromium for the inbox tests: Debian's `/usr/bin/chromium`, started with the flags this machine
//! needs (root, no GPU, no background network), and helpers that wait for the page instead of sleeping.

use chromiumoxide::{Browser, BrowserConfig, Page};
use futures::StreamExt;
use std::time::Duration;

/// A running browser; closed when dropped.
pub struct Chromium {
    pub browser: Browser,
    profile: std::path::PathBuf,
    handler: tokio::task::JoinHandle<()>,
}

impl Chromium {
    pub async fn launch() -> Chromium {
        let profile = std::env::temp_dir().join(format!(
            "paygent-chromium-{}",
            std::process::id() as u64 * 1000 + rand_suffix()
        ));
        let config = BrowserConfig::builder()
            .chrome_executable(
                std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
            )
            .no_sandbox()
            .user_data_dir(&profile)
            .window_size(1280, 900)
            .args([
                "--headless=new",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ])
            .build()
            .expect("browser config");
        let (browser, mut events) = Browser::launch(config)
            .await
            .expect("chromium starts (apt-get install chromium)");
        let handler = tokio::spawn(async move { while events.next().await.is_some() {} });
        Chromium {
            browser,
            profile,
            handler,
        }
    }

    pub async fn open(&self, url: &str) -> Page {
        let page = self.browser.new_page(url).await.expect("page opens");
        page.wait_for_navigation().await.expect("page loads");
        page
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        self.handler.abort();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64 % 1000)
}

/// Evaluates `expression` until it is true; panics with `what` after 15 s. A page that is navigating (a form
/// submitted) has no context for a moment: that reading counts as not yet.
pub async fn wait_until(page: &Page, expression: &str, what: &str) {
    let holds = || async {
        let value = tokio::time::timeout(Duration::from_secs(5), page.evaluate(expression)).await;
        match value {
            Ok(Ok(v)) => v.into_value::<serde_json::Value>().ok() == Some(true.into()),
            _ => false,
        }
    };
    let what = format!("{what} ({expression})");
    paygent_testkit::eventually(Duration::from_secs(15), &what, holds, |held| *held).await;
}

/// Evaluates `expression` and returns its value as JSON. A browser that does not answer in 10 s fails the test
/// rather than hanging it.
pub async fn eval(page: &Page, expression: &str) -> serde_json::Value {
    tokio::time::timeout(Duration::from_secs(10), page.evaluate(expression))
        .await
        .unwrap_or_else(|_| panic!("the browser did not answer: {expression}"))
        .expect("script runs")
        .into_value()
        .unwrap_or(serde_json::Value::Null)
}

/// axe-core (from the npm test peers) over the page as it is now: its serious and critical violations, each as
/// `{id, impact, help, targets}`. axe goes in through the DevTools protocol, which the page's
/// Content-Security-Policy does not govern, once per page.
pub async fn serious_violations(page: &Page) -> Vec<serde_json::Value> {
    static AXE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let axe = AXE.get_or_init(|| {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../peers/node_modules/axe-core/axe.min.js"
        );
        std::fs::read_to_string(path)
            .expect("axe-core among the npm peers (bash .ci/run installs it)")
    });
    if eval(page, "typeof axe").await != "object" {
        page.evaluate(axe.as_str()).await.expect("axe-core loads");
    }
    let run = "axe.run(document, {resultTypes: ['violations']}).then(r => r.violations \
        .filter(v => v.impact === 'serious' || v.impact === 'critical') \
        .map(v => ({id: v.id, impact: v.impact, help: v.help, targets: v.nodes.map(n => n.target.join(' '))})))";
    let found = tokio::time::timeout(Duration::from_secs(30), page.evaluate(run))
        .await
        .expect("axe answers within 30 s")
        .expect("axe runs");
    found.into_value().expect("a list of violations")
}
