//! Creates: the claim of the tweet ID, the batch with the timeline rows and the event, the
//! author's count; and the idempotency keys of posts (see the [module docs](super) for how a
//! retry finishes a create cut short).

use std::time::Duration;

use scylla::serialize::row::SerializeRow;
use scylla::value::{CqlTimestamp, CqlValue};
use twtr_common::cql::{Lwt, logged_batch, lwt};
use twtr_common::store::StoreError;
use twtr_common::{clock, events, id, lock};
use twtr_proto::events::v1::envelope::Payload;
use twtr_proto::events::v1::{Envelope, TweetCreated};

use super::{BUCKET_MS, Inner, MAX_TTL_SECS, TweetState, from_cql, to_cql};
use crate::store::{KeyClaim, TweetRecord};

impl Inner {
    /// Step 1: claims `tweet.id` for `tweet`. On a lost claim, the row that holds the ID.
    pub(super) async fn claim(&self, tweet: &TweetRecord) -> Result<Claim, StoreError> {
        let values = (
            to_cql(tweet.id)?,
            to_cql(tweet.author_id)?,
            &tweet.text,
            CqlTimestamp(tweet.created_at_ms),
        );
        let result = self
            .ks
            .session()
            .execute_unpaged(&self.claim_tweet, values)
            .await;
        let holder = match lwt(result)? {
            Lwt::Applied => return Ok(Claim::Won),
            Lwt::NotApplied(holder) => holder,
            // Fails the create, as any store error: a retry of it finds the claim if it landed.
            Lwt::Unknown(unknown) => return Err(unknown.into()),
        };
        // A lost claim returns the row that won it. A deleted tweet keeps its author and time
        // (its text is gone), which is enough to tell a retry of it from another tweet.
        let column = |name: &str| holder.get(name).cloned();
        let same_author_and_time = column("author_id")
            == Some(CqlValue::BigInt(to_cql(tweet.author_id)?))
            && column("created_at") == Some(CqlValue::Timestamp(CqlTimestamp(tweet.created_at_ms)));
        if let Some(CqlValue::Boolean(true)) = column("deleted") {
            return Ok(if same_author_and_time {
                Claim::Deleted
            } else {
                Claim::HeldByOther
            });
        }
        let same =
            same_author_and_time && column("text") == Some(CqlValue::Text(tweet.text.clone()));
        Ok(if same {
            Claim::HeldBySame
        } else {
            Claim::HeldByOther
        })
    }

    pub(super) async fn create(
        &self,
        tweet: TweetRecord,
        event: Envelope,
    ) -> Result<bool, StoreError> {
        if self.deleted.is_gone(tweet.author_id).await? {
            return Ok(false);
        }
        if !tweet.mentions.is_empty() {
            // Before the claim, so whoever finishes this create finds them.
            let (user_ids, usernames): (Vec<i64>, Vec<String>) = tweet
                .mentions
                .iter()
                .map(|m| Ok((to_cql(m.user_id)?, m.username.clone())))
                .collect::<Result<Vec<_>, StoreError>>()?
                .into_iter()
                .unzip();
            self.ks
                .session()
                .execute_unpaged(
                    &self.insert_mentions,
                    (to_cql(tweet.id)?, user_ids, usernames),
                )
                .await?;
        }
        match self.claim(&tweet).await? {
            Claim::Won => self.write_batch(&tweet, &event).await?,
            Claim::HeldBySame => {
                if !self
                    .batch_ran(to_cql(tweet.author_id)?, to_cql(tweet.id)?)
                    .await?
                {
                    tracing::info!(
                        tweet_id = tweet.id,
                        "finishing a create whose batch never ran"
                    );
                    self.write_batch(&tweet, &event).await?;
                }
            }
            Claim::Deleted => {
                tracing::debug!(
                    tweet_id = tweet.id,
                    "tweet deleted since; nothing to create"
                );
                return Ok(true);
            }
            Claim::HeldByOther => {
                // Nothing was stored: answering success would tell the caller its tweet exists.
                tracing::error!(
                    tweet_id = tweet.id,
                    author_id = tweet.author_id,
                    "tweet id already holds another tweet: two processes mint ids with one \
                     worker number (check TWTR_WORKER_ID); the create is refused"
                );
                return Err(StoreError::Conflict(format!(
                    "tweet id {} is held by another tweet",
                    tweet.id
                )));
            }
        }
        let op = format!("tweet:{}:created", tweet.id);
        self.apply_count_op(to_cql(tweet.author_id)?, &op).await?;
        Ok(true)
    }

    /// Whether step 2 of the create of `tweet` by `author` ran: its author-timeline row is the
    /// batch's first row, and a logged batch lands whole. Once the tweet is deleted, whether
    /// the deletion's batch ran: that batch removes the row.
    pub(super) async fn batch_ran(&self, author: i64, tweet: i64) -> Result<bool, StoreError> {
        let rows = self
            .ks
            .session()
            .execute_unpaged(&self.select_author_tweet, (author, tweet))
            .await?
            .into_rows_result()?;
        Ok(rows.rows_num() > 0)
    }

