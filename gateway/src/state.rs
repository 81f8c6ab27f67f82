//! What every handler and extractor shares: the services' clients, the token verifier, the
//! revocation cache and the body limit. It sits below the extractors and the routes (both
//! take it from here), so neither has to import the other.

use std::sync::Arc;

use twtr_common::tokens::TokenVerifier;

use crate::revocation::Revocations;
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
}

impl AppState {
    pub fn new(upstreams: Upstreams, tokens: TokenVerifier, body_limit: usize) -> Self {
        let revocations = Revocations::new(upstreams.users.clone());
        Self(Arc::new(Inner {
            upstreams,
            tokens,
            revocations,
            body_limit,
        }))
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
