//! Canonical JSON and its SHA-256: what the audit chain and action digests hash, the same whoever wrote the
//! JSON and in which order. serde_json keeps an object's keys sorted (its map is a `BTreeMap` unless its
//! `preserve_order` feature is on; nothing here turns it on, and a test below would fail if something did), so
//! canonical JSON is serde_json's compact text, hashed as it is written: every write hashes its audit entries
//! under the tenant's lock, and building the text apart, scalar by scalar, cost a tenth of a payment's CPU.

use serde::Serialize;
use sha2::{Digest, Sha256};

/// The hex SHA-256 of `value` as canonical JSON: a `Value`, or a struct whose fields are declared in sorted order.
pub fn sha256_hex(value: &impl Serialize) -> String {
    let mut hasher = Sha256::new();
    serde_json::to_writer(&mut hasher, value).expect("JSON text written to a hash cannot fail");
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Map, Value, json};

    #[test]
    fn keys_are_sorted_at_every_depth_whatever_order_they_came_in() {
        let mut inner = Map::new();
        inner.insert("b".into(), json!(1));
        inner.insert("a".into(), json!([{"y": 1, "x": 2}]));
        let mut outer = Map::new();
        outer.insert("z".into(), Value::Object(inner));
        outer.insert("a".into(), json!(null));
        let text = r#"{"a":null,"z":{"a":[{"x":2,"y":1}],"b":1}}"#;
        assert_eq!(serde_json::to_string(&outer).unwrap(), text);
        assert_eq!(
            sha256_hex(&Value::Object(outer)),
            hex::encode(Sha256::digest(text.as_bytes()))
        );
    }
}
