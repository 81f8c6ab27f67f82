//! Shared plumbing for every twtr service. Domain logic never lives here.
//!
//! # Layout
//!
//! - [`error`]: the one error-code table: every service error maps to a gRPC code and an HTTP
//!   status here, and nowhere else.
//! - [`id`]: Snowflake-style 64-bit IDs (milliseconds, worker, sequence); newest first is ID order.
//! - [`page`]: cursor pagination types shared by every list (`Limit`, `PageRequest`, `Page`).
//! - [`clock`]: millisecond timestamps and their protobuf/RFC 3339 forms.
//! - [`store`]: the vocabulary every storage backend shares ([`store::StoreError`]).
//! - [`embedded`]: the embedded, durable storage engine (redb) that each service's embedded store
//!   is built on, including the transactional outbox table.
//! - [`cql`]: the ScyllaDB/Cassandra foundation: config, session, keyspaces and migrations.
//! - [`outbox`]: the outbox trait and the relay that moves stored events onto the bus.
//! - [`bus`]: the event-bus trait, its in-process backend, the consumer loop and the conformance
//!   suite every backend must pass.
//! - [`grpc`]: serving a tonic service with health, reflection and graceful shutdown.
//! - [`tokens`]: signing and verifying the bearer tokens users log in with.
//! - [`auth`]: the internal boundary: every gRPC server checks the caller's forwarded token, and
//!   a call that acts as a user needs that user's token.
//! - [`context`]: the request id that follows a request across services and events.
//! - [`metrics`]: Prometheus metrics of every process (HTTP, gRPC, events, queue depths).
//! - [`shutdown`], [`telemetry`]: process signals and structured logging.
//!
//! # How data flows
//!
//! A service handler validates its input, then writes its rows *and* the domain event in one
//! store transaction (the outbox). The [`outbox::run_relay`] task publishes stored events to the
//! [`bus::EventBus`] and deletes them once the bus confirms. Consumers run [`bus::consume`], which
//! hands each delivery to an idempotent handler and acknowledges only after the effect is stored.

pub mod auth;
pub mod bus;
pub mod clock;
pub mod context;
pub mod cql;
pub mod embedded;
pub mod error;
pub mod events;
pub mod grpc;
pub mod id;
pub mod metrics;
pub mod outbox;
pub mod page;
pub mod shutdown;
pub mod store;
pub mod tasks;
pub mod telemetry;
pub mod testing;
pub mod tokens;

pub use error::{ErrorCode, ServiceError};

/// Locks `mutex`, taking its value as it is if a panicking holder poisoned it: the state kept
/// behind twtr's mutexes (caches, registries, queues of waiters) stays valid mid-update.
pub fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Generates one `#[tokio::test]` per check of a conformance suite. `$open` is an async function
/// returning the backend under test and a guard kept alive while it runs; each `$check` is an
/// async function of the suite module `$suite` taking that backend.
///
/// ```ignore
/// twtr_common::conformance_tests!(open_embedded => crate::store::conformance: creates, reads);
/// ```
///
/// With `optional`, `$open` returns `Option<(subject, guard)>` and `None` skips the check: for a
/// backend that needs a server this machine may not run (never in CI, where `$open` must fail
/// instead of returning `None`).
#[macro_export]
macro_rules! conformance_tests {
    (optional $open:path => $suite:path : $($check:ident),+ $(,)?) => {
        use $suite as suite;
        $(
            #[tokio::test]
            async fn $check() {
                let Some((subject, _guard)) = $open().await else {
                    return;
                };
                suite::$check(subject).await;
            }
        )+
    };
    ($open:path => $suite:path : $($check:ident),+ $(,)?) => {
        use $suite as suite;
        $(
            #[tokio::test]
            async fn $check() {
                let (subject, _guard) = $open().await;
                suite::$check(subject).await;
            }
        )+
    };
}
pub use id::IdGenerator;
pub use page::{Limit, Page, PageRequest};
