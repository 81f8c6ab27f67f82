//! The followers service: the follow graph and its counts. Owns the `followers` keyspace.
//!
//! # Layout
//!
//! - [`store`]: the [`FollowStore`] trait, its backends ([`EmbeddedFollowStore`] in a redb file,
//!   [`CqlFollowStore`] on ScyllaDB / Cassandra) and the conformance suite both pass.
//! - [`service`]: the domain logic ([`Followers`]), and the [`service::UserDirectory`] it asks
//!   whether a user exists (the users service, over gRPC).
//! - [`grpc`]: the thin tonic adapter for `twtr.followers.v1.FollowersService`.
//!
//! # How data flows
//!
//! `Follow` checks the rules (no self-follow, the followee exists), then stores both directions
//! of the edge, both users' new counts and a `UserFollowed` event in one transaction. Following
//! twice changes nothing and publishes nothing. The feeds service keeps its own copy of the
//! graph from these events.

pub mod grpc;
pub mod service;
pub mod store;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use twtr_common::bus::EventBus;
use twtr_common::{IdGenerator, outbox};

pub use service::{Followers, FollowersError, UserDirectory};
pub use store::{CqlFollowStore, EmbeddedFollowStore, FollowStore};

/// Everything the followers service needs, built by the binary from configuration.
pub struct FollowersDeps {
    pub store: Arc<dyn FollowStore>,
    pub bus: Arc<dyn EventBus>,
    pub ids: Arc<IdGenerator>,
    pub users: Arc<dyn UserDirectory>,
}

/// Serves the followers service on `listener` until `shutdown`, then drains requests and
/// flushes the outbox.
pub async fn serve(
    deps: FollowersDeps,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let outbox = deps.store.outbox();
    let followers = Followers::new(deps.store, deps.ids, deps.users);
    outbox::serve_with_relay(
        "followers",
        grpc::server(followers),
        listener,
        outbox,
        deps.bus,
        shutdown,
    )
    .await
}
