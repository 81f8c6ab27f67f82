//! The command line of the edge's limits and of observability (metrics, traces), and the
//! `twtr token` subcommand's arguments. Flattened into [`crate::Cli`]; every flag has a
//! `TWTR_*` variable.

use std::num::NonZeroU32;
use std::time::Duration;

use clap::{Args, ValueEnum};
use twtr_gateway::adaptive::{ConcurrencyLimits, ConcurrencyMode, DEFAULT_TARGET};
use twtr_gateway::limits::StreamLimits;
use twtr_gateway::{ConnectionLimits, EdgeLimits, RateLimits};

/// The gateway's limits (see `gateway/src/limits.rs`).
#[derive(Debug, Args)]
pub struct EdgeArgs {
    /// Largest request body the gateway accepts, in bytes (larger: 413).
    #[arg(long, env = "TWTR_HTTP_BODY_LIMIT_BYTES", default_value_t = EdgeLimits::default().body_limit, global = true)]
    pub http_body_limit_bytes: usize,

    /// Milliseconds a gateway request may take, its RPCs included: every RPC carries what is
    /// left of it as its gRPC deadline, and the service stops working on it when it passes
    /// (then: 504).
    #[arg(
        long,
        env = "TWTR_REQUEST_TIMEOUT_MS",
        default_value_t = 10_000,
        global = true
    )]
    pub request_timeout_ms: u64,

    /// How the limit on API requests served at once is set: `adaptive` (it follows measured
    /// latency, between TWTR_HTTP_MIN_IN_FLIGHT and TWTR_HTTP_MAX_IN_FLIGHT) or `fixed` (it is
    /// TWTR_HTTP_MAX_IN_FLIGHT). One request over it is shed at once with a 503.
    #[arg(long, env = "TWTR_HTTP_CONCURRENCY", value_enum, default_value_t = Concurrency::Adaptive, global = true)]
    pub http_concurrency: Concurrency,

    /// The most API requests the gateway serves at once (adaptive: the limit's upper bound;
    /// fixed: the limit).
    #[arg(long, env = "TWTR_HTTP_MAX_IN_FLIGHT", default_value_t = ConcurrencyLimits::default().max, global = true)]
    pub http_max_in_flight: usize,

    /// The adaptive limit's lower bound: requests served at once however latency rises.
    #[arg(long, env = "TWTR_HTTP_MIN_IN_FLIGHT", default_value_t = ConcurrencyLimits::default().min, global = true)]
    pub http_min_in_flight: usize,

    /// The mean latency (ms) the adaptive limit tolerates however low its baseline: it only
    /// shrinks when latency is above this too (accepted requests' p99 stays near twice it).
    #[arg(long, env = "TWTR_HTTP_TARGET_LATENCY_MS", default_value_t = DEFAULT_TARGET.as_millis() as u64, global = true)]
    pub http_target_latency_ms: u64,

    /// Where the adaptive limit starts (within the bounds).
    #[arg(long, env = "TWTR_HTTP_INITIAL_IN_FLIGHT", default_value_t = ConcurrencyLimits::default().initial, global = true)]
    pub http_initial_in_flight: usize,

    /// Live feeds (GET /v1/feed/stream) one gateway serves at once; one more: 429.
    #[arg(long, env = "TWTR_FEED_STREAMS_MAX", default_value_t = StreamLimits::default().total, global = true)]
    pub feed_streams_max: usize,

    /// Live feeds one caller may hold open on one gateway at once; one more: 429.
    #[arg(long, env = "TWTR_FEED_STREAMS_PER_CALLER", default_value_t = StreamLimits::default().per_caller, global = true)]
    pub feed_streams_per_caller: usize,

    /// API requests per minute from one client IP (0: no limit); over it: 429 with Retry-After.
    #[arg(long, env = "TWTR_RATE_LIMIT_PER_IP", default_value_t = per_minute(RateLimits::default().per_ip), global = true)]
    pub rate_limit_per_ip: u32,

    /// API requests per minute by one caller (the user of a valid token; 0: no limit).
    #[arg(long, env = "TWTR_RATE_LIMIT_PER_CALLER", default_value_t = per_minute(RateLimits::default().per_caller), global = true)]
    pub rate_limit_per_caller: u32,

    /// Logins and sign-ups per minute from one client IP (0: no limit).
    #[arg(long, env = "TWTR_RATE_LIMIT_AUTH_PER_IP", default_value_t = per_minute(RateLimits::default().auth_per_ip), global = true)]
    pub rate_limit_auth_per_ip: u32,

    /// Proxies in front of the gateway that append to X-Forwarded-For (0: the client is the TCP
    /// peer; behind a GKE Ingress: 2, the client and Google's front end). Needs
    /// TWTR_HTTP_TRUSTED_PROXIES: the header is believed only from those networks.
    #[arg(
        long,
        env = "TWTR_HTTP_TRUSTED_PROXY_HOPS",
        default_value_t = 0,
        global = true
    )]
    pub http_trusted_proxy_hops: usize,

    /// Comma-separated networks (CIDR) the proxies in front connect from; X-Forwarded-For from
    /// any other peer is ignored. Behind Google's load balancers: 130.211.0.0/22,35.191.0.0/16.
    #[arg(long, env = "TWTR_HTTP_TRUSTED_PROXIES", value_delimiter = ',', value_parser = twtr_gateway::limits::parse_network, global = true)]
    pub http_trusted_proxies: Vec<twtr_gateway::limits::IpNet>,

    /// Milliseconds an HTTP/1 client has to send a whole request head; it also bounds how long
    /// an idle keep-alive connection stays open (behind a load balancer that keeps connections
    /// to backends, set it above that balancer's keep-alive: 620000 behind Google's).
    #[arg(long, env = "TWTR_HTTP_HEADER_READ_TIMEOUT_MS", default_value_t = millis(ConnectionLimits::default().header_read_timeout), global = true)]
    pub http_header_read_timeout_ms: u64,

    /// Milliseconds a connection may go without a byte read or written before it is closed.
    #[arg(long, env = "TWTR_HTTP_IDLE_TIMEOUT_MS", default_value_t = millis(ConnectionLimits::default().idle_timeout), global = true)]
    pub http_idle_timeout_ms: u64,

    /// Largest request head (HTTP/1: request line and headers, 431 above) or header list
    /// (HTTP/2), in bytes; at least 8192.
    #[arg(long, env = "TWTR_HTTP_MAX_HEADER_BYTES", default_value_t = ConnectionLimits::default().max_header_bytes, global = true)]
    pub http_max_header_bytes: usize,

    /// Concurrent streams one HTTP/2 connection may open.
    #[arg(long, env = "TWTR_HTTP2_MAX_CONCURRENT_STREAMS", default_value_t = ConnectionLimits::default().http2_max_concurrent_streams, global = true)]
    pub http2_max_concurrent_streams: u32,

    /// Comma-separated origins allowed to call the API from a browser (`*`: any); unset: no
    /// CORS headers.
    #[arg(long, env = "TWTR_CORS_ORIGINS", value_delimiter = ',', global = true)]
    pub cors_origins: Vec<String>,

    /// Where this process serves Prometheus metrics (`/metrics`), e.g. `0.0.0.0:9090`. Unset: no
    /// metrics listener, and the gateway serves `/metrics` on its HTTP port instead (set: only
    /// here, never on the public port).
    #[arg(long, env = "TWTR_METRICS_ADDR", global = true)]
    pub metrics_addr: Option<String>,

    /// OTLP/gRPC endpoint traces are exported to (e.g. `http://otel-collector:4317`); also read
    /// from OTEL_EXPORTER_OTLP_ENDPOINT. Unset: no export (trace context is still propagated).
    #[arg(long, env = "TWTR_OTLP_ENDPOINT", global = true)]
    pub otlp_endpoint: Option<String>,
}

