//! The followers domain: check the rules, store the edge with its event, answer; and the
//! removal of a deleted account's edges.

use std::sync::Arc;

use async_trait::async_trait;
use futures_util::future::try_join;
use tonic::transport::Channel;
use twtr_common::page::InvalidLimit;
use twtr_common::purge::{self, Purge};
use twtr_common::store::{PendingPurge, StoreError};
use twtr_common::{ErrorCode, IdGenerator, Limit, Page, PageRequest, ServiceError, events};
use twtr_proto::events::v1::Envelope;
use twtr_proto::events::v1::envelope::Payload;
use twtr_proto::events::v1::{UserFollowed, UserUnfollowed};
use twtr_proto::users::v1::GetUserRequest;
use twtr_proto::users::v1::users_service_client::UsersServiceClient;

use crate::store::{Counts, Direction, FollowEntry, FollowOutcome, FollowStore};

/// The most IDs one batch lookup may ask for (shared with every caller).
pub use twtr_common::page::MAX_BATCH;
/// How many edges of a deleted account one purge step removes before it reads the next page.
pub const PURGE_BATCH: u32 = 100;

/// Follow suggestions read at most this many of the caller's follows (the newest)...
pub const SUGGESTION_SOURCES: u32 = 100;
/// ...and at most this many of each of theirs (the newest), so a request reads at most
/// 1 + 100 pages of at most 100 edges, whoever the caller follows.
pub const SUGGESTION_FAN_IN: u32 = 100;
/// At most this many suggestions per request (and the default is [`DEFAULT_SUGGESTIONS`]).
pub const MAX_SUGGESTIONS: u32 = 50;
pub const DEFAULT_SUGGESTIONS: u32 = 10;
/// How many of the best-supported candidates are checked further (already followed by the
/// caller beyond the sources read, deleted, follower count): the rest never could rank.
const SUGGESTION_CANDIDATES: usize = 4 * MAX_SUGGESTIONS as usize;
/// Lists read at once while gathering suggestions.
const SUGGESTION_READS_IN_FLIGHT: usize = 16;

