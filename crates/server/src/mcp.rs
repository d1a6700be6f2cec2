//! Paygent as an MCP server: guarded payment tools for any MCP client, over streamable HTTP at `/mcp`. Every
//! call is made as the key that authenticated its HTTP request, under that key's policy, through the same engine
//! calls as the REST API. A call that needs a person answers at once with the approval to wait for; nothing
//! ever runs because a wait ended without an answer.

use crate::extract::Caller;
use axum::extract::{FromRequestParts, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use paygent_engine::domain::command::Step;
use paygent_engine::domain::event::EventKind;
use paygent_engine::domain::execution::ExecutionStatus;
use paygent_engine::domain::{ApprovalStatus, PaymentStatus, Principal};
use paygent_engine::{ApprovalView, ExecutionView, PaymentView};
use paygent_engine::{EngineError, EventFilter, Paygent, PaymentRequest, Plan, SwapRequest};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::{Extension, IntoCallToolResult};
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResponse, CallToolResult, ContentBlock, Implementation, ListResourceTemplatesResult,
    ListResourcesResult, PaginatedRequestParams, ProgressNotificationParam,
    ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, RequestMetaObject,
    Resource, ResourceContents, ResourceTemplate, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, Peer, RoleServer, ServerHandler, schemars, tool, tool_handler, tool_router};
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How long `wait_for_approval` waits by default: under the 60 s a reference client waits for an answer.
const DEFAULT_WAIT_SECONDS: u64 = 50;
/// The longest one `wait_for_approval` call waits; the model calls again to wait longer.
const MAX_WAIT_SECONDS: u64 = 600;
/// How often a waiting call reports progress to a client that asked for it.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// The most of a paid resource's body `paid_fetch` hands the model as text.
const MAX_BODY_TEXT: usize = 64 * 1024;
/// How long `paid_fetch` follows its payment before it answers with the execution to follow.
const FETCH_WITHIN: Duration = Duration::from_secs(30);

/// The MCP endpoint: stateless, so any instance answers any call, and each call authenticated on its own.
pub fn service(paygent: Paygent) -> StreamableHttpService<PaymentTools, LocalSessionManager> {
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        // Every request carries a key: a page that rebinds a host name to this server has none to send.
        .disable_allowed_hosts();
    // Built once: each request is served by a clone, not by describing the tools anew.
    let tools = PaymentTools::new(paygent);
    StreamableHttpService::new(move || Ok(tools.clone()), Default::default(), config)
}

/// Authenticates each request to `/mcp` like any API call (a missing, unknown or revoked key is a 401 problem
/// before MCP sees it), and hands the tools the caller.
pub async fn authenticate(State(paygent): State<Paygent>, req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    match Caller::from_request_parts(&mut parts, &paygent).await {
        Ok(Caller(who)) => {
            parts.extensions.insert(who);
            next.run(Request::from_parts(parts, body)).await
        }
        Err(e) => e.into_response(),
    }
}

/// The tools one MCP request may call.
#[derive(Clone)]
pub struct PaymentTools {
    paygent: Paygent,
    tool_router: ToolRouter<Self>,
}

/// The caller, as `authenticate` found it.
type Parts = Extension<axum::http::request::Parts>;

/// The engine's refusal of a call, answered as a tool error the model can read and act on.
pub struct Refusal(EngineError);

impl From<EngineError> for Refusal {
    fn from(e: EngineError) -> Self {
        Refusal(e)
    }
}

impl IntoCallToolResult for Refusal {
    fn into_call_tool_result(self) -> Result<CallToolResponse, ErrorData> {
        let why = self.0.to_string();
        Ok(answer(json!({"error": why}), format!("Refused: {why}"), true).into())
    }
}

/// What a tool answers: a result, or a refusal.
type Answer = Result<CallToolResult, Refusal>;

