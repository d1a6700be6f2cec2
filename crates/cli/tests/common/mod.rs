//! Starting the real `paygent` binary for the tests of this crate.

use std::io::{BufRead, BufReader};
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

/// Starts `paygent serve` with `env` on a port the server picks itself, and returns the process and that port
/// once it listens. (A port picked here and handed over could be taken by another test's socket meanwhile.)
pub fn spawn_serve(env: &[(&str, &str)]) -> (Serve, u16) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_paygent"));
    cmd.arg("serve")
        .env("PAYGENT_LISTEN", "127.0.0.1:0")
        .env_remove("PAYGENT_CONFIG")
        .env_remove("PAYGENT_WALLET_KEY")
        .env_remove("PAYGENT_NETWORK")
        // The test peers listen on loopback: allowed by configuration, as an operator would.
        .env("PAYGENT_EGRESS_ALLOW", "127.0.0.0/8,::1/128")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = Serve(cmd.spawn().unwrap());
    let port = serving_port(Lines::of(child.stdout.take().unwrap()));
    (child, port)
}

/// A child's output, read line by line on a thread of its own to its end (so the child never blocks on a full
/// pipe): each wait for a line is bounded, and lines nobody waits for any more are dropped.
pub struct Lines(std::sync::mpsc::Receiver<String>);

impl Lines {
    pub fn of(stdout: std::process::ChildStdout) -> Lines {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Lines(rx)
    }

    /// The next line within a minute; panics naming `what` it waited for otherwise, or if the output ended.
    pub fn next(&self, what: &str) -> String {
        self.0
            .recv_timeout(std::time::Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("no {what} from paygent serve within 60 s: {e}"))
    }
}

/// Reads a server's output up to its "paygent serving" line; returns the port it listens on.
pub fn serving_port(output: Lines) -> u16 {
    loop {
        let line = output.next("\"paygent serving\" line");
        let plain = strip_ansi(&line);
        if plain.contains("paygent serving")
            && let Some(addr) = plain.split("listen=").nth(1)
        {
            let addr = addr.split_whitespace().next().unwrap_or_default();
            return addr.rsplit(':').next().unwrap().parse().unwrap();
        }
    }
}

/// A log line without its terminal colours.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|c| c.is_ascii_alphabetic());
        } else {
            out.push(c);
        }
    }
    out
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
