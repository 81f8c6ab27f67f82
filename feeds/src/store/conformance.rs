//! The behaviour every [`FeedStore`] backend must show. Backends invoke
//! [`feed_store_conformance!`](crate::feed_store_conformance) with a function that opens a store
//! with [`LIMITS`].
//!
//! The checks run on a shared store: every CQL check in a test process uses the same keyspace,
//! at the same time. So a check uses only user, author and tweet IDs it minted with
//! [`unique_ids`], never fixed ones, and never asks what else is stored.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test suite: a panic is the failure report

use std::sync::{Arc, OnceLock};

use twtr_common::{IdGenerator, Limit, PageRequest};

use super::{
    Arrival, FeedEntry, FeedLimits, FeedStore, Notification, NotificationKey, NotificationKind,
    NotificationState,
};

/// Runs every check against the backend `$open` returns: `$open` is an async fn returning
/// `(Arc<dyn FeedStore>, guard)`, or with `optional`, `Option<(Arc<dyn FeedStore>, guard)>`
/// where `None` skips the check (a backend whose server this machine does not run).
#[macro_export]
macro_rules! feed_store_conformance {
    (@suite [$($optional:ident)?] $open:path) => {
        mod feed_store_conformance {
            use super::*;
            twtr_common::conformance_tests!($($optional)? $open => $crate::store::conformance:
                feeds_are_idempotent_and_newest_first,
                feeds_are_capped,
                feeds_stay_within_their_cap_and_slack,
                recent_tweets_are_capped_newest_first,
                follower_projection_and_author_removal,
                feed_pages_never_overlap_or_skip,
                late_tweets_do_not_push_newer_ones_out,
                retweets_keep_one_entry_per_tweet,
                fan_out_reaches_every_user,
                concurrent_fan_outs_each_land_once,
                unfollowing_and_following_again,
                removing_an_author_touches_one_feed,
                edges_keep_their_latest_version,
                followers_page_past_unfollowed_edges,
                deleted_tweets_stay_deleted,
                retweets_keep_their_latest_version,
                entries_via_and_dropping_a_feed,
                celebrities_are_marked_and_unmarked,
                notifications_page_newest_first,
                notification_keys_keep_their_latest_version,
                notifications_are_capped,
                a_deleted_tweets_notifications_stay_removed,
                the_read_cursor_moves_forward_and_counts_unread,
                dropping_notifications,
                arrivals_are_listed_in_arrival_order,
            );
        }
    };
    (optional $open:path) => {
        $crate::feed_store_conformance!(@suite [optional] $open);
    };
    ($open:path) => {
        $crate::feed_store_conformance!(@suite [] $open);
    };
}

/// Small limits, so that caps are reached in a few writes.
pub const LIMITS: FeedLimits = FeedLimits {
    feed_len: 3,
    trim_slack: 2,
    recent_per_author: 2,
    notifications_len: 3,
    arrivals_kept: std::time::Duration::from_secs(3_600),
};

/// A fan-out's arrival stamp: now.
fn stamp() -> i64 {
    twtr_common::clock::now_millis()
}

/// An ID no other check in this process uses (nor, as far as the worker number goes, another
/// test process on this machine). IDs minted later are larger, like tweet IDs.
pub fn unique_id() -> u64 {
    static IDS: OnceLock<IdGenerator> = OnceLock::new();
    IDS.get_or_init(|| {
        IdGenerator::new((std::process::id() % 1024) as u16).expect("a worker number below 1024")
    })
    .next_id()
}

/// `N` fresh IDs in ascending order.
pub fn unique_ids<const N: usize>() -> [u64; N] {
    std::array::from_fn(|_| unique_id())
}

pub fn entry(tweet_id: u64, author_id: u64) -> FeedEntry {
    FeedEntry {
        tweet_id,
        author_id,
        retweeted_by: None,
    }
}

fn limit(n: u32) -> Limit {
    Limit::parse(Some(n)).unwrap()
}

fn request(before: Option<u64>, since: Option<u64>, n: u32) -> PageRequest {
    PageRequest {
        before,
        since,
        limit: limit(n),
    }
}

async fn ids(store: &Arc<dyn FeedStore>, user: u64) -> Vec<u64> {
    let page = store
        .feed(user, PageRequest::first(Limit::DEFAULT))
        .await
        .unwrap();
    page.items.iter().map(|e| e.tweet_id).collect()
}

/// Asserts that `user`'s feed starts with `newest` (its cap's worth, newest first) and holds
/// past them at most [`FeedLimits::trim_slack`] older entries not trimmed yet.
async fn assert_capped(store: &Arc<dyn FeedStore>, user: u64, newest: &[u64]) {
    let all = ids(store, user).await;
    assert_eq!(
        &all[..newest.len().min(all.len())],
        newest,
        "the newest entries of {all:?}"
    );
    assert!(
        all.len() <= LIMITS.feed_len + LIMITS.trim_slack,
        "{} entries, over the cap of {} and the slack of {}: {all:?}",
        all.len(),
        LIMITS.feed_len,
        LIMITS.trim_slack
    );
}

