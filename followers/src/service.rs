//! The followers domain: check the rules, store the edge with its event, answer.

use std::sync::Arc;

use async_trait::async_trait;
use tonic::transport::Channel;
use twtr_common::store::StoreError;
use twtr_common::{ErrorCode, IdGenerator, ServiceError, events};
use twtr_proto::events::v1::envelope::Payload;
use twtr_proto::events::v1::{UserFollowed, UserUnfollowed};
use twtr_proto::users::v1::GetUserRequest;
use twtr_proto::users::v1::users_service_client::UsersServiceClient;

use crate::store::{Counts, FollowStore};

/// The most users one counts lookup may ask for.
pub const MAX_BATCH: usize = 500;

/// Answers whether a user exists; the users service owns that fact.
#[async_trait]
pub trait UserDirectory: Send + Sync {
    async fn exists(&self, user_id: u64) -> Result<bool, tonic::Status>;
}

/// How long a follow waits for the users service to answer.
const USERS_DEADLINE: std::time::Duration = std::time::Duration::from_secs(2);

#[async_trait]
impl UserDirectory for UsersServiceClient<Channel> {
    async fn exists(&self, user_id: u64) -> Result<bool, tonic::Status> {
        let mut request = tonic::Request::new(GetUserRequest { user_id });
        request.set_timeout(USERS_DEADLINE);
        match self.clone().get_user(request).await {
            Ok(_) => Ok(true),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(false),
            Err(status) => Err(status),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FollowersError {
    #[error("you cannot follow yourself")]
    SelfFollow,
    #[error("follower_id and followee_id are required")]
    MissingUser,
    #[error("user not found")]
    NotFound,
    #[error("at most {MAX_BATCH} IDs per batch")]
    BatchTooLarge,
    #[error("the users service is unavailable: {0}")]
    UsersUnavailable(String),
    #[error("storage failed")]
    Store(#[from] StoreError),
}

impl ServiceError for FollowersError {
    fn error_code(&self) -> ErrorCode {
        match self {
            Self::SelfFollow | Self::MissingUser | Self::BatchTooLarge => {
                ErrorCode::InvalidArgument
            }
            Self::NotFound => ErrorCode::NotFound,
            Self::UsersUnavailable(_) => ErrorCode::Unavailable,
            Self::Store(_) => ErrorCode::Internal,
        }
    }
}

pub struct Followers {
    store: Arc<dyn FollowStore>,
    ids: Arc<IdGenerator>,
    users: Arc<dyn UserDirectory>,
}

impl Followers {
    pub fn new(
        store: Arc<dyn FollowStore>,
        ids: Arc<IdGenerator>,
        users: Arc<dyn UserDirectory>,
    ) -> Self {
        Self { store, ids, users }
    }

    fn check_pair(follower: u64, followee: u64) -> Result<(), FollowersError> {
        if follower == 0 || followee == 0 {
            return Err(FollowersError::MissingUser);
        }
        if follower == followee {
            return Err(FollowersError::SelfFollow);
        }
        Ok(())
    }

    /// Makes `follower` follow `followee`. Returns whether a new edge was made.
    pub async fn follow(&self, follower: u64, followee: u64) -> Result<bool, FollowersError> {
        Self::check_pair(follower, followee)?;
        if self.store.is_following(follower, followee).await? {
            return Ok(false);
        }
        let exists = self
            .users
            .exists(followee)
            .await
            .map_err(|status| FollowersError::UsersUnavailable(status.message().to_owned()))?;
        if !exists {
            return Err(FollowersError::NotFound);
        }
        let event = events::envelope(
            self.ids.next_id(),
            follower,
            Payload::UserFollowed(UserFollowed {
                follower_id: follower,
                followee_id: followee,
            }),
        );
        let created = self.store.follow(follower, followee, event).await?;
        if created {
            tracing::info!(follower, followee, "user followed");
        }
        Ok(created)
    }

    /// Makes `follower` stop following `followee`. Returns whether an edge was removed.
    pub async fn unfollow(&self, follower: u64, followee: u64) -> Result<bool, FollowersError> {
        Self::check_pair(follower, followee)?;
        let event = events::envelope(
            self.ids.next_id(),
            follower,
            Payload::UserUnfollowed(UserUnfollowed {
                follower_id: follower,
                followee_id: followee,
            }),
        );
        let removed = self.store.unfollow(follower, followee, event).await?;
        if removed {
            tracing::info!(follower, followee, "user unfollowed");
        }
        Ok(removed)
    }

    pub async fn counts(&self, users: Vec<u64>) -> Result<Vec<(u64, Counts)>, FollowersError> {
        if users.len() > MAX_BATCH {
            return Err(FollowersError::BatchTooLarge);
        }
        let counts = self.store.counts(users.clone()).await?;
        Ok(users.into_iter().zip(counts).collect())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::store::EmbeddedFollowStore;

    /// A directory of known user IDs: the tests here are about the follow rules, not about
    /// how the users service answers (the black-box tests cover that path).
    struct KnownUsers(HashSet<u64>);

    #[async_trait]
    impl UserDirectory for KnownUsers {
        async fn exists(&self, user_id: u64) -> Result<bool, tonic::Status> {
            Ok(self.0.contains(&user_id))
        }
    }

    fn followers(dir: &std::path::Path) -> Followers {
        let store = Arc::new(EmbeddedFollowStore::open(&dir.join("followers.redb")).unwrap());
        let users = Arc::new(KnownUsers([1, 2].into_iter().collect()));
        Followers::new(store, Arc::new(IdGenerator::new(1).unwrap()), users)
    }

    #[tokio::test]
    async fn following_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let f = followers(dir.path());
        assert!(f.follow(1, 2).await.unwrap());
        assert!(!f.follow(1, 2).await.unwrap());
        let counts = f.counts(vec![2]).await.unwrap();
        assert_eq!(counts[0].1.followers, 1);
    }

    #[tokio::test]
    async fn self_follows_and_unknown_users_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = followers(dir.path());
        assert!(matches!(
            f.follow(1, 1).await,
            Err(FollowersError::SelfFollow)
        ));
        assert!(matches!(
            f.follow(1, 99).await,
            Err(FollowersError::NotFound)
        ));
        assert!(matches!(
            f.follow(0, 2).await,
            Err(FollowersError::MissingUser)
        ));
        assert_eq!(f.counts(vec![1]).await.unwrap()[0].1, Counts::default());
    }

    #[tokio::test]
    async fn unfollowing_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let f = followers(dir.path());
        assert!(!f.unfollow(1, 2).await.unwrap());
        f.follow(1, 2).await.unwrap();
        assert!(f.unfollow(1, 2).await.unwrap());
        assert!(!f.unfollow(1, 2).await.unwrap());
    }
}
