//! The follow graph. Domain code sees only [`FollowStore`]; every backend must pass
//! [`conformance`].
//!
//! # Layout
//!
//! - this module: the [`FollowStore`] trait, what it answers ([`Counts`], [`FollowOutcome`],
//!   [`FollowEntry`]) and [`stamp_version`].
//! - [`embedded`]: [`EmbeddedFollowStore`], the graph in a redb file (one transaction per
//!   change: the edge's state and version, both lists, both counts and the event).
//! - [`cql`]: [`CqlFollowStore`], the graph on ScyllaDB / Cassandra (a change decided by a
//!   lightweight transaction on the edge, then one logged batch for the lists and the event,
//!   then each count moved once through a ledger).
//! - [`conformance`]: the suite both backends pass, and its macro
//!   [`follow_store_conformance!`](crate::follow_store_conformance).

#[cfg(any(test, feature = "testsuite"))]
pub mod conformance;
pub mod cql;
pub mod embedded;

use std::sync::Arc;

use async_trait::async_trait;
use twtr_common::outbox::Outbox;
use twtr_common::store::{PendingPurge, StoreError};
use twtr_common::{Page, PageRequest};
use twtr_proto::events::v1::Envelope;
use twtr_proto::events::v1::envelope::Payload;

pub use cql::CqlFollowStore;
pub use embedded::EmbeddedFollowStore;

/// Follower and following counts of one user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub followers: u64,
    pub following: u64,
}

/// What [`FollowStore::follow`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FollowOutcome {
    /// This call made the edge and staged its event.
    Followed,
    /// The edge was there already: nothing written.
    AlreadyFollowing,
    /// One of the two accounts is deleted ([`FollowStore::forget_user`]): nothing written.
    AccountGone,
}

/// One edge in a user's follower or following list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FollowEntry {
    /// The other end of the edge: the follower in a followers list, the followee in a
    /// following list.
    pub user_id: u64,
    /// The ID of the follow that made the edge (its `UserFollowed` event's ID): the list's order
    /// and its cursor.
    pub follow_id: u64,
}

/// Which list of a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Who follows the user.
    Followers,
    /// Whom the user follows.
    Following,
}

/// Sets the edge version into a `UserFollowed` or `UserUnfollowed` event (any other event is
/// left as it is). Stores call it once they know the version their change makes.
pub fn stamp_version(event: &mut Envelope, version: u64) {
    match &mut event.payload {
        Some(Payload::UserFollowed(followed)) => followed.version = version,
        Some(Payload::UserUnfollowed(unfollowed)) => unfollowed.version = version,
        _ => {}
    }
}

/// The `followers` keyspace's schema: the numbered files in `cql/followers/`, which `twtr migrate`
/// applies (see `twtr_common::cql::migrate`). A file added there must be added here too (a test
/// checks).
pub const SCHEMA: twtr_common::cql::Schema = twtr_common::cql_schema!(
    "followers":
    1 => "001_init.cql",
    2 => "002_gone_users.cql",
    3 => "003_purges_by_time.cql",
    4 => "004_outbox_by_time.cql",
);

#[async_trait]
pub trait FollowStore: Send + Sync {
    /// Whether the store answers right now, by a cheap round trip: the service's readiness, and
    /// what its event consumer probes before it spends a retry (`twtr_common::bus::consume`).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Adds the edge, moves both counts and stages `event` (a `UserFollowed`, into which it sets
    /// the edge's new version), atomically. The edge's version goes up by one per change of the
    /// pair, starting at 1; the edge's follow ID becomes `event`'s ID, which puts it on top of
    /// both lists. Writes nothing when the edge exists or either account is gone.
    async fn follow(
        &self,
        follower: u64,
        followee: u64,
        event: Envelope,
    ) -> Result<FollowOutcome, StoreError>;
    /// Removes the edge from both lists, moves both counts and stages `event` (a
    /// `UserUnfollowed`, into which it sets the edge's new version), atomically. Returns false
    /// (and writes nothing) when there was no edge. Works whether or not the accounts are gone:
    /// the purge of a deleted account unfollows with it.
    async fn unfollow(
        &self,
        follower: u64,
        followee: u64,
        event: Envelope,
    ) -> Result<bool, StoreError>;
    async fn is_following(&self, follower: u64, followee: u64) -> Result<bool, StoreError>;
    /// Counts for each user, in the order given.
    async fn counts(&self, users: Vec<u64>) -> Result<Vec<Counts>, StoreError>;
    /// One page of `user`'s followers or following list, newest follow first; cursors are
    /// follow IDs.
    async fn list(
        &self,
        user: u64,
        direction: Direction,
        page: PageRequest,
    ) -> Result<Page<FollowEntry>, StoreError>;
    /// Records that the account `user` was deleted (the users service's `UserDeleted`): from
    /// now on [`FollowStore::follow`] refuses them on either end, [`FollowStore::user_gone`]
    /// says so, and they are among [`FollowStore::pending_purges`] until
    /// [`FollowStore::purge_done`]. Idempotent; a purge already done is not pending again.
    async fn forget_user(&self, user: u64) -> Result<(), StoreError>;
    /// Whether `user`'s account was deleted.
    async fn user_gone(&self, user: u64) -> Result<bool, StoreError>;
    /// Deleted accounts whose edges may remain, at most `max`. An account may be listed twice
    /// (two records of one deletion): purging it twice is harmless.
    async fn pending_purges(&self, max: usize) -> Result<Vec<PendingPurge>, StoreError>;
    /// The purge of `purge` (one of [`FollowStore::pending_purges`]'s entries) is complete.
    async fn purge_done(&self, purge: PendingPurge) -> Result<(), StoreError>;
    /// Whether a follow can land after a deletion of one of its users was recorded (a backend
    /// whose follow does not check and write in one transaction): the service then checks
    /// again after each follow, and when it consumes its own `UserFollowed` back.
    fn follow_races_deletion(&self) -> bool {
        false
    }
    fn outbox(&self) -> Arc<dyn Outbox>;
}

#[cfg(test)]
mod schema_tests {
    /// Every file of `cql/followers/` is registered, in order, and keeps the rules every migration
    /// relies on (idempotent, keyspace-agnostic, portable between ScyllaDB and Cassandra).
    #[test]
    fn the_schema_files_are_registered_and_follow_the_rules() {
        let problems = super::SCHEMA.problems();
        assert!(problems.is_empty(), "{problems:#?}");
    }
}