/// `TWTR_HTTP_CONCURRENCY`'s values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Concurrency {
    Adaptive,
    Fixed,
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn per_minute(limit: Option<NonZeroU32>) -> u32 {
    limit.map_or(0, NonZeroU32::get)
}

impl EdgeArgs {
    pub fn limits(&self) -> anyhow::Result<EdgeLimits> {
        anyhow::ensure!(
            self.http_body_limit_bytes > 0,
            "TWTR_HTTP_BODY_LIMIT_BYTES must be at least 1"
        );
        anyhow::ensure!(
            self.request_timeout_ms > 0,
            "TWTR_REQUEST_TIMEOUT_MS must be at least 1"
        );
        anyhow::ensure!(
            self.http_max_in_flight > 0,
            "TWTR_HTTP_MAX_IN_FLIGHT must be at least 1"
        );
        let concurrency = match self.http_concurrency {
            Concurrency::Fixed => ConcurrencyLimits::fixed(self.http_max_in_flight),
            Concurrency::Adaptive => {
                anyhow::ensure!(
                    self.http_min_in_flight > 0,
                    "TWTR_HTTP_MIN_IN_FLIGHT must be at least 1"
                );
                // The maximum is the hard bound: a smaller one alone (as a fixed limit's old
                // setting) is a valid configuration, and pulls the others down with it.
                let max = self.http_max_in_flight;
                let min = self.http_min_in_flight.min(max);
                ConcurrencyLimits {
                    mode: ConcurrencyMode::Adaptive,
                    min,
                    initial: self.http_initial_in_flight.clamp(min, max),
                    max,
                    target: Duration::from_millis(self.http_target_latency_ms),
                }
            }
        };
        anyhow::ensure!(
            self.http_trusted_proxy_hops == 0 || !self.http_trusted_proxies.is_empty(),
            "TWTR_HTTP_TRUSTED_PROXY_HOPS is {} but TWTR_HTTP_TRUSTED_PROXIES is empty: name the \
             networks the proxies connect from (behind Google's load balancers: \
             130.211.0.0/22,35.191.0.0/16), or X-Forwarded-For would be believed from anyone",
            self.http_trusted_proxy_hops
        );
        anyhow::ensure!(
            self.http_trusted_proxies.is_empty() || self.http_trusted_proxy_hops > 0,
            "TWTR_HTTP_TRUSTED_PROXIES is set but TWTR_HTTP_TRUSTED_PROXY_HOPS is 0: say how many \
             X-Forwarded-For entries the proxies append (behind a GKE Ingress: 2)"
        );
        anyhow::ensure!(
            self.http_header_read_timeout_ms > 0 && self.http_idle_timeout_ms > 0,
            "TWTR_HTTP_HEADER_READ_TIMEOUT_MS and TWTR_HTTP_IDLE_TIMEOUT_MS must be at least 1"
        );
        anyhow::ensure!(
            self.http_max_header_bytes >= twtr_gateway::server::MIN_HEADER_BYTES,
            "TWTR_HTTP_MAX_HEADER_BYTES must be at least {}",
            twtr_gateway::server::MIN_HEADER_BYTES
        );
        anyhow::ensure!(
            self.http2_max_concurrent_streams > 0,
            "TWTR_HTTP2_MAX_CONCURRENT_STREAMS must be at least 1"
        );
        Ok(EdgeLimits {
            body_limit: self.http_body_limit_bytes,
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            concurrency,
            rates: RateLimits {
                per_ip: NonZeroU32::new(self.rate_limit_per_ip),
                per_caller: NonZeroU32::new(self.rate_limit_per_caller),
                auth_per_ip: NonZeroU32::new(self.rate_limit_auth_per_ip),
            },
            cors_origins: self
                .cors_origins
                .iter()
                .map(|o| o.trim().to_owned())
                .filter(|o| !o.is_empty())
                .collect(),
            trusted_proxy_hops: self.http_trusted_proxy_hops,
            trusted_proxies: self.http_trusted_proxies.clone(),
            connections: ConnectionLimits {
                header_read_timeout: Duration::from_millis(self.http_header_read_timeout_ms),
                idle_timeout: Duration::from_millis(self.http_idle_timeout_ms),
                max_header_bytes: self.http_max_header_bytes,
                http2_max_concurrent_streams: self.http2_max_concurrent_streams,
            },
            streams: StreamLimits {
                total: self.feed_streams_max,
                per_caller: self.feed_streams_per_caller,
            },
        })
    }

    /// The OTLP endpoint: ours, else the standard OpenTelemetry variable.
    pub fn otlp_endpoint(&self) -> Option<String> {
        self.otlp_endpoint
            .clone()
            .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok())
            .filter(|e| !e.trim().is_empty())
    }
}

/// `twtr token`: a token for an operator's calls to a service as a user (grpcurl's
/// `-H "authorization: Bearer $(twtr token --user 42)"`). Needs TWTR_TOKEN_PRIVATE_KEY (or, for
/// an all-in-one mesh, its data directory's generated key).
#[derive(Debug, Clone, Copy, Args, PartialEq, Eq)]
pub struct TokenArgs {
    /// The user the token acts as.
    #[arg(long)]
    pub user: u64,
    /// Seconds the token is valid.
    #[arg(long, default_value_t = 600)]
    pub ttl: u64,
}
