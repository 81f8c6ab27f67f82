//! The reads: tweets by ID with their counts, an author's timeline, the public timeline hour by
//! hour, tweet counts, and whether a user liked or retweeted tweets.

use std::collections::{HashMap, VecDeque};

use futures_util::future::{join_all, try_join};
use scylla::errors::ExecutionError;
use scylla::response::query_result::QueryResult;
use scylla::value::CqlTimestamp;
use twtr_common::store::StoreError;
use twtr_common::{Page, PageRequest, id};

use super::{
    BUCKET_MS, BUCKETS_PER_READ, FOLD_BACKLOG, IN_CHUNK, Inner, TweetState, from_cql, to_cql,
};
use crate::store::TweetRecord;
use twtr_proto::tweets::v1::Mention;

impl Inner {
    /// The live tweets among `ids` (each at most [`IN_CHUNK`] per query, queries in parallel),
    /// in the order of `ids`, repeats included, with their like and retweet counts.
    pub(super) async fn fetch(&self, ids: &[u64]) -> Result<Vec<TweetRecord>, StoreError> {
        let keys = distinct_keys(ids);
        let session = self.ks.session();
        let reads = keys.chunks(IN_CHUNK).map(|chunk| async move {
            let tweets = async {
                let rows = session
                    .execute_unpaged(&self.select_tweets, (chunk,))
                    .await?
                    .into_rows_result()?;
                let mut found = Vec::new();
                for row in rows.rows::<TweetRow>()? {
                    found.extend(record(row?)?);
                }
                Ok::<_, StoreError>(found)
            };
            let counts = async {
                let rows = session
                    .execute_unpaged(&self.select_tweet_counts, (chunk,))
                    .await?
                    .into_rows_result()?;
                let mut counts = HashMap::new();
                for row in rows.rows::<(i64, Option<i64>, Option<i64>)>()? {
                    let (id, likes, retweets) = row?;
                    counts.insert(from_cql(id)?, (count(likes), count(retweets)));
                }
                Ok::<_, StoreError>(counts)
            };
            let (mut found, counts) = try_join(tweets, counts).await?;
            let mut mentions = self.mentions_of(chunk).await?;
            for tweet in &mut found {
                if let Some(&(likes, retweets)) = counts.get(&tweet.id) {
                    tweet.like_count = likes;
                    tweet.retweet_count = retweets;
                }
                if let Some(mentions) = mentions.remove(&to_cql(tweet.id)?) {
                    tweet.mentions = mentions;
                }
            }
            Ok::<_, StoreError>(found)
        });
        let mut by_id = HashMap::new();
        for found in join_all(reads).await {
            by_id.extend(found?.into_iter().map(|t| (t.id, t)));
        }
        Ok(ids.iter().filter_map(|id| by_id.get(id).cloned()).collect())
    }

    /// The mentions of those of `tweets` that have any, by tweet.
    pub(super) async fn mentions_of(
        &self,
        tweets: &[i64],
    ) -> Result<HashMap<i64, Vec<Mention>>, StoreError> {
        let rows = self
            .ks
            .session()
            .execute_unpaged(&self.select_mentions, (tweets,))
            .await?
            .into_rows_result()?;
        let mut found = HashMap::new();
        for row in rows.rows::<(i64, Option<Vec<i64>>, Option<Vec<String>>)>()? {
            let (tweet, user_ids, usernames) = row?;
            let mentions = user_ids
                .unwrap_or_default()
                .into_iter()
                .zip(usernames.unwrap_or_default())
                .map(|(user_id, username)| {
                    Ok(Mention {
                        user_id: from_cql(user_id)?,
                        username,
                    })
                })
                .collect::<Result<_, StoreError>>()?;
            found.insert(tweet, mentions);
        }
        Ok(found)
    }

    /// The `tweets` row of `tweet`; `None` when no such tweet.
    pub(super) async fn tweet_state(&self, tweet: i64) -> Result<Option<TweetState>, StoreError> {
        let rows = self
            .ks
            .session()
            .execute_unpaged(&self.select_tweet_state, (tweet,))
            .await?
            .into_rows_result()?;
        type Row = (
            Option<i64>,
            Option<String>,
            Option<CqlTimestamp>,
            Option<bool>,
            Option<CqlTimestamp>,
        );
        let Some((author, text, created_at, deleted, deleted_at)) =
            rows.maybe_first_row::<Row>()?
        else {
            return Ok(None);
        };
        let Some(author) = author else {
            return Err(StoreError::Corrupt(format!("tweet {tweet} has no author")));
        };
        Ok(Some(TweetState {
            author,
            text,
            created_at: created_at.map(|at| at.0),
            // The decision sets `deleted_at` first (see `statements`), the batch `deleted`.
            deleted: deleted == Some(true) || deleted_at.is_some(),
            deleted_at: deleted_at.map(|at| at.0),
        }))
    }

