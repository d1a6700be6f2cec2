//! Starting the real `paygent` binary for the tests of this crate.

use std::process::{Command, Stdio};

/// A `paygent serve` process, killed when dropped, so a failing test leaves none behind.
pub struct Serve(pub std::process::Child);

impl std::ops::Deref for Serve {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Serve {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `paygent serve` with `env` on a free port; returns the process and its port.
pub fn spawn_serve(env: &[(&str, &str)]) -> (Serve, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_paygent"));
    cmd.arg("serve")
        .env("PAYGENT_LISTEN", format!("127.0.0.1:{port}"))
        .env_remove("PAYGENT_CONFIG")
        .env_remove("PAYGENT_WALLET_KEY")
        .env_remove("PAYGENT_NETWORK")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    (Serve(cmd.spawn().unwrap()), port)
}

/// Waits until a server listens on `port`; returns its base URL.
pub fn wait_ready(port: u16) -> String {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return format!("http://127.0.0.1:{port}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("paygent serve did not start on {port}");
}

/// Makes an agent key (with the `admin` token) and a session of it on a running server: (agent token, session id).
pub async fn agent_and_session(
    http: &reqwest::Client,
    base: &str,
    admin: &str,
) -> (String, String) {
    let post = |token: String, path: &str, body: serde_json::Value| {
        http.post(format!("{base}/api/v1{path}"))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    let agent: serde_json::Value = post(
        admin.to_owned(),
        "/keys",
        serde_json::json!({"name": "agent", "role": "agent"}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let agent = agent["token"].as_str().expect("a token").to_owned();
    let session: serde_json::Value = post(agent.clone(), "/sessions", serde_json::json!({}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (agent, session["id"].as_str().expect("an id").to_owned())
}
