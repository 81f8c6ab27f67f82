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
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use twtr_common::IdGenerator;
use twtr_common::bus::admin::DeadLetterAdmin;
use twtr_common::bus::{
    self, ConsumerSettings, EventBus, EventHandler, HandlerError, QueueSpec, Subscription,
};
use twtr_common::grpc as grpc_server;
use twtr_common::outbox::{self, Outbox};
use twtr_common::tasks::{self, Schedule};
use twtr_proto::events::v1::Envelope;
use twtr_proto::events::v1::envelope::Payload;

pub use service::{Followers, FollowersError, UserDirectory};
pub use store::{CqlFollowStore, EmbeddedFollowStore, FollowStore};

/// The purge of deleted accounts runs when an account is deleted, every minute anyway (a purge
/// left by a crash, or taken over from another replica), and 5 s after a failure.
const PURGE_SCHEDULE: Schedule = Schedule {
    poll: Duration::from_secs(60),
    retry: Duration::from_secs(5),
};

/// The followers service's queue: `UserDeleted`, and with `settles` (a store whose follow can
/// race a deletion, [`FollowStore::follow_races_deletion`]) its own `UserFollowed`.
pub fn queue(settings: &ConsumerSettings, settles: bool) -> QueueSpec {
    let mut bindings = vec!["users.user_deleted"];
    if settles {
        bindings.push("followers.user_followed");
    }
    settings.queue("followers", &bindings)
}

/// Everything the followers service needs, built by the binary from configuration.
pub struct FollowersDeps {
    pub store: Arc<dyn FollowStore>,
    pub bus: Arc<dyn EventBus>,
    pub ids: Arc<IdGenerator>,
    pub users: Arc<dyn UserDirectory>,
    pub consumer: ConsumerSettings,
}

/// A followers service whose queue is declared: events published from now on reach it, even
/// before [`FollowersService::serve`] runs.
pub struct FollowersService {
    followers: Arc<Followers>,
    outbox: Arc<dyn Outbox>,
    bus: Arc<dyn EventBus>,
    subscription: Box<dyn Subscription>,
    consumer: ConsumerSettings,
}

impl FollowersService {
    pub async fn build(deps: FollowersDeps) -> anyhow::Result<Self> {
        let queue = queue(&deps.consumer, deps.store.follow_races_deletion());
        let subscription = deps
            .bus
            .subscribe(&queue)
            .await
            .context("failed to declare the followers queue")?;
        let outbox = deps.store.outbox();
        let followers = Followers::new(deps.store, deps.ids, deps.users);
        Ok(Self {
            followers: Arc::new(followers),
            outbox,
            bus: deps.bus,
            subscription,
            consumer: deps.consumer,
        })
    }

    /// Serves the gRPC API (with the outbox relay), consumes the queue and runs the purge of
    /// deleted accounts until `shutdown`; then drains requests and flushes the outbox. If the
    /// consumer fails (the bus is gone), the whole service stops with its error.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let grpc_stop = shutdown.child_token();
        let purge = Arc::new(Notify::new());
        let purge_stop = shutdown.child_token();
        let purger = {
            let followers = Arc::clone(&self.followers);
            tokio::spawn(tasks::run_passes(
                "purged the follows of deleted accounts",
                move || {
                    let followers = Arc::clone(&followers);
                    async move { followers.purge_pending().await }
                },
                Arc::clone(&purge),
                PURGE_SCHEDULE,
                purge_stop.clone(),
            ))
        };
        let consumer = {
            let handler = FollowersEvents {
                followers: Arc::clone(&self.followers),
                purge,
            };
            let (subscription, settings) = (self.subscription, self.consumer);
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                bus::consume("followers", subscription, &handler, settings, shutdown).await
            })
        };
        let serving = grpc_server::Serving {
            ready: grpc_server::store_readiness(
                "followers",
                {
                    let followers = Arc::clone(&self.followers);
                    move || {
                        let followers = Arc::clone(&followers);
                        async move { followers.ping().await }
                    }
                },
                shutdown.clone(),
            )
            .await,
            events: self.bus.readiness(),
            dead_letters: Some(DeadLetterAdmin::server(Arc::clone(&self.bus), "followers")),
        };
        let grpc = outbox::serve_with_relay(
            "followers",
            grpc::server(self.followers),
            listener,
            self.outbox,
            self.bus,
            serving,
            grpc_stop.clone(),
        );
        let result =
            tasks::serve_beside_consumer("followers", grpc, &grpc_stop, consumer, &shutdown).await;
        purge_stop.cancel();
        purger.await.context("the purge panicked")?;
        result
    }
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
