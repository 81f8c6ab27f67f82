//! The users shown beside tweets (authors, retweeters, the actors of notifications), remembered
//! by the gateway for a few seconds, so a page of tweets does not cost a users RPC.
//!
//! A home-feed read was three RPCs: the feed's entries, their tweets, and the users who wrote
//! and retweeted them. The tweets RPC stays (counts and the caller's likes must be current), but
//! profiles change rarely and are shown in full on their own routes, which do not read from
//! here: a display name beside a tweet may lag a profile change by [`FRESH_FOR`]. The gateway
//! that handles a profile change or an account deletion forgets that user at once
//! ([`Authors::forget`]), so its caller sees the change on their next read, and every other
//! replica within [`FRESH_FOR`]: the same kind of bound as revocation's (`crate::revocation`),
//! which keeps its answers for two seconds.
//!
//! That a user was not found is remembered too (a deleted account's tweets leave the feeds by an
//! event, a moment later, and are left out until then). If the users service cannot be reached,
//! answers up to [`STALE_FOR`] old stand in, as they do for revocation: a feed stays readable
//! through a users outage.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use twtr_common::lock;
use twtr_proto::users::v1::users_service_client::UsersServiceClient;
use twtr_proto::users::v1::{BatchGetUsersRequest, User};

use crate::revocation::unreachable;
use crate::upstream::rpc;

/// How long a user read is shown as it was: the most a profile change or a deletion made
/// through another gateway replica takes to show beside tweets.
pub const FRESH_FOR: Duration = Duration::from_secs(5);
/// How long an answer may stand in while the users service is unreachable.
const STALE_FOR: Duration = Duration::from_secs(60);
/// Users kept at most (a few hundred bytes each); beyond it, stale ones are dropped first.
const CAPACITY: usize = 100_000;

/// Cheap to clone: every clone shares what is remembered.
#[derive(Clone)]
pub struct Authors {
    shared: Arc<Shared>,
}

struct Shared {
    users: UsersServiceClient<Channel>,
    memory: Mutex<Memory>,
}

#[derive(Default)]
struct Memory {
    known: HashMap<u64, Known>,
    /// When each user was last forgotten: an answer asked for before then (a read that was
    /// under way while their profile changed) is passed on but not remembered.
    forgotten: HashMap<u64, Instant>,
}

/// A user as the users service answered when asked at `fetched`; `None` when there was no
/// such (live) user.
#[derive(Clone)]
struct Known {
    user: Option<User>,
    fetched: Instant,
}

impl Authors {
    pub fn new(users: UsersServiceClient<Channel>) -> Self {
        Self {
            shared: Arc::new(Shared {
                users,
                memory: Mutex::new(Memory::default()),
            }),
        }
    }

    /// Forgets `user_id`, so the next page that shows them reads them again: called by the
    /// gateway that changed their profile or deleted their account.
    pub fn forget(&self, user_id: u64) {
        let mut memory = lock(&self.shared.memory);
        memory.known.remove(&user_id);
        // No read lasts this long (a request's deadline is far shorter).
        memory.forgotten.retain(|_, at| at.elapsed() < STALE_FOR);
        memory.forgotten.insert(user_id, Instant::now());
    }

    /// The live users among `ids` (repeats allowed), by ID: from memory when read less than
    /// [`FRESH_FOR`] ago, the rest in one `BatchGetUsers`.
    pub async fn get(&self, mut ids: Vec<u64>) -> Result<HashMap<u64, User>, tonic::Status> {
        ids.sort_unstable();
        ids.dedup();
        let mut found = HashMap::with_capacity(ids.len());
        let mut missing = Vec::new();
        // What was known of the missing ones, for an outage.
        let mut older = Vec::new();
        {
            let memory = lock(&self.shared.memory);
            for id in ids {
                match memory.known.get(&id) {
                    Some(k) if k.fetched.elapsed() < FRESH_FOR => {
                        if let Some(user) = &k.user {
                            found.insert(id, user.clone());
                        }
                    }
                    old => {
                        missing.push(id);
                        older.push(old.filter(|k| k.fetched.elapsed() < STALE_FOR).cloned());
                    }
                }
            }
        }
        if missing.is_empty() {
            return Ok(found);
        }
        let asked = Instant::now();
        match self.shared.read(missing.clone()).await {
            Ok(mut read) => {
                let mut memory = lock(&self.shared.memory);
                make_room(&mut memory.known, missing.len());
                for id in missing {
                    let user = read.remove(&id);
                    if let Some(user) = &user {
                        found.insert(id, user.clone());
                    }
                    match memory.forgotten.get(&id) {
                        Some(&at) if at >= asked => continue,
                        Some(_) => {
                            memory.forgotten.remove(&id);
                        }
                        None => {}
                    }
                    memory.known.insert(
                        id,
                        Known {
                            user,
                            fetched: asked,
                        },
                    );
                }
                Ok(found)
            }
            Err(status) if unreachable(&status) && older.iter().all(Option::is_some) => {
                tracing::warn!(
                    users = missing.len(),
                    "users service unreachable; showing authors as read before"
                );
                found.extend(
                    older
                        .into_iter()
                        .flatten()
                        .filter_map(|k| k.user.map(|user| (user.id, user))),
                );
                Ok(found)
            }
            Err(status) => Err(status),
        }
    }
}

impl Shared {
    async fn read(&self, user_ids: Vec<u64>) -> Result<HashMap<u64, User>, tonic::Status> {
        let request = rpc(BatchGetUsersRequest {
            user_ids,
            ..Default::default()
        });
        let users = self.users.clone().batch_get_users(request).await?;
        Ok(users
            .into_inner()
            .users
            .into_iter()
            .map(|user| (user.id, user))
            .collect())
    }
}

