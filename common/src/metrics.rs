//! Prometheus metrics, one registry per process (the `metrics` facade with the Prometheus
//! exporter's recorder). The gateway serves them at `/metrics`; any process serves them on its
//! own listener with `TWTR_METRICS_ADDR` ([`serve`]). Every name starts with `twtr_`:
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `twtr_http_requests_total`, `twtr_http_request_duration_seconds` | counter, histogram | `route` (the matched pattern), `method`, `status` (counter only) |
//! | `twtr_grpc_server_requests_total`, `twtr_grpc_server_duration_seconds` | counter, histogram | `method` (`/package.Service/Method`), `code` (counter only) |
//! | `twtr_http_concurrency_limit` | gauge | none: API requests the gateway serves at once now (adaptive: it follows latency) |
//! | `twtr_http_requests_shed_total` | counter | none: API requests refused at once (503) because the concurrency limit was reached |
//! | `twtr_events_published_total` | counter | `type` (routing key) |
//! | `twtr_events_consumed_total` | counter | `queue`, `type`, `outcome` (`ok`, `retry`, `dead_letter`) |
//! | `twtr_events_dead_lettered_total` | counter | `queue` |
//! | `twtr_event_delivery_lag_seconds` | histogram | `queue`: from an event's occurrence to its handling |
//! | `twtr_outbox_depth` | gauge | `service`: events stored and not yet published (sampled, capped at 10,000) |
//! | `twtr_queue_depth`, `twtr_dead_letter_depth` | gauge | `queue`: messages not yet handed to a consumer (ready or waiting to retry: the consumers' lag), and dead-lettered ones (sampled by the consuming process) |
//!
//! Label values are bounded, whatever callers send: a route is a pattern the gateway serves
//! (`/v1/tweets/{id}`), an HTTP method a standard one, a gRPC method one the server registered;
//! anything else (an unmatched path, a made-up method, a call refused before routing) is
//! `unknown`.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::codegen::http;

/// Latency buckets, in seconds: from a cache hit to a request about to hit its deadline.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Event lag buckets, in seconds: from "at once" to "the consumer was down for a while".
const LAG_BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 3600.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs this process's recorder (once; later calls return the same handle). `None` when
/// another recorder was installed first. Call within a tokio runtime: it starts the recorder's
/// upkeep.
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let installed = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("duration_seconds".into()),
                    &LATENCY_BUCKETS,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("lag_seconds".into()), &LAG_BUCKETS)
                })
                .and_then(PrometheusBuilder::install_recorder);
            match installed {
                Ok(handle) => {
                    describe();
                    let upkeep = handle.clone();
                    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                        runtime.spawn(async move {
                            let mut every = tokio::time::interval(Duration::from_secs(5));
                            loop {
                                every.tick().await;
                                upkeep.run_upkeep();
                            }
                        });
                    }
                    Some(handle)
                }
                Err(err) => {
                    tracing::warn!(error = %err, "metrics recorder not installed");
                    None
                }
            }
        })
        .as_ref()
}

