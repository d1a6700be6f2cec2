//! One module per resource, each with its own routes.

pub mod approvals;
pub mod audit;
pub mod events;
pub mod executions;
pub mod health;
pub mod keys;
pub mod kill;
pub mod payments;
pub mod policies;
pub mod sessions;
pub mod wallets;
pub mod web;

use crate::error::ApiError;

/// What every handler returns.
pub type ApiResult<T> = Result<T, ApiError>;

/// How many items a page of a list holds unless the caller asks for more (up to [`MAX_PAGE`]).
pub const DEFAULT_LIMIT: i64 = 100;
pub use paygent_engine::MAX_PAGE;

/// A page of a list as JSON and, while the page came back full (`next` is then its last id or sequence number),
/// a `Link: <...?after=<next>>; rel="next"` header with the same query that gives the next one.
pub fn page(
    uri: &axum::http::Uri,
    body: impl serde::Serialize,
    next: Option<String>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut response = axum::Json(body).into_response();
    if let Some(last) = next {
        let mut query: Vec<&str> = uri
            .query()
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty() && !p.starts_with("after="))
            .collect();
        let after = format!("after={last}");
        query.push(&after);
        let link = format!("<{}?{}>; rel=\"next\"", uri.path(), query.join("&"));
        if let Ok(value) = axum::http::HeaderValue::from_str(&link) {
            response
                .headers_mut()
                .insert(axum::http::header::LINK, value);
        }
    }
    response
}

/// The cursor of the next page: the last item's, when the page is full.
pub fn next_after<T>(items: &[T], limit: i64, cursor: impl Fn(&T) -> String) -> Option<String> {
    (items.len() as i64 >= limit)
        .then(|| items.last().map(cursor))
        .flatten()
}
