//! Hashtags, search and trends on CQL (`005_search_and_trends.cql`, whose header explains why a
//! deletion wins whatever order the events come in): indexing a tweet, unindexing a deleted
//! one, reading a term's postings hour by hour, and counting tag uses minute by minute.

use std::collections::HashMap;

use futures_util::future::{join_all, try_join, try_join_all};
use scylla::statement::prepared::PreparedStatement;
use twtr_common::cql::{CqlError, Keyspace};
use twtr_common::store::StoreError;
use twtr_common::{clock, id};

use super::reads::BucketWalk;
use super::{BUCKET_MS, BUCKETS_PER_READ, Inner, from_cql, to_cql};
use crate::store::{Posting, TREND_RETENTION_MINUTES, minute_of};
use crate::words::is_tag;

const INSERT_INDEXED: &str =
    "INSERT INTO {ks}.indexed_tweets (tweet_id, terms) VALUES (?, ?) USING TIMESTAMP ?";
const SELECT_INDEXED: &str = "SELECT terms FROM {ks}.indexed_tweets WHERE tweet_id = ?";
const DELETE_INDEXED: &str = "DELETE FROM {ks}.indexed_tweets USING TIMESTAMP ? WHERE tweet_id = ?";
const INSERT_POSTING: &str = "INSERT INTO {ks}.term_postings (term, bucket, tweet_id, terms) \
     VALUES (?, ?, ?, ?) USING TIMESTAMP ?";
const DELETE_POSTING: &str = "DELETE FROM {ks}.term_postings USING TIMESTAMP ? \
     WHERE term = ? AND bucket = ? AND tweet_id = ?";
const INSERT_TERM_BUCKET: &str = "INSERT INTO {ks}.term_buckets (term, bucket) VALUES (?, ?)";
const INSERT_TAG_USE: &str = "INSERT INTO {ks}.tag_uses (minute, shard, tag, tweet_id) \
     VALUES (?, ?, ?, ?) USING TTL ? AND TIMESTAMP ?";
const DELETE_TAG_USE: &str = "DELETE FROM {ks}.tag_uses USING TIMESTAMP ? \
     WHERE minute = ? AND shard = ? AND tag = ? AND tweet_id = ?";
const TERM_BUCKETS_BACKWARD: &str = "SELECT bucket FROM {ks}.term_buckets \
     WHERE term = ? AND bucket >= ? AND bucket <= ? ORDER BY bucket DESC LIMIT ?";
const TERM_BUCKETS_FORWARD: &str = "SELECT bucket FROM {ks}.term_buckets \
     WHERE term = ? AND bucket >= ? AND bucket <= ? ORDER BY bucket ASC LIMIT ?";
const POSTINGS_BACKWARD: &str = "SELECT tweet_id, terms FROM {ks}.term_postings \
     WHERE term = ? AND bucket = ? AND tweet_id >= ? AND tweet_id <= ? \
     ORDER BY tweet_id DESC LIMIT ?";
const POSTINGS_FORWARD: &str = "SELECT tweet_id, terms FROM {ks}.term_postings \
     WHERE term = ? AND bucket = ? AND tweet_id >= ? AND tweet_id <= ? \
     ORDER BY tweet_id ASC LIMIT ?";
const SELECT_TAG_USES: &str =
    "SELECT tag FROM {ks}.tag_uses WHERE minute = ? AND shard IN (0, 1, 2, 3) LIMIT ?";
/// One minute's tag uses are spread over this many partitions (tweet ID mod this).
const TREND_SHARDS: u64 = 4;

/// The statements of the index, prepared once with the store's.
pub(super) struct IndexStatements {
    insert_indexed: PreparedStatement,
    select_indexed: PreparedStatement,
    delete_indexed: PreparedStatement,
    insert_posting: PreparedStatement,
    delete_posting: PreparedStatement,
    insert_term_bucket: PreparedStatement,
    insert_tag_use: PreparedStatement,
    delete_tag_use: PreparedStatement,
    term_buckets_backward: PreparedStatement,
    term_buckets_forward: PreparedStatement,
    postings_backward: PreparedStatement,
    postings_forward: PreparedStatement,
    select_tag_uses: PreparedStatement,
}

