//! The exact action an approval request would run, as a digest: what a person approves, and all that may run.

use serde_json::Value;
use uuid::Uuid;

/// The SHA-256 of the action (its session, tool, arguments and, for a payment a rail carries, the network it
/// pays on) in canonical JSON, as `sha256:<hex>`. Canonical JSON sorts object keys and has no spaces, so the
/// same action always has the same digest, whoever wrote its arguments in which order; any change to what would
/// run changes it, the chain included. An action no rail carries has no network, and no `network` key.
pub fn action_digest(session_id: Uuid, tool: &str, args: &Value, network: Option<&str>) -> String {
    let mut action = serde_json::json!({"session_id": session_id, "tool": tool, "args": args});
    if let Some(network) = network {
        action["network"] = network.into();
    }
    format!("sha256:{}", crate::canonical::sha256_hex(&action))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ADDR: &str = "0x1111111111111111111111111111111111111111";

    #[test]
    fn the_digest_is_sha256_of_the_canonical_action() {
        // Computed apart, with Python's hashlib over the canonical text (json.dumps, keys sorted, no spaces).
        let args = json!({"recipient": ADDR, "currency": "USDC", "amount": "5"});
        assert_eq!(
            action_digest(Uuid::nil(), "transfer", &args, None),
            "sha256:f7870a201e65988cf87894c174d38b59f1a5cc231b993fc835a8cbb789dcfd10"
        );
        assert_eq!(
            action_digest(Uuid::nil(), "transfer", &args, Some("eip155:338")),
            "sha256:390056b4b2224793d79e658699cca7cb6fb336fa7536c7fd55d8ad0793ba03c8"
        );
    }

    #[test]
    fn key_order_never_matters_and_every_part_of_the_action_does() {
        let session = Uuid::from_u128(7);
        let a = action_digest(
            session,
            "transfer",
            &json!({"amount": "5", "currency": "USDC"}),
            Some("eip155:338"),
        );
        let b = action_digest(
            session,
            "transfer",
            &json!({"currency": "USDC", "amount": "5"}),
            Some("eip155:338"),
        );
        assert_eq!(a, b);
        let five = json!({"amount": "5", "currency": "USDC"});
        let net = Some("eip155:338");
        for other in [
            action_digest(
                session,
                "transfer",
                &json!({"amount": "5.0", "currency": "USDC"}),
                net,
            ),
            action_digest(
                session,
                "transfer",
                &json!({"amount": "5", "currency": "USDT"}),
                net,
            ),
            action_digest(session, "swap", &five, net),
            action_digest(Uuid::from_u128(8), "transfer", &five, net),
            action_digest(session, "transfer", &five, Some("eip155:25")),
            action_digest(session, "transfer", &five, None),
        ] {
            assert_ne!(a, other);
        }
    }
}
