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
//! - [`live`]: the live home feed (`WatchFeed`): each replica's streams, woken by the notices
//!   fan-out broadcasts, reading the feeds' arrival logs with a resumable cursor.
//! - [`grpc`]: the thin tonic adapter for `twtr.feeds.v1.FeedsService`.
//!
//! # How data flows
//!
//! The service consumes, from its own durable queue, `TweetCreated`, `TweetDeleted`,
//! `Retweeted`, `Unretweeted`, `UserFollowed`, `UserUnfollowed`, `UserDeleted`, and (for
//! notifications only) `TweetLiked` and `TweetUnliked`. It keeps its
//! own projections (the follow graph with a version per edge, deleted tweets, standing retweets
//! with a version per pair, each author's recent tweets and retweets) and writes a feed entry
//! only as they imply it ([`service::Feeds`] says exactly what a feed holds): a new tweet is
//! fanned out on write in chunks, following backfills, unfollowing and deleting remove, a
//! retweet reaches the retweeter's followers once. Every handler is idempotent and re-checks
//! what a concurrent one could change, so feeds converge whatever the delivery order; a
//! delivery is acknowledged only after its effect is stored.
//!
//! Beside the feeds, the same events keep each user's notifications (a mention, a new follower,
//! a like or a retweet of their tweet): one per (recipient, kind, actor, tweet), at the highest
//! version its events carry, so the undoing event (unfollow, unlike, unretweet, the tweet's
//! deletion) takes it away whatever the delivery order. See [`store::FeedStore::set_notification`].

pub mod grpc;
pub mod live;
pub mod service;
pub mod store;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use twtr_common::bus::{ConsumerSettings, EventBus, QueueSpec};
use twtr_common::events::EventKind;
use twtr_common::runtime::{Consumer, ServiceRuntime};
use twtr_common::tokens::TokenVerifier;
use twtr_proto::feeds::v1::feeds_service_server::FeedsServiceServer;

use crate::live::{Live, LiveSettings};

pub use service::{Feeds, FeedsError};
pub use store::{
    CqlFeedStore, EmbeddedFeedStore, FeedLimits, FeedStore, Notification, NotificationKind, SCHEMA,
};

/// Followers above which an author is a celebrity, unless configured.
pub const DEFAULT_CELEBRITY_THRESHOLD: usize = 10_000;

/// The feeds service's queue and the events it needs.
pub fn queue(settings: &ConsumerSettings) -> QueueSpec {
    settings.queue(
        "feeds",
        &[
            EventKind::TweetCreated,
            EventKind::TweetDeleted,
            EventKind::Retweeted,
            EventKind::Unretweeted,
            EventKind::UserFollowed,
            EventKind::UserUnfollowed,
            EventKind::UserDeleted,
            // For notifications only: the liked tweet's author is told.
            EventKind::TweetLiked,
            EventKind::TweetUnliked,
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
    /// Verifies the tokens of calls that act as a user (see `twtr_common::auth`).
    pub verifier: TokenVerifier,
    /// How the live feed (`WatchFeed`) reads and waits.
    pub live: LiveSettings,
}

/// The feeds service, ready to run, its queue declared (events published from now on reach
/// it): `GetFeed`, `WatchFeed`, and the consumer that keeps the feeds. It publishes no events;
/// its fan-out broadcasts notices (`live::FeedArrivals`) that every replica's live feeds hear.
pub async fn runtime(
    deps: FeedsDeps,
) -> anyhow::Result<ServiceRuntime<FeedsServiceServer<grpc::FeedsGrpc>>> {
    let feeds = Arc::new(
        Feeds::new(Arc::clone(&deps.store))
            .with_celebrity_threshold(deps.celebrity_threshold)
            .announcing(Arc::clone(&deps.bus)),
    );
    let live = Arc::new(Live::new(deps.store, deps.live, CancellationToken::new()));
    let handler = Arc::clone(&feeds);
    let consumer = Consumer::subscribe(
        deps.bus.as_ref(),
        queue(&deps.consumer),
        handler,
        deps.consumer,
    )
    .await?;
    let pinged = Arc::clone(&feeds);
    let ping = move || {
        let feeds = Arc::clone(&pinged);
        async move { feeds.ping().await }
    };
    let listening = Arc::clone(&live);
    let bus = Arc::clone(&deps.bus);
    Ok(
        ServiceRuntime::new("feeds", grpc::server(feeds, live), deps.bus, ping)
            .verifying(deps.verifier)
            .consuming(consumer)
            .with_task(move |shutdown| async move {
                tokio::select! {
                    () = Arc::clone(&listening).listen(bus) => shutdown.cancelled().await,
                    () = shutdown.cancelled() => {}
                }
                // Streams end first, so the server can drain.
                listening.stop();
            }),
    )
}
