//! Where users live. Domain code sees only [`UserStore`]; every backend must pass
//! [`conformance`].
//!
//! # Layout
//!
//! - this module: the [`UserStore`] trait and the records it stores.
//! - [`embedded`]: [`EmbeddedUserStore`], users in a redb file (one transaction per write).
//! - [`cql`]: [`CqlUserStore`], users on ScyllaDB / Cassandra (a username claim by lightweight
//!   transaction, then one logged batch for the row and its event).
//! - [`conformance`]: the suite both backends pass, and its macro
//!   [`user_store_conformance!`](crate::user_store_conformance).

pub mod conformance;
pub mod cql;
pub mod embedded;

use std::sync::Arc;

use async_trait::async_trait;
use twtr_common::outbox::Outbox;
use twtr_common::store::StoreError;
use twtr_proto::events::v1::Envelope;

pub use cql::CqlUserStore;
pub use embedded::EmbeddedUserStore;

/// A stored user. Encoded with protobuf so fields can be added without a migration.
#[derive(Clone, PartialEq, prost::Message)]
pub struct UserRecord {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// As the user typed it; uniqueness is checked on its lowercase form.
    #[prost(string, tag = "2")]
    pub username: String,
    #[prost(string, tag = "3")]
    pub display_name: String,
    #[prost(string, tag = "4")]
    pub bio: String,
    /// PHC string (argon2id).
    #[prost(string, tag = "5")]
    pub password_hash: String,
    #[prost(int64, tag = "6")]
    pub created_at_ms: i64,
}

/// The outcome of [`UserStore::create`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    Created,
    /// Someone holds this username (ignoring case); nothing was written.
    UsernameTaken,
}

#[async_trait]
pub trait UserStore: Send + Sync {
    /// Stores `user` and `event` atomically, unless the username is taken (ignoring case).
    async fn create(&self, user: UserRecord, event: Envelope) -> Result<Created, StoreError>;
    async fn get(&self, id: u64) -> Result<Option<UserRecord>, StoreError>;
    /// Looks a user up by the lowercase form of their username.
    async fn get_by_username(&self, canonical: &str) -> Result<Option<UserRecord>, StoreError>;
    /// The users that exist among `ids`, in the order given.
    async fn get_many(&self, ids: Vec<u64>) -> Result<Vec<UserRecord>, StoreError>;
    /// The outbox that `create` stages events into.
    fn outbox(&self) -> Arc<dyn Outbox>;
}
