//! Creates: one logged batch with the tweet's row, its timeline rows, the author's count op and
//! the event; and the idempotency keys of posts (see the [module docs](super) for how a retry
//! finishes a create cut short).

use std::time::Duration;

use scylla::serialize::row::SerializeRow;
use scylla::value::{CqlTimestamp, CqlValue};
use twtr_common::cql::{Lwt, Tally, logged_batch, lwt};
use twtr_common::store::StoreError;
use twtr_common::{clock, events, id, lock};
use twtr_proto::events::v1::envelope::Payload;
use twtr_proto::events::v1::{Envelope, TweetCreated};

use super::{BUCKET_MS, Inner, MAX_TTL_SECS, TALLIED_HEADER, TweetState, from_cql, to_cql};
use crate::store::{KeyClaim, TweetRecord};

impl Inner {
    /// A fresh create (the trait's `create`): the service minted `tweet.id` in this very call,
    /// so nothing is stored under it, and the create is one logged batch with no read first.
    pub(super) async fn create(
        &self,
        tweet: TweetRecord,
        event: Envelope,
    ) -> Result<bool, StoreError> {
        if self.deleted.is_gone(tweet.author_id).await? {
            return Ok(false);
        }
        self.write_mentions(&tweet).await?;
        self.write_batch(&tweet, &event).await?;
        Ok(true)
    }

    /// A create tried again (the trait's `create_again`): nothing if the tweet's row says it was
    /// deleted since (no second `TweetCreated`); else the batch runs if it never did, which its
    /// author-timeline row tells (absent too for a tweet claimed by the version before the
    /// tallies whose batch never ran).
    pub(super) async fn create_again(
        &self,
        tweet: TweetRecord,
        event: Envelope,
    ) -> Result<bool, StoreError> {
        if self.deleted.is_gone(tweet.author_id).await? {
            return Ok(false);
        }
        let (id, author) = (to_cql(tweet.id)?, to_cql(tweet.author_id)?);
        if self
            .tweet_state(id)
            .await?
            .is_some_and(|state| state.deleted)
        {
            tracing::debug!(
                tweet_id = tweet.id,
                "tweet deleted since; nothing to create"
            );
            return Ok(true);
        }
        // A live row whose batch never ran is a claim of the version before, cut short.
        if !self.batch_ran(author, id).await? {
            tracing::info!(
                tweet_id = tweet.id,
                "finishing a create whose batch never ran"
            );
            self.write_mentions(&tweet).await?;
            self.write_batch(&tweet, &event).await?;
        }
        Ok(true)
    }

    /// The tweet's mentions, before its batch, so whoever finishes the create finds them.
    async fn write_mentions(&self, tweet: &TweetRecord) -> Result<(), StoreError> {
        if tweet.mentions.is_empty() {
            return Ok(());
        }
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
        Ok(())
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

    /// The create's one logged batch: the tweet's row, its timeline rows, the author's count op
    /// `tweet:<id>:created` and `event` (marked [`TALLIED_HEADER`]), all at the tweet's creation
    /// time, so running it again rewrites the same rows and a deletion's later writes win.
    pub(super) async fn write_batch(
        &self,
        tweet: &TweetRecord,
        event: &Envelope,
    ) -> Result<(), StoreError> {
        let (id, author) = (to_cql(tweet.id)?, to_cql(tweet.author_id)?);
        let bucket = id::millis_of(tweet.id) / BUCKET_MS;
        let created_at = tweet.created_at_ms;
        let written = created_at.saturating_mul(1000);
        let op = format!("tweet:{id}:created");
        let mut event = event.clone();
        event
            .headers
            .insert(TALLIED_HEADER.to_owned(), "1".to_owned());
        let mut statements = vec![
            &self.insert_tweet,
            &self.insert_author_tweet,
            &self.insert_timeline,
            self.author_tallies.insert(),
            &self.mark_ledger_op,
        ];
        let mut values: Vec<Box<dyn SerializeRow + Send + Sync>> = vec![
            Box::new((id, author, &tweet.text, CqlTimestamp(created_at), written)),
            Box::new((author, id, written)),
            Box::new((bucket, id, author, written)),
            Box::new(Tally::op_row(author, op.clone(), 1, created_at)),
            Box::new((author, op, CqlTimestamp(created_at))),
        ];
        let new_bucket = *lock(&self.bucket_written) != Some(bucket);
        if new_bucket {
            statements.push(&self.insert_timeline_bucket);
            values.push(Box::new((bucket,)));
        }
        statements.push(self.outbox.insert());
        values.push(Box::new(self.outbox.row(&event)));
        // Before the batch: if it lands but its answer is lost, the op still gets folded.
        self.note_unfolded(author, created_at);
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

    /// The batch of a create that a crash cut short after its claim (the ID claim of the
    /// version before the tallies, whose row a deletion may still meet), with its
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
        self.write_batch(&record, &event).await
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