/// The tweet IDs of one page, and its `next` cursor.
async fn page(
    store: &Arc<dyn FeedStore>,
    user: u64,
    request: PageRequest,
) -> (Vec<u64>, Option<u64>) {
    let page = store.feed(user, request).await.unwrap();
    (page.items.iter().map(|e| e.tweet_id).collect(), page.next)
}

pub async fn feeds_are_idempotent_and_newest_first(store: Arc<dyn FeedStore>) {
    let [user1, user2, author, t10, t11] = unique_ids();
    store
        .fan_out(vec![user1, user2], entry(t10, author), stamp())
        .await
        .unwrap();
    store
        .fan_out(vec![user1, user2], entry(t10, author), stamp())
        .await
        .unwrap();
    store
        .insert_entries(user1, vec![entry(t11, author), entry(t11, author)])
        .await
        .unwrap();
    assert_eq!(ids(&store, user1).await, vec![t11, t10]);
    assert_eq!(ids(&store, user2).await, vec![t10]);
    let page = store
        .feed(user1, PageRequest::first(Limit::DEFAULT))
        .await
        .unwrap();
    assert_eq!(page.items[0], entry(t11, author));
}

pub async fn feeds_are_capped(store: Arc<dyn FeedStore>) {
    let [user, author9, author8] = unique_ids();
    let tweets: [u64; 5] = unique_ids();
    for tweet in tweets {
        store
            .fan_out(vec![user], entry(tweet, author9), stamp())
            .await
            .unwrap();
    }
    // Re-delivering an entry that is still there must not push anything out.
    store
        .fan_out(vec![user], entry(tweets[4], author9), stamp())
        .await
        .unwrap();
    assert_capped(&store, user, &[tweets[4], tweets[3], tweets[2]]).await;
    // Removal keeps the length bookkeeping right: the feed fills back up to the cap, not beyond.
    remove_author(&store, user, author9).await;
    let later: [u64; 4] = unique_ids();
    for tweet in later {
        store
            .fan_out(vec![user], entry(tweet, author8), stamp())
            .await
            .unwrap();
    }
    assert_capped(&store, user, &[later[3], later[2], later[1]]).await;
}

/// Trimming may be lazy, but never lazier than the slack: however many entries arrive one by
/// one, the newest are there and the feed stays within its cap plus the slack.
pub async fn feeds_stay_within_their_cap_and_slack(store: Arc<dyn FeedStore>) {
    let [user, author] = unique_ids();
    let mut inserted = Vec::new();
    for _ in 0..3 * (LIMITS.feed_len + LIMITS.trim_slack) {
        let tweet = unique_id();
        store
            .fan_out(vec![user], entry(tweet, author), stamp())
            .await
            .unwrap();
        inserted.push(tweet);
        let newest: Vec<u64> = inserted
            .iter()
            .rev()
            .take(LIMITS.feed_len)
            .copied()
            .collect();
        assert_capped(&store, user, &newest).await;
    }
}

pub async fn recent_tweets_are_capped_newest_first(store: Arc<dyn FeedStore>) {
    let [author9, author8, author7, t5, t10, t11, t12] = unique_ids();
    for tweet in [t10, t11, t12] {
        store.record_tweet(author9, tweet).await.unwrap();
    }
    store.record_tweet(author9, t12).await.unwrap();
    store.record_tweet(author8, t5).await.unwrap();
    assert_eq!(store.recent_tweets(author9).await.unwrap(), vec![t12, t11]);
    assert_eq!(store.recent_tweets(author8).await.unwrap(), vec![t5]);
    assert!(store.recent_tweets(author7).await.unwrap().is_empty());
}

pub async fn follower_projection_and_author_removal(store: Arc<dyn FeedStore>) {
    let [author9, author8, follower1, follower2, t10, t11, t12] = unique_ids();
    assert!(store.set_edge(follower1, author9, true, 1).await.unwrap());
    assert!(
        store.set_edge(follower1, author9, true, 1).await.unwrap(),
        "a repeat is latest"
    );
    assert!(store.set_edge(follower2, author9, true, 1).await.unwrap());
    assert_eq!(followers(&store, author9).await, vec![follower1, follower2]);
    assert!(store.set_edge(follower1, author9, false, 2).await.unwrap());
    assert!(store.set_edge(follower1, author9, false, 2).await.unwrap());
    assert_eq!(followers(&store, author9).await, vec![follower2]);
    assert_eq!(
        store
            .edges(vec![
                (follower1, author9),
                (follower2, author9),
                (author9, follower2)
            ])
            .await
            .unwrap(),
        vec![false, true, false]
    );

    store
        .insert_entries(
            follower1,
            vec![
                entry(t10, author9),
                entry(t11, author8),
                entry(t12, author9),
            ],
        )
        .await
        .unwrap();
    remove_author(&store, follower1, author9).await;
    remove_author(&store, follower1, author9).await;
    assert_eq!(ids(&store, follower1).await, vec![t11]);
}