impl IndexStatements {
    pub(super) async fn new(ks: &Keyspace) -> Result<Self, CqlError> {
        Ok(Self {
            insert_indexed: ks.prepare(INSERT_INDEXED).await?,
            select_indexed: ks.prepare(SELECT_INDEXED).await?,
            delete_indexed: ks.prepare(DELETE_INDEXED).await?,
            insert_posting: ks.prepare(INSERT_POSTING).await?,
            delete_posting: ks.prepare(DELETE_POSTING).await?,
            insert_term_bucket: ks.prepare(INSERT_TERM_BUCKET).await?,
            insert_tag_use: ks.prepare(INSERT_TAG_USE).await?,
            delete_tag_use: ks.prepare(DELETE_TAG_USE).await?,
            term_buckets_backward: ks.prepare(TERM_BUCKETS_BACKWARD).await?,
            term_buckets_forward: ks.prepare(TERM_BUCKETS_FORWARD).await?,
            postings_backward: ks.prepare(POSTINGS_BACKWARD).await?,
            postings_forward: ks.prepare(POSTINGS_FORWARD).await?,
            select_tag_uses: ks.prepare(SELECT_TAG_USES).await?,
        })
    }
}

/// The shard of a tweet's tag uses.
fn shard_of(tweet: u64) -> i32 {
    (tweet % TREND_SHARDS) as i32
}

impl Inner {
    /// The trait's `index`: the terms into `indexed_tweets`, a second look at the tweet, then
    /// every posting, its hour in `term_buckets` and the tag uses, in parallel, all at the
    /// tweet's creation time. `1 + 2 × terms + tags` writes and two reads of the tweet's row.
    pub(super) async fn index(&self, tweet: u64, terms: Vec<String>) -> Result<(), StoreError> {
        let key = to_cql(tweet)?;
        let Some(state) = self.tweet_state(key).await? else {
            return Ok(());
        };
        if state.deleted {
            return Ok(());
        }
        let written = state
            .created_at
            .unwrap_or_else(|| id::millis_of(tweet))
            .saturating_mul(1000);
        let s = &self.search;
        let session = self.ks.session();
        session
            .execute_unpaged(&s.insert_indexed, (key, &terms, written))
            .await?;
        // A deletion that read `indexed_tweets` before the write above found no terms to
        // remove; it was decided before this look, which sees it.
        match self.tweet_state(key).await? {
            Some(state) if !state.deleted => {}
            _ => return Ok(()),
        }
        let bucket = id::millis_of(tweet) / BUCKET_MS;
        let all = &terms;
        let postings = try_join_all(terms.iter().map(|term| async move {
            session
                .execute_unpaged(
                    &s.insert_posting,
                    (term.as_str(), bucket, key, all, written),
                )
                .await?;
            session
                .execute_unpaged(&s.insert_term_bucket, (term.as_str(), bucket))
                .await?;
            Ok::<_, StoreError>(())
        }));
        let minute = minute_of(tweet);
        let now = clock::now_millis();
        // Expires `TREND_RETENTION_MINUTES` after the tweet's minute.
        let ttl = (minute + TREND_RETENTION_MINUTES) * 60 - now / 1000;
        let tags: Vec<&String> = if ttl > 0 {
            terms.iter().filter(|term| is_tag(term)).collect()
        } else {
            Vec::new()
        };
        let ttl = i32::try_from(ttl).unwrap_or(i32::MAX);
        let uses = try_join_all(tags.into_iter().map(|tag| async move {
            session
                .execute_unpaged(
                    &s.insert_tag_use,
                    (minute, shard_of(tweet), tag.as_str(), key, ttl, written),
                )
                .await?;
            Ok::<_, StoreError>(())
        }));
        try_join(postings, uses).await?;
        Ok(())
    }

