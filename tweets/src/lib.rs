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
//! - [`words`]: how text is cut into the words and `#tags` the index holds, and how a search
//!   query and a tag are read.
//!
//! # How data flows
//!
//! `CreateTweet` validates the text, then stores the tweet, its entry in the author's timeline,
//! the author's new tweet count and a `TweetCreated` event in one transaction. The outbox relay
//! publishes the event; the feeds service fans it out to followers' home feeds.
//!
//! The service consumes one queue of its own, `tweets`: the users service's `UserDeleted` (the
//! account's tweets, likes and retweets are then removed by a background purge, in batches, so a
//! prolific account never stalls the queue); its own `TweetCreated` and `TweetDeleted`, which
//! feed the index behind hashtags, search and trends (a projection, like the feeds service's,
//! kept out of the write path: see `store::cql::index`); and, on a backend whose writes are not
//! one transaction (CQL), its other own events, to finish a write whose process died half-way.
//! A background pass folds the authors' count ops, which CQL creates and deletions write beside
//! their rows, into the counts' bases ([`TweetStore::fold_counts`]).

pub mod domain;
pub mod grpc;
pub mod service;
pub mod store;
pub mod words;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use twtr_common::IdGenerator;
use twtr_common::bus::{ConsumerSettings, EventBus, EventHandler, HandlerError, QueueSpec};
use twtr_common::events::EventKind;
use twtr_common::purge;
use twtr_common::runtime::{Consumer, Pass, Schedule, ServiceRuntime};
use twtr_common::tokens::TokenVerifier;
use twtr_proto::events::v1::Envelope;
use twtr_proto::events::v1::envelope::Payload;
use twtr_proto::tweets::v1::tweets_service_server::TweetsServiceServer;

pub use service::{DEFAULT_IDEMPOTENCY_WINDOW, Tweets, TweetsError};
pub use store::{CqlTweetStore, EmbeddedTweetStore, Reaction, SCHEMA, TweetStore};

/// The tweets service's queue: `UserDeleted`, its own `TweetCreated` and `TweetDeleted` (which
/// feed the index of hashtags, search and trends), and with `settles` (a store that finishes its
/// writes from its own events, [`TweetStore::settles_events`]) every event of its own.
pub fn queue(settings: &ConsumerSettings, settles: bool) -> QueueSpec {
    let mut kinds = vec![
        EventKind::UserDeleted,
        EventKind::TweetCreated,
        EventKind::TweetDeleted,
    ];
    if settles {
        kinds.extend([
            EventKind::TweetLiked,
            EventKind::TweetUnliked,
            EventKind::Retweeted,
            EventKind::Unretweeted,
        ]);
    }
    settings.queue("tweets", &kinds)
}

/// Everything the tweets service needs, built by the binary from configuration.
pub struct TweetsDeps {
    pub store: Arc<dyn TweetStore>,
    pub bus: Arc<dyn EventBus>,
    pub ids: Arc<IdGenerator>,
    pub consumer: ConsumerSettings,
    /// How long an `Idempotency-Key` keeps returning its first tweet.
    pub idempotency_window: Duration,
    /// Verifies the tokens of calls that act as a user (see `twtr_common::auth`).
    pub verifier: TokenVerifier,
}

/// The tweets service, ready to run, its queue declared (events published from now on reach
/// it): its API, the relay of its outbox, its consumer and the purge of deleted accounts.
pub async fn runtime(
    deps: TweetsDeps,
) -> anyhow::Result<ServiceRuntime<TweetsServiceServer<grpc::TweetsGrpc>>> {
    let queue = queue(&deps.consumer, deps.store.settles_events());
    let outbox = deps.store.outbox();
    let tweets = Arc::new(
        Tweets::new(deps.store, deps.ids).with_idempotency_window(deps.idempotency_window),
    );
    let purge = Arc::new(Notify::new());
    let handler = Arc::new(TweetsEvents {
        tweets: Arc::clone(&tweets),
        purge: Arc::clone(&purge),
    });
    let consumer = Consumer::subscribe(deps.bus.as_ref(), queue, handler, deps.consumer).await?;
    let purge = purge::pass(Arc::clone(&tweets), purge, "purged deleted accounts");
    let fold = fold_pass(Arc::clone(&tweets));
    let pinged = Arc::clone(&tweets);
    let ping = move || {
        let tweets = Arc::clone(&pinged);
        async move { tweets.ping().await }
    };
    Ok(
        ServiceRuntime::new("tweets", grpc::server(tweets), deps.bus, ping)
            .verifying(deps.verifier)
            .relaying(outbox)
            .consuming(consumer)
            .with_pass(purge)
            .with_pass(fold),
    )
}

/// When the pass that folds count ops runs: every 30 s (ops fold once a minute old, see
/// `store::cql::FOLD_AFTER`), and 5 s after a failure.
const FOLD_SCHEDULE: Schedule = Schedule {
    poll: Duration::from_secs(30),
    retry: Duration::from_secs(5),
};

/// The background pass of [`Tweets::fold_counts`].
fn fold_pass(tweets: Arc<Tweets>) -> Pass {
    Pass {
        done: "folded count ops",
        run: Box::new(move || {
            let tweets = Arc::clone(&tweets);
            Box::pin(async move { Ok(tweets.fold_counts().await?) })
        }),
        wake: Arc::new(Notify::new()),
        schedule: FOLD_SCHEDULE,
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
            Some(Payload::TweetCreated(_) | Payload::TweetDeleted(_)) => {
                // Settled first: a tweet whose author went while it was stored is deleted
                // there, and then stays out of the index.
                self.tweets.settle(event).await?;
                self.tweets.index_event(event).await?;
            }
            Some(
                Payload::TweetLiked(_)
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
