//! [`EmbeddedFollowStore`]: the follow graph in a redb file, each change one transaction.
//!
//! The tables mirror `cql/followers/`: each edge's state and version (kept after an unfollow,
//! so the version keeps counting), the two lists keyed by follow ID (newest follow first), the
//! counts, and the deleted accounts with their pending purges. A follow checks both accounts,
//! decides the version, writes the lists, moves the counts and stages its event in one
//! transaction, so no follow can land after a deletion is recorded.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use redb::{ReadableTable as _, TableDefinition};
use twtr_common::embedded::{DeletedAccounts, EmbeddedDb, Tx};
use twtr_common::outbox::Outbox;
use twtr_common::store::{PendingPurge, StoreError};
use twtr_common::{IdGenerator, Page, PageRequest, id};
use twtr_proto::events::v1::Envelope;

use super::{Counts, Direction, FollowEntry, FollowOutcome, FollowStore, stamp_version};

/// An edge's state: (following, version, follow ID, changed at ms). The version goes up by one
/// per change; the follow ID keys the edge's list rows.
type EdgeState = (bool, u64, u64, i64);

/// (follower, followee) -> [`EdgeState`]: every edge ever made.
const EDGES: TableDefinition<(u64, u64), EdgeState> = TableDefinition::new("follow_edges");
/// (follower, follow ID, followee) -> followed at (ms): whom a user follows, live edges only.
const FOLLOWING: TableDefinition<(u64, u64, u64), i64> = TableDefinition::new("following_list");
/// (followee, follow ID, follower) -> followed at (ms): who follows a user, live edges only.
const FOLLOWERS: TableDefinition<(u64, u64, u64), i64> = TableDefinition::new("followers_list");
/// User -> (followers, following).
const COUNTS: TableDefinition<u64, (u64, u64)> = TableDefinition::new("follow_counts");
/// Deleted accounts (refused on either end of a follow) and those whose purge is not done.
const DELETED_ACCOUNTS: DeletedAccounts = DeletedAccounts::new("gone_users", "user_purges");
/// The first format: (follower, followee) -> followed at (ms), without versions or follow IDs.
/// Moved into the tables above when a store opens, then left empty.
const LEGACY_FOLLOWING: TableDefinition<(u64, u64), i64> = TableDefinition::new("following");
/// The first format's mirror of [`LEGACY_FOLLOWING`].
const LEGACY_FOLLOWERS: TableDefinition<(u64, u64), i64> = TableDefinition::new("followers");

/// The graph in a redb file (`followers.redb` under the data directory).
#[derive(Debug, Clone)]
pub struct EmbeddedFollowStore {
    db: EmbeddedDb,
}

impl EmbeddedFollowStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = EmbeddedDb::open(path, |tx| {
            tx.open_table(EDGES)?;
            tx.open_table(FOLLOWING)?;
            tx.open_table(FOLLOWERS)?;
            tx.open_table(COUNTS)?;
            DELETED_ACCOUNTS.create(tx)?;
            upgrade_legacy(tx)
        })?;
        Ok(Self { db })
    }
}

/// Moves edges of the first format into the versioned tables: version 1, and follow IDs minted
/// now in the order the edges were made, so every one sits below any later follow and the
/// lists keep their order. The counts were kept the same way, so they stay.
fn upgrade_legacy(tx: &Tx<'_>) -> Result<(), StoreError> {
    let mut legacy = tx.open_table(LEGACY_FOLLOWING)?;
    let mut edges: Vec<(i64, u64, u64)> = Vec::new();
    for row in legacy.iter()? {
        let (pair, at) = row?;
        let (follower, followee) = pair.value();
        edges.push((at.value(), follower, followee));
    }
    if edges.is_empty() {
        return Ok(());
    }
    edges.sort_unstable();
    let ids = IdGenerator::new(id::MAX_WORKER)
        .map_err(|err| StoreError::Corrupt(format!("no worker to upgrade with: {err}")))?;
    for (at, follower, followee) in &edges {
        let follow_id = ids.next_id();
        tx.open_table(EDGES)?
            .insert((*follower, *followee), (true, 1, follow_id, *at))?;
        tx.open_table(FOLLOWING)?
            .insert((*follower, follow_id, *followee), *at)?;
        tx.open_table(FOLLOWERS)?
            .insert((*followee, follow_id, *follower), *at)?;
        legacy.remove((*follower, *followee))?;
    }
    let mut legacy_followers = tx.open_table(LEGACY_FOLLOWERS)?;
    for (_, follower, followee) in &edges {
        legacy_followers.remove((*followee, *follower))?;
    }
    tracing::info!(
        edges = edges.len(),
        "moved follow edges to the versioned format"
    );
    Ok(())
}

