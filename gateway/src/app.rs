//! The whole HTTP application: the API's routes ([`crate::routes::api`]) inside the edge's
//! limits ([`crate::limits`]), next to the operational routes (health, readiness, metrics, the
//! OpenAPI document and its docs page, see [`crate::openapi`]), and every request inside
//! [`request_context`].
//!
//! Layers, outermost first: request context (id, deadline, log line, metrics) → CORS → for the
//! API only: rate limits → load shedding → body size limit → the route. (Axum applies a router's
//! layers to each route, after routing, so the matched route pattern is known to all of them.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, MatchedPath, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse as _, Response};
use axum::routing::get;
use axum::{Router, middleware};
use serde_json::json;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tower::ServiceBuilder;
use tracing::Instrument as _;
use twtr_common::{ErrorCode, context, metrics};

use crate::adaptive::{ConcurrencyLimitLayer, Limiter};
use crate::error::ApiError;
use crate::limits::{self, EdgeLimits, RateLimiter};
use crate::routes;
use crate::state::AppState;
use crate::{openapi, upstream};

const READINESS_DEADLINE: Duration = Duration::from_secs(1);

/// How long past its deadline a request may run before it is dropped: the work that honours the
/// deadline (RPCs, reading the body) answers at it, with its own, more precise error.
const DEADLINE_GRACE: Duration = Duration::from_secs(1);

/// The application, with its rate limiters (which the caller keeps trimmed, see
/// [`limits::forget_idle_keys`]).
pub fn router(
    state: AppState,
    limits: &EdgeLimits,
    rate_limiter: Arc<RateLimiter>,
    serve_metrics: bool,
) -> Router {
    let (api, document) = openapi::split(routes::api());
    let document = Arc::new(document);
    let api = api.layer(DefaultBodyLimit::max(limits.body_limit));
    let api = shed_load(api, Limiter::new(&limits.concurrency)).layer(
        middleware::from_fn_with_state(rate_limiter, limits::rate_limit),
    );
    let mut app = Router::new()
        .merge(api)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/health/details", get(health_details))
        .route(
            "/openapi.json",
            get(move || async move { openapi::json(&document) }),
        )
        .route("/docs", get(openapi::docs_page))
        .route("/docs/swagger-ui-bundle.js", get(openapi::swagger_ui_js))
        .route("/docs/swagger-ui.css", get(openapi::swagger_ui_css))
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async { crate::error::method_not_allowed() });
    if serve_metrics {
        app = app.route("/metrics", get(metrics::scrape));
    }
    let mut app = app.with_state(state);
    if let Some(cors) = limits::cors(&limits.cors_origins) {
        app = app.layer(cors);
    }
    app.layer(middleware::from_fn_with_state(
        limits.request_timeout,
        request_context,
    ))
}

/// Puts `limiter` in front of `routes`: a request over its limit is answered 503 at once, with
/// `Retry-After`, in the API's error shape.
fn shed_load<S>(routes: Router<S>, limiter: Arc<Limiter>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    routes.layer(
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(limits::overloaded))
            .layer(ConcurrencyLimitLayer::new(limiter)),
    )
}

/// Gives every request an id (the caller's `x-request-id` when it is safe, else a fresh one)
/// and a deadline, runs it with both current (so every RPC and event it causes carries the id,
/// every RPC what is left of the deadline, and reading the body the deadline itself), echoes
/// the id in the response, and logs and counts one line per request.
///
/// The deadline holds for the whole request: whatever is still running a moment after it (the
/// RPCs and the body read answer at the deadline themselves) is dropped, its in-flight slot
/// freed, and answered 504. A path and query over [`limits::MAX_URI_BYTES`] is a 414.
async fn request_context(
    State(timeout): State<Duration>,
    request: axum::extract::Request,
    next: middleware::Next,
) -> Response {
    let incoming = request
        .headers()
        .get(context::REQUEST_ID)
        .and_then(|v| v.to_str().ok());
    let id = context::accept(incoming);
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    // The route's pattern, not the path: bounded label values.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|matched| matched.as_str().to_owned());
    let span = tracing::info_span!(
        "http", %method, %path, request_id = %id, trace_id = tracing::field::Empty
    );
    context::continue_trace(&span, &context::Headers(request.headers()));
    let started = Instant::now();
    let mut response = if limits::uri_too_long(request.uri()) {
        ApiError::new(
            ErrorCode::UriTooLong,
            format!(
                "the path and query are over {} bytes",
                limits::MAX_URI_BYTES
            ),
        )
        .into_response()
    } else {
        let work = upstream::scope(timeout, next.run(request));
        let bounded = tokio::time::timeout(timeout + DEADLINE_GRACE, work);
        context::scope(id.clone(), bounded.instrument(span.clone()))
            .await
            .unwrap_or_else(|_| {
                ApiError::new(ErrorCode::DeadlineExceeded, "the request took too long")
                    .into_response()
            })
    };
    let status = response.status().as_u16();
    metrics::http_request(route.as_deref(), &method, status, started.elapsed());
    span.in_scope(|| {
        tracing::info!(
            status,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "request served"
        );
    });
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(context::REQUEST_ID, value);
    }
    response
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready when the gateway can route: it has addresses for every service. Whether a service
/// answers is not the gateway's readiness: a service that cannot be reached makes the routes
/// that need it answer 503, and the others go on (see `/health/details` for the services'
/// health, the event broker's included).
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    let unroutable: Vec<&str> = state
        .up()
        .health
        .iter()
        .filter(|(_, _, routable)| !routable.is_routable())
        .map(|(name, _, _)| *name)
        .collect();
    if unroutable.is_empty() {
        return (StatusCode::OK, Json(json!({ "status": "ready" })));
    }
    let message = format!("no address for: {}", unroutable.join(", "));
    let body = json!({ "error": { "code": "unavailable", "message": message } });
    (StatusCode::SERVICE_UNAVAILABLE, Json(body))
}

