//! The tonic adapter for `twtr.followers.v1.FollowersService`.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use twtr_common::ServiceError as _;
use twtr_proto::followers::v1 as pb;
use twtr_proto::followers::v1::followers_service_server::{
    FollowersService, FollowersServiceServer,
};

use crate::service::Followers;

pub fn server(followers: Followers) -> FollowersServiceServer<FollowersGrpc> {
    FollowersServiceServer::new(FollowersGrpc {
        followers: Arc::new(followers),
    })
}

pub struct FollowersGrpc {
    followers: Arc<Followers>,
}

#[tonic::async_trait]
impl FollowersService for FollowersGrpc {
    async fn follow(
        &self,
        request: Request<pb::FollowRequest>,
    ) -> Result<Response<pb::FollowResponse>, Status> {
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
}
