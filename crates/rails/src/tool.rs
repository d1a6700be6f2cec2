//! The tool the rails add: `balance`. (`x402_payment` needs none of its own: with rails installed, the guard
//! asks each resource its price and a rail pays it.)

use futures::future::BoxFuture;
use paygent_engine::domain::{Decimal, PriceTable};
use paygent_engine::{StepContext, StepOutcome, Tool, ToolSpec, string_params};
use serde_json::{Value, json};

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