    /// Up to `take` IDs of the public timeline within `bounds`, in the direction of `page`,
    /// read hour by hour from the hours `timeline_buckets` lists.
    pub(super) async fn scan_timeline(
        &self,
        page: &PageRequest,
        bounds: &PageBounds,
        take: usize,
    ) -> Result<Vec<u64>, StoreError> {
        let forward = page.since.is_some();
        let (buckets, timeline) = if forward {
            (&self.buckets_forward, &self.timeline_forward)
        } else {
            (&self.buckets_backward, &self.timeline_backward)
        };
        let bucket_of =
            |key: i64| -> Result<i64, StoreError> { Ok(id::millis_of(from_cql(key)?) / BUCKET_MS) };
        let mut walk = BucketWalk::new(bucket_of(bounds.low)?, bucket_of(bounds.high)?, forward);
        let session = self.ks.session();
        let mut ids = Vec::new();
        while let Some(bucket) = walk
            .next(|low, high| session.execute_unpaged(buckets, (low, high, BUCKETS_PER_READ)))
            .await?
        {
            let left = i32::try_from(take - ids.len()).unwrap_or(i32::MAX);
            let rows = session
                .execute_unpaged(timeline, (bucket, bounds.low, bounds.high, left))
                .await?
                .into_rows_result()?;
            for row in rows.rows::<(i64,)>()? {
                ids.push(from_cql(row?.0)?);
            }
            if ids.len() >= take {
                break;
            }
        }
        Ok(ids)
    }

    pub(super) async fn list_by_author(
        &self,
        author_id: u64,
        page: PageRequest,
    ) -> Result<Page<TweetRecord>, StoreError> {
        let (Ok(author), Some(bounds)) = (i64::try_from(author_id), PageBounds::of(&page)) else {
            return Ok(Page::from_scan(&page, Vec::new(), |t: &TweetRecord| t.id));
        };
        // Reads in the direction `scan_page` does, `limit + 1` IDs, for `Page::from_scan`.
        let statement = if page.since.is_some() {
            &self.page_forward
        } else {
            &self.page_backward
        };
        let take = i32::try_from(page.limit.get() + 1).unwrap_or(i32::MAX);
        let rows = self
            .ks
            .session()
            .execute_unpaged(statement, (author, bounds.low, bounds.high, take))
            .await?
            .into_rows_result()?;
        let mut ids = Vec::new();
        for row in rows.rows::<(i64,)>()? {
            ids.push(from_cql(row?.0)?);
        }
        let tweets = self.fetch(&ids).await?;
        Ok(Page::from_scan(&page, tweets, |t| t.id))
    }

    /// Each author's count: the ledger's count (what was counted before the tallies) plus the
    /// tally's base and pending ops, the two read at once per chunk. An author with many ops
    /// pending is put up for the next fold.
    pub(super) async fn count_by_authors(
        &self,
        author_ids: Vec<u64>,
    ) -> Result<Vec<u64>, StoreError> {
        let keys = distinct_keys(&author_ids);
        let session = self.ks.session();
        let reads = keys.chunks(IN_CHUNK).map(|chunk| async move {
            let (rows, tallies) = try_join(
                async {
                    Ok::<_, StoreError>(
                        session
                            .execute_unpaged(&self.select_counts, (chunk,))
                            .await?
                            .into_rows_result()?,
                    )
                },
                self.author_tallies.read(chunk),
            )
            .await?;
            let mut counts: HashMap<i64, i64> = HashMap::new();
            for row in rows.rows::<(i64, Option<i64>)>()? {
                let (author, count) = row?;
                *counts.entry(author).or_default() += count.unwrap_or(0);
            }
            for (author, tallied) in tallies {
                *counts.entry(author).or_default() += tallied.count;
                if tallied.pending > FOLD_BACKLOG {
                    self.note_unfolded(author, 0);
                }
            }
            counts
                .into_iter()
                // A count never goes below zero; clamp rather than wrap if one ever did.
                .map(|(author, count)| Ok((from_cql(author)?, count.max(0) as u64)))
                .collect::<Result<Vec<_>, StoreError>>()
        });
        let mut by_author = HashMap::new();
        for counts in join_all(reads).await {
            by_author.extend(counts?);
        }
        Ok(author_ids
            .iter()
            .map(|id| by_author.get(id).copied().unwrap_or(0))
            .collect())
    }

    pub(super) async fn liked_and_retweeted(
        &self,
        user: u64,
        tweets: Vec<u64>,
    ) -> Result<Vec<(bool, bool)>, StoreError> {
        let Ok(user_key) = i64::try_from(user) else {
            return Ok(vec![(false, false); tweets.len()]);
        };
        let keys = distinct_keys(&tweets);
        let (liked, retweeted) = try_join(
            self.reacted_among(&self.likes, user_key, &keys),
            self.reacted_among(&self.retweets, user_key, &keys),
        )
        .await?;
        Ok(tweets
            .iter()
            .map(|id| (liked.contains(id), retweeted.contains(id)))
            .collect())
    }

