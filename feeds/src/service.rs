//! The feeds domain: apply events to feeds, and read them.

use std::sync::Arc;

use async_trait::async_trait;
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use prost::Message as _;
use twtr_common::bus::{EventBus, EventHandler, HandlerError};
use twtr_common::clock;
use twtr_common::page::InvalidLimit;
use twtr_common::store::StoreError;
use twtr_common::{ErrorCode, Page, PageRequest, ServiceError};
use twtr_proto::events::v1::envelope::Payload;
use twtr_proto::events::v1::{
    Envelope, TweetCreated, TweetDeleted, UserDeleted, UserFollowed, UserUnfollowed,
};

use crate::live;
use crate::store::{
    FeedEntry, FeedStore, Notification, NotificationKey, NotificationKind, NotificationState,
};

#[derive(Debug, thiserror::Error)]
pub enum FeedsError {
    #[error(transparent)]
    InvalidLimit(#[from] InvalidLimit),
    #[error("user_id is required")]
    MissingUser,
    #[error("up_to is not a notification id")]
    InvalidCursor,
    #[error("not a live feed cursor: resume with the cursor of a message this service sent")]
    InvalidLiveCursor,
    #[error("storage failed")]
    Store(#[from] StoreError),
}

impl ServiceError for FeedsError {
    fn error_code(&self) -> ErrorCode {
        match self {
            Self::InvalidLimit(_)
            | Self::MissingUser
            | Self::InvalidCursor
            | Self::InvalidLiveCursor => ErrorCode::InvalidArgument,
            Self::Store(err) => err.error_code(),
        }
    }
}

/// Followers written per step of a fan-out: one author with many followers never holds one
/// giant transaction, and other events interleave between the steps.
pub const FAN_OUT_CHUNK: usize = 500;
/// Chunks of one fan-out written at once (see `Feeds::for_followers`).
pub const FAN_OUT_CONCURRENCY: usize = 4;
/// Retweeters of one tweet considered when choosing whose retweet brought it into a feed.
pub const RETWEETERS_CONSIDERED: usize = 100;

/// The feeds domain. Every handler is idempotent and commutes with the others: an entry is
/// written only as the service's projections (the follow graph at its latest versions, deleted
/// tweets, standing retweets) imply it, and each handler re-reads what a concurrent handler
/// could have changed after it wrote, so the feeds converge on what the final projections imply
/// whatever order, repetition or concurrency the events arrive with.
///
/// What a feed holds, per user U: a tweet T by author A, not deleted, when U is A or follows A
/// (then `retweeted_by` is empty), or else when U follows someone whose retweet of T stands
/// (then `retweeted_by` is the smallest such ID among the first [`RETWEETERS_CONSIDERED`]
/// retweeters); newest tweet first, capped at the feed length.
pub struct Feeds {
    store: Arc<dyn FeedStore>,
    /// Authors with more followers than this are celebrities: not fanned out, merged at read
    /// time. `None`: everyone is fanned out.
    celebrity_threshold: Option<usize>,
    /// Where fan-out announces the feeds it wrote to (see [`crate::live`]); `None`: nowhere.
    notices: Option<Arc<dyn EventBus>>,
}

impl Feeds {
    /// Whether this service's store answers (readiness, and its consumer's probe).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.store.ping().await
    }

    pub fn new(store: Arc<dyn FeedStore>) -> Self {
        Self {
            store,
            celebrity_threshold: None,
            notices: None,
        }
    }

    /// Announces each fan-out on `bus`'s notice topic [`live::TOPIC`], for the live feeds of
    /// every replica.
    pub fn announcing(mut self, bus: Arc<dyn EventBus>) -> Self {
        self.notices = Some(bus);
        self
    }

    /// Tells every replica's live feeds that `notice`'s feeds gained entries: best effort (a
    /// stream also reads on its own every poll).
    async fn announce(&self, notice: live::FeedArrivals) {
        let Some(bus) = &self.notices else { return };
        if let Err(err) = bus.broadcast(live::TOPIC, &notice.encode_to_vec()).await {
            tracing::debug!(error = %twtr_common::error::error_chain(&err), "cannot announce feed arrivals");
        }
    }

    /// Authors with more than `threshold` followers are merged into readers' pages at read time
    /// instead of fanned out on write.
    pub fn with_celebrity_threshold(mut self, threshold: Option<usize>) -> Self {
        self.celebrity_threshold = threshold;
        self
    }

    /// One page of `user`'s feed: the stored entries, with the recent tweets of the celebrities
    /// they follow merged in, so that the page is the one a fanned-out feed would give (same
    /// items, order and cursor).
    pub async fn feed(&self, user: u64, page: PageRequest) -> Result<Page<FeedEntry>, FeedsError> {
        if user == 0 {
            return Err(FeedsError::MissingUser);
        }
        let stored = self.store.feed(user, page).await?;
        let celebrities = self.store.celebrities().await?;
        if celebrities.is_empty() {
            return Ok(stored);
        }
        let pairs = celebrities.iter().map(|&c| (user, c)).collect();
        let live = self.store.edges(pairs).await?;
        let mut merged = Vec::new();
        for (&celebrity, live) in celebrities.iter().zip(live) {
            if !live && celebrity != user {
                continue;
            }
            for tweet_id in self.store.recent_tweets(celebrity).await? {
                let newer = page.since.is_none_or(|since| tweet_id > since);
                let older = page.before.is_none_or(|before| tweet_id < before);
                if newer && older {
                    merged.push(FeedEntry {
                        tweet_id,
                        author_id: celebrity,
                        retweeted_by: None,
                    });
                }
            }
        }
        if merged.is_empty() {
            return Ok(stored);
        }
        let deleted = self
            .store
            .deleted(merged.iter().map(|e| e.tweet_id).collect())
            .await?;
        let mut by_id: std::collections::BTreeMap<u64, FeedEntry> = merged
            .into_iter()
            .zip(deleted)
            .filter_map(|(entry, deleted)| (!deleted).then_some((entry.tweet_id, entry)))
            .collect();
        let stored_has_more = stored.next.is_some();
        // A stored entry (with its retweet mark, if any) wins over a merged one.
        by_id.extend(stored.items.into_iter().map(|e| (e.tweet_id, e)));
        let limit = page.limit.get();
        if page.since.is_some() {
            // Polling: the oldest `limit` newer than `since`, newest first, no cursor.
            let mut items: Vec<FeedEntry> = by_id.into_values().take(limit).collect();
            items.reverse();
            return Ok(Page { items, next: None });
        }
        let more = by_id.len() > limit || stored_has_more;
        let items: Vec<FeedEntry> = by_id.into_values().rev().take(limit).collect();
        let next = if more {
            items.last().map(|e| e.tweet_id)
        } else {
            None
        };
        Ok(Page { items, next })
    }

    /// One page of `user`'s notifications, newest first (`before` and `limit` of `page`), with
    /// their read state.
    pub async fn notifications(
        &self,
        user: u64,
        page: PageRequest,
    ) -> Result<(Page<Notification>, NotificationState), FeedsError> {
        if user == 0 {
            return Err(FeedsError::MissingUser);
        }
        let listed = self.store.notifications(user, page).await?;
        let state = self.store.notification_state(user).await?;
        Ok((listed, state))
    }

    /// Marks `user`'s notifications read up to `up_to` (`None`: the newest), never back; returns
    /// the read cursor after.
    pub async fn mark_notifications_read(
        &self,
        user: u64,
        up_to: Option<u64>,
    ) -> Result<u64, FeedsError> {
        if user == 0 {
            return Err(FeedsError::MissingUser);
        }
        if up_to.is_some_and(|id| id == 0 || i64::try_from(id).is_err()) {
            return Err(FeedsError::InvalidCursor);
        }
        Ok(self.store.mark_notifications_read(user, up_to).await?)
    }

    /// Lists (`id`) or takes back (`None`) the notification `key` as of `version`. Nobody is told
    /// of their own action, and an event without a version (from before versions) cannot be
    /// ordered against its undoing, so it notifies no one. A like or retweet of a tweet deleted
    /// meanwhile goes again at once: [`Feeds::on_tweet_deleted`] records the deletion before it
    /// removes the tweet's notifications, and this re-reads it after listing, so of the two at
    /// least one sees the other.
    async fn notify(
        &self,
        key: NotificationKey,
        version: u64,
        id: Option<u64>,
    ) -> Result<(), StoreError> {
        if key.recipient == key.actor || key.recipient == 0 || key.actor == 0 || version == 0 {
            return Ok(());
        }
        self.store.set_notification(key, version, id).await?;
        let about_tweet = matches!(key.kind, NotificationKind::Like | NotificationKind::Retweet);
        if about_tweet && id.is_some() && self.store.deleted(vec![key.tweet_id]).await?[0] {
            self.store
                .remove_tweet_notifications(key.recipient, key.tweet_id)
                .await?;
        }
        Ok(())
    }

    /// A tweet's mentions, listed (under the tweet's ID) or taken back (its deletion): version 1
    /// is the post, 2 the deletion, so a late post stays taken back.
    async fn notify_mentions(
        &self,
        tweet: u64,
        author: u64,
        mentioned: &[u64],
        posted: bool,
    ) -> Result<(), StoreError> {
        for &recipient in mentioned {
            let key = NotificationKey {
                recipient,
                kind: NotificationKind::Mention,
                actor: author,
                tweet_id: tweet,
            };
            let (version, id) = if posted { (1, Some(tweet)) } else { (2, None) };
            self.notify(key, version, id).await?;
        }
        Ok(())
    }

    /// What each of `users`' feeds should hold for `tweet` by `author`, per the projections now.
    async fn resolve(
        &self,
        users: &[u64],
        tweet: u64,
        author: u64,
    ) -> Result<Vec<Option<FeedEntry>>, StoreError> {
        if self.store.deleted(vec![tweet]).await?[0] {
            return Ok(vec![None; users.len()]);
        }
        let retweeters = self.store.retweeters(tweet, RETWEETERS_CONSIDERED).await?;
        let sources: Vec<u64> = std::iter::once(author).chain(retweeters).collect();
        let pairs = users
            .iter()
            .flat_map(|&user| sources.iter().map(move |&source| (user, source)))
            .collect();
        let live = self.store.edges(pairs).await?;
        Ok(users
            .iter()
            .zip(live.chunks(sources.len()))
            .map(|(&user, live)| {
                let via = |source: &u64, live: &bool| *live && *source != user;
                if user == author || live[0] {
                    Some(None)
                } else {
                    // Retweeters come in ascending order: the first followed one is the smallest.
                    sources[1..]
                        .iter()
                        .zip(&live[1..])
                        .find(|(source, live)| via(source, live))
                        .map(|(source, _)| Some(*source))
                }
                .map(|retweeted_by| FeedEntry {
                    tweet_id: tweet,
                    author_id: author,
                    retweeted_by,
                })
            })
            .collect())
    }

    /// Makes each of `users`' entry for `tweet` what the projections imply.
    async fn settle(&self, users: &[u64], tweet: u64, author: u64) -> Result<(), StoreError> {
        for (&user, entry) in users.iter().zip(self.resolve(users, tweet, author).await?) {
            match entry {
                Some(entry) => self.store.insert_entries(user, vec![entry]).await?,
                None => self.store.remove_entries(user, vec![tweet]).await?,
            }
        }
        Ok(())
    }

    /// Runs `step` over `author`'s followers, [`FAN_OUT_CHUNK`] at a time, up to
    /// [`FAN_OUT_CONCURRENCY`] chunks at once. Chunks hold different followers, so their steps
    /// touch different feeds and may run in any order; their writes meet in the store's group
    /// commit instead of each waiting for its own.
    async fn for_followers<F, Fut>(&self, author: u64, mut step: F) -> Result<(), StoreError>
    where
        F: FnMut(Vec<u64>) -> Fut,
        Fut: std::future::Future<Output = Result<(), StoreError>>,
    {
        let mut running = FuturesUnordered::new();
        let (mut after, mut more) = (None, true);
        while more || !running.is_empty() {
            if more && running.len() < FAN_OUT_CONCURRENCY {
                // (The running steps wait meanwhile; a page of follower IDs is a short read.)
                let chunk = self.store.followers(author, after, FAN_OUT_CHUNK).await?;
                more = chunk.len() == FAN_OUT_CHUNK;
                after = chunk.last().copied();
                if !chunk.is_empty() {
                    running.push(step(chunk));
                }
            } else if let Some(done) = running.next().await {
                done?;
            }
        }
        Ok(())
    }

    /// Fan-out on write: the tweet goes into the author's own feed and every follower's, a
    /// chunk at a time.
    ///
    /// The tweet is recorded as the author's recent tweet *before* the followers are read, and
    /// a follow is recorded *before* the author's recent tweets are read (see
    /// [`Feeds::on_user_followed`]), so of a tweet and a follow handled concurrently at least one
    /// handler sees the other's write. After writing a chunk it re-reads the chunk's edges (an
    /// unfollow recorded meanwhile may have cleaned that feed before this write) and, at the
    /// end, whether the tweet was deleted meanwhile.
    async fn on_tweet_created(&self, event: &TweetCreated) -> Result<(), StoreError> {
        let (tweet, author) = (event.tweet_id, event.author_id);
        if !self.store.record_tweet(author, tweet).await? {
            return Ok(()); // deleted already: a late or repeated announcement
        }
        let entry = FeedEntry {
            tweet_id: tweet,
            author_id: author,
            retweeted_by: None,
        };
        self.store
            .fan_out(vec![author], entry, clock::now_millis())
            .await?;
        self.announce(live::FeedArrivals {
            user_ids: vec![author],
            celebrity_id: None,
        })
        .await;
        if let Some(threshold) = self.celebrity_threshold {
            let followers = self
                .store
                .followers(author, None, threshold.saturating_add(1))
                .await?;
            if followers.len() > threshold {
                // Readers merge this author's recent tweets at read time.
                self.store.set_celebrity(author, true).await?;
                if self.store.deleted(vec![tweet]).await?[0] {
                    self.remove_everywhere(tweet, author).await?;
                }
                tracing::debug!(tweet_id = tweet, "a celebrity's tweet, merged at read time");
                self.announce(live::FeedArrivals {
                    user_ids: Vec::new(),
                    celebrity_id: Some(author),
                })
                .await;
                return Ok(());
            }
            if self.store.celebrities().await?.contains(&author) {
                // Back below the threshold: the tweets of its celebrity days were never fanned
                // out, so they go into the feeds before readers stop merging them.
                self.backfill_followers(author).await?;
                self.store.set_celebrity(author, false).await?;
            }
        }
        let readers = std::sync::atomic::AtomicUsize::new(1);
        let readers = &readers;
        self.for_followers(author, |chunk| async move {
            readers.fetch_add(chunk.len(), std::sync::atomic::Ordering::Relaxed);
            self.store
                .fan_out(chunk.clone(), entry, clock::now_millis())
                .await?;
            self.announce(live::FeedArrivals {
                user_ids: chunk.clone(),
                celebrity_id: None,
            })
            .await;
            let pairs = chunk.iter().map(|&f| (f, author)).collect();
            let live = self.store.edges(pairs).await?;
            let gone: Vec<u64> = chunk
                .iter()
                .zip(live)
                .filter_map(|(&f, live)| (!live).then_some(f))
                .collect();
            if !gone.is_empty() {
                self.settle(&gone, tweet, author).await?;
            }
            Ok(())
        })
        .await?;
        let readers = readers.load(std::sync::atomic::Ordering::Relaxed);
        if self.store.deleted(vec![tweet]).await?[0] {
            self.remove_everywhere(tweet, author).await?;
        }
        tracing::debug!(tweet_id = tweet, readers, "tweet fanned out");
        Ok(())
    }

    /// Puts `author`'s recent tweets into every follower's feed.
    async fn backfill_followers(&self, author: u64) -> Result<(), StoreError> {
        let tweets = self.store.recent_tweets(author).await?;
        let deleted = self.store.deleted(tweets.clone()).await?;
        let entries: Vec<FeedEntry> = tweets
            .into_iter()
            .zip(deleted)
            .filter_map(|(tweet_id, deleted)| {
                (!deleted).then_some(FeedEntry {
                    tweet_id,
                    author_id: author,
                    retweeted_by: None,
                })
            })
            .collect();
        let entries = &entries;
        self.for_followers(author, |chunk| async move {
            for &follower in &chunk {
                self.store.insert_entries(follower, entries.clone()).await?;
            }
            // An unfollow recorded meanwhile may have cleaned a feed before this write.
            let live = self
                .store
                .edges(chunk.iter().map(|&f| (f, author)).collect())
                .await?;
            for (&follower, live) in chunk.iter().zip(live) {
                if !live {
                    self.clean_after_unfollow(follower, author).await?;
                }
            }
            Ok(())
        })
        .await
    }

    /// Removes `tweet` from every feed it can be in: its author's, their followers', and the
    /// followers' of everyone who retweeted it.
    async fn remove_everywhere(&self, tweet: u64, author: u64) -> Result<(), StoreError> {
        self.store.remove_entries(author, vec![tweet]).await?;
        let mut sources = vec![author];
        sources.extend(self.store.retweeters(tweet, usize::MAX).await?);
        for source in sources {
            self.for_followers(source, |chunk| async move {
                for user in chunk {
                    self.store.remove_entries(user, vec![tweet]).await?;
                }
                Ok(())
            })
            .await?;
        }
        Ok(())
    }

    /// A deleted tweet leaves every feed, and its notifications go: its mentions (by the
    /// mentioned IDs the event carries) and the likes and retweets its author was told of.
    async fn on_tweet_deleted(&self, event: &TweetDeleted) -> Result<(), StoreError> {
        self.store
            .delete_tweet(event.author_id, event.tweet_id)
            .await?;
        self.notify_mentions(
            event.tweet_id,
            event.author_id,
            &event.mentioned_user_ids,
            false,
        )
        .await?;
        self.store
            .remove_tweet_notifications(event.author_id, event.tweet_id)
            .await?;
        self.remove_everywhere(event.tweet_id, event.author_id)
            .await
    }

    /// Following someone backfills their recent tweets and retweets into the follower's feed,
    /// unless a newer change of the edge is recorded.
    async fn on_user_followed(&self, event: &UserFollowed) -> Result<(), StoreError> {
        let (follower, author) = (event.follower_id, event.followee_id);
        if !self
            .store
            .set_edge(follower, author, true, event.version)
            .await?
        {
            return Ok(());
        }
        let tweets = self.store.recent_tweets(author).await?;
        let deleted = self.store.deleted(tweets.clone()).await?;
        let entries = tweets
            .into_iter()
            .zip(deleted)
            .filter_map(|(tweet_id, deleted)| {
                (!deleted).then_some(FeedEntry {
                    tweet_id,
                    author_id: author,
                    retweeted_by: None,
                })
            })
            .collect();
        self.store.insert_entries(follower, entries).await?;
        for retweet in self.store.recent_retweets(author).await? {
            self.settle(&[follower], retweet.tweet_id, retweet.author_id)
                .await?;
        }
        // An unfollow recorded meanwhile may have cleaned this feed before the backfill landed.
        if !self.store.edges(vec![(follower, author)]).await?[0] {
            self.clean_after_unfollow(follower, author).await?;
        }
        Ok(())
    }

    /// Unfollowing someone takes what they brought out of the follower's feed (a tweet they
    /// wrote or retweeted stays if another followed retweeter brought it too).
    async fn on_user_unfollowed(&self, event: &UserUnfollowed) -> Result<(), StoreError> {
        let (follower, author) = (event.follower_id, event.followee_id);
        if self
            .store
            .set_edge(follower, author, false, event.version)
            .await?
        {
            self.clean_after_unfollow(follower, author).await?;
        }
        Ok(())
    }

    async fn clean_after_unfollow(&self, follower: u64, author: u64) -> Result<(), StoreError> {
        for entry in self.store.entries_via(follower, author).await? {
            self.settle(&[follower], entry.tweet_id, entry.author_id)
                .await?;
        }
        Ok(())
    }

    /// A retweet (or its undoing) changes what the retweeter's followers' feeds hold for it.
    async fn on_retweet(
        &self,
        user: u64,
        tweet: u64,
        author: u64,
        standing: bool,
        version: u64,
    ) -> Result<(), StoreError> {
        if !self
            .store
            .set_retweet(user, tweet, author, standing, version)
            .await?
        {
            return Ok(());
        }
        self.for_followers(user, |chunk| async move {
            self.settle(&chunk, tweet, author).await
        })
        .await
    }

    /// An account was deleted: its own feed goes. (Its tweets, retweets and edges leave the
    /// other feeds through the TweetDeleted, Unretweeted and UserUnfollowed events the tweets
    /// and followers services emit as they purge it.)
    ///
    /// Its notifications go too. Those its own actions caused go as the purges emit the
    /// undoing events (`UserUnfollowed`, `TweetUnliked`, `Unretweeted`, `TweetDeleted`).
    async fn on_user_deleted(&self, event: &UserDeleted) -> Result<(), StoreError> {
        self.store.drop_feed(event.user_id).await?;
        self.store.drop_notifications(event.user_id).await
    }
}

#[async_trait]
impl EventHandler for Feeds {
    async fn handle(&self, event: &Envelope) -> Result<(), HandlerError> {
        // The notification a reaction or follow lists is named by its event: time-ordered, and
        // the same for every delivery of it.
        let listed = Some(event.event_id);
        let key = |recipient, kind, actor, tweet_id| NotificationKey {
            recipient,
            kind,
            actor,
            tweet_id,
        };
        match &event.payload {
            Some(Payload::TweetCreated(e)) => {
                self.notify_mentions(e.tweet_id, e.author_id, &e.mentioned_user_ids, true)
                    .await?;
                self.on_tweet_created(e).await?;
            }
            Some(Payload::TweetDeleted(e)) => self.on_tweet_deleted(e).await?,
            Some(Payload::UserFollowed(e)) => {
                self.on_user_followed(e).await?;
                let follow = key(e.followee_id, NotificationKind::Follow, e.follower_id, 0);
                self.notify(follow, e.version, listed).await?;
            }
            Some(Payload::UserUnfollowed(e)) => {
                self.on_user_unfollowed(e).await?;
                let follow = key(e.followee_id, NotificationKind::Follow, e.follower_id, 0);
                self.notify(follow, e.version, None).await?;
            }
            Some(Payload::Retweeted(e)) => {
                self.on_retweet(e.user_id, e.tweet_id, e.author_id, true, e.version)
                    .await?;
                let retweet = key(
                    e.author_id,
                    NotificationKind::Retweet,
                    e.user_id,
                    e.tweet_id,
                );
                self.notify(retweet, e.version, listed).await?;
            }
            Some(Payload::Unretweeted(e)) => {
                self.on_retweet(e.user_id, e.tweet_id, e.author_id, false, e.version)
                    .await?;
                let retweet = key(
                    e.author_id,
                    NotificationKind::Retweet,
                    e.user_id,
                    e.tweet_id,
                );
                self.notify(retweet, e.version, None).await?;
            }
            Some(Payload::TweetLiked(e)) => {
                let like = key(e.author_id, NotificationKind::Like, e.user_id, e.tweet_id);
                self.notify(like, e.version, listed).await?;
            }
            Some(Payload::TweetUnliked(e)) => {
                let like = key(e.author_id, NotificationKind::Like, e.user_id, e.tweet_id);
                self.notify(like, e.version, None).await?;
            }
            Some(Payload::UserDeleted(e)) => self.on_user_deleted(e).await?,
            // Events this service is not bound to (or a newer publisher's payloads) need no work.
            _ => tracing::debug!(event_type = %event.r#type, "ignoring event"),
        }
        Ok(())
    }

    async fn probe(&self) -> Result<(), HandlerError> {
        Ok(self.ping().await?)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet, HashMap};

    use proptest::prelude::*;
    use twtr_common::Limit;
    use twtr_proto::events::v1::{Retweeted, Unretweeted};

    use super::*;
    use crate::store::{EmbeddedFeedStore, FeedLimits};

    fn envelope(payload: Payload) -> Envelope {
        twtr_common::events::envelope(1, 1, payload)
    }

    fn tweet(tweet_id: u64, author_id: u64) -> Envelope {
        envelope(Payload::TweetCreated(TweetCreated {
            tweet_id,
            author_id,
            ..Default::default()
        }))
    }

    fn deleted(tweet_id: u64, author_id: u64) -> Envelope {
        envelope(Payload::TweetDeleted(TweetDeleted {
            tweet_id,
            author_id,
            ..Default::default()
        }))
    }

    fn follow(follower_id: u64, followee_id: u64, version: u64) -> Envelope {
        envelope(Payload::UserFollowed(UserFollowed {
            follower_id,
            followee_id,
            version,
        }))
    }

    fn unfollow(follower_id: u64, followee_id: u64, version: u64) -> Envelope {
        envelope(Payload::UserUnfollowed(UserUnfollowed {
            follower_id,
            followee_id,
            version,
        }))
    }

    fn retweet(user_id: u64, tweet_id: u64, author_id: u64, on: bool, version: u64) -> Envelope {
        envelope(if on {
            Payload::Retweeted(Retweeted {
                tweet_id,
                author_id,
                user_id,
                version,
            })
        } else {
            Payload::Unretweeted(Unretweeted {
                tweet_id,
                author_id,
                user_id,
                version,
            })
        })
    }

    async fn feed_of(feeds: &Feeds, user: u64) -> Vec<FeedEntry> {
        let page = feeds
            .feed(
                user,
                PageRequest::first(Limit::parse(Some(Limit::MAX)).unwrap()),
            )
            .await
            .unwrap();
        page.items
    }

    async fn feed_ids(feeds: &Feeds, user: u64) -> Vec<u64> {
        feed_of(feeds, user)
            .await
            .iter()
            .map(|e| e.tweet_id)
            .collect()
    }

    fn feeds_with(dir: &std::path::Path, limits: FeedLimits) -> Feeds {
        let store = EmbeddedFeedStore::open(&dir.join("feeds.redb"), limits).unwrap();
        Feeds::new(Arc::new(store))
    }

    fn feeds(dir: &std::path::Path) -> Feeds {
        feeds_with(dir, FeedLimits::default())
    }

    /// Applies `events` in order, each delivered twice, as at-least-once delivery may.
    async fn apply(feeds: &Feeds, events: &[Envelope]) {
        for event in events {
            feeds.handle(event).await.unwrap();
            feeds.handle(event).await.unwrap();
        }
    }

    /// `user`'s notifications, newest first, as (kind, actor, tweet), and the unread count.
    async fn notified(feeds: &Feeds, user: u64) -> (Vec<(NotificationKind, u64, u64)>, u64) {
        let page = PageRequest::first(Limit::parse(Some(100)).unwrap());
        let (page, state) = feeds.notifications(user, page).await.unwrap();
        let items = page
            .items
            .iter()
            .map(|n| (n.kind, n.actor, n.tweet_id))
            .collect();
        (items, state.unread)
    }

    /// A history touching every kind of notification, each event with its own ID (as the
    /// outboxes mint them); the final state: user 2 is followed by 1 (again), their tweet 50 is
    /// retweeted by 3 (its like taken back), their tweet 60 (liked by 1) is deleted, and user 4
    /// is mentioned by 2 in 50 (and was in the deleted 60). Plus the author's own like.
    fn notification_history() -> Vec<Envelope> {
        use twtr_proto::events::v1::{TweetLiked, TweetUnliked};
        let payloads = vec![
            Payload::UserFollowed(UserFollowed {
                follower_id: 1,
                followee_id: 2,
                version: 1,
            }),
            Payload::UserUnfollowed(UserUnfollowed {
                follower_id: 1,
                followee_id: 2,
                version: 2,
            }),
            Payload::UserFollowed(UserFollowed {
                follower_id: 1,
                followee_id: 2,
                version: 3,
            }),
            Payload::TweetCreated(TweetCreated {
                tweet_id: 50,
                author_id: 2,
                mentioned_user_ids: vec![4],
                ..Default::default()
            }),
            Payload::TweetCreated(TweetCreated {
                tweet_id: 60,
                author_id: 2,
                mentioned_user_ids: vec![4],
                ..Default::default()
            }),
            Payload::TweetLiked(TweetLiked {
                tweet_id: 50,
                author_id: 2,
                user_id: 3,
                version: 1,
            }),
            Payload::TweetUnliked(TweetUnliked {
                tweet_id: 50,
                author_id: 2,
                user_id: 3,
                version: 2,
            }),
            Payload::TweetLiked(TweetLiked {
                tweet_id: 50,
                author_id: 2,
                user_id: 2,
                version: 1,
            }),
            Payload::Retweeted(Retweeted {
                tweet_id: 50,
                author_id: 2,
                user_id: 3,
                version: 1,
            }),
            Payload::TweetLiked(TweetLiked {
                tweet_id: 60,
                author_id: 2,
                user_id: 1,
                version: 1,
            }),
            Payload::TweetDeleted(TweetDeleted {
                tweet_id: 60,
                author_id: 2,
                mentioned_user_ids: vec![4],
            }),
        ];
        payloads
            .into_iter()
            .enumerate()
            .map(|(i, payload)| twtr_common::events::envelope(1_000 + i as u64, 1, payload))
            .collect()
    }

    /// Notifications converge on what the final state implies whatever order and repetition
    /// the events arrive in: in order, backwards, and shuffled, each delivered twice.
    #[tokio::test]
    async fn notifications_converge_whatever_the_delivery_order() {
        let history = notification_history();
        let expected_for_2 = vec![
            (NotificationKind::Retweet, 3, 50),
            (NotificationKind::Follow, 1, 0),
        ];
        let mut orders = vec![history.clone(), history.iter().rev().cloned().collect()];
        let mut shuffled = history.clone();
        shuffled.rotate_left(4);
        shuffled.swap(0, 6);
        orders.push(shuffled);
        for events in orders {
            let dir = tempfile::tempdir().unwrap();
            let feeds = feeds(dir.path());
            apply(&feeds, &events).await;
            assert_eq!(notified(&feeds, 2).await, (expected_for_2.clone(), 2));
            assert_eq!(
                notified(&feeds, 4).await,
                (vec![(NotificationKind::Mention, 2, 50)], 1)
            );
            assert_eq!(notified(&feeds, 1).await, (vec![], 0));
            assert_eq!(notified(&feeds, 3).await, (vec![], 0));
        }
    }

    #[tokio::test]
    async fn reading_notifications_and_deleting_an_account() {
        let dir = tempfile::tempdir().unwrap();
        let feeds = feeds(dir.path());
        apply(&feeds, &notification_history()).await;
        assert_eq!(feeds.mark_notifications_read(2, None).await.unwrap(), 1_008);
        assert_eq!(notified(&feeds, 2).await.1, 0);
        assert!(matches!(
            feeds.mark_notifications_read(2, Some(u64::MAX)).await,
            Err(FeedsError::InvalidCursor)
        ));
        let gone = envelope(Payload::UserDeleted(UserDeleted {
            user_id: 2,
            username: "gone".into(),
        }));
        apply(&feeds, &[gone]).await;
        assert_eq!(notified(&feeds, 2).await, (vec![], 0));
    }

    #[tokio::test]
    async fn follow_then_tweet_and_tweet_then_follow_end_the_same() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (first, second) = (feeds(a.path()), feeds(b.path()));
        apply(&first, &[follow(1, 2, 1), tweet(50, 2)]).await;
        apply(&second, &[tweet(50, 2), follow(1, 2, 1)]).await;
        assert_eq!(feed_ids(&first, 1).await, vec![50]);
        assert_eq!(feed_ids(&second, 1).await, vec![50]);
        // The author sees their own tweet.
        assert_eq!(feed_ids(&first, 2).await, vec![50]);
    }