/// A list row's key as an entry: (user, follow ID, the other user).
fn entry((_, follow_id, user_id): (u64, u64, u64)) -> FollowEntry {
    FollowEntry { user_id, follow_id }
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
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(self.db.ping().await?)
    }

    async fn follow(
        &self,
        follower: u64,
        followee: u64,
        mut event: Envelope,
    ) -> Result<FollowOutcome, StoreError> {
        let at = twtr_common::clock::now_millis();
        let follow_id = event.event_id;
        self.db
            .write(move |tx| {
                if DELETED_ACCOUNTS.is_gone_in(tx, follower)?
                    || DELETED_ACCOUNTS.is_gone_in(tx, followee)?
                {
                    return Ok(FollowOutcome::AccountGone);
                }
                let mut edges = tx.open_table(EDGES)?;
                let previous = edges.get((follower, followee))?.map(|e| e.value());
                let version = match previous {
                    Some((true, ..)) => return Ok(FollowOutcome::AlreadyFollowing),
                    Some((false, version, ..)) => version + 1,
                    None => 1,
                };
                edges.insert((follower, followee), (true, version, follow_id, at))?;
                tx.open_table(FOLLOWING)?
                    .insert((follower, follow_id, followee), at)?;
                tx.open_table(FOLLOWERS)?
                    .insert((followee, follow_id, follower), at)?;
                bump(tx, follower, 0, 1)?;
                bump(tx, followee, 1, 0)?;
                stamp_version(&mut event, version);
                tx.stage_event(&event)?;
                Ok(FollowOutcome::Followed)
            })
            .await
    }

    async fn unfollow(
        &self,
        follower: u64,
        followee: u64,
        mut event: Envelope,
    ) -> Result<bool, StoreError> {
        let at = twtr_common::clock::now_millis();
        self.db
            .write(move |tx| {
                let mut edges = tx.open_table(EDGES)?;
                let Some((true, version, follow_id, _)) =
                    edges.get((follower, followee))?.map(|e| e.value())
                else {
                    return Ok(false);
                };
                let version = version + 1;
                // The follow ID stays: it says which list rows the edge had.
                edges.insert((follower, followee), (false, version, follow_id, at))?;
                tx.open_table(FOLLOWING)?
                    .remove((follower, follow_id, followee))?;
                tx.open_table(FOLLOWERS)?
                    .remove((followee, follow_id, follower))?;
                bump(tx, follower, 0, -1)?;
                bump(tx, followee, -1, 0)?;
                stamp_version(&mut event, version);
                tx.stage_event(&event)?;
                Ok(true)
            })
            .await
    }

    async fn is_following(&self, follower: u64, followee: u64) -> Result<bool, StoreError> {
        self.db
            .read(move |txn| {
                Ok(txn
                    .open_table(EDGES)?
                    .get((follower, followee))?
                    .is_some_and(|edge| edge.value().0))
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

    async fn list(
        &self,
        user: u64,
        direction: Direction,
        page: PageRequest,
    ) -> Result<Page<FollowEntry>, StoreError> {
        self.db
            .read(move |txn| {
                let table = txn.open_table(match direction {
                    Direction::Followers => FOLLOWERS,
                    Direction::Following => FOLLOWING,
                })?;
                let upper = (user, page.before.unwrap_or(u64::MAX), 0);
                let take = page.limit.get() + 1;
                let mut scanned = Vec::with_capacity(take);
                match page.since {
                    Some(since) => {
                        let lower = (user, since.saturating_add(1), 0);
                        if lower < upper {
                            for row in table.range(lower..upper)?.take(take) {
                                scanned.push(entry(row?.0.value()));
                            }
                        }
                    }
                    None => {
                        for row in table.range((user, 0, 0)..upper)?.rev().take(take) {
                            scanned.push(entry(row?.0.value()));
                        }
                    }
                }
                Ok(Page::from_scan(&page, scanned, |e| e.follow_id))
            })
            .await
    }

    async fn forget_user(&self, user: u64) -> Result<(), StoreError> {
        DELETED_ACCOUNTS.forget(&self.db, user).await
    }

    async fn user_gone(&self, user: u64) -> Result<bool, StoreError> {
        DELETED_ACCOUNTS.is_gone(&self.db, user).await
    }

    async fn pending_purges(&self, max: usize) -> Result<Vec<PendingPurge>, StoreError> {
        DELETED_ACCOUNTS.pending(&self.db, max).await
    }

    async fn purge_done(&self, purge: PendingPurge) -> Result<(), StoreError> {
        DELETED_ACCOUNTS.done(&self.db, purge).await
    }

    fn outbox(&self) -> Arc<dyn Outbox> {
        Arc::new(self.db.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::{followed, staged_events, unfollowed, users, version_of};

    async fn open_embedded() -> (Arc<dyn FollowStore>, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store =
            EmbeddedFollowStore::open(&dir.path().join("followers.redb")).expect("open store");
        (Arc::new(store), dir)
    }

    crate::follow_store_conformance!(open_embedded);

    #[tokio::test]
    async fn edges_of_the_first_format_are_moved_in_their_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("followers.redb");
        let [a, b, c] = users();
        {
            // What the first format wrote: a follows b, then c follows b, then a follows c.
            let db = redb::Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut following = txn.open_table(LEGACY_FOLLOWING).unwrap();
                let mut followers = txn.open_table(LEGACY_FOLLOWERS).unwrap();
                let mut counts = txn.open_table(COUNTS).unwrap();
                for (follower, followee, at) in [(a, b, 1_000), (c, b, 2_000), (a, c, 3_000)] {
                    following.insert((follower, followee), at).unwrap();
                    followers.insert((followee, follower), at).unwrap();
                }
                counts.insert(a, (0, 2)).unwrap();
                counts.insert(b, (2, 0)).unwrap();
                counts.insert(c, (1, 1)).unwrap();
            }
            txn.commit().unwrap();
        }
        let store = EmbeddedFollowStore::open(&path).unwrap();
        let first = PageRequest::first(twtr_common::Limit::DEFAULT);
        let others = |page: Page<FollowEntry>| -> Vec<u64> {
            page.items.iter().map(|entry| entry.user_id).collect()
        };
        let b_followers = store.list(b, Direction::Followers, first).await.unwrap();
        assert_eq!(others(b_followers), vec![c, a], "newest follow first");
        let a_following = store.list(a, Direction::Following, first).await.unwrap();
        assert_eq!(others(a_following), vec![c, b]);
        assert!(store.is_following(c, b).await.unwrap());
        assert_eq!(
            store.counts(vec![b]).await.unwrap(),
            vec![Counts {
                followers: 2,
                following: 0
            }]
        );
        // A follow made now goes on top; unfollowing a moved edge is its version 2.
        let [d] = users();
        let now = followed(d, b);
        assert_eq!(
            store.follow(d, b, now).await.unwrap(),
            FollowOutcome::Followed
        );
        let b_followers = store.list(b, Direction::Followers, first).await.unwrap();
        assert_eq!(others(b_followers), vec![d, c, a]);
        let unfollow = unfollowed(a, c);
        assert!(store.unfollow(a, c, unfollow.clone()).await.unwrap());
        let store: Arc<dyn FollowStore> = Arc::new(store);
        let staged = staged_events(&store).await;
        assert_eq!(staged.get(&unfollow.event_id).map(version_of), Some(2));
        drop(store);
        // Opening again moves nothing twice.
        let store = EmbeddedFollowStore::open(&path).unwrap();
        let b_followers = store.list(b, Direction::Followers, first).await.unwrap();
        assert_eq!(others(b_followers), vec![d, c, a]);
        let a_following = store.list(a, Direction::Following, first).await.unwrap();
        assert_eq!(others(a_following), vec![b]);
    }
}
