//! The embedded backend of [`TweetStore`]: tweets in a redb file, each write one transaction
//! (the tweet, the author's timeline entry, the author's count and the outbox event together;
//! a like, its count and its event; a deletion, its removals, the count and the event).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use prost::Message as _;
use redb::{ReadableTable as _, TableDefinition};
use twtr_common::embedded::{DeletedAccounts, EmbeddedDb, scan_page};
use twtr_common::outbox::Outbox;
use twtr_common::store::{PendingPurge, StoreError};
use twtr_common::{Page, PageRequest, clock};
use twtr_proto::events::v1::Envelope;

use super::{
    IndexedTerms, KeyClaim, Posting, Reacted, Reaction, TREND_RETENTION_MINUTES, TweetRecord,
    TweetStore, minute_of,
};
use crate::words::is_tag;

/// A claimed idempotency key.
#[derive(Clone, PartialEq, prost::Message)]
struct KeyRecord {
    #[prost(uint64, tag = "1")]
    tweet_id: u64,
    #[prost(int64, tag = "2")]
    claimed_at_ms: i64,
    #[prost(string, tag = "3")]
    text: String,
}

const TWEETS: TableDefinition<u64, &[u8]> = TableDefinition::new("tweets");
/// (author, tweet) -> (): each author's timeline, scanned newest first.
const AUTHOR_TWEETS: TableDefinition<(u64, u64), ()> = TableDefinition::new("author_tweets");
/// Author -> number of tweets.
const TWEET_COUNTS: TableDefinition<u64, u64> = TableDefinition::new("tweet_counts");
/// (0, tweet) -> (): everyone's live tweets, the public timeline, scanned newest first.
const PUBLIC_TIMELINE: TableDefinition<(u64, u64), ()> = TableDefinition::new("public_timeline");
/// Deleted tweets. Their `TWEETS` rows stay, so that re-creating a deleted ID changes nothing.
const DELETED: TableDefinition<u64, ()> = TableDefinition::new("deleted");
/// (user, tweet) -> (): who likes what.
const LIKES: TableDefinition<(u64, u64), ()> = TableDefinition::new("likes");
/// (user, tweet) -> (): who retweeted what.
const RETWEETS: TableDefinition<(u64, u64), ()> = TableDefinition::new("retweets");
/// (reaction, user, tweet) -> the pair's version: one more per change, kept when undone.
const REACTION_VERSIONS: TableDefinition<(u8, u64, u64), u64> =
    TableDefinition::new("reaction_versions");
/// Tweet -> number of likes.
const LIKE_COUNTS: TableDefinition<u64, u64> = TableDefinition::new("like_counts");
/// Tweet -> number of retweets.
const RETWEET_COUNTS: TableDefinition<u64, u64> = TableDefinition::new("retweet_counts");
/// Deleted accounts (no longer authors) and those whose purge is not done.
const DELETED_ACCOUNTS: DeletedAccounts = DeletedAccounts::new("gone_authors", "purges");
/// (author, idempotency key) -> an encoded [`KeyRecord`].
const KEYS: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("idempotency_keys");
/// (claimed at ms, author, key) -> (): the claims oldest first, for expiring them.
const KEYS_BY_AGE: TableDefinition<(i64, u64, &str), ()> =
    TableDefinition::new("idempotency_keys_by_age");
/// (term, tweet) -> the tweet's encoded [`IndexedTerms`]: each term's tweets, scanned newest
/// first (hashtags and search).
const TERM_POSTINGS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("term_postings");
/// Tweet -> its encoded [`IndexedTerms`], for its deletion to find its postings.
const INDEXED: TableDefinition<u64, &[u8]> = TableDefinition::new("indexed_tweets");
/// (minute of the tweet, tag, tweet) -> (): tag uses for trends, one per (tag, tweet).
const TAG_USES: TableDefinition<(i64, &str, u64), ()> = TableDefinition::new("tag_uses");
/// How many expired tag uses one indexing sweeps away (more than it writes, so they never
/// pile up).
const EXPIRE_USES_PER_INDEX: usize = 64;
/// How many expired claims one claim sweeps away.
const EXPIRE_PER_CLAIM: usize = 8;
/// The public timeline's one partition.
const EVERYONE: u64 = 0;