/// Everything recorded so far, in the Prometheus text format.
pub fn render() -> String {
    install().map(PrometheusHandle::render).unwrap_or_default()
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "twtr_http_requests_total",
        "HTTP requests answered by the gateway"
    );
    describe_histogram!(
        "twtr_http_request_duration_seconds",
        Unit::Seconds,
        "time to answer an HTTP request"
    );
    describe_counter!("twtr_grpc_server_requests_total", "gRPC calls answered");
    describe_gauge!(
        "twtr_live_feed_streams",
        "live feeds (GET /v1/feed/stream) the gateway serves now"
    );
    describe_gauge!(
        "twtr_http_concurrency_limit",
        "API requests the gateway serves at once now (adaptive: follows latency)"
    );
    describe_counter!(
        "twtr_http_requests_shed_total",
        "API requests refused at once (503) because the concurrency limit was reached"
    );
    describe_histogram!(
        "twtr_grpc_server_duration_seconds",
        Unit::Seconds,
        "time to answer a gRPC call"
    );
    describe_counter!(
        "twtr_events_published_total",
        "events the outbox relay published (confirmed by the bus)"
    );
    describe_counter!("twtr_events_consumed_total", "event deliveries handled");
    describe_counter!(
        "twtr_events_dead_lettered_total",
        "events given up on and moved to a dead-letter queue"
    );
    describe_histogram!(
        "twtr_event_delivery_lag_seconds",
        Unit::Seconds,
        "time from an event's occurrence to its handling"
    );
    describe_gauge!(
        "twtr_outbox_depth",
        "events stored in the outbox and not yet published (capped at 10000)"
    );
    describe_gauge!(
        "twtr_queue_depth",
        "messages in a consumer queue not yet handed to a consumer (ready or waiting to retry)"
    );
    describe_gauge!("twtr_dead_letter_depth", "messages in a dead-letter queue");
    describe_gauge!(
        "twtr_dead_letter_oldest_age_seconds",
        Unit::Seconds,
        "how long the oldest message of a dead-letter queue has been there (0 when empty)"
    );
    describe_gauge!(
        "twtr_consumer_paused",
        "1 while a consumer takes no deliveries because its own store does not answer"
    );
    describe_gauge!(
        "twtr_dependency_up",
        "1 while a dependency of this process answers (the event broker, the store), else 0"
    );
}

/// Serves `GET /metrics` on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    install();
    let addr = listener
        .local_addr()
        .context("failed to read the metrics listen address")?;
    let app = axum::Router::new().route("/metrics", axum::routing::get(scrape));
    tracing::info!(%addr, "metrics server listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .context("metrics server failed")
}

/// The `/metrics` answer.
pub async fn scrape() -> impl axum::response::IntoResponse {
    (
        [(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render(),
    )
}

/// One HTTP request answered by the gateway. `route` is the pattern the router matched, `None`
/// when none did: that, and a method outside the standard ones, is labelled `unknown`.
pub fn http_request(route: Option<&str>, method: &http::Method, status: u16, elapsed: Duration) {
    let route = route.unwrap_or("unknown").to_owned();
    let method = http_method_label(method).to_owned();
    counter!("twtr_http_requests_total", "route" => route.clone(), "method" => method.clone(), "status" => status.to_string())
        .increment(1);
    histogram!("twtr_http_request_duration_seconds", "route" => route, "method" => method)
        .record(elapsed.as_secs_f64());
}

/// A bounded label for an HTTP method: the standard ones by name, any extension method (which
/// a caller may make up freely) `unknown`.
fn http_method_label(method: &http::Method) -> &'static str {
    const STANDARD: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE",
    ];
    STANDARD
        .into_iter()
        .find(|known| *known == method.as_str())
        .unwrap_or("unknown")
}

/// Events the relay published, by routing key.
pub fn events_published(event_type: &str, count: u64) {
    counter!("twtr_events_published_total", "type" => event_type.to_owned()).increment(count);
}

/// How a consumer settled a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Retry,
    DeadLetter,
    /// Handed back untouched: the consumer's own store was down (see `bus::consume`).
    Requeued,
}

/// One delivery handled by a consumer; `occurred_at_ms` (the event's time) gives its lag.
pub fn event_consumed(queue: &str, event_type: &str, outcome: Outcome, occurred_at_ms: i64) {
    let outcome_label = match outcome {
        Outcome::Ok => "ok",
        Outcome::Retry => "retry",
        Outcome::DeadLetter => "dead_letter",
        Outcome::Requeued => "requeued",
    };
    counter!(
        "twtr_events_consumed_total",
        "queue" => queue.to_owned(), "type" => event_type.to_owned(), "outcome" => outcome_label
    )
    .increment(1);
    if outcome == Outcome::DeadLetter {
        counter!("twtr_events_dead_lettered_total", "queue" => queue.to_owned()).increment(1);
    }
    if outcome == Outcome::Ok && occurred_at_ms > 0 {
        let lag_ms = crate::clock::now_millis()
            .saturating_sub(occurred_at_ms)
            .max(0);
        histogram!("twtr_event_delivery_lag_seconds", "queue" => queue.to_owned())
            .record(lag_ms as f64 / 1000.0);
    }
}

