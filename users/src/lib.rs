//! The users service: accounts, profiles, credentials and login. Owns the `users` keyspace.
//!
//! # Layout
//!
//! - [`domain`]: validated input types (`Username`, `Password`, ...); they can only hold valid
//!   values, so everything past parsing works with known-good data.
//! - [`store`]: the [`UserStore`] trait, its backends ([`EmbeddedUserStore`] on redb,
//!   [`CqlUserStore`] on ScyllaDB / Cassandra) and the conformance suite every backend passes.
//! - [`search`]: people search: the display-name words indexed, how a query is read, its bounds.
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
pub mod search;
pub mod service;
pub mod store;

use std::sync::Arc;

use twtr_common::IdGenerator;
use twtr_common::bus::EventBus;
use twtr_common::runtime::ServiceRuntime;
use twtr_common::tokens::{TokenSigner, TokenVerifier};
use twtr_proto::users::v1::users_service_server::UsersServiceServer;

pub use service::{Users, UsersError};
pub use store::{CqlUserStore, EmbeddedUserStore, SCHEMA, UserStore};

/// Everything the users service needs, built by the binary from configuration.
pub struct UsersDeps {
    pub store: Arc<dyn UserStore>,
    pub bus: Arc<dyn EventBus>,
    pub ids: Arc<IdGenerator>,
    /// Signs the tokens `Login` issues.
    pub tokens: TokenSigner,
    /// Verifies the tokens of calls that act as a user (see `twtr_common::auth`).
    pub verifier: TokenVerifier,
}

/// The users service, ready to run: its API, ready while its store answers, publishing what
/// its outbox stores. It consumes no events.
pub fn runtime(
    deps: UsersDeps,
) -> anyhow::Result<ServiceRuntime<UsersServiceServer<grpc::UsersGrpc>>> {
    let outbox = deps.store.outbox();
    let store = Arc::clone(&deps.store);
    let users = Users::new(deps.store, deps.ids, deps.tokens)?;
    let ping = move || {
        let store = Arc::clone(&store);
        async move { store.ping().await }
    };
    Ok(
        ServiceRuntime::new("users", grpc::server(users), deps.bus, ping)
            .verifying(deps.verifier)
            .relaying(outbox),
    )
}
