//! What a session remembers: its commands and how they ended (the agent's memory across commands), and a
//! summary of its activity. Both are read from the executions, payments and approvals themselves, so they can
//! never disagree with them.

use crate::views::{BudgetView, ExecutionView};
use crate::{Paygent, Result};
use paygent_domain::Principal;
use paygent_store::executions;
use paygent_store::sessions::{self, StatusTable};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use utoipa::ToSchema;
use uuid::Uuid;

/// One turn of a session's conversation: what was asked and what came of it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MemoryTurn {
    pub execution_id: Uuid,
    pub at: chrono::DateTime<chrono::Utc>,
    /// The command as written, or the plan's tools when steps were given.
    pub asked: String,
    #[schema(value_type = String, example = "completed")]
    pub status: paygent_domain::execution::ExecutionStatus,
    /// The last finished step's result, or the error that ended it.
    #[schema(value_type = Object)]
    pub outcome: Value,
    #[schema(value_type = String)]
    pub cost_usd: paygent_domain::Decimal,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SessionSummary {
    pub session_id: Uuid,
    /// `active` or `killed`.
    #[schema(value_type = String, example = "active")]
    pub state: paygent_domain::SessionState,
    /// Counts by status.
    pub payments: BTreeMap<String, i64>,
    pub approvals: BTreeMap<String, i64>,
    pub executions: BTreeMap<String, i64>,
    pub budget: BudgetView,
}

/// How many turns memory returns.
const MEMORY_TURNS: i64 = 100;
/// The most of a turn's request and outcome memory repeats, as JSON text: a hundred turns stay under a megabyte.
const TURN_BYTES: usize = 4 * 1024;

/// `text` cut to `TURN_BYTES` at a character boundary.
fn clip(text: &str) -> &str {
    let cut = (0..=TURN_BYTES.min(text.len()))
        .rev()
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(0);
    &text[..cut]
}

/// An outcome as it is when small, or the start of its JSON text, marked as cut.
fn bounded(outcome: Value) -> Value {
    let text = outcome.to_string();
    if text.len() <= TURN_BYTES {
        return outcome;
    }
    serde_json::json!({"truncated": true, "start": clip(&text)})
}

impl Paygent {
    /// The session's last commands and their outcomes, oldest first.
    pub async fn memory(&self, who: &Principal, session_id: Uuid) -> Result<Vec<MemoryTurn>> {
        self.reachable_session(who, session_id).await?;
        let scope = paygent_store::Scope {
            tenant_id: who.tenant_id,
            session_id: Some(session_id),
            owner: None,
            after: None,
            limit: MEMORY_TURNS,
        };
        let mut list = executions::list(self.store.reader(), scope).await?;
        list.reverse();
        let mut turns = Vec::with_capacity(list.len());
        for e in list {
            let steps = executions::steps(self.store.reader(), e.id).await?;
            let view = ExecutionView::new(e, steps);
            turns.push(turn(view));
        }
        Ok(turns)
    }

    pub async fn summary(&self, who: &Principal, session_id: Uuid) -> Result<SessionSummary> {
        let session = self.reachable_session(who, session_id).await?;
        let count = |table| async move {
            sessions::status_counts(self.store.reader(), table, who.tenant_id, session_id)
                .await
                .map(|rows| rows.into_iter().collect::<BTreeMap<_, _>>())
        };
        Ok(SessionSummary {
            session_id,
            payments: count(StatusTable::Payments).await?,
            approvals: count(StatusTable::Approvals).await?,
            executions: count(StatusTable::Executions).await?,
            budget: self.budget_view(&session, self.now()).await?,
            state: session.state,
        })
    }
}

fn turn(e: ExecutionView) -> MemoryTurn {
    let asked = e.command.clone().unwrap_or_else(|| {
        e.steps
            .iter()
            .map(|s| format!("{} {}", s.tool, s.args))
            .collect::<Vec<_>>()
            .join(" then ")
    });
    let outcome = match &e.error {
        Some(error) => serde_json::json!({"error": error}),
        None => e
            .steps
            .iter()
            .rev()
            .find_map(|s| s.result.clone())
            .unwrap_or(Value::Null),
    };
    MemoryTurn {
        execution_id: e.id,
        at: e.created_at,
        asked: clip(&asked).to_owned(),
        status: e.status,
        outcome: bounded(outcome),
        cost_usd: e.cost_usd,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_are_bounded() {
        let small = serde_json::json!({"status": 200, "body": "hello"});
        assert_eq!(bounded(small.clone()), small);
        let big = serde_json::json!({"body": "é".repeat(40_000)});
        let cut = bounded(big);
        assert_eq!(cut["truncated"], true);
        assert!(cut["start"].as_str().unwrap().len() <= TURN_BYTES);
        assert_eq!(clip(&"x".repeat(10_000)).len(), TURN_BYTES);
    }
}
