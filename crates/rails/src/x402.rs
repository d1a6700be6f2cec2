//! The x402 wire formats, v1 and v2: reading a 402's payment requirements, writing the payment header, reading
//! the settlement. Pure: no I/O, so every malformed answer is tested here.

use alloy::primitives::{Address, B256, U256};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// JSON `accepts` in the body, the `X-PAYMENT` header, simple network names.
    V1,
    /// The `PAYMENT-REQUIRED` / `PAYMENT-SIGNATURE` / `PAYMENT-RESPONSE` headers, CAIP-2 networks.
    V2,
}

pub const V2_REQUIRED: &str = "payment-required";
pub const V2_SIGNATURE: &str = "payment-signature";
pub const V2_RESPONSE: &str = "payment-response";
pub const V1_PAYMENT: &str = "x-payment";
pub const V1_RESPONSE: &str = "x-payment-response";

/// One payment requirement a service offered.
#[derive(Debug, Clone, PartialEq)]
pub struct Offer {
    pub version: Version,
    /// The requirement exactly as offered: v2 services match the echo byte for byte (case, number types, extra).
    pub raw: Value,
    /// v2's resource object, echoed beside the payment.
    pub resource: Option<Value>,
    pub scheme: String,
    /// `eip155:<id>` for v2, a name such as `cronos-testnet` for v1.
    pub network: String,
    /// In the token's smallest units.
    pub amount: U256,
    pub asset: Address,
    pub pay_to: Address,
    pub max_timeout_seconds: u64,
    /// The token's EIP-712 domain name and version, if the service states them.
    pub eip712: Option<(String, String)>,
    /// The `payment-identifier` extension, as a v2 service declares it: it then takes an id to dedupe on.
    pub identifier: Option<Value>,
}

/// The x402 extension by which a client names its payment, so a service can dedupe retries of it.
pub const PAYMENT_IDENTIFIER: &str = "payment-identifier";

/// What a 402 answer offers. An error says, in words, why it could not be read.
pub fn parse_required(header: Option<&str>, body: &[u8]) -> Result<Vec<Offer>, String> {
    let (version, doc) = match header {
        Some(h) => {
            let bytes = B64
                .decode(h.trim())
                .map_err(|_| "the PAYMENT-REQUIRED header is not base64".to_owned())?;
            let doc: Value = serde_json::from_slice(&bytes)
                .map_err(|_| "the PAYMENT-REQUIRED header is not base64 JSON".to_owned())?;
            (Version::V2, doc)
        }
        None => {
            let doc: Value = serde_json::from_slice(body).map_err(|_| {
                "the 402 answer has neither a PAYMENT-REQUIRED header nor a JSON body".to_owned()
            })?;
            (Version::V1, doc)
        }
    };
    let stated = doc.get("x402Version").and_then(Value::as_u64);
    match (version, stated) {
        (Version::V2, Some(2)) | (Version::V1, Some(1)) => {}
        (_, other) => {
            return Err(format!(
                "unsupported x402Version {}",
                other.map_or("(missing)".into(), |v| v.to_string())
            ));
        }
    }
    let accepts = doc
        .get("accepts")
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty())
        .ok_or("the 402 answer offers no payment requirements (accepts)")?;
    let resource = doc.get("resource").cloned();
    let identifier = doc
        .pointer(&format!("/extensions/{PAYMENT_IDENTIFIER}"))
        .filter(|e| e.pointer("/info/required").is_some_and(Value::is_boolean))
        .cloned();
    accepts
        .iter()
        .enumerate()
        .map(|(i, raw)| {
            let offer = offer(version, raw, resource.clone())
                .map_err(|e| format!("payment requirement {i}: {e}"))?;
            Ok(Offer {
                identifier: identifier.clone(),
                ..offer
            })
        })
        .collect()
}

