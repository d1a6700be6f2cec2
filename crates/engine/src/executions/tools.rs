//! Tools an execution's steps call. They form a registry: adding a tool is implementing [`Tool`] and
//! registering it, not editing a match spread over the code.

use crate::views::PaymentView;
use crate::{EngineError, Paygent, PaymentRequest};
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use paygent_domain::payment::{PaymentIntent, Recipient};

const CIRCUIT_BREAKER: &str = paygent_domain::judgement::DenyReason::CircuitBreaker.as_str();
use paygent_domain::{Decimal, PaymentStatus, PriceTable, Principal};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use uuid::Uuid;

/// What a step needs to know about where it runs.
pub struct StepContext<'a> {
    pub paygent: &'a Paygent,
    /// The agent the execution acts for.
    pub principal: &'a Principal,
    pub execution_id: Uuid,
    pub session_id: Uuid,
    pub idx: i64,
    /// When the step first started; a restarted step keeps it (a `wait` resumes, it does not start over).
    pub started_at: DateTime<Utc>,
    /// The step's payment the circuit breaker denied, when the step runs again after its session was unfrozen:
    /// its new payment needs an idempotency key of its own.
    pub retry_of: Option<Uuid>,
}

/// How a step ended, or why it stopped.
#[derive(Debug, Clone)]
pub enum StepOutcome {
    Done {
        result: Value,
        cost_usd: Decimal,
        payment_id: Option<Uuid>,
    },
    /// The guard filed an approval request: the execution pauses until a person decides. No `payment_id` for
    /// actions that are not payments (a swap).
    AwaitingApproval {
        approval_id: Uuid,
        payment_id: Option<Uuid>,
    },
    Failed {
        error: String,
    },
    /// The session is frozen: the execution pauses until a person unfreezes it, then runs the step again.
    /// `payment_id` is the step's payment the breaker denied, if it made one.
    Frozen {
        payment_id: Option<Uuid>,
    },
}

/// What a tool does and the arguments it takes (a JSON Schema), as a planner is told.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    pub name: &'static str,
    pub description: &'static str,
    pub parameters: Value,
}

/// A JSON Schema object of string properties; `required` lists the ones that must be given.
pub fn string_params(props: &[(&str, &str)], required: &[&str]) -> Value {
    let properties: serde_json::Map<String, Value> = props
        .iter()
        .map(|(k, d)| ((*k).to_owned(), json!({"type": "string", "description": d})))
        .collect();
    json!({"type": "object", "properties": properties, "required": required,
        "additionalProperties": false})
}

pub trait Tool: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// Tells planners what the tool does and what it takes.
    fn spec(&self) -> ToolSpec;
    /// Checks arguments before a plan is accepted, so a plan never fails halfway on a typo.
    fn check(&self, args: &Value, prices: &PriceTable) -> Result<(), String>;
    fn run<'a>(&'a self, ctx: StepContext<'a>, args: &'a Value) -> BoxFuture<'a, StepOutcome>;
}

/// The tools executions may call, by name.
#[derive(Clone)]
pub struct ToolRegistry {
    tools: BTreeMap<&'static str, Arc<dyn Tool>>,
}

impl ToolRegistry {
    /// The built-in tools: `transfer`, `x402_payment`, `http_get` and `wait`.
    pub fn builtin() -> Self {
        let mut r = ToolRegistry {
            tools: BTreeMap::new(),
        };
        r.register(Transfer);
        r.register(X402Payment);
        r.register(HttpGet {
            egress: crate::Egress::default(),
        });
        r.register(Wait);
        r.register(Swap);
        r
    }

    /// Makes `http_get` keep to `egress`.
    pub(crate) fn set_egress(&mut self, egress: crate::Egress) {
        self.register(HttpGet { egress });
    }

    pub fn register(&mut self, tool: impl Tool) {
        self.tools.insert(tool.name(), Arc::new(tool));
    }

    pub fn get(&self, name: &str) -> Option<Arc<dyn Tool>> {
        self.tools.get(name).cloned()
    }

