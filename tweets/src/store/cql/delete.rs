//! Deletions: decided on the tweet's own row, written as the removal of its timeline rows with
//! the event in one logged batch, counted on the author's ledger; and the finishing of a
//! deletion its caller abandoned.

use scylla::value::CqlTimestamp;
use tokio::time::Instant;
use twtr_common::cql::{Lwt, Retries, logged_batch, lwt};
use twtr_common::store::StoreError;
use twtr_common::{clock, events, id};
use twtr_proto::events::v1::envelope::Payload;
use twtr_proto::events::v1::{Envelope, TweetDeleted};

use super::{
    BUCKET_MS, DECIDE_ATTEMPTS, Inner, REPAIR_WINDOW, REPAIR_WINDOW_MS, TweetState, WAIT_POLL,
    abandoned, age, from_cql,
};

impl Inner {
    /// Deletes a live tweet, as the trait's `delete`: step 1 decides the deletion on the
    /// tweet's own row (`IF deleted = false`, so one call does), steps 2 and 3 are
    /// `Inner::write_deletion`. A repeat finds the tweet deleted and returns false, after
    /// finishing the deletion if it was abandoned (or, when it was settled recently, making
    /// sure the author's count moved: a no-op when it did).
    pub(super) async fn delete(&self, id: u64, event: Envelope) -> Result<bool, StoreError> {
        let Ok(tweet) = i64::try_from(id) else {
            return Ok(false);
        };
        let mut maybe_decided = false;
        // Since when this call waits for the tweet's create to be written.
        let mut waiting: Option<Instant> = None;
        let mut retries = Retries::new("tweet deletion", DECIDE_ATTEMPTS);
        loop {
            let Some(state) = self.tweet_state(tweet).await? else {
                return Ok(false);
            };
            let deleted_at = state.deleted_at.unwrap_or(0);
            if state.deleted && maybe_decided {
                // This call's own deletion, decided after all (or, as a lost reply cannot
                // tell, a concurrent one, which then gets announced twice: harmless).
                if !self.deletion_settled(tweet, &state).await? {
                    self.write_deletion(tweet, state.author, Some((&event, deleted_at)))
                        .await?;
                }
                return Ok(true);
            }
            if state.deleted {
                if self.settle_deletion(tweet, &state).await? && age(deleted_at) < REPAIR_WINDOW {
                    self.write_deletion(tweet, state.author, None).await?;
                }
                return Ok(false);
            }
            let created_at = state.created_at.unwrap_or(0);
            // A deletion is decided only once the create wrote the author's timeline row, which
            // the deletion's batch removes: how a later call learns whether that batch ran.
            if !self.batch_ran(state.author, tweet).await? {
                let since = *waiting.get_or_insert_with(Instant::now);
                if !abandoned(created_at, since) {
                    tokio::time::sleep(WAIT_POLL).await;
                    continue;
                }
                self.finish_create(tweet, &state).await?;
            }
            // Later than the create's rows, whatever the clock of the process deleting.
            let deleted_at = clock::now_millis().max(created_at + 1);
            let result = self
                .ks
                .session()
                .execute_unpaged(&self.delete_tweet, (CqlTimestamp(deleted_at), tweet))
                .await;
            match lwt(result)? {
                Lwt::Applied => {
                    self.write_deletion(tweet, state.author, Some((&event, deleted_at)))
                        .await?;
                    return Ok(true);
                }
                Lwt::Unknown(_) => maybe_decided = true,
                Lwt::NotApplied(_) => {}
            }
            retries.lost().await?;
        }
    }

    /// Whether step 2 of the deletion of `tweet` ran: it removes the author's timeline row,
    /// which the tweet's create had written before the deletion was decided.
    pub(super) async fn deletion_settled(
        &self,
        tweet: i64,
        state: &TweetState,
    ) -> Result<bool, StoreError> {
        Ok(!self.batch_ran(state.author, tweet).await?)
    }

    /// Finishes the deletion `state` holds if it was abandoned (waiting, while it is young, for
    /// its own caller to write it): its batch with a `TweetDeleted` rebuilt from the row, then
    /// its count. Whether it had been settled.
    pub(super) async fn settle_deletion(
        &self,
        tweet: i64,
        state: &TweetState,
    ) -> Result<bool, StoreError> {
        let deleted_at = state.deleted_at.unwrap_or(0);
        let since = Instant::now();
        loop {
            if self.deletion_settled(tweet, state).await? {
                return Ok(true);
            }
            if abandoned(deleted_at, since) {
                break;
            }
            tokio::time::sleep(WAIT_POLL).await;
        }
        let (tweet_id, author_id) = (from_cql(tweet)?, from_cql(state.author)?);
        tracing::info!(tweet_id, "finishing an abandoned tweet deletion");
        let mentions = self.mentions_of(&[tweet]).await?.remove(&tweet);
        let payload = Payload::TweetDeleted(TweetDeleted {
            tweet_id,
            author_id,
            mentioned_user_ids: crate::service::notified(author_id, &mentions.unwrap_or_default()),
        });
        let event = events::envelope(self.ids.next_id(), tweet_id, payload);
        self.write_deletion(tweet, state.author, Some((&event, deleted_at)))
            .await?;
        Ok(false)
    }

    /// The trait's `finish_deletion`: finishes the deletion of `id` if it was abandoned.
    pub(super) async fn finish_deletion(&self, id: u64) -> Result<(), StoreError> {
        let Ok(tweet) = i64::try_from(id) else {
            return Ok(());
        };
        if let Some(state) = self.tweet_state(tweet).await?
            && state.deleted
        {
            self.settle_deletion(tweet, &state).await?;
        }
        Ok(())
    }

    /// Steps 2 and 3 of a decided deletion: with `announce` (its event and the deletion's
    /// time), the removal of its timeline rows and the event in one logged batch, the removals
    /// at the deletion's time, so a create's batch that lands late stays removed; then the
    /// author's count. The count op `tweet:<id>:created` is applied first (a no-op when its
    /// create did so), so that the deletion never takes back a count that a create cut short
    /// never added; the two cancel out either way.
    pub(super) async fn write_deletion(
        &self,
        tweet: i64,
        author: i64,
        announce: Option<(&Envelope, i64)>,
    ) -> Result<(), StoreError> {
        if let Some((event, deleted_at)) = announce {
            let bucket = id::millis_of(from_cql(tweet)?) / BUCKET_MS;
            let written = deleted_at.saturating_mul(1000);
            let batch = logged_batch([
                &self.delete_author_tweet,
                &self.delete_timeline,
                self.outbox.insert(),
            ]);
            let values = (
                (written, author, tweet),
                (written, bucket, tweet),
                self.outbox.row(event),
            );
            self.ks.session().batch(&batch, values).await?;
            self.outbox.notify();
        }
        let created = format!("tweet:{tweet}:created");
        let deleted = format!("tweet:{tweet}:deleted");
        let age = clock::now_millis() - id::millis_of(from_cql(tweet)?);
        // Past the ledger's lifetime the created op may have expired from it: it was applied
        // long ago (a create finishes within seconds), and applying it again would count twice.
        if age < REPAIR_WINDOW_MS {
            self.authors.apply(author, &created, 1).await?;
        }
        self.authors.apply(author, &deleted, -1).await
    }
}
