//! What every handler and extractor shares: the services' clients, the token verifier, the
//! revocation cache and the body limit. It sits below the extractors and the routes (both
//! take it from here), so neither has to import the other.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use twtr_common::tokens::TokenVerifier;

use crate::limits::StreamLimits;
use crate::revocation::Revocations;
use crate::streams::StreamSlots;
use crate::upstream::Upstreams;

/// Shared by every handler; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    upstreams: Upstreams,
    tokens: TokenVerifier,
    revocations: Revocations,
    /// The largest request body accepted, in bytes (for the 413's message).
    body_limit: usize,
    streams: Arc<StreamSlots>,
    /// Cancelled when the gateway shuts down: live feeds end.
    shutdown: CancellationToken,
}

impl AppState {
    pub fn new(upstreams: Upstreams, tokens: TokenVerifier, body_limit: usize) -> Self {
        Self::with_streams(
            upstreams,
            tokens,
            body_limit,
            StreamLimits::default(),
            CancellationToken::new(),
        )
    }

    /// A state whose live feeds are bounded by `streams` and end at `shutdown`.
    pub fn with_streams(
        upstreams: Upstreams,
        tokens: TokenVerifier,
        body_limit: usize,
        streams: StreamLimits,
        shutdown: CancellationToken,
    ) -> Self {
        let revocations = Revocations::new(upstreams.users.clone());
        Self(Arc::new(Inner {
            upstreams,
            tokens,
            revocations,
            body_limit,
            streams: Arc::new(StreamSlots::new(streams)),
            shutdown,
        }))
    }

    pub fn streams(&self) -> &Arc<StreamSlots> {
        &self.0.streams
    }

    pub fn shutdown(&self) -> &CancellationToken {
        &self.0.shutdown
    }

    pub fn body_limit(&self) -> usize {
        self.0.body_limit
    }

    pub fn tokens(&self) -> &TokenVerifier {
        &self.0.tokens
    }

    pub fn revocations(&self) -> &Revocations {
        &self.0.revocations
    }

    pub(crate) fn up(&self) -> &Upstreams {
        &self.0.upstreams
    }
}