    /// The trait's `unindex`: reads the terms the tweet was indexed under, deletes each posting
    /// and tag use, then the terms, all at the deletion's time. Idempotent.
    pub(super) async fn unindex(&self, tweet: u64) -> Result<(), StoreError> {
        let key = to_cql(tweet)?;
        let Some(state) = self.tweet_state(key).await? else {
            return Ok(());
        };
        if !state.deleted {
            return Ok(());
        }
        let written = state
            .deleted_at
            .unwrap_or_else(clock::now_millis)
            .saturating_mul(1000);
        let s = &self.search;
        let session = self.ks.session();
        let rows = session
            .execute_unpaged(&s.select_indexed, (key,))
            .await?
            .into_rows_result()?;
        let terms = rows
            .maybe_first_row::<(Option<Vec<String>>,)>()?
            .and_then(|(terms,)| terms)
            .unwrap_or_default();
        let (bucket, minute) = (id::millis_of(tweet) / BUCKET_MS, minute_of(tweet));
        try_join_all(terms.iter().map(|term| async move {
            session
                .execute_unpaged(&s.delete_posting, (written, term.as_str(), bucket, key))
                .await?;
            if is_tag(term) {
                let values = (written, minute, shard_of(tweet), term.as_str(), key);
                session.execute_unpaged(&s.delete_tag_use, values).await?;
            }
            Ok::<_, StoreError>(())
        }))
        .await?;
        // Last, so a retry after a failure above finds the terms again; and always, so an
        // indexing that writes them later is shadowed.
        session
            .execute_unpaged(&s.delete_indexed, (written, key))
            .await?;
        Ok(())
    }

    /// The trait's `postings`: the hours `term_buckets` lists for the term within the bounds,
    /// `BUCKETS_PER_READ` at a time, and each hour's postings until `max` are read.
    pub(super) async fn postings(
        &self,
        term: &str,
        before: Option<u64>,
        since: Option<u64>,
        max: usize,
    ) -> Result<Vec<Posting>, StoreError> {
        let low = match since {
            None => 0,
            Some(since) => match since.checked_add(1).map(i64::try_from) {
                Some(Ok(low)) => low,
                _ => return Ok(Vec::new()),
            },
        };
        let high = match before {
            None => i64::MAX,
            Some(0) => return Ok(Vec::new()),
            Some(before) => i64::try_from(before - 1).unwrap_or(i64::MAX),
        };
        if low > high || max == 0 {
            return Ok(Vec::new());
        }
        let forward = since.is_some();
        let s = &self.search;
        let (buckets, postings) = if forward {
            (&s.term_buckets_forward, &s.postings_forward)
        } else {
            (&s.term_buckets_backward, &s.postings_backward)
        };
        let bucket_of =
            |key: i64| -> Result<i64, StoreError> { Ok(id::millis_of(from_cql(key)?) / BUCKET_MS) };
        let mut walk = BucketWalk::new(bucket_of(low)?, bucket_of(high)?, forward);
        let session = self.ks.session();
        let mut found = Vec::new();
        while let Some(bucket) = walk
            .next(|from, to| session.execute_unpaged(buckets, (term, from, to, BUCKETS_PER_READ)))
            .await?
        {
            let left = i32::try_from(max - found.len()).unwrap_or(i32::MAX);
            let rows = session
                .execute_unpaged(postings, (term, bucket, low, high, left))
                .await?
                .into_rows_result()?;
            for row in rows.rows::<(i64, Option<Vec<String>>)>()? {
                let (tweet, terms) = row?;
                found.push(Posting {
                    tweet_id: from_cql(tweet)?,
                    terms: terms.unwrap_or_default(),
                });
            }
            if found.len() >= max {
                break;
            }
        }
        Ok(found)
    }

    /// The trait's `tag_uses`: one query per minute (its shards in an `IN` list), in parallel.
    pub(super) async fn tag_uses(
        &self,
        from: i64,
        to: i64,
        per_minute: usize,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let session = self.ks.session();
        let limit = i32::try_from(per_minute).unwrap_or(i32::MAX);
        let statement = &self.search.select_tag_uses;
        let reads = (from..=to).map(|minute| async move {
            let rows = session
                .execute_unpaged(statement, (minute, limit))
                .await?
                .into_rows_result()?;
            let mut tags = Vec::new();
            for row in rows.rows::<(String,)>()? {
                tags.push(row?.0);
            }
            Ok::<_, StoreError>(tags)
        });
        let mut counts = HashMap::<String, u64>::new();
        for tags in join_all(reads).await {
            for tag in tags? {
                *counts.entry(tag).or_default() += 1;
            }
        }
        Ok(counts.into_iter().collect())
    }
}