/// Edge changes apply by version, whatever order they arrive in: an older one is refused.
pub async fn edges_keep_their_latest_version(store: Arc<dyn FeedStore>) {
    let [author, follower] = unique_ids();
    // Followed (v1), unfollowed (v2), followed again (v3): delivered 3, 1, 2.
    assert!(store.set_edge(follower, author, true, 3).await.unwrap());
    assert!(!store.set_edge(follower, author, true, 1).await.unwrap());
    assert!(!store.set_edge(follower, author, false, 2).await.unwrap());
    assert_eq!(followers(&store, author).await, vec![follower]);
    // Unfollowed at v4, then the v3 follow redelivered.
    assert!(store.set_edge(follower, author, false, 4).await.unwrap());
    assert!(!store.set_edge(follower, author, true, 3).await.unwrap());
    assert!(followers(&store, author).await.is_empty());
    assert_eq!(
        store.edges(vec![(follower, author)]).await.unwrap(),
        vec![false]
    );
}

/// Followers come a chunk at a time past unfollowed edges, in ascending order.
pub async fn followers_page_past_unfollowed_edges(store: Arc<dyn FeedStore>) {
    let author = unique_id();
    let followers_: Vec<u64> = (0..230).map(|_| unique_id()).collect();
    for (i, &follower) in followers_.iter().enumerate() {
        store.set_edge(follower, author, true, 1).await.unwrap();
        if i % 3 == 0 {
            store.set_edge(follower, author, false, 2).await.unwrap();
        }
    }
    let live: Vec<u64> = followers_
        .iter()
        .enumerate()
        .filter_map(|(i, &f)| (i % 3 != 0).then_some(f))
        .collect();
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let chunk = store.followers(author, after, 40).await.unwrap();
        assert!(chunk.len() <= 40);
        let Some(&last) = chunk.last() else { break };
        seen.extend(chunk);
        after = Some(last);
    }
    assert_eq!(seen, live);
}

/// A deleted tweet stays deleted: recording it again is refused and it leaves the author's
/// recent tweets.
pub async fn deleted_tweets_stay_deleted(store: Arc<dyn FeedStore>) {
    let [author, t1, t2, never] = unique_ids();
    assert!(store.record_tweet(author, t1).await.unwrap());
    assert!(store.record_tweet(author, t2).await.unwrap());
    store.delete_tweet(author, t2).await.unwrap();
    store.delete_tweet(author, t2).await.unwrap();
    assert!(
        !store.record_tweet(author, t2).await.unwrap(),
        "a late announcement"
    );
    assert_eq!(store.recent_tweets(author).await.unwrap(), vec![t1]);
    assert_eq!(
        store.deleted(vec![t1, t2, never]).await.unwrap(),
        vec![false, true, false]
    );
}

/// Retweets apply by version like edges, and are listed by tweet and by retweeter.
pub async fn retweets_keep_their_latest_version(store: Arc<dyn FeedStore>) {
    let [author, user1, user2, user3, t1, t2, t3] = unique_ids();
    assert!(store.set_retweet(user2, t1, author, true, 1).await.unwrap());
    assert!(store.set_retweet(user1, t1, author, true, 1).await.unwrap());
    assert!(store.set_retweet(user3, t1, author, true, 1).await.unwrap());
    assert_eq!(
        store.retweeters(t1, 10).await.unwrap(),
        vec![user1, user2, user3]
    );
    assert_eq!(store.retweeters(t1, 2).await.unwrap(), vec![user1, user2]);
    // Undone at v2; the v1 retweet redelivered loses.
    assert!(
        store
            .set_retweet(user2, t1, author, false, 2)
            .await
            .unwrap()
    );
    assert!(!store.set_retweet(user2, t1, author, true, 1).await.unwrap());
    assert_eq!(store.retweeters(t1, 10).await.unwrap(), vec![user1, user3]);
    for tweet in [t1, t2, t3] {
        store
            .set_retweet(user1, tweet, author, true, 1)
            .await
            .unwrap();
    }
    let retweet = |tweet_id| FeedEntry {
        tweet_id,
        author_id: author,
        retweeted_by: Some(user1),
    };
    // Newest first, at most `recent_per_author` of them.
    assert_eq!(
        store.recent_retweets(user1).await.unwrap(),
        vec![retweet(t3), retweet(t2)]
    );
    assert!(store.recent_retweets(user2).await.unwrap().is_empty());
}

