//! The tweets domain: each operation validates, then stores, then answers.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use twtr_common::page::InvalidLimit;
use twtr_common::purge::{self, Purge};
use twtr_common::store::{PendingPurge, StoreError};
use twtr_common::{
    ErrorCode, IdGenerator, Limit, Page, PageRequest, ServiceError, clock, events, id,
};
use twtr_proto::events::v1::Envelope;
use twtr_proto::events::v1::envelope::Payload;
use twtr_proto::events::v1::{
    Retweeted, TweetCreated, TweetDeleted, TweetLiked, TweetUnliked, Unretweeted,
};
use twtr_proto::tweets::v1::Mention;

use crate::domain::{IdempotencyKey, InvalidKey, InvalidText, TweetText};
use crate::store::{KeyClaim, Reaction, TweetRecord, TweetStore};
use crate::words::{self, InvalidQuery, Query};

/// The most IDs one batch lookup may ask for (shared with every caller).
pub use twtr_common::page::MAX_BATCH;
/// Users a tweet may mention; the gateway resolves at most this many names.
pub use twtr_common::words::MAX_MENTIONS;

/// The users a tweet's mentions notify: each mentioned user once, never its author.
pub(crate) fn notified(author_id: u64, mentions: &[Mention]) -> Vec<u64> {
    let mut ids: Vec<u64> = Vec::new();
    for m in mentions {
        if m.user_id != author_id && !ids.contains(&m.user_id) {
            ids.push(m.user_id);
        }
    }
    ids
}