/// A user the caller might follow: followed by `followed_by` of the people the caller follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Suggestion {
    pub user_id: u64,
    pub followed_by: u32,
    pub followers_count: u64,
}

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
    #[error(transparent)]
    InvalidLimit(#[from] InvalidLimit),
    #[error("limit must be between 1 and {MAX_SUGGESTIONS}, got {0}")]
    SuggestionLimit(u32),
    #[error("the users service is unavailable: {0}")]
    UsersUnavailable(String),
    #[error("storage failed")]
    Store(#[from] StoreError),
}

impl ServiceError for FollowersError {
    fn error_code(&self) -> ErrorCode {
        match self {
            Self::SelfFollow
            | Self::MissingUser
            | Self::BatchTooLarge
            | Self::InvalidLimit(_)
            | Self::SuggestionLimit(_) => ErrorCode::InvalidArgument,
            Self::NotFound => ErrorCode::NotFound,
            Self::UsersUnavailable(_) => ErrorCode::Unavailable,
            Self::Store(err) => err.error_code(),
        }
    }
}

pub struct Followers {
    store: Arc<dyn FollowStore>,
    ids: Arc<IdGenerator>,
    users: Arc<dyn UserDirectory>,
}

impl Followers {
    /// Whether this service's store answers (readiness, and its consumer's probe).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.store.ping().await
    }

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

    /// Whether either account is deleted (as far as this service has heard).
    async fn either_gone(&self, follower: u64, followee: u64) -> Result<bool, FollowersError> {
        let (a, b) = try_join(
            self.store.user_gone(follower),
            self.store.user_gone(followee),
        )
        .await?;
        Ok(a || b)
    }

    /// Makes `follower` follow `followee`. Returns whether a new edge was made. NOT_FOUND when
    /// the followee does not exist or either account is deleted.
    pub async fn follow(&self, follower: u64, followee: u64) -> Result<bool, FollowersError> {
        Self::check_pair(follower, followee)?;
        if self.store.is_following(follower, followee).await? {
            // A repeat, unless an account went since (its purge is on the way).
            if self.either_gone(follower, followee).await? {
                return Err(FollowersError::NotFound);
            }
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
                version: 0, // the store sets the edge's version
            }),
        );
        match self.store.follow(follower, followee, event).await? {
            FollowOutcome::AccountGone => Err(FollowersError::NotFound),
            FollowOutcome::AlreadyFollowing => Ok(false),
            FollowOutcome::Followed => {
                if self.store.follow_races_deletion()
                    && self.undo_if_gone(follower, followee).await?
                {
                    return Err(FollowersError::NotFound);
                }
                tracing::info!(follower, followee, "user followed");
                Ok(true)
            }
        }
    }

    /// Makes `follower` stop following `followee`. Returns whether an edge was removed.
    /// NOT_FOUND when either account is deleted (its edges go with its purge).
    pub async fn unfollow(&self, follower: u64, followee: u64) -> Result<bool, FollowersError> {
        Self::check_pair(follower, followee)?;
        if self.either_gone(follower, followee).await? {
            return Err(FollowersError::NotFound);
        }
        let removed = self.remove_edge(follower, followee).await?;
        if removed {
            tracing::info!(follower, followee, "user unfollowed");
        }
        Ok(removed)
    }

    /// Unfollows with a `UserUnfollowed` event, whoever the accounts are: [`Followers::unfollow`]
    /// after its checks, and the purge of a deleted account.
    async fn remove_edge(&self, follower: u64, followee: u64) -> Result<bool, FollowersError> {
        let event = events::envelope(
            self.ids.next_id(),
            follower,
            Payload::UserUnfollowed(UserUnfollowed {
                follower_id: follower,
                followee_id: followee,
                version: 0, // the store sets the edge's version
            }),
        );
        Ok(self.store.unfollow(follower, followee, event).await?)
    }

    /// On a store whose follow can race a deletion: removes the edge if either account is gone
    /// after all. Returns whether one was.
    async fn undo_if_gone(&self, follower: u64, followee: u64) -> Result<bool, FollowersError> {
        if !self.either_gone(follower, followee).await? {
            return Ok(false);
        }
        if self.remove_edge(follower, followee).await? {
            tracing::info!(
                follower,
                followee,
                "removed a follow that landed as its account was deleted"
            );
        }
        Ok(true)
    }

    pub async fn counts(&self, users: Vec<u64>) -> Result<Vec<(u64, Counts)>, FollowersError> {
        if users.len() > MAX_BATCH {
            return Err(FollowersError::BatchTooLarge);
        }
        let counts = self.store.counts(users.clone()).await?;
        Ok(users.into_iter().zip(counts).collect())
    }

    /// One page of who follows `user` ([`Direction::Followers`]) or whom they follow, newest
    /// follow first. An unknown user's lists are empty.
    pub async fn list(
        &self,
        user: u64,
        direction: Direction,
        page: PageRequest,
    ) -> Result<Page<FollowEntry>, FollowersError> {
        if user == 0 {
            return Err(FollowersError::MissingUser);
        }
        Ok(self.store.list(user, direction, page).await?)
    }

    /// People followed by the people `user` follows, best first: by how many of those follow
    /// them, then by follower count, then by ID; never `user`, anyone `user` follows, or a
    /// deleted account. Bounded work whatever the graph (see [`SUGGESTION_SOURCES`],
    /// [`SUGGESTION_FAN_IN`]): the newest follows on both hops stand for the rest, so for a
    /// caller who follows thousands the suggestions come from their 100 most recent follows.
    pub async fn suggestions(
        &self,
        user: u64,
        limit: u32,
    ) -> Result<Vec<Suggestion>, FollowersError> {
        use futures_util::{StreamExt as _, TryStreamExt as _};

        if user == 0 {
            return Err(FollowersError::MissingUser);
        }
        let limit = match limit {
            0 => DEFAULT_SUGGESTIONS,
            n if n <= MAX_SUGGESTIONS => n,
            n => return Err(FollowersError::SuggestionLimit(n)),
        };
        let sources_page = PageRequest::first(Limit::parse(Some(SUGGESTION_SOURCES))?);
        let fan_in_page = PageRequest::first(Limit::parse(Some(SUGGESTION_FAN_IN))?);
        let sources: Vec<u64> = self
            .store
            .list(user, Direction::Following, sources_page)
            .await?
            .items
            .into_iter()
            .map(|entry| entry.user_id)
            .collect();
        let their_follows: Vec<Page<FollowEntry>> = futures_util::stream::iter(sources.clone())
            .map(|source| self.store.list(source, Direction::Following, fan_in_page))
            .buffer_unordered(SUGGESTION_READS_IN_FLIGHT)
            .try_collect()
            .await?;
        let mut support: std::collections::HashMap<u64, u32> = Default::default();
        for entry in their_follows.into_iter().flat_map(|page| page.items) {
            *support.entry(entry.user_id).or_default() += 1;
        }
        support.remove(&user);
        for source in &sources {
            support.remove(source);
        }
        let mut candidates: Vec<(u64, u32)> = support.into_iter().collect();
        candidates.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        candidates.truncate(SUGGESTION_CANDIDATES);

        // Who is left out: anyone the caller follows beyond the sources read, and the deleted.
        let ids: Vec<u64> = candidates.iter().map(|(id, _)| *id).collect();
        let excluded: Vec<bool> = futures_util::stream::iter(ids.clone())
            .map(|candidate| async move {
                let (followed, gone) = try_join(
                    self.store.is_following(user, candidate),
                    self.store.user_gone(candidate),
                )
                .await?;
                Ok::<_, StoreError>(followed || gone)
            })
            .buffered(SUGGESTION_READS_IN_FLIGHT)
            .try_collect()
            .await?;
        let counts = self.store.counts(ids).await?;
        let mut ranked: Vec<Suggestion> = candidates
            .into_iter()
            .zip(excluded)
            .zip(counts)
            .filter(|((_, excluded), _)| !excluded)
            .map(|(((user_id, followed_by), _), counts)| Suggestion {
                user_id,
                followed_by,
                followers_count: counts.followers,
            })
            .collect();
        ranked.sort_unstable_by(|a, b| {
            b.followed_by
                .cmp(&a.followed_by)
                .then(b.followers_count.cmp(&a.followers_count))
                .then(a.user_id.cmp(&b.user_id))
        });
        ranked.truncate(limit as usize);
        Ok(ranked)
    }

    /// The users service deleted `user`'s account (its `UserDeleted` event): from now on they
    /// can neither follow nor be followed, and their edges are due for
    /// [`Followers::purge_pending`]. Idempotent.
    pub async fn forget_user(&self, user: u64) -> Result<(), FollowersError> {
        self.store.forget_user(user).await?;
        tracing::info!(
            user_id = user,
            "account deleted; its follows are due for removal"
        );
        Ok(())
    }

    /// One of this service's own `UserFollowed` events, consumed back (on a store whose follow
    /// can race a deletion): removes the edge if either account is gone, in case the process
    /// that made it died before it could look again itself. Idempotent.
    pub async fn settle(&self, event: &Envelope) -> Result<(), FollowersError> {
        if let Some(Payload::UserFollowed(followed)) = &event.payload
            && self.store.follow_races_deletion()
        {
            self.undo_if_gone(followed.follower_id, followed.followee_id)
                .await?;
        }
        Ok(())
    }

    /// Whether this service needs its own `UserFollowed` events back ([`Followers::settle`]).
    pub fn settles_events(&self) -> bool {
        self.store.follow_races_deletion()
    }

    /// Removes every edge of deleted accounts, both directions, each an unfollow with its event
    /// and both counts, until no purge is pending (see [`twtr_common::purge`]). Returns how
    /// many edges it removed. Safe to run in several replicas at once: the store decides each
    /// unfollow once.
    pub async fn purge_pending(&self) -> Result<usize, FollowersError> {
        purge::purge_pending(self).await
    }
}

