//! A users service for the unit tests of the gateway's caches of its answers
//! ([`crate::revocation`], [`crate::authors`]): it answers the two calls they make as the real
//! one does, counts them, and fails every call on demand. The caches are what those tests test;
//! the real users service behind the real gateway is tested by the black-box suite.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use twtr_common::lock;
use twtr_common::page::MAX_BATCH;
use twtr_proto::users::v1 as pb;
use twtr_proto::users::v1::users_service_client::UsersServiceClient;
use twtr_proto::users::v1::users_service_server::{UsersService, UsersServiceServer};

/// What the fake knows and what it was asked.
#[derive(Default)]
pub struct FakeUsers {
    /// Every account's token generation.
    pub generation: AtomicU64,
    /// The most IDs one `GetTokenStates` asked about.
    pub largest_batch: AtomicUsize,
    /// `BatchGetUsers` calls answered.
    pub batch_calls: AtomicUsize,
    /// The live accounts `BatchGetUsers` finds: ID and display name.
    pub accounts: Mutex<HashMap<u64, String>>,
    /// When set, every call fails with this code.
    pub failing: Mutex<Option<tonic::Code>>,
    /// When set, `BatchGetUsers` answers as the accounts were when it was called, once this is
    /// notified.
    pub held: Mutex<Option<Arc<tokio::sync::Notify>>>,
}

impl FakeUsers {
    fn fail_if_asked(&self) -> Result<(), Status> {
        match *lock(&self.failing) {
            Some(code) => Err(Status::new(code, "failing on purpose")),
            None => Ok(()),
        }
    }
}

/// Serves `fake` on a local port; a client of it.
pub async fn serve(fake: Arc<FakeUsers>) -> UsersServiceClient<Channel> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(UsersServiceServer::new(Fake(fake)))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    UsersServiceClient::new(channel)
}

/// The server's handle on the shared fake.
struct Fake(Arc<FakeUsers>);

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("fake"))
}

#[tonic::async_trait]
impl UsersService for Fake {
    async fn create_user(
        &self,
        _: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        unimplemented()
    }

    async fn login(
        &self,
        _: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        unimplemented()
    }

    async fn get_user(&self, _: Request<pb::GetUserRequest>) -> Result<Response<pb::User>, Status> {
        unimplemented()
    }

    async fn get_user_by_username(
        &self,
        _: Request<pb::GetUserByUsernameRequest>,
    ) -> Result<Response<pb::User>, Status> {
        unimplemented()
    }

    async fn batch_get_users(
        &self,
        request: Request<pb::BatchGetUsersRequest>,
    ) -> Result<Response<pb::BatchGetUsersResponse>, Status> {
        self.0.fail_if_asked()?;
        let users = {
            let accounts = lock(&self.0.accounts);
            request
                .into_inner()
                .user_ids
                .into_iter()
                .filter_map(|id| {
                    let name = accounts.get(&id)?;
                    Some(pb::User {
                        id,
                        username: format!("user{id}"),
                        display_name: name.clone(),
                        ..Default::default()
                    })
                })
                .collect()
        };
        self.0.batch_calls.fetch_add(1, Ordering::SeqCst);
        let held = lock(&self.0.held).clone();
        if let Some(release) = held {
            release.notified().await;
        }
        Ok(Response::new(pb::BatchGetUsersResponse { users }))
    }

    async fn update_user(
        &self,
        _: Request<pb::UpdateUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        unimplemented()
    }

    async fn delete_user(
        &self,
        _: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        unimplemented()
    }

    async fn search_users(
        &self,
        _: Request<pb::SearchUsersRequest>,
    ) -> Result<Response<pb::SearchUsersResponse>, Status> {
        unimplemented()
    }

    /// As the real one: at most [`MAX_BATCH`] IDs, else a refusal.
    async fn get_token_states(
        &self,
        request: Request<pb::GetTokenStatesRequest>,
    ) -> Result<Response<pb::GetTokenStatesResponse>, Status> {
        self.0.fail_if_asked()?;
        let ids = request.into_inner().user_ids;
        self.0.largest_batch.fetch_max(ids.len(), Ordering::SeqCst);
        if ids.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_BATCH} IDs per batch"
            )));
        }
        let generation = self.0.generation.load(Ordering::SeqCst);
        let states = ids
            .into_iter()
            .map(|user_id| pb::TokenState {
                user_id,
                active: true,
                generation,
            })
            .collect();
        Ok(Response::new(pb::GetTokenStatesResponse { states }))
    }
}
