//! A stand-in for Slack on loopback: it records the messages Paygent posts and presses their buttons as Slack
//! does, signing each press.

use paygent_engine::notify::slack::SlackApp;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

pub const BOT_TOKEN: &str = "xoxb-paygent-tests";
pub const SIGNING_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";

pub struct SlackStandIn {
    pub url: String,
    _process: Child,
}

/// What Paygent answered a press.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
}

impl SlackStandIn {
    pub async fn start() -> SlackStandIn {
        let mut node = Command::new("node");
        node.arg(crate::chain::peers_dir().join("slack-standin.mjs"));
        let config = json!({"token": BOT_TOKEN, "signing_secret": SIGNING_SECRET});
        let (process, said, _) = crate::chain::peer(node, "the Slack stand-in", &config).await;
        SlackStandIn {
            url: said["url"].as_str().expect("url").to_owned(),
            _process: process,
        }
    }

    /// The Slack app a server is set up with to post here.
    pub fn app(&self) -> SlackApp {
        SlackApp::new(&format!("{}/api", self.url), BOT_TOKEN, SIGNING_SECRET)
    }

    /// The Web API calls it took, in arrival order: `[{method, body, answer}]`.
    pub async fn calls(&self) -> Vec<Value> {
        let resp = reqwest::get(format!("{}/calls", self.url))
            .await
            .expect("the stand-in answers");
        resp.json().await.expect("JSON")
    }

    /// Presses a button of a message on behalf of Slack user `user`, at `server`'s interactivity endpoint;
    /// `change` may set `signed_ago` (seconds) or another `secret`. The answer is held to the published contract.
    pub async fn press(&self, server: &str, user: &str, button: &Value, change: Value) -> Answer {
        let path = "/api/v1/slack/interactions";
        let mut asked = json!({"url": format!("{server}{path}"), "user": user,
            "action_id": button["action_id"], "value": button["value"]});
        if let (Some(a), Some(c)) = (asked.as_object_mut(), change.as_object()) {
            a.extend(c.clone());
        }
        let resp = reqwest::Client::new()
            .post(format!("{}/press", self.url))
            .json(&asked)
            .send()
            .await
            .expect("the stand-in presses");
        let said: Value = resp.json().await.expect("JSON");
        let status = StatusCode::from_u16(said["status"].as_u64().unwrap_or(0) as u16).unwrap();
        crate::contract::check(&Method::POST, path, status, said["content_type"].as_str());
        Answer {
            status,
            body: said["body"].clone(),
        }
    }
}

/// The buttons of a message a call posted or updated: `[{action_id, value, ...}]`, none once it is decided.
pub fn buttons(call: &Value) -> Vec<Value> {
    call["body"]["blocks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["type"] == "actions")
        .flat_map(|b| b["elements"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// All the text of a message a call posted or updated, for asserting on what a person reads.
pub fn text(call: &Value) -> String {
    call["body"]["blocks"].to_string()
}
