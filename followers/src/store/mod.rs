//! The follow graph. Domain code sees only [`FollowStore`]; every backend must pass
//! [`conformance`].
//!
//! # Layout
//!
//! - this module: the [`FollowStore`] trait and [`Counts`].
//! - [`embedded`]: [`EmbeddedFollowStore`], the graph in a redb file (one transaction per
//!   change: both directions of the edge, both counts and the event).
//! - [`cql`]: [`CqlFollowStore`], the graph on ScyllaDB / Cassandra (a change decided by a
//!   lightweight transaction on the edge, then one logged batch for the lists and the event,
//!   then each count moved once through a ledger).
//! - [`conformance`]: the suite both backends pass, and its macro
//!   [`follow_store_conformance!`](crate::follow_store_conformance).

pub mod conformance;
pub mod cql;
pub mod embedded;

use std::sync::Arc;

use async_trait::async_trait;
use twtr_common::outbox::Outbox;
use twtr_common::store::StoreError;
use twtr_proto::events::v1::Envelope;

pub use cql::CqlFollowStore;
pub use embedded::EmbeddedFollowStore;

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
