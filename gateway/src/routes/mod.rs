//! One handler per route of the public API (see DESIGN.md, "Edge API"), in a module per
//! resource; each handler reads top to bottom: parse the input, call the owning service(s),
//! hydrate ([`crate::views`]), respond. Each documents, in its `#[utoipa::path]`, the statuses
//! that are its own; those every route shares (401 for a bad token, 400 for a bad ID, page
//! query or body, the edge's limits) are added once by [`crate::openapi::EdgeResponses`].
//!
//! - `users`: sign-up, the caller's account (`/v1/users/me`), profiles by ID or username.
//! - `sessions`: log in.
//! - `follows`: follow, unfollow, a user's followers and following.
//! - `tweets`: post, read and delete a tweet; a user's tweets.
//! - `reactions`: like and retweet, and their undoing.
//! - `feed`: the caller's home feed, as pages and live (Server-Sent Events).
//! - `notifications`: the caller's notifications, and marking them read.
//! - `timeline`: everyone's tweets.
//! - `discovery`: the tweets under a hashtag, search, trends.

mod discovery;
mod feed;
mod follows;
mod notifications;
mod reactions;
mod sessions;
mod timeline;
mod tweets;
mod users;

use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::openapi::ApiDoc;
use crate::state::AppState;

/// The API's routes (under `/v1`), each documented by its handler's `#[utoipa::path]`, which
/// `routes!` also takes the path and method from (see [`crate::openapi`]); handlers of one path
/// go in one `routes!`. [`crate::app::router`] puts the edge's limits around them.
pub fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(users::create_user))
        .routes(routes!(sessions::create_session))
        .routes(routes!(users::me, users::update_me, users::delete_me))
        .routes(routes!(users::user_by_username))
        .routes(routes!(users::user_by_id))
        .routes(routes!(follows::follow, follows::unfollow))
        .routes(routes!(follows::followers))
        .routes(routes!(follows::following))
        .routes(routes!(follows::suggestions))
        .routes(routes!(tweets::user_tweets))
        .routes(routes!(tweets::create_tweet))
        .routes(routes!(tweets::tweet_by_id, tweets::delete_tweet))
        .routes(routes!(reactions::like, reactions::unlike))
        .routes(routes!(reactions::retweet, reactions::unretweet))
        .routes(routes!(timeline::timeline))
        .routes(routes!(feed::feed))
        .routes(routes!(feed::feed_stream))
        .routes(routes!(notifications::notifications))
        .routes(routes!(notifications::mark_read))
        .routes(routes!(discovery::tag_tweets))
        .routes(routes!(discovery::search_tweets))
        .routes(routes!(discovery::trends))
        .routes(routes!(discovery::search_users))
}