    pub fn names(&self) -> impl Iterator<Item = &&'static str> {
        self.tools.keys()
    }

    /// Every tool's spec, for planners.
    pub fn specs(&self) -> Vec<ToolSpec> {
        self.tools.values().map(|t| t.spec()).collect()
    }
}

fn text<'a>(args: &'a Value, key: &str) -> Result<&'a str, String> {
    args.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{key} must be a string"))
}

fn only(args: &Value, keys: &[&str]) -> Result<(), String> {
    let obj = args.as_object().ok_or("args must be an object")?;
    match obj.keys().find(|k| !keys.contains(&k.as_str())) {
        Some(k) => Err(format!(
            "unknown argument {k:?}; expected {}",
            keys.join(", ")
        )),
        None => Ok(()),
    }
}

/// The idempotency key of the payment a step makes (the first time: a retry after a denial has its own), by
/// which a step re-run after a crash, or cancelled while it pays, finds that payment.
pub(crate) fn step_payment_key(execution_id: Uuid, idx: i64) -> String {
    format!("execution:{execution_id}:{idx}")
}

impl StepContext<'_> {
    /// The idempotency key of this run of the step's payment.
    fn payment_key(&self) -> String {
        let key = step_payment_key(self.execution_id, self.idx);
        match self.retry_of {
            None => key,
            Some(denied) => format!("{key}:after:{denied}"),
        }
    }

    fn description(&self) -> Option<String> {
        Some(format!("execution {} step {}", self.execution_id, self.idx))
    }

    fn payment_request(&self, amount: &str, currency: &str, recipient: &str) -> PaymentRequest {
        PaymentRequest {
            session_id: self.session_id,
            amount: amount.to_owned(),
            currency: currency.to_owned(),
            recipient: recipient.to_owned(),
            description: self.description(),
            idempotency_key: Some(self.payment_key()),
            swap: None,
        }
    }

    /// Runs a payment through the guard with an idempotency key unique to this step, so a step re-run after a
    /// crash finds the payment it already made instead of making another.
    pub async fn pay(&self, amount: &str, currency: &str, recipient: &str) -> StepOutcome {
        let request = self.payment_request(amount, currency, recipient);
        self.submitted(self.paygent.submit_payment(self.principal, request).await)
            .await
    }

    /// What the guard's answer to the step's payment means for the step, once its outcome is known.
    async fn submitted(&self, answer: crate::Result<crate::Submitted>) -> StepOutcome {
        match answer {
            Ok(submitted) => {
                let tenant_id = self.principal.tenant_id;
                payment_outcome(self.paygent.once_known(tenant_id, submitted.payment).await)
            }
            // Free (or broken) without a 402: nothing to pay, the answer is the step's result.
            Err(EngineError::Unpaid { status, body, .. }) => StepOutcome::Done {
                result: json!({"status": status, "body": body, "paid": false}),
                cost_usd: Decimal::ZERO,
                payment_id: None,
            },
            Err(EngineError::Frozen(_)) => StepOutcome::Frozen { payment_id: None },
            Err(e) => StepOutcome::Failed {
                error: e.to_string(),
            },
        }
    }

    /// Records this step's payment as failed before the guard, for `reason`, and fails the step with it.
    pub async fn refuse_payment(
        &self,
        amount: &str,
        currency: &str,
        recipient: &str,
        reason: &str,
    ) -> StepOutcome {
        let request = self.payment_request(amount, currency, recipient);
        match self
            .paygent
            .refuse_payment(self.principal, request, reason)
            .await
        {
            Ok(submitted) => payment_outcome(submitted.payment),
            Err(e) => StepOutcome::Failed {
                error: format!("{reason} (and the payment could not be recorded: {e})"),
            },
        }
    }
}

