//! Paygent's HTTP API: thin axum handlers over the engine. Errors are mapped in [`error`], callers are
//! authenticated in [`extract`], and the OpenAPI document is generated from the handlers themselves.

pub mod error;
pub mod extract;
pub mod http;
pub mod rate;

use axum::extract::DefaultBodyLimit;
use axum::http::{Request, StatusCode};
use axum::routing::get;
use axum::{Extension, Router};
use error::ApiError;
pub use http::events::LiveOptions;
use paygent_engine::Paygent;
pub use rate::RateLimit;
use std::time::Duration;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;

/// The largest request body accepted. Payment and decision bodies are a few hundred bytes.
pub const BODY_LIMIT: usize = 64 * 1024;
/// A request that takes longer than this is cut off.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(OpenApi)]
#[openapi(
    info(title = "Paygent", description = "The control plane between AI agents and money."),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    components(schemas(error::Problem))
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        openapi
            .components
            .get_or_insert_default()
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
    }
}

/// The API's routes under `/api/v1`, with the OpenAPI document describing them.
fn api() -> (Router<Paygent>, utoipa::openapi::OpenApi) {
    let v1 = OpenApiRouter::new()
        .merge(http::keys::router())
        .merge(http::sessions::router())
        .merge(http::policies::router())
        .merge(http::wallets::router())
        .merge(http::payments::router())
        .merge(http::approvals::router())
        .merge(http::audit::router())
        .merge(http::kill::router())
        .merge(http::executions::router());
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .nest("/api/v1", v1)
        .split_for_parts()
}

/// Settings of the HTTP side.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub live: LiveOptions,
    pub rate_limit: RateLimit,
}

/// The whole application with default settings, ready to serve.
pub fn app(paygent: Paygent) -> Router {
    app_with(paygent, Options::default())
}

/// The whole application, with its settings.
pub fn app_with(paygent: Paygent, options: Options) -> Router {
    let (api, openapi) = api();
    let openapi_json = serde_json::to_string(&openapi).expect("the OpenAPI document serializes");
    api.route(
        "/api/v1/openapi.json",
        get(move || async move { ([("content-type", "application/json")], openapi_json) }),
    )
    .merge(http::health::router())
    .merge(http::events::router())
    .merge(http::web::router())
    .fallback(|| async { ApiError::NoRoute })
    .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
    .layer(DefaultBodyLimit::max(BODY_LIMIT))
    .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, REQUEST_TIMEOUT))
    // Spans carry the path only: query strings may hold tokens.
    .layer(TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
        tracing::info_span!("http", method = %req.method(), path = %req.uri().path())
    }))
    .layer(Extension(options.live))
    .layer(Extension(std::sync::Arc::new(rate::Limiter::new(options.rate_limit))))
    .with_state(paygent)
}

/// Serves the application on `listener` until `shutdown` resolves, then finishes in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    // Small frames (WebSocket events, decisions) must not wait on Nagle's algorithm.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "TCP_NODELAY not set");
        }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
