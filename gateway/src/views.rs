//! The JSON bodies of the public API, and their hydration from several services. Hydration is
//! batched: one RPC per kind of data per response, however many items it holds; the users shown
//! beside tweets come from the gateway's memory when it read them in the last few seconds.

use std::collections::HashMap;

use serde::Serialize;
use twtr_common::{ErrorCode, clock};
use twtr_proto::feeds::v1 as feeds_pb;
use twtr_proto::followers::v1::BatchGetCountsRequest;
use twtr_proto::tweets::v1::{
    self as tweets_pb, BatchGetTweetCountsRequest, BatchGetTweetsRequest,
    BatchGetViewerFlagsRequest,
};
use twtr_proto::users::v1::{self as users_pb, BatchGetUsersRequest};
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::upstream::{Upstreams, rpc};

/// A user, as the API shows it. IDs are strings; timestamps RFC 3339 UTC.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UserView {
    #[schema(pattern = "^[0-9]+$", example = "7129876543210123")]
    pub id: String,
    #[schema(example = "alice")]
    pub username: String,
    pub display_name: String,
    pub bio: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    pub followers_count: u64,
    pub following_count: u64,
    pub tweets_count: u64,
}

/// The part of a user shown with each tweet.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AuthorView {
    #[schema(pattern = "^[0-9]+$")]
    pub id: String,
    pub username: String,
    pub display_name: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TweetView {
    #[schema(pattern = "^[0-9]+$", example = "7129876543210456")]
    pub id: String,
    pub author: AuthorView,
    pub text: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    pub like_count: u64,
    pub retweet_count: u64,
    /// Whether the caller likes it; present when the request carried a token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub liked_by_me: Option<bool>,
    /// Whether the caller retweeted it; present when the request carried a token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retweeted_by_me: Option<bool>,
    /// Set on a feed entry that is a retweet: who retweeted it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retweeted_by: Option<AuthorView>,
    /// The users the text mentions (`@username`), as resolved when it was posted; a name that
    /// was nobody's stays plain text and is not listed.
    pub mentions: Vec<MentionView>,
}

/// A user a tweet mentions.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MentionView {
    #[schema(pattern = "^[0-9]+$")]
    pub id: String,
    /// As it was when the tweet was posted.
    pub username: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PageView<T> {
    pub items: Vec<T>,
    /// Pass as `before` for the next, older page; null on the last one.
    #[schema(pattern = "^[0-9]+$")]
    pub next: Option<String>,
}

