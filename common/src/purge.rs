//! The purge of deleted accounts, the same in every service that keeps what users did (tweets
//! and followers): when the users service deletes an account, the service's consumer records it
//! in its store's deleted accounts ([`crate::embedded::DeletedAccounts`],
//! [`crate::cql::DeletedAccounts`]), which refuse the account from then on and queue its purge;
//! a background [`pass`] then removes what the account left, each removal with its event, and
//! marks the purge done.
//!
//! A service says what one account's purge removes ([`Purge::purge`]); [`purge_pending`] drives
//! the queue. A pass runs when the consumer records a deletion, every [`SCHEDULE`] poll anyway (a
//! purge left by a crash, or taken over from another replica), and again after a failure.
//! Several replicas may purge at once: each removal is decided once by the store, and a purge
//! done twice removes nothing the second time.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;

use crate::runtime::{Pass, Schedule};
use crate::store::{PendingPurge, StoreError};

/// When the purge pass runs: every minute, and 5 s after a failure (and whenever woken).
pub const SCHEDULE: Schedule = Schedule {
    poll: Duration::from_secs(60),
    retry: Duration::from_secs(5),
};

/// How many pending purges one read of the queue takes.
const PURGES_PER_READ: usize = 16;

/// A service that purges deleted accounts: its store's queue of pending purges, and what one
/// account's purge removes.
#[async_trait]
pub trait Purge: Send + Sync + 'static {
    type Error: std::error::Error + From<StoreError> + Send + Sync + 'static;

    /// Up to `max` purges not done yet (the store's `pending_purges`).
    async fn pending_purges(&self, max: usize) -> Result<Vec<PendingPurge>, StoreError>;

    /// Marks `purge` done (the store's `purge_done`).
    async fn purge_done(&self, purge: PendingPurge) -> Result<(), StoreError>;

    /// Removes everything `user` left, each removal with its event: how many things it removed.
    /// Idempotent.
    async fn purge(&self, user: u64) -> Result<usize, Self::Error>;
}

/// Purges every pending deleted account, until none is pending: how many things it removed.
pub async fn purge_pending<P: Purge + ?Sized>(service: &P) -> Result<usize, P::Error> {
    let mut removed = 0;
    loop {
        let purges = service.pending_purges(PURGES_PER_READ).await?;
        if purges.is_empty() {
            return Ok(removed);
        }
        for purge in purges {
            removed += service.purge(purge.user).await?;
            service.purge_done(purge).await?;
            tracing::info!(user_id = purge.user, "deleted account purged");
        }
    }
}

/// The background pass of `service`'s purge, run on [`SCHEDULE`] and whenever `wake` is
/// notified; `done` names what a pass that removed something did, for the log.
pub fn pass<P: Purge>(service: Arc<P>, wake: Arc<Notify>, done: &'static str) -> Pass {
    Pass {
        done,
        run: Box::new(move || {
            let service = Arc::clone(&service);
            Box::pin(async move { Ok(purge_pending(service.as_ref()).await?) })
        }),
        wake,
        schedule: SCHEDULE,
    }
}
