//! [`EmbeddedUserStore`]: users in a redb file. Every write is one transaction with its event:
//! a sign-up checks the username claim and stores the claim, the user and its `UserCreated`
//! event; an update rewrites the record; a deletion removes the record and the claim (so the
//! name is free at once) and keeps the ID in `deleted_users`, so it is never used again.
//!
//! People search reads `usernames` by range (its keys are the lowercase names, in order) and
//! `name_words`, which each write keeps in step with the display name in its transaction.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use prost::Message as _;
use redb::{ReadableTable as _, TableDefinition};
use twtr_common::embedded::{EmbeddedDb, Tx};
use twtr_common::outbox::Outbox;
use twtr_common::store::StoreError;
use twtr_proto::events::v1::Envelope;

use super::{Created, ProfileChanges, Updated, UserRecord, UserStore};
use crate::search::name_words;

const USERS: TableDefinition<u64, &[u8]> = TableDefinition::new("users");
/// Lowercase username -> user ID: the uniqueness claim.
const USERNAMES: TableDefinition<&str, u64> = TableDefinition::new("usernames");
/// User ID -> when it was deleted: tombstones, so a deleted ID is never stored again.
const DELETED_USERS: TableDefinition<u64, i64> = TableDefinition::new("deleted_users");
/// (word of a display name, user ID): people search by display name (`crate::search`).
const NAME_WORDS: TableDefinition<(&str, u64), ()> = TableDefinition::new("name_words");

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
            tx.open_table(DELETED_USERS)?;
            tx.open_table(NAME_WORDS)?;
            Ok(())
        })?;
        Ok(Self { db })
    }
}

fn decode(bytes: &[u8]) -> Result<UserRecord, StoreError> {
    Ok(UserRecord::decode(bytes)?)
}

/// Adds `user_id` under each of `words` and removes it from each of `gone`.
fn write_name_words(
    tx: &Tx<'_>,
    user_id: u64,
    words: &[String],
    gone: &[String],
) -> Result<(), StoreError> {
    let mut table = tx.open_table(NAME_WORDS)?;
    for word in gone {
        table.remove((word.as_str(), user_id))?;
    }
    for word in words {
        table.insert((word.as_str(), user_id), ())?;
    }
    Ok(())
}

/// The live users of `ids`, in that order.
fn users_of(txn: &redb::ReadTransaction, ids: Vec<u64>) -> Result<Vec<UserRecord>, StoreError> {
    let users = txn.open_table(USERS)?;
    let mut found = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(row) = users.get(id)? {
            found.push(decode(row.value())?);
        }
    }
    Ok(found)
}

#[async_trait]
impl UserStore for EmbeddedUserStore {
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(self.db.ping().await?)
    }

    async fn create(&self, user: UserRecord, event: Envelope) -> Result<Created, StoreError> {
        self.db
            .write(move |tx| {
                // This ID is stored already (a retry of this sign-up), or was and is deleted.
                if tx.open_table(USERS)?.get(user.id)?.is_some()
                    || tx.open_table(DELETED_USERS)?.get(user.id)?.is_some()
                {
                    return Ok(Created::Created);
                }
                let canonical = user.username.to_ascii_lowercase();
                let mut usernames = tx.open_table(USERNAMES)?;
                if usernames.get(canonical.as_str())?.is_some() {
                    return Ok(Created::UsernameTaken);
                }
                usernames.insert(canonical.as_str(), user.id)?;
                tx.open_table(USERS)?
                    .insert(user.id, user.encode_to_vec().as_slice())?;
                write_name_words(tx, user.id, &name_words(&user.display_name), &[])?;
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
        self.db.read(move |txn| users_of(txn, ids)).await
    }

    async fn update(
        &self,
        user_id: u64,
        changes: ProfileChanges,
        event: Envelope,
    ) -> Result<Updated, StoreError> {
        self.db
            .write(move |tx| {
                let mut users = tx.open_table(USERS)?;
                let Some(mut user) = users
                    .get(user_id)?
                    .map(|row| decode(row.value()))
                    .transpose()?
                else {
                    return Ok(Updated::NoSuchUser);
                };
                if user.token_generation > changes.acting_generation {
                    return Ok(Updated::Revoked);
                }
                let before = name_words(&user.display_name);
                changes.apply_to(&mut user);
                users.insert(user_id, user.encode_to_vec().as_slice())?;
                drop(users);
                let after = name_words(&user.display_name);
                if before != after {
                    write_name_words(tx, user_id, &after, &before)?;
                }
                tx.stage_event(&event)?;
                Ok(Updated::Updated)
            })
            .await
    }

    async fn delete(
        &self,
        user_id: u64,
        deleted_at_ms: i64,
        event: Envelope,
    ) -> Result<bool, StoreError> {
        self.db
            .write(move |tx| {
                let mut users = tx.open_table(USERS)?;
                let Some(user) = users
                    .remove(user_id)?
                    .map(|row| decode(row.value()))
                    .transpose()?
                else {
                    return Ok(false);
                };
                let canonical = user.username.to_ascii_lowercase();
                let mut usernames = tx.open_table(USERNAMES)?;
                let owner = usernames.get(canonical.as_str())?.map(|id| id.value());
                if owner == Some(user_id) {
                    usernames.remove(canonical.as_str())?;
                }
                drop((users, usernames));
                write_name_words(tx, user_id, &[], &name_words(&user.display_name))?;
                tx.open_table(DELETED_USERS)?
                    .insert(user_id, deleted_at_ms)?;
                tx.stage_event(&event)?;
                Ok(true)
            })
            .await
    }

    async fn find_by_username_prefix(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<UserRecord>, StoreError> {
        let prefix = prefix.to_owned();
        self.db
            .read(move |txn| {
                let usernames = txn.open_table(USERNAMES)?;
                let mut ids = Vec::new();
                for entry in usernames.range(prefix.as_str()..)?.take(limit) {
                    let (name, id) = entry?;
                    if !name.value().starts_with(prefix.as_str()) {
                        break;
                    }
                    ids.push(id.value());
                }
                users_of(txn, ids)
            })
            .await
    }

    async fn find_by_name_word(
        &self,
        word: &str,
        limit: usize,
    ) -> Result<Vec<UserRecord>, StoreError> {
        let word = word.to_owned();
        self.db
            .read(move |txn| {
                let words = txn.open_table(NAME_WORDS)?;
                let range = (word.as_str(), 0)..=(word.as_str(), u64::MAX);
                let mut ids = Vec::new();
                for entry in words.range(range)?.take(limit) {
                    ids.push(entry?.0.value().1);
                }
                users_of(txn, ids)
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

    async fn open_embedded() -> (Arc<dyn UserStore>, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = EmbeddedUserStore::open(&dir.path().join("users.redb")).expect("open store");
        (Arc::new(store), dir)
    }

    crate::user_store_conformance!(open_embedded);
}