impl<T> PageView<T> {
    pub fn new(items: Vec<T>, next: Option<u64>) -> Self {
        Self {
            items,
            next: next.map(|id| id.to_string()),
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SessionView {
    /// The bearer token: `Authorization: Bearer <token>`.
    pub token: String,
    #[schema(format = DateTime)]
    pub expires_at: String,
    pub user: UserView,
}

fn rfc3339(ts: Option<&prost_types::Timestamp>) -> String {
    clock::rfc3339(ts.map_or(0, clock::from_timestamp))
}

fn author(user: &users_pb::User) -> AuthorView {
    AuthorView {
        id: user.id.to_string(),
        username: user.username.clone(),
        display_name: user.display_name.clone(),
    }
}

/// A user just created: nobody follows them and they have posted nothing yet.
pub fn new_user(user: users_pb::User) -> UserView {
    user_view(user, (0, 0), 0)
}

fn user_view(user: users_pb::User, (followers, following): (u64, u64), tweets: u64) -> UserView {
    UserView {
        id: user.id.to_string(),
        created_at: rfc3339(user.created_at.as_ref()),
        username: user.username,
        display_name: user.display_name,
        bio: user.bio,
        followers_count: followers,
        following_count: following,
        tweets_count: tweets,
    }
}

/// Adds follower, following and tweet counts to users: two RPCs, run concurrently.
pub async fn users(up: &Upstreams, users: Vec<users_pb::User>) -> Result<Vec<UserView>, ApiError> {
    if users.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<u64> = users.iter().map(|u| u.id).collect();
    let (mut followers, mut tweets) = (up.followers.clone(), up.tweets.clone());
    let (follow_counts, tweet_counts) = tokio::try_join!(
        followers.batch_get_counts(rpc(BatchGetCountsRequest {
            user_ids: ids.clone()
        })),
        tweets.batch_get_tweet_counts(rpc(BatchGetTweetCountsRequest { author_ids: ids })),
    )?;
    let follow_counts: HashMap<u64, (u64, u64)> = follow_counts
        .into_inner()
        .counts
        .into_iter()
        .map(|c| (c.user_id, (c.followers_count, c.following_count)))
        .collect();
    let tweet_counts: HashMap<u64, u64> = tweet_counts
        .into_inner()
        .counts
        .into_iter()
        .map(|c| (c.author_id, c.tweets_count))
        .collect();
    Ok(users
        .into_iter()
        .map(|user| {
            let follows = follow_counts.get(&user.id).copied().unwrap_or_default();
            let tweets = tweet_counts.get(&user.id).copied().unwrap_or_default();
            user_view(user, follows, tweets)
        })
        .collect())
}

/// The users of one page of `owner`'s follower or following list, hydrated and in the list's
/// order: one users batch (which asks for `owner` too, to tell an unknown or deleted owner,
/// `None`, from an empty list), then [`users`]'s two count RPCs. A listed user whose account is
/// gone (its edges are purged in the background) is left out.
pub async fn listed_users(
    up: &Upstreams,
    owner: u64,
    listed: Vec<u64>,
) -> Result<Option<Vec<UserView>>, ApiError> {
    let mut ids = listed.clone();
    ids.push(owner);
    ids.sort_unstable();
    ids.dedup();
    let mut found: HashMap<u64, users_pb::User> = up
        .users
        .clone()
        .batch_get_users(rpc(BatchGetUsersRequest {
            user_ids: ids,
            ..Default::default()
        }))
        .await?
        .into_inner()
        .users
        .into_iter()
        .map(|u| (u.id, u))
        .collect();
    if found.remove(&owner).is_none() {
        return Ok(None);
    }
    let in_order = listed.iter().filter_map(|id| found.remove(id)).collect();
    users(up, in_order).await.map(Some)
}

/// One user, hydrated as [`users`] does.
pub async fn user(up: &Upstreams, user: users_pb::User) -> Result<UserView, ApiError> {
    users(up, vec![user])
        .await?
        .pop()
        .ok_or_else(|| ApiError::new(ErrorCode::Internal, "hydration lost an item"))
}

/// A page of tweets as the tweets service answered it (a user's tweets, the public timeline, a
/// tag, a search), hydrated for `viewer`: what every list of tweets returns.
pub async fn tweet_page(
    up: &Upstreams,
    viewer: Option<u64>,
    page: tweets_pb::TweetPage,
) -> Result<PageView<TweetView>, ApiError> {
    let items = tweets(up, viewer, Listed::Tweets(page.tweets)).await?;
    Ok(PageView::new(items, page.next))
}

/// The tweets of a page as they were listed, before [`tweets`] hydrates them.
#[derive(Debug)]
pub enum Listed {
    /// Tweets the tweets service answered whole: a user's tweets, the public timeline, one tweet.
    Tweets(Vec<tweets_pb::Tweet>),
    /// A home feed's entries, which name each tweet, its author and, for a retweet, who
    /// retweeted it: the tweets themselves are still to be read.
    Feed(Vec<feeds_pb::FeedEntry>),
}

impl Listed {
    fn is_empty(&self) -> bool {
        match self {
            Self::Tweets(tweets) => tweets.is_empty(),
            Self::Feed(entries) => entries.is_empty(),
        }
    }

    /// Everyone the page shows: the authors and the retweeters (repeats allowed).
    fn user_ids(&self) -> Vec<u64> {
        match self {
            Self::Tweets(tweets) => tweets.iter().map(|tweet| tweet.author_id).collect(),
            Self::Feed(entries) => entries
                .iter()
                .flat_map(|entry| std::iter::once(entry.author_id).chain(entry.retweeted_by))
                .collect(),
        }
    }
}

/// A page of tweets (home feed, timeline, a user's tweets, or just one) as the API shows it, in
/// the listed order: with author profiles and, for a known `viewer`, whether they like and
/// retweeted each one. At most two RPCs in parallel whatever the page size: one tweets call
/// (the viewer's flags on tweets already read, or a feed's tweets read with those flags), and
/// one users batch for the authors and retweeters the gateway has not read in the last few
/// seconds ([`crate::authors`]; usually none). A tweet deleted since it was listed, or whose
/// author no longer exists, is left out.
pub async fn tweets(
    up: &Upstreams,
    viewer: Option<u64>,
    listed: Listed,
) -> Result<Vec<TweetView>, ApiError> {
    if listed.is_empty() {
        return Ok(Vec::new());
    }
    let (authors, (items, flags)) = tokio::try_join!(
        authors(up, listed.user_ids()),
        tweets_and_flags(up, viewer, listed),
    )?;
    Ok(assemble(items, &authors, flags))
}

/// One tweet, hydrated as [`tweets`] does; `None` when its author no longer exists.
pub async fn tweet(
    up: &Upstreams,
    viewer: Option<u64>,
    tweet: tweets_pb::Tweet,
) -> Result<Option<TweetView>, ApiError> {
    Ok(tweets(up, viewer, Listed::Tweets(vec![tweet])).await?.pop())
}

/// A tweet its author just posted under a fresh ID (no `Idempotency-Key`, so not an earlier
/// tweet answered again), hydrated as [`tweet`] does for its author, without asking the tweets
/// service what nobody can have done yet: the author neither likes nor retweeted it.
pub async fn new_tweet(
    up: &Upstreams,
    tweet: tweets_pb::Tweet,
) -> Result<Option<TweetView>, ApiError> {
    let authors = authors(up, vec![tweet.author_id]).await?;
    let flags = vec![tweets_pb::ViewerFlags {
        tweet_id: tweet.id,
        liked: false,
        retweeted: false,
    }];
    Ok(assemble(vec![(tweet, None)], &authors, flags).pop())
}

/// A tweet of a page, with who retweeted it (a feed's retweets only).
type Item = (tweets_pb::Tweet, Option<u64>);

/// The listed tweets, in order, and the viewer's flags on them (none without a viewer): one RPC
/// at most.
async fn tweets_and_flags(
    up: &Upstreams,
    viewer: Option<u64>,
    listed: Listed,
) -> Result<(Vec<Item>, Vec<tweets_pb::ViewerFlags>), tonic::Status> {
    let mut client = up.tweets.clone();
    match listed {
        Listed::Tweets(tweets) => {
            let flags = match viewer {
                None => Vec::new(),
                Some(user_id) => {
                    let request = BatchGetViewerFlagsRequest {
                        user_id,
                        tweet_ids: tweets.iter().map(|tweet| tweet.id).collect(),
                    };
                    let flags = client.batch_get_viewer_flags(rpc(request)).await?;
                    flags.into_inner().flags
                }
            };
            Ok((
                tweets.into_iter().map(|tweet| (tweet, None)).collect(),
                flags,
            ))
        }
        Listed::Feed(entries) => {
            let request = BatchGetTweetsRequest {
                tweet_ids: entries.iter().map(|entry| entry.tweet_id).collect(),
                viewer_id: viewer,
            };
            let found = client.batch_get_tweets(rpc(request)).await?.into_inner();
            let mut by_id: HashMap<u64, _> = found
                .tweets
                .into_iter()
                .map(|tweet| (tweet.id, tweet))
                .collect();
            // In the feed's order; an entry whose tweet is gone since is skipped.
            let items = entries
                .iter()
                .filter_map(|entry| {
                    let tweet = by_id.remove(&entry.tweet_id)?;
                    Some((tweet, entry.retweeted_by))
                })
                .collect();
            Ok((items, found.viewer_flags))
        }
    }
}

/// The users among `ids` (repeats allowed), by ID: from the gateway's memory of recent answers,
/// and one RPC for the rest ([`crate::authors`]).
pub(crate) async fn authors(
    up: &Upstreams,
    ids: Vec<u64>,
) -> Result<HashMap<u64, users_pb::User>, tonic::Status> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    up.authors.get(ids).await
}

/// Tweets as the API shows them, in the order given, from their `authors` (and retweeters)
/// and the viewer's `flags` (none: no viewer). A tweet whose author is gone is left out.
fn assemble(
    items: Vec<Item>,
    authors: &HashMap<u64, users_pb::User>,
    flags: Vec<tweets_pb::ViewerFlags>,
) -> Vec<TweetView> {
    let flags: HashMap<u64, (bool, bool)> = flags
        .into_iter()
        .map(|f| (f.tweet_id, (f.liked, f.retweeted)))
        .collect();
    items
        .into_iter()
        .filter_map(|(tweet, retweeter)| {
            let by = authors.get(&tweet.author_id)?;
            let mine = flags.get(&tweet.id).copied();
            Some(TweetView {
                id: tweet.id.to_string(),
                author: author(by),
                created_at: rfc3339(tweet.created_at.as_ref()),
                text: tweet.text,
                like_count: tweet.like_count,
                retweet_count: tweet.retweet_count,
                liked_by_me: mine.map(|(liked, _)| liked),
                retweeted_by_me: mine.map(|(_, retweeted)| retweeted),
                retweeted_by: retweeter.and_then(|id| authors.get(&id)).map(author),
                mentions: tweet
                    .mentions
                    .into_iter()
                    .map(|m| MentionView {
                        id: m.user_id.to_string(),
                        username: m.username,
                    })
                    .collect(),
            })
        })
        .collect()
}

/// The users `text` mentions (`@username`, see `twtr_common::words::mentioned_names`) that
/// exist, in the order the text names them: one users RPC, none when it names nobody.
pub async fn mentions(up: &Upstreams, text: &str) -> Result<Vec<tweets_pb::Mention>, ApiError> {
    let names = twtr_common::words::mentioned_names(text);
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let request = BatchGetUsersRequest {
        usernames: names.clone(),
        ..Default::default()
    };
    let mut found: HashMap<String, users_pb::User> = up
        .users
        .clone()
        .batch_get_users(rpc(request))
        .await?
        .into_inner()
        .users
        .into_iter()
        .map(|u| (u.username.to_ascii_lowercase(), u))
        .collect();
    Ok(names
        .into_iter()
        .filter_map(|name| {
            let user = found.remove(&name)?;
            Some(tweets_pb::Mention {
                user_id: user.id,
                username: user.username,
            })
        })
        .collect())
}