fn offer(version: Version, raw: &Value, resource: Option<Value>) -> Result<Offer, String> {
    let text = |k: &str| {
        raw.get(k)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{k} is missing"))
    };
    let amount_key = match version {
        Version::V1 => "maxAmountRequired",
        Version::V2 => "amount",
    };
    let amount = text(amount_key)?;
    if amount.is_empty() || !amount.bytes().all(|b| b.is_ascii_digit()) || amount.len() > 78 {
        return Err(format!(
            "{amount_key} {amount:?} is not a whole number of units"
        ));
    }
    let address = |k: &str| -> Result<Address, String> {
        text(k)?
            .parse()
            .map_err(|_| format!("{k} is not an EVM address"))
    };
    let extra = raw.get("extra");
    let eip712 = match (
        extra.and_then(|e| e.get("name")).and_then(Value::as_str),
        extra.and_then(|e| e.get("version")).and_then(Value::as_str),
    ) {
        (Some(n), Some(v)) => Some((n.to_owned(), v.to_owned())),
        _ => None,
    };
    Ok(Offer {
        version,
        raw: raw.clone(),
        resource,
        scheme: text("scheme")?.to_owned(),
        network: text("network")?.to_owned(),
        amount: amount
            .parse()
            .map_err(|_| format!("{amount_key} is out of range"))?,
        asset: address("asset")?,
        pay_to: address("payTo")?,
        max_timeout_seconds: raw
            .get("maxTimeoutSeconds")
            .and_then(Value::as_u64)
            .unwrap_or(60),
        eip712,
        identifier: None,
    })
}

/// An EIP-3009 `transferWithAuthorization`, signed.
#[derive(Debug, Clone, PartialEq)]
pub struct Authorization {
    pub from: Address,
    pub to: Address,
    pub value: U256,
    pub valid_after: u64,
    pub valid_before: u64,
    pub nonce: B256,
    /// 65 bytes, r ‖ s ‖ v with v = 27 or 28.
    pub signature: [u8; 65],
}

impl Authorization {
    fn payload(&self) -> Value {
        json!({
            "signature": format!("0x{}", alloy::hex::encode(self.signature)),
            "authorization": {
                "from": self.from.to_checksum(None),
                "to": self.to.to_checksum(None),
                "value": self.value.to_string(),
                "validAfter": self.valid_after.to_string(),
                "validBefore": self.valid_before.to_string(),
                "nonce": self.nonce.to_string(),
            }
        })
    }
}

/// The header that pays for `offer`: its name and value. `payment_id` (16 to 128 letters, digits, `-` and `_`)
/// names the payment to a v2 service that declared the payment-identifier extension.
pub fn payment_header(
    offer: &Offer,
    auth: &Authorization,
    payment_id: &str,
) -> (&'static str, String) {
    match offer.version {
        Version::V2 => {
            let mut doc =
                json!({"x402Version": 2, "payload": auth.payload(), "accepted": offer.raw});
            if let Some(r) = &offer.resource {
                doc["resource"] = r.clone();
            }
            if let Some(declared) = &offer.identifier {
                let mut echoed = declared.clone();
                echoed["info"]["id"] = json!(payment_id);
                doc["extensions"] = json!({PAYMENT_IDENTIFIER: echoed});
            }
            (V2_SIGNATURE, B64.encode(doc.to_string()))
        }
        Version::V1 => {
            let doc = json!({"x402Version": 1, "scheme": offer.scheme, "network": offer.network,
                "payload": auth.payload()});
            (V1_PAYMENT, B64.encode(doc.to_string()))
        }
    }
}

