//! The `x402_payment` tool with a rail behind it: ask the resource its price, pass the guard with that price
//! (which may wait for a person), and let the rail pay. It replaces the decision-only tool of the same name.

use crate::evm::{EvmRails, Quote, QuoteError, from_units, to_units};
use futures::future::BoxFuture;
use paygent_engine::domain::{Decimal, PriceTable};
use paygent_engine::{StepContext, StepOutcome, Tool, ToolSpec, string_params};
use serde_json::{Value, json};
use std::sync::Arc;

pub struct X402Tool {
    rails: EvmRails,
    /// The decision-only tool it replaces, whose argument checks it keeps.
    checks: Arc<dyn Tool>,
}

impl X402Tool {
    pub fn new(rails: EvmRails, replaced: Arc<dyn Tool>) -> Self {
        X402Tool {
            rails,
            checks: replaced,
        }
    }

    async fn run_step(&self, ctx: &StepContext<'_>, args: &Value) -> StepOutcome {
        let text = |k: &str| args.get(k).and_then(Value::as_str).unwrap_or_default();
        let (url, max) = (text("url"), text("max_amount"));
        let currency = args
            .get("currency")
            .and_then(Value::as_str)
            .unwrap_or("USDC");
        let offers = match self.rails.quote(url).await {
            Ok(Quote::Offers(offers)) => offers,
            Err(e @ QuoteError::Malformed { .. }) => {
                return ctx.refuse_payment(max, currency, url, &e.to_string()).await;
            }
            Err(QuoteError::Unreachable(error)) => return StepOutcome::Failed { error },
            Ok(Quote::Unpaid { status, body }) => {
                // Free (or broken) without a 402: nothing to pay, the answer is the step's result.
                return StepOutcome::Done {
                    result: json!({"status": status, "body": body, "paid": false}),
                    cost_usd: Decimal::ZERO,
                    payment_id: None,
                };
            }
        };
        let payable = match self.rails.payable(&offers) {
            Ok(p) => p,
            Err(why) => return ctx.refuse_payment(max, currency, url, &why).await,
        };
        let prices = ctx.paygent.prices();
        let within = payable.iter().find_map(|(offer, symbol)| {
            let spec = prices.get(symbol)?;
            let amount = from_units(offer.amount, spec.decimals)?;
            let limit = prices.money(max, currency).ok()?;
            let limit_units = to_units(limit.amount, spec.decimals)?;
            (symbol == currency && offer.amount <= limit_units).then(|| (amount, symbol.clone()))
        });
        match within {
            Some((amount, symbol)) => ctx.pay(&amount.to_string(), &symbol, url).await,
            None => {
                let why = format!(
                    "the service asks {}, above max_amount {max} {currency}: nothing was signed",
                    self.rails.asked(&payable)
                );
                ctx.refuse_payment(max, currency, url, &why).await
            }
        }
    }
}

impl Tool for X402Tool {
    fn name(&self) -> &'static str {
        self.checks.name()
    }

    fn spec(&self) -> ToolSpec {
        self.checks.spec()
    }

    fn check(&self, args: &Value, prices: &PriceTable) -> Result<(), String> {
        self.checks.check(args, prices)
    }

    fn run<'a>(&'a self, ctx: StepContext<'a>, args: &'a Value) -> BoxFuture<'a, StepOutcome> {
        Box::pin(async move { self.run_step(&ctx, args).await })
    }
}

/// `balance {currency?}`: the session wallet's balances, read from the chain. Moves no money.
pub struct BalanceTool;

impl Tool for BalanceTool {
    fn name(&self) -> &'static str {
        "balance"
    }

    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: self.name(),
            description: "Read the session wallet's balances on chain, of one currency or all.",
            parameters: string_params(&[("currency", "a currency symbol such as USDC")], &[]),
        }
    }

    fn check(&self, args: &Value, prices: &PriceTable) -> Result<(), String> {
        let obj = args.as_object().ok_or("args must be an object")?;
        if let Some(k) = obj.keys().find(|k| *k != "currency") {
            return Err(format!("unknown argument {k:?}; expected currency"));
        }
        match obj.get("currency") {
            None => Ok(()),
            Some(Value::String(c)) if prices.get(c).is_some() => Ok(()),
            Some(other) => Err(format!("currency {other} is not a known currency")),
        }
    }

    fn run<'a>(&'a self, ctx: StepContext<'a>, args: &'a Value) -> BoxFuture<'a, StepOutcome> {
        Box::pin(async move {
            let all = match ctx.paygent.balances(ctx.principal, ctx.session_id).await {
                Ok(b) => b,
                Err(e) => {
                    return StepOutcome::Failed {
                        error: e.to_string(),
                    };
                }
            };
            let wanted = args.get("currency").and_then(Value::as_str);
            let balances: Vec<Value> = all["balances"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|b| wanted.is_none_or(|c| b["currency"] == c))
                .cloned()
                .collect();
            StepOutcome::Done {
                result: json!({"wallet": all["wallet"], "balances": balances}),
                cost_usd: Decimal::ZERO,
                payment_id: None,
            }
        })
    }
}
