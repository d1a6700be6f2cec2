//! The deterministic command parser: plain-language commands into tool steps. It never guesses: anything it
//! cannot read exactly is refused with what it understood, what it did not, and examples.

use crate::money::{MoneyError, parse_decimal, validate_symbol};
use crate::payment::Recipient;
use serde_json::{Value, json};

/// A tool call in a plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub tool: String,
    pub args: Value,
}

/// Why a command was refused, with enough to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{problem} (in {part:?}). Understood so far: {understood}. Examples: {EXAMPLES}")]
pub struct CommandError {
    /// The part of the command that could not be read.
    pub part: String,
    pub problem: String,
    /// The steps read before it, described.
    pub understood: String,
}

pub const EXAMPLES: &str = "\"Pay 0.10 USDC to https://api.example/data\", \"Transfer 5 USDC to 0xabc…\", \
    \"Send 2.5 CRO to 0x…\", \"Swap 10 CRO for USDC\", \"Fetch https://example.com/\", \"Wait 30 seconds\", \
    \"Check my USDC balance\", \"Transfer 5 USDC to 0x… then fetch https://…\"";

/// The most steps one command may plan.
pub const MAX_STEPS: usize = 20;

/// Parses a command of one or more steps joined by "then".
pub fn parse(command: &str) -> Result<Vec<Step>, CommandError> {
    let mut steps = Vec::new();
    let parts = split_then(command);
    if parts.len() > MAX_STEPS {
        return Err(CommandError {
            part: command.chars().take(80).collect(),
            problem: format!("a command may have at most {MAX_STEPS} steps"),
            understood: "nothing".into(),
        });
    }
    for part in parts {
        match parse_step(&part) {
            Ok(step) => steps.push(step),
            Err(problem) => {
                return Err(CommandError {
                    part,
                    problem,
                    understood: describe(&steps),
                });
            }
        }
    }
    Ok(steps)
}

