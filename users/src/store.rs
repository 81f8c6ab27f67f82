//! Where users live. Domain code sees only [`UserStore`]; [`EmbeddedUserStore`] is the
//! embedded backend (redb), and every backend must pass [`conformance`].

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use prost::Message as _;
use redb::{ReadableTable as _, TableDefinition};
use twtr_common::embedded::EmbeddedDb;
use twtr_common::outbox::Outbox;
use twtr_common::store::StoreError;
use twtr_proto::events::v1::Envelope;

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

const USERS: TableDefinition<u64, &[u8]> = TableDefinition::new("users");
/// Lowercase username -> user ID: the uniqueness claim.
const USERNAMES: TableDefinition<&str, u64> = TableDefinition::new("usernames");

/// Users in a redb file (`users.redb` under the data directory).
#[derive(Debug, Clone)]
pub struct EmbeddedUserStore {
    db: EmbeddedDb,
}

impl EmbeddedUserStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = EmbeddedDb::open(path, |tx| {
            tx.open_table(USERS)?;
            tx.open_table(USERNAMES)?;
            Ok(())
        })?;
        Ok(Self { db })
    }
}

fn decode(bytes: &[u8]) -> Result<UserRecord, StoreError> {
    Ok(UserRecord::decode(bytes)?)
}

#[async_trait]
impl UserStore for EmbeddedUserStore {
    async fn create(&self, user: UserRecord, event: Envelope) -> Result<Created, StoreError> {
        self.db
            .write(move |tx| {
                let canonical = user.username.to_ascii_lowercase();
                let mut usernames = tx.open_table(USERNAMES)?;
                if usernames.get(canonical.as_str())?.is_some() {
                    return Ok(Created::UsernameTaken);
                }
                usernames.insert(canonical.as_str(), user.id)?;
                tx.open_table(USERS)?
                    .insert(user.id, user.encode_to_vec().as_slice())?;
                tx.stage_event(&event)?;
                Ok(Created::Created)
            })
            .await
    }

    async fn get(&self, id: u64) -> Result<Option<UserRecord>, StoreError> {
        self.db
            .read(move |txn| {
                let users = txn.open_table(USERS)?;
                users.get(id)?.map(|row| decode(row.value())).transpose()
            })
            .await
    }

    async fn get_by_username(&self, canonical: &str) -> Result<Option<UserRecord>, StoreError> {
        let canonical = canonical.to_owned();
        self.db
            .read(move |txn| {
                let Some(id) = txn.open_table(USERNAMES)?.get(canonical.as_str())? else {
                    return Ok(None);
                };
                let users = txn.open_table(USERS)?;
                users
                    .get(id.value())?
                    .map(|row| decode(row.value()))
                    .transpose()
            })
            .await
    }

    async fn get_many(&self, ids: Vec<u64>) -> Result<Vec<UserRecord>, StoreError> {
        self.db
            .read(move |txn| {
                let users = txn.open_table(USERS)?;
                let mut found = Vec::with_capacity(ids.len());
                for id in ids {
                    if let Some(row) = users.get(id)? {
                        found.push(decode(row.value())?);
                    }
                }
                Ok(found)
            })
            .await
    }

    fn outbox(&self) -> Arc<dyn Outbox> {
        Arc::new(self.db.clone())
    }
}

/// The behaviour every [`UserStore`] backend must show. Backends invoke
/// [`user_store_conformance!`](crate::user_store_conformance) in their tests.
#[allow(clippy::unwrap_used, clippy::expect_used)] // a test suite: a panic is the failure report
pub mod conformance {
    use super::*;

    #[macro_export]
    macro_rules! user_store_conformance {
        ($open:path) => {
            mod user_store_conformance {
                use super::*;
                twtr_common::conformance_tests!($open => $crate::store::conformance:
                    creates_and_reads_back,
                    usernames_are_unique_ignoring_case,
                    get_many_skips_unknown_ids,
                );
            }
        };
    }

    pub fn user(id: u64, username: &str) -> UserRecord {
        UserRecord {
            id,
            username: username.to_owned(),
            display_name: format!("{username} display"),
            bio: "bio".to_owned(),
            password_hash: "$argon2id$fake".to_owned(),
            created_at_ms: 1_700_000_000_000,
        }
    }

    pub fn event(id: u64) -> Envelope {
        Envelope {
            event_id: id,
            r#type: "users.user_created".to_owned(),
            aggregate_id: id,
            ..Envelope::default()
        }
    }

    pub async fn creates_and_reads_back(store: Arc<dyn UserStore>) {
        let alice = user(1, "Alice");
        assert_eq!(
            store.create(alice.clone(), event(11)).await.unwrap(),
            Created::Created
        );
        assert_eq!(store.get(1).await.unwrap(), Some(alice.clone()));
        assert_eq!(store.get_by_username("alice").await.unwrap(), Some(alice));
        assert_eq!(store.get(2).await.unwrap(), None);
        assert_eq!(store.get_by_username("bob").await.unwrap(), None);
        let staged = twtr_common::outbox::pending_ids(store.outbox().as_ref(), 10)
            .await
            .unwrap();
        assert_eq!(staged, vec![11], "the event is stored with the user");
    }

    pub async fn usernames_are_unique_ignoring_case(store: Arc<dyn UserStore>) {
        assert_eq!(
            store.create(user(1, "Alice"), event(11)).await.unwrap(),
            Created::Created
        );
        let taken = store.create(user(2, "ALICE"), event(12)).await.unwrap();
        assert_eq!(taken, Created::UsernameTaken);
        assert_eq!(
            store.get(2).await.unwrap(),
            None,
            "a refused user writes nothing"
        );
        let staged = twtr_common::outbox::pending_ids(store.outbox().as_ref(), 10)
            .await
            .unwrap();
        assert_eq!(staged, vec![11], "a refused user stages no event");
    }

    pub async fn get_many_skips_unknown_ids(store: Arc<dyn UserStore>) {
        for (id, name) in [(1, "one"), (2, "two"), (3, "three")] {
            store.create(user(id, name), event(10 + id)).await.unwrap();
        }
        let found: Vec<u64> = store
            .get_many(vec![3, 99, 1])
            .await
            .unwrap()
            .iter()
            .map(|u| u.id)
            .collect();
        assert_eq!(found, vec![3, 1]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn open_embedded() -> (Arc<dyn UserStore>, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = EmbeddedUserStore::open(&dir.path().join("users.redb")).expect("open store");
        (Arc::new(store), dir)
    }

    crate::user_store_conformance!(open_embedded);
}
