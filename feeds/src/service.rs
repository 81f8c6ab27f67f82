//! The feeds domain: apply events to feeds, and read them.

use std::sync::Arc;

use async_trait::async_trait;
use twtr_common::bus::{EventHandler, HandlerError};
use twtr_common::page::InvalidLimit;
use twtr_common::store::StoreError;
use twtr_common::{ErrorCode, Page, PageRequest, ServiceError};
use twtr_proto::events::v1::envelope::Payload;
use twtr_proto::events::v1::{Envelope, TweetCreated, UserFollowed, UserUnfollowed};

use crate::store::{FeedEntry, FeedStore};

#[derive(Debug, thiserror::Error)]
pub enum FeedsError {
    #[error(transparent)]
    InvalidLimit(#[from] InvalidLimit),
    #[error("user_id is required")]
    MissingUser,
    #[error("storage failed")]
    Store(#[from] StoreError),
}

impl ServiceError for FeedsError {
    fn error_code(&self) -> ErrorCode {
        match self {
            Self::InvalidLimit(_) | Self::MissingUser => ErrorCode::InvalidArgument,
            Self::Store(_) => ErrorCode::Internal,
        }
    }
}

pub struct Feeds {
    store: Arc<dyn FeedStore>,
}

impl Feeds {
    pub fn new(store: Arc<dyn FeedStore>) -> Self {
        Self { store }
    }

    pub async fn feed(&self, user: u64, page: PageRequest) -> Result<Page<FeedEntry>, FeedsError> {
        if user == 0 {
            return Err(FeedsError::MissingUser);
        }
        Ok(self.store.feed(user, page).await?)
    }

    /// Fan-out on write: the tweet goes into the author's own feed and every follower's.
    ///
    /// The tweet is recorded as the author's recent tweet *before* the followers are read, and
    /// a follow is recorded *before* the author's recent tweets are read (see
    /// [`Feeds::on_user_followed`]). So when a tweet and a follow are handled concurrently, at
    /// least one of the two handlers sees the other's write, and the follower gets the tweet.
    async fn on_tweet_created(&self, event: &TweetCreated) -> Result<(), StoreError> {
        let entry = FeedEntry {
            tweet_id: event.tweet_id,
            author_id: event.author_id,
            retweeted_by: None,
        };
        self.store
            .record_tweet(event.author_id, event.tweet_id)
            .await?;
        let mut readers = self.store.followers(event.author_id).await?;
        readers.push(event.author_id);
        let count = readers.len();
        self.store.fan_out(readers, entry).await?;
        tracing::debug!(
            tweet_id = event.tweet_id,
            readers = count,
            "tweet fanned out"
        );
        Ok(())
    }

    /// Following someone backfills their recent tweets into the follower's feed.
    async fn on_user_followed(&self, event: &UserFollowed) -> Result<(), StoreError> {
        let (follower, author) = (event.follower_id, event.followee_id);
        self.store.add_follower(author, follower).await?;
        let entries = self
            .store
            .recent_tweets(author)
            .await?
            .into_iter()
            .map(|tweet_id| FeedEntry {
                tweet_id,
                author_id: author,
                retweeted_by: None,
            })
            .collect();
        self.store.insert_entries(follower, entries).await
    }

    /// Unfollowing someone removes their tweets from the follower's feed.
    async fn on_user_unfollowed(&self, event: &UserUnfollowed) -> Result<(), StoreError> {
        let (follower, author) = (event.follower_id, event.followee_id);
        self.store.remove_follower(author, follower).await?;
        self.store.remove_author(follower, author).await
    }
}

#[async_trait]
impl EventHandler for Feeds {
    async fn handle(&self, event: &Envelope) -> Result<(), HandlerError> {
        match &event.payload {
            Some(Payload::TweetCreated(e)) => self.on_tweet_created(e).await?,
            Some(Payload::UserFollowed(e)) => self.on_user_followed(e).await?,
            Some(Payload::UserUnfollowed(e)) => self.on_user_unfollowed(e).await?,
            // Events this service is not bound to (or a newer publisher's payloads) need no work.
            _ => tracing::debug!(event_type = %event.r#type, "ignoring event"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use twtr_common::Limit;

    use super::*;
    use crate::store::{EmbeddedFeedStore, FeedLimits};

    fn tweet(tweet_id: u64, author_id: u64) -> Envelope {
        let payload = Payload::TweetCreated(TweetCreated {
            tweet_id,
            author_id,
            ..Default::default()
        });
        twtr_common::events::envelope(tweet_id + 1000, tweet_id, payload)
    }

    fn follow(follower_id: u64, followee_id: u64) -> Envelope {
        let payload = Payload::UserFollowed(UserFollowed {
            follower_id,
            followee_id,
        });
        twtr_common::events::envelope(1, follower_id, payload)
    }

    fn unfollow(follower_id: u64, followee_id: u64) -> Envelope {
        let payload = Payload::UserUnfollowed(UserUnfollowed {
            follower_id,
            followee_id,
        });
        twtr_common::events::envelope(2, follower_id, payload)
    }

    async fn feed_ids(feeds: &Feeds, user: u64) -> Vec<u64> {
        let page = feeds
            .feed(user, PageRequest::first(Limit::DEFAULT))
            .await
            .unwrap();
        page.items.iter().map(|e| e.tweet_id).collect()
    }

    fn feeds(dir: &std::path::Path) -> Feeds {
        let store =
            EmbeddedFeedStore::open(&dir.join("feeds.redb"), FeedLimits::default()).unwrap();
        Feeds::new(Arc::new(store))
    }

    /// Applies `events` in order, each delivered twice, as at-least-once delivery may.
    async fn apply(feeds: &Feeds, events: &[Envelope]) {
        for event in events {
            feeds.handle(event).await.unwrap();
            feeds.handle(event).await.unwrap();
        }
    }

    #[tokio::test]
    async fn follow_then_tweet_and_tweet_then_follow_end_the_same() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (first, second) = (feeds(a.path()), feeds(b.path()));
        apply(&first, &[follow(1, 2), tweet(50, 2)]).await;
        apply(&second, &[tweet(50, 2), follow(1, 2)]).await;
        assert_eq!(feed_ids(&first, 1).await, vec![50]);
        assert_eq!(feed_ids(&second, 1).await, vec![50]);
        // The author sees their own tweet.
        assert_eq!(feed_ids(&first, 2).await, vec![50]);
    }

    #[tokio::test]
    async fn only_followers_get_a_tweet() {
        let dir = tempfile::tempdir().unwrap();
        let feeds = feeds(dir.path());
        apply(&feeds, &[follow(1, 2), tweet(50, 2), tweet(51, 3)]).await;
        assert_eq!(feed_ids(&feeds, 1).await, vec![50]);
        assert!(feed_ids(&feeds, 4).await.is_empty());
    }

    #[tokio::test]
    async fn unfollow_removes_the_authors_tweets() {
        let dir = tempfile::tempdir().unwrap();
        let feeds = feeds(dir.path());
        apply(
            &feeds,
            &[
                follow(1, 2),
                follow(1, 3),
                tweet(50, 2),
                tweet(51, 3),
                unfollow(1, 2),
            ],
        )
        .await;
        assert_eq!(feed_ids(&feeds, 1).await, vec![51]);
        apply(&feeds, &[tweet(52, 2)]).await;
        assert_eq!(
            feed_ids(&feeds, 1).await,
            vec![51],
            "no new tweets after unfollowing"
        );
    }
}