    #[tokio::test]
    async fn only_followers_get_a_tweet() {
        let dir = tempfile::tempdir().unwrap();
        let feeds = feeds(dir.path());
        apply(&feeds, &[follow(1, 2, 1), tweet(50, 2), tweet(51, 3)]).await;
        assert_eq!(feed_ids(&feeds, 1).await, vec![50]);
        assert!(feed_ids(&feeds, 4).await.is_empty());
    }

    #[tokio::test]
    async fn unfollow_removes_the_authors_tweets_and_a_stale_follow_does_not_return_them() {
        let dir = tempfile::tempdir().unwrap();
        let feeds = feeds(dir.path());
        apply(
            &feeds,
            &[
                follow(1, 2, 1),
                follow(1, 3, 1),
                tweet(50, 2),
                tweet(51, 3),
                unfollow(1, 2, 2),
            ],
        )
        .await;
        assert_eq!(feed_ids(&feeds, 1).await, vec![51]);
        apply(&feeds, &[tweet(52, 2), follow(1, 2, 1)]).await;
        assert_eq!(
            feed_ids(&feeds, 1).await,
            vec![51],
            "no new tweets after unfollowing, and the replayed follow is stale"
        );
    }

    #[tokio::test]
    async fn a_deleted_tweet_leaves_every_feed_and_never_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let feeds = feeds(dir.path());
        apply(
            &feeds,
            &[
                follow(1, 2, 1),
                follow(3, 4, 1),
                tweet(50, 2),
                retweet(4, 50, 2, true, 1),
            ],
        )
        .await;
        assert_eq!(feed_ids(&feeds, 3).await, vec![50], "through the retweet");
        apply(&feeds, &[deleted(50, 2)]).await;
        // A late announcement and a backfill cannot bring it back.
        apply(&feeds, &[tweet(50, 2), follow(5, 2, 1)]).await;
        for user in [1, 2, 3, 5] {
            assert!(feed_ids(&feeds, user).await.is_empty(), "feed of {user}");
        }
    }