/// Live feeds (`GET /v1/feed/stream`) this gateway serves now.
pub fn live_streams(open: usize) {
    gauge!("twtr_live_feed_streams").set(open as f64);
}

/// The gateway's concurrency limit, now.
pub fn http_concurrency_limit(limit: usize) {
    gauge!("twtr_http_concurrency_limit").set(limit as f64);
}

/// One API request refused at once over the concurrency limit.
pub fn http_shed() {
    counter!("twtr_http_requests_shed_total").increment(1);
}

/// A sample of a service's outbox depth.
pub fn outbox_depth(service: &str, depth: usize) {
    gauge!("twtr_outbox_depth", "service" => service.to_owned()).set(depth as f64);
}

/// A sample of a consumer queue's depths.
pub fn queue_depths(queue: &str, waiting: u64, dead: u64) {
    gauge!("twtr_queue_depth", "queue" => queue.to_owned()).set(waiting as f64);
    gauge!("twtr_dead_letter_depth", "queue" => queue.to_owned()).set(dead as f64);
}

/// A sample of the age of a dead-letter queue's oldest message (zero when it is empty).
pub fn oldest_dead_letter(queue: &str, age: Duration) {
    gauge!("twtr_dead_letter_oldest_age_seconds", "queue" => queue.to_owned())
        .set(age.as_secs_f64());
}

/// Whether `queue`'s consumer in this process is paused (its store does not answer).
pub fn consumer_paused(queue: &str, paused: bool) {
    gauge!("twtr_consumer_paused", "queue" => queue.to_owned()).set(if paused { 1.0 } else { 0.0 });
}

/// Whether `dependency` of this process (`event_broker`, `<service>_store`) answers right now.
pub fn dependency_up(dependency: &str, up: bool) {
    gauge!("twtr_dependency_up", "dependency" => dependency.to_owned()).set(if up {
        1.0
    } else {
        0.0
    });
}

/// Tower layer for gRPC servers: counts every call by method and status code, and times it. A
/// call dropped before it answered (its deadline passed, or the caller went away) counts as
/// `Cancelled`.
///
/// The `method` label is one of the methods this server registered (see [`GrpcMethods`]), or
/// `unknown`: a call refused before routing (a bad token is refused by an inner layer, whatever
/// its path) must not turn a caller's made-up paths into new series.
#[derive(Debug, Clone)]
pub struct GrpcMetricsLayer {
    known: Arc<GrpcMethods>,
}

impl GrpcMetricsLayer {
    pub fn new(known: GrpcMethods) -> Self {
        Self {
            known: Arc::new(known),
        }
    }
}

/// The method paths (`/package.Service/Method`) a gRPC server serves: the methods of the named
/// services, read from the twtr descriptor set and from the standard health and reflection
/// services.
#[derive(Debug, Clone, Default)]
pub struct GrpcMethods(HashSet<String>);

