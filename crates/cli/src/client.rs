//! A thin HTTP client of the API for the CLI's commands.

use anyhow::{Context, bail};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    pub fn new(server: &str, token: Option<String>) -> anyhow::Result<Self> {
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            bail!("no key: pass --token or set PAYGENT_TOKEN");
        };
        Ok(Client {
            http: reqwest::Client::new(),
            base: format!("{}/api/v1", server.trim_end_matches('/')),
            token,
        })
    }

    /// Sends a request and reads the answer as the view the server documents, or returns the server's problem
    /// detail as the error.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<T> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach the server at {}", self.base))?;
        let status = resp.status();
        let value: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let detail = value
                .get("detail")
                .and_then(Value::as_str)
                .unwrap_or("no detail");
            bail!("{status}: {detail}");
        }
        serde_json::from_value(value).with_context(|| format!("reading the answer to {path}"))
    }
}
