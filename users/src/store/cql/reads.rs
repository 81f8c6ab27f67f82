//! The reads: a user is its `users` row and its `user_tokens` row, read side by side; many
//! users by `IN` lists.

use std::collections::HashMap;

use futures_util::future::try_join;
use scylla::DeserializeRow;
use scylla::serialize::row::SerializeRow;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlTimestamp;
use twtr_common::store::StoreError;

use super::{CqlUserStore, from_key, key};
use crate::store::UserRecord;

/// A `users` row, as `SELECT_USER` reads it (columns matched by name).
#[derive(DeserializeRow)]
pub(super) struct UserRow {
    pub(super) user_id: i64,
    pub(super) username: Option<String>,
    pub(super) display_name: Option<String>,
    pub(super) bio: Option<String>,
    pub(super) password_hash: Option<String>,
    pub(super) created_at: Option<CqlTimestamp>,
    pub(super) updated_at: Option<CqlTimestamp>,
    pub(super) deleted: Option<bool>,
}

impl UserRow {
    pub(super) fn is_deleted(&self) -> bool {
        self.deleted == Some(true)
    }
}

/// A `user_tokens` row: `(user_id, token_generation)`.
pub(super) type TokensRow = (i64, Option<i64>);

impl CqlUserStore {
    /// The record of `id` if it is a live user: its `users` and `user_tokens` rows, read side by
    /// side.
    pub(super) async fn user(&self, id: u64) -> Result<Option<UserRecord>, StoreError> {
        let (row, tokens) = try_join(self.user_row(id), self.tokens_row(id)).await?;
        match row {
            Some(row) => record(row, tokens.and_then(|(_, generation)| generation)),
            None => Ok(None),
        }
    }

    /// The `user_tokens` row of `id`, if it has one.
    pub(super) async fn tokens_row(&self, id: u64) -> Result<Option<TokensRow>, StoreError> {
        Ok(self
            .session()
            .execute_unpaged(&self.select_tokens, (key(id),))
            .await?
            .into_rows_result()?
            .maybe_first_row::<TokensRow>()?)
    }

    /// The `users` row of `id`, deleted or not.
    pub(super) async fn user_row(&self, id: u64) -> Result<Option<UserRow>, StoreError> {
        Ok(self
            .session()
            .execute_unpaged(&self.select_user, (key(id),))
            .await?
            .into_rows_result()?
            .maybe_first_row::<UserRow>()?)
    }

    /// The `users` rows among `ids` (at most [`IN_CHUNK`](super::IN_CHUNK)), in no particular order.
    pub(super) async fn user_rows(&self, ids: Vec<i64>) -> Result<Vec<UserRow>, StoreError> {
        let rows = self
            .session()
            .execute_unpaged(&self.select_users, (ids,))
            .await?
            .into_rows_result()?;
        let mut found = Vec::with_capacity(rows.rows_num());
        for row in rows.rows::<UserRow>()? {
            found.push(row?);
        }
        Ok(found)
    }

    /// The `user_id` column of the rows a search lookup (`statement` with `values`) reads, in
    /// the order read.
    pub(super) async fn user_ids(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<Vec<u64>, StoreError> {
        let rows = self
            .session()
            .execute_unpaged(statement, values)
            .await?
            .into_rows_result()?;
        let mut ids = Vec::with_capacity(rows.rows_num());
        for row in rows.rows::<(i64,)>()? {
            ids.push(from_key(row?.0));
        }
        Ok(ids)
    }

    /// The live users among `ids` (at most [`IN_CHUNK`](super::IN_CHUNK)), in no particular order.
    pub(super) async fn users(&self, ids: Vec<i64>) -> Result<Vec<UserRecord>, StoreError> {
        let tokens = async {
            let rows = self
                .session()
                .execute_unpaged(&self.select_tokens_in, (&ids,))
                .await?
                .into_rows_result()?;
            let mut generations = HashMap::with_capacity(rows.rows_num());
            for row in rows.rows::<TokensRow>()? {
                let (id, generation) = row?;
                generations.insert(id, generation);
            }
            Ok::<_, StoreError>(generations)
        };
        let (rows, generations) = try_join(self.user_rows(ids.clone()), tokens).await?;
        let mut found = Vec::with_capacity(rows.len());
        for row in rows {
            let generation = generations.get(&row.user_id).copied().flatten();
            if let Some(user) = record(row, generation)? {
                found.push(user);
            }
        }
        Ok(found)
    }
}

/// A `users` row and its token generation (`None`: no `user_tokens` row) as a record: `None`
/// for a deleted account (the row stays, so that its ID is never reused).
pub(super) fn record(
    row: UserRow,
    token_generation: Option<i64>,
) -> Result<Option<UserRecord>, StoreError> {
    if row.is_deleted() {
        return Ok(None);
    }
    let UserRow {
        user_id,
        username,
        display_name,
        bio,
        password_hash,
        created_at,
        updated_at,
        deleted: _,
    } = row;
    let (Some(username), Some(password_hash), Some(created_at)) =
        (username, password_hash, created_at)
    else {
        return Err(StoreError::Corrupt(format!(
            "users row {} lacks its username, password hash or creation time",
            from_key(user_id)
        )));
    };
    Ok(Some(UserRecord {
        id: from_key(user_id),
        username,
        display_name: display_name.unwrap_or_default(),
        bio: bio.unwrap_or_default(),
        password_hash,
        created_at_ms: created_at.0,
        token_generation: token_generation.unwrap_or_default() as u64,
        updated_at_ms: updated_at.unwrap_or(created_at).0,
    }))
}