/// What a payment's status means for the step that made it.
pub(crate) fn payment_outcome(p: PaymentView) -> StepOutcome {
    if p.status == PaymentStatus::Authorized && (p.in_flight || p.refusal.is_some()) {
        let why = match &p.refusal {
            Some(r) => format!(
                "{}; it could still settle until {}",
                r.message, r.outstanding_until
            ),
            None => "its rail has not finished".into(),
        };
        return StepOutcome::Failed {
            error: format!("payment {}: {why}, and its outcome is not known yet", p.id),
        };
    }
    match (p.status, p.approval_id) {
        (PaymentStatus::Authorized | PaymentStatus::Executed, _) => StepOutcome::Done {
            cost_usd: p.usd_value,
            payment_id: Some(p.id),
            result: match &p.swap {
                Some(terms) => swap_result(&p, terms),
                None => serde_json::to_value(&p).expect("views serialize"),
            },
        },
        (PaymentStatus::PendingApproval, Some(approval_id)) => StepOutcome::AwaitingApproval {
            approval_id,
            payment_id: Some(p.id),
        },
        (PaymentStatus::Denied, _) if p.reason.as_deref() == Some(CIRCUIT_BREAKER) => {
            StepOutcome::Frozen {
                payment_id: Some(p.id),
            }
        }
        (status, _) => StepOutcome::Failed {
            error: format!(
                "payment {}: {}{}",
                status.as_str(),
                p.reason.as_deref().unwrap_or("no reason"),
                p.detail.map(|d| format!(" ({d})")).unwrap_or_default()
            ),
        },
    }
}

/// `transfer {to, amount, currency}`: pay an EVM address.
struct Transfer;

impl Tool for Transfer {
    fn name(&self) -> &'static str {
        paygent_domain::policy::TRANSFER
    }

    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: self.name(),
            description: "Send an amount of a currency to an EVM address.",
            parameters: string_params(
                &[
                    ("to", "the EVM address, 0x and 40 hex digits"),
                    ("amount", "a decimal amount such as 2.50"),
                    ("currency", "a currency symbol such as USDC"),
                ],
                &["to", "amount", "currency"],
            ),
        }
    }

    fn check(&self, args: &Value, prices: &PriceTable) -> Result<(), String> {
        only(args, &["to", "amount", "currency"])?;
        let to = text(args, "to")?;
        if !matches!(Recipient::parse(to), Ok(Recipient::Evm(_))) {
            return Err(format!("to {to:?} is not an EVM address"));
        }
        PaymentIntent::new(
            prices,
            text(args, "amount")?,
            text(args, "currency")?,
            to,
            None,
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    }

    fn run<'a>(&'a self, ctx: StepContext<'a>, args: &'a Value) -> BoxFuture<'a, StepOutcome> {
        Box::pin(async move {
            let (to, amount, currency) = (
                text(args, "to"),
                text(args, "amount"),
                text(args, "currency"),
            );
            match (to, amount, currency) {
                (Ok(to), Ok(amount), Ok(currency)) => ctx.pay(amount, currency, to).await,
                _ => StepOutcome::Failed {
                    error: "bad arguments".into(),
                },
            }
        })
    }
}

/// `x402_payment {url, max_amount, currency?}`: pay for an x402 resource, at most `max_amount`. With a rail that
/// pays the resource, the guard decides on the price it asks and the rail pays it; without one, the guard
/// authorizes up to `max_amount` and the agent pays.
struct X402Payment;

impl X402Payment {
    fn currency(args: &Value) -> &str {
        args.get("currency")
            .and_then(Value::as_str)
            .unwrap_or("USDC")
    }
}