/// Keeps the map under [`CAPACITY`] with `adding` more: drops what is past use, or everything.
fn make_room(known: &mut HashMap<u64, Known>, adding: usize) {
    if known.len() + adding > CAPACITY {
        known.retain(|_, k| k.fetched.elapsed() < STALE_FOR);
        if known.len() + adding > CAPACITY {
            known.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::fake_users::{self, FakeUsers};

    async fn serve(fake: &Arc<FakeUsers>) -> Authors {
        Authors::new(fake_users::serve(Arc::clone(fake)).await)
    }

    /// As if every answer were read `by` earlier.
    fn age(authors: &Authors, by: Duration) {
        for known in lock(&authors.shared.memory).known.values_mut() {
            known.fetched = known.fetched.checked_sub(by).unwrap();
        }
    }

    fn names(found: &HashMap<u64, User>) -> Vec<(u64, String)> {
        let mut names: Vec<_> = found
            .values()
            .map(|user| (user.id, user.display_name.clone()))
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn users_read_once_are_shown_from_memory_until_they_are_no_longer_fresh() {
        let fake = Arc::new(FakeUsers::default());
        lock(&fake.accounts).extend([(1, "one".to_owned()), (2, "two".to_owned())]);
        let authors = serve(&fake).await;
        let first = authors.get(vec![2, 1, 2, 3]).await.unwrap();
        assert_eq!(names(&first), [(1, "one".into()), (2, "two".into())]);
        assert_eq!(fake.batch_calls.load(Ordering::SeqCst), 1);

        // Changed behind the gateway's back: the old answer, nobody included, still stands.
        lock(&fake.accounts).insert(1, "uno".to_owned());
        lock(&fake.accounts).insert(3, "three".to_owned());
        age(&authors, FRESH_FOR - Duration::from_millis(500));
        let again = authors.get(vec![1, 2, 3]).await.unwrap();
        assert_eq!(names(&again), names(&first));
        assert_eq!(fake.batch_calls.load(Ordering::SeqCst), 1, "no second RPC");

        // Past FRESH_FOR, they are read again, all in one call.
        age(&authors, Duration::from_millis(500));
        let later = authors.get(vec![1, 2, 3]).await.unwrap();
        assert_eq!(
            names(&later),
            [(1, "uno".into()), (2, "two".into()), (3, "three".into())]
        );
        assert_eq!(fake.batch_calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_forgotten_user_is_read_again_at_once_and_only_they_are() {
        let fake = Arc::new(FakeUsers::default());
        lock(&fake.accounts).extend([(1, "one".to_owned()), (2, "two".to_owned())]);
        let authors = serve(&fake).await;
        authors.get(vec![1, 2]).await.unwrap();

        // Deleted through this gateway: it forgets them as it deletes.
        lock(&fake.accounts).remove(&2);
        authors.forget(2);
        let after = authors.get(vec![1, 2]).await.unwrap();
        assert_eq!(names(&after), [(1, "one".into())]);
        assert_eq!(fake.batch_calls.load(Ordering::SeqCst), 2);
        // That they are gone is remembered too.
        authors.get(vec![2]).await.unwrap();
        assert_eq!(fake.batch_calls.load(Ordering::SeqCst), 2);
    }

    /// A read under way while this gateway changes a profile answers as the service did, but
    /// its answer is not remembered over the change.
    #[tokio::test]
    async fn an_answer_asked_for_before_a_forget_is_not_remembered() {
        let fake = Arc::new(FakeUsers::default());
        lock(&fake.accounts).insert(1, "one".to_owned());
        let authors = serve(&fake).await;
        let release = Arc::new(tokio::sync::Notify::new());
        *lock(&fake.held) = Some(Arc::clone(&release));
        let reading = tokio::spawn({
            let authors = authors.clone();
            async move { authors.get(vec![1]).await }
        });
        while fake.batch_calls.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        lock(&fake.accounts).insert(1, "uno".to_owned());
        authors.forget(1);
        release.notify_one();
        let during = reading.await.unwrap().unwrap();
        assert_eq!(names(&during), [(1, "one".into())]);

        *lock(&fake.held) = None;
        let after = authors.get(vec![1]).await.unwrap();
        assert_eq!(names(&after), [(1, "uno".into())]);
        assert_eq!(fake.batch_calls.load(Ordering::SeqCst), 2);
    }

    /// A refusal is an answer, not an outage: no older answer stands in for it, and a user never
    /// read cannot be made up.
    #[tokio::test]
    async fn older_answers_stand_in_only_while_the_users_service_is_unreachable() {
        let fake = Arc::new(FakeUsers::default());
        lock(&fake.accounts).insert(1, "one".to_owned());
        let authors = serve(&fake).await;
        authors.get(vec![1]).await.unwrap();
        age(&authors, FRESH_FOR);
        for (code, stands_in) in [
            (tonic::Code::Unavailable, true),
            (tonic::Code::DeadlineExceeded, true),
            (tonic::Code::InvalidArgument, false),
            (tonic::Code::Internal, false),
        ] {
            *lock(&fake.failing) = Some(code);
            let answer = authors.get(vec![1]).await;
            assert_eq!(answer.is_ok(), stands_in, "{code:?}: {answer:?}");
            if let Ok(found) = answer {
                assert_eq!(names(&found), [(1, "one".into())]);
            }
        }
        *lock(&fake.failing) = Some(tonic::Code::Unavailable);
        assert!(authors.get(vec![1, 2]).await.is_err(), "2 was never read");
        age(&authors, STALE_FOR);
        assert!(authors.get(vec![1]).await.is_err(), "too old to stand in");
    }
}
