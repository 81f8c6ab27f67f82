//! Likes and retweets, and their undoing: decided on the user's own row, written with the
//! mirror row and the event in one logged batch, counted through the tweet's ledger (see the
//! [module docs](super) for what a crash leaves and how the next call finishes it).

use futures_util::future::join_all;
use scylla::serialize::row::SerializeRow;
use scylla::value::CqlTimestamp;
use tokio::time::Instant;
use twtr_common::cql::{Lwt, Retries, logged_batch, lwt};
use twtr_common::store::StoreError;
use twtr_common::{clock, events};
use twtr_proto::events::v1::envelope::Payload;
use twtr_proto::events::v1::{Envelope, Retweeted, TweetLiked, TweetUnliked, Unretweeted};

use super::statements::ReactionStatements;
use super::{
    COUNT_OP_HEADER, DECIDE_ATTEMPTS, IN_CHUNK, Inner, REPAIR_WINDOW, WAIT_POLL, abandoned, age,
    from_cql, to_cql,
};
use crate::store::{Reacted, Reaction};

/// The last change of a (user, tweet) pair: its `user_likes` or `user_retweets` row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Change {
    /// Liked (or retweeted), or taken back.
    pub(super) on: bool,
    pub(super) version: i32,
    /// When it was decided (Unix ms).
    pub(super) at: i64,
}

impl Change {
    /// The write time of the rows its batch writes: its decision time, in microseconds.
    pub(super) fn write_time(&self) -> i64 {
        self.at.saturating_mul(1000)
    }

    /// The change after this one, to `on`, decided now: at least a millisecond later, so that
    /// its rows' write time is later too, whatever the clocks of the processes deciding them.
    pub(super) fn next(&self, on: bool) -> Self {
        Self {
            on,
            version: self.version + 1,
            at: clock::now_millis().max(self.at + 1),
        }
    }
}

/// A (user, tweet) pair and the tweet's author, for rebuilding the pair's events.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pair {
    pub(super) user: u64,
    pub(super) tweet: u64,
    pub(super) author: u64,
}

impl Inner {
    pub(super) fn reaction(&self, reaction: Reaction) -> &ReactionStatements {
        match reaction {
            Reaction::Like => &self.likes,
            Reaction::Retweet => &self.retweets,
        }
    }

    /// Likes or retweets (`on`), or takes one back, as the trait's `react` (see the
    /// [module docs](self) for the steps and for what a crash leaves).
    pub(super) async fn react(
        &self,
        reaction: Reaction,
        user: u64,
        tweet: u64,
        on: bool,
        event: Envelope,
    ) -> Result<Option<bool>, StoreError> {
        let (Ok(user_key), Ok(tweet_key)) = (i64::try_from(user), i64::try_from(tweet)) else {
            return Ok(None);
        };
        let Some(state) = self.tweet_state(tweet_key).await? else {
            return Ok(None);
        };
        if state.deleted {
            self.settle_deletion(tweet_key, &state).await?;
            return Ok(None);
        }
        let pair = Pair {
            user,
            tweet,
            author: from_cql(state.author)?,
        };
        let statements = self.reaction(reaction);
        let session = self.ks.session();
        // The change this call tried to decide without learning whether it did.
        let mut maybe_decided: Option<Change> = None;
        // Another caller's unsettled change this call waits for, and since when.
        let mut waiting: Option<(Change, Instant)> = None;
        let mut retries = Retries::new(statements.name, DECIDE_ATTEMPTS);
        loop {
            let last = self.last_change(statements, user_key, tweet_key).await?;
            if let Some(last) = last {
                if maybe_decided == Some(last) {
                    // This call's own change, decided after all (and, if this call took long
                    // enough, finished for it meanwhile).
                    if !self.reaction_settled(statements, pair, &last).await? {
                        self.write_reaction(statements, pair, last, &event).await?;
                    }
                    return Ok(Some(true));
                }
                if !self.reaction_settled(statements, pair, &last).await? {
                    let since = match waiting {
                        Some((change, since)) if change == last => since,
                        _ => Instant::now(),
                    };
                    if !abandoned(last.at, since) {
                        waiting = Some((last, since));
                        tokio::time::sleep(WAIT_POLL).await;
                        continue;
                    }
                    tracing::info!(
                        pair.user,
                        pair.tweet,
                        version = last.version,
                        "finishing an abandoned {}",
                        statements.name
                    );
                    let rebuilt = self.rebuilt_reaction(reaction, pair, &last);
                    self.write_reaction(statements, pair, last, &rebuilt)
                        .await?;
                } else if last.on == on && age(last.at) < REPAIR_WINDOW {
                    // A crash between steps 2 and 3 left the count unmoved: move it (a no-op
                    // where the ledger shows it moved).
                    let op = reaction_op(statements, user, last.version);
                    let delta = if on { 1 } else { -1 };
                    statements.counter.apply(tweet_key, &op, delta).await?;
                }
                if last.on == on {
                    return Ok(Some(false));
                }
            } else if !on {
                return Ok(Some(false));
            }
            let next = match last {
                Some(last) => last.next(on),
                None => Change {
                    on,
                    version: 1,
                    at: clock::now_millis(),
                },
            };
            let result = match last {
                None => {
                    let values = (user_key, tweet_key, CqlTimestamp(next.at));
                    session.execute_unpaged(&statements.first, values).await
                }
                Some(last) => {
                    let values = (
                        on,
                        next.version,
                        CqlTimestamp(next.at),
                        user_key,
                        tweet_key,
                        last.version,
                    );
                    session.execute_unpaged(&statements.change, values).await
                }
            };
            match lwt(result)? {
                Lwt::Applied => {
                    self.write_reaction(statements, pair, next, &event).await?;
                    return Ok(Some(true));
                }
                Lwt::Unknown(_) => maybe_decided = Some(next),
                Lwt::NotApplied(_) => {}
            }
            retries.lost().await?;
        }
    }