impl Tool for X402Payment {
    fn name(&self) -> &'static str {
        paygent_domain::policy::X402_PAYMENT
    }

    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: self.name(),
            description: "Fetch an http(s) resource that asks for payment (HTTP 402, x402), paying at most max_amount.",
            parameters: string_params(
                &[
                    ("url", "the resource's http(s) URL"),
                    (
                        "max_amount",
                        "the most to pay, a decimal amount such as 0.10",
                    ),
                    ("currency", "the currency of max_amount; USDC when omitted"),
                ],
                &["url", "max_amount"],
            ),
        }
    }

    fn check(&self, args: &Value, prices: &PriceTable) -> Result<(), String> {
        only(args, &["url", "max_amount", "currency"])?;
        let url = text(args, "url")?;
        if !matches!(Recipient::parse(url), Ok(Recipient::Url(_))) {
            return Err(format!("url {url:?} is not an http(s) URL"));
        }
        PaymentIntent::new(
            prices,
            text(args, "max_amount")?,
            Self::currency(args),
            url,
            None,
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    }

    fn run<'a>(&'a self, ctx: StepContext<'a>, args: &'a Value) -> BoxFuture<'a, StepOutcome> {
        Box::pin(async move {
            match (text(args, "url"), text(args, "max_amount")) {
                (Ok(url), Ok(max)) => ctx.pay(max, Self::currency(args), url).await,
                _ => StepOutcome::Failed {
                    error: "bad arguments".into(),
                },
            }
        })
    }
}

/// `http_get {url}`: a plain fetch that moves no money, within the egress policy.
struct HttpGet {
    egress: crate::Egress,
}

impl Tool for HttpGet {
    fn name(&self) -> &'static str {
        "http_get"
    }

    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: self.name(),
            description: "Fetch an http(s) URL that needs no payment.",
            parameters: string_params(&[("url", "the http(s) URL")], &["url"]),
        }
    }

    fn check(&self, args: &Value, _: &PriceTable) -> Result<(), String> {
        only(args, &["url"])?;
        let url = text(args, "url")?;
        match Recipient::parse(url) {
            Ok(Recipient::Url(_)) => Ok(()),
            _ => Err(format!("url {url:?} is not an http(s) URL")),
        }
    }

    fn run<'a>(&'a self, _: StepContext<'a>, args: &'a Value) -> BoxFuture<'a, StepOutcome> {
        Box::pin(async move {
            let Ok(url) = text(args, "url") else {
                return StepOutcome::Failed {
                    error: "bad arguments".into(),
                };
            };
            match self.egress.get(url, None).await {
                Ok(fetched) => {
                    let body = String::from_utf8_lossy(&fetched.body);
                    StepOutcome::Done {
                        result: json!({"status": fetched.status, "body": body,
                            "truncated": fetched.truncated}),
                        cost_usd: Decimal::ZERO,
                        payment_id: None,
                    }
                }
                Err(e) => StepOutcome::Failed {
                    error: e.to_string(),
                },
            }
        })
    }
}

/// `wait {seconds}`: a durable timer. It ends at its first start plus `seconds`, across restarts, and holds no
/// thread while it waits.
struct Wait;

impl Tool for Wait {
    fn name(&self) -> &'static str {
        "wait"
    }

    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: self.name(),
            description: "Wait a number of seconds before the next step.",
            parameters: json!({"type": "object", "additionalProperties": false, "required": ["seconds"],
                "properties": {"seconds": {"type": "integer", "minimum": 1, "maximum": 86400}}}),
        }
    }

    fn check(&self, args: &Value, _: &PriceTable) -> Result<(), String> {
        only(args, &["seconds"])?;
        match args.get("seconds").and_then(Value::as_u64) {
            Some(1..=86_400) => Ok(()),
            _ => Err("seconds must be a whole number from 1 to 86400".into()),
        }
    }

    fn run<'a>(&'a self, ctx: StepContext<'a>, args: &'a Value) -> BoxFuture<'a, StepOutcome> {
        Box::pin(async move {
            let seconds = args.get("seconds").and_then(Value::as_i64).unwrap_or(0);
            let wake = ctx.started_at + chrono::Duration::seconds(seconds);
            let left = (wake - ctx.paygent.now()).to_std().unwrap_or_default();
            tokio::time::sleep(left).await;
            StepOutcome::Done {
                result: json!({"waited_seconds": seconds}),
                cost_usd: Decimal::ZERO,
                payment_id: None,
            }
        })
    }
}

