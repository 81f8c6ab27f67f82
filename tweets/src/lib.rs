//! The tweets service: tweets, per-author timelines, likes, retweets and the public timeline.
//! Owns the `tweets` keyspace.
//!
//! # Layout
//!
//! - [`domain`]: [`domain::TweetText`], the only way to hold a valid tweet text.
//! - [`store`]: the [`TweetStore`] trait, its backends ([`EmbeddedTweetStore`] on redb,
//!   [`CqlTweetStore`] on ScyllaDB / Cassandra) and the conformance suite both pass.
//! - [`service`]: the domain logic ([`Tweets`]).
//! - [`grpc`]: the thin tonic adapter for `twtr.tweets.v1.TweetsService`.
//!
//! # How data flows
//!
//! `CreateTweet` validates the text, then stores the tweet, its entry in the author's timeline,
//! the author's new tweet count and a `TweetCreated` event in one transaction. The outbox relay
//! publishes the event; the feeds service fans it out to followers' home feeds.
//!
//! The service consumes one queue of its own, `tweets`: the users service's `UserDeleted` (the
//! account's tweets, likes and retweets are then removed by a background purge, in batches, so a
//! prolific account never stalls the queue) and, on a backend whose writes are not one
//! transaction (CQL), its own events, to finish a write whose process died half-way.

pub mod domain;
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

pub use service::{DEFAULT_IDEMPOTENCY_WINDOW, Tweets, TweetsError};
pub use store::{CqlTweetStore, EmbeddedTweetStore, Reaction, TweetStore};

/// The purge of deleted accounts runs when an account is deleted, every minute anyway (a purge
/// left by a crash, or taken over from another replica), and 5 s after a failure.
const PURGE_SCHEDULE: Schedule = Schedule {
    poll: Duration::from_secs(60),
    retry: Duration::from_secs(5),
};

/// The tweets service's queue: `UserDeleted`, and with `settles` (a store that finishes its
/// writes from its own events, [`TweetStore::settles_events`]) every event of its own.
pub fn queue(settings: &ConsumerSettings, settles: bool) -> QueueSpec {
    let mut bindings = vec!["users.user_deleted"];
    if settles {
        bindings.push("tweets.*");
    }
    settings.queue("tweets", &bindings)
}

/// Everything the tweets service needs, built by the binary from configuration.
pub struct TweetsDeps {
    pub store: Arc<dyn TweetStore>,
    pub bus: Arc<dyn EventBus>,
    pub ids: Arc<IdGenerator>,
    pub consumer: ConsumerSettings,
    /// How long an `Idempotency-Key` keeps returning its first tweet.
    pub idempotency_window: Duration,
}

/// A tweets service whose queue is declared: events published from now on reach it, even
/// before [`TweetsService::serve`] runs.
pub struct TweetsService {
    tweets: Arc<Tweets>,
    outbox: Arc<dyn Outbox>,
    bus: Arc<dyn EventBus>,
    subscription: Box<dyn Subscription>,
    consumer: ConsumerSettings,
}

impl TweetsService {
    pub async fn build(deps: TweetsDeps) -> anyhow::Result<Self> {
        let queue = queue(&deps.consumer, deps.store.settles_events());
        let subscription = deps
            .bus
            .subscribe(&queue)
            .await
            .context("failed to declare the tweets queue")?;
        let outbox = deps.store.outbox();
        let tweets =
            Tweets::new(deps.store, deps.ids).with_idempotency_window(deps.idempotency_window);
        Ok(Self {
            tweets: Arc::new(tweets),
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
            let tweets = Arc::clone(&self.tweets);
            tokio::spawn(tasks::run_passes(
                "purged deleted accounts",
                move || {
                    let tweets = Arc::clone(&tweets);
                    async move { tweets.purge_pending().await }
                },
                Arc::clone(&purge),
                PURGE_SCHEDULE,
                purge_stop.clone(),
            ))
        };
        let consumer = {
            let handler = TweetsEvents {
                tweets: Arc::clone(&self.tweets),
                purge,
            };
            let (subscription, settings) = (self.subscription, self.consumer);
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                bus::consume("tweets", subscription, &handler, settings, shutdown).await
            })
        };
        let serving = grpc_server::Serving {
            ready: grpc_server::store_readiness(
                "tweets",
                {
                    let tweets = Arc::clone(&self.tweets);
                    move || {
                        let tweets = Arc::clone(&tweets);
                        async move { tweets.ping().await }
                    }
                },
                shutdown.clone(),
            )
            .await,
            events: self.bus.readiness(),
            dead_letters: Some(DeadLetterAdmin::server(Arc::clone(&self.bus), "tweets")),
        };
        let grpc = outbox::serve_with_relay(
            "tweets",
            grpc::server(self.tweets),
            listener,
            self.outbox,
            self.bus,
            serving,
            grpc_stop.clone(),
        );
        let result =
            tasks::serve_beside_consumer("tweets", grpc, &grpc_stop, consumer, &shutdown).await;
        purge_stop.cancel();
        purger.await.context("the purge panicked")?;
        result
    }
}

/// What the tweets service does with the events of its queue.
struct TweetsEvents {
    tweets: Arc<Tweets>,
    purge: Arc<Notify>,
}

#[async_trait]
impl EventHandler for TweetsEvents {
    async fn handle(&self, event: &Envelope) -> Result<(), HandlerError> {
        match &event.payload {
            Some(Payload::UserDeleted(deleted)) => {
                self.tweets.forget_user(deleted.user_id).await?;
                self.purge.notify_one();
            }
            Some(
                Payload::TweetCreated(_)
                | Payload::TweetDeleted(_)
                | Payload::TweetLiked(_)
                | Payload::TweetUnliked(_)
                | Payload::Retweeted(_)
                | Payload::Unretweeted(_),
            ) => self.tweets.settle(event).await?,
            _ => {}
        }
        Ok(())
    }

    async fn probe(&self) -> Result<(), HandlerError> {
        Ok(self.tweets.ping().await?)
    }
}