    /// The last change of (`user`, `tweet`) under `statements`' reaction; `None` if never any.
    pub(super) async fn last_change(
        &self,
        statements: &ReactionStatements,
        user: i64,
        tweet: i64,
    ) -> Result<Option<Change>, StoreError> {
        let rows = self
            .ks
            .session()
            .execute_unpaged(&statements.select, (user, tweet))
            .await?
            .into_rows_result()?;
        match rows.maybe_first_row::<ReactionRow>()? {
            Some((on, Some(version), at)) => Ok(Some(Change {
                on: on == Some(true),
                version,
                at: at.map_or(0, |at| at.0),
            })),
            Some((_, None, _)) => Err(StoreError::Corrupt(format!(
                "{} of user {user} on tweet {tweet} has no version",
                statements.name
            ))),
            None => Ok(None),
        }
    }

    /// Whether step 2 of `change` ran: its mirror row holds its version (a like or retweet), or
    /// is gone (its undoing). Before step 2 the mirror row is the previous change's, as a change
    /// is decided only once the one before it is settled.
    pub(super) async fn reaction_settled(
        &self,
        statements: &ReactionStatements,
        pair: Pair,
        change: &Change,
    ) -> Result<bool, StoreError> {
        let rows = self
            .ks
            .session()
            .execute_unpaged(
                &statements.select_mirror,
                (to_cql(pair.tweet)?, to_cql(pair.user)?),
            )
            .await?
            .into_rows_result()?;
        let mirrored = rows.maybe_first_row::<(Option<i32>,)>()?.map(|(v,)| v);
        Ok(match mirrored {
            Some(version) if change.on => version.is_some_and(|v| v >= change.version),
            None if change.on => false,
            None => true,
            // A mirror row newer than the change cannot be; read it as settled rather than
            // rewrite it forever.
            Some(version) => version.is_some_and(|v| v > change.version),
        })
    }

    /// The event of `change` of `pair`, as its caller built it, with an ID of its own (the
    /// version and the count op, which consumers and the ledger go by, are `change`'s).
    pub(super) fn rebuilt_reaction(
        &self,
        reaction: Reaction,
        pair: Pair,
        change: &Change,
    ) -> Envelope {
        let version = u64::try_from(change.version).unwrap_or(0);
        let payload = reaction_payload(reaction, change.on, pair, version);
        events::envelope(self.ids.next_id(), pair.tweet, payload)
    }

