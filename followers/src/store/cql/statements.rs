//! Every statement of the CQL follow store, each prepared once when the store is made (so a bad
//! one fails the start, not a request).

use std::sync::Arc;

use twtr_common::IdGenerator;
use twtr_common::cql::{
    CountColumn, CountLedger, CqlError, CqlOutbox, DeletedAccountTables, DeletedAccounts, Keyspace,
    logged_batch,
};

use super::Inner;

/// The state of one edge: serves `is_following` and starts every change.
const SELECT_EDGE: &str = "SELECT following, version, follow_id, followed_at \
     FROM {ks}.follow_edges WHERE follower_id = ? AND followee_id = ?";
/// Step 1 of a first follow: version 1.
const FIRST_FOLLOW: &str = "INSERT INTO {ks}.follow_edges \
     (follower_id, followee_id, following, version, follow_id, followed_at) \
     VALUES (?, ?, true, 1, ?, ?) IF NOT EXISTS";
/// Step 1 of every later change: the next version, if nobody took it first.
const CHANGE_EDGE: &str = "UPDATE {ks}.follow_edges \
     SET following = ?, version = ?, follow_id = ?, followed_at = ? \
     WHERE follower_id = ? AND followee_id = ? IF version = ?";
/// Takes an abandoned unfollow over, so that one caller announces it.
const TAKE_OVER: &str = "UPDATE {ks}.follow_edges SET followed_at = ? \
     WHERE follower_id = ? AND followee_id = ? IF version = ? AND followed_at = ?";
/// Whether step 2 of the edge's last change ran: its `following` row exists exactly when the
/// edge is followed.
const SELECT_LISTED: &str = "SELECT follow_id FROM {ks}.following \
     WHERE follower_id = ? AND follow_id = ? AND followee_id = ?";
/// Step 2 of a follow (with the outbox row).
const INSERT_FOLLOWING: &str = "INSERT INTO {ks}.following \
     (follower_id, follow_id, followee_id, followed_at) VALUES (?, ?, ?, ?)";
const INSERT_FOLLOWER: &str = "INSERT INTO {ks}.followers \
     (followee_id, follow_id, follower_id, followed_at) VALUES (?, ?, ?, ?)";
/// Step 2 of an unfollow (with the outbox row, or without it when a follow finishes it).
const DELETE_FOLLOWING: &str =
    "DELETE FROM {ks}.following WHERE follower_id = ? AND follow_id = ? AND followee_id = ?";
const DELETE_FOLLOWER: &str =
    "DELETE FROM {ks}.followers WHERE followee_id = ? AND follow_id = ? AND follower_id = ?";
/// Step 3: each user's two counts in `follow_counts`, each through its ledger.
const FOLLOWERS_COUNT: CountColumn = CountColumn {
    what: "followers count of user",
    table: "follow_counts",
    key: "user_id",
    count: "followers_count",
};
const FOLLOWING_COUNT: CountColumn = CountColumn {
    what: "following count of user",
    table: "follow_counts",
    key: "user_id",
    count: "following_count",
};
/// Many users' counts: the static rows only, never the ledger.
const SELECT_COUNTS: &str = "SELECT DISTINCT user_id, followers_count, following_count \
     FROM {ks}.follow_counts WHERE user_id IN ?";
/// A page of a list, newest follow first, between exclusive follow-ID bounds.
const FOLLOWING_PAGE: &str = "SELECT follow_id, followee_id FROM {ks}.following \
     WHERE follower_id = ? AND follow_id > ? AND follow_id < ? ORDER BY follow_id DESC LIMIT ?";
const FOLLOWERS_PAGE: &str = "SELECT follow_id, follower_id FROM {ks}.followers \
     WHERE followee_id = ? AND follow_id > ? AND follow_id < ? ORDER BY follow_id DESC LIMIT ?";
/// A page read oldest first, for polling (`since`).
const FOLLOWING_PAGE_FORWARD: &str = "SELECT follow_id, followee_id FROM {ks}.following \
     WHERE follower_id = ? AND follow_id > ? AND follow_id < ? ORDER BY follow_id ASC LIMIT ?";
const FOLLOWERS_PAGE_FORWARD: &str = "SELECT follow_id, follower_id FROM {ks}.followers \
     WHERE followee_id = ? AND follow_id > ? AND follow_id < ? ORDER BY follow_id ASC LIMIT ?";
/// Deleted accounts and their purges (see [`DeletedAccounts`]); `user_purges` is the queue
/// `user_purges_by_hour` replaced.
const DELETED_ACCOUNTS: DeletedAccountTables = DeletedAccountTables {
    gone: "gone_users",
    queue: "user_purges_by_hour",
    id_column: "user_id",
    legacy: "user_purges",
};

impl Inner {
    /// Prepares every statement in `ks` and the keyspace's outbox.
    pub(super) async fn new(ks: Keyspace, ids: Arc<IdGenerator>) -> Result<Self, CqlError> {
        let outbox = Arc::new(CqlOutbox::new(ks.clone(), ids).await?);
        let insert_following = ks.prepare(INSERT_FOLLOWING).await?;
        let insert_follower = ks.prepare(INSERT_FOLLOWER).await?;
        let delete_following = ks.prepare(DELETE_FOLLOWING).await?;
        let delete_follower = ks.prepare(DELETE_FOLLOWER).await?;
        Ok(Self {
            select_edge: ks.prepare(SELECT_EDGE).await?,
            first_follow: ks.prepare(FIRST_FOLLOW).await?,
            change_edge: ks.prepare(CHANGE_EDGE).await?,
            take_over: ks.prepare(TAKE_OVER).await?,
            select_listed: ks.prepare(SELECT_LISTED).await?,
            select_counts: ks.prepare(SELECT_COUNTS).await?,
            follow_batch: logged_batch([&insert_following, &insert_follower, outbox.insert()]),
            unfollow_batch: logged_batch([&delete_following, &delete_follower, outbox.insert()]),
            quiet_unfollow_batch: logged_batch([&delete_following, &delete_follower]),
            followers_count: CountLedger::new(&ks, FOLLOWERS_COUNT).await?,
            following_count: CountLedger::new(&ks, FOLLOWING_COUNT).await?,
            following_page: ks.prepare(FOLLOWING_PAGE).await?,
            followers_page: ks.prepare(FOLLOWERS_PAGE).await?,
            following_page_forward: ks.prepare(FOLLOWING_PAGE_FORWARD).await?,
            followers_page_forward: ks.prepare(FOLLOWERS_PAGE_FORWARD).await?,
            deleted: DeletedAccounts::new(&ks, DELETED_ACCOUNTS).await?,
            outbox,
            ks,
        })
    }
}
