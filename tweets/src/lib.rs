//! The tweets service: tweets and per-author timelines (likes, retweets and the public
//! timeline arrive in later steps). Owns the `tweets` keyspace.
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

pub mod domain;
pub mod grpc;
pub mod service;
pub mod store;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use twtr_common::bus::EventBus;
use twtr_common::{IdGenerator, outbox};

pub use service::{Tweets, TweetsError};
pub use store::{CqlTweetStore, EmbeddedTweetStore, Reaction, TweetStore};

/// Everything the tweets service needs, built by the binary from configuration.
pub struct TweetsDeps {
    pub store: Arc<dyn TweetStore>,
    pub bus: Arc<dyn EventBus>,
    pub ids: Arc<IdGenerator>,
}

/// Serves the tweets service on `listener` until `shutdown`, then drains requests and flushes
/// the outbox.
pub async fn serve(
    deps: TweetsDeps,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let outbox = deps.store.outbox();
    let tweets = Tweets::new(deps.store, deps.ids);
    outbox::serve_with_relay(
        "tweets",
        grpc::server(tweets),
        listener,
        outbox,
        deps.bus,
        shutdown,
    )
    .await
}
