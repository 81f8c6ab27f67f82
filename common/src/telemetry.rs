//! Structured logging with `tracing`, and OpenTelemetry traces.
//!
//! Logs: the filter comes from `TWTR_LOG` (or `RUST_LOG`), default [`DEFAULT_LOG`]; the format is
//! human-readable text or one JSON object per line. Lines go to standard output through a
//! buffer a background thread drains, so a slow terminal, pipe or disk never holds up a
//! request: should the buffer ever fill, lines are dropped rather than waited for.
//!
//! Traces: twtr's own spans (a request at the gateway, a call at a service, an event at a
//! consumer) are OpenTelemetry spans, continued across processes through the W3C `traceparent`
//! carried in HTTP headers, gRPC metadata and event headers (see [`crate::context`]); each such
//! span records its `trace_id`, so log lines can be joined with traces. They are exported over
//! OTLP/gRPC only when an endpoint is configured (`TWTR_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_ENDPOINT`); without one, no OpenTelemetry span is built at all, and the
//! trace context is still propagated and logged (see [`crate::context`]).
//! Spans reach OpenTelemetry whatever the log filter says.

use std::io::IsTerminal as _;

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Holds the tracer provider; [`Telemetry::shutdown`] exports what is still buffered.
#[derive(Debug)]
#[must_use = "call shutdown() at exit so buffered spans are exported"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered (bounded by the exporter's timeout), and writes out
    /// the log lines still buffered.
    pub async fn shutdown(mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        }
    }
}

impl Drop for Telemetry {
    /// However the process ends (an error out of `main` included), the buffered lines go out.
    fn drop(&mut self) {
        flush_logs();
    }
}

/// The log writer's guard: dropping it writes out the buffered lines.
static LOG_WRITER: std::sync::Mutex<Option<tracing_appender::non_blocking::WorkerGuard>> =
    std::sync::Mutex::new(None);

/// Writes out the log lines still buffered; logging after it goes nowhere.
pub fn flush_logs() {
    let guard = LOG_WRITER.lock().map(|mut g| g.take()).unwrap_or_default();
    drop(guard);
}

/// Ends the process at once with `code`, after writing out the buffered log lines (which
/// [`std::process::exit`] alone would lose).
pub fn exit(code: i32) -> ! {
    flush_logs();
    std::process::exit(code)
}

/// Installs the global subscriber: logs, and spans for OpenTelemetry (exported to
/// `otlp_endpoint` when given, as `service`). Calling it twice is harmless (the second call
/// installs nothing). Call it within a tokio runtime.
/// The log filter when none is set: `info`, but for the CQL driver's reconnection chatter. While
/// a node is down the driver logs three lines a second about its control connection, and one
/// per connection about sharding information that only ScyllaDB sends; twtr reports a store
/// outage itself, once when it starts and once when it ends, and in `twtr_dependency_up`.
pub const DEFAULT_LOG: &str =
    "info,scylla::cluster::metadata::cc_establisher=off,scylla::network::connection=warn";

pub fn init(
    format: LogFormat,
    service: &str,
    otlp_endpoint: Option<&str>,
) -> anyhow::Result<Telemetry> {
    let filter = std::env::var("TWTR_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .and_then(|spec| EnvFilter::try_new(spec).ok())
        .unwrap_or_else(|| EnvFilter::new(DEFAULT_LOG));
    // Colours only for a person at a terminal: a log file or a collector gets plain text.
    let ansi = std::io::stdout().is_terminal();
    let (writer, guard) = tracing_appender::non_blocking(std::io::stdout());
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_target(false)
        .with_ansi(ansi);
    let logs = match format {
        LogFormat::Text => logs.boxed(),
        LogFormat::Json => logs.json().flatten_event(true).boxed(),
    }
    .with_filter(filter);

    // twtr's own spans only: a library's internal spans are not part of the trace. This filter
    // also keeps those spans alive whatever the log filter says, so the trace context they
    // hold (see `crate::context`) is passed on even when their lines are not logged.
    let ours = || {
        tracing_subscriber::filter::filter_fn(|meta| {
            meta.is_span() && meta.target().starts_with("twtr")
        })
    };
    let (spans, provider) = match otlp_endpoint {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()
                .with_context(|| format!("invalid OTLP endpoint {endpoint:?}"))?;
            let provider = SdkTracerProvider::builder()
                .with_resource(
                    Resource::builder()
                        .with_service_name(service.to_owned())
                        .build(),
                )
                .with_batch_exporter(exporter)
                .build();
            let layer = tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("twtr"))
                .with_filter(ours())
                .boxed();
            (layer, Some(provider))
        }
        // Nothing exports spans: no OpenTelemetry spans are built (`crate::context` keeps the
        // W3C context in the spans' extensions itself).
        None => (
            tracing_subscriber::layer::Identity::new()
                .with_filter(ours())
                .boxed(),
            None,
        ),
    };
    let installed = tracing_subscriber::registry()
        .with(logs)
        .with(spans)
        .try_init()
        .is_ok();
    if installed {
        crate::context::use_opentelemetry(provider.is_some());
    }
    if installed && let Some(endpoint) = otlp_endpoint {
        tracing::info!(endpoint, service, "exporting traces over OTLP");
    }
    if installed && let Ok(mut writer) = LOG_WRITER.lock() {
        *writer = Some(guard);
    }
    Ok(Telemetry {
        provider: provider.filter(|_| installed),
    })
}
