//! The HTTP/JSON edge gateway: routing, authentication, input parsing, JSON <-> gRPC, and the
//! fan-in of several RPCs into one response. It keeps nothing durable: only short-lived caches
//! of the users service's answers (revocation, and the users shown beside tweets).
//!
//! # Layout
//!
//! - [`error`]: [`ApiError`], the one JSON error shape; gRPC statuses become HTTP statuses here,
//!   through the shared error-code table.
//! - [`extract`]: request parsing that answers 4xx in that shape: the caller
//!   ([`extract::AuthenticatedUser`], from the bearer token), JSON bodies, IDs in paths, page
//!   queries.
//! - [`state`]: [`state::AppState`], what every handler and extractor shares (the services'
//!   clients, the token verifier, the revocation cache).
//! - [`revocation`]: whether a validly signed token was revoked (account deleted, password
//!   changed), from the users service's answers of the last two seconds.
//! - [`authors`]: the users shown beside tweets, remembered for five seconds, so a page of
//!   tweets costs no users RPC.
//! - [`upstream`]: gRPC clients for the four services; every call carries what is left of its
//!   request's deadline, the caller's verified token and the request and trace ids.
//! - [`views`]: the JSON bodies of the public API, and the batched hydration that builds them
//!   (one RPC per kind of data per response, never one per item): [`views::tweets`] for every
//!   page of tweets (home feed, timeline, a user's tweets, a single tweet), [`views::users`]
//!   for users.
//! - [`routes`]: one handler per route, each a straight run: parse, call, hydrate, respond; a
//!   module per resource (`users`, `sessions`, `follows`, `tweets`, `reactions`, `feed`,
//!   `timeline`), and `routes/mod.rs`, which builds the router from them.
//! - [`streams`]: live feeds (`GET /v1/feed/stream`): their slots, and the Server-Sent Events
//!   a feeds service's `WatchFeed` becomes.
//! - [`limits`]: the edge's limits (body size, rate limits, deadline, load shedding, CORS).
//! - [`adaptive`]: the concurrency limit that sheds load, adapted to measured latency.
//! - [`openapi`]: the OpenAPI document, generated from the routes' annotations, plus the
//!   responses every route shares (added once, by [`openapi::EdgeResponses`]), and the `/docs`
//!   page.
//! - [`app`]: the whole application: the routes inside the limits, next to health and
//!   readiness, every request with an id and a deadline.
//!
//! # How a request flows
//!
//! The request context gives it an id, a trace and a deadline; for an API route, the rate
//! limits, load shedding and body limit come next. axum routes it; extractors authenticate the
//! caller (verifying the token's signature locally, and its revocation against a cache
//! refreshed every two seconds per user) and parse the input; the handler calls the owning
//! service(s) over gRPC, passing the caller's ID explicitly and forwarding their token, with
//! which each service checks that the caller acts only as themselves; views hydrate the result
//! and render JSON.

pub mod adaptive;
pub mod app;
pub mod authors;
pub mod error;
pub mod extract;
#[cfg(test)]
mod fake_users;
pub mod limits;
pub mod openapi;
pub mod revocation;
pub mod routes;
pub mod server;
pub mod state;
pub mod streams;
pub mod upstream;
pub mod views;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use twtr_common::tls::MeshTls;
use twtr_common::tokens::TokenVerifier;

pub use error::ApiError;
pub use limits::{EdgeLimits, RateLimits};
pub use server::ConnectionLimits;
pub use upstream::{UpstreamUrls, Upstreams};

/// Everything the gateway needs, built by the binary from configuration.
pub struct GatewayDeps {
    pub upstreams: UpstreamUrls,
    /// Mutual TLS to the services (`None`: plaintext).
    pub grpc_tls: Option<MeshTls>,
    pub tokens: TokenVerifier,
    pub limits: EdgeLimits,
    /// Whether `/metrics` is served on the HTTP port: only when no metrics listener of its own
    /// is configured, so a deployment that has one keeps metrics off the public port.
    pub metrics_on_http_port: bool,
}

/// Serves the HTTP API on `listener` until `shutdown`, then drains requests in flight.
pub async fn serve(
    deps: GatewayDeps,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let addr = listener
        .local_addr()
        .context("failed to read the HTTP listen address")?;
    twtr_common::metrics::install();
    let upstreams = Upstreams::connect(&deps.upstreams, deps.grpc_tls.as_ref())?;
    let rate_limiter = Arc::new(limits::RateLimiter::new(&deps.limits, deps.tokens.clone()));
    let state = state::AppState::with_streams(
        upstreams,
        deps.tokens,
        deps.limits.body_limit,
        deps.limits.streams,
        shutdown.clone(),
    );
    let app = app::router(
        state,
        &deps.limits,
        Arc::clone(&rate_limiter),
        deps.metrics_on_http_port,
    );
    tokio::spawn(limits::forget_idle_keys(rate_limiter, shutdown.clone()));
    tracing::info!(service = "gateway", %addr, "http server listening");
    // Requests in flight at shutdown have their deadline to finish, and a little to answer.
    let drain = deps.limits.request_timeout + Duration::from_secs(1);
    server::serve(listener, app, deps.limits.connections, drain, shutdown).await;
    Ok(())
}