/// A reaction's edge table and its count table.
fn tables_of(
    reaction: Reaction,
) -> (
    TableDefinition<'static, (u64, u64), ()>,
    TableDefinition<'static, u64, u64>,
) {
    match reaction {
        Reaction::Like => (LIKES, LIKE_COUNTS),
        Reaction::Retweet => (RETWEETS, RETWEET_COUNTS),
    }
}

/// Tweets in a redb file (`tweets.redb` under the data directory).
#[derive(Debug, Clone)]
pub struct EmbeddedTweetStore {
    db: EmbeddedDb,
}

impl EmbeddedTweetStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = EmbeddedDb::open(path, |tx| {
            tx.open_table(TWEETS)?;
            tx.open_table(AUTHOR_TWEETS)?;
            tx.open_table(TWEET_COUNTS)?;
            tx.open_table(PUBLIC_TIMELINE)?;
            tx.open_table(DELETED)?;
            DELETED_ACCOUNTS.create(tx)?;
            tx.open_table(KEYS)?;
            tx.open_table(KEYS_BY_AGE)?;
            tx.open_table(REACTION_VERSIONS)?;
            tx.open_table(TERM_POSTINGS)?;
            tx.open_table(INDEXED)?;
            tx.open_table(TAG_USES)?;
            for reaction in [Reaction::Like, Reaction::Retweet] {
                let (edges, counts) = tables_of(reaction);
                tx.open_table(edges)?;
                tx.open_table(counts)?;
            }
            Ok(())
        })?;
        Ok(Self { db })
    }
}

/// The live tweets among `ids`, in the order given, with their like and retweet counts.
fn read_many(
    txn: &redb::ReadTransaction,
    ids: impl IntoIterator<Item = u64>,
) -> Result<Vec<TweetRecord>, StoreError> {
    let tweets = txn.open_table(TWEETS)?;
    let deleted = txn.open_table(DELETED)?;
    let likes = txn.open_table(LIKE_COUNTS)?;
    let retweets = txn.open_table(RETWEET_COUNTS)?;
    let mut found = Vec::new();
    for id in ids {
        let Some(row) = tweets.get(id)? else {
            continue;
        };
        if deleted.get(id)?.is_some() {
            continue;
        }
        let mut tweet = TweetRecord::decode(row.value())?;
        tweet.like_count = likes.get(id)?.map_or(0, |c| c.value());
        tweet.retweet_count = retweets.get(id)?.map_or(0, |c| c.value());
        found.push(tweet);
    }
    Ok(found)
}

