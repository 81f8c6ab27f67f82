//! Deletions: decided on the tweet's own row, written as the removal of its timeline rows with
//! the author's count op and the event in one logged batch; and the finishing of a deletion its
//! caller abandoned.

use scylla::value::CqlTimestamp;
use tokio::time::Instant;
use twtr_common::cql::{Lwt, Retries, Tally, logged_batch, lwt};
use twtr_common::store::StoreError;
use twtr_common::{clock, events, id};
use twtr_proto::events::v1::envelope::Payload;
use twtr_proto::events::v1::{Envelope, TweetDeleted};

use super::{
    BUCKET_MS, DECIDE_ATTEMPTS, Inner, REPAIR_WINDOW_MS, TALLIED_HEADER, TweetState, WAIT_POLL,
    abandoned, from_cql,
};

impl Inner {
    /// Deletes a live tweet, as the trait's `delete`: step 1 decides the deletion on the
    /// tweet's own row (`IF deleted_at = null`, so one call does), step 2 is
    /// `Inner::write_deletion`. A repeat finds the tweet deleted and returns false, after
    /// finishing the deletion if it was abandoned.
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
                    self.write_deletion(tweet, state.author, &event, deleted_at)
                        .await?;
                }
                return Ok(true);
            }
            if state.deleted {
                self.settle_deletion(tweet, &state).await?;
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
                    self.write_deletion(tweet, state.author, &event, deleted_at)
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
        self.write_deletion(tweet, state.author, &event, deleted_at)
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

    /// Step 2 of a decided deletion: in one logged batch, the tweet's row marked deleted, the
    /// removal of its timeline rows, the author's count op `tweet:<id>:deleted` (-1) and `event`
    /// (marked [`TALLIED_HEADER`]), all at the deletion's time `deleted_at` (Unix ms), later than
    /// every row of the create, so a create's batch that lands late stays deleted. The create's
    /// op is in the tally or the ledger already: a deletion is decided only once the create's
    /// batch ran, and that batch held the op (or, written before the tallies, its event settles
    /// it through the ledger).
    pub(super) async fn write_deletion(
        &self,
        tweet: i64,
        author: i64,
        event: &Envelope,
        deleted_at: i64,
    ) -> Result<(), StoreError> {
        let bucket = id::millis_of(from_cql(tweet)?) / BUCKET_MS;
        let written = deleted_at.saturating_mul(1000);
        let op = format!("tweet:{tweet}:deleted");
        let mut event = event.clone();
        event
            .headers
            .insert(TALLIED_HEADER.to_owned(), "1".to_owned());
        let batch = logged_batch([
            &self.mark_deleted,
            &self.delete_author_tweet,
            &self.delete_timeline,
            self.author_tallies.insert(),
            &self.mark_ledger_op,
            self.outbox.insert(),
        ]);
        let values = (
            (written, CqlTimestamp(deleted_at), tweet),
            (written, author, tweet),
            (written, bucket, tweet),
            Tally::op_row(author, op.clone(), -1, deleted_at),
            (author, op, CqlTimestamp(deleted_at)),
            self.outbox.row(&event),
        );
        self.note_unfolded(author, deleted_at);
        self.ks.session().batch(&batch, values).await?;
        self.outbox.notify();
        Ok(())
    }

    /// The count ops of a deletion written before the tallies, whose event comes back: applied
    /// through the ledger, as that version did (a no-op when they were).
    pub(super) async fn settle_ledger_deletion(
        &self,
        tweet: i64,
        author: i64,
    ) -> Result<(), StoreError> {
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