/// The standard services every twtr server adds beside its own, with their methods.
const STANDARD_METHODS: [&str; 4] = [
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

impl GrpcMethods {
    /// The methods of `services` (full names, `twtr.tweets.v1.TweetsService`), plus health and
    /// reflection.
    pub fn of(services: &[&str]) -> Self {
        use prost::Message as _;
        let mut known: HashSet<String> = STANDARD_METHODS.iter().map(|m| (*m).to_owned()).collect();
        // The descriptor set is compiled in by the proto crate's build script; it decodes.
        let files = prost_types::FileDescriptorSet::decode(twtr_proto::FILE_DESCRIPTOR_SET)
            .map(|set| set.file)
            .unwrap_or_default();
        for file in files {
            let package = file.package();
            for service in &file.service {
                let full = format!("{package}.{}", service.name());
                if services.contains(&full.as_str()) {
                    known.extend(
                        service
                            .method
                            .iter()
                            .map(|method| format!("/{full}/{}", method.name())),
                    );
                }
            }
        }
        Self(known)
    }

    /// Exactly `paths`, for tests.
    #[cfg(test)]
    fn exactly(paths: &[&str]) -> Self {
        Self(paths.iter().map(|p| (*p).to_owned()).collect())
    }

    /// The label for a call to `path`: the path if it is served here, else `unknown`.
    pub fn label(&self, path: &str) -> String {
        if self.0.contains(path) {
            path.to_owned()
        } else {
            "unknown".to_owned()
        }
    }
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics {
            inner,
            known: Arc::clone(&self.known),
        }
    }
}

#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    known: Arc<GrpcMethods>,
}

/// Records a call when it ends, however it ends.
struct CallRecord {
    method: String,
    started: Instant,
    code: Option<tonic::Code>,
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        let code = self.code.unwrap_or(tonic::Code::Cancelled);
        let method = std::mem::take(&mut self.method);
        counter!("twtr_grpc_server_requests_total", "method" => method.clone(), "code" => format!("{code:?}"))
            .increment(1);
        histogram!("twtr_grpc_server_duration_seconds", "method" => method)
            .record(self.started.elapsed().as_secs_f64());
    }
}

impl<S, B, RB> tower::Service<http::Request<B>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let record = CallRecord {
            method: self.known.label(request.uri().path()),
            started: Instant::now(),
            code: None,
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            // Owns the whole record, so it is recorded when this future ends or is dropped.
            let mut record = record;
            let response = response.await;
            // A unary call's status is in the headers when it failed (a trailers-only
            // response) and absent when it succeeded (it comes in the trailers, as OK).
            record.code = Some(match &response {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or(tonic::Code::Ok, tonic::Code::from_i32),
                Err(_) => tonic::Code::Internal,
            });
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use tower::{Layer as _, ServiceExt as _};

    use super::*;

    fn answering(
        status: Option<tonic::Code>,
    ) -> impl tower::Service<
        http::Request<()>,
        Response = http::Response<()>,
        Error = std::convert::Infallible,
        Future = impl Future + Send + 'static,
    > + Clone {
        tower::service_fn(move |_: http::Request<()>| async move {
            let mut response = http::Response::new(());
            if let Some(code) = status {
                response
                    .headers_mut()
                    .insert("grpc-status", (code as i32).to_string().parse().unwrap());
            }
            Ok::<_, std::convert::Infallible>(response)
        })
    }

    fn call(path: &str) -> http::Request<()> {
        http::Request::builder().uri(path).body(()).unwrap()
    }

    fn layer() -> GrpcMetricsLayer {
        GrpcMetricsLayer::new(GrpcMethods::exactly(&[
            "/test.Metrics/Fine",
            "/test.Metrics/Missing",
            "/test.Metrics/Abandoned",
        ]))
    }

    #[tokio::test]
    async fn calls_are_counted_by_method_and_code() {
        install().expect("the recorder");
        layer()
            .layer(answering(None))
            .oneshot(call("/test.Metrics/Fine"))
            .await
            .unwrap();
        layer()
            .layer(answering(Some(tonic::Code::NotFound)))
            .oneshot(call("/test.Metrics/Missing"))
            .await
            .unwrap();
        layer()
            .layer(answering(Some(tonic::Code::Unimplemented)))
            .oneshot(call("/test.Metrics/random-garbage-1234"))
            .await
            .unwrap();
        let text = render();
        for expected in [
            r#"twtr_grpc_server_requests_total{method="/test.Metrics/Fine",code="Ok"} 1"#,
            r#"twtr_grpc_server_requests_total{method="/test.Metrics/Missing",code="NotFound"} 1"#,
            r#"code="Unimplemented""#,
            r#"twtr_grpc_server_duration_seconds_bucket{method="/test.Metrics/Fine",le="0.0005"}"#,
        ] {
            assert!(text.contains(expected), "{expected} in:\n{text}");
        }
        assert!(
            !text.contains("random-garbage"),
            "unknown methods are not labels"
        );
    }

