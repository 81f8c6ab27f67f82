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
//! When spans are exported ([`crate::telemetry::init`] with an OTLP endpoint), the
//! OpenTelemetry layer keeps that context. When nothing exports them, building OpenTelemetry
//! spans that nobody reads cost about 5% of a feed read's CPU, so the context is a
//! [`W3cContext`] kept in the span's own extensions instead: the same trace id in the logs
//! and in what is sent on, and a fresh span id per hop. Without either layer (a test's own
//! subscriber, or none), both functions do nothing.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::{TraceContextExt as _, TraceId};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::codegen::http;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::Registry;
use tracing_subscriber::registry::LookupSpan as _;

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
    format!("{:032x}", random_u128())
}

fn random_u128() -> u128 {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // No entropy source: fall back to something unique within this process.
        let now = crate::clock::now_millis().to_le_bytes();
        bytes[..8].copy_from_slice(&now);
    }
    u128::from_le_bytes(bytes)
}

/// Whether the OpenTelemetry layer keeps the trace context (spans are exported); else it is a
/// [`W3cContext`] in the span's extensions. Set once by [`crate::telemetry::init`].
static OPENTELEMETRY: AtomicBool = AtomicBool::new(false);

pub(crate) fn use_opentelemetry(on: bool) {
    OPENTELEMETRY.store(on, Ordering::Relaxed);
}

/// A W3C trace context (`traceparent`), as kept in a span's extensions when nothing exports
/// spans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct W3cContext {
    pub trace_id: u128,
    /// This hop's span: the parent of whatever it calls.
    pub span_id: u64,
    pub flags: u8,
}

impl W3cContext {
    /// A `traceparent` value, if it is a well-formed version-00 one with non-zero ids.
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        fn hex(s: &str, len: usize) -> Option<&str> {
            (s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
                .then_some(s)
        }
        hex(version, 2).filter(|v| *v != "ff")?;
        let trace_id = u128::from_str_radix(hex(trace, 32)?, 16).ok()?;
        let span_id = u64::from_str_radix(hex(span, 16)?, 16).ok()?;
        let flags = u8::from_str_radix(hex(flags, 2)?, 16).ok()?;
        // Version 00 has exactly four fields; a later version may add more.
        if version == "00" && parts.next().is_some() || trace_id == 0 || span_id == 0 {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            flags,
        })
    }

    /// This hop's context: the caller's trace (a new, sampled one without a caller) with a
    /// fresh span id.
    fn continuing(parent: Option<Self>) -> Self {
        let random = random_u128();
        Self {
            trace_id: parent.map_or(random, |p| p.trace_id).max(1),
            span_id: ((random >> 64) as u64).max(1),
            flags: parent.map_or(1, |p| p.flags),
        }
    }

    pub fn traceparent(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.span_id, self.flags
        )
    }
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
    if !OPENTELEMETRY.load(Ordering::Relaxed) {
        let parent = carrier.get(TRACEPARENT).and_then(W3cContext::parse);
        let context = W3cContext::continuing(parent);
        let kept = span
            .with_subscriber(|(id, dispatch)| {
                let span = dispatch.downcast_ref::<Registry>()?.span(id)?;
                span.extensions_mut().replace(context);
                Some(())
            })
            .flatten();
        if kept.is_some() {
            span.record(
                "trace_id",
                tracing::field::display(format_args!("{:032x}", context.trace_id)),
            );
        }
        return;
    }
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
    if !OPENTELEMETRY.load(Ordering::Relaxed) {
        if let Some(context) = current_w3c() {
            carrier.set(TRACEPARENT, context.traceparent());
        }
        return;
    }
    let context = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&context, carrier);
}

/// The [`W3cContext`] of the current span or the nearest of its parents that has one.
fn current_w3c() -> Option<W3cContext> {
    tracing::Span::current()
        .with_subscriber(|(id, dispatch)| {
            let span = dispatch.downcast_ref::<Registry>()?.span(id)?;
            span.scope()
                .find_map(|s| s.extensions().get::<W3cContext>().copied())
        })
        .flatten()
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

    #[test]
    fn traceparents_are_parsed_strictly() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = W3cContext::parse(good).unwrap();
        assert_eq!(parsed.trace_id, 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736);
        assert_eq!(parsed.span_id, 0x00f0_67aa_0ba9_02b7);
        assert_eq!(parsed.flags, 1);
        assert_eq!(parsed.traceparent(), good);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(W3cContext::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn without_opentelemetry_a_span_continues_the_callers_trace_and_passes_it_on() {
        use tracing_subscriber::layer::SubscriberExt as _;
        let subscriber = tracing_subscriber::registry().with(tracing_subscriber::fmt::layer());
        tracing::subscriber::with_default(subscriber, || {
            let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
            let mut incoming = http::HeaderMap::new();
            incoming.insert(TRACEPARENT, caller.parse().unwrap());
            let span = tracing::info_span!("rpc", trace_id = tracing::field::Empty);
            continue_trace(&span, &Headers(&incoming));
            let mut sent = std::collections::HashMap::new();
            // From a child span, as a handler's own spans would.
            span.in_scope(|| tracing::info_span!("child").in_scope(|| inject_trace(&mut sent)));
            let sent = W3cContext::parse(&sent[TRACEPARENT]).unwrap();
            assert_eq!(format!("{:032x}", sent.trace_id), &caller[3..35]);
            assert_ne!(
                sent.span_id, 0x00f0_67aa_0ba9_02b7,
                "this hop's own span id"
            );
            assert_eq!(sent.flags, 1);

            let fresh = tracing::info_span!("http", trace_id = tracing::field::Empty);
            continue_trace(&fresh, &Headers(&http::HeaderMap::new()));
            let mut sent = std::collections::HashMap::new();
            fresh.in_scope(|| inject_trace(&mut sent));
            let sent = W3cContext::parse(&sent[TRACEPARENT]).unwrap();
            assert_ne!(
                format!("{:032x}", sent.trace_id),
                &caller[3..35],
                "a new trace"
            );

            let mut outside = std::collections::HashMap::new();
            inject_trace(&mut outside);
            assert!(outside.is_empty(), "no span, no context");
        });
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