fn describe(steps: &[Step]) -> String {
    if steps.is_empty() {
        return "nothing".into();
    }
    steps
        .iter()
        .map(|s| format!("{} {}", s.tool, s.args))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Splits on the word "then" (any case), also after a comma or "and".
fn split_then(command: &str) -> Vec<String> {
    let mut parts = vec![Vec::new()];
    for word in command.split_whitespace() {
        let bare = word.trim_end_matches(',');
        if bare.eq_ignore_ascii_case("then") {
            if let Some(last) = parts.last_mut()
                && last
                    .last()
                    .is_some_and(|w: &&str| w.eq_ignore_ascii_case("and"))
            {
                last.pop();
            }
            parts.push(Vec::new());
        } else {
            parts.last_mut().expect("one part at least").push(word);
        }
    }
    parts
        .into_iter()
        .map(|words| {
            words
                .join(" ")
                .trim_end_matches([',', '.', ';'])
                .trim()
                .to_owned()
        })
        .collect()
}

fn parse_step(part: &str) -> Result<Step, String> {
    let words: Vec<&str> = part.split_whitespace().collect();
    let lower: Vec<String> = words.iter().map(|w| w.to_ascii_lowercase()).collect();
    let lw: Vec<&str> = lower.iter().map(String::as_str).collect();
    match lw.as_slice() {
        [] => Err("an empty step".into()),
        ["pay", _, _, "to", _] => {
            let (amount, currency) = money(words[1], words[2])?;
            match Recipient::parse(words[4]) {
                Ok(Recipient::Url(url)) => Ok(step(
                    "x402_payment",
                    json!({"url": url, "max_amount": amount, "currency": currency}),
                )),
                Ok(Recipient::Evm(to)) => Ok(step(
                    "transfer",
                    json!({"to": to, "amount": amount, "currency": currency}),
                )),
                Err(_) => Err(format!(
                    "{:?} is neither an http(s) URL nor an EVM address",
                    words[4]
                )),
            }
        }
        ["transfer" | "send", _, _, "to", _] => {
            let (amount, currency) = money(words[1], words[2])?;
            match Recipient::parse(words[4]) {
                Ok(Recipient::Evm(to)) => Ok(step(
                    "transfer",
                    json!({"to": to, "amount": amount, "currency": currency}),
                )),
                _ => Err(format!(
                    "{:?} is not an EVM address (0x and 40 hex digits)",
                    words[4]
                )),
            }
        }
        ["fetch" | "get", _] => match Recipient::parse(words[1]) {
            Ok(Recipient::Url(url)) => Ok(step("http_get", json!({"url": url}))),
            _ => Err(format!("{:?} is not an http(s) URL", words[1])),
        },
        ["wait", n, "second" | "seconds" | "s"] | ["wait", n] => {
            let seconds: u32 = n
                .parse()
                .ok()
                .filter(|s| (1..=86_400).contains(s))
                .ok_or_else(|| format!("{n:?} is not a whole number of seconds from 1 to 86400"))?;
            Ok(step("wait", json!({"seconds": seconds})))
        }
        ["swap", _, _, "for" | "to" | "into", _] => {
            let (amount, from) = money(words[1], words[2])?;
            let to = words[4].to_ascii_uppercase();
            validate_symbol(&to).map_err(|e| e.to_string())?;
            Ok(step(
                "swap",
                json!({"from": from, "to": to, "amount_in": amount}),
            ))
        }
        ["swap", ..] => Err("expected \"swap <amount> <CURRENCY> for <CURRENCY>\"".into()),
        ["check", "my", "balance" | "balances"] | ["check", "balance" | "balances"] => {
            Ok(step("balance", json!({})))
        }
        ["check", "my", _, "balance"] | ["check", _, "balance"] => {
            let symbol = words[lw.len() - 2].to_ascii_uppercase();
            validate_symbol(&symbol).map_err(|e| e.to_string())?;
            Ok(step("balance", json!({"currency": symbol})))
        }
        ["check", ..] => Err("expected \"check my <CURRENCY> balance\"".into()),
        ["pay" | "transfer" | "send", ..] => {
            Err("expected \"<verb> <amount> <CURRENCY> to <recipient>\"".into())
        }
        _ => Err("this is not a command Paygent knows".into()),
    }
}

fn step(tool: &str, args: Value) -> Step {
    Step {
        tool: tool.to_owned(),
        args,
    }
}

fn money(amount: &str, currency: &str) -> Result<(String, String), String> {
    let value = parse_decimal(amount).map_err(|e| match e {
        MoneyError::NotADecimal(_) => {
            format!("{amount:?} is not an amount: write digits, like 2.50")
        }
        other => other.to_string(),
    })?;
    let symbol = currency.to_ascii_uppercase();
    validate_symbol(&symbol).map_err(|e| e.to_string())?;
    Ok((value.to_string(), symbol))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADDR: &str = "0xAbC0000000000000000000000000000000000001";

    #[test]
    fn the_grammar_table() {
        let accepted: &[(&str, &[(&str, Value)])] = &[
            (
                "Pay 0.10 USDC to https://api.example/data",
                &[(
                    "x402_payment",
                    json!({"url": "https://api.example/data", "max_amount": "0.10", "currency": "USDC"}),
                )],
            ),
            (
                &format!("Transfer 5 USDC to {ADDR}"),
                &[(
                    "transfer",
                    json!({"to": ADDR, "amount": "5", "currency": "USDC"}),
                )],
            ),
            (
                &format!("send 2.5 cro to {ADDR}"),
                &[(
                    "transfer",
                    json!({"to": ADDR, "amount": "2.5", "currency": "CRO"}),
                )],
            ),
            (
                "FETCH https://example.com/x?y=1",
                &[("http_get", json!({"url": "https://example.com/x?y=1"}))],
            ),
            ("wait 30 seconds", &[("wait", json!({"seconds": 30}))]),
            (
                "Swap 10 CRO for USDC",
                &[(
                    "swap",
                    json!({"from": "CRO", "to": "USDC", "amount_in": "10"}),
                )],
            ),
            (
                &format!(
                    "Fetch https://a.example/ then pay 1 USDC to {ADDR}, and then wait 2 seconds."
                ),
                &[
                    ("http_get", json!({"url": "https://a.example/"})),
                    (
                        "transfer",
                        json!({"to": ADDR, "amount": "1", "currency": "USDC"}),
                    ),
                    ("wait", json!({"seconds": 2})),
                ],
            ),
            (
                "Check my USDC balance",
                &[("balance", json!({"currency": "USDC"}))],
            ),
            ("check balance", &[("balance", json!({}))]),
        ];
        for (command, expected) in accepted {
            let steps = parse(command).unwrap_or_else(|e| panic!("{command}: {e}"));
            let got: Vec<(&str, Value)> = steps
                .iter()
                .map(|s| (s.tool.as_str(), s.args.clone()))
                .collect();
            assert_eq!(&got, expected, "{command}");
        }

        let refused: &[(&str, &str)] = &[
            (
                "Pay 1e3 USDC to https://x.example/",
                "\"1e3\" is not an amount",
            ),
            (
                "Pay 1.2.3 USDC to https://x.example/",
                "\"1.2.3\" is not an amount",
            ),
            ("Pay -5 USDC to https://x.example/", "greater than zero"),
            (
                "Pay five USDC to https://x.example/",
                "\"five\" is not an amount",
            ),
            (
                "Transfer 5 USDC to https://x.example/",
                "not an EVM address",
            ),
            ("Transfer 5 USDC to vitalik.eth", "not an EVM address"),
            (
                "Pay 5 USDC",
                "expected \"<verb> <amount> <CURRENCY> to <recipient>\"",
            ),
            (
                "Swap 10 CRO",
                "expected \"swap <amount> <CURRENCY> for <CURRENCY>\"",
            ),
            ("Swap 1e3 CRO for USDC", "not an amount"),
            (
                "Check my USDC balance please",
                "expected \"check my <CURRENCY> balance\"",
            ),
            ("Buy me a coffee", "not a command Paygent knows"),
            ("wait forever", "not a whole number"),
            ("", "an empty step"),
        ];
        for (command, message) in refused {
            let e = parse(command).expect_err(command);
            assert!(e.to_string().contains(message), "{command}: {e}");
            assert!(e.to_string().contains("Examples:"), "{command}: {e}");
        }
    }

    #[test]
    fn refusals_say_what_was_understood() {
        let e = parse(&format!(
            "Transfer 5 USDC to {ADDR} then pay 1e3 USDC to {ADDR}"
        ))
        .unwrap_err();
        assert!(e.understood.starts_with("transfer"), "{e}");
        assert_eq!(e.part, format!("pay 1e3 USDC to {ADDR}"));
    }

    #[test]
    fn plans_are_bounded() {
        let long = vec!["wait 1 second"; MAX_STEPS + 1].join(" then ");
        assert!(parse(&long).is_err());
    }
}
