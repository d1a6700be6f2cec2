//! A policy's list of payees, indexed: the guard checks every payment against lists of up to 1,000 entries, so a
//! check is one hash lookup, and copying a list into the rules of a session shares it instead.

use serde::{Deserialize, Serialize, Serializer};
use std::collections::HashSet;
use std::sync::Arc;

/// Payees as a person wrote them (their order and case are what is shown back), with the same payees folded to
/// ASCII lower case: addresses and URLs match whatever their case.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(from = "Vec<String>")]
pub struct PayeeList(Arc<Listed>);

#[derive(Debug, Default)]
struct Listed {
    written: Vec<String>,
    folded: HashSet<String>,
}

impl PayeeList {
    /// Whether `payee` is on the list, whatever its case.
    pub fn contains(&self, payee: &str) -> bool {
        let folded = &self.0.folded;
        // Most payees arrive as they were listed, in lower case: no copy for those.
        folded.contains(payee) || folded.contains(&payee.to_ascii_lowercase())
    }

    pub fn is_empty(&self) -> bool {
        self.0.written.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.written.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &String> {
        self.0.written.iter()
    }
}

impl From<Vec<String>> for PayeeList {
    fn from(written: Vec<String>) -> Self {
        let folded = written.iter().map(|p| p.to_ascii_lowercase()).collect();
        PayeeList(Arc::new(Listed { written, folded }))
    }
}

impl Serialize for PayeeList {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.written.serialize(s)
    }
}

/// Two lists are the same when they were written the same.
impl PartialEq for PayeeList {
    fn eq(&self, other: &Self) -> bool {
        self.0.written == other.0.written
    }
}

impl Eq for PayeeList {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_whatever_the_case_and_shows_what_was_written() {
        let list = PayeeList::from(vec!["0xAbC".to_owned(), "https://Api.example/".to_owned()]);
        for hit in ["0xabc", "0xABC", "0xAbC", "https://api.example/"] {
            assert!(list.contains(hit), "{hit}");
        }
        assert!(!list.contains("0xab"));
        assert!(!list.contains(""));
        assert_eq!(
            serde_json::to_value(&list).unwrap(),
            serde_json::json!(["0xAbC", "https://Api.example/"])
        );
        let back: PayeeList = serde_json::from_value(serde_json::json!(["0xAbC"])).unwrap();
        assert!(back.contains("0XABC") && back.len() == 1);
        assert_ne!(back, PayeeList::from(vec!["0xabc".to_owned()]));
        assert!(PayeeList::default().is_empty());
    }
}