    pub(super) async fn public_timeline(
        &self,
        page: PageRequest,
    ) -> Result<Page<TweetRecord>, StoreError> {
        let Some(bounds) = PageBounds::of(&page) else {
            return Ok(Page::from_scan(&page, Vec::new(), |t: &TweetRecord| t.id));
        };
        let ids = self
            .scan_timeline(&page, &bounds, page.limit.get() + 1)
            .await?;
        let tweets = self.fetch(&ids).await?;
        Ok(Page::from_scan(&page, tweets, |t| t.id))
    }
}

/// A `tweets` row: `(tweet_id, author_id, text, created_at, deleted)`.
pub(super) type TweetRow = (
    i64,
    Option<i64>,
    Option<String>,
    Option<CqlTimestamp>,
    Option<bool>,
);

/// The record a `tweets` row holds, `None` for a deleted tweet's tombstone. Like and retweet
/// counts are zero here: they live in `tweet_counts`, which `fetch` reads alongside.
pub(super) fn record(row: TweetRow) -> Result<Option<TweetRecord>, StoreError> {
    let (id, author_id, text, created_at, deleted) = row;
    if deleted == Some(true) {
        return Ok(None);
    }
    let (Some(author_id), Some(text), Some(created_at)) = (author_id, text, created_at) else {
        return Err(StoreError::Corrupt(format!(
            "tweet {id} lacks its author, text or time"
        )));
    };
    Ok(Some(TweetRecord {
        id: from_cql(id)?,
        author_id: from_cql(author_id)?,
        text,
        created_at_ms: created_at.0,
        like_count: 0,
        retweet_count: 0,
        mentions: Vec::new(),
    }))
}

/// A page request as inclusive bounds on a `bigint` clustering key: `scan_page`'s half-open
/// ranges (`since` < id < `before`), made to fit CQL's signed IDs.
pub(super) struct PageBounds {
    pub(super) low: i64,
    pub(super) high: i64,
}

impl PageBounds {
    /// `None` when no ID can be in the page.
    pub(super) fn of(page: &PageRequest) -> Option<Self> {
        let low = page.since.map_or(Some(0), |since| since.checked_add(1))?;
        let high = match page.before {
            Some(before) => before.checked_sub(1)?,
            None => u64::MAX,
        };
        // IDs are below 2^63: an upper bound past that means "no upper bound".
        let high = i64::try_from(high).unwrap_or(i64::MAX);
        let low = i64::try_from(low).ok()?;
        (low <= high).then_some(Self { low, high })
    }
}

/// The IDs as CQL keys, each once. IDs past `bigint` cannot be stored, so they are not looked up.
pub(super) fn distinct_keys(ids: &[u64]) -> Vec<i64> {
    let mut keys: Vec<i64> = ids
        .iter()
        .filter_map(|&id| i64::try_from(id).ok())
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// A stored count; never below zero (clamped rather than wrapped if one ever were).
pub(super) fn count(stored: Option<i64>) -> u64 {
    stored.unwrap_or(0).max(0) as u64
}

/// The hour buckets a listing (`timeline_buckets`, `term_buckets`) names between two buckets, in
/// the direction of a read (newest first, or oldest first when polling): listed
/// [`BUCKETS_PER_READ`] at a time, handed out one by one, so a read that is satisfied early lists
/// no more than it uses.
pub(super) struct BucketWalk {
    low: i64,
    high: i64,
    forward: bool,
    listed: VecDeque<i64>,
    /// The last listing came back short: nothing is left to list.
    exhausted: bool,
}

impl BucketWalk {
    pub(super) fn new(low: i64, high: i64, forward: bool) -> Self {
        Self {
            low,
            high,
            forward,
            listed: VecDeque::new(),
            exhausted: false,
        }
    }

    /// The next bucket, or `None` when the range holds no more. When the buckets listed so far
    /// are used up, `list(low, high)` runs the listing on what is left of the range (in the
    /// walk's direction, at most [`BUCKETS_PER_READ`] rows of one `bigint` column).
    pub(super) async fn next<F, Fut>(&mut self, list: F) -> Result<Option<i64>, StoreError>
    where
        F: FnOnce(i64, i64) -> Fut,
        Fut: Future<Output = Result<QueryResult, ExecutionError>>,
    {
        if self.listed.is_empty() && !self.exhausted && self.low <= self.high {
            let rows = list(self.low, self.high).await?.into_rows_result()?;
            for row in rows.rows::<(i64,)>()? {
                self.listed.push_back(row?.0);
            }
            self.exhausted = self.listed.len() < BUCKETS_PER_READ as usize;
        }
        let Some(bucket) = self.listed.pop_front() else {
            return Ok(None);
        };
        if self.forward {
            self.low = bucket + 1;
        } else {
            self.high = bucket - 1;
        }
        Ok(Some(bucket))
    }
}
