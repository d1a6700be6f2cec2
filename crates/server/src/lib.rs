//! Paygent's HTTP API: thin axum handlers over the engine. Errors are mapped in [`error`], callers are
//! authenticated in [`extract`], and the OpenAPI document is generated from the handlers themselves.

pub mod error;
pub mod extract;
pub mod http;
pub mod mcp;
pub mod rate;

use axum::extract::DefaultBodyLimit;
use axum::http::Request;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use error::ApiError;
pub use http::events::LiveOptions;
use paygent_engine::Paygent;
pub use rate::RateLimit;
use std::time::Duration;
use tower_http::trace::TraceLayer;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;

/// The largest request body accepted. Payment and decision bodies are a few hundred bytes.
pub const BODY_LIMIT: usize = 64 * 1024;
/// A policy's body may hold its payee lists (up to 1,000 payees each).
pub const POLICY_BODY_LIMIT: usize = 1024 * 1024;
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
        .merge(http::standing::router())
        .merge(http::spend::router())
        .merge(http::audit::router())
        .merge(http::kill::router())
        .merge(http::executions::router())
        .merge(http::events::router())
        .merge(http::webhooks::router())
        .merge(http::slack::router());
    let (router, mut openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .nest("/api/v1", v1)
        .split_for_parts();
    ProblemResponses.modify(&mut openapi);
    (router, openapi)
}

/// What any operation may answer whatever its handler does: no valid key, the time limit, the key's rate limit,
/// a fault, the database away.
const EVERY_OPERATION: [(&str, &str); 5] = [
    ("401", "no valid key: missing, unknown, revoked or expired"),
    (
        "408",
        "the request took too long; retry a payment with the same idempotency key",
    ),
    ("429", "rate limited (with `Retry-After`)"),
    ("500", "internal error"),
    (
        "503",
        "the database, a chain or a paid resource is unavailable; retry shortly",
    ),
];
/// What reading a request body may answer.
const WITH_A_BODY: [(&str, &str); 3] = [
    ("400", "the body is not the JSON this operation takes"),
    ("413", "the body is larger than 64 KiB"),
    ("415", "the body is not `application/json`"),
];

/// What reading a path or query parameter may answer.
const WITH_PARAMETERS: [(&str, &str); 1] = [("400", "a parameter is malformed")];
/// What naming a thing by its id may answer: it does not exist, or not for this key.
const BY_ID: [(&str, &str); 1] = [("404", "no such thing that this key may reach")];

/// Completes every operation's responses with the statuses it shares with all others, and publishes problem
/// documents as what they are on the wire: `application/problem+json`.
struct ProblemResponses;

impl Modify for ProblemResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for op in operations.into_iter().flatten() {
                let body = op.request_body.is_some();
                let params = op.parameters.as_ref().is_some_and(|p| !p.is_empty());
                let by_id = op.parameters.iter().flatten().any(|p| {
                    use utoipa::openapi::{RefOr, path::ParameterIn};
                    matches!(p, RefOr::T(p) if matches!(p.parameter_in, ParameterIn::Path))
                });
                let shared = EVERY_OPERATION
                    .iter()
                    .chain(WITH_A_BODY.iter().filter(|_| body))
                    .chain(WITH_PARAMETERS.iter().filter(|_| params))
                    .chain(BY_ID.iter().filter(|_| by_id));
                for (status, why) in shared {
                    let problem = utoipa::openapi::ResponseBuilder::new()
                        .description(*why)
                        .content(
                            "application/json",
                            utoipa::openapi::Content::new(Some(
                                utoipa::openapi::Ref::from_schema_name("Problem"),
                            )),
                        )
                        .build();
                    op.responses
                        .responses
                        .entry((*status).to_owned())
                        .or_insert(problem.into());
                }
                op.responses
                    .responses
                    .values_mut()
                    .for_each(as_problem_json);
            }
        }
    }
}

/// A response whose body is a `Problem`, retyped to the media type the server sends it with.
fn as_problem_json(response: &mut utoipa::openapi::RefOr<utoipa::openapi::Response>) {
    use utoipa::openapi::RefOr;
    let RefOr::T(response) = response else { return };
    let is_problem = response.content.get("application/json").is_some_and(|c| {
        matches!(c, RefOr::T(c) if matches!(&c.schema, Some(RefOr::Ref(r)) if r.ref_location.ends_with("/Problem")))
    });
    if is_problem && let Some(content) = response.content.shift_remove("application/json") {
        response
            .content
            .insert("application/problem+json".to_owned(), content);
    }
}

/// Settings of the HTTP side.
#[derive(Debug, Clone)]
pub struct Options {
    pub live: LiveOptions,
    pub rate_limit: RateLimit,
    /// How long a request may take before it is answered 408.
    pub request_timeout: Duration,
    /// Whether `GET /metrics` answers loopback without a key (otherwise only an admin key reads it).
    pub keyless_loopback_metrics: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            live: LiveOptions::default(),
            rate_limit: RateLimit::default(),
            request_timeout: REQUEST_TIMEOUT,
            keyless_loopback_metrics: true,
        }
    }
}

/// Answers 408 with a problem document once a request takes longer than `limit`. Work it started that must end
/// (a payment on a rail) goes on in its own task, so a retry with the same idempotency key gets its outcome.
async fn cut_off(limit: Duration, req: Request<axum::body::Body>, next: Next) -> Response {
    tokio::time::timeout(limit, next.run(req))
        .await
        .unwrap_or_else(|_| ApiError::TimedOut(limit.as_secs_f64()).into_response())
}

/// The published OpenAPI document, as `/api/v1/openapi.json` serves it.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api().1
}

/// The whole application with default settings, ready to serve.
pub fn app(paygent: Paygent) -> Router {
    app_with(paygent, Options::default())
}

/// The whole application, with its settings.
pub fn app_with(paygent: Paygent, options: Options) -> Router {
    // A payment is answered before its request would be cut off: in flight, if its rail has not finished.
    let paygent = paygent.answering_within(options.request_timeout.mul_f64(0.75));
    let (api, openapi) = api();
    let openapi_json = serde_json::to_string(&openapi).expect("the OpenAPI document serializes");
    api.route(
        "/api/v1/openapi.json",
        get(move || async move { ([("content-type", "application/json")], openapi_json) }),
    )
    .merge(http::health::router())
    .merge(http::metrics::router())
    .merge(http::web::router())
    .merge(http::decide::router())
    .nest_service(
        "/mcp",
        tower::ServiceBuilder::new()
            .layer(middleware::from_fn_with_state(paygent.clone(), mcp::authenticate))
            .service(mcp::service(paygent.clone())),
    )
    .fallback(|| async { ApiError::NoRoute })
    .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
    .layer(DefaultBodyLimit::max(BODY_LIMIT))
    .layer(middleware::from_fn_with_state(
        paygent.clone(),
        error::count_database_errors,
    ))
    .layer(middleware::from_fn(move |req, next| {
        cut_off(options.request_timeout, req, next)
    }))
    // Spans carry the path only: query strings may hold tokens.
    .layer(TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
        tracing::info_span!("http", method = %req.method(), path = %req.uri().path())
    }))
    .layer(Extension(options.live))
    .layer(Extension(http::metrics::KeylessLoopback(
        options.keyless_loopback_metrics,
    )))
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
    // Peers' addresses let loopback scrape `/metrics` without a key.
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
