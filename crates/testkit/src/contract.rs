//! Every answer a test sees through [`crate::TestServer::call`] is held to the published OpenAPI document: its
//! status must be listed for the operation, and its content type under that status. A test that provokes an
//! answer the document does not list fails there, naming both.

use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::sync::OnceLock;

fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        serde_json::to_value(paygent_server::openapi()).expect("the document serializes")
    })
}

/// The document's path template for `path` (`/api/v1/...`, without its query): the one whose literal segments
/// match the most, so `/approvals/pending` is not taken for `/approvals/{id}`.
fn template(path: &str) -> Option<&'static str> {
    let parts: Vec<&str> = path.split('/').collect();
    let paths = document()["paths"].as_object()?;
    paths
        .keys()
        .filter_map(|t| {
            let segments: Vec<&str> = t.split('/').collect();
            let fits = segments.len() == parts.len()
                && segments
                    .iter()
                    .zip(&parts)
                    .all(|(s, p)| s == p || (s.starts_with('{') && !p.is_empty()));
            fits.then(|| (segments.iter().filter(|s| !s.starts_with('{')).count(), t))
        })
        .max()
        .map(|(_, t)| t.as_str())
}

/// Panics unless the document lists `status` with `content_type` for `method` on `path`. Paths and methods the
/// document does not have (a test's deliberate bad route) are not part of the contract.
pub fn check(method: &Method, path: &str, status: StatusCode, content_type: Option<&str>) {
    let path = path.split('?').next().unwrap_or(path);
    let Some(template) = template(path) else {
        return;
    };
    let operation = &document()["paths"][template][method.as_str().to_ascii_lowercase()];
    if operation.is_null() {
        return;
    }
    let listed = &operation["responses"][status.as_str()];
    assert!(
        listed.is_object(),
        "the OpenAPI document does not list {status} for {method} {template}"
    );
    let Some(content_type) = content_type else {
        return;
    };
    let media = content_type.split(';').next().unwrap_or_default().trim();
    assert!(
        listed["content"][media].is_object(),
        "the OpenAPI document does not list {media} for {status} of {method} {template}"
    );
}
