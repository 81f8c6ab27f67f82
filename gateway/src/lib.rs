//! The HTTP/JSON edge gateway: routing, authentication, input parsing, JSON <-> gRPC, and the
//! fan-in of several RPCs into one response. It keeps nothing itself.
//!
//! # Layout
//!
//! - [`error`]: [`ApiError`], the one JSON error shape; gRPC statuses become HTTP statuses here,
//!   through the shared error-code table.
//! - [`extract`]: request parsing that answers 4xx in that shape: the bearer token ([`extract::Caller`]),
//!   JSON bodies, IDs in paths, page queries.
//! - [`revocation`]: whether a validly signed token was revoked (account deleted, password
//!   changed), from the users service's answers of the last two seconds.
//! - [`upstream`]: gRPC clients for the four services, with deadlines on every call.
//! - [`views`]: the JSON bodies of the public API, and the batched hydration that builds them
//!   (one RPC per kind of data per response, never one per item).
//! - [`routes`]: one handler per route, each a straight run: parse, call, respond.
//!
//! # How a request flows
//!
//! axum routes it; extractors authenticate the caller (verifying the token's signature locally,
//! and its revocation against a cache refreshed every two seconds per user) and parse the input; the handler calls the owning service(s) over gRPC, passing the
//! caller's ID explicitly; views hydrate the result and render JSON.

pub mod balance;
pub mod error;
pub mod extract;
pub mod revocation;
pub mod routes;
pub mod upstream;
pub mod views;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use twtr_common::tokens::TokenVerifier;

pub use error::ApiError;
pub use upstream::{UpstreamUrls, Upstreams};

/// Everything the gateway needs, built by the binary from configuration.
pub struct GatewayDeps {
    pub upstreams: UpstreamUrls,
    pub tokens: TokenVerifier,
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
    let upstreams = Upstreams::connect(&deps.upstreams)?;
    let app = routes::router(routes::AppState::new(upstreams, deps.tokens));
    tracing::info!(service = "gateway", %addr, "http server listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.cancelled().await;
            tracing::info!(service = "gateway", "http server shutting down");
        })
        .await
        .context("HTTP server failed")
}
