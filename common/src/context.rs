//! The request id: one id follows a request from the gateway through every service it calls
//! (gRPC metadata `x-request-id`) and every event it causes (the envelope's `headers`), and is
//! a field of every log line written on its behalf.
//!
//! Within a process it travels in a task-local, set by [`scope`]: the gateway's middleware, the
//! gRPC servers' [`RequestIdLayer`] and the event consumer each set it for the work they run,
//! so domain code never passes it around by hand.
//!
//! The trace context travels the same ways, as a W3C `traceparent`: [`continue_trace`] makes a
//! span continue the trace a caller or an event carries (and records its `trace_id` for the
//! logs), [`inject_trace`] writes the current span's context into outgoing metadata or headers.
//! It needs the OpenTelemetry layer of [`crate::telemetry::init`]; without it, both do nothing.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::{TraceContextExt as _, TraceId};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::codegen::http;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The metadata key and event header that carry the id.
pub const REQUEST_ID: &str = "x-request-id";
/// The W3C header (and metadata key, and event header) that carries the trace context.
pub const TRACEPARENT: &str = "traceparent";
const MAX_LEN: usize = 128;

tokio::task_local! {
    static CURRENT: String;
}

/// The request id of the work running now, if any.
pub fn current() -> Option<String> {
    CURRENT.try_with(Clone::clone).ok()
}

/// Runs `work` with `id` as the current request id.
pub async fn scope<F: Future>(id: String, work: F) -> F::Output {
    CURRENT.scope(id, work).await
}

/// A fresh id: 128 random bits in hex, the size of a W3C trace id.
pub fn new_id() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // No entropy source: fall back to something unique within this process.
        let now = crate::clock::now_millis().to_le_bytes();
        bytes[..8].copy_from_slice(&now);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The id a caller sent, if it is safe to log and forward (1 to 128 characters of
/// `A-Za-z0-9._-`); anything else is replaced by a fresh id.
pub fn accept(incoming: Option<&str>) -> String {
    match incoming {
        Some(id)
            if !id.is_empty()
                && id.len() <= MAX_LEN
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) =>
        {
            id.to_owned()
        }
        _ => new_id(),
    }
}

/// Makes `span` continue the trace whose context `carrier` holds (or start a new one), and
/// records the trace id in the span's `trace_id` field. Call it right after creating the span.
pub fn continue_trace(span: &tracing::Span, carrier: &dyn Extractor) {
    let parent = TraceContextPropagator::new().extract(carrier);
    // Fails only when the span is disabled or there is no OpenTelemetry layer: nothing to do.
    let _ = span.set_parent(parent);
    let trace_id = span.context().span().span_context().trace_id();
    if trace_id != TraceId::INVALID {
        span.record("trace_id", tracing::field::display(trace_id));
    }
}

/// Writes the current span's trace context into `carrier` (nothing when there is none).
pub fn inject_trace(carrier: &mut dyn Injector) {
    let context = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&context, carrier);
}

/// HTTP headers (or gRPC metadata, on the server side) as a trace-context carrier.
#[derive(Debug)]
pub struct Headers<'a>(pub &'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Outgoing gRPC metadata as a trace-context carrier.
#[derive(Debug)]
pub struct Metadata<'a>(pub &'a mut tonic::metadata::MetadataMap);

impl Injector for Metadata<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            value.parse(),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// Tower layer for gRPC servers: takes the caller's `x-request-id` (or makes one), and runs the
/// request inside [`scope`] and a tracing span naming the method, continuing the caller's trace.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestIdLayer;

impl<S> tower::Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestIdService { inner }
    }
}

#[derive(Debug, Clone)]
pub struct RequestIdService<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for RequestIdService<S>
where
    S: tower::Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let incoming = request
            .headers()
            .get(REQUEST_ID)
            .and_then(|v| v.to_str().ok());
        let id = accept(incoming);
        let span = tracing::info_span!(
            "rpc", method = %request.uri().path(), request_id = %id, trace_id = tracing::field::Empty
        );
        continue_trace(&span, &Headers(request.headers()));
        let response = self.inner.call(request);
        Box::pin(scope(id, response.instrument(span)))
    }
}

#[cfg(test)]
mod tests {
    use tower::{Layer as _, ServiceExt as _};

    use super::*;

    #[test]
    fn incoming_ids_are_kept_only_when_safe() {
        assert_eq!(accept(Some("req-123_abc.DEF")), "req-123_abc.DEF");
        for bad in ["", "has space", "new\nline", "ünï", &"x".repeat(129)] {
            let id = accept(Some(bad));
            assert_ne!(id, bad);
            assert_eq!(id.len(), 32, "a fresh id replaces {bad:?}");
        }
        assert_ne!(accept(None), accept(None), "fresh ids are unique");
    }

    #[tokio::test]
    async fn the_current_id_is_set_only_inside_a_scope() {
        assert_eq!(current(), None);
        assert_eq!(
            scope("abc".into(), async { current() }).await.as_deref(),
            Some("abc")
        );
        assert_eq!(current(), None);
    }

    #[tokio::test]
    async fn the_grpc_layer_makes_the_callers_id_current() {
        let echo = tower::service_fn(|_: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(current())
        });
        let service = RequestIdLayer.layer(echo);

        let request = http::Request::builder()
            .header(REQUEST_ID, "from-the-gateway")
            .body(())
            .unwrap();
        let seen = service.clone().oneshot(request).await.unwrap();
        assert_eq!(seen.as_deref(), Some("from-the-gateway"));

        let seen = service.oneshot(http::Request::new(())).await.unwrap();
        assert_eq!(
            seen.map(|id| id.len()),
            Some(32),
            "a request without an id gets one"
        );
    }
}