/// `entries_via` finds what someone wrote or retweeted into a feed; dropping a feed empties it
/// and no other.
pub async fn entries_via_and_dropping_a_feed(store: Arc<dyn FeedStore>) {
    let [user, other_user, author, retweeter, t1, t2] = unique_ids();
    let retweet = FeedEntry {
        tweet_id: t2,
        author_id: unique_id(),
        retweeted_by: Some(retweeter),
    };
    store
        .insert_entries(user, vec![entry(t1, author), retweet])
        .await
        .unwrap();
    store
        .insert_entries(other_user, vec![entry(t1, author)])
        .await
        .unwrap();
    assert_eq!(
        store.entries_via(user, author).await.unwrap(),
        vec![entry(t1, author)]
    );
    assert_eq!(
        store.entries_via(user, retweeter).await.unwrap(),
        vec![retweet]
    );
    store.drop_feed(user).await.unwrap();
    assert!(ids(&store, user).await.is_empty());
    assert_eq!(ids(&store, other_user).await, vec![t1]);
    // The length bookkeeping survives: the feed fills to its cap again, not beyond.
    let later: [u64; 4] = unique_ids();
    for tweet in later {
        store
            .fan_out(vec![user], entry(tweet, author), stamp())
            .await
            .unwrap();
    }
    assert_capped(&store, user, &[later[3], later[2], later[1]]).await;
}

/// Every follower of `author` (the first thousand).
async fn followers(store: &Arc<dyn FeedStore>, author: u64) -> Vec<u64> {
    store.followers(author, None, 1000).await.unwrap()
}

/// Removes every entry `author` wrote from `user`'s feed.
async fn remove_author(store: &Arc<dyn FeedStore>, user: u64, author: u64) {
    let doomed = store
        .entries_via(user, author)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.author_id == author)
        .map(|e| e.tweet_id)
        .collect();
    store.remove_entries(user, doomed).await.unwrap();
}

/// Backward pages (`before`) and forward polling (`since`) split a feed without overlap or gap,
/// and `next` is set exactly when an older page exists.
pub async fn feed_pages_never_overlap_or_skip(store: Arc<dyn FeedStore>) {
    let [user, neighbour, author, t1, t2, t3, t4] = unique_ids();
    store
        .insert_entries(
            user,
            vec![entry(t1, author), entry(t2, author), entry(t3, author)],
        )
        .await
        .unwrap();
    // Another feed's entries must never leak into this one's pages.
    store
        .insert_entries(neighbour, vec![entry(t4, author)])
        .await
        .unwrap();

    assert_eq!(
        page(&store, user, request(None, None, 2)).await,
        (vec![t3, t2], Some(t2))
    );
    assert_eq!(
        page(&store, user, request(Some(t2), None, 2)).await,
        (vec![t1], None)
    );
    assert_eq!(
        page(&store, user, request(None, None, 3)).await,
        (vec![t3, t2, t1], None)
    );
    assert_eq!(
        page(&store, user, request(Some(t1), None, 2)).await,
        (vec![], None)
    );
    assert_eq!(
        page(&store, user, request(Some(u64::MAX), None, 5)).await,
        (vec![t3, t2, t1], None)
    );

    // Polling returns the oldest items newer than `since`, newest first, and no cursor.
    assert_eq!(
        page(&store, user, request(None, Some(t1), 1)).await,
        (vec![t2], None)
    );
    assert_eq!(
        page(&store, user, request(None, Some(t2), 5)).await,
        (vec![t3], None)
    );
    assert_eq!(
        page(&store, user, request(None, Some(t3), 5)).await,
        (vec![], None)
    );
    assert_eq!(
        page(&store, user, request(None, Some(0), 2)).await,
        (vec![t2, t1], None)
    );
    assert_eq!(
        page(&store, user, request(None, Some(u64::MAX), 5)).await,
        (vec![], None)
    );

    // Both bounds: strictly between them.
    assert_eq!(
        page(&store, user, request(Some(t3), Some(t1), 5)).await,
        (vec![t2], None)
    );
    assert_eq!(
        page(&store, user, request(Some(t3), Some(t2), 5)).await,
        (vec![], None)
    );
    assert_eq!(
        page(&store, user, request(Some(t2), Some(t3), 5)).await,
        (vec![], None)
    );
}