#[async_trait]
impl Purge for Followers {
    type Error = FollowersError;

    async fn pending_purges(&self, max: usize) -> Result<Vec<PendingPurge>, StoreError> {
        self.store.pending_purges(max).await
    }

    async fn purge_done(&self, purge: PendingPurge) -> Result<(), StoreError> {
        self.store.purge_done(purge).await
    }

    /// Both directions of `user`'s edges, [`PURGE_BATCH`] at a time.
    async fn purge(&self, user: u64) -> Result<usize, FollowersError> {
        let mut removed = 0;
        for direction in [Direction::Following, Direction::Followers] {
            let mut page = PageRequest::first(Limit::parse(Some(PURGE_BATCH))?);
            loop {
                let batch = self.store.list(user, direction, page).await?;
                for entry in &batch.items {
                    let (follower, followee) = match direction {
                        Direction::Following => (user, entry.user_id),
                        Direction::Followers => (entry.user_id, user),
                    };
                    removed += usize::from(self.remove_edge(follower, followee).await?);
                }
                match batch.next {
                    Some(next) => page.before = Some(next),
                    None => break,
                }
                tokio::task::yield_now().await;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use twtr_common::store::PendingPurge;

    use super::*;
    use crate::store::EmbeddedFollowStore;
    use crate::store::conformance::{staged_events, version_of};

    /// A directory of known user IDs: the tests here are about the follow rules, not about
    /// how the users service answers (the black-box tests cover that path).
    struct KnownUsers(HashSet<u64>);

    #[async_trait]
    impl UserDirectory for KnownUsers {
        async fn exists(&self, user_id: u64) -> Result<bool, tonic::Status> {
            Ok(self.0.contains(&user_id))
        }
    }

    fn store(dir: &std::path::Path) -> Arc<dyn FollowStore> {
        Arc::new(EmbeddedFollowStore::open(&dir.join("followers.redb")).unwrap())
    }

    fn service(store: Arc<dyn FollowStore>, known: impl IntoIterator<Item = u64>) -> Followers {
        let users = Arc::new(KnownUsers(known.into_iter().collect()));
        Followers::new(store, Arc::new(IdGenerator::new(1).unwrap()), users)
    }

    fn followers(dir: &std::path::Path) -> Followers {
        service(store(dir), [1, 2])
    }

    fn first_page() -> PageRequest {
        PageRequest::first(Limit::parse(Some(100)).unwrap())
    }

    async fn listed(f: &Followers, user: u64, direction: Direction) -> Vec<u64> {
        let page = f.list(user, direction, first_page()).await.unwrap();
        page.items.iter().map(|entry| entry.user_id).collect()
    }

    #[tokio::test]
    async fn suggestions_rank_friends_of_friends_and_leave_out_the_followed_and_the_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let f = service(store(dir.path()), 1..=20);
        // 1 follows 2, 3, 4 and (long ago, beyond what suggestions read) nobody else.
        for followee in [2, 3, 4] {
            f.follow(1, followee).await.unwrap();
        }
        // 10 is followed by all three, 11 by two, 12 and 13 by one each; 13 has more followers.
        for (follower, followee) in [
            (2, 10),
            (3, 10),
            (4, 10),
            (2, 11),
            (3, 11),
            (2, 12),
            (4, 13),
        ] {
            f.follow(follower, followee).await.unwrap();
        }
        f.follow(15, 13).await.unwrap();
        // Candidates that must not appear: the caller, someone the caller follows (3 follows 4),
        // and a deleted account (followed by two).
        f.follow(3, 1).await.unwrap();
        f.follow(3, 4).await.unwrap();
        f.follow(2, 14).await.unwrap();
        f.follow(3, 14).await.unwrap();
        f.forget_user(14).await.unwrap();

        let ranked = f.suggestions(1, 0).await.unwrap();
        let shown: Vec<(u64, u32, u64)> = ranked
            .iter()
            .map(|s| (s.user_id, s.followed_by, s.followers_count))
            .collect();
        assert_eq!(
            shown,
            vec![(10, 3, 3), (11, 2, 2), (13, 1, 2), (12, 1, 1)],
            "by support, then by followers"
        );
        assert_eq!(f.suggestions(1, 2).await.unwrap().len(), 2);
        assert!(matches!(
            f.suggestions(1, MAX_SUGGESTIONS + 1).await,
            Err(FollowersError::SuggestionLimit(_))
        ));
        // Nobody followed: nothing to suggest from.
        assert!(f.suggestions(20, 0).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn following_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let f = followers(dir.path());
        assert!(f.follow(1, 2).await.unwrap());
        assert!(!f.follow(1, 2).await.unwrap());
        let counts = f.counts(vec![2]).await.unwrap();
        assert_eq!(counts[0].1.followers, 1);
        assert_eq!(listed(&f, 2, Direction::Followers).await, vec![1]);
        assert_eq!(listed(&f, 1, Direction::Following).await, vec![2]);
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
        assert!(matches!(
            f.list(0, Direction::Followers, first_page()).await,
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
        assert!(listed(&f, 2, Direction::Followers).await.is_empty());
    }

    /// What a deleted account's purge must remove: more followers than one purge step takes,
    /// and a few it follows.
    #[tokio::test]
    async fn a_deleted_accounts_purge_removes_every_edge_once() {
        const FANS: u64 = PURGE_BATCH as u64 + 20;
        let dir = tempfile::tempdir().unwrap();
        let (gone, kept) = (1, 2);
        let fans: Vec<u64> = (100..100 + FANS).collect();
        let idols = [10, 11, 12];
        let store = store(dir.path());
        let known = fans.iter().chain(&idols).copied().chain([gone, kept]);
        let f = service(Arc::clone(&store), known);
        for fan in &fans {
            f.follow(*fan, gone).await.unwrap();
        }
        for idol in idols {
            f.follow(gone, idol).await.unwrap();
        }
        f.follow(kept, idols[0]).await.unwrap();
        f.follow(fans[0], kept).await.unwrap();
        let before: HashSet<u64> = staged_events(&store).await.into_keys().collect();

        // UserDeleted, delivered twice.
        f.forget_user(gone).await.unwrap();
        f.forget_user(gone).await.unwrap();
        assert_eq!(
            f.purge_pending().await.unwrap(),
            fans.len() + idols.len(),
            "every edge, both directions"
        );
        f.forget_user(gone).await.unwrap();
        assert_eq!(f.purge_pending().await.unwrap(), 0, "nothing twice");

        for direction in [Direction::Followers, Direction::Following] {
            assert!(listed(&f, gone, direction).await.is_empty());
        }
        assert_eq!(listed(&f, idols[0], Direction::Followers).await, vec![kept]);
        assert_eq!(listed(&f, kept, Direction::Followers).await, vec![fans[0]]);
        let counts = f.counts(vec![gone, fans[0], fans[1], idols[0], idols[1]]);
        let counts: Vec<Counts> = counts.await.unwrap().into_iter().map(|c| c.1).collect();
        let c = |followers, following| Counts {
            followers,
            following,
        };
        assert_eq!(counts, vec![c(0, 0), c(0, 1), c(0, 0), c(1, 0), c(0, 0)]);

        // Each removal was an unfollow, announced with the edge's version 2.
        let unfollows: Vec<Envelope> = staged_events(&store)
            .await
            .into_iter()
            .filter(|(id, _)| !before.contains(id))
            .map(|(_, event)| event)
            .collect();
        assert_eq!(unfollows.len(), fans.len() + idols.len());
        for event in &unfollows {
            assert_eq!(event.r#type, "followers.user_unfollowed");
            assert_eq!(version_of(event), 2);
        }

        // The account is refused on either end, also for unfollows.
        for (follower, followee) in [(kept, gone), (gone, kept), (fans[0], gone)] {
            assert!(matches!(
                f.follow(follower, followee).await,
                Err(FollowersError::NotFound)
            ));
            assert!(matches!(
                f.unfollow(follower, followee).await,
                Err(FollowersError::NotFound)
            ));
        }
    }

    /// A real store whose account `victim` is deleted right after each follow's check, as a
    /// `UserDeleted` consumed at that moment would on a store whose follow is not one
    /// transaction with its check (CQL).
    struct DeletedDuringFollow {
        store: Arc<dyn FollowStore>,
        victim: u64,
    }

    #[async_trait]
    impl FollowStore for DeletedDuringFollow {
        async fn ping(&self) -> Result<(), StoreError> {
            self.store.ping().await
        }
        async fn follow(
            &self,
            follower: u64,
            followee: u64,
            event: Envelope,
        ) -> Result<FollowOutcome, StoreError> {
            let outcome = self.store.follow(follower, followee, event).await?;
            self.store.forget_user(self.victim).await?;
            Ok(outcome)
        }
        async fn unfollow(&self, a: u64, b: u64, event: Envelope) -> Result<bool, StoreError> {
            self.store.unfollow(a, b, event).await
        }
        async fn is_following(&self, a: u64, b: u64) -> Result<bool, StoreError> {
            self.store.is_following(a, b).await
        }
        async fn counts(&self, users: Vec<u64>) -> Result<Vec<Counts>, StoreError> {
            self.store.counts(users).await
        }
        async fn list(
            &self,
            user: u64,
            direction: Direction,
            page: PageRequest,
        ) -> Result<Page<FollowEntry>, StoreError> {
            self.store.list(user, direction, page).await
        }
        async fn forget_user(&self, user: u64) -> Result<(), StoreError> {
            self.store.forget_user(user).await
        }
        async fn user_gone(&self, user: u64) -> Result<bool, StoreError> {
            self.store.user_gone(user).await
        }
        async fn pending_purges(&self, max: usize) -> Result<Vec<PendingPurge>, StoreError> {
            self.store.pending_purges(max).await
        }
        async fn purge_done(&self, purge: PendingPurge) -> Result<(), StoreError> {
            self.store.purge_done(purge).await
        }
        fn follow_races_deletion(&self) -> bool {
            true
        }
        fn outbox(&self) -> Arc<dyn twtr_common::outbox::Outbox> {
            self.store.outbox()
        }
    }

    #[tokio::test]
    async fn a_follow_that_lands_as_its_account_goes_is_taken_back() {
        let dir = tempfile::tempdir().unwrap();
        let inner = store(dir.path());
        let racing = Arc::new(DeletedDuringFollow {
            store: Arc::clone(&inner),
            victim: 2,
        });
        let f = service(racing, [1, 2]);
        assert!(matches!(
            f.follow(1, 2).await,
            Err(FollowersError::NotFound)
        ));
        assert!(!inner.is_following(1, 2).await.unwrap());
        assert!(listed(&f, 2, Direction::Followers).await.is_empty());
        assert_eq!(
            inner.counts(vec![1, 2]).await.unwrap(),
            vec![Counts::default(); 2]
        );
        // Consumers saw the edge come (version 1) and go (version 2).
        let mut versions: Vec<(String, u64)> = staged_events(&inner)
            .await
            .into_values()
            .map(|event| (event.r#type.clone(), version_of(&event)))
            .collect();
        versions.sort();
        assert_eq!(
            versions,
            vec![
                ("followers.user_followed".to_owned(), 1),
                ("followers.user_unfollowed".to_owned(), 2)
            ]
        );
    }

    #[tokio::test]
    async fn a_follow_event_consumed_back_takes_back_an_edge_of_a_gone_account() {
        let dir = tempfile::tempdir().unwrap();
        let inner = store(dir.path());
        let plain = service(Arc::clone(&inner), [1, 2]);
        plain.follow(1, 2).await.unwrap();
        let followed = staged_events(&inner).await.into_values().next().unwrap();
        // The deletion is recorded, and the process that made the edge died before looking
        // again: only its event, consumed back, is left to notice.
        inner.forget_user(2).await.unwrap();
        let racing = Arc::new(DeletedDuringFollow {
            store: Arc::clone(&inner),
            victim: 2,
        });
        let f = service(racing, [1, 2]);
        assert!(f.settles_events());
        f.settle(&followed).await.unwrap();
        f.settle(&followed).await.unwrap();
        assert!(!inner.is_following(1, 2).await.unwrap());
        assert_eq!(
            inner.counts(vec![2]).await.unwrap(),
            vec![Counts::default()]
        );
        // A backend that checks inside its transaction needs no such help.
        assert!(!plain.settles_events());
    }
}