    #[tokio::test]
    async fn retweets_reach_the_retweeters_followers_once_marked() {
        let dir = tempfile::tempdir().unwrap();
        let feeds = feeds(dir.path());
        // 1 follows 3 and 4, not the author 2; 5 follows the author 2 and the retweeter 3.
        apply(
            &feeds,
            &[
                follow(1, 3, 1),
                follow(1, 4, 1),
                follow(5, 2, 1),
                follow(5, 3, 1),
                tweet(50, 2),
                retweet(4, 50, 2, true, 1),
                retweet(3, 50, 2, true, 1),
            ],
        )
        .await;
        let marked = |by| FeedEntry {
            tweet_id: 50,
            author_id: 2,
            retweeted_by: by,
        };
        assert_eq!(feed_of(&feeds, 1).await, vec![marked(Some(3))], "one entry");
        assert_eq!(
            feed_of(&feeds, 5).await,
            vec![marked(None)],
            "follows the author"
        );
        apply(&feeds, &[retweet(3, 50, 2, false, 2)]).await;
        assert_eq!(feed_of(&feeds, 1).await, vec![marked(Some(4))]);
        assert_eq!(feed_of(&feeds, 5).await, vec![marked(None)]);
        apply(&feeds, &[retweet(4, 50, 2, false, 2)]).await;
        assert!(feed_of(&feeds, 1).await.is_empty());
        // Following a retweeter later backfills their standing retweets.
        apply(&feeds, &[retweet(4, 50, 2, true, 3), follow(6, 4, 1)]).await;
        assert_eq!(feed_of(&feeds, 6).await, vec![marked(Some(4))]);
    }

