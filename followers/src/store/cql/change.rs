//! A change of an edge, follow or unfollow, in its three steps (decide, write, count), after
//! finishing whatever the edge's last change left undone (see the [module docs](super)).

use std::time::Duration;

use futures_util::future::try_join;
use scylla::serialize::row::SerializeRow;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlTimestamp;
use tokio::time::Instant;
use twtr_common::clock;
use twtr_common::cql::{Lwt, Retries, lwt};
use twtr_common::store::StoreError;
use twtr_proto::events::v1::envelope::Payload;
use twtr_proto::events::v1::{Envelope, UserFollowed};

use super::{
    ABANDONED_AFTER, COUNT_REPAIR_WINDOW, DECIDE_ATTEMPTS, Inner, MAX_WAIT, WAIT_POLL, from_key,
    key, ts,
};
use crate::store::stamp_version;

/// The two ends of an edge.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pair {
    pub(super) follower: u64,
    pub(super) followee: u64,
}

impl Pair {
    pub(super) fn keys(self) -> (i64, i64) {
        (key(self.follower), key(self.followee))
    }

    /// The count op of `edge`'s last change (see `cql/tweets/001_init.cql`).
    pub(super) fn op(self, edge: &Edge) -> String {
        format!(
            "follow:{}:{}:{}",
            self.follower, self.followee, edge.version
        )
    }
}

/// A `follow_edges` row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Edge {
    pub(super) following: bool,
    pub(super) version: i32,
    /// The key of the edge's list rows: the ID of the event of the follow that made them.
    pub(super) follow_id: i64,
    /// When the current state was decided (ms).
    pub(super) changed_at: i64,
}

impl Edge {
    /// The version as events carry it.
    pub(super) fn version_number(&self) -> u64 {
        u64::try_from(self.version).unwrap_or(0)
    }

    pub(super) fn age(&self) -> Duration {
        Duration::from_millis(u64::try_from(clock::now_millis() - self.changed_at).unwrap_or(0))
    }
}

/// The columns of `SELECT_EDGE`.
pub(super) type EdgeRow = (Option<bool>, Option<i32>, Option<i64>, Option<CqlTimestamp>);