/// A tweet older than everything in a full feed (a late or repeated delivery) falls off at once
/// rather than pushing a newer one out; likewise for an author's recent tweets.
pub async fn late_tweets_do_not_push_newer_ones_out(store: Arc<dyn FeedStore>) {
    let [user, author, t1, t2, t3, t4] = unique_ids();
    store
        .insert_entries(
            user,
            vec![entry(t2, author), entry(t3, author), entry(t4, author)],
        )
        .await
        .unwrap();
    store
        .fan_out(vec![user], entry(t1, author), stamp())
        .await
        .unwrap();
    assert_capped(&store, user, &[t4, t3, t2]).await;
    store
        .insert_entries(user, vec![entry(t1, author)])
        .await
        .unwrap();
    assert_capped(&store, user, &[t4, t3, t2]).await;

    for tweet in [t2, t3, t4] {
        store.record_tweet(author, tweet).await.unwrap();
    }
    store.record_tweet(author, t1).await.unwrap();
    store.record_tweet(author, t2).await.unwrap();
    assert_eq!(store.recent_tweets(author).await.unwrap(), vec![t4, t3]);
}

/// A feed holds one entry per tweet: a retweet of a tweet already there updates who retweeted
/// it, and a retweet reads back with its retweeter.
pub async fn retweets_keep_one_entry_per_tweet(store: Arc<dyn FeedStore>) {
    let [user, author, retweeter, t1, t2] = unique_ids();
    let retweet = |tweet_id| FeedEntry {
        tweet_id,
        author_id: author,
        retweeted_by: Some(retweeter),
    };
    store
        .insert_entries(user, vec![entry(t1, author)])
        .await
        .unwrap();
    store
        .fan_out(vec![user], retweet(t1), stamp())
        .await
        .unwrap();
    store
        .fan_out(vec![user], retweet(t2), stamp())
        .await
        .unwrap();
    let page = store
        .feed(user, PageRequest::first(Limit::DEFAULT))
        .await
        .unwrap();
    assert_eq!(page.items, vec![retweet(t2), retweet(t1)]);
}

/// Fan-out to more users than one round of concurrent writes reaches every one, once.
pub async fn fan_out_reaches_every_user(store: Arc<dyn FeedStore>) {
    let users: Vec<u64> = (0..150).map(|_| unique_id()).collect();
    let [author, t1, t2] = unique_ids();
    store
        .fan_out(users.clone(), entry(t1, author), stamp())
        .await
        .unwrap();
    store
        .fan_out(users.clone(), entry(t2, author), stamp())
        .await
        .unwrap();
    store
        .fan_out(users.clone(), entry(t2, author), stamp())
        .await
        .unwrap();
    for user in users {
        assert_eq!(ids(&store, user).await, vec![t2, t1], "feed of user {user}");
    }
}

/// Many fan-outs at once (the consumer handles many events together) each reach every one of
/// their users, with an arrival each, and a repeat among them changes nothing.
pub async fn concurrent_fan_outs_each_land_once(store: Arc<dyn FeedStore>) {
    let users: Vec<u64> = (0..40).map(|_| unique_id()).collect();
    let author = unique_id();
    let tweets: Vec<u64> = (0..24).map(|_| unique_id()).collect();
    let at = stamp();
    let fan_outs = tweets
        .iter()
        .chain(&tweets[..4])
        .enumerate()
        .map(|(i, &tweet)| {
            let (store, users) = (Arc::clone(&store), users.clone());
            // Every other fan-out goes to half of the users.
            let users = if i % 2 == 0 {
                users
            } else {
                users[..20].to_vec()
            };
            tokio::spawn(async move { store.fan_out(users, entry(tweet, author), at).await })
        });
    for written in futures_util::future::join_all(fan_outs).await {
        written.unwrap().unwrap();
    }
    let to_everyone: Vec<u64> = tweets.iter().copied().step_by(2).collect();
    for (n, &user) in users.iter().enumerate() {
        let mut expected: Vec<u64> = if n < 20 {
            tweets.clone()
        } else {
            to_everyone.clone()
        };
        expected.sort_unstable_by(|a, b| b.cmp(a));
        // The feed keeps its newest LIMITS.feed_len (older ones within the trim slack may
        // linger); the arrivals log has every one.
        let page = store
            .feed(user, PageRequest::first(Limit::parse(Some(100)).unwrap()))
            .await
            .unwrap();
        let got: Vec<u64> = page.items.iter().map(|e| e.tweet_id).collect();
        let newest = LIMITS.feed_len.min(expected.len());
        assert!(got.len() >= newest, "feed of user {user}: {got:?}");
        assert_eq!(got[..newest], expected[..newest], "feed of user {user}");
        let mut arrived: Vec<u64> = store
            .arrivals(user, (0, 0), 100)
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.entry.tweet_id)
            .collect();
        arrived.sort_unstable_by(|a, b| b.cmp(a));
        arrived.dedup();
        assert_eq!(arrived, expected, "arrivals of user {user}");
    }
}

