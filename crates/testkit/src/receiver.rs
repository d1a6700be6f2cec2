//! A webhook receiver on loopback that verifies deliveries with the reference Standard Webhooks library.

use serde_json::{Value, json};
use tokio::process::{Child, Command};

pub struct WebhookReceiver {
    pub url: String,
    _process: Child,
}

impl WebhookReceiver {
    pub async fn start() -> WebhookReceiver {
        let mut node = Command::new("node");
        node.arg(crate::chain::peers_dir().join("webhook-receiver.mjs"));
        let (process, said, _) = crate::chain::peer(node, "the webhook receiver", &json!({})).await;
        WebhookReceiver {
            url: said["url"].as_str().expect("url").to_owned(),
            _process: process,
        }
    }

    /// Where deliveries go.
    pub fn hook(&self) -> String {
        format!("{}/hook", self.url)
    }

    /// Sets whether it is down (answering 500), and the secrets it verifies with.
    pub async fn set(&self, change: Value) {
        let resp = reqwest::Client::new()
            .post(format!("{}/control", self.url))
            .json(&change)
            .send()
            .await
            .expect("the receiver takes control");
        assert!(resp.status().is_success());
    }

    /// What it kept, in arrival order: `[{id, seq, type, secret}]`.
    pub async fn received(&self) -> Vec<Value> {
        self.get("/received")
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// How many deliveries no secret verified.
    pub async fn rejected(&self) -> u64 {
        self.get("/rejected").await["rejected"]
            .as_u64()
            .unwrap_or(0)
    }

    async fn get(&self, path: &str) -> Value {
        reqwest::get(format!("{}{path}", self.url))
            .await
            .expect("the receiver answers")
            .json()
            .await
            .expect("JSON")
    }
}