/// The settlement a service reports in `PAYMENT-RESPONSE` (or v1's `X-PAYMENT-RESPONSE`), if readable.
pub fn parse_settlement(header: &str) -> Option<Value> {
    let bytes = B64.decode(header.trim()).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// What a service said when it refused a payment: its (or its facilitator's) reason code and message, from a
/// failed settlement's header, the payment-required header or a JSON body, whichever says it first.
pub fn refusal(
    settlement: Option<&str>,
    required: Option<&str>,
    body: &[u8],
) -> (Option<String>, Option<String>) {
    let decoded = |h: Option<&str>| h.and_then(parse_settlement);
    let docs = [
        decoded(settlement),
        decoded(required),
        serde_json::from_slice(body).ok(),
    ];
    let first = |keys: &[&str]| {
        docs.iter().flatten().find_map(|d| {
            keys.iter()
                .find_map(|k| d.get(*k).and_then(Value::as_str))
                .filter(|v| !v.is_empty())
                .map(|v| v.chars().take(300).collect::<String>())
        })
    };
    (
        first(&["errorReason", "invalidReason", "error"]),
        first(&["errorMessage", "invalidMessage", "message"]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0x5FbDB2315678afecb367f032d93F642f64180aa3";
    const PAYEE: &str = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC";

    fn v2_offer() -> Value {
        json!({"scheme": "exact", "network": "eip155:338", "amount": "100000", "asset": TOKEN.to_lowercase(),
            "payTo": PAYEE, "maxTimeoutSeconds": 120, "extra": {"name": "USD Coin", "version": "2"}})
    }

    fn v2_header(doc: Value) -> String {
        B64.encode(doc.to_string())
    }

    #[test]
    fn reads_v2_offers_and_echoes_them_exactly() {
        let doc = json!({"x402Version": 2, "error": "Payment required",
            "resource": {"url": "http://127.0.0.1/x"}, "accepts": [v2_offer()]});
        let offers = parse_required(Some(&v2_header(doc)), b"{}").unwrap();
        let o = &offers[0];
        assert_eq!(o.version, Version::V2);
        assert_eq!(o.amount, U256::from(100_000));
        assert_eq!(o.network, "eip155:338");
        assert_eq!(o.asset, TOKEN.parse::<Address>().unwrap());
        assert_eq!(o.eip712, Some(("USD Coin".into(), "2".into())));
        let auth = Authorization {
            from: PAYEE.parse().unwrap(),
            to: PAYEE.parse().unwrap(),
            value: o.amount,
            valid_after: 1,
            valid_before: 2,
            nonce: B256::repeat_byte(7),
            signature: [1; 65],
        };
        let (name, value) = payment_header(o, &auth, "pay_0123456789abcdef");
        assert_eq!(name, V2_SIGNATURE);
        let sent: Value = serde_json::from_slice(&B64.decode(value).unwrap()).unwrap();
        // The requirement goes back as offered, lower-case asset and number types included.
        assert_eq!(sent["accepted"], v2_offer());
        assert_eq!(sent["resource"]["url"], "http://127.0.0.1/x");
        assert_eq!(sent["payload"]["authorization"]["value"], "100000");
        assert_eq!(sent["payload"]["authorization"]["validBefore"], "2");
        assert!(sent.get("extensions").is_none(), "not declared, not sent");
    }

    #[test]
    fn a_declared_payment_identifier_carries_the_payment_s_id() {
        let declared = json!({"info": {"required": false}, "schema": {"type": "object"}});
        let doc = json!({"x402Version": 2, "accepts": [v2_offer()],
            "extensions": {"payment-identifier": declared, "bazaar": {"info": {}}}});
        let offers = parse_required(Some(&v2_header(doc)), b"{}").unwrap();
        assert_eq!(offers[0].identifier, Some(declared.clone()));
        let auth = Authorization {
            from: PAYEE.parse().unwrap(),
            to: PAYEE.parse().unwrap(),
            value: offers[0].amount,
            valid_after: 0,
            valid_before: 9,
            nonce: B256::ZERO,
            signature: [0; 65],
        };
        let (_, value) = payment_header(&offers[0], &auth, "pay_0123456789abcdef");
        let sent: Value = serde_json::from_slice(&B64.decode(value).unwrap()).unwrap();
        // The declaration goes back as declared, with the id beside what the service advertised.
        let echoed = &sent["extensions"]["payment-identifier"];
        assert_eq!(
            echoed["info"],
            json!({"required": false, "id": "pay_0123456789abcdef"})
        );
        assert_eq!(echoed["schema"], declared["schema"]);
        assert_eq!(
            sent["extensions"].as_object().unwrap().len(),
            1,
            "only what it fills in"
        );
    }

    #[test]
    fn reads_v1_offers_from_the_body() {
        let body = json!({"x402Version": 1, "error": "X-PAYMENT header is required", "accepts": [{
            "scheme": "exact", "network": "cronos-testnet", "maxAmountRequired": "250000",
            "resource": "http://127.0.0.1/x", "payTo": PAYEE, "asset": TOKEN, "maxTimeoutSeconds": 60}]});
        let offers = parse_required(None, body.to_string().as_bytes()).unwrap();
        assert_eq!(offers[0].version, Version::V1);
        assert_eq!(offers[0].amount, U256::from(250_000));
        assert_eq!(offers[0].eip712, None);
        let auth = Authorization {
            from: PAYEE.parse().unwrap(),
            to: PAYEE.parse().unwrap(),
            value: U256::from(250_000),
            valid_after: 0,
            valid_before: 9,
            nonce: B256::ZERO,
            signature: [0; 65],
        };
        let (name, value) = payment_header(&offers[0], &auth, "pay_0123456789abcdef");
        assert_eq!(name, V1_PAYMENT);
        let sent: Value = serde_json::from_slice(&B64.decode(value).unwrap()).unwrap();
        assert_eq!(sent["network"], "cronos-testnet");
        assert_eq!(sent["x402Version"], 1);
    }

    #[test]
    fn malformed_answers_say_what_is_wrong() {
        let cases: Vec<(Option<String>, &[u8], &str)> = vec![
            (Some("not base64 json!".into()), b"", "not base64"),
            (Some(B64.encode("[1,")), b"", "not base64 JSON"),
            (
                None,
                b"pay me",
                "neither a PAYMENT-REQUIRED header nor a JSON body",
            ),
            (
                Some(v2_header(
                    json!({"x402Version": 3, "accepts": [v2_offer()]}),
                )),
                b"",
                "unsupported x402Version 3",
            ),
            (
                None,
                br#"{"accepts": []}"#,
                "unsupported x402Version (missing)",
            ),
            (
                Some(v2_header(json!({"x402Version": 2, "accepts": []}))),
                b"",
                "offers no payment requirements",
            ),
        ];
        for (header, body, expected) in cases {
            let err = parse_required(header.as_deref(), body).unwrap_err();
            assert!(err.contains(expected), "{err:?} should say {expected:?}");
        }
        let mut bad = v2_offer();
        for (key, value, expected) in [
            ("amount", json!("1e3"), "not a whole number"),
            ("amount", json!("-5"), "not a whole number"),
            ("amount", json!(100000), "amount is missing"),
            ("asset", json!("0x12"), "asset is not an EVM address"),
            ("payTo", json!(null), "payTo is missing"),
        ] {
            let saved = bad[key].clone();
            bad[key] = value;
            let doc = json!({"x402Version": 2, "accepts": [bad.clone()]});
            let err = parse_required(Some(&v2_header(doc)), b"").unwrap_err();
            assert!(err.contains(expected), "{err:?} should say {expected:?}");
            bad[key] = saved;
        }
    }

    #[test]
    fn refusals_say_the_service_s_reason() {
        let settle = B64.encode(
            json!({"success": false, "errorReason": "insufficient_funds", "errorMessage": "balance 0"})
                .to_string(),
        );
        let required =
            B64.encode(json!({"x402Version": 2, "error": "invalid_payload"}).to_string());
        assert_eq!(
            refusal(Some(&settle), Some(&required), b"{}"),
            (Some("insufficient_funds".into()), Some("balance 0".into()))
        );
        assert_eq!(
            refusal(None, Some(&required), b"not json"),
            (Some("invalid_payload".into()), None)
        );
        let v1 = br#"{"x402Version": 1, "error": "invalid_exact_evm_payload_signature"}"#;
        assert_eq!(
            refusal(None, None, v1),
            (Some("invalid_exact_evm_payload_signature".into()), None)
        );
        assert_eq!(refusal(None, Some("%%"), b""), (None, None));
    }

    #[test]
    fn settlements_are_read_when_readable() {
        let header = B64.encode(r#"{"success":true,"transaction":"0xab"}"#);
        assert_eq!(parse_settlement(&header).unwrap()["transaction"], "0xab");
        assert_eq!(parse_settlement("%%%"), None);
    }
}
