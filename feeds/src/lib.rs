//! The feeds service: a denormalized home feed per user, built only from other services'
//! events. Owns the `feeds` keyspace.
//!
//! # Layout
//!
//! - [`store`]: the [`FeedStore`] trait (feeds, the service's own copy of the follow graph,
//!   each author's recent tweets), its backends and its conformance suite.
//!   - [`EmbeddedFeedStore`]: redb on local disk (the all-in-one default).
//!   - [`CqlFeedStore`]: ScyllaDB / Cassandra, the `feeds` keyspace.
//! - [`service`]: the domain logic ([`Feeds`]): apply an event, read a feed.
//! - [`grpc`]: the thin tonic adapter for `twtr.feeds.v1.FeedsService`.
//!
//! # How data flows
//!
//! The service consumes, from its own durable queue, `TweetCreated`, `TweetDeleted`,
//! `Retweeted`, `Unretweeted`, `UserFollowed`, `UserUnfollowed` and `UserDeleted`. It keeps its
//! own projections (the follow graph with a version per edge, deleted tweets, standing retweets
//! with a version per pair, each author's recent tweets and retweets) and writes a feed entry
//! only as they imply it ([`service::Feeds`] says exactly what a feed holds): a new tweet is
//! fanned out on write in chunks, following backfills, unfollowing and deleting remove, a
//! retweet reaches the retweeter's followers once. Every handler is idempotent and re-checks
//! what a concurrent one could change, so feeds converge whatever the delivery order; a
//! delivery is acknowledged only after its effect is stored.

pub mod grpc;
pub mod service;
pub mod store;

use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use twtr_common::bus::admin::DeadLetterAdmin;
use twtr_common::bus::{self, ConsumerSettings, EventBus, QueueSpec, Subscription};
use twtr_common::grpc as grpc_server;
use twtr_common::tasks;

pub use service::{Feeds, FeedsError};
pub use store::{CqlFeedStore, EmbeddedFeedStore, FeedLimits, FeedStore};

/// Followers above which an author is a celebrity, unless configured.
pub const DEFAULT_CELEBRITY_THRESHOLD: usize = 10_000;

/// The feeds service's queue and the events it needs.
pub fn queue(settings: &ConsumerSettings) -> QueueSpec {
    settings.queue(
        "feeds",
        &[
            "tweets.tweet_created",
            "tweets.tweet_deleted",
            "tweets.retweeted",
            "tweets.unretweeted",
            "followers.user_followed",
            "followers.user_unfollowed",
            "users.user_deleted",
        ],
    )
}

/// Everything the feeds service needs, built by the binary from configuration.
pub struct FeedsDeps {
    pub store: Arc<dyn FeedStore>,
    pub bus: Arc<dyn EventBus>,
    pub consumer: ConsumerSettings,
    /// Authors with more followers than this are merged at read time, not fanned out.
    pub celebrity_threshold: Option<usize>,
}

/// A feeds service whose queue is declared: events published from now on reach it, even
/// before [`FeedsService::serve`] runs.
pub struct FeedsService {
    feeds: Arc<Feeds>,
    subscription: Box<dyn Subscription>,
    bus: Arc<dyn EventBus>,
    consumer: ConsumerSettings,
}

impl FeedsService {
    pub async fn build(deps: FeedsDeps) -> anyhow::Result<Self> {
        let subscription = deps
            .bus
            .subscribe(&queue(&deps.consumer))
            .await
            .context("failed to declare the feeds queue")?;
        Ok(Self {
            feeds: Arc::new(
                Feeds::new(deps.store).with_celebrity_threshold(deps.celebrity_threshold),
            ),
            subscription,
            bus: deps.bus,
            consumer: deps.consumer,
        })
    }

    /// Serves `GetFeed` and consumes events until `shutdown`; then stops taking requests and
    /// deliveries, and finishes the ones in hand. If the consumer fails (the bus is gone), the
    /// whole service stops with its error rather than serving feeds that no longer update.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let grpc_stop = shutdown.child_token();
        let consumer = {
            let feeds = Arc::clone(&self.feeds);
            let shutdown = shutdown.clone();
            let settings = self.consumer;
            tokio::spawn(async move {
                bus::consume(
                    "feeds",
                    self.subscription,
                    feeds.as_ref(),
                    settings,
                    shutdown,
                )
                .await
            })
        };
        let serving = grpc_server::Serving {
            ready: grpc_server::store_readiness(
                "feeds",
                {
                    let feeds = Arc::clone(&self.feeds);
                    move || {
                        let feeds = Arc::clone(&feeds);
                        async move { feeds.ping().await }
                    }
                },
                shutdown.clone(),
            )
            .await,
            events: self.bus.readiness(),
            dead_letters: Some(DeadLetterAdmin::server(Arc::clone(&self.bus), "feeds")),
        };
        let grpc = grpc_server::serve(
            grpc::server(self.feeds),
            listener,
            serving,
            grpc_stop.clone(),
        );
        tasks::serve_beside_consumer("feeds", grpc, &grpc_stop, consumer, &shutdown).await
    }
}