    #[tokio::test]
    async fn fan_out_goes_in_chunks_and_reaches_every_follower() {
        let dir = tempfile::tempdir().unwrap();
        let feeds = feeds(dir.path());
        let followers: Vec<u64> = (1_000..1_000 + 2 * FAN_OUT_CHUNK as u64 + 7).collect();
        for &f in &followers {
            feeds.handle(&follow(f, 2, 1)).await.unwrap();
        }
        feeds.handle(&tweet(50, 2)).await.unwrap();
        for &f in [
            followers[0],
            followers[FAN_OUT_CHUNK],
            *followers.last().unwrap(),
        ]
        .iter()
        {
            assert_eq!(feed_ids(&feeds, f).await, vec![50], "follower {f}");
        }
    }

    #[tokio::test]
    async fn a_deleted_account_loses_its_feed() {
        let dir = tempfile::tempdir().unwrap();
        let feeds = feeds(dir.path());
        apply(&feeds, &[follow(1, 2, 1), tweet(50, 2)]).await;
        let gone = envelope(Payload::UserDeleted(UserDeleted {
            user_id: 1,
            username: "gone".into(),
        }));
        apply(&feeds, &[gone]).await;
        assert!(feed_ids(&feeds, 1).await.is_empty());
        assert_eq!(feed_ids(&feeds, 2).await, vec![50]);
    }