fn caller(parts: &Parts) -> Result<Principal, Refusal> {
    let found = parts.0.extensions.get::<Principal>().cloned();
    Ok(found.ok_or(EngineError::Unauthenticated)?)
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct Pay {
    /// The Paygent session to pay in; without it, the session this key opened for MCP.
    pub session_id: Option<String>,
    /// The amount as a decimal string, such as "1.50". For an x402 resource URL, the most you will pay: its own
    /// price is paid (use paid_fetch to get the resource's body too).
    pub amount: String,
    /// The currency or token symbol, such as "USDC".
    pub currency: String,
    /// An EVM address (0x...) for a transfer, or the https URL of an x402 resource.
    pub recipient: String,
    /// What the payment is for, in a few words: people who approve it read this.
    pub description: Option<String>,
    /// Send the same key again to retry a call whose answer you did not get: it never pays twice.
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct Swap {
    /// The Paygent session to trade in; without it, the session this key opened for MCP.
    pub session_id: Option<String>,
    /// How much of `from` to sell, as a decimal string, such as "50".
    pub amount_in: String,
    /// The token sold, such as "USDC".
    pub from: String,
    /// The token bought, such as "WCRO".
    pub to: String,
    /// The exchange, as the server names it; the only one on the chain when absent.
    pub dex: Option<String>,
    /// The most the price may move against the quote, in basis points (50 is 0.5%); the policy's default when
    /// absent, and never more than the policy allows.
    pub max_slippage_bps: Option<u32>,
    /// What the swap is for, in a few words: people who approve it read this.
    pub description: Option<String>,
    /// Send the same key again to retry a call whose answer you did not get: it never trades twice.
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct PaidFetch {
    /// The https URL of the x402 resource.
    pub url: String,
    /// The most you will pay for it, as a decimal string, such as "0.10": the resource's own price is paid.
    pub max_amount: String,
    /// The token to pay in; USDC when absent.
    pub currency: Option<String>,
    pub session_id: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct WaitForApproval {
    /// The approval id a payment answered with.
    pub approval_id: String,
    /// How long to wait for a person, in seconds (50 by default, at most 600).
    pub timeout_seconds: Option<u64>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct PaymentId {
    pub payment_id: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct ExecutionId {
    pub execution_id: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct InSession {
    /// The Paygent session; without it, the session this key opened for MCP.
    pub session_id: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct Run {
    /// What to do, in plain language, such as "pay 2 USDC to 0x... for the weather report".
    pub command: String,
    pub session_id: Option<String>,
}

fn id(field: &str, text: &str) -> Result<Uuid, Refusal> {
    let parsed = text.parse();
    Ok(parsed.map_err(|_| EngineError::Invalid(format!("{field} must be a UUID")))?)
}

/// The key a payment is sent with: the caller's, or a fresh one, so every payment the guard files has one.
fn idempotency_key(given: Option<String>) -> Option<String> {
    Some(given.unwrap_or_else(|| format!("mcp:{}", Uuid::new_v4())))
}

/// A result with the REST view as structured content and a short text for the model.
fn answer(view: Value, text: String, failed: bool) -> CallToolResult {
    let mut result = CallToolResult::structured(view);
    result.content = vec![ContentBlock::text(text)];
    result.is_error = Some(failed);
    result
}

fn view<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).expect("views serialize")
}

impl PaymentTools {
    pub fn new(paygent: Paygent) -> Self {
        PaymentTools {
            paygent,
            tool_router: Self::tool_router(),
        }
    }

    /// A payment's answer, with the request people were asked to decide when it waits on them.
    async fn payment(&self, who: &Principal, p: &PaymentView) -> Answer {
        let asked = match (p.status, p.approval_id) {
            (PaymentStatus::PendingApproval, Some(id)) => {
                Some(self.paygent.approval(who, id).await?)
            }
            _ => None,
        };
        Ok(payment_answer(p, asked.as_ref()))
    }

    /// The caller, and the session a call names or else the caller's MCP session.
    async fn asker(
        &self,
        parts: &Parts,
        named: Option<&str>,
    ) -> Result<(Principal, Uuid), Refusal> {
        let who = caller(parts)?;
        let session = match named {
            Some(text) => id("session_id", text)?,
            None => self.paygent.mcp_session(&who).await?,
        };
        Ok((who, session))
    }
}

/// A payment as the model should read it: what happened, and what to do next. A payment waiting on people says
/// who was asked and until when.
fn payment_answer(p: &PaymentView, asked: Option<&ApprovalView>) -> CallToolResult {
    let what = match &p.swap {
        Some(t) => format!(
            "{} {} into a swap for at least {} {} on {}",
            p.amount, p.currency, t.min_out, t.to, t.dex
        ),
        None => format!("{} {} to {}", p.amount, p.currency, p.recipient),
    };
    let bought = p.swap.as_ref().map(|t| {
        let out = p.receipt.as_ref().and_then(|r| r["amount_out"].as_str());
        format!("{} {}", out.unwrap_or("an amount not known here of"), t.to)
    });
    let (text, failed) = match (p.status, asked) {
        (PaymentStatus::Executed, _) => match &bought {
            Some(b) => {
                let sold = format!("{} {}", p.amount, p.currency);
                (format!("Swapped {sold} for {b} (payment {}).", p.id), false)
            }
            None => (format!("Paid {what} (payment {}).", p.id), false),
        },
        (PaymentStatus::Authorized, _) if p.refusal.is_some() => (outstanding(p), true),
        (PaymentStatus::Authorized, _) if p.in_flight => (
            format!(
                "Paying {what} (payment {}): it is on its way and its outcome is not known yet. Read it with \
                 get_payment in a few seconds; do not pay it again.",
                p.id
            ),
            false,
        ),
        (PaymentStatus::Authorized, _) => (
            format!(
                "Authorized {what} (payment {}): it is yours to carry out.",
                p.id
            ),
            false,
        ),
        (PaymentStatus::PendingApproval, Some(a)) => (
            format!(
                "A person must approve paying {what}: approval {}, asked of {} until {}. Wait for it with \
                 wait_for_approval; do not retry with another amount or split the payment.",
                a.id,
                who_decides(a),
                a.deadline.to_rfc3339()
            ),
            false,
        ),
        (PaymentStatus::PendingApproval, None) => (
            format!("A person must approve paying {what}. Wait for it with wait_for_approval."),
            false,
        ),
        (PaymentStatus::Denied | PaymentStatus::Failed, _) => (
            format!(
                "Not paid ({}): {}. Do not retry this payment; tell the user why.",
                p.reason.as_deref().unwrap_or("refused"),
                p.detail.as_deref().unwrap_or("no detail")
            ),
            true,
        ),
    };
    let mut shown = view(p);
    if let Some(a) = asked {
        shown["approval"] = json!({"id": a.id, "deadline": a.deadline, "groups": a.groups,
            "approvals_required": a.approvals_required});
    }
    answer(shown, text, failed)
}

/// A payment its service refused while what was signed could still settle, in words.
fn outstanding(p: &PaymentView) -> String {
    let Some(r) = &p.refusal else {
        return String::new();
    };
    format!(
        "The service refused payment {}: {}. What was signed could still settle until {}: read it then with \
         get_payment. Do not retry it, and do not pay this another way meanwhile.",
        p.id,
        r.message,
        r.outstanding_until.to_rfc3339()
    )
}

/// Who decides a request, in words.
fn who_decides(a: &ApprovalView) -> String {
    let people = match a.groups.as_slice() {
        [] => "the tenant's approvers".to_owned(),
        groups => format!("members of {}", groups.join(", ")),
    };
    match a.approvals_required {
        1 => people,
        n => format!("{n} of {people}"),
    }
}

#[tool_router]
impl PaymentTools {
    #[tool(
        description = "Pay an EVM address (a transfer) or an x402 resource URL through Paygent's guard. Small \
                       payments within policy run at once; larger ones wait for a person: you then get an \
                       approval_id to pass to wait_for_approval. Never split a payment to avoid approval."
    )]
    async fn pay(&self, parts: Parts, Parameters(p): Parameters<Pay>) -> Answer {
        let (who, session_id) = self.asker(&parts, p.session_id.as_deref()).await?;
        let req = PaymentRequest {
            session_id,
            amount: p.amount,
            currency: p.currency,
            recipient: p.recipient,
            description: p.description,
            idempotency_key: idempotency_key(p.idempotency_key),
            swap: None,
        };
        let submitted = self.paygent.submit_payment(&who, req).await?;
        self.payment(&who, &submitted.payment).await
    }

    #[tool(
        description = "Swap an amount of one token for another on an exchange, through Paygent's guard: quoted \
                       from the pool, never trading for less than the quote less the slippage bound. Small swaps \
                       within policy trade at once; larger ones wait for a person: you then get an approval_id to \
                       pass to wait_for_approval."
    )]
    async fn swap(&self, parts: Parts, Parameters(w): Parameters<Swap>) -> Answer {
        let (who, session_id) = self.asker(&parts, w.session_id.as_deref()).await?;
        let req = SwapRequest {
            session_id,
            amount_in: w.amount_in,
            from: w.from,
            to: w.to,
            dex: w.dex,
            max_slippage_bps: w.max_slippage_bps,
            description: w.description,
            idempotency_key: idempotency_key(w.idempotency_key),
        };
        let submitted = self.paygent.submit_swap(&who, req).await?;
        self.payment(&who, &submitted.payment).await
    }

    #[tool(
        description = "Fetch an x402 resource, paying its price if it is at most max_amount, and return its body. \
                       If a person must approve the price, you get an approval_id for wait_for_approval and an \
                       execution_id whose get_execution then holds the body."
    )]
    async fn paid_fetch(&self, parts: Parts, Parameters(p): Parameters<PaidFetch>) -> Answer {
        let (who, session_id) = self.asker(&parts, p.session_id.as_deref()).await?;
        let currency = p.currency.unwrap_or_else(|| "USDC".into());
        let step = Step {
            tool: "x402_payment".into(),
            args: json!({"url": p.url, "max_amount": p.max_amount, "currency": currency}),
        };
        let plan = Plan::Steps(vec![step]);
        let started = self.paygent.start_execution(&who, session_id, plan).await?;
        Ok(fetched(&self.settled(&who, &started).await?))
    }

    #[tool(
        description = "Read a payment by its id: its status, amount, payee and why it was denied, if it was."
    )]
    async fn get_payment(&self, parts: Parts, Parameters(p): Parameters<PaymentId>) -> Answer {
        let who = caller(&parts)?;
        let payment = self
            .paygent
            .payment(&who, id("payment_id", &p.payment_id)?)
            .await?;
        self.payment(&who, &payment).await
    }

    #[tool(
        description = "Wait for a person to decide an approval request, up to timeout_seconds. Approved: the \
                       payment runs, once, and you get it. Rejected or expired: the reason, and nothing is paid. \
                       Still pending: call wait_for_approval again; never retry the payment itself."
    )]
    async fn wait_for_approval(
        &self,
        parts: Parts,
        meta: RequestMetaObject,
        peer: Peer<RoleServer>,
        cancelled: CancellationToken,
        Parameters(w): Parameters<WaitForApproval>,
    ) -> Answer {
        let who = caller(&parts)?;
        let limit = w.timeout_seconds.unwrap_or(DEFAULT_WAIT_SECONDS);
        let limit = Duration::from_secs(limit.clamp(1, MAX_WAIT_SECONDS));
        let wait = Wait {
            paygent: &self.paygent,
            who: &who,
            approval_id: id("approval_id", &w.approval_id)?,
        };
        let progress = meta.get_progress_token().map(|token| (peer, token));
        let found = wait.until_decided(limit, progress, cancelled).await?;
        self.decided(&who, found).await
    }

    #[tool(description = "The session's wallet balances on chain, by token.")]
    async fn balance(&self, parts: Parts, Parameters(s): Parameters<InSession>) -> Answer {
        let (who, session_id) = self.asker(&parts, s.session_id.as_deref()).await?;
        let balances = self.paygent.balances(&who, session_id).await?;
        Ok(answer(
            balances.clone(),
            format!("Balances: {balances}"),
            false,
        ))
    }

    #[tool(
        description = "The session's budget: what it may spend today, what is spent and reserved, what is left."
    )]
    async fn budget(&self, parts: Parts, Parameters(s): Parameters<InSession>) -> Answer {
        let (who, session_id) = self.asker(&parts, s.session_id.as_deref()).await?;
        let budget = view(&self.paygent.budget(&who, session_id).await?);
        Ok(answer(budget.clone(), format!("Budget: {budget}"), false))
    }

    #[tool(
        description = "Run a plain-language command (\"pay 2 USDC to 0x... for the report\") as an execution: its \
                       steps pass the same guard, and a step that needs a person waits for one. Follow it with \
                       get_execution."
    )]
    async fn run(&self, parts: Parts, Parameters(r): Parameters<Run>) -> Answer {
        let (who, session_id) = self.asker(&parts, r.session_id.as_deref()).await?;
        let plan = Plan::Command(r.command);
        let execution = self.paygent.start_execution(&who, session_id, plan).await?;
        let text = format!(
            "Execution {} started. Follow it with get_execution.",
            execution.id
        );
        Ok(answer(view(&execution), text, false))
    }

    #[tool(
        description = "Read an execution: its status and each step with its result or the approval it waits on."
    )]
    async fn get_execution(&self, parts: Parts, Parameters(e): Parameters<ExecutionId>) -> Answer {
        let who = caller(&parts)?;
        let execution = self
            .paygent
            .execution(&who, id("execution_id", &e.execution_id)?)
            .await?;
        let text = format!(
            "Execution {} is {}.",
            execution.id,
            execution.status.as_str()
        );
        Ok(answer(view(&execution), text, false))
    }
}