/// Unfollowing someone who never followed is harmless, a stranger has no followers, and
/// following again after unfollowing counts.
pub async fn unfollowing_and_following_again(store: Arc<dyn FeedStore>) {
    let [author, stranger, follower1, follower2, follower3] = unique_ids();
    assert!(followers(&store, stranger).await.is_empty());
    store.set_edge(follower1, stranger, false, 1).await.unwrap();
    assert!(followers(&store, stranger).await.is_empty());

    // Added out of order, listed in ascending order.
    for follower in [follower3, follower1, follower2] {
        store.set_edge(follower, author, true, 1).await.unwrap();
    }
    store.set_edge(follower2, author, false, 2).await.unwrap();
    assert_eq!(followers(&store, author).await, vec![follower1, follower3]);
    store.set_edge(follower2, author, true, 3).await.unwrap();
    assert_eq!(
        followers(&store, author).await,
        vec![follower1, follower2, follower3]
    );
}

/// Removing an author from one feed leaves their entries in other feeds alone, and removing an
/// author who is not in a feed changes nothing.
pub async fn removing_an_author_touches_one_feed(store: Arc<dyn FeedStore>) {
    let [user1, user2, author, other, t1, t2] = unique_ids();
    store
        .fan_out(vec![user1, user2], entry(t1, author), stamp())
        .await
        .unwrap();
    store
        .fan_out(vec![user1, user2], entry(t2, other), stamp())
        .await
        .unwrap();
    remove_author(&store, user1, author).await;
    assert_eq!(ids(&store, user1).await, vec![t2]);
    assert_eq!(ids(&store, user2).await, vec![t2, t1]);
    remove_author(&store, user2, unique_id()).await;
    assert_eq!(ids(&store, user2).await, vec![t2, t1]);
}

pub async fn celebrities_are_marked_and_unmarked(store: Arc<dyn FeedStore>) {
    let [star, other] = unique_ids();
    store.set_celebrity(star, true).await.unwrap();
    store.set_celebrity(star, true).await.unwrap();
    let listed = store.celebrities().await.unwrap();
    assert!(listed.contains(&star) && !listed.contains(&other));
    assert!(listed.windows(2).all(|w| w[0] < w[1]), "ascending");
    store.set_celebrity(star, false).await.unwrap();
    store.set_celebrity(other, false).await.unwrap();
    assert!(!store.celebrities().await.unwrap().contains(&star));
}

// ---- Notifications ----------------------------------------------------------------------------

fn like_key(recipient: u64, actor: u64, tweet_id: u64) -> NotificationKey {
    NotificationKey {
        recipient,
        kind: NotificationKind::Like,
        actor,
        tweet_id,
    }
}

/// Every notification of `recipient`, newest first, as (id, actor).
async fn listed(store: &Arc<dyn FeedStore>, recipient: u64) -> Vec<(u64, u64)> {
    let page = PageRequest::first(Limit::parse(Some(100)).unwrap());
    let page = store.notifications(recipient, page).await.unwrap();
    page.items.iter().map(|n| (n.id, n.actor)).collect()
}

/// Notifications of every kind come back newest first, page by page, without overlap.
pub async fn notifications_page_newest_first(store: Arc<dyn FeedStore>) {
    let [recipient, alice, bob, tweet] = unique_ids();
    let [mention, follow, like] = unique_ids();
    let key = |kind, actor, tweet_id| NotificationKey {
        recipient,
        kind,
        actor,
        tweet_id,
    };
    store
        .set_notification(key(NotificationKind::Follow, alice, 0), 1, Some(follow))
        .await
        .unwrap();
    store
        .set_notification(key(NotificationKind::Mention, bob, tweet), 1, Some(mention))
        .await
        .unwrap();
    store
        .set_notification(key(NotificationKind::Like, bob, tweet), 1, Some(like))
        .await
        .unwrap();
    let limit = Limit::parse(Some(2)).unwrap();
    let first = store
        .notifications(recipient, PageRequest::first(limit))
        .await
        .unwrap();
    assert_eq!(
        first.items,
        vec![
            Notification {
                id: like,
                kind: NotificationKind::Like,
                actor: bob,
                tweet_id: tweet
            },
            Notification {
                id: follow,
                kind: NotificationKind::Follow,
                actor: alice,
                tweet_id: 0
            },
        ]
    );
    assert_eq!(first.next, Some(follow));
    let mut request = PageRequest::first(limit);
    request.before = first.next;
    let second = store.notifications(recipient, request).await.unwrap();
    assert_eq!(second.items.len(), 1);
    assert_eq!(second.items[0].kind, NotificationKind::Mention);
    assert_eq!(second.next, None);
    assert!(
        listed(&store, unique_id()).await.is_empty(),
        "a stranger has none"
    );
}