/// How long an idempotency key keeps returning its first tweet, unless configured.
pub const DEFAULT_IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// How many tweets (or likes, or retweets) of a deleted account one purge step removes before
/// it reads the next batch.
pub const PURGE_BATCH: usize = 100;
/// The most index entries (postings) one tag page or search examines: a search of several
/// terms walks one term's postings and keeps those holding the others, so a page may need many;
/// past this many it answers with what it found and a cursor to go on from.
pub const SEARCH_BUDGET: usize = 1_000;
/// How many postings a search of several terms reads at a time.
const SEARCH_BATCH: usize = 200;
/// Trends count the tag uses of the tweets of the last this many minutes, the current one
/// included.
pub const TRENDS_WINDOW_MINUTES: i64 = 60;
/// At most this many tag uses are counted per minute (a bound on one trends read; past it,
/// counts are of a sample of that minute).
pub const TREND_USES_PER_MINUTE: usize = 10_000;

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
    #[error(
        "a tweet mentions at most {MAX_MENTIONS} users, each with an ID and a username its text \
         names as @username"
    )]
    InvalidMentions,
    #[error("only its author can delete a tweet")]
    NotAuthor,
    #[error("user_id is required")]
    MissingUser,
    #[error("at most {MAX_BATCH} IDs per batch")]
    BatchTooLarge,
    #[error(transparent)]
    InvalidKey(#[from] InvalidKey),
    #[error("this Idempotency-Key was used for a different tweet")]
    KeyReused,
    #[error("the account is deleted")]
    AccountGone,
    #[error(transparent)]
    InvalidQuery(#[from] InvalidQuery),
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
            | Self::InvalidMentions
            | Self::MissingUser
            | Self::InvalidKey(_)
            | Self::KeyReused
            | Self::InvalidQuery(_) => ErrorCode::InvalidArgument,
            Self::NotFound | Self::AccountGone => ErrorCode::NotFound,
            Self::NotAuthor => ErrorCode::PermissionDenied,
            Self::Store(err) => err.error_code(),
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

/// Whether a create is a post's first attempt (its tweet ID minted in this call) or a repeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    Fresh,
    Again,
}

pub struct Tweets {
    store: Arc<dyn TweetStore>,
    ids: Arc<IdGenerator>,
    idempotency_window: Duration,
    /// The most postings one tag page or search examines ([`SEARCH_BUDGET`] unless set).
    search_budget: usize,
}

impl Tweets {
    /// Whether this service's store answers (readiness, and its consumer's probe).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.store.ping().await
    }

    /// Folds the store's pending count ops into their counts ([`TweetStore::fold_counts`]):
    /// the service's background pass.
    pub async fn fold_counts(&self) -> Result<usize, StoreError> {
        self.store.fold_counts().await
    }

    pub fn new(store: Arc<dyn TweetStore>, ids: Arc<IdGenerator>) -> Self {
        Self {
            store,
            ids,
            idempotency_window: DEFAULT_IDEMPOTENCY_WINDOW,
            search_budget: SEARCH_BUDGET,
        }
    }

    /// How many postings one tag page or search examines at most (at least the page's
    /// `limit + 1` whatever this says, so a tag page is always whole).
    pub fn with_search_budget(mut self, postings: usize) -> Self {
        self.search_budget = postings.max(1);
        self
    }

    /// How long an idempotency key keeps returning its first tweet.
    pub fn with_idempotency_window(mut self, window: Duration) -> Self {
        self.idempotency_window = window;
        self
    }

    /// Posts `text` as `author_id`, who the caller (the gateway) has authenticated, mentioning
    /// `mentions` (the users its `@names` resolved to, at most [`MAX_MENTIONS`]). With `key`,
    /// a repeat of the request (same author, key and text) within the idempotency window
    /// returns the first tweet and creates nothing, also when the first attempt's caller never
    /// saw its answer; reusing the key for another text is refused.
    pub async fn create_tweet(
        &self,
        author_id: u64,
        text: &str,
        key: Option<&str>,
        mentions: Vec<Mention>,
    ) -> Result<TweetRecord, TweetsError> {
        if author_id == 0 {
            return Err(TweetsError::MissingAuthor);
        }
        if mentions.len() > MAX_MENTIONS
            || mentions
                .iter()
                .any(|m| m.user_id == 0 || m.username.is_empty())
        {
            return Err(TweetsError::InvalidMentions);
        }
        let text = TweetText::parse(text)?.into_inner();
        // A mention links a name the text says: a caller cannot attach anyone else.
        let named = twtr_common::words::mentioned_names(&text);
        if mentions
            .iter()
            .any(|m| !named.contains(&m.username.to_ascii_lowercase()))
        {
            return Err(TweetsError::InvalidMentions);
        }
        let key = key.map(IdempotencyKey::parse).transpose()?;
        let id = self.ids.next_id();
        if let Some(key) = key {
            let window = self.idempotency_window;
            match self
                .store
                .claim_key(author_id, key.as_str(), id, &text, window)
                .await?
            {
                KeyClaim::Won => {}
                KeyClaim::Held { text: first, .. } if first != text => {
                    return Err(TweetsError::KeyReused);
                }
                KeyClaim::Held { tweet_id, .. } => {
                    // The first attempt may have died before storing the tweet, or be storing
                    // it now: create it again (a no-op if it was), then answer as it.
                    self.store_tweet(tweet_id, author_id, text, mentions, Attempt::Again)
                        .await?;
                    tracing::info!(tweet_id, author_id, "repeated post answered by its key");
                    return self.get_tweet(tweet_id).await;
                }
            }
        }
        let tweet = self
            .store_tweet(id, author_id, text, mentions, Attempt::Fresh)
            .await?;
        tracing::info!(tweet_id = id, author_id, "tweet created");
        Ok(tweet)
    }

    /// Stores the tweet `id` with its `TweetCreated` event: `Fresh`, an ID minted in this call;
    /// `Again`, a no-op when the tweet was stored.
    async fn store_tweet(
        &self,
        id: u64,
        author_id: u64,
        text: String,
        mentions: Vec<Mention>,
        attempt: Attempt,
    ) -> Result<TweetRecord, TweetsError> {
        let tweet = TweetRecord {
            id,
            author_id,
            text: text.clone(),
            created_at_ms: id::millis_of(id),
            like_count: 0,
            retweet_count: 0,
            mentions,
        };
        let event = events::envelope(
            self.ids.next_id(),
            id,
            Payload::TweetCreated(TweetCreated {
                tweet_id: id,
                author_id,
                text,
                created_at: Some(clock::to_timestamp(tweet.created_at_ms)),
                mentioned_user_ids: notified(author_id, &tweet.mentions),
            }),
        );
        let stored = match attempt {
            Attempt::Fresh => self.store.create(tweet.clone(), event).await?,
            Attempt::Again => self.store.create_again(tweet.clone(), event).await?,
        };
        if !stored {
            return Err(TweetsError::AccountGone);
        }
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
        let tweet = self.tweet_to_change(id).await?;
        if tweet.author_id != caller {
            return Err(TweetsError::NotAuthor);
        }
        if !self.remove_tweet(&tweet).await? {
            return Err(TweetsError::NotFound);
        }
        tracing::info!(tweet_id = id, "tweet deleted");
        Ok(())
    }

    /// Deletes `tweet` with its `TweetDeleted` event; `false` when it
    /// was gone already.
    async fn remove_tweet(&self, tweet: &TweetRecord) -> Result<bool, TweetsError> {
        let id = tweet.id;
        let event = events::envelope(
            self.ids.next_id(),
            id,
            Payload::TweetDeleted(TweetDeleted {
                tweet_id: id,
                author_id: tweet.author_id,
                mentioned_user_ids: notified(tweet.author_id, &tweet.mentions),
            }),
        );
        Ok(self.store.delete(id, event).await?)
    }

    /// Likes, unlikes, retweets or unretweets `tweet` as `user`; idempotent. Returns whether
    /// this call changed anything.
    pub async fn act(&self, action: Action, user: u64, tweet: u64) -> Result<bool, TweetsError> {
        if user == 0 {
            return Err(TweetsError::MissingUser);
        }
        if self.store.author_gone(user).await? {
            return Err(TweetsError::AccountGone);
        }
        self.react(action, user, tweet).await
    }

    /// The tweet `id`, for a change of it. When it reads as gone, its deletion may have been
    /// cut short by a crash (decided, but not announced or counted): the store finishes it
    /// before the answer says the tweet is gone, so a repeated delete, or the next like, does.
    async fn tweet_to_change(&self, id: u64) -> Result<TweetRecord, TweetsError> {
        match self.store.get(id).await? {
            Some(tweet) => Ok(tweet),
            None => {
                self.store.finish_deletion(id).await?;
                Err(TweetsError::NotFound)
            }
        }
    }

    /// [`Tweets::act`] without the check that the account exists, for the purge of one that
    /// does not.
    async fn react(&self, action: Action, user: u64, tweet: u64) -> Result<bool, TweetsError> {
        // The author rides along in the event, so consumers need not call back.
        let author_id = self.tweet_to_change(tweet).await?.author_id;
        let (tweet_id, user_id) = (tweet, user);
        let payload = match action {
            Action::Like => Payload::TweetLiked(TweetLiked {
                tweet_id,
                author_id,
                user_id,
                version: 0, // the store stamps the pair's version
            }),
            Action::Unlike => Payload::TweetUnliked(TweetUnliked {
                tweet_id,
                author_id,
                user_id,
                version: 0, // the store stamps the pair's version
            }),
            Action::Retweet => Payload::Retweeted(Retweeted {
                tweet_id,
                author_id,
                user_id,
                version: 0, // the store stamps the pair's version
            }),
            Action::Unretweet => Payload::Unretweeted(Unretweeted {
                tweet_id,
                author_id,
                user_id,
                version: 0, // the store stamps the pair's version
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

    /// The users service deleted `user`'s account (its `UserDeleted` event): from now on they
    /// can neither post nor react, and their tweets, likes and retweets are due for
    /// [`Tweets::purge_pending`]. Idempotent.
    pub async fn forget_user(&self, user: u64) -> Result<(), TweetsError> {
        self.store.forget_author(user).await?;
        tracing::info!(
            user_id = user,
            "account deleted; its tweets are due for removal"
        );
        Ok(())
    }

    /// Removes what deleted accounts left (their tweets, likes and retweets, each with its
    /// event and counts), until no purge is pending (see [`twtr_common::purge`]). Returns how
    /// many things it removed. Safe to run in several replicas at once: every removal is
    /// decided once by the store.
    pub async fn purge_pending(&self) -> Result<usize, TweetsError> {
        purge::purge_pending(self).await
    }

    /// One of this service's own events, consumed back: finishes the write behind it if its
    /// process died half-way (on backends that need it), and removes a tweet whose author's
    /// account went while it was being stored.
    pub async fn settle(&self, event: &Envelope) -> Result<(), TweetsError> {
        self.store.settle(event).await?;
        if let Some(Payload::TweetCreated(created)) = &event.payload
            && self.store.author_gone(created.author_id).await?
            && let Some(tweet) = self.store.get(created.tweet_id).await?
            && self.remove_tweet(&tweet).await?
        {
            tracing::info!(
                tweet_id = created.tweet_id,
                "removed a tweet stored as its author's account went"
            );
        }
        Ok(())
    }

    /// Whether the store needs this service's own events back ([`Tweets::settle`]).
    pub fn settles_events(&self) -> bool {
        self.store.settles_events()
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

    /// One of this service's own events, consumed back, kept in the index: a `TweetCreated`
    /// indexes the tweet under the terms of its text, a `TweetDeleted` removes it. Idempotent,
    /// and in any order the two arrive in the tweet ends up indexed only while it is live.
    pub async fn index_event(&self, event: &Envelope) -> Result<(), TweetsError> {
        match &event.payload {
            Some(Payload::TweetCreated(created)) => {
                let terms = words::index_terms(&created.text);
                self.store.index(created.tweet_id, terms).await?;
            }
            Some(Payload::TweetDeleted(deleted)) => self.store.unindex(deleted.tweet_id).await?,
            _ => {}
        }
        Ok(())
    }

    /// One page of the tweets tagged `tag` (`rust`, `#rust`), newest first.
    pub async fn tag_tweets(
        &self,
        tag: &str,
        page: PageRequest,
    ) -> Result<Page<TweetRecord>, TweetsError> {
        let tag = words::parse_tag(tag)?;
        self.walk(std::slice::from_ref(&tag), &tag, page).await
    }

    /// One page of the tweets holding every term of `query`, newest first; short, with a
    /// cursor, when [`SEARCH_BUDGET`] postings were examined first.
    pub async fn search(
        &self,
        query: &str,
        page: PageRequest,
    ) -> Result<Page<TweetRecord>, TweetsError> {
        let query = Query::parse(query)?;
        self.walk(query.terms(), query.driver(), page).await
    }

    /// Walks `driver`'s postings in the direction of `page`, keeping those that hold every one
    /// of `terms`, until the page is full, the postings end or [`SEARCH_BUDGET`] are examined.
    /// `next` is the last item of a full page, or the last posting examined when the budget ran
    /// out first (a backward page may then be short, or empty). Polling (`since`) returns what
    /// the budget found, without a cursor, as every poll does.
    async fn walk(
        &self,
        terms: &[String],
        driver: &str,
        page: PageRequest,
    ) -> Result<Page<TweetRecord>, TweetsError> {
        let limit = page.limit.get();
        let forward = page.since.is_some();
        let (mut before, mut since) = (page.before, page.since);
        let mut matched: Vec<u64> = Vec::new();
        let (mut examined, mut last_examined, mut exhausted) = (0, None, false);
        let budget = self.search_budget.max(limit + 1);
        while matched.len() <= limit && examined < budget {
            let want = if terms.len() == 1 {
                limit + 1 - matched.len()
            } else {
                SEARCH_BATCH.min(budget - examined)
            };
            let batch = self.store.postings(driver, before, since, want).await?;
            for posting in &batch {
                examined += 1;
                last_examined = Some(posting.tweet_id);
                if terms.iter().all(|term| posting.terms.contains(term)) {
                    matched.push(posting.tweet_id);
                    if matched.len() > limit {
                        break;
                    }
                }
            }
            if batch.len() < want {
                exhausted = true;
                break;
            }
            if forward {
                since = last_examined;
            } else {
                before = last_examined;
            }
        }
        let full = matched.len() > limit;
        matched.truncate(limit);
        let next = if forward {
            matched.reverse();
            None
        } else if full {
            matched.last().copied()
        } else if !exhausted {
            last_examined
        } else {
            None
        };
        // Newest first; a tweet deleted since it was indexed (its event not yet handled) is
        // left out.
        let items = self.store.get_many(matched).await?;
        Ok(Page { items, next })
    }

    /// The `limit` tags most used over the last [`TRENDS_WINDOW_MINUTES`], with how many
    /// tweets used each, most first (ties by tag). Tags without their `#`.
    pub async fn trends(&self, limit: Limit) -> Result<Vec<(String, u64)>, TweetsError> {
        let now = clock::now_millis() / 60_000;
        let from = now - (TRENDS_WINDOW_MINUTES - 1);
        let mut uses = self
            .store
            .tag_uses(from, now, TREND_USES_PER_MINUTE)
            .await?;
        uses.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        uses.truncate(limit.get());
        Ok(uses
            .into_iter()
            .map(|(tag, count)| (tag.trim_start_matches('#').to_owned(), count))
            .collect())
    }

    pub async fn tweet_counts(&self, author_ids: Vec<u64>) -> Result<Vec<(u64, u64)>, TweetsError> {
        if author_ids.len() > MAX_BATCH {
            return Err(TweetsError::BatchTooLarge);
        }
        let counts = self.store.count_by_authors(author_ids.clone()).await?;
        Ok(author_ids.into_iter().zip(counts).collect())
    }
}

#[async_trait]
impl Purge for Tweets {
    type Error = TweetsError;

    async fn pending_purges(&self, max: usize) -> Result<Vec<PendingPurge>, StoreError> {
        self.store.pending_purges(max).await
    }

    async fn purge_done(&self, purge: PendingPurge) -> Result<(), StoreError> {
        self.store.purge_done(purge).await
    }

    /// `user`'s tweets, then their likes and retweets, [`PURGE_BATCH`] at a time.
    async fn purge(&self, user: u64) -> Result<usize, TweetsError> {
        let mut removed = 0;
        let batch = Limit::parse(Some(Limit::MAX)).map_err(TweetsError::from)?;
        let mut page = PageRequest::first(batch);
        loop {
            let tweets = self.store.list_by_author(user, page).await?;
            for tweet in &tweets.items {
                removed += usize::from(self.remove_tweet(tweet).await?);
            }
            match tweets.next {
                Some(next) => page.before = Some(next),
                None => break,
            }
            tokio::task::yield_now().await;
        }
        for (reaction, undo) in [
            (Reaction::Like, Action::Unlike),
            (Reaction::Retweet, Action::Unretweet),
        ] {
            let mut before = None;
            loop {
                let batch = self
                    .store
                    .reacted(reaction, user, before, PURGE_BATCH)
                    .await?;
                for tweet in batch.tweets {
                    match self.react(undo, user, tweet).await {
                        Ok(changed) => removed += usize::from(changed),
                        // Deleted meanwhile: nothing left to take back.
                        Err(TweetsError::NotFound) => {}
                        Err(err) => return Err(err),
                    }
                }
                match batch.next {
                    Some(next) => before = Some(next),
                    None => break,
                }
                tokio::task::yield_now().await;
            }
        }
        Ok(removed)
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
        let posted = tweets
            .create_tweet(7, "  cafe\u{301}  ", None, Vec::new())
            .await
            .unwrap();
        assert_eq!(posted.text, "café");
        assert_eq!(tweets.get_tweet(posted.id).await.unwrap(), posted);
        assert_eq!(tweets.tweet_counts(vec![7]).await.unwrap(), vec![(7, 1)]);
    }

    #[tokio::test]
    async fn mentions_are_stored_with_the_tweet_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let tweets = tweets(dir.path());
        let mention = |user_id, name: &str| Mention {
            user_id,
            username: name.into(),
        };
        let mentions = vec![mention(8, "ada"), mention(7, "myself")];
        let posted = tweets
            .create_tweet(7, "hi @ada and @myself", Some("k1"), mentions.clone())
            .await
            .unwrap();
        assert_eq!(posted.mentions, mentions);
        assert_eq!(
            tweets.get_tweet(posted.id).await.unwrap().mentions,
            mentions
        );
        // A retry with the key answers the first tweet, mentions included.
        let again = tweets
            .create_tweet(7, "hi @ada and @myself", Some("k1"), mentions.clone())
            .await
            .unwrap();
        assert_eq!(again, posted);
        assert_eq!(notified(7, &mentions), vec![8], "never the author");
        let eleven = (1..=11).map(|i| mention(100 + i, "someone")).collect();
        assert!(matches!(
            tweets.create_tweet(7, "hi", None, eleven).await,
            Err(TweetsError::InvalidMentions)
        ));
        assert!(matches!(
            tweets
                .create_tweet(7, "hi", None, vec![mention(0, "x")])
                .await,
            Err(TweetsError::InvalidMentions)
        ));
        // Only names the text says: not another user, not one the text does not name.
        for (text, named) in [
            ("hi @ada", "bob"),
            ("hi ada", "ada"),
            ("mail bob@ada.com", "ada"),
        ] {
            assert!(
                matches!(
                    tweets
                        .create_tweet(7, text, None, vec![mention(8, named)])
                        .await,
                    Err(TweetsError::InvalidMentions)
                ),
                "{text:?} mentioning {named}"
            );
        }
        // The name as the user spells it matches the text's, ignoring case.
        let posted = tweets
            .create_tweet(7, "hi @ADA", None, vec![mention(8, "Ada")])
            .await
            .unwrap();
        assert_eq!(posted.mentions, vec![mention(8, "Ada")]);
    }

    #[tokio::test]
    async fn invalid_tweets_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let tweets = tweets(dir.path());
        for text in ["", "   ", &"x".repeat(281)] {
            let err = tweets
                .create_tweet(7, text, None, Vec::new())
                .await
                .unwrap_err();
            assert_eq!(err.error_code(), ErrorCode::InvalidArgument, "{text:?}");
        }
        assert!(matches!(
            tweets.create_tweet(0, "hi", None, Vec::new()).await,
            Err(TweetsError::MissingAuthor)
        ));
        assert_eq!(tweets.tweet_counts(vec![7]).await.unwrap(), vec![(7, 0)]);
    }

    #[tokio::test]
    async fn a_deleted_accounts_purge_removes_everything_once() {
        let dir = tempfile::tempdir().unwrap();
        let tweets = tweets(dir.path());
        let (gone, other) = (7, 8);
        let first = tweets
            .create_tweet(gone, "a", None, Vec::new())
            .await
            .unwrap()
            .id;
        let second = tweets
            .create_tweet(gone, "b", None, Vec::new())
            .await
            .unwrap()
            .id;
        let kept = tweets
            .create_tweet(other, "c", None, Vec::new())
            .await
            .unwrap()
            .id;
        for action in [Action::Like, Action::Retweet] {
            tweets.act(action, gone, kept).await.unwrap();
        }
        tweets.act(Action::Like, other, first).await.unwrap();
        // UserDeleted, delivered twice.
        tweets.forget_user(gone).await.unwrap();
        tweets.forget_user(gone).await.unwrap();
        assert_eq!(
            tweets.purge_pending().await.unwrap(),
            4,
            "two tweets, a like, a retweet"
        );
        tweets.forget_user(gone).await.unwrap();
        assert_eq!(tweets.purge_pending().await.unwrap(), 0, "nothing twice");
        for id in [first, second] {
            assert!(matches!(
                tweets.get_tweet(id).await,
                Err(TweetsError::NotFound)
            ));
        }
        let kept = tweets.get_tweet(kept).await.unwrap();
        assert_eq!((kept.like_count, kept.retweet_count), (0, 0));
        assert_eq!(
            tweets.tweet_counts(vec![gone]).await.unwrap(),
            vec![(gone, 0)]
        );
        assert!(matches!(
            tweets.create_tweet(gone, "again", None, Vec::new()).await,
            Err(TweetsError::AccountGone)
        ));
        assert!(matches!(
            tweets.act(Action::Like, gone, kept.id).await,
            Err(TweetsError::AccountGone)
        ));
    }

    /// Posts `text` as `author` and hands its `TweetCreated` to the index, as the consumer does.
    async fn post_indexed(tweets: &Tweets, author: u64, text: &str) -> u64 {
        let tweet = tweets
            .create_tweet(author, text, None, Vec::new())
            .await
            .unwrap();
        let created = events::envelope(
            1,
            tweet.id,
            Payload::TweetCreated(TweetCreated {
                mentioned_user_ids: Vec::new(),
                tweet_id: tweet.id,
                author_id: author,
                text: tweet.text,
                created_at: None,
            }),
        );
        tweets.index_event(&created).await.unwrap();
        tweets.index_event(&created).await.unwrap(); // redelivered
        tweet.id
    }

    fn ids(page: &Page<TweetRecord>) -> Vec<u64> {
        page.items.iter().map(|t| t.id).collect()
    }

    #[tokio::test]
    async fn tags_search_and_trends_read_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let tweets = tweets(dir.path());
        let a = post_indexed(&tweets, 7, "Learning #Rust with tokio").await;
        let b = post_indexed(&tweets, 8, "tokio and #rust again, #async").await;
        let c = post_indexed(&tweets, 7, "rust without the tag").await;
        let first = PageRequest::first(Limit::DEFAULT);
        let tagged = tweets.tag_tweets("RUST", first).await.unwrap();
        assert_eq!(ids(&tagged), vec![b, a]);
        assert_eq!(tagged.next, None);
        let found = tweets.search("tokio #rust", first).await.unwrap();
        assert_eq!(ids(&found), vec![b, a]);
        let found = tweets.search("rust", first).await.unwrap();
        assert_eq!(ids(&found), vec![c, b, a]);
        let one = Limit::parse(Some(1)).unwrap();
        let page = tweets.search("Rust Tokio", PageRequest::first(one)).await;
        let page = page.unwrap();
        assert_eq!((ids(&page), page.next), (vec![b], Some(b)));
        let rest = PageRequest {
            before: page.next,
            since: None,
            limit: one,
        };
        let page = tweets.search("Rust Tokio", rest).await.unwrap();
        assert_eq!((ids(&page), page.next), (vec![a], None));
        let polled = PageRequest {
            before: None,
            since: Some(a),
            limit: Limit::DEFAULT,
        };
        assert_eq!(
            ids(&tweets.search("rust", polled).await.unwrap()),
            vec![c, b]
        );
        for bad in ["", "a b c d", "!!"] {
            let err = tweets.search(bad, first).await.unwrap_err();
            assert_eq!(err.error_code(), ErrorCode::InvalidArgument, "{bad:?}");
        }
        assert!(tweets.tag_tweets("two words", first).await.is_err());
        let trends = tweets.trends(Limit::DEFAULT).await.unwrap();
        assert_eq!(
            trends,
            vec![("rust".to_owned(), 2), ("async".to_owned(), 1)]
        );

        tweets.delete_tweet(8, b).await.unwrap();
        let deleted = events::envelope(
            2,
            b,
            Payload::TweetDeleted(TweetDeleted {
                mentioned_user_ids: Vec::new(),
                tweet_id: b,
                author_id: 8,
            }),
        );
        tweets.index_event(&deleted).await.unwrap();
        assert_eq!(
            ids(&tweets.tag_tweets("rust", first).await.unwrap()),
            vec![a]
        );
        let trends = tweets.trends(Limit::DEFAULT).await.unwrap();
        assert_eq!(trends, vec![("rust".to_owned(), 1)]);
    }

    #[tokio::test]
    async fn a_search_past_its_budget_answers_short_with_a_cursor_to_go_on_from() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedTweetStore::open(&dir.path().join("tweets.redb")).unwrap());
        let tweets =
            Tweets::new(store, Arc::new(IdGenerator::new(1).unwrap())).with_search_budget(4);
        let old = post_indexed(&tweets, 7, "needle haystack").await;
        for n in 0..6 {
            post_indexed(&tweets, 7, &format!("haystack {n}")).await;
        }
        let new = post_indexed(&tweets, 7, "haystack needle").await;
        let limit = Limit::parse(Some(2)).unwrap();
        let mut request = PageRequest::first(limit);
        let mut found = Vec::new();
        let mut pages = 0;
        loop {
            // Walks "haystack" (the longer word), four postings per call.
            let page = tweets.search("needle haystack", request).await.unwrap();
            pages += 1;
            found.extend(ids(&page));
            match page.next {
                Some(next) => request.before = Some(next),
                None => break,
            }
        }
        assert_eq!(found, vec![new, old]);
        // 8 postings, 4 a call: two short pages (one match each), then an empty last one,
        // since a call that used its whole budget cannot tell whether more follow.
        assert_eq!(pages, 3);
        // One term (a tag page, too) reads a whole page whatever the budget.
        let many = Limit::parse(Some(10)).unwrap();
        let tagged = tweets.search("haystack", PageRequest::first(many)).await;
        assert_eq!(tagged.unwrap().items.len(), 8);
    }

    #[tokio::test]
    async fn batches_come_back_newest_first_without_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let tweets = tweets(dir.path());
        let a = tweets
            .create_tweet(7, "a", None, Vec::new())
            .await
            .unwrap()
            .id;
        let b = tweets
            .create_tweet(8, "b", None, Vec::new())
            .await
            .unwrap()
            .id;
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
