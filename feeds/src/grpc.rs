//! The tonic adapter for `twtr.feeds.v1.FeedsService`.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use twtr_common::auth::acting_as;
use twtr_common::{Limit, PageRequest, ServiceError as _};
use twtr_proto::feeds::v1 as pb;
use twtr_proto::feeds::v1::feeds_service_server::{FeedsService, FeedsServiceServer};

use crate::service::{Feeds, FeedsError};

pub fn server(feeds: Arc<Feeds>) -> FeedsServiceServer<FeedsGrpc> {
    FeedsServiceServer::new(FeedsGrpc { feeds })
}

pub struct FeedsGrpc {
    feeds: Arc<Feeds>,
}

#[tonic::async_trait]
impl FeedsService for FeedsGrpc {
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
}
