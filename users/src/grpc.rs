//! The tonic adapter for `twtr.users.v1.UsersService`: unwrap the request, call [`Users`],
//! convert the result.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use twtr_common::auth::acting_token;
use twtr_common::{ServiceError as _, clock};
use twtr_proto::users::v1 as pb;
use twtr_proto::users::v1::users_service_server::{UsersService, UsersServiceServer};

use crate::search::MatchKind;
use crate::service::{ProfileUpdate, SignUp, Users};
use crate::store::UserRecord;

pub fn server(users: Users) -> UsersServiceServer<UsersGrpc> {
    UsersServiceServer::new(UsersGrpc {
        users: Arc::new(users),
    })
}

pub struct UsersGrpc {
    users: Arc<Users>,
}

fn to_pb(user: UserRecord) -> pb::User {
    pb::User {
        id: user.id,
        username: user.username,
        display_name: user.display_name,
        bio: user.bio,
        created_at: Some(clock::to_timestamp(user.created_at_ms)),
    }
}

#[tonic::async_trait]
impl UsersService for UsersGrpc {
    async fn create_user(
        &self,
        request: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let r = request.into_inner();
        let sign_up = SignUp {
            username: r.username,
            password: r.password,
            display_name: r.display_name,
            bio: r.bio,
        };
        let user = self
            .users
            .create_user(sign_up)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(to_pb(user)))
    }

    async fn login(
        &self,
        request: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        let r = request.into_inner();
        let session = self
            .users
            .login(&r.username, &r.password)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(pb::LoginResponse {
            token: session.token.token,
            expires_at: Some(clock::to_timestamp(session.token.expires_at_ms)),
            user: Some(to_pb(session.user)),
        }))
    }

    async fn get_user(
        &self,
        request: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let user = self
            .users
            .get_user(request.into_inner().user_id)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(to_pb(user)))
    }

    async fn get_user_by_username(
        &self,
        request: Request<pb::GetUserByUsernameRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let user = self
            .users
            .get_user_by_username(&request.into_inner().username)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(to_pb(user)))
    }

    async fn batch_get_users(
        &self,
        request: Request<pb::BatchGetUsersRequest>,
    ) -> Result<Response<pb::BatchGetUsersResponse>, Status> {
        let r = request.into_inner();
        let users = self
            .users
            .batch_get_users(r.user_ids, r.usernames)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(pb::BatchGetUsersResponse {
            users: users.into_iter().map(to_pb).collect(),
        }))
    }

    async fn update_user(
        &self,
        request: Request<pb::UpdateUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let token = acting_token(&request, request.get_ref().user_id)?;
        let r = request.into_inner();
        let update = ProfileUpdate {
            display_name: r.display_name,
            bio: r.bio,
            password: r.password,
            current_password: r.current_password,
        };
        let user = self
            .users
            .update_user(token, update)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(to_pb(user)))
    }

    async fn delete_user(
        &self,
        request: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        let token = acting_token(&request, request.get_ref().user_id)?;
        self.users
            .delete_user(token)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(pb::DeleteUserResponse {}))
    }

    async fn search_users(
        &self,
        request: Request<pb::SearchUsersRequest>,
    ) -> Result<Response<pb::SearchUsersResponse>, Status> {
        let found = self
            .users
            .search_users(&request.into_inner().query)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(pb::SearchUsersResponse {
            matches: found
                .into_iter()
                .map(|(user, kind)| pb::UserMatch {
                    user: Some(to_pb(user)),
                    kind: match kind {
                        MatchKind::ExactUsername => pb::MatchKind::ExactUsername,
                        MatchKind::UsernamePrefix => pb::MatchKind::UsernamePrefix,
                        MatchKind::DisplayName => pb::MatchKind::DisplayName,
                    }
                    .into(),
                })
                .collect(),
        }))
    }

    async fn get_token_states(
        &self,
        request: Request<pb::GetTokenStatesRequest>,
    ) -> Result<Response<pb::GetTokenStatesResponse>, Status> {
        let states = self
            .users
            .token_states(request.into_inner().user_ids)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(pb::GetTokenStatesResponse {
            states: states
                .into_iter()
                .map(|s| pb::TokenState {
                    user_id: s.user_id,
                    active: s.active,
                    generation: s.generation,
                })
                .collect(),
        }))
    }
}