/// The highest version of a key decides whatever the order: an undo before its action, an
/// action replayed after its undo, a repeat, and a new action after an undo.
pub async fn notification_keys_keep_their_latest_version(store: Arc<dyn FeedStore>) {
    let [recipient, liker, tweet] = unique_ids();
    let [first, second, third] = unique_ids();
    let key = like_key(recipient, liker, tweet);
    // In order: like, unlike, a late repeat of the like.
    store.set_notification(key, 1, Some(first)).await.unwrap();
    assert_eq!(listed(&store, recipient).await, vec![(first, liker)]);
    store.set_notification(key, 1, Some(first)).await.unwrap();
    assert_eq!(
        listed(&store, recipient).await,
        vec![(first, liker)],
        "once"
    );
    store.set_notification(key, 2, None).await.unwrap();
    assert!(listed(&store, recipient).await.is_empty());
    store.set_notification(key, 1, Some(first)).await.unwrap();
    assert!(listed(&store, recipient).await.is_empty(), "stale like");
    // Liked again: listed under its new ID.
    store.set_notification(key, 3, Some(second)).await.unwrap();
    assert_eq!(listed(&store, recipient).await, vec![(second, liker)]);

    // Out of order: the unlike first, then its like; and a newer like before an older undo.
    let [other, tweet2] = unique_ids();
    let key2 = like_key(recipient, other, tweet2);
    store.set_notification(key2, 2, None).await.unwrap();
    store
        .set_notification(key2, 1, Some(unique_id()))
        .await
        .unwrap();
    assert_eq!(listed(&store, recipient).await, vec![(second, liker)]);
    let fourth = unique_id();
    store.set_notification(key2, 3, Some(third)).await.unwrap();
    store.set_notification(key2, 5, Some(fourth)).await.unwrap();
    store.set_notification(key2, 4, None).await.unwrap();
    assert_eq!(
        listed(&store, recipient).await,
        vec![(fourth, other), (second, liker)],
        "only the newest like's listing"
    );
}

/// A user's notifications keep the newest `notifications_len` (within the slack).
pub async fn notifications_are_capped(store: Arc<dyn FeedStore>) {
    let recipient = unique_id();
    let cap = LIMITS.notifications_len;
    let mut ids = Vec::new();
    for _ in 0..cap + LIMITS.trim_slack + 4 {
        let (actor, id) = (unique_id(), unique_id());
        let key = NotificationKey {
            recipient,
            kind: NotificationKind::Follow,
            actor,
            tweet_id: 0,
        };
        store.set_notification(key, 1, Some(id)).await.unwrap();
        ids.push(id);
    }
    let held: Vec<u64> = listed(&store, recipient)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert!(
        held.len() >= cap && held.len() <= cap + LIMITS.trim_slack,
        "{held:?}"
    );
    let newest: Vec<u64> = ids.iter().rev().take(cap).copied().collect();
    assert_eq!(&held[..cap], &newest[..], "the newest are kept");
    let state = store.notification_state(recipient).await.unwrap();
    assert_eq!(state.unread, held.len() as u64);
}

/// A deleted tweet's notifications go, and a repeated event does not bring them back.
pub async fn a_deleted_tweets_notifications_stay_removed(store: Arc<dyn FeedStore>) {
    let [author, liker, retweeter, follower, tweet, other_tweet] = unique_ids();
    let [like, retweet, follow, other] = unique_ids();
    let retweet_key = NotificationKey {
        kind: NotificationKind::Retweet,
        ..like_key(author, retweeter, tweet)
    };
    let follow_key = NotificationKey {
        kind: NotificationKind::Follow,
        ..like_key(author, follower, 0)
    };
    let other_key = like_key(author, liker, other_tweet);
    store
        .set_notification(like_key(author, liker, tweet), 1, Some(like))
        .await
        .unwrap();
    store
        .set_notification(retweet_key, 1, Some(retweet))
        .await
        .unwrap();
    store
        .set_notification(follow_key, 1, Some(follow))
        .await
        .unwrap();
    store
        .set_notification(other_key, 1, Some(other))
        .await
        .unwrap();
    store
        .remove_tweet_notifications(author, tweet)
        .await
        .unwrap();
    store
        .remove_tweet_notifications(author, tweet)
        .await
        .unwrap();
    assert_eq!(
        listed(&store, author).await,
        vec![(other, liker), (follow, follower)]
    );
    store
        .set_notification(like_key(author, liker, tweet), 1, Some(like))
        .await
        .unwrap();
    assert_eq!(
        listed(&store, author).await.len(),
        2,
        "a replay stays removed"
    );
}

