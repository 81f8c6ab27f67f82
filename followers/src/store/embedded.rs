//! [`EmbeddedFollowStore`]: the follow graph in a redb file, each change one transaction.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use redb::{ReadableTable as _, TableDefinition};
use twtr_common::embedded::{EmbeddedDb, Tx};
use twtr_common::outbox::Outbox;
use twtr_common::store::StoreError;
use twtr_proto::events::v1::Envelope;

use super::{Counts, FollowStore};

/// (follower, followee) -> followed at (ms): whom a user follows.
const FOLLOWING: TableDefinition<(u64, u64), i64> = TableDefinition::new("following");
/// (followee, follower) -> followed at (ms): who follows a user.
const FOLLOWERS: TableDefinition<(u64, u64), i64> = TableDefinition::new("followers");
/// User -> (followers, following).
const COUNTS: TableDefinition<u64, (u64, u64)> = TableDefinition::new("follow_counts");

/// The graph in a redb file (`followers.redb` under the data directory).
#[derive(Debug, Clone)]
pub struct EmbeddedFollowStore {
    db: EmbeddedDb,
}

impl EmbeddedFollowStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = EmbeddedDb::open(path, |tx| {
            tx.open_table(FOLLOWING)?;
            tx.open_table(FOLLOWERS)?;
            tx.open_table(COUNTS)?;
            Ok(())
        })?;
        Ok(Self { db })
    }
}

/// Adds `delta` (±1) to a user's followers or following count.
fn bump(
    tx: &Tx<'_>,
    user: u64,
    followers_delta: i8,
    following_delta: i8,
) -> Result<(), StoreError> {
    let mut counts = tx.open_table(COUNTS)?;
    let (followers, following) = counts.get(user)?.map_or((0, 0), |c| c.value());
    let apply = |count: u64, delta: i8| count.saturating_add_signed(i64::from(delta));
    counts.insert(
        user,
        (
            apply(followers, followers_delta),
            apply(following, following_delta),
        ),
    )?;
    Ok(())
}

#[async_trait]
impl FollowStore for EmbeddedFollowStore {
    async fn follow(
        &self,
        follower: u64,
        followee: u64,
        event: Envelope,
    ) -> Result<bool, StoreError> {
        let at = twtr_common::clock::now_millis();
        self.db
            .write(move |tx| {
                let mut following = tx.open_table(FOLLOWING)?;
                if following.get((follower, followee))?.is_some() {
                    return Ok(false);
                }
                following.insert((follower, followee), at)?;
                tx.open_table(FOLLOWERS)?.insert((followee, follower), at)?;
                bump(tx, follower, 0, 1)?;
                bump(tx, followee, 1, 0)?;
                tx.stage_event(&event)?;
                Ok(true)
            })
            .await
    }

    async fn unfollow(
        &self,
        follower: u64,
        followee: u64,
        event: Envelope,
    ) -> Result<bool, StoreError> {
        self.db
            .write(move |tx| {
                if tx
                    .open_table(FOLLOWING)?
                    .remove((follower, followee))?
                    .is_none()
                {
                    return Ok(false);
                }
                tx.open_table(FOLLOWERS)?.remove((followee, follower))?;
                bump(tx, follower, 0, -1)?;
                bump(tx, followee, -1, 0)?;
                tx.stage_event(&event)?;
                Ok(true)
            })
            .await
    }

    async fn is_following(&self, follower: u64, followee: u64) -> Result<bool, StoreError> {
        self.db
            .read(move |txn| {
                Ok(txn
                    .open_table(FOLLOWING)?
                    .get((follower, followee))?
                    .is_some())
            })
            .await
    }

    async fn counts(&self, users: Vec<u64>) -> Result<Vec<Counts>, StoreError> {
        self.db
            .read(move |txn| {
                let counts = txn.open_table(COUNTS)?;
                users
                    .into_iter()
                    .map(|user| {
                        let (followers, following) =
                            counts.get(user)?.map_or((0, 0), |c| c.value());
                        Ok(Counts {
                            followers,
                            following,
                        })
                    })
                    .collect()
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

    async fn open_embedded() -> (Arc<dyn FollowStore>, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store =
            EmbeddedFollowStore::open(&dir.path().join("followers.redb")).expect("open store");
        (Arc::new(store), dir)
    }

    crate::follow_store_conformance!(open_embedded);
}
