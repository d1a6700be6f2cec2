//! One module per resource, each with its own routes.

pub mod approvals;
pub mod audit;
pub mod decide;
pub mod events;
pub mod executions;
pub mod health;
pub mod keys;
pub mod kill;
pub mod metrics;
pub mod payments;
pub mod policies;
pub mod sessions;
pub mod slack;
pub mod spend;
pub mod standing;
pub mod wallets;
pub mod web;
pub mod webhooks;

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
    page_at(uri, body, "after", next)
}

/// [`page`] for a list whose cursor is the query parameter `cursor`.
pub fn page_at(
    uri: &axum::http::Uri,
    body: impl serde::Serialize,
    cursor: &str,
    next: Option<String>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut response = axum::Json(body).into_response();
    if let Some(last) = next {
        let at = format!("{cursor}=");
        let mut query: Vec<&str> = uri
            .query()
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty() && !p.starts_with(&at))
            .collect();
        let next = format!("{at}{last}");
        query.push(&next);
        let link = format!("<{}?{}>; rel=\"next\"", uri.path(), query.join("&"));
        if let Ok(value) = axum::http::HeaderValue::from_str(&link) {
            response
                .headers_mut()
                .insert(axum::http::header::LINK, value);
        }
    }
    response
}

/// The query of a list that may be narrowed to one session, read a page at a time by id.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SessionPageQuery {
    session_id: Option<uuid::Uuid>,
    /// The last id of the previous page (as the `Link` header gives it).
    after: Option<uuid::Uuid>,
    /// At most 500; 100 by default.
    limit: Option<i64>,
}

impl SessionPageQuery {
    /// Reads the page with `list` and answers it with its `Link` to the next.
    pub async fn answer<T: serde::Serialize>(
        &self,
        uri: &axum::http::Uri,
        list: impl AsyncFnOnce(paygent_engine::Page) -> ApiResult<Vec<T>>,
        id: impl Fn(&T) -> uuid::Uuid,
    ) -> ApiResult<axum::response::Response> {
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_PAGE);
        let asked = paygent_engine::Page {
            session_id: self.session_id,
            after: self.after,
            limit,
        };
        let items = list(asked).await?;
        let next = next_after(&items, limit, |x| id(x).to_string());
        Ok(page(uri, items, next))
    }
}

/// The cursor of the next page: the last item's, when the page is full.
pub fn next_after<T>(items: &[T], limit: i64, cursor: impl Fn(&T) -> String) -> Option<String> {
    (items.len() as i64 >= limit)
        .then(|| items.last().map(cursor))
        .flatten()
}