#[async_trait]
impl TweetStore for EmbeddedTweetStore {
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(self.db.ping().await?)
    }

    async fn create(&self, tweet: TweetRecord, event: Envelope) -> Result<bool, StoreError> {
        self.db
            .write(move |tx| {
                if DELETED_ACCOUNTS.is_gone_in(tx, tweet.author_id)? {
                    return Ok(false);
                }
                let mut tweets = tx.open_table(TWEETS)?;
                if let Some(row) = tweets.get(tweet.id)? {
                    // The same tweet again (a retry), deleted since or not: nothing to do.
                    // Another tweet under its ID is a collision the caller must hear of.
                    let held = TweetRecord::decode(row.value())?;
                    if (held.author_id, &held.text, held.created_at_ms)
                        != (tweet.author_id, &tweet.text, tweet.created_at_ms)
                    {
                        return Err(StoreError::Conflict(format!(
                            "tweet id {} is held by another tweet",
                            tweet.id
                        )));
                    }
                    return Ok(true);
                }
                tweets.insert(tweet.id, tweet.encode_to_vec().as_slice())?;
                tx.open_table(AUTHOR_TWEETS)?
                    .insert((tweet.author_id, tweet.id), ())?;
                tx.open_table(PUBLIC_TIMELINE)?
                    .insert((EVERYONE, tweet.id), ())?;
                let mut counts = tx.open_table(TWEET_COUNTS)?;
                let count = counts.get(tweet.author_id)?.map_or(0, |c| c.value());
                counts.insert(tweet.author_id, count + 1)?;
                tx.stage_event(&event)?;
                Ok(true)
            })
            .await
    }

    async fn claim_key(
        &self,
        author: u64,
        key: &str,
        tweet_id: u64,
        text: &str,
        window: Duration,
    ) -> Result<KeyClaim, StoreError> {
        let (key, text) = (key.to_owned(), text.to_owned());
        let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        self.db
            .write(move |tx| {
                let now = clock::now_millis();
                let oldest_live = now.saturating_sub(window_ms);
                let mut keys = tx.open_table(KEYS)?;
                let mut by_age = tx.open_table(KEYS_BY_AGE)?;
                if let Some(row) = keys.get((author, key.as_str()))? {
                    let held = KeyRecord::decode(row.value())?;
                    if held.claimed_at_ms >= oldest_live {
                        return Ok(KeyClaim::Held {
                            tweet_id: held.tweet_id,
                            text: held.text,
                        });
                    }
                }
                // Expire a few claims past the window, oldest first.
                let expired: Vec<(i64, u64, String)> = by_age
                    .range((i64::MIN, 0, "")..(oldest_live, 0, ""))?
                    .take(EXPIRE_PER_CLAIM)
                    .map(|entry| {
                        let (key, _) = entry?;
                        let (at, who, what) = key.value();
                        Ok((at, who, what.to_owned()))
                    })
                    .collect::<Result<_, StoreError>>()?;
                for (at, who, what) in expired {
                    by_age.remove((at, who, what.as_str()))?;
                    let stale = match keys.get((who, what.as_str()))? {
                        Some(row) => KeyRecord::decode(row.value())?.claimed_at_ms == at,
                        None => false,
                    };
                    if stale {
                        keys.remove((who, what.as_str()))?;
                    }
                }
                let record = KeyRecord {
                    tweet_id,
                    claimed_at_ms: now,
                    text,
                };
                keys.insert((author, key.as_str()), record.encode_to_vec().as_slice())?;
                by_age.insert((now, author, key.as_str()), ())?;
                Ok(KeyClaim::Won)
            })
            .await
    }

    async fn forget_author(&self, user: u64) -> Result<(), StoreError> {
        DELETED_ACCOUNTS.forget(&self.db, user).await
    }

    async fn author_gone(&self, user: u64) -> Result<bool, StoreError> {
        DELETED_ACCOUNTS.is_gone(&self.db, user).await
    }

    async fn pending_purges(&self, max: usize) -> Result<Vec<PendingPurge>, StoreError> {
        DELETED_ACCOUNTS.pending(&self.db, max).await
    }

    async fn purge_done(&self, purge: PendingPurge) -> Result<(), StoreError> {
        DELETED_ACCOUNTS.done(&self.db, purge).await
    }

    async fn reacted(
        &self,
        reaction: Reaction,
        user: u64,
        before: Option<u64>,
        max: usize,
    ) -> Result<Reacted, StoreError> {
        self.db
            .read(move |txn| {
                let edges = txn.open_table(tables_of(reaction).0)?;
                let end = before.unwrap_or(u64::MAX);
                let mut tweets = Vec::new();
                for entry in edges.range((user, 0)..(user, end))?.rev().take(max + 1) {
                    tweets.push(entry?.0.value().1);
                }
                let next = if tweets.len() > max {
                    tweets.truncate(max);
                    tweets.last().copied()
                } else {
                    None
                };
                Ok(Reacted { tweets, next })
            })
            .await
    }

    async fn get(&self, id: u64) -> Result<Option<TweetRecord>, StoreError> {
        self.db
            .read(move |txn| Ok(read_many(txn, [id])?.pop()))
            .await
    }

    async fn get_many(&self, ids: Vec<u64>) -> Result<Vec<TweetRecord>, StoreError> {
        self.db.read(move |txn| read_many(txn, ids)).await
    }

    async fn list_by_author(
        &self,
        author_id: u64,
        page: PageRequest,
    ) -> Result<Page<TweetRecord>, StoreError> {
        self.db
            .read(move |txn| {
                let ids = scan_page(&txn.open_table(AUTHOR_TWEETS)?, author_id, &page)?;
                let tweets = read_many(txn, ids)?;
                Ok(Page::from_scan(&page, tweets, |t| t.id))
            })
            .await
    }

    async fn count_by_authors(&self, author_ids: Vec<u64>) -> Result<Vec<u64>, StoreError> {
        self.db
            .read(move |txn| {
                let counts = txn.open_table(TWEET_COUNTS)?;
                author_ids
                    .into_iter()
                    .map(|id| Ok(counts.get(id)?.map_or(0, |c| c.value())))
                    .collect()
            })
            .await
    }

    /// Likes or retweets (`on`), or takes the like or retweet back, in one transaction.
    async fn react(
        &self,
        reaction: Reaction,
        user: u64,
        tweet: u64,
        on: bool,
        event: Envelope,
    ) -> Result<Option<bool>, StoreError> {
        self.db
            .write(move |tx| {
                let live = tx.open_table(TWEETS)?.get(tweet)?.is_some()
                    && tx.open_table(DELETED)?.get(tweet)?.is_none();
                if !live {
                    return Ok(None);
                }
                let (edges, counts) = tables_of(reaction);
                let mut edges = tx.open_table(edges)?;
                if edges.get((user, tweet))?.is_some() == on {
                    return Ok(Some(false));
                }
                if on {
                    edges.insert((user, tweet), ())?;
                } else {
                    edges.remove((user, tweet))?;
                }
                let mut counts = tx.open_table(counts)?;
                let count = counts.get(tweet)?.map_or(0, |c| c.value());
                let count = if on {
                    count + 1
                } else {
                    count.saturating_sub(1)
                };
                counts.insert(tweet, count)?;
                let mut versions = tx.open_table(REACTION_VERSIONS)?;
                let pair = (reaction as u8, user, tweet);
                let version = versions.get(pair)?.map_or(0, |v| v.value()) + 1;
                versions.insert(pair, version)?;
                let mut event = event;
                super::stamp_reaction_version(&mut event, version);
                tx.stage_event(&event)?;
                Ok(Some(true))
            })
            .await
    }

    async fn liked_and_retweeted(
        &self,
        user: u64,
        tweets: Vec<u64>,
    ) -> Result<Vec<(bool, bool)>, StoreError> {
        self.db
            .read(move |txn| {
                let likes = txn.open_table(LIKES)?;
                let retweets = txn.open_table(RETWEETS)?;
                tweets
                    .into_iter()
                    .map(|tweet| {
                        Ok((
                            likes.get((user, tweet))?.is_some(),
                            retweets.get((user, tweet))?.is_some(),
                        ))
                    })
                    .collect()
            })
            .await
    }

    async fn delete(&self, id: u64, event: Envelope) -> Result<bool, StoreError> {
        self.db
            .write(move |tx| {
                let tweet = match tx.open_table(TWEETS)?.get(id)? {
                    Some(row) => TweetRecord::decode(row.value())?,
                    None => return Ok(false),
                };
                let mut deleted = tx.open_table(DELETED)?;
                if deleted.get(id)?.is_some() {
                    return Ok(false);
                }
                deleted.insert(id, ())?;
                tx.open_table(AUTHOR_TWEETS)?
                    .remove((tweet.author_id, id))?;
                tx.open_table(PUBLIC_TIMELINE)?.remove((EVERYONE, id))?;
                let mut counts = tx.open_table(TWEET_COUNTS)?;
                let count = counts.get(tweet.author_id)?.map_or(0, |c| c.value());
                counts.insert(tweet.author_id, count.saturating_sub(1))?;
                tx.stage_event(&event)?;
                Ok(true)
            })
            .await
    }

    async fn public_timeline(&self, page: PageRequest) -> Result<Page<TweetRecord>, StoreError> {
        self.db
            .read(move |txn| {
                let ids = scan_page(&txn.open_table(PUBLIC_TIMELINE)?, EVERYONE, &page)?;
                let tweets = read_many(txn, ids)?;
                Ok(Page::from_scan(&page, tweets, |t| t.id))
            })
            .await
    }

    /// One transaction: the tweet is looked at (live?) in the same transaction that writes its
    /// postings, and its deletion marks it deleted before its event exists, so an indexing that
    /// comes after [`TweetStore::unindex`] finds it deleted.
    async fn index(&self, tweet: u64, terms: Vec<String>) -> Result<(), StoreError> {
        self.db
            .write(move |tx| {
                let live = tx.open_table(TWEETS)?.get(tweet)?.is_some()
                    && tx.open_table(DELETED)?.get(tweet)?.is_none();
                if !live {
                    return Ok(());
                }
                let record = IndexedTerms {
                    terms: terms.clone(),
                }
                .encode_to_vec();
                tx.open_table(INDEXED)?.insert(tweet, record.as_slice())?;
                let mut postings = tx.open_table(TERM_POSTINGS)?;
                for term in &terms {
                    postings.insert((term.as_str(), tweet), record.as_slice())?;
                }
                let now = clock::now_millis() / 60_000;
                let oldest = now - TREND_RETENTION_MINUTES;
                let mut uses = tx.open_table(TAG_USES)?;
                let minute = minute_of(tweet);
                if minute > oldest {
                    for tag in terms.iter().filter(|term| is_tag(term)) {
                        uses.insert((minute, tag.as_str(), tweet), ())?;
                    }
                }
                let expired: Vec<(i64, String, u64)> = uses
                    .range((i64::MIN, "", 0)..(oldest, "", 0))?
                    .take(EXPIRE_USES_PER_INDEX)
                    .map(|entry| {
                        let (key, _) = entry?;
                        let (minute, tag, tweet) = key.value();
                        Ok((minute, tag.to_owned(), tweet))
                    })
                    .collect::<Result<_, StoreError>>()?;
                for (minute, tag, tweet) in expired {
                    uses.remove((minute, tag.as_str(), tweet))?;
                }
                Ok(())
            })
            .await
    }

    async fn unindex(&self, tweet: u64) -> Result<(), StoreError> {
        self.db
            .write(move |tx| {
                if tx.open_table(DELETED)?.get(tweet)?.is_none() {
                    return Ok(());
                }
                let terms = match tx.open_table(INDEXED)?.remove(tweet)? {
                    Some(row) => IndexedTerms::decode(row.value())?.terms,
                    None => return Ok(()),
                };
                let mut postings = tx.open_table(TERM_POSTINGS)?;
                let mut uses = tx.open_table(TAG_USES)?;
                let minute = minute_of(tweet);
                for term in &terms {
                    postings.remove((term.as_str(), tweet))?;
                    if is_tag(term) {
                        uses.remove((minute, term.as_str(), tweet))?;
                    }
                }
                Ok(())
            })
            .await
    }

    async fn postings(
        &self,
        term: &str,
        before: Option<u64>,
        since: Option<u64>,
        max: usize,
    ) -> Result<Vec<Posting>, StoreError> {
        let term = term.to_owned();
        self.db
            .read(move |txn| {
                let low = since.map_or(0, |since| since.saturating_add(1));
                let high = before.unwrap_or(u64::MAX);
                if low >= high {
                    return Ok(Vec::new());
                }
                let table = txn.open_table(TERM_POSTINGS)?;
                let range = table.range((term.as_str(), low)..(term.as_str(), high))?;
                let decode = |entry: Result<_, redb::StorageError>| {
                    let (key, value): (redb::AccessGuard<(&str, u64)>, redb::AccessGuard<&[u8]>) =
                        entry?;
                    Ok::<_, StoreError>(Posting {
                        tweet_id: key.value().1,
                        terms: IndexedTerms::decode(value.value())?.terms,
                    })
                };
                if since.is_some() {
                    range.take(max).map(decode).collect()
                } else {
                    range.rev().take(max).map(decode).collect()
                }
            })
            .await
    }

    async fn tag_uses(
        &self,
        from: i64,
        to: i64,
        per_minute: usize,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        self.db
            .read(move |txn| {
                let uses = txn.open_table(TAG_USES)?;
                let mut counts = std::collections::HashMap::<String, u64>::new();
                for minute in from..=to {
                    let range = uses.range((minute, "", 0)..(minute + 1, "", 0))?;
                    for entry in range.take(per_minute) {
                        let (key, _) = entry?;
                        *counts.entry(key.value().1.to_owned()).or_default() += 1;
                    }
                }
                Ok(counts.into_iter().collect())
            })
            .await
    }

    fn outbox(&self) -> Arc<dyn Outbox> {
        Arc::new(self.db.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn open_embedded() -> (Arc<dyn TweetStore>, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = EmbeddedTweetStore::open(&dir.path().join("tweets.redb")).expect("open store");
        (Arc::new(store), dir)
    }

    crate::tweet_store_conformance!(open_embedded);
}
