//! Where users live. Domain code sees only [`UserStore`]; every backend must pass
//! [`conformance`].
//!
//! # Layout
//!
//! - this module: the [`UserStore`] trait and the records it stores.
//! - [`embedded`]: [`EmbeddedUserStore`], users in a redb file (one transaction per write).
//! - [`cql`]: [`CqlUserStore`], users on ScyllaDB / Cassandra (a username claim by lightweight
//!   transaction, then one logged batch for the row and its event; a deletion frees the name
//!   by lightweight transaction after its batch).
//! - [`conformance`]: the suite both backends pass, and its macro
//!   [`user_store_conformance!`](crate::user_store_conformance).

#[cfg(any(test, feature = "testsuite"))]
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

/// A stored user. Encoded with protobuf so fields can be added without a migration. Its
/// `Debug` leaves the password hash out.
#[derive(Clone, PartialEq, prost::Message)]
#[prost(skip_debug)]
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
    /// PHC string (argon2id). Never logged.
    #[prost(string, tag = "5")]
    pub password_hash: String,
    #[prost(int64, tag = "6")]
    pub created_at_ms: i64,
    /// Tokens issued under a lower generation are revoked; a password change raises it.
    #[prost(uint64, tag = "7")]
    pub token_generation: u64,
    /// When the profile or password last changed (the creation time until then).
    #[prost(int64, tag = "8")]
    pub updated_at_ms: i64,
}

/// What `Debug` prints instead of a password hash.
const REDACTED: &str = "[redacted]";

impl std::fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRecord")
            .field("id", &self.id)
            .field("username", &self.username)
            .field("display_name", &self.display_name)
            .field("bio", &self.bio)
            .field("password_hash", &REDACTED)
            .field("created_at_ms", &self.created_at_ms)
            .field("token_generation", &self.token_generation)
            .field("updated_at_ms", &self.updated_at_ms)
            .finish()
    }
}

/// Changes to a profile; `None` leaves a field as it is.
#[derive(Clone, Default)]
pub struct ProfileChanges {
    pub display_name: Option<String>,
    pub bio: Option<String>,
    /// A new password hash, and the token generation that revokes every token issued before.
    pub password: Option<(String, u64)>,
    pub updated_at_ms: i64,
    /// The token generation of the caller making the change: a store whose account has a
    /// higher one (a password change revoked the token meanwhile) writes nothing.
    pub acting_generation: u64,
}

impl std::fmt::Debug for ProfileChanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let password = self
            .password
            .as_ref()
            .map(|(_, generation)| (REDACTED, generation));
        f.debug_struct("ProfileChanges")
            .field("display_name", &self.display_name)
            .field("bio", &self.bio)
            .field("password", &password)
            .field("updated_at_ms", &self.updated_at_ms)
            .field("acting_generation", &self.acting_generation)
            .finish()
    }
}

impl ProfileChanges {
    /// `user` with these changes made.
    pub fn apply_to(self, user: &mut UserRecord) {
        if let Some(display_name) = self.display_name {
            user.display_name = display_name;
        }
        if let Some(bio) = self.bio {
            user.bio = bio;
        }
        if let Some((password_hash, token_generation)) = self.password {
            user.password_hash = password_hash;
            user.token_generation = token_generation;
        }
        user.updated_at_ms = self.updated_at_ms;
    }
}

/// The outcome of [`UserStore::update`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Updated {
    Updated,
    /// No live user has this ID; nothing was written.
    NoSuchUser,
    /// The account's token generation is above the caller's
    /// ([`ProfileChanges::acting_generation`]): the caller's token was revoked; nothing was
    /// written.
    Revoked,
}

/// The outcome of [`UserStore::create`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    Created,
    /// Someone holds this username (ignoring case); nothing was written.
    UsernameTaken,
}

/// The `users` keyspace's schema: the numbered files in `cql/users/`, which `twtr migrate`
/// applies (see `twtr_common::cql::migrate`). A file added there must be added here too (a test
/// checks).
pub const SCHEMA: twtr_common::cql::Schema = twtr_common::cql_schema!(
    "users":
    1 => "001_init.cql",
    2 => "002_token_generation.cql",
    3 => "003_outbox_by_time.cql",
    4 => "004_people_search.cql",
);

