//! Planners turn a command the deterministic parser does not understand into steps. Whatever a planner
//! returns is checked exactly like steps an agent wrote: it can propose, never bypass.

use super::tools::ToolSpec;
use futures::future::BoxFuture;
use paygent_domain::command::Step;

pub trait Planner: Send + Sync + 'static {
    /// Stored with the execution's audit entry, so a plan's origin is known.
    fn name(&self) -> &'static str;
    /// Steps for `command`, using only `tools`; or why there are none, in words for the agent.
    fn plan<'a>(
        &'a self,
        command: &'a str,
        tools: &'a [ToolSpec],
    ) -> BoxFuture<'a, Result<Vec<Step>, String>>;
}