    /// Steps 2 and 3 of the decided `change` of `pair`. Idempotent, and harmless when late:
    /// the mirror row is written at the change's own time.
    pub(super) async fn write_reaction(
        &self,
        statements: &ReactionStatements,
        pair: Pair,
        change: Change,
        event: &Envelope,
    ) -> Result<(), StoreError> {
        let (user_key, tweet_key) = (to_cql(pair.user)?, to_cql(pair.tweet)?);
        let op = reaction_op(statements, pair.user, change.version);
        let mut event = event.clone();
        event.headers.insert(COUNT_OP_HEADER.to_owned(), op.clone());
        crate::store::stamp_reaction_version(
            &mut event,
            u64::try_from(change.version).unwrap_or(0),
        );
        let (mirror, mirror_row): (_, Box<dyn SerializeRow + Send + Sync>) = if change.on {
            let at = CqlTimestamp(change.at);
            let row = (tweet_key, user_key, change.version, at, change.write_time());
            (&statements.insert_mirror, Box::new(row))
        } else {
            let row = (change.write_time(), tweet_key, user_key);
            (&statements.delete_mirror, Box::new(row))
        };
        let batch = logged_batch([mirror, self.outbox.insert()]);
        let values = (mirror_row, self.outbox.row(&event));
        self.ks.session().batch(&batch, values).await?;
        self.outbox.notify();
        let delta = if change.on { 1 } else { -1 };
        statements.counter.apply(tweet_key, &op, delta).await
    }

    /// Which of `tweets` `user` has the reaction on, as a set of keys.
    pub(super) async fn reacted_among(
        &self,
        statements: &ReactionStatements,
        user: i64,
        keys: &[i64],
    ) -> Result<std::collections::HashSet<u64>, StoreError> {
        let session = self.ks.session();
        let reads = keys.chunks(IN_CHUNK).map(|chunk| async move {
            let rows = session
                .execute_unpaged(&statements.select_flags, (user, chunk))
                .await?
                .into_rows_result()?;
            let mut on = Vec::new();
            for row in rows.rows::<(i64, Option<bool>)>()? {
                let (tweet, flag) = row?;
                if flag == Some(true) {
                    on.push(from_cql(tweet)?);
                }
            }
            Ok::<_, StoreError>(on)
        });
        let mut on = std::collections::HashSet::new();
        for found in join_all(reads).await {
            on.extend(found?);
        }
        Ok(on)
    }

    /// The trait's `reacted`.
    pub(super) async fn reacted(
        &self,
        reaction: Reaction,
        user: u64,
        before: Option<u64>,
        max: usize,
    ) -> Result<Reacted, StoreError> {
        let (Ok(user), Ok(before)) = (
            i64::try_from(user),
            i64::try_from(before.unwrap_or(i64::MAX as u64)),
        ) else {
            return Ok(Reacted::default());
        };
        // One row more than asked, to learn whether another batch follows.
        let take = i32::try_from(max + 1).unwrap_or(i32::MAX);
        let rows = self
            .ks
            .session()
            .execute_unpaged(&self.reaction(reaction).scan, (user, before, take))
            .await?
            .into_rows_result()?;
        let mut scanned = Vec::new();
        for row in rows.rows::<(i64, Option<bool>)>()? {
            let (tweet, on) = row?;
            scanned.push((from_cql(tweet)?, on == Some(true)));
        }
        let next = if scanned.len() > max {
            scanned.truncate(max);
            scanned.last().map(|(tweet, _)| *tweet)
        } else {
            None
        };
        let tweets = scanned
            .into_iter()
            .filter_map(|(tweet, on)| on.then_some(tweet))
            .collect();
        Ok(Reacted { tweets, next })
    }
}

/// What a like or retweet (`on`), or its undoing, of `pair` at `version` announces.
pub(super) fn reaction_payload(reaction: Reaction, on: bool, pair: Pair, version: u64) -> Payload {
    let (tweet_id, author_id, user_id) = (pair.tweet, pair.author, pair.user);
    match (reaction, on) {
        (Reaction::Like, true) => Payload::TweetLiked(TweetLiked {
            tweet_id,
            author_id,
            user_id,
            version,
        }),
        (Reaction::Like, false) => Payload::TweetUnliked(TweetUnliked {
            tweet_id,
            author_id,
            user_id,
            version,
        }),
        (Reaction::Retweet, true) => Payload::Retweeted(Retweeted {
            tweet_id,
            author_id,
            user_id,
            version,
        }),
        (Reaction::Retweet, false) => Payload::Unretweeted(Unretweeted {
            tweet_id,
            author_id,
            user_id,
            version,
        }),
    }
}

/// The count op key of a like's or retweet's change to `version`.
pub(super) fn reaction_op(statements: &ReactionStatements, user: u64, version: i32) -> String {
    format!("{}:{user}:{version}", statements.name)
}

/// A (user, tweet) row of `user_likes` or `user_retweets`: whether it is on, its version, and
/// when its last change was decided.
pub(super) type ReactionRow = (Option<bool>, Option<i32>, Option<CqlTimestamp>);
