//! The followers service: the follow graph, its lists and its counts. Owns the `followers`
//! keyspace.
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
//! `Follow` checks the rules (no self-follow, the followee exists, neither account deleted),
//! then stores the edge's new state and version, both lists, both users' new counts and a
//! `UserFollowed` event carrying the version, in one transaction. Following twice changes
//! nothing and publishes nothing. The feeds service keeps its own copy of the graph from these
//! events, keeping the highest version per edge.
//!
//! The service consumes one queue of its own, `followers`: the users service's `UserDeleted`
//! (the account is recorded as gone, then a background purge unfollows each of its edges, a
//! batch at a time, so an account with many followers never stalls the queue) and, on a
//! backend whose follow is not one transaction with its check (CQL), its own `UserFollowed`, to
//! take back an edge that landed as its account was being deleted.

pub mod grpc;
pub mod service;
pub mod store;

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::Notify;
use twtr_common::IdGenerator;
use twtr_common::bus::{ConsumerSettings, EventBus, EventHandler, HandlerError, QueueSpec};
use twtr_common::events::EventKind;
use twtr_common::purge;
use twtr_common::runtime::{Consumer, ServiceRuntime};
use twtr_common::tokens::TokenVerifier;
use twtr_proto::events::v1::Envelope;
use twtr_proto::events::v1::envelope::Payload;
use twtr_proto::followers::v1::followers_service_server::FollowersServiceServer;

pub use service::{Followers, FollowersError, UserDirectory};
pub use store::{CqlFollowStore, EmbeddedFollowStore, FollowStore, SCHEMA};

/// The followers service's queue: `UserDeleted`, and with `settles` (a store whose follow can
/// race a deletion, [`FollowStore::follow_races_deletion`]) its own `UserFollowed`.
pub fn queue(settings: &ConsumerSettings, settles: bool) -> QueueSpec {
    let mut kinds = vec![EventKind::UserDeleted];
    if settles {
        kinds.push(EventKind::UserFollowed);
    }
    settings.queue("followers", &kinds)
}

/// Everything the followers service needs, built by the binary from configuration.
pub struct FollowersDeps {
    pub store: Arc<dyn FollowStore>,
    pub bus: Arc<dyn EventBus>,
    pub ids: Arc<IdGenerator>,
    /// Whether a user exists: the users service.
    pub users: Arc<dyn UserDirectory>,
    pub consumer: ConsumerSettings,
    /// Verifies the tokens of calls that act as a user (see `twtr_common::auth`).
    pub verifier: TokenVerifier,
}

/// The followers service, ready to run, its queue declared (events published from now on
/// reach it): its API, the relay of its outbox, its consumer and the purge of deleted accounts.
pub async fn runtime(
    deps: FollowersDeps,
) -> anyhow::Result<ServiceRuntime<FollowersServiceServer<grpc::FollowersGrpc>>> {
    let queue = queue(&deps.consumer, deps.store.follow_races_deletion());
    let outbox = deps.store.outbox();
    let followers = Arc::new(Followers::new(deps.store, deps.ids, deps.users));
    let purge = Arc::new(Notify::new());
    let handler = Arc::new(FollowersEvents {
        followers: Arc::clone(&followers),
        purge: Arc::clone(&purge),
    });
    let consumer = Consumer::subscribe(deps.bus.as_ref(), queue, handler, deps.consumer).await?;
    let purge = purge::pass(
        Arc::clone(&followers),
        purge,
        "purged the follows of deleted accounts",
    );
    let pinged = Arc::clone(&followers);
    let ping = move || {
        let followers = Arc::clone(&pinged);
        async move { followers.ping().await }
    };
    Ok(
        ServiceRuntime::new("followers", grpc::server(followers), deps.bus, ping)
            .verifying(deps.verifier)
            .relaying(outbox)
            .consuming(consumer)
            .with_pass(purge),
    )
}

/// What the followers service does with the events of its queue.
struct FollowersEvents {
    followers: Arc<Followers>,
    purge: Arc<Notify>,
}

#[async_trait]
impl EventHandler for FollowersEvents {
    async fn handle(&self, event: &Envelope) -> Result<(), HandlerError> {
        match &event.payload {
            Some(Payload::UserDeleted(deleted)) => {
                self.followers.forget_user(deleted.user_id).await?;
                self.purge.notify_one();
            }
            Some(Payload::UserFollowed(_)) => self.followers.settle(event).await?,
            _ => {}
        }
        Ok(())
    }

    async fn probe(&self) -> Result<(), HandlerError> {
        Ok(self.followers.ping().await?)
    }
}