impl PaymentTools {
    /// The execution once it has ended or waits on a person, or as it stands after `FETCH_WITHIN`.
    async fn settled(
        &self,
        who: &Principal,
        started: &ExecutionView,
    ) -> Result<ExecutionView, EngineError> {
        let filter = EventFilter {
            session_id: Some(started.session_id),
            types: vec![
                EventKind::ExecutionPaused,
                EventKind::ExecutionCompleted,
                EventKind::ExecutionFailed,
            ],
        };
        let mut events = self.paygent.subscribe_events(who, filter, None).await?;
        let deadline = tokio::time::Instant::now() + FETCH_WITHIN;
        loop {
            let now = self.paygent.execution(who, started.id).await?;
            if now.status != ExecutionStatus::Running || tokio::time::Instant::now() >= deadline {
                return Ok(now);
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {}
                ended = events.next() => {
                    ended.map_err(|e| EngineError::Unavailable(format!("the fetch was left: {e}")))?;
                }
            }
        }
    }

    /// What a wait found: an approved payment is carried out (once, whoever asks again); anything else is said.
    async fn decided(&self, who: &Principal, a: ApprovalView) -> Answer {
        let note = a
            .decision
            .as_ref()
            .and_then(|d| d.note.clone())
            .unwrap_or_else(|| "no reason given".into());
        let text = match a.status {
            ApprovalStatus::Approved | ApprovalStatus::Edited => match a.payment_id {
                Some(_) => {
                    let paid = self.paygent.execute_approved(who, a.id).await?;
                    return Ok(payment_answer(&paid, None));
                }
                None => "Approved: the execution goes on.".to_owned(),
            },
            ApprovalStatus::Pending => format!(
                "Still waiting for a person (until {}). Call wait_for_approval again; do not retry the payment.",
                a.deadline.to_rfc3339()
            ),
            ApprovalStatus::Rejected => {
                format!("Rejected by a person: {note}. Nothing was paid; do not retry.")
            }
            ApprovalStatus::Expired => {
                "Nobody decided in time: the request expired and nothing was paid.".to_owned()
            }
            ApprovalStatus::Cancelled => format!("Cancelled ({note}): nothing was paid."),
        };
        let failed = !matches!(a.status, ApprovalStatus::Pending | ApprovalStatus::Approved);
        Ok(answer(view(&a), text, failed))
    }
}