#[async_trait]
pub trait UserStore: Send + Sync {
    /// Whether the store answers right now, by a cheap round trip: the service's readiness, and
    /// what its event consumer probes before it spends a retry (`twtr_common::bus::consume`).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Stores `user` and `event` atomically, unless the username is taken (ignoring case). A
    /// user ID that is already stored, live or deleted, is taken for a retry of that sign-up:
    /// nothing is written and the answer is `Created` (so a late replay cannot bring a deleted
    /// account back).
    async fn create(&self, user: UserRecord, event: Envelope) -> Result<Created, StoreError>;
    async fn get(&self, id: u64) -> Result<Option<UserRecord>, StoreError>;
    /// Looks a user up by the lowercase form of their username.
    async fn get_by_username(&self, canonical: &str) -> Result<Option<UserRecord>, StoreError>;
    /// The users that exist among `ids`, in the order given.
    async fn get_many(&self, ids: Vec<u64>) -> Result<Vec<UserRecord>, StoreError>;
    /// Applies `changes` to a live user and stages `event`, atomically, unless there is no such
    /// live user or the caller's token was revoked (see [`Updated`]): then nothing is written.
    ///
    /// The generation check is atomic with the write on the embedded store; on CQL it reads the
    /// account just before the write, so a password change landing within that round trip
    /// cannot stop an update already checked (a compare-and-set would cost a Paxos round on
    /// every profile change, and a logged batch cannot carry one across tables).
    async fn update(
        &self,
        user_id: u64,
        changes: ProfileChanges,
        event: Envelope,
    ) -> Result<Updated, StoreError>;
    /// Deletes a live user: the profile and credentials go, the username is free again at once,
    /// the ID is kept as a tombstone (never reused; a late write cannot bring the account back),
    /// and `event` is staged, atomically where the backend allows. Returns false when there is
    /// no live user (deleting twice is harmless). A deleted user is absent from get,
    /// get_by_username and get_many.
    async fn delete(
        &self,
        user_id: u64,
        deleted_at_ms: i64,
        event: Envelope,
    ) -> Result<bool, StoreError>;
    /// People search by username (see [`crate::search`]): the live users whose lowercase
    /// username starts with `prefix` (lowercase, at least
    /// [`MIN_PREFIX_CHARS`](crate::search::MIN_PREFIX_CHARS) characters), the name itself
    /// included, in username order, at most `limit`.
    async fn find_by_username_prefix(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<UserRecord>, StoreError>;
    /// People search by display name (see [`crate::search`]): live users whose display name
    /// has `word` among its [`name_words`](crate::search::name_words), at most `limit`, in
    /// ID order. A display name's words are written with it: a change moves the user from the
    /// old words to the new, a deletion removes them.
    async fn find_by_name_word(
        &self,
        word: &str,
        limit: usize,
    ) -> Result<Vec<UserRecord>, StoreError>;
    /// The outbox that `create`, `update` and `delete` stage events into.
    fn outbox(&self) -> Arc<dyn Outbox>;
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA";

    #[test]
    fn debug_hides_the_password_hash() {
        let user = UserRecord {
            id: 7,
            username: "ada".to_owned(),
            password_hash: HASH.to_owned(),
            token_generation: 3,
            ..UserRecord::default()
        };
        let shown = format!("{user:?}");
        assert!(!shown.contains(HASH), "{shown}");
        assert!(
            shown.contains("[redacted]") && shown.contains("ada"),
            "{shown}"
        );
        let shown = format!("{user:#?}");
        assert!(!shown.contains(HASH), "{shown}");

        let changes = ProfileChanges {
            bio: Some("hi".to_owned()),
            password: Some((HASH.to_owned(), 4)),
            ..ProfileChanges::default()
        };
        let shown = format!("{changes:?}");
        assert!(!shown.contains(HASH), "{shown}");
        assert!(
            shown.contains("[redacted]") && shown.contains('4'),
            "{shown}"
        );
    }

    #[test]
    fn changes_touch_only_the_fields_given() {
        let mut user = UserRecord {
            display_name: "Ada".to_owned(),
            bio: "old".to_owned(),
            password_hash: HASH.to_owned(),
            token_generation: 1,
            updated_at_ms: 10,
            ..UserRecord::default()
        };
        ProfileChanges {
            bio: Some(String::new()),
            updated_at_ms: 20,
            ..ProfileChanges::default()
        }
        .apply_to(&mut user);
        assert_eq!(
            (
                user.display_name.as_str(),
                user.bio.as_str(),
                user.updated_at_ms
            ),
            ("Ada", "", 20)
        );
        assert_eq!(
            (user.password_hash.as_str(), user.token_generation),
            (HASH, 1)
        );
    }
}

#[cfg(test)]
mod schema_tests {
    /// Every file of `cql/users/` is registered, in order, and keeps the rules every migration
    /// relies on (idempotent, keyspace-agnostic, portable between ScyllaDB and Cassandra).
    #[test]
    fn the_schema_files_are_registered_and_follow_the_rules() {
        let problems = super::SCHEMA.problems();
        assert!(problems.is_empty(), "{problems:#?}");
    }
}