    /// Every page of `user`'s feed, walking back with `before` (`limit` per page), then polling
    /// forward with `since` from the oldest: what a reader can see of a feed.
    async fn pages(
        feeds: &Feeds,
        user: u64,
        limit: u32,
    ) -> (Vec<Page<FeedEntry>>, Vec<Vec<FeedEntry>>) {
        let limit = Limit::parse(Some(limit)).unwrap();
        let mut back = Vec::new();
        let mut request = PageRequest::first(limit);
        loop {
            let page = feeds.feed(user, request).await.unwrap();
            let next = page.next;
            back.push(page);
            match next {
                Some(next) => request.before = Some(next),
                None => break,
            }
        }
        let mut forward = Vec::new();
        let mut since = Some(0);
        while let Some(from) = since {
            let page = feeds
                .feed(
                    user,
                    PageRequest {
                        before: None,
                        since: Some(from),
                        limit,
                    },
                )
                .await
                .unwrap();
            since = page.items.first().map(|e| e.tweet_id);
            forward.push(page.items);
        }
        (back, forward)
    }

    /// With a threshold low enough to make authors celebrities (merged at read time), every
    /// page, backwards and forwards, is the page plain fan-out gives; also while authors cross
    /// the threshold in either direction.
    #[tokio::test]
    async fn merged_celebrity_feeds_page_exactly_like_fanned_out_ones() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let plain = feeds(a.path());
        let merged = feeds(b.path()).with_celebrity_threshold(Some(2));
        let readers = [10, 11, 12, 13];
        let compare = |what: &'static str| {
            let (plain, merged) = (&plain, &merged);
            async move {
                for user in readers.iter().copied().chain([1, 2]) {
                    for limit in [1, 2, 3] {
                        assert_eq!(
                            pages(merged, user, limit).await,
                            pages(plain, user, limit).await,
                            "{what}: user {user}, limit {limit}"
                        );
                    }
                }
            }
        };
        let stages: [(&str, Vec<Envelope>); 4] = [
            // Author 1 has three followers (a celebrity above 2), author 2 one.
            (
                "a celebrity and an ordinary author",
                vec![
                    follow(10, 1, 1),
                    follow(11, 1, 1),
                    follow(12, 1, 1),
                    follow(10, 2, 1),
                    tweet(100, 1),
                    tweet(101, 2),
                    tweet(102, 1),
                    tweet(103, 1),
                    tweet(104, 2),
                    tweet(105, 1),
                    deleted(103, 1),
                    retweet(13, 102, 1, true, 1),
                    follow(11, 13, 1),
                ],
            ),
            // A late follower of the celebrity, and an unfollow.
            (
                "follows change",
                vec![follow(13, 1, 1), unfollow(12, 1, 2), tweet(106, 1)],
            ),
            // Author 1 falls to two followers: ordinary again at its next tweet.
            (
                "a celebrity becomes ordinary",
                vec![unfollow(13, 1, 2), tweet(107, 1)],
            ),
            // Author 2 gains followers: a celebrity from its next tweet.
            (
                "an author becomes a celebrity",
                vec![
                    follow(11, 2, 1),
                    follow(12, 2, 1),
                    tweet(108, 2),
                    tweet(109, 1),
                ],
            ),
        ];
        for (what, events) in stages {
            for feeds in [&plain, &merged] {
                apply(feeds, &events).await;
            }
            compare(what).await;
        }
        // The merged store really merged: author 2's last tweet is in no stored feed but its own.
        let stored = merged
            .store
            .feed(11, PageRequest::first(Limit::DEFAULT))
            .await
            .unwrap();
        assert!(stored.items.iter().all(|e| e.tweet_id != 108), "{stored:?}");
        assert!(feed_ids(&merged, 11).await.contains(&108));
    }

    // ---- The convergence property --------------------------------------------------------

    const USERS: u64 = 4;

    /// One step of a generated history, as the services would decide it.
    #[derive(Debug, Clone)]
    enum Step {
        Follow {
            follower: u64,
            followee: u64,
            on: bool,
        },
        Post {
            author: u64,
        },
        Delete {
            nth: usize,
        },
        Retweet {
            user: u64,
            nth: usize,
            on: bool,
        },
    }

    fn step() -> impl Strategy<Value = Step> {
        let user = 1..=USERS;
        prop_oneof![
            3 => (user.clone(), user.clone(), any::<bool>())
                .prop_map(|(follower, followee, on)| Step::Follow { follower, followee, on }),
            3 => user.clone().prop_map(|author| Step::Post { author }),
            1 => (0..12usize).prop_map(|nth| Step::Delete { nth }),
            2 => (user, 0..12usize, any::<bool>())
                .prop_map(|(user, nth, on)| Step::Retweet { user, nth, on }),
        ]
    }

    /// The events a history makes (each a real change, versioned as the services do), and the
    /// final state they imply.
    #[derive(Default)]
    struct History {
        events: Vec<Envelope>,
        edges: HashMap<(u64, u64), (bool, u64)>,
        tweets: Vec<(u64, u64, bool)>,
        retweets: HashMap<(u64, u64), (bool, u64)>,
    }

    impl History {
        fn of(steps: &[Step]) -> Self {
            let mut h = Self::default();
            for step in steps {
                match *step {
                    Step::Follow {
                        follower,
                        followee,
                        on,
                    } if follower != followee => {
                        let (live, version) = h.edges.entry((follower, followee)).or_default();
                        if *live != on {
                            *live = on;
                            *version += 1;
                            h.events.push(if on {
                                follow(follower, followee, *version)
                            } else {
                                unfollow(follower, followee, *version)
                            });
                        }
                    }
                    Step::Follow { .. } => {}
                    Step::Post { author } => {
                        let id = 100 + h.tweets.len() as u64;
                        h.tweets.push((id, author, true));
                        h.events.push(tweet(id, author));
                    }
                    Step::Delete { nth } => {
                        if let Some((id, author, live)) = h.tweets.get_mut(nth)
                            && *live
                        {
                            *live = false;
                            h.events.push(deleted(*id, *author));
                        }
                    }
                    Step::Retweet { user, nth, on } => {
                        // The tweets service refuses retweets of deleted tweets.
                        let Some(&(id, author, true)) = h.tweets.get(nth) else {
                            continue;
                        };
                        let (standing, version) = h.retweets.entry((user, id)).or_default();
                        if *standing != on {
                            *standing = on;
                            *version += 1;
                            h.events.push(retweet(user, id, author, on, *version));
                        }
                    }
                }
            }
            h
        }

        fn follows(&self, follower: u64, followee: u64) -> bool {
            self.edges.get(&(follower, followee)).is_some_and(|e| e.0)
        }

        /// The feed the final state implies for `user`, newest first.
        fn feed(&self, user: u64) -> Vec<FeedEntry> {
            let mut feed = BTreeMap::new();
            for &(tweet_id, author_id, live) in &self.tweets {
                if !live {
                    continue;
                }
                let retweeted_by = if user == author_id || self.follows(user, author_id) {
                    Some(None)
                } else {
                    let retweeters: BTreeSet<u64> = self
                        .retweets
                        .iter()
                        .filter(|&(&(r, t), &(standing, _))| {
                            t == tweet_id && standing && r != user && self.follows(user, r)
                        })
                        .map(|(&(r, _), _)| r)
                        .collect();
                    retweeters.first().map(|&r| Some(r))
                };
                if let Some(retweeted_by) = retweeted_by {
                    feed.insert(
                        tweet_id,
                        FeedEntry {
                            tweet_id,
                            author_id,
                            retweeted_by,
                        },
                    );
                }
            }
            feed.into_values().rev().collect()
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Any interleaving, duplication and reordering of a history's events yields exactly
        /// the feeds its final follow graph, live tweets and standing retweets imply.
        #[test]
        fn feeds_converge_whatever_the_delivery_order(
            steps in prop::collection::vec(step(), 1..40),
            keys in prop::collection::vec(any::<u32>(), 80),
        ) {
            let history = History::of(&steps);
            let n = history.events.len();
            // Every event once, some twice, in the order of random keys.
            let mut deliveries: Vec<(u32, usize)> = (0..n).map(|i| (keys[i % keys.len()], i)).collect();
            for (i, &key) in keys.iter().enumerate().take(n) {
                if key % 3 == 0 {
                    deliveries.push((key.rotate_left(7), i));
                }
            }
            deliveries.sort_unstable();
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let dir = tempfile::tempdir().unwrap();
            let limits = FeedLimits { feed_len: 1_000, trim_slack: 0, recent_per_author: 1_000, notifications_len: 1_000, ..FeedLimits::default() };
            let feeds = feeds_with(dir.path(), limits);
            runtime.block_on(async {
                for (_, i) in &deliveries {
                    feeds.handle(&history.events[*i]).await.unwrap();
                }
                for user in 1..=USERS {
                    prop_assert_eq!(feed_of(&feeds, user).await, history.feed(user), "user {}", user);
                }
                Ok(())
            })?;
        }
    }
}
