//! The tweets domain: each operation validates, then stores, then answers.

use std::sync::Arc;

use twtr_common::page::InvalidLimit;
use twtr_common::store::StoreError;
use twtr_common::{ErrorCode, IdGenerator, Page, PageRequest, ServiceError, clock, events, id};
use twtr_proto::events::v1::envelope::Payload;
use twtr_proto::events::v1::{
    Retweeted, TweetCreated, TweetDeleted, TweetLiked, TweetUnliked, Unretweeted,
};

use crate::domain::{InvalidText, TweetText};
use crate::store::{Reaction, TweetRecord, TweetStore};

/// The most IDs one batch lookup may ask for.
pub const MAX_BATCH: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum TweetsError {
    #[error(transparent)]
    InvalidText(#[from] InvalidText),
    #[error(transparent)]
    InvalidLimit(#[from] InvalidLimit),
    #[error("author_id is required")]
    MissingAuthor,
    #[error("tweet not found")]
    NotFound,
    #[error("only its author can delete a tweet")]
    NotAuthor,
    #[error("user_id is required")]
    MissingUser,
    #[error("at most {MAX_BATCH} IDs per batch")]
    BatchTooLarge,
    #[error("storage failed")]
    Store(#[from] StoreError),
}

impl ServiceError for TweetsError {
    fn error_code(&self) -> ErrorCode {
        match self {
            Self::InvalidText(_)
            | Self::InvalidLimit(_)
            | Self::MissingAuthor
            | Self::BatchTooLarge
            | Self::MissingUser => ErrorCode::InvalidArgument,
            Self::NotFound => ErrorCode::NotFound,
            Self::NotAuthor => ErrorCode::PermissionDenied,
            Self::Store(_) => ErrorCode::Internal,
        }
    }
}

/// Something a user does to a tweet that is not theirs to change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Like,
    Unlike,
    Retweet,
    Unretweet,
}

pub struct Tweets {
    store: Arc<dyn TweetStore>,
    ids: Arc<IdGenerator>,
}

impl Tweets {
    pub fn new(store: Arc<dyn TweetStore>, ids: Arc<IdGenerator>) -> Self {
        Self { store, ids }
    }

    /// Posts `text` as `author_id`, who the caller (the gateway) has authenticated.
    pub async fn create_tweet(
        &self,
        author_id: u64,
        text: &str,
    ) -> Result<TweetRecord, TweetsError> {
        if author_id == 0 {
            return Err(TweetsError::MissingAuthor);
        }
        let text = TweetText::parse(text)?.into_inner();
        let id = self.ids.next_id();
        let tweet = TweetRecord {
            id,
            author_id,
            text: text.clone(),
            created_at_ms: id::millis_of(id),
            like_count: 0,
            retweet_count: 0,
        };
        let event = events::envelope(
            self.ids.next_id(),
            id,
            Payload::TweetCreated(TweetCreated {
                tweet_id: id,
                author_id,
                text,
                created_at: Some(clock::to_timestamp(tweet.created_at_ms)),
            }),
        );
        self.store.create(tweet.clone(), event).await?;
        tracing::info!(tweet_id = id, author_id, "tweet created");
        Ok(tweet)
    }

    pub async fn get_tweet(&self, id: u64) -> Result<TweetRecord, TweetsError> {
        self.store.get(id).await?.ok_or(TweetsError::NotFound)
    }

    /// The tweets that exist among `ids`, newest first.
    pub async fn batch_get_tweets(
        &self,
        mut ids: Vec<u64>,
    ) -> Result<Vec<TweetRecord>, TweetsError> {
        if ids.len() > MAX_BATCH {
            return Err(TweetsError::BatchTooLarge);
        }
        ids.sort_unstable_by(|a, b| b.cmp(a));
        ids.dedup();
        Ok(self.store.get_many(ids).await?)
    }

    pub async fn list_user_tweets(
        &self,
        author_id: u64,
        page: PageRequest,
    ) -> Result<Page<TweetRecord>, TweetsError> {
        Ok(self.store.list_by_author(author_id, page).await?)
    }

    /// Deletes `id` as `caller`, who must be its author.
    pub async fn delete_tweet(&self, caller: u64, id: u64) -> Result<(), TweetsError> {
        if caller == 0 {
            return Err(TweetsError::MissingUser);
        }
        let tweet = self.get_tweet(id).await?;
        if tweet.author_id != caller {
            return Err(TweetsError::NotAuthor);
        }
        let event = events::envelope(
            self.ids.next_id(),
            id,
            Payload::TweetDeleted(TweetDeleted {
                tweet_id: id,
                author_id: tweet.author_id,
            }),
        );
        if !self.store.delete(id, event).await? {
            return Err(TweetsError::NotFound);
        }
        tracing::info!(tweet_id = id, "tweet deleted");
        Ok(())
    }

    /// Likes, unlikes, retweets or unretweets `tweet` as `user`; idempotent. Returns whether
    /// this call changed anything.
    pub async fn act(&self, action: Action, user: u64, tweet: u64) -> Result<bool, TweetsError> {
        if user == 0 {
            return Err(TweetsError::MissingUser);
        }
        // The author rides along in the event, so consumers need not call back.
        let author_id = self.get_tweet(tweet).await?.author_id;
        let (tweet_id, user_id) = (tweet, user);
        let payload = match action {
            Action::Like => Payload::TweetLiked(TweetLiked {
                tweet_id,
                author_id,
                user_id,
            }),
            Action::Unlike => Payload::TweetUnliked(TweetUnliked {
                tweet_id,
                author_id,
                user_id,
            }),
            Action::Retweet => Payload::Retweeted(Retweeted {
                tweet_id,
                author_id,
                user_id,
            }),
            Action::Unretweet => Payload::Unretweeted(Unretweeted {
                tweet_id,
                author_id,
                user_id,
            }),
        };
        let event = events::envelope(self.ids.next_id(), tweet, payload);
        let (reaction, on) = match action {
            Action::Like => (Reaction::Like, true),
            Action::Unlike => (Reaction::Like, false),
            Action::Retweet => (Reaction::Retweet, true),
            Action::Unretweet => (Reaction::Retweet, false),
        };
        let outcome = self.store.react(reaction, user, tweet, on, event).await?;
        let changed = outcome.ok_or(TweetsError::NotFound)?;
        tracing::debug!(
            tweet_id = tweet,
            user_id = user,
            ?action,
            changed,
            "tweet action"
        );
        Ok(changed)
    }

    /// Whether `user` likes and retweeted each of `tweets`, in the order given.
    pub async fn viewer_flags(
        &self,
        user: u64,
        tweets: Vec<u64>,
    ) -> Result<Vec<(bool, bool)>, TweetsError> {
        if tweets.len() > MAX_BATCH {
            return Err(TweetsError::BatchTooLarge);
        }
        Ok(self.store.liked_and_retweeted(user, tweets).await?)
    }

    pub async fn public_timeline(
        &self,
        page: PageRequest,
    ) -> Result<Page<TweetRecord>, TweetsError> {
        Ok(self.store.public_timeline(page).await?)
    }

    pub async fn tweet_counts(&self, author_ids: Vec<u64>) -> Result<Vec<(u64, u64)>, TweetsError> {
        if author_ids.len() > MAX_BATCH {
            return Err(TweetsError::BatchTooLarge);
        }
        let counts = self.store.count_by_authors(author_ids.clone()).await?;
        Ok(author_ids.into_iter().zip(counts).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::EmbeddedTweetStore;

    fn tweets(dir: &std::path::Path) -> Tweets {
        let store = Arc::new(EmbeddedTweetStore::open(&dir.join("tweets.redb")).unwrap());
        Tweets::new(store, Arc::new(IdGenerator::new(1).unwrap()))
    }

    #[tokio::test]
    async fn a_posted_tweet_can_be_read_back_with_normalized_text() {
        let dir = tempfile::tempdir().unwrap();
        let tweets = tweets(dir.path());
        let posted = tweets.create_tweet(7, "  cafe\u{301}  ").await.unwrap();
        assert_eq!(posted.text, "café");
        assert_eq!(tweets.get_tweet(posted.id).await.unwrap(), posted);
        assert_eq!(tweets.tweet_counts(vec![7]).await.unwrap(), vec![(7, 1)]);
    }

    #[tokio::test]
    async fn invalid_tweets_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let tweets = tweets(dir.path());
        for text in ["", "   ", &"x".repeat(281)] {
            let err = tweets.create_tweet(7, text).await.unwrap_err();
            assert_eq!(err.error_code(), ErrorCode::InvalidArgument, "{text:?}");
        }
        assert!(matches!(
            tweets.create_tweet(0, "hi").await,
            Err(TweetsError::MissingAuthor)
        ));
        assert_eq!(tweets.tweet_counts(vec![7]).await.unwrap(), vec![(7, 0)]);
    }

    #[tokio::test]
    async fn batches_come_back_newest_first_without_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let tweets = tweets(dir.path());
        let a = tweets.create_tweet(7, "a").await.unwrap().id;
        let b = tweets.create_tweet(8, "b").await.unwrap().id;
        let got: Vec<u64> = tweets
            .batch_get_tweets(vec![a, b, a, 12345])
            .await
            .unwrap()
            .iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(got, vec![b, a]);
    }
}
