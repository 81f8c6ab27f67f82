//! The tonic adapter for `twtr.followers.v1.FollowersService`.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use twtr_common::auth::acting_as;
use twtr_common::{PageRequest, ServiceError as _};
use twtr_proto::followers::v1 as pb;
use twtr_proto::followers::v1::followers_service_server::{
    FollowersService, FollowersServiceServer,
};

use crate::service::{Followers, FollowersError};
use crate::store::Direction;

pub fn server(followers: Arc<Followers>) -> FollowersServiceServer<FollowersGrpc> {
    FollowersServiceServer::new(FollowersGrpc { followers })
}

pub struct FollowersGrpc {
    followers: Arc<Followers>,
}

impl FollowersGrpc {
    async fn list(
        &self,
        request: pb::ListFollowsRequest,
        direction: Direction,
    ) -> Result<Response<pb::ListFollowsResponse>, Status> {
        let page = PageRequest::from_wire(request.before, request.since, request.limit)
            .map_err(|e| FollowersError::from(e).to_status())?;
        let page = self
            .followers
            .list(request.user_id, direction, page)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(pb::ListFollowsResponse {
            entries: page
                .items
                .into_iter()
                .map(|entry| pb::FollowEntry {
                    user_id: entry.user_id,
                    follow_id: entry.follow_id,
                })
                .collect(),
            next: page.next,
        }))
    }
}

#[tonic::async_trait]
impl FollowersService for FollowersGrpc {
    async fn follow(
        &self,
        request: Request<pb::FollowRequest>,
    ) -> Result<Response<pb::FollowResponse>, Status> {
        acting_as(&request, request.get_ref().follower_id)?;
        let r = request.into_inner();
        let created = self
            .followers
            .follow(r.follower_id, r.followee_id)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(pb::FollowResponse { created }))
    }

    async fn unfollow(
        &self,
        request: Request<pb::UnfollowRequest>,
    ) -> Result<Response<pb::UnfollowResponse>, Status> {
        acting_as(&request, request.get_ref().follower_id)?;
        let r = request.into_inner();
        let removed = self
            .followers
            .unfollow(r.follower_id, r.followee_id)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(pb::UnfollowResponse { removed }))
    }

    async fn batch_get_counts(
        &self,
        request: Request<pb::BatchGetCountsRequest>,
    ) -> Result<Response<pb::BatchGetCountsResponse>, Status> {
        let counts = self
            .followers
            .counts(request.into_inner().user_ids)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(pb::BatchGetCountsResponse {
            counts: counts
                .into_iter()
                .map(|(user_id, c)| pb::FollowCounts {
                    user_id,
                    followers_count: c.followers,
                    following_count: c.following,
                })
                .collect(),
        }))
    }

    async fn list_followers(
        &self,
        request: Request<pb::ListFollowsRequest>,
    ) -> Result<Response<pb::ListFollowsResponse>, Status> {
        self.list(request.into_inner(), Direction::Followers).await
    }

    async fn list_following(
        &self,
        request: Request<pb::ListFollowsRequest>,
    ) -> Result<Response<pb::ListFollowsResponse>, Status> {
        self.list(request.into_inner(), Direction::Following).await
    }

    async fn suggest_follows(
        &self,
        request: Request<pb::SuggestFollowsRequest>,
    ) -> Result<Response<pb::SuggestFollowsResponse>, Status> {
        let request = request.into_inner();
        let suggestions = self
            .followers
            .suggestions(request.user_id, request.limit)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(pb::SuggestFollowsResponse {
            suggestions: suggestions
                .into_iter()
                .map(|s| pb::Suggestion {
                    user_id: s.user_id,
                    followed_by: s.followed_by,
                    followers_count: s.followers_count,
                })
                .collect(),
        }))
    }
}