/// The read cursor only moves forward; unread counts what is newer.
pub async fn the_read_cursor_moves_forward_and_counts_unread(store: Arc<dyn FeedStore>) {
    let recipient = unique_id();
    assert_eq!(
        store.notification_state(recipient).await.unwrap(),
        NotificationState::default()
    );
    assert_eq!(
        store
            .mark_notifications_read(recipient, None)
            .await
            .unwrap(),
        0,
        "nothing to read"
    );
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (actor, id) = (unique_id(), unique_id());
        let key = NotificationKey {
            kind: NotificationKind::Follow,
            ..like_key(recipient, actor, 0)
        };
        store.set_notification(key, 1, Some(id)).await.unwrap();
        ids.push(id);
    }
    let state = |read_up_to, unread| NotificationState { read_up_to, unread };
    assert_eq!(
        store.notification_state(recipient).await.unwrap(),
        state(0, 3)
    );
    let marked = store
        .mark_notifications_read(recipient, Some(ids[1]))
        .await
        .unwrap();
    assert_eq!(marked, ids[1]);
    assert_eq!(
        store.notification_state(recipient).await.unwrap(),
        state(ids[1], 1)
    );
    let back = store
        .mark_notifications_read(recipient, Some(ids[0]))
        .await
        .unwrap();
    assert_eq!(back, ids[1], "never back");
    assert_eq!(
        store
            .mark_notifications_read(recipient, None)
            .await
            .unwrap(),
        ids[2],
        "up to the newest"
    );
    assert_eq!(
        store.notification_state(recipient).await.unwrap(),
        state(ids[2], 0)
    );
    let (actor, id) = (unique_id(), unique_id());
    let key = NotificationKey {
        kind: NotificationKind::Follow,
        ..like_key(recipient, actor, 0)
    };
    store.set_notification(key, 1, Some(id)).await.unwrap();
    assert_eq!(
        store.notification_state(recipient).await.unwrap(),
        state(ids[2], 1)
    );
}

/// Dropping a user's notifications empties their list and read cursor, and no one else's.
pub async fn dropping_notifications(store: Arc<dyn FeedStore>) {
    let [gone, kept, actor] = unique_ids();
    let [a, b] = unique_ids();
    let follow = |recipient| NotificationKey {
        kind: NotificationKind::Follow,
        ..like_key(recipient, actor, 0)
    };
    store
        .set_notification(follow(gone), 1, Some(a))
        .await
        .unwrap();
    store
        .set_notification(follow(kept), 1, Some(b))
        .await
        .unwrap();
    store.mark_notifications_read(gone, None).await.unwrap();
    store.drop_notifications(gone).await.unwrap();
    assert!(listed(&store, gone).await.is_empty());
    assert_eq!(
        store.notification_state(gone).await.unwrap(),
        NotificationState::default()
    );
    assert_eq!(listed(&store, kept).await, vec![(b, actor)]);
}

/// Fan-out logs each entry's arrival in each feed: listed by stamp (not by tweet ID), paged by
/// `(stamp, tweet)`, per user, and gone with the feed.
pub async fn arrivals_are_listed_in_arrival_order(store: Arc<dyn FeedStore>) {
    let [user1, user2, author, older, newer, third] = unique_ids();
    let at = stamp();
    let arrived = |at_ms, tweet_id| Arrival {
        at_ms,
        entry: entry(tweet_id, author),
    };
    // The newer tweet arrives first; the older one arrives later, and so is listed after it.
    store
        .fan_out(vec![user1, user2], entry(newer, author), at)
        .await
        .unwrap();
    store
        .fan_out(vec![user1], entry(older, author), at + 5)
        .await
        .unwrap();
    store
        .fan_out(vec![user1], entry(third, author), at + 5)
        .await
        .unwrap();
    let all = store.arrivals(user1, (at - 1, u64::MAX), 10).await.unwrap();
    assert_eq!(
        all,
        vec![
            arrived(at, newer),
            arrived(at + 5, older),
            arrived(at + 5, third)
        ]
    );
    // Paged by (stamp, tweet): the second page starts right after the first's last.
    assert_eq!(
        store.arrivals(user1, (at - 1, u64::MAX), 2).await.unwrap(),
        all[..2]
    );
    assert_eq!(
        store.arrivals(user1, (at + 5, older), 10).await.unwrap(),
        vec![arrived(at + 5, third)]
    );
    assert!(
        store
            .arrivals(user1, (at + 5, third), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.arrivals(user2, (at - 1, u64::MAX), 10).await.unwrap(),
        vec![arrived(at, newer)]
    );
    // Inserted without fan-out (a backfill): in the feed, not an arrival.
    let [backfilled] = unique_ids();
    store
        .insert_entries(user2, vec![entry(backfilled, author)])
        .await
        .unwrap();
    assert_eq!(
        store
            .arrivals(user2, (at - 1, u64::MAX), 10)
            .await
            .unwrap()
            .len(),
        1
    );

    store.drop_feed(user1).await.unwrap();
    assert!(
        store
            .arrivals(user1, (at - 1, u64::MAX), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .arrivals(user2, (at - 1, u64::MAX), 10)
            .await
            .unwrap()
            .len(),
        1
    );
}