/// Another caller's change of the edge stayed unwritten for [`MAX_WAIT`]; the caller may try
/// again.
#[derive(Debug, thiserror::Error)]
#[error("{0}: too much contention, try again")]
struct Contended(&'static str);

impl Inner {
    /// Follows (`follow`) or unfollows; true when this call made the change and staged `event`.
    pub(super) async fn change(
        &self,
        pair: Pair,
        follow: bool,
        event: Envelope,
    ) -> Result<bool, StoreError> {
        let (follower, followee) = pair.keys();
        let mine = key(event.event_id);
        // Changes this call tried to decide without learning whether they landed.
        let mut maybe_decided: Vec<Edge> = Vec::new();
        // The other caller's change this call waits for, and since when.
        let mut waiting: Option<(Edge, Instant)> = None;
        let mut retries = Retries::new("follow edge", DECIDE_ATTEMPTS);
        loop {
            let Some(edge) = self.edge(pair).await? else {
                if !follow {
                    return Ok(false);
                }
                let first = Edge {
                    following: true,
                    version: 1,
                    follow_id: mine,
                    changed_at: clock::now_millis(),
                };
                let values = (follower, followee, mine, ts(first.changed_at));
                match self.execute_lwt(&self.first_follow, values).await? {
                    Lwt::Applied => {
                        self.write(pair, first, Some(&event)).await?;
                        return Ok(true);
                    }
                    Lwt::Unknown(_) => maybe_decided.push(first),
                    Lwt::NotApplied(_) => {}
                }
                retries.lost().await?;
                continue;
            };
            let written = self.is_listed(pair, &edge).await? == edge.following;
            // This call's own change (a follow's ID is its event's, so a retry with the same
            // event knows it too), decided after all.
            if maybe_decided.contains(&edge) || (follow && edge.following && edge.follow_id == mine)
            {
                if written {
                    // Finished for it meanwhile: a follow with its own event (rebuilt), an
                    // unfollow by a caller that took it over and announced it.
                    return Ok(edge.following);
                }
                self.write(pair, edge, Some(&event)).await?;
                return Ok(true);
            }
            if written {
                // A crash between steps 2 and 3 left a count unmoved: move it (a no-op where
                // the ledger shows it moved).
                if edge.age() < COUNT_REPAIR_WINDOW {
                    self.count(pair, &edge).await?;
                }
            } else if edge.age() < ABANDONED_AFTER {
                // Another caller is writing this change: wait for it.
                let since = match waiting {
                    Some((pending, since)) if pending == edge => since,
                    _ => Instant::now(),
                };
                if since.elapsed() >= MAX_WAIT {
                    return Err(StoreError::backend(Contended(
                        "another change of this follow edge is still being written",
                    )));
                }
                waiting = Some((edge, since));
                tokio::time::sleep(WAIT_POLL).await;
                continue;
            } else if edge.following {
                tracing::info!(
                    pair.follower,
                    pair.followee,
                    version = edge.version,
                    "finishing an abandoned follow"
                );
                self.write(pair, edge, Some(&rebuilt_follow(pair, &edge)))
                    .await?;
            } else if !follow {
                // An abandoned unfollow, which this call asks for too: take it over, so that
                // one caller announces it.
                let taken = Edge {
                    changed_at: clock::now_millis(),
                    ..edge
                };
                let values = (
                    ts(taken.changed_at),
                    follower,
                    followee,
                    edge.version,
                    ts(edge.changed_at),
                );
                match self.execute_lwt(&self.take_over, values).await? {
                    Lwt::Applied => {
                        tracing::info!(
                            pair.follower,
                            pair.followee,
                            version = edge.version,
                            "took over an abandoned unfollow"
                        );
                        self.write(pair, taken, Some(&event)).await?;
                        return Ok(true);
                    }
                    Lwt::Unknown(_) => maybe_decided.push(taken),
                    Lwt::NotApplied(_) => {}
                }
                retries.lost().await?;
                continue;
            } else {
                // An abandoned unfollow, and this call follows: finish it without an event; the
                // follow's own event supersedes it.
                tracing::info!(
                    pair.follower,
                    pair.followee,
                    version = edge.version,
                    "finishing an abandoned unfollow"
                );
                self.write(pair, edge, None).await?;
            }
            if edge.following == follow {
                return Ok(false);
            }
            let next = Edge {
                following: follow,
                version: edge.version + 1,
                // An unfollow keeps the follow ID: its batch deletes the rows it keys.
                follow_id: if follow { mine } else { edge.follow_id },
                changed_at: clock::now_millis(),
            };
            let values = (
                next.following,
                next.version,
                next.follow_id,
                ts(next.changed_at),
                follower,
                followee,
                edge.version,
            );
            match self.execute_lwt(&self.change_edge, values).await? {
                Lwt::Applied => {
                    self.write(pair, next, Some(&event)).await?;
                    return Ok(true);
                }
                Lwt::Unknown(_) => maybe_decided.push(next),
                Lwt::NotApplied(_) => {}
            }
            retries.lost().await?;
        }
    }

    /// Steps 2 and 3 of the decided change `edge`: the logged batch of the list rows and the
    /// event (none when a follow finishes an abandoned unfollow), then the counts. Idempotent.
    pub(super) async fn write(
        &self,
        pair: Pair,
        edge: Edge,
        event: Option<&Envelope>,
    ) -> Result<(), StoreError> {
        let (follower, followee) = pair.keys();
        let id = edge.follow_id;
        // The event says which version of the edge it announces: the one decided in step 1,
        // whoever writes it.
        let event = event.map(|event| {
            let mut event = event.clone();
            stamp_version(&mut event, edge.version_number());
            event
        });
        match (edge.following, event.as_ref()) {
            (true, Some(event)) => {
                let at = ts(edge.changed_at);
                let rows = (
                    (follower, id, followee, at),
                    (followee, id, follower, at),
                    self.outbox.row(event),
                );
                self.session().batch(&self.follow_batch, rows).await?;
            }
            (false, Some(event)) => {
                let rows = (
                    (follower, id, followee),
                    (followee, id, follower),
                    self.outbox.row(event),
                );
                self.session().batch(&self.unfollow_batch, rows).await?;
            }
            (false, None) => {
                let rows = ((follower, id, followee), (followee, id, follower));
                self.session()
                    .batch(&self.quiet_unfollow_batch, rows)
                    .await?;
            }
            (true, None) => {
                return Err(StoreError::Corrupt(
                    "a follow is always written with its event".to_owned(),
                ));
            }
        }
        if event.is_some() {
            self.outbox.notify();
        }
        self.count(pair, &edge).await
    }

    /// Step 3: moves both users' counts by `edge`'s last change, once.
    pub(super) async fn count(&self, pair: Pair, edge: &Edge) -> Result<(), StoreError> {
        let op = pair.op(edge);
        let delta = if edge.following { 1 } else { -1 };
        try_join(
            self.following_count.apply(key(pair.follower), &op, delta),
            self.followers_count.apply(key(pair.followee), &op, delta),
        )
        .await?;
        Ok(())
    }

    pub(super) async fn edge(&self, pair: Pair) -> Result<Option<Edge>, StoreError> {
        let row = self
            .session()
            .execute_unpaged(&self.select_edge, pair.keys())
            .await?
            .into_rows_result()?
            .maybe_first_row::<EdgeRow>()?;
        let Some(row) = row else {
            return Ok(None);
        };
        let (Some(following), Some(version), Some(follow_id), Some(changed_at)) = row else {
            return Err(StoreError::Corrupt(format!(
                "follow edge {} -> {} lacks a column: {row:?}",
                pair.follower, pair.followee
            )));
        };
        Ok(Some(Edge {
            following,
            version,
            follow_id,
            changed_at: changed_at.0,
        }))
    }

    /// Whether the `following` row of `edge`'s follow exists.
    pub(super) async fn is_listed(&self, pair: Pair, edge: &Edge) -> Result<bool, StoreError> {
        let (follower, followee) = pair.keys();
        Ok(self
            .session()
            .execute_unpaged(&self.select_listed, (follower, edge.follow_id, followee))
            .await?
            .into_rows_result()?
            .rows_num()
            > 0)
    }

    /// Runs a lightweight transaction: what it did.
    pub(super) async fn execute_lwt(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<Lwt, StoreError> {
        Ok(lwt(self
            .session()
            .execute_unpaged(statement, values)
            .await)?)
    }
}

/// The `UserFollowed` event of an abandoned follow, as its caller built it: its ID is the
/// follow ID, and the service makes the follower the aggregate, so it lands on the outbox row
/// the first caller would have written.
pub(super) fn rebuilt_follow(pair: Pair, edge: &Edge) -> Envelope {
    let payload = Payload::UserFollowed(UserFollowed {
        follower_id: pair.follower,
        followee_id: pair.followee,
        version: edge.version_number(),
    });
    let mut event = twtr_common::events::envelope(from_key(edge.follow_id), pair.follower, payload);
    event.occurred_at = Some(clock::to_timestamp(edge.changed_at));
    event
}
