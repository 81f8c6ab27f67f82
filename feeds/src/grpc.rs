//! The tonic adapter for `twtr.feeds.v1.FeedsService`.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use twtr_common::auth::acting_as;
use twtr_common::{Limit, PageRequest, ServiceError as _};
use twtr_proto::feeds::v1 as pb;
use twtr_proto::feeds::v1::feeds_service_server::{FeedsService, FeedsServiceServer};

use futures_util::StreamExt as _;

use crate::live::{Cursor, Live};
use crate::service::{Feeds, FeedsError};
use crate::store::NotificationKind;

fn kind_to_pb(kind: NotificationKind) -> pb::NotificationKind {
    match kind {
        NotificationKind::Mention => pb::NotificationKind::Mention,
        NotificationKind::Follow => pb::NotificationKind::Follow,
        NotificationKind::Like => pb::NotificationKind::Like,
        NotificationKind::Retweet => pb::NotificationKind::Retweet,
    }
}

pub fn server(feeds: Arc<Feeds>, live: Arc<Live>) -> FeedsServiceServer<FeedsGrpc> {
    FeedsServiceServer::new(FeedsGrpc { feeds, live })
}

pub struct FeedsGrpc {
    feeds: Arc<Feeds>,
    live: Arc<Live>,
}

type WatchStream = std::pin::Pin<
    Box<dyn futures_util::Stream<Item = Result<pb::WatchFeedResponse, Status>> + Send>,
>;

#[tonic::async_trait]
impl FeedsService for FeedsGrpc {
    type WatchFeedStream = WatchStream;

    async fn watch_feed(
        &self,
        request: Request<pb::WatchFeedRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        // A home feed is private to its owner, live or not.
        acting_as(&request, request.get_ref().user_id)?;
        let r = request.into_inner();
        if r.user_id == 0 {
            return Err(FeedsError::MissingUser.to_status());
        }
        let cursor = match r.cursor.as_str() {
            "" => None,
            text => {
                Some(Cursor::parse(text).map_err(|_| FeedsError::InvalidLiveCursor.to_status())?)
            }
        };
        let messages = self.live.watch(r.user_id, cursor);
        let stream = tokio_stream::wrappers::ReceiverStream::new(messages).map(Ok);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_feed(
        &self,
        request: Request<pb::GetFeedRequest>,
    ) -> Result<Response<pb::GetFeedResponse>, Status> {
        // A home feed is private to its owner.
        acting_as(&request, request.get_ref().user_id)?;
        let r = request.into_inner();
        let limit = Limit::parse(Some(r.limit)).map_err(|e| FeedsError::from(e).to_status())?;
        let page = PageRequest {
            before: r.before,
            since: r.since,
            limit,
        };
        let page = self
            .feeds
            .feed(r.user_id, page)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(pb::GetFeedResponse {
            entries: page
                .items
                .into_iter()
                .map(|e| pb::FeedEntry {
                    tweet_id: e.tweet_id,
                    author_id: e.author_id,
                    retweeted_by: e.retweeted_by,
                })
                .collect(),
            next: page.next,
        }))
    }

    async fn list_notifications(
        &self,
        request: Request<pb::ListNotificationsRequest>,
    ) -> Result<Response<pb::ListNotificationsResponse>, Status> {
        // Notifications are private to their recipient.
        acting_as(&request, request.get_ref().user_id)?;
        let r = request.into_inner();
        let limit = Limit::parse(Some(r.limit)).map_err(|e| FeedsError::from(e).to_status())?;
        let page = PageRequest {
            before: r.before,
            since: None,
            limit,
        };
        let (page, state) = self
            .feeds
            .notifications(r.user_id, page)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(pb::ListNotificationsResponse {
            notifications: page
                .items
                .into_iter()
                .map(|n| pb::Notification {
                    id: n.id,
                    kind: kind_to_pb(n.kind).into(),
                    actor_id: n.actor,
                    tweet_id: (n.tweet_id != 0).then_some(n.tweet_id),
                    read: n.id <= state.read_up_to,
                })
                .collect(),
            next: page.next,
            unread_count: state.unread,
        }))
    }

    async fn mark_notifications_read(
        &self,
        request: Request<pb::MarkNotificationsReadRequest>,
    ) -> Result<Response<pb::MarkNotificationsReadResponse>, Status> {
        acting_as(&request, request.get_ref().user_id)?;
        let r = request.into_inner();
        let read_up_to = self
            .feeds
            .mark_notifications_read(r.user_id, r.up_to)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(pb::MarkNotificationsReadResponse {
            read_up_to,
        }))
    }
}
