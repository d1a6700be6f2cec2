//! Reads `GET /metrics` with Prometheus's own parser (its Python client's OpenMetrics parser, in the peers' venv).

use serde_json::Value;
use std::process::Stdio;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// The samples of an OpenMetrics exposition, by name: `[{labels, value}]`. Panics if the parser refuses it.
pub async fn parsed(text: &str) -> Value {
    let peers = crate::chain::peers_dir();
    let mut parser = Command::new(peers.join(".venv/bin/python"))
        .arg(peers.join("openmetrics-parse.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the peers' Python runs (.ci/run installs it)");
    let mut stdin = parser.stdin.take().expect("stdin");
    stdin
        .write_all(text.as_bytes())
        .await
        .expect("the parser reads");
    drop(stdin);
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        parser.wait_with_output(),
    )
    .await
    .expect("the parser answers within 30 s")
    .expect("the parser ran");
    assert!(
        out.status.success(),
        "Prometheus's parser refused the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the parser's JSON")
}

/// The value of the sample `name` whose labels include all of `labels`, or 0 when there is none.
pub fn sample(samples: &Value, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples[name]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| labels.iter().all(|(k, v)| s["labels"][*k] == *v))
        .and_then(|s| s["value"].as_f64())
        .unwrap_or(0.0)
}