/// For humans, alerts and scripts that wait for a whole mesh: per service, whether the gateway
/// can route to it, its readiness (gRPC health `""`: it answers and its store does) and its
/// event broker's state (`twtr.events`), each `SERVING`, `NOT_SERVING` or `UNREACHABLE`. 200
/// when everything is `SERVING`, else 503 with the same body: something is degraded. Never a
/// load balancer's check (see [`readyz`]).
async fn health_details(State(state): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    let checks: Vec<_> = state
        .up()
        .health
        .iter()
        .map(|(name, client, routable)| {
            let (client, routable) = (client.clone(), routable.is_routable());
            let check = tokio::spawn(async move {
                let (ready, events) = tokio::join!(
                    check(client.clone(), ""),
                    check(client, twtr_common::grpc::EVENTS_HEALTH)
                );
                json!({ "routable": routable, "ready": ready, "events": events })
            });
            (*name, check)
        })
        .collect();
    let mut services = serde_json::Map::new();
    let mut healthy = true;
    for (name, check) in checks {
        let detail = check.await.unwrap_or_else(
            |_| json!({ "routable": false, "ready": "UNREACHABLE", "events": "UNREACHABLE" }),
        );
        healthy &= detail["routable"] == true
            && detail["ready"] == "SERVING"
            && detail["events"] == "SERVING";
        services.insert(name.to_owned(), detail);
    }
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body =
        json!({ "status": if healthy { "healthy" } else { "degraded" }, "services": services });
    (status, Json(body))
}

/// One health entry of a service, as a word.
async fn check(
    mut client: tonic_health::pb::health_client::HealthClient<tonic::transport::Channel>,
    service: &str,
) -> &'static str {
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: service.to_owned(),
    });
    request.set_timeout(READINESS_DEADLINE);
    match client.check(request).await.map(|r| r.into_inner().status()) {
        Ok(ServingStatus::Serving) => "SERVING",
        Ok(_) => "NOT_SERVING",
        Err(_) => "UNREACHABLE",
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use axum::body::{Body, Bytes};
    use axum::http::Request;
    use axum::http::header::{CONTENT_TYPE, RETRY_AFTER};
    use tokio::sync::Notify;
    use tower::ServiceExt as _;

    use super::*;
    use crate::adaptive::ConcurrencyLimits;

    fn request(path: &str) -> Request<Body> {
        Request::get(path).body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn a_request_over_the_limit_is_shed_at_once_with_503_in_the_api_error_shape() {
        let (entered, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let hold = {
            let (entered, release) = (Arc::clone(&entered), Arc::clone(&release));
            move || async move {
                entered.notify_one();
                release.notified().await;
                "done"
            }
        };
        let limiter = Limiter::new(&ConcurrencyLimits::fixed(1));
        let app = shed_load(
            Router::new().route("/hold", get(hold)),
            Arc::clone(&limiter),
        );

        let held = tokio::spawn(app.clone().oneshot(request("/hold")));
        entered.notified().await;
        let shed = app.clone().oneshot(request("/hold")).await.unwrap();
        assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(shed.headers()[RETRY_AFTER], "1");
        let body = axum::body::to_bytes(shed.into_body(), usize::MAX)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["code"], "unavailable", "{body}");

        // The held request finishes normally, and its slot is free again.
        release.notify_one();
        assert_eq!(held.await.unwrap().unwrap().status(), StatusCode::OK);
        assert_eq!(limiter.in_flight(), 0);
        release.notify_one();
        let next = app.oneshot(request("/hold")).await.unwrap();
        assert_eq!(next.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn a_streaming_response_holds_no_slot_while_its_body_streams() {
        let stream = || async {
            let events = futures_util::stream::pending::<Result<Bytes, Infallible>>();
            (
                [(CONTENT_TYPE, "text/event-stream")],
                Body::from_stream(events),
            )
        };
        let limiter = Limiter::new(&ConcurrencyLimits::fixed(1));
        let app = shed_load(
            Router::new().route("/stream", get(stream)),
            Arc::clone(&limiter),
        );
        let open = app.clone().oneshot(request("/stream")).await.unwrap();
        assert_eq!(open.status(), StatusCode::OK);
        assert_eq!(limiter.in_flight(), 0, "the body is still open");
        let another = app.oneshot(request("/stream")).await.unwrap();
        assert_eq!(another.status(), StatusCode::OK);
        drop(open);
    }
}
