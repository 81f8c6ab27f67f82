//! The follow graph. Domain code sees only [`FollowStore`]; [`EmbeddedFollowStore`] is the
//! embedded backend (redb), and every backend must pass [`conformance`].

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use redb::{ReadableTable as _, TableDefinition};
use twtr_common::embedded::{EmbeddedDb, Tx};
use twtr_common::outbox::Outbox;
use twtr_common::store::StoreError;
use twtr_proto::events::v1::Envelope;

/// Follower and following counts of one user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub followers: u64,
    pub following: u64,
}

#[async_trait]
pub trait FollowStore: Send + Sync {
    /// Adds the edge, updates both counts and stages `event`, atomically. Returns false (and
    /// writes nothing) when the edge already exists.
    async fn follow(
        &self,
        follower: u64,
        followee: u64,
        event: Envelope,
    ) -> Result<bool, StoreError>;
    /// Removes the edge, updates both counts and stages `event`, atomically. Returns false (and
    /// writes nothing) when there was no edge.
    async fn unfollow(
        &self,
        follower: u64,
        followee: u64,
        event: Envelope,
    ) -> Result<bool, StoreError>;
    async fn is_following(&self, follower: u64, followee: u64) -> Result<bool, StoreError>;
    /// Counts for each user, in the order given.
    async fn counts(&self, users: Vec<u64>) -> Result<Vec<Counts>, StoreError>;
    fn outbox(&self) -> Arc<dyn Outbox>;
}

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

/// The behaviour every [`FollowStore`] backend must show. Backends invoke
/// [`follow_store_conformance!`](crate::follow_store_conformance) in their tests.
#[allow(clippy::unwrap_used, clippy::expect_used)] // a test suite: a panic is the failure report
pub mod conformance {
    use super::*;

    #[macro_export]
    macro_rules! follow_store_conformance {
        ($open:path) => {
            mod follow_store_conformance {
                use super::*;
                twtr_common::conformance_tests!($open => $crate::store::conformance:
                    follow_is_idempotent_and_counted_once,
                    unfollow_is_idempotent_and_uncounted_once,
                );
            }
        };
    }

    pub fn event(id: u64) -> Envelope {
        Envelope {
            event_id: id,
            r#type: "followers.user_followed".to_owned(),
            ..Envelope::default()
        }
    }

    async fn staged(store: &Arc<dyn FollowStore>) -> Vec<u64> {
        twtr_common::outbox::pending_ids(store.outbox().as_ref(), 100)
            .await
            .unwrap()
    }

    pub async fn follow_is_idempotent_and_counted_once(store: Arc<dyn FollowStore>) {
        assert!(store.follow(1, 2, event(10)).await.unwrap());
        assert!(!store.follow(1, 2, event(11)).await.unwrap());
        assert!(store.follow(3, 2, event(12)).await.unwrap());
        assert!(store.is_following(1, 2).await.unwrap());
        assert!(!store.is_following(2, 1).await.unwrap());
        let counts = store.counts(vec![1, 2, 3, 4]).await.unwrap();
        assert_eq!(
            counts[0],
            Counts {
                followers: 0,
                following: 1
            }
        );
        assert_eq!(
            counts[1],
            Counts {
                followers: 2,
                following: 0
            }
        );
        assert_eq!(
            counts[2],
            Counts {
                followers: 0,
                following: 1
            }
        );
        assert_eq!(counts[3], Counts::default());
        assert_eq!(
            staged(&store).await,
            vec![10, 12],
            "a repeated follow publishes nothing"
        );
    }

    pub async fn unfollow_is_idempotent_and_uncounted_once(store: Arc<dyn FollowStore>) {
        assert!(!store.unfollow(1, 2, event(9)).await.unwrap());
        store.follow(1, 2, event(10)).await.unwrap();
        assert!(store.unfollow(1, 2, event(11)).await.unwrap());
        assert!(!store.unfollow(1, 2, event(12)).await.unwrap());
        assert!(!store.is_following(1, 2).await.unwrap());
        assert_eq!(
            store.counts(vec![1, 2]).await.unwrap(),
            vec![Counts::default(); 2]
        );
        assert_eq!(staged(&store).await, vec![10, 11]);
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
