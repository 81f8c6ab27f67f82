//! The users service: accounts, profiles, credentials and login. Owns the `users` keyspace.
//!
//! # Layout
//!
//! - [`domain`]: validated input types (`Username`, `Password`, ...); they can only hold valid
//!   values, so everything past parsing works with known-good data.
//! - [`store`]: the [`UserStore`] trait, its backends ([`EmbeddedUserStore`] on redb,
//!   [`CqlUserStore`] on ScyllaDB / Cassandra) and the conformance suite every backend passes.
//! - [`service`]: the domain logic ([`Users`]): validate, store the user with its event, answer.
//! - [`grpc`]: the thin tonic adapter for `twtr.users.v1.UsersService`.
//!
//! # How data flows
//!
//! `CreateUser` parses its input, hashes the password, and stores the user, its case-insensitive
//! username claim and a `UserCreated` event in one transaction; the outbox relay then publishes
//! the event. `Login` verifies the password hash and signs a token the gateway can verify alone.

pub mod domain;
pub mod grpc;
pub mod service;
pub mod store;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use twtr_common::bus::EventBus;
use twtr_common::tokens::TokenSigner;
use twtr_common::{IdGenerator, outbox};

pub use service::{Users, UsersError};
pub use store::{CqlUserStore, EmbeddedUserStore, UserStore};

/// Everything the users service needs, built by the binary from configuration.
pub struct UsersDeps {
    pub store: Arc<dyn UserStore>,
    pub bus: Arc<dyn EventBus>,
    pub ids: Arc<IdGenerator>,
    pub tokens: TokenSigner,
}

/// Serves the users service on `listener` until `shutdown`, then drains requests and flushes
/// the outbox.
pub async fn serve(
    deps: UsersDeps,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let outbox = deps.store.outbox();
    let store = Arc::clone(&deps.store);
    let serving = twtr_common::grpc::Serving {
        ready: twtr_common::grpc::store_readiness(
            "users",
            move || {
                let store = Arc::clone(&store);
                async move { store.ping().await }
            },
            shutdown.clone(),
        )
        .await,
        events: deps.bus.readiness(),
        dead_letters: None,
    };
    let users = Users::new(deps.store.clone(), deps.ids, deps.tokens)?;
    outbox::serve_with_relay(
        "users",
        grpc::server(users),
        listener,
        outbox,
        deps.bus,
        serving,
        shutdown,
    )
    .await
}
