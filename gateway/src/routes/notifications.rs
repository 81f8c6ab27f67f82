//! The caller's notifications: who mentioned them, followed them, liked or retweeted their
//! tweets; and marking them read.

use std::collections::HashMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use twtr_common::{clock, id};
use twtr_proto::feeds::v1::{
    self as feeds_pb, FeedEntry, ListNotificationsRequest, MarkNotificationsReadRequest,
    NotificationKind,
};
use utoipa::{IntoParams, ToSchema};

use crate::error::ApiError;
use crate::extract::{AuthenticatedUser, JsonBody, PageParams, parse_id};
use crate::openapi::ErrorBody;
use crate::state::AppState;
use crate::upstream::rpc;
use crate::views::{self, Listed, TweetView, UserView};

/// `?limit=&before=` of the notifications page.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // documentation only: `extract::PageParams` parses them
pub(super) struct NotificationsQuery {
    /// Items per page (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
    /// Older than this cursor: the `next_cursor` of the previous page.
    #[param(pattern = "^[0-9]+$", example = "7129876543210123")]
    before: Option<String>,
}

/// One notification.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(super) struct NotificationView {
    /// Time-ordered; a cursor for `before` and for `up_to`.
    #[schema(pattern = "^[0-9]+$")]
    id: String,
    /// `mention`, `follow`, `like` or `retweet`.
    #[schema(example = "like")]
    kind: &'static str,
    /// Who did it.
    actor: UserView,
    /// The tweet it is about (absent for a follow).
    #[serde(skip_serializing_if = "Option::is_none")]
    tweet: Option<TweetView>,
    #[schema(format = DateTime)]
    created_at: String,
    /// Whether it is at or below the caller's read cursor.
    read: bool,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub(super) struct NotificationsPage {
    items: Vec<NotificationView>,
    /// Notifications newer than the read cursor (at most the list's cap).
    unread_count: u64,
    /// Pass as `before` for the next, older page; null on the last one.
    #[schema(pattern = "^[0-9]+$")]
    next_cursor: Option<String>,
}

fn kind_name(kind: NotificationKind) -> Option<&'static str> {
    Some(match kind {
        NotificationKind::Mention => "mention",
        NotificationKind::Follow => "follow",
        NotificationKind::Like => "like",
        NotificationKind::Retweet => "retweet",
        NotificationKind::Unspecified => return None,
    })
}

#[utoipa::path(
    get,
    path = "/v1/notifications",
    tag = "notifications",
    summary = "The caller's notifications, newest first, with the unread count",
    security(("bearer" = [])),
    params(NotificationsQuery),
    responses(
        (status = 200, description = "a page of notifications", body = NotificationsPage),
    )
)]
pub(super) async fn notifications(
    State(state): State<AppState>,
    AuthenticatedUser(me): AuthenticatedUser,
    PageParams(page): PageParams,
) -> Result<Json<NotificationsPage>, ApiError> {
    if page.since.is_some() {
        return Err(ApiError::invalid(
            "notifications page back with before; since is not supported",
        ));
    }
    let request = ListNotificationsRequest {
        user_id: me,
        before: page.before,
        limit: page.limit.get() as u32,
    };
    let up = state.up();
    let listed = up
        .feeds
        .clone()
        .list_notifications(rpc(request))
        .await?
        .into_inner();
    let (actors, tweets) = tokio::try_join!(
        actors(up, &listed.notifications),
        tweets(up, me, &listed.notifications),
    )?;
    // An actor whose account is gone, or a tweet deleted since, leaves its notification out
    // (the purges take them away soon after).
    let items = listed
        .notifications
        .into_iter()
        .filter_map(|n| {
            let kind = kind_name(n.kind())?;
            let actor = actors.get(&n.actor_id)?.clone();
            let tweet = match n.tweet_id {
                Some(tweet_id) => Some(tweets.get(&tweet_id)?.clone()),
                None => None,
            };
            Some(NotificationView {
                id: n.id.to_string(),
                kind,
                actor,
                tweet,
                created_at: clock::rfc3339(id::millis_of(n.id)),
                read: n.read,
            })
        })
        .collect();
    Ok(Json(NotificationsPage {
        items,
        unread_count: listed.unread_count,
        next_cursor: listed.next.map(|next| next.to_string()),
    }))
}

/// The actors of `notifications`, hydrated as users: the users the gateway has not read in the
/// last few seconds in one batch (`crate::authors`), and the two count RPCs.
async fn actors(
    up: &crate::upstream::Upstreams,
    notifications: &[feeds_pb::Notification],
) -> Result<HashMap<u64, UserView>, ApiError> {
    let ids = notifications.iter().map(|n| n.actor_id).collect();
    let found = views::authors(up, ids).await?.into_values().collect();
    let users = views::users(up, found).await?;
    Ok(users
        .into_iter()
        .filter_map(|u| Some((u.id.parse().ok()?, u)))
        .collect())
}

/// The tweets `notifications` are about, hydrated for the caller as a feed's are (one tweets
/// batch, and a users batch for authors not read in the last few seconds): a like's or
/// retweet's tweet is the caller's own, a mention's is the actor's.
async fn tweets(
    up: &crate::upstream::Upstreams,
    me: u64,
    notifications: &[feeds_pb::Notification],
) -> Result<HashMap<u64, TweetView>, ApiError> {
    let mut entries: Vec<FeedEntry> = Vec::new();
    for n in notifications {
        let Some(tweet_id) = n.tweet_id else { continue };
        if entries.iter().any(|e| e.tweet_id == tweet_id) {
            continue;
        }
        let author_id = if n.kind() == NotificationKind::Mention {
            n.actor_id
        } else {
            me
        };
        entries.push(FeedEntry {
            tweet_id,
            author_id,
            retweeted_by: None,
        });
    }
    let tweets = views::tweets(up, Some(me), Listed::Feed(entries)).await?;
    Ok(tweets
        .into_iter()
        .filter_map(|t| Some((t.id.parse().ok()?, t)))
        .collect())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct MarkReadBody {
    /// Mark read up to (and with) this notification ID; absent: up to the newest. The read
    /// cursor never moves back.
    #[schema(pattern = "^[0-9]+$", example = "7129876543210123")]
    up_to: Option<String>,
}

#[utoipa::path(
    post,
    path = "/v1/notifications/read",
    operation_id = "mark_notifications_read",
    tag = "notifications",
    summary = "Mark the caller's notifications read up to a cursor",
    security(("bearer" = [])),
    request_body = MarkReadBody,
    responses(
        (status = 204, description = "read up to `up_to` (or the newest); never moved back"),
        (status = 400, description = "malformed body, or `up_to` is not a notification ID", body = ErrorBody),
    )
)]
pub(super) async fn mark_read(
    State(state): State<AppState>,
    AuthenticatedUser(me): AuthenticatedUser,
    JsonBody(body): JsonBody<MarkReadBody>,
) -> Result<StatusCode, ApiError> {
    let up_to = body
        .up_to
        .map(|cursor| parse_id(&cursor, "up_to"))
        .transpose()?;
    state
        .up()
        .feeds
        .clone()
        .mark_notifications_read(rpc(MarkNotificationsReadRequest { user_id: me, up_to }))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
