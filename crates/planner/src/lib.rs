//! A planner backed by any OpenAI-compatible chat-completions endpoint (`PAYGENT_LLM_URL`, `PAYGENT_LLM_MODEL`,
//! the key in `PAYGENT_LLM_API_KEY`). The model sees the tools as functions and answers with tool calls; those
//! become steps, which the engine then checks like any agent's. The model proposes; the guard still decides.

use futures::future::BoxFuture;
use paygent_engine::domain::command::Step;
use paygent_engine::{Egress, Planner, ToolSpec};
use serde_json::{Value, json};
use std::fmt;

const INSTRUCTIONS: &str = "You plan payments and fetches for an AI agent. Answer only with calls to the \
    functions given, in the order they should run. Copy amounts, currencies, addresses and URLs exactly as the \
    user wrote them; never invent or convert one. If the request is unclear or needs anything else, call no \
    function and say what is missing.";

#[derive(Clone)]
pub struct LlmPlanner {
    endpoint: String,
    model: String,
    api_key: Option<String>,
    /// Within the server's egress policy, with the configured endpoint allowed by whoever configured it.
    egress: Egress,
}

impl fmt::Debug for LlmPlanner {
    /// The key is a secret: it is never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LlmPlanner")
            .field("endpoint", &self.endpoint)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl LlmPlanner {
    /// `base_url` is the API root, such as `https://api.openai.com/v1`; requests go to its `/chat/completions`.
    /// Requests go through `egress`: its time and size caps, its address checks, redirects included.
    pub fn new(base_url: &str, model: &str, api_key: Option<String>, egress: Egress) -> Self {
        LlmPlanner {
            endpoint: format!("{}/chat/completions", base_url.trim_end_matches('/')),
            model: model.to_owned(),
            api_key,
            egress,
        }
    }

    fn request(&self, command: &str, tools: &[ToolSpec]) -> Value {
        let functions: Vec<Value> = tools
            .iter()
            .map(|t| {
                json!({"type": "function", "function": {"name": t.name, "description": t.description,
                    "parameters": t.parameters}})
            })
            .collect();
        json!({
            "model": self.model,
            "temperature": 0,
            "messages": [
                {"role": "system", "content": INSTRUCTIONS},
                {"role": "user", "content": command},
            ],
            "tools": functions,
            "tool_choice": "auto",
        })
    }

    async fn ask(&self, command: &str, tools: &[ToolSpec]) -> Result<Vec<Step>, String> {
        let resp = self
            .egress
            .post_json(
                &self.endpoint,
                &self.request(command, tools),
                self.api_key.as_deref(),
            )
            .await
            .map_err(|e| format!("the model did not answer: {e}"))?;
        let status = resp.status;
        let body: Value = serde_json::from_slice(&resp.body).map_err(|_| {
            let cut = if resp.truncated {
                ", or more than the byte cap"
            } else {
                ""
            };
            format!("the model answered {status} without JSON{cut}")
        })?;
        if !(200..300).contains(&status) {
            let why = body["error"]["message"]
                .as_str()
                .unwrap_or("no reason given");
            return Err(format!("the model answered {status}: {why}"));
        }
        steps(&body)
    }
}

/// The steps in a chat-completions answer: its tool calls, in order.
fn steps(answer: &Value) -> Result<Vec<Step>, String> {
    let message = &answer["choices"][0]["message"];
    let calls = message["tool_calls"].as_array().filter(|c| !c.is_empty());
    let Some(calls) = calls else {
        let said = message["content"].as_str().unwrap_or("nothing");
        return Err(format!("the model proposed no steps; it said: {said}"));
    };
    calls
        .iter()
        .enumerate()
        .map(|(i, call)| {
            let function = &call["function"];
            let name = function["name"]
                .as_str()
                .ok_or_else(|| format!("proposed step {i} names no tool"))?;
            let args = match &function["arguments"] {
                Value::String(text) => serde_json::from_str(text)
                    .map_err(|_| format!("proposed step {i} ({name}) has unreadable arguments"))?,
                other => other.clone(),
            };
            Ok(Step {
                tool: name.to_owned(),
                args,
            })
        })
        .collect()
}

impl Planner for LlmPlanner {
    fn name(&self) -> &'static str {
        "llm"
    }

    fn plan<'a>(
        &'a self,
        command: &'a str,
        tools: &'a [ToolSpec],
    ) -> BoxFuture<'a, Result<Vec<Step>, String>> {
        Box::pin(self.ask(command, tools))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_calls_become_steps_in_order() {
        let answer = json!({"choices": [{"message": {"role": "assistant", "content": null, "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "http_get", "arguments": "{\"url\":\"https://x.example/\"}"}},
            {"id": "b", "type": "function", "function": {"name": "wait", "arguments": {"seconds": 2}}}]}}]});
        let got = steps(&answer).unwrap();
        assert_eq!(got[0].tool, "http_get");
        assert_eq!(got[0].args["url"], "https://x.example/");
        assert_eq!(got[1].args["seconds"], 2);
    }

    #[test]
    fn answers_without_steps_say_why() {
        let answer =
            json!({"choices": [{"message": {"content": "Which currency?", "tool_calls": []}}]});
        assert!(steps(&answer).unwrap_err().contains("Which currency?"));
        let broken = json!({"choices": [{"message": {"tool_calls": [{"function": {"name": "wait", "arguments": "{"}}]}}]});
        assert!(steps(&broken).unwrap_err().contains("unreadable arguments"));
        assert!(steps(&json!({})).is_err());
    }

    #[test]
    fn the_key_is_never_printed() {
        let p = LlmPlanner::new(
            "http://127.0.0.1:1/v1/",
            "m",
            Some("sk-secret".into()),
            Egress::default(),
        );
        assert_eq!(p.endpoint, "http://127.0.0.1:1/v1/chat/completions");
        assert!(!format!("{p:?}").contains("sk-secret"));
    }
}
