//! Discovery: the tweets under a hashtag, a search of tweets by words and tags, the tags
//! trending over the last hour, and a search of people. The tweets service owns the tweet index
//! and the users service the people lookups; these routes parse, ask them, and hydrate as every
//! list does.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use serde::{Deserialize, Serialize};
use twtr_common::{Limit, clock};
use twtr_proto::tweets::v1::{GetTrendsRequest, ListTagTweetsRequest, SearchTweetsRequest};
use twtr_proto::users::v1::SearchUsersRequest;
use utoipa::{IntoParams, ToSchema};

use crate::error::ApiError;
use crate::extract::{AuthenticatedUser, PageParams};
use crate::openapi::{ErrorBody, PageQuery};
use crate::state::AppState;
use crate::upstream::rpc;
use crate::views::{self, PageView, TweetView, UserView};

/// A hashtag in a path.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // documentation only: the tweets service parses it
pub(super) struct TagPath {
    /// The tag, with or without its `#` (`%23` in a URL); matched after NFKC and lowercase.
    #[param(example = "rust")]
    tag: String,
}

/// `?q=` of a search.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct SearchQuery {
    /// 1 to 3 words or #tags, all of which a tweet must hold (at most 280 characters, each
    /// word or tag at most 64).
    #[param(example = "tokio #rust")]
    q: Option<String>,
}

/// `?limit=` of trends.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct TrendsQuery {
    /// How many tags (default 20). Read as text, so a bad one gets the API's 400.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    limit: Option<String>,
}

/// A trending tag.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct TrendView {
    /// Without its `#`, lowercase.
    #[schema(example = "rust")]
    tag: String,
    /// How many live tweets of the window used it.
    tweet_count: u64,
}

/// The tags the most tweets used over the window, most used first.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct TrendsView {
    items: Vec<TrendView>,
    /// The window's length: the last 60 minutes of tweets, by the minute they were posted in.
    window_minutes: u32,
    /// The window's end (RFC 3339 UTC).
    as_of: String,
}

#[utoipa::path(
    get,
    path = "/v1/tags/{tag}/tweets",
    tag = "discovery",
    summary = "The tweets tagged #tag, newest first",
    security((), ("bearer" = [])),
    params(TagPath, PageQuery),
    responses(
        (status = 200, description = "a page of tweets", body = PageView<TweetView>),
        (status = 400, description = "the tag is not one word, or a bad page parameter", body = ErrorBody),
    )
)]
pub(super) async fn tag_tweets(
    State(state): State<AppState>,
    viewer: Option<AuthenticatedUser>,
    Path(tag): Path<String>,
    PageParams(page): PageParams,
) -> Result<Json<PageView<TweetView>>, ApiError> {
    let request = ListTagTweetsRequest {
        tag,
        before: page.before,
        since: page.since,
        limit: page.limit.get() as u32,
    };
    let page = state
        .up()
        .tweets
        .clone()
        .list_tag_tweets(rpc(request))
        .await?
        .into_inner();
    let viewer = viewer.map(|AuthenticatedUser(id)| id);
    Ok(Json(views::tweet_page(state.up(), viewer, page).await?))
}

#[utoipa::path(
    get,
    path = "/v1/search/tweets",
    tag = "discovery",
    summary = "Tweets holding every word and #tag of q, newest first",
    description = "A search examines at most 1,000 index entries per request: a page may come \
        back short, even empty, with `next` set; ask again with `before=<next>` to go on.",
    security((), ("bearer" = [])),
    params(SearchQuery, PageQuery),
    responses(
        (status = 200, description = "a page of tweets", body = PageView<TweetView>),
        (status = 400, description = "q missing, with no word, over 3 words or too long, or a bad page parameter", body = ErrorBody),
    )
)]
pub(super) async fn search_tweets(
    State(state): State<AppState>,
    viewer: Option<AuthenticatedUser>,
    search: Result<Query<SearchQuery>, QueryRejection>,
    PageParams(page): PageParams,
) -> Result<Json<PageView<TweetView>>, ApiError> {
    let Query(search) = search.map_err(|rejection| ApiError::invalid(rejection.body_text()))?;
    let query = search
        .q
        .ok_or_else(|| ApiError::invalid("q is required: 1 to 3 words or #tags"))?;
    let request = SearchTweetsRequest {
        query,
        before: page.before,
        since: page.since,
        limit: page.limit.get() as u32,
    };
    let page = state
        .up()
        .tweets
        .clone()
        .search_tweets(rpc(request))
        .await?
        .into_inner();
    let viewer = viewer.map(|AuthenticatedUser(id)| id);
    Ok(Json(views::tweet_page(state.up(), viewer, page).await?))
}

