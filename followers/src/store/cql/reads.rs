//! The reads: counts in `IN` lists, put back in the order asked, and list pages.

use std::collections::HashMap;

use futures_util::future::try_join_all;
use twtr_common::store::StoreError;
use twtr_common::{Page, PageRequest};

use super::{IN_CHUNK, Inner, from_key, key};
use crate::store::{Counts, Direction, FollowEntry};

/// The columns of `SELECT_COUNTS`: user, followers, following.
type CountRow = (i64, Option<i64>, Option<i64>);

impl Inner {
    /// Each of `users`' counts, in the order asked (zeros for a user never counted), read in
    /// `IN` lists of at most [`IN_CHUNK`] users.
    pub(super) async fn counts(&self, users: Vec<u64>) -> Result<Vec<Counts>, StoreError> {
        let mut keys: Vec<i64> = users.iter().map(|user| key(*user)).collect();
        keys.sort_unstable();
        keys.dedup();
        let reads = keys
            .chunks(IN_CHUNK)
            .map(|chunk| self.count_rows(chunk.to_vec()));
        let mut found = HashMap::with_capacity(keys.len());
        for rows in try_join_all(reads).await? {
            for (user, followers, following) in rows {
                found.insert(
                    from_key(user),
                    Counts {
                        followers: count(followers),
                        following: count(following),
                    },
                );
            }
        }
        // In the order asked, a user asked twice answered twice, one never counted with zeros.
        Ok(users
            .iter()
            .map(|user| found.get(user).copied().unwrap_or_default())
            .collect())
    }

    /// A page of `user`'s list in `direction`: one slice of its partition by follow ID.
    pub(super) async fn list(
        &self,
        user: u64,
        direction: Direction,
        page: PageRequest,
    ) -> Result<Page<FollowEntry>, StoreError> {
        // Exclusive bounds; IDs are below 2^63, so a larger cursor is "no bound" (before) or
        // "nothing newer" (since).
        let upper = page
            .before
            .map_or(i64::MAX, |before| i64::try_from(before).unwrap_or(i64::MAX));
        let lower = match page.since.map(i64::try_from) {
            None => i64::MIN,
            Some(Ok(since)) => since,
            Some(Err(_)) => return Ok(Page::from_scan(&page, Vec::new(), |e| e.follow_id)),
        };
        if lower >= upper {
            return Ok(Page::from_scan(&page, Vec::new(), |e| e.follow_id));
        }
        let inner = self;
        let statement = match (direction, page.since.is_some()) {
            (Direction::Following, false) => &inner.following_page,
            (Direction::Followers, false) => &inner.followers_page,
            (Direction::Following, true) => &inner.following_page_forward,
            (Direction::Followers, true) => &inner.followers_page_forward,
        };
        // One row more than asked, to learn whether another page follows.
        let take = i32::try_from(page.limit.get() + 1).unwrap_or(i32::MAX);
        let rows = inner
            .session()
            .execute_unpaged(statement, (key(user), lower, upper, take))
            .await?
            .into_rows_result()?;
        let mut scanned = Vec::with_capacity(rows.rows_num());
        for row in rows.rows::<(i64, i64)>()? {
            let (follow_id, other) = row?;
            scanned.push(FollowEntry {
                user_id: from_key(other),
                follow_id: from_key(follow_id),
            });
        }
        Ok(Page::from_scan(&page, scanned, |e| e.follow_id))
    }

    /// The counts rows among `users` (at most [`IN_CHUNK`]), in no particular order.
    pub(super) async fn count_rows(&self, users: Vec<i64>) -> Result<Vec<CountRow>, StoreError> {
        let rows = self
            .session()
            .execute_unpaged(&self.select_counts, (users,))
            .await?
            .into_rows_result()?;
        let mut found = Vec::with_capacity(rows.rows_num());
        for row in rows.rows::<CountRow>()? {
            found.push(row?);
        }
        Ok(found)
    }
}

/// A stored count as a count: missing is zero, and so is the brief negative an unfollow's op
/// can leave when it lands before its follow's.
fn count(stored: Option<i64>) -> u64 {
    stored.map_or(0, |n| u64::try_from(n).unwrap_or(0))
}
