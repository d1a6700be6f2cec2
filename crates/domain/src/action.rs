//! The exact action an approval request would run, as a digest: what a person approves, and all that may run.

use serde_json::Value;
use uuid::Uuid;

/// The SHA-256 of the action (its session, tool and arguments) in canonical JSON, as `sha256:<hex>`. Canonical
/// JSON sorts object keys and has no spaces, so the same action always has the same digest, whoever wrote its
/// arguments in which order; any change to what would run changes it.
pub fn action_digest(session_id: Uuid, tool: &str, args: &Value) -> String {
    let action = serde_json::json!({"session_id": session_id, "tool": tool, "args": args});
    format!("sha256:{}", crate::canonical::sha256_hex(&action))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ADDR: &str = "0x1111111111111111111111111111111111111111";

    #[test]
    fn the_digest_is_sha256_of_the_canonical_action() {
        // Computed apart, with Python's hashlib over the canonical text.
        let args = json!({"recipient": ADDR, "currency": "USDC", "amount": "5"});
        assert_eq!(
            action_digest(Uuid::nil(), "transfer", &args),
            "sha256:f7870a201e65988cf87894c174d38b59f1a5cc231b993fc835a8cbb789dcfd10"
        );
    }

    #[test]
    fn key_order_never_matters_and_every_part_of_the_action_does() {
        let session = Uuid::from_u128(7);
        let a = action_digest(
            session,
            "transfer",
            &json!({"amount": "5", "currency": "USDC"}),
        );
        let b = action_digest(
            session,
            "transfer",
            &json!({"currency": "USDC", "amount": "5"}),
        );
        assert_eq!(a, b);
        for other in [
            action_digest(
                session,
                "transfer",
                &json!({"amount": "5.0", "currency": "USDC"}),
            ),
            action_digest(
                session,
                "transfer",
                &json!({"amount": "5", "currency": "USDT"}),
            ),
            action_digest(session, "swap", &json!({"amount": "5", "currency": "USDC"})),
            action_digest(
                Uuid::from_u128(8),
                "transfer",
                &json!({"amount": "5", "currency": "USDC"}),
            ),
        ] {
            assert_ne!(a, other);
        }
    }
}