    #[tokio::test]
    async fn a_call_dropped_before_it_answered_counts_as_cancelled() {
        install().expect("the recorder");
        let stuck = tower::service_fn(|_: http::Request<()>| async {
            std::future::pending::<()>().await;
            Ok::<_, std::convert::Infallible>(http::Response::new(()))
        });
        let call_future = layer()
            .layer(stuck)
            .oneshot(call("/test.Metrics/Abandoned"));
        let abandoned = tokio::time::timeout(Duration::from_millis(10), call_future).await;
        assert!(abandoned.is_err());
        let text = render();
        let expected = r#"twtr_grpc_server_requests_total{method="/test.Metrics/Abandoned",code="Cancelled"} 1"#;
        assert!(text.contains(expected), "{text}");
    }

    /// The security pass: three `POST /attacker/path-N` calls with a bad token (refused by the
    /// token layer, inside this one, before any routing) made three new series.
    #[tokio::test]
    async fn calls_refused_before_routing_add_no_series() {
        install().expect("the recorder");
        for n in 1..=3 {
            layer()
                .layer(answering(Some(tonic::Code::Unauthenticated)))
                .oneshot(call(&format!("/attacker/path-{n}")))
                .await
                .unwrap();
        }
        let text = render();
        assert!(!text.contains("attacker"), "{text}");
        assert!(
            text.contains(
                r#"twtr_grpc_server_requests_total{method="unknown",code="Unauthenticated"}"#
            ),
            "{text}"
        );
    }

    #[test]
    fn a_server_knows_its_own_methods_health_and_reflection() {
        let known = GrpcMethods::of(&["twtr.tweets.v1.TweetsService"]);
        for path in [
            "/twtr.tweets.v1.TweetsService/CreateTweet",
            "/twtr.tweets.v1.TweetsService/BatchGetTweets",
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        ] {
            assert_eq!(known.label(path), path);
        }
        for path in [
            "/twtr.users.v1.UsersService/UpdateUser",
            "/twtr.tweets.v1.TweetsService/Nope",
            "/attacker/path-1",
            "",
        ] {
            assert_eq!(known.label(path), "unknown", "{path}");
        }
        let with_admin =
            GrpcMethods::of(&["twtr.feeds.v1.FeedsService", "twtr.events.v1.DeadLetters"]);
        assert!(
            with_admin
                .0
                .iter()
                .any(|m| m.starts_with("/twtr.events.v1.DeadLetters/"))
        );
    }

    #[tokio::test]
    async fn unmatched_routes_and_made_up_http_methods_add_no_series() {
        install().expect("the recorder");
        for n in 1..=3 {
            let method = http::Method::from_bytes(format!("HAXX{n}").as_bytes()).unwrap();
            http_request(None, &method, 404, Duration::from_millis(1));
            http_request(
                Some("/test/metrics/{id}"),
                &method,
                405,
                Duration::from_millis(1),
            );
        }
        http_request(
            Some("/test/metrics/{id}"),
            &http::Method::PATCH,
            200,
            Duration::from_millis(1),
        );
        let text = render();
        assert!(!text.contains("HAXX"), "{text}");
        for expected in [
            r#"twtr_http_requests_total{route="unknown",method="unknown",status="404"} 3"#,
            r#"twtr_http_requests_total{route="/test/metrics/{id}",method="unknown",status="405"} 3"#,
            r#"twtr_http_requests_total{route="/test/metrics/{id}",method="PATCH",status="200"} 1"#,
        ] {
            assert!(text.contains(expected), "{expected} in:\n{text}");
        }
    }
}
