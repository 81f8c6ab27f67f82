//! [`EmbeddedUserStore`]: users in a redb file. A sign-up is one write transaction that checks
//! the username claim, stores the claim, the user and its `UserCreated` event, so it is all or
//! nothing.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use prost::Message as _;
use redb::{ReadableTable as _, TableDefinition};
use twtr_common::embedded::EmbeddedDb;
use twtr_common::outbox::Outbox;
use twtr_common::store::StoreError;
use twtr_proto::events::v1::Envelope;

use super::{Created, UserRecord, UserStore};

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