/// `?q=` and `?limit=` of a people search.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct PeopleQuery {
    /// A username or its start (from two characters; a leading `@` is ignored), or 1 to 3
    /// words of a display name; at most 64 characters.
    #[param(example = "ada")]
    q: Option<String>,
    /// How many people (1 to 50, default 10). Read as text, so a bad one gets the API's 400.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 50)]
    limit: Option<String>,
}

/// The people a search found, best first.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct PeopleView {
    items: Vec<UserView>,
}

#[utoipa::path(
    get,
    path = "/v1/users/search",
    tag = "discovery",
    summary = "People by username or display name, best matches first",
    description = "The exact username first (ignoring case), then usernames starting with q, \
        then people whose display name holds every word of q; within each, most followers \
        first. Bounded work: at most 50 accounts are read by username prefix and 100 by display \
        name word, so a common prefix or word finds some of its people, not all.",
    params(PeopleQuery),
    responses(
        (status = 200, description = "the people found, best first", body = PeopleView),
        (status = 400, description = "q missing, with nothing to match, over 3 words or 64 characters, or a bad limit", body = ErrorBody),
    )
)]
pub(super) async fn search_users(
    State(state): State<AppState>,
    query: Result<Query<PeopleQuery>, QueryRejection>,
) -> Result<Json<PeopleView>, ApiError> {
    let Query(query) = query.map_err(|rejection| ApiError::invalid(rejection.body_text()))?;
    let limit = parse_limit(query.limit.as_deref(), 10, 50)?;
    let text = query
        .q
        .ok_or_else(|| ApiError::invalid("q is required: a username or words of a display name"))?;
    let matches = state
        .up()
        .users
        .clone()
        .search_users(rpc(SearchUsersRequest { query: text }))
        .await?
        .into_inner()
        .matches;
    let (users, kinds): (Vec<_>, Vec<_>) = matches
        .into_iter()
        .filter_map(|found| Some((found.user?, found.kind)))
        .unzip();
    // Every candidate's counts in one pair of RPCs, then ranked: kind of match, then followers.
    let views = views::users(state.up(), users).await?;
    let mut ranked: Vec<(i32, UserView)> = kinds.into_iter().zip(views).collect();
    ranked.sort_by_key(|(kind, user)| (*kind, std::cmp::Reverse(user.followers_count)));
    Ok(Json(PeopleView {
        items: ranked
            .into_iter()
            .take(limit as usize)
            .map(|(_, user)| user)
            .collect(),
    }))
}

/// `?limit=` of a list that is not paged: `default` when absent, else 1 to `max`.
pub(super) fn parse_limit(raw: Option<&str>, default: u32, max: u32) -> Result<u32, ApiError> {
    match raw {
        None => Ok(default),
        Some(raw) => raw
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| ApiError::invalid(format!("limit must be 1 to {max}, got {raw:?}"))),
    }
}

#[utoipa::path(
    get,
    path = "/v1/trends",
    tag = "discovery",
    summary = "The tags most used over the last hour",
    params(TrendsQuery),
    responses(
        (status = 200, description = "the trending tags, most used first", body = TrendsView),
        (status = 400, description = "a bad limit", body = ErrorBody),
    )
)]
pub(super) async fn trends(
    State(state): State<AppState>,
    query: Result<Query<TrendsQuery>, QueryRejection>,
) -> Result<Json<TrendsView>, ApiError> {
    let Query(query) = query.map_err(|rejection| ApiError::invalid(rejection.body_text()))?;
    let default = Limit::DEFAULT.get() as u32;
    let limit = parse_limit(query.limit.as_deref(), default, Limit::MAX)?;
    let request = GetTrendsRequest { limit };
    let trends = state
        .up()
        .tweets
        .clone()
        .get_trends(rpc(request))
        .await?
        .into_inner();
    Ok(Json(TrendsView {
        items: trends
            .trends
            .into_iter()
            .map(|trend| TrendView {
                tag: trend.tag,
                tweet_count: trend.tweet_count,
            })
            .collect(),
        window_minutes: trends.window_minutes,
        as_of: clock::rfc3339(trends.as_of.as_ref().map_or(0, clock::from_timestamp)),
    }))
}
