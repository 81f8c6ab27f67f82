//! Every statement of the CQL user store, each prepared once when the store is made (so a bad
//! one fails the start, not a request).

use std::sync::Arc;

use twtr_common::IdGenerator;
use twtr_common::cql::{CqlError, CqlOutbox, Keyspace};

use super::CqlUserStore;

/// Step 1 of a sign-up: the lightweight transaction that makes names unique.
pub(super) const CLAIM_USERNAME: &str =
    "INSERT INTO {ks}.usernames (username, user_id, claimed_at) VALUES (?, ?, ?) IF NOT EXISTS";
/// Takes a claim over from a sign-up that never finished; `IF` so only one taker wins.
pub(super) const TAKE_OVER_CLAIM: &str =
    "UPDATE {ks}.usernames SET user_id = ?, claimed_at = ? WHERE username = ? IF user_id = ?";
/// The last step of a deletion; `IF` so a name someone else has claimed since stays theirs.
pub(super) const RELEASE_USERNAME: &str =
    "DELETE FROM {ks}.usernames WHERE username = ? IF user_id = ?";
/// Step 2 of a sign-up, in a logged batch with [`INSERT_TOKENS`] and the outbox row.
/// `deleted = false` is written so that the row always says which it is.
pub(super) const INSERT_USER: &str = "INSERT INTO {ks}.users \
     (user_id, username, display_name, bio, password_hash, created_at, updated_at, deleted) \
     VALUES (?, ?, ?, ?, ?, ?, ?, false)";
pub(super) const INSERT_TOKENS: &str =
    "INSERT INTO {ks}.user_tokens (user_id, token_generation) VALUES (?, ?)";
/// A profile change: a column bound unset keeps its value. Never writes `deleted`, so it
/// cannot bring a deleted account back.
pub(super) const UPDATE_USER: &str = "UPDATE {ks}.users \
     SET display_name = ?, bio = ?, password_hash = ?, updated_at = ? WHERE user_id = ?";
pub(super) const UPDATE_TOKENS: &str =
    "UPDATE {ks}.user_tokens SET token_generation = ? WHERE user_id = ?";
/// A deletion: the row stays, as a tombstone with the username (so a retry knows which name
/// to free) and the creation time. `updated_at` may be bound unset.
pub(super) const TOMBSTONE_USER: &str = "UPDATE {ks}.users SET deleted = true, display_name = null, \
     bio = null, password_hash = null, updated_at = ? WHERE user_id = ?";
pub(super) const DELETE_TOKENS: &str = "DELETE FROM {ks}.user_tokens WHERE user_id = ?";
pub(super) const SELECT_CLAIM: &str = "SELECT user_id FROM {ks}.usernames WHERE username = ?";
/// The columns of `UserRow`.
pub(super) const SELECT_USER: &str = "SELECT user_id, username, display_name, bio, password_hash, \
     created_at, updated_at, deleted FROM {ks}.users WHERE user_id = ?";
pub(super) const SELECT_USERS: &str = "SELECT user_id, username, display_name, bio, password_hash, \
     created_at, updated_at, deleted FROM {ks}.users WHERE user_id IN ?";
pub(super) const SELECT_TOKENS: &str =
    "SELECT user_id, token_generation FROM {ks}.user_tokens WHERE user_id = ?";
pub(super) const SELECT_TOKENS_IN: &str =
    "SELECT user_id, token_generation FROM {ks}.user_tokens WHERE user_id IN ?";

/// People search (see `crate::search`): each account's username under its first two
/// characters, written with the account and removed with it.
pub(super) const INSERT_USERNAME_PREFIX: &str =
    "INSERT INTO {ks}.username_prefixes (prefix, username, user_id) VALUES (?, ?, ?)";
pub(super) const DELETE_USERNAME_PREFIX: &str =
    "DELETE FROM {ks}.username_prefixes WHERE prefix = ? AND username = ? AND user_id = ?";
/// The names from a prefix up to (not including) the prefix followed by `~`, which sorts
/// after every character a username may hold.
pub(super) const SELECT_USERNAME_PREFIX: &str = "SELECT user_id FROM {ks}.username_prefixes \
     WHERE prefix = ? AND username >= ? AND username < ? LIMIT ?";
/// Each word of a display name, written and removed with the name.
pub(super) const INSERT_NAME_WORD: &str =
    "INSERT INTO {ks}.name_words (word, user_id) VALUES (?, ?)";
pub(super) const DELETE_NAME_WORD: &str =
    "DELETE FROM {ks}.name_words WHERE word = ? AND user_id = ?";
pub(super) const SELECT_NAME_WORD: &str =
    "SELECT user_id FROM {ks}.name_words WHERE word = ? LIMIT ?";

impl CqlUserStore {
    /// Prepares every statement in `ks` (so a bad one fails the start, not a request) and the
    /// keyspace's outbox.
    pub async fn new(ks: Keyspace, ids: Arc<IdGenerator>) -> Result<Self, CqlError> {
        let outbox = Arc::new(CqlOutbox::new(ks.clone(), ids).await?);
        Ok(Self {
            claim_username: ks.prepare(CLAIM_USERNAME).await?,
            take_over_claim: ks.prepare(TAKE_OVER_CLAIM).await?,
            release_username: ks.prepare(RELEASE_USERNAME).await?,
            select_claim: ks.prepare(SELECT_CLAIM).await?,
            select_user: ks.prepare(SELECT_USER).await?,
            select_users: ks.prepare(SELECT_USERS).await?,
            select_tokens: ks.prepare(SELECT_TOKENS).await?,
            select_tokens_in: ks.prepare(SELECT_TOKENS_IN).await?,
            insert_user: ks.prepare(INSERT_USER).await?,
            insert_tokens: ks.prepare(INSERT_TOKENS).await?,
            update_user: ks.prepare(UPDATE_USER).await?,
            update_tokens: ks.prepare(UPDATE_TOKENS).await?,
            tombstone_user: ks.prepare(TOMBSTONE_USER).await?,
            delete_tokens: ks.prepare(DELETE_TOKENS).await?,
            insert_username_prefix: ks.prepare(INSERT_USERNAME_PREFIX).await?,
            delete_username_prefix: ks.prepare(DELETE_USERNAME_PREFIX).await?,
            select_username_prefix: ks.prepare(SELECT_USERNAME_PREFIX).await?,
            insert_name_word: ks.prepare(INSERT_NAME_WORD).await?,
            delete_name_word: ks.prepare(DELETE_NAME_WORD).await?,
            select_name_word: ks.prepare(SELECT_NAME_WORD).await?,
            outbox,
            ks,
        })
    }
}