    /// Step 2: the tweet's timeline rows and `event`, in one logged batch.
    pub(super) async fn write_batch(
        &self,
        tweet: &TweetRecord,
        event: &Envelope,
    ) -> Result<(), StoreError> {
        let (id, author) = (to_cql(tweet.id)?, to_cql(tweet.author_id)?);
        let bucket = id::millis_of(tweet.id) / BUCKET_MS;
        let written = tweet.created_at_ms.saturating_mul(1000);
        let mut statements = vec![&self.insert_author_tweet, &self.insert_timeline];
        let mut values: Vec<Box<dyn SerializeRow + Send + Sync>> = vec![
            Box::new((author, id, written)),
            Box::new((bucket, id, author, written)),
        ];
        let new_bucket = *lock(&self.bucket_written) != Some(bucket);
        if new_bucket {
            statements.push(&self.insert_timeline_bucket);
            values.push(Box::new((bucket,)));
        }
        statements.push(self.outbox.insert());
        values.push(Box::new(self.outbox.row(event)));
        self.ks
            .session()
            .batch(&logged_batch(statements), values)
            .await?;
        self.outbox.notify();
        if new_bucket {
            // Remembered only once a batch that wrote it succeeded.
            *lock(&self.bucket_written) = Some(bucket);
        }
        Ok(())
    }

    /// Steps 2 and 3 of a create that a crash cut short after its claim, with its
    /// `TweetCreated` rebuilt from the tweet's row.
    pub(super) async fn finish_create(
        &self,
        tweet: i64,
        state: &TweetState,
    ) -> Result<(), StoreError> {
        let (Some(text), Some(created_at)) = (state.text.clone(), state.created_at) else {
            return Err(StoreError::Corrupt(format!(
                "live tweet {tweet} lacks its text or time"
            )));
        };
        let record = TweetRecord {
            id: from_cql(tweet)?,
            author_id: from_cql(state.author)?,
            text,
            created_at_ms: created_at,
            like_count: 0,
            retweet_count: 0,
            mentions: self
                .mentions_of(&[tweet])
                .await?
                .remove(&tweet)
                .unwrap_or_default(),
        };
        tracing::info!(tweet_id = record.id, "finishing an abandoned create");
        let payload = Payload::TweetCreated(TweetCreated {
            tweet_id: record.id,
            author_id: record.author_id,
            text: record.text.clone(),
            created_at: Some(clock::to_timestamp(created_at)),
            mentioned_user_ids: crate::service::notified(record.author_id, &record.mentions),
        });
        let event = events::envelope(self.ids.next_id(), record.id, payload);
        self.write_batch(&record, &event).await?;
        self.apply_count_op(state.author, &format!("tweet:{tweet}:created"))
            .await
    }

    /// Step 3: applies the count op `op` (+1) to `author`'s tweet count, once.
    pub(super) async fn apply_count_op(&self, author: i64, op: &str) -> Result<(), StoreError> {
        self.authors.apply(author, op, 1).await
    }

    pub(super) async fn claim_key(
        &self,
        author: u64,
        key: &str,
        tweet_id: u64,
        text: &str,
        window: Duration,
    ) -> Result<KeyClaim, StoreError> {
        let ttl = i32::try_from(window.as_secs().clamp(1, MAX_TTL_SECS)).unwrap_or(i32::MAX);
        let values = (
            to_cql(author)?,
            key,
            to_cql(tweet_id)?,
            text,
            CqlTimestamp(clock::now_millis()),
            ttl,
        );
        let result = self
            .ks
            .session()
            .execute_unpaged(&self.claim_key, values)
            .await;
        let holder = match lwt(result)? {
            Lwt::Applied => return Ok(KeyClaim::Won),
            Lwt::NotApplied(holder) => holder,
            // Fails the post, as any store error: a retry with the key finds the claim if it
            // landed.
            Lwt::Unknown(unknown) => return Err(unknown.into()),
        };
        match (holder.get("tweet_id"), holder.get("text")) {
            (Some(CqlValue::BigInt(id)), Some(CqlValue::Text(text))) => Ok(KeyClaim::Held {
                tweet_id: from_cql(*id)?,
                text: text.clone(),
            }),
            _ => Err(StoreError::Corrupt(format!(
                "the idempotency key {key:?} of author {author} holds no tweet"
            ))),
        }
    }
}

/// Who holds a tweet ID after a claim.
pub(super) enum Claim {
    /// This call claimed it: the rest of the create follows.
    Won,
    /// An earlier call with this very tweet did (a retry, or a concurrent duplicate).
    HeldBySame,
    /// A different tweet holds it, deleted or not: the ID was minted twice.
    HeldByOther,
    /// This very tweet, deleted since; its row stays as a tombstone so that nothing brings it
    /// back.
    Deleted,
}