/// A fetch's execution as the model reads it: the resource's body, the approval it waits on, or why it failed.
fn fetched(e: &ExecutionView) -> CallToolResult {
    let step = e.steps.first();
    let result = step.and_then(|s| s.result.as_ref());
    let body = result.and_then(|r| r.pointer("/receipt/body").or_else(|| r.get("body")));
    let (text, failed) = match (e.status, body) {
        (ExecutionStatus::Completed, Some(body)) => (bounded_text(body), false),
        (ExecutionStatus::AwaitingApproval, _) => (
            format!(
                "A person must approve the price: approval {}. Wait for it with wait_for_approval, then read the \
                 resource with get_execution {}; do not retry.",
                step.and_then(|s| s.approval_id)
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
                e.id
            ),
            false,
        ),
        (ExecutionStatus::Running, _) => (
            format!(
                "Still under way: follow execution {} with get_execution.",
                e.id
            ),
            false,
        ),
        _ => (
            format!(
                "Not fetched ({}): {}. Do not retry; tell the user why.",
                e.status.as_str(),
                step.and_then(|s| s.error.clone())
                    .or_else(|| e.error.clone())
                    .unwrap_or_default()
            ),
            true,
        ),
    };
    answer(view(e), text, failed)
}

/// A resource's body as text, at most `MAX_BODY_TEXT` bytes of it.
fn bounded_text(body: &Value) -> String {
    let mut text = match body {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if text.len() > MAX_BODY_TEXT {
        let mut end = MAX_BODY_TEXT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// One wait for a person's decision on a request.
struct Wait<'a> {
    paygent: &'a Paygent,
    who: &'a Principal,
    approval_id: Uuid,
}

impl Wait<'_> {
    /// The request once it is no longer pending, or as it stands when `limit` passes or the client cancels. It
    /// listens to the request's session's events, subscribed before the state is read again, so no decision falls
    /// between; a revoked key ends the subscription, and so the wait.
    async fn until_decided(
        &self,
        limit: Duration,
        progress: Option<(Peer<RoleServer>, rmcp::model::ProgressToken)>,
        cancelled: CancellationToken,
    ) -> Result<ApprovalView, EngineError> {
        let first = self.paygent.approval(self.who, self.approval_id).await?;
        let filter = EventFilter {
            session_id: Some(first.session_id),
            types: vec![
                EventKind::Approved,
                EventKind::Rejected,
                EventKind::Edited,
                EventKind::Expired,
                EventKind::Cancelled,
            ],
        };
        let mut events = self
            .paygent
            .subscribe_events(self.who, filter, None)
            .await?;
        let deadline = tokio::time::Instant::now() + limit;
        let mut ticks = tokio::time::interval(PROGRESS_EVERY);
        let mut waited = 0u64;
        loop {
            let now = self.paygent.approval(self.who, self.approval_id).await?;
            if now.status != ApprovalStatus::Pending || tokio::time::Instant::now() >= deadline {
                return Ok(now);
            }
            tokio::select! {
                _ = cancelled.cancelled() => return Ok(now),
                _ = tokio::time::sleep_until(deadline) => {}
                ended = events.next() => {
                    if let Err(e) = ended {
                        return Err(EngineError::Unavailable(format!("the wait ended: {e}")));
                    }
                }
                _ = ticks.tick() => {
                    if let Some((peer, token)) = &progress {
                        let seconds = limit.as_secs();
                        let note = ProgressNotificationParam::new(token.clone(), waited as f64)
                            .with_total(seconds as f64)
                            .with_message("waiting for a person to decide");
                        let _ = peer.notify_progress(note).await;
                    }
                    waited += PROGRESS_EVERY.as_secs();
                }
            }
        }
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for PaymentTools {
    fn get_info(&self) -> ServerConfig {
        let capabilities = ServerCapabilities::builder()
            .enable_tools()
            .enable_resources()
            .build();
        ServerConfig::new(capabilities)
            .with_server_info(Implementation::new("paygent", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Paygent guards every payment you make: small ones within policy run at once, larger ones wait \
                 for a person. When a tool answers with an approval_id, call wait_for_approval with it; never \
                 retry a payment with another amount or split it, and never treat a wait that ended as a yes.",
            )
    }

    async fn list_resources(
        &self,
        _: Option<PaginatedRequestParams>,
        _: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let budget = Resource::new(MCP_BUDGET, "budget")
            .with_title("Budget")
            .with_description("Today's budget of the session this key uses for MCP: limits, spent, reserved, left.")
            .with_mime_type("application/json");
        Ok(ListResourcesResult::with_all_items(vec![budget]))
    }

    async fn list_resource_templates(
        &self,
        _: Option<PaginatedRequestParams>,
        _: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        let budget =
            ResourceTemplate::new("paygent://sessions/{session_id}/budget", "session budget")
                .with_description("Today's budget of one of this key's sessions.")
                .with_mime_type("application/json");
        Ok(ListResourceTemplatesResult::with_all_items(vec![budget]))
    }

    /// A budget, as its reader could GET it: an agent reads only its own sessions'.
    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let refused = |e: EngineError| ErrorData::invalid_request(e.to_string(), None);
        let who = context
            .extensions
            .get::<axum::http::request::Parts>()
            .and_then(|parts| parts.extensions.get::<Principal>())
            .cloned()
            .ok_or_else(|| refused(EngineError::Unauthenticated))?;
        let session = match request.uri.as_str() {
            MCP_BUDGET => self.paygent.mcp_session(&who).await.map_err(refused)?,
            uri => uri
                .strip_prefix("paygent://sessions/")
                .and_then(|rest| rest.strip_suffix("/budget"))
                .and_then(|id| id.parse().ok())
                .ok_or_else(|| ErrorData::resource_not_found(format!("no resource {uri}"), None))?,
        };
        let budget = match self.paygent.budget(&who, session).await {
            Ok(budget) => view(&budget),
            Err(e @ EngineError::NotFound(_)) => {
                return Err(ErrorData::resource_not_found(e.to_string(), None));
            }
            Err(e) => return Err(refused(e)),
        };
        let contents = ResourceContents::text(budget.to_string(), request.uri)
            .with_mime_type("application/json");
        Ok(ReadResourceResult::new(vec![contents]).into())
    }
}

/// The budget of the session a key's MCP calls use by default.
const MCP_BUDGET: &str = "paygent://mcp-session/budget";
