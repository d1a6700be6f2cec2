//! A real MCP client for tests: the official TypeScript SDK (`peers/mcp-client.mjs`), driven one JSON line at a
//! time, with several calls in flight. Every wait on it is bounded.

use crate::chain::peers_dir;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// The longest a test waits for one answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(60);

pub struct McpClient {
    child: Child,
    input: ChildStdin,
    output: Lines<BufReader<ChildStdout>>,
    next_id: u64,
    /// Answers read while waiting for another, by id.
    answers: HashMap<u64, Value>,
    /// Progress notifications seen, by the id of their call.
    progress: HashMap<u64, Vec<Value>>,
}

impl McpClient {
    /// A client of `url` (a server's `/mcp`) over streamable HTTP, sending `token` as its key.
    pub async fn http(url: &str, token: &str) -> Result<McpClient, String> {
        McpClient::start(&["http", url, token]).await
    }

    /// A client that launches `command args` and speaks MCP on its stdin and stdout, as a desktop client does.
    pub async fn stdio(command: &str, args: &[&str]) -> Result<McpClient, String> {
        let mut all = vec!["stdio", command];
        all.extend_from_slice(args);
        McpClient::start(&all).await
    }

    /// Starts the driver; `Err` with the client's words when it could not connect.
    async fn start(args: &[&str]) -> Result<McpClient, String> {
        let dir = peers_dir();
        let mut child = Command::new("node")
            .arg(dir.join("mcp-client.mjs"))
            .args(args)
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs the MCP client (bash .ci/run installs peers/)");
        let mut client = McpClient {
            input: child.stdin.take().expect("stdin"),
            output: BufReader::new(child.stdout.take().expect("stdout")).lines(),
            child,
            next_id: 1,
            answers: HashMap::new(),
            progress: HashMap::new(),
        };
        let connected = client.answer(0).await;
        match connected.get("error") {
            Some(e) => Err(e.as_str().unwrap_or_default().to_owned()),
            None => Ok(client),
        }
    }

    /// Sends an order without waiting for its answer; returns its id.
    pub async fn send(&mut self, mut order: Value) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        order["id"] = json!(id);
        let line = format!("{order}\n");
        self.input
            .write_all(line.as_bytes())
            .await
            .expect("the MCP client reads its orders");
        id
    }

    /// Starts a tool call; its answer comes with [`McpClient::answer`].
    pub async fn start_call(&mut self, name: &str, arguments: Value) -> u64 {
        let order = json!({"op": "call", "name": name, "arguments": arguments});
        self.send(order).await
    }

    /// Calls a tool and waits for its result (`{content, structuredContent, isError}`), or the client's error as
    /// `{"error": ...}`.
    pub async fn call(&mut self, name: &str, arguments: Value) -> Value {
        let id = self.start_call(name, arguments).await;
        self.answer(id).await
    }

    /// The tools the server lists.
    pub async fn tools(&mut self) -> Vec<Value> {
        let id = self.send(json!({"op": "list"})).await;
        let listed = self.answer(id).await;
        listed["result"]["tools"]
            .as_array()
            .unwrap_or_else(|| panic!("a tool list: {listed}"))
            .clone()
    }

    /// The resources and resource templates the server lists.
    pub async fn resources(&mut self) -> Value {
        let id = self.send(json!({"op": "resources"})).await;
        self.answer(id).await
    }

    /// Reads a resource: `{"result": {"contents": [...]}}` or `{"error": ...}`.
    pub async fn read(&mut self, uri: &str) -> Value {
        let id = self.send(json!({"op": "read", "uri": uri})).await;
        self.answer(id).await
    }

    /// Cancels a call in flight, as a client whose user gave up does.
    pub async fn cancel(&mut self, call: u64) {
        let id = self.send(json!({"op": "cancel", "target": call})).await;
        self.answer(id).await;
    }

    /// The answer to order `id`: `{"result": ...}` or `{"error": ...}`, within a minute.
    pub async fn answer(&mut self, id: u64) -> Value {
        loop {
            if let Some(found) = self.answers.remove(&id) {
                return found;
            }
            self.read_line(id).await;
        }
    }

    /// Waits until call `id` has reported progress at least once (it is under way in the server).
    pub async fn under_way(&mut self, id: u64) {
        while self.progress_of(id).is_empty() {
            assert!(
                !self.answers.contains_key(&id),
                "call {id} ended before any progress"
            );
            self.read_line(id).await;
        }
    }

    /// Reads the client's next line, within a minute, and files it as an answer or a progress note.
    async fn read_line(&mut self, waiting_for: u64) {
        let line = tokio::time::timeout(ANSWER_WITHIN, self.output.next_line())
            .await
            .unwrap_or_else(|_| panic!("nothing about {waiting_for} within {ANSWER_WITHIN:?}"))
            .expect("the MCP client's output")
            .unwrap_or_else(|| panic!("the MCP client ended before answering {waiting_for}"));
        let message: Value = serde_json::from_str(&line).expect("a JSON line");
        let of = message["id"].as_u64().expect("an id");
        match message.get("progress") {
            Some(p) => self.progress.entry(of).or_default().push(p.clone()),
            None => {
                self.answers.insert(of, message);
            }
        }
    }

    /// The progress notifications seen so far for call `id`.
    pub fn progress_of(&self, id: u64) -> &[Value] {
        self.progress.get(&id).map_or(&[], Vec::as_slice)
    }

    /// Closes the client (its input), waiting a bounded time for it to end.
    pub async fn close(mut self) {
        drop(self.input);
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// The structured content of a tool result, with its text and whether it is an error.
pub fn tool_result(answer: &Value) -> (Value, String, bool) {
    let result = answer
        .get("result")
        .unwrap_or_else(|| panic!("a tool result: {answer}"));
    let text = result["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let failed = result["isError"].as_bool().unwrap_or(false);
    (result["structuredContent"].clone(), text, failed)
}