/// A swap step's result: what it sold and bought, the least it could have bought, and its transaction.
fn swap_result(p: &PaymentView, terms: &paygent_domain::swap::SwapTerms) -> Value {
    let amount_out = p
        .receipt
        .as_ref()
        .and_then(|r| r.get("amount_out").cloned());
    json!({"status": p.status, "payment_id": p.id, "amount_in": p.amount.to_string(), "from": p.currency,
        "to": terms.to, "amount_out": amount_out, "min_out": terms.min_out.to_string(),
        "expected_out": terms.expected_out.to_string(), "dex": terms.dex, "tx_hash": p.tx_hash,
        "network": p.network})
}

/// `swap {amount_in, from, to, dex?, max_slippage_bps?}`: quoted from the exchange, guarded as a payment of
/// `amount_in` (a person above $100 by default, approve or reject only), traded by the rail once.
struct Swap;

/// A swap step's arguments, read.
struct SwapArgs<'a> {
    from: &'a str,
    to: &'a str,
    amount_in: &'a str,
    dex: Option<&'a str>,
    max_slippage_bps: Option<u32>,
}

impl Swap {
    fn args(args: &Value) -> Result<SwapArgs<'_>, String> {
        only(
            args,
            &["from", "to", "amount_in", "dex", "max_slippage_bps"],
        )?;
        let dex = match args.get("dex") {
            None => None,
            Some(d) => Some(d.as_str().ok_or("dex must be a string")?),
        };
        let max_slippage_bps = match args.get("max_slippage_bps") {
            None => None,
            Some(b) => Some(
                b.as_u64()
                    .and_then(|b| u32::try_from(b).ok())
                    .filter(|b| *b <= paygent_domain::swap::BPS)
                    .ok_or("max_slippage_bps must be a whole number from 0 to 10000")?,
            ),
        };
        Ok(SwapArgs {
            from: text(args, "from")?,
            to: text(args, "to")?,
            amount_in: text(args, "amount_in")?,
            dex,
            max_slippage_bps,
        })
    }

    fn request(ctx: &StepContext<'_>, args: &Value) -> Result<crate::SwapRequest, String> {
        let a = Self::args(args)?;
        Ok(crate::SwapRequest {
            session_id: ctx.session_id,
            amount_in: a.amount_in.to_owned(),
            from: a.from.to_owned(),
            to: a.to.to_owned(),
            dex: a.dex.map(str::to_owned),
            max_slippage_bps: a.max_slippage_bps,
            description: ctx.description(),
            idempotency_key: Some(ctx.payment_key()),
        })
    }
}

impl Tool for Swap {
    fn name(&self) -> &'static str {
        paygent_domain::policy::SWAP
    }

    fn spec(&self) -> ToolSpec {
        let text = |d: &str| json!({"type": "string", "description": d});
        ToolSpec {
            name: self.name(),
            description: "Swap an amount of one token for another on an exchange, within a slippage bound.",
            parameters: json!({"type": "object", "additionalProperties": false,
                "required": ["from", "to", "amount_in"],
                "properties": {
                    "from": text("the token given, such as USDC"),
                    "to": text("the token wanted, such as WETH"),
                    "amount_in": text("the decimal amount of `from` to give"),
                    "dex": text("the exchange, as configured; the only one on the chain when omitted"),
                    "max_slippage_bps": {"type": "integer", "minimum": 0, "maximum": 10000,
                        "description": "the most the price may move against the quote, in basis points; the policy's default when omitted"}}}),
        }
    }

    fn check(&self, args: &Value, prices: &PriceTable) -> Result<(), String> {
        let a = Self::args(args)?;
        // What is bought needs no price here: the swap is valued by what it sells.
        paygent_domain::money::validate_symbol(a.to).map_err(|e| e.to_string())?;
        if a.from == a.to {
            return Err("from and to must differ".into());
        }
        prices
            .money(a.amount_in, a.from)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn run<'a>(&'a self, ctx: StepContext<'a>, args: &'a Value) -> BoxFuture<'a, StepOutcome> {
        Box::pin(async move {
            let request = match Self::request(&ctx, args) {
                Ok(r) => r,
                Err(error) => return StepOutcome::Failed { error },
            };
            let answer = ctx.paygent.submit_swap(ctx.principal, request).await;
            ctx.submitted(answer).await
        })
    }
}
