//! Shared plumbing for every twtr service. Domain logic never lives here.
//!
//! # Layout
//!
//! By concern:
//!
//! - **Vocabulary.** [`error`]: the one error-code table (every service error maps to a gRPC
//!   code and an HTTP status here, and nowhere else). [`id`]: Snowflake-style 64-bit IDs
//!   (newest first is ID order). [`page`]: cursor pagination (`Limit`, `PageRequest`, `Page`).
//!   [`clock`]: millisecond timestamps and their protobuf/RFC 3339 forms. [`events`]: the kinds
//!   of domain events, their routing keys and envelopes.
//! - **Storage.** [`store`]: what every backend shares ([`store::StoreError`], pending purges).
//!   [`embedded`]: the embedded, durable engine (redb) each service's embedded store is built
//!   on, with its transactional outbox table, group commit and deleted-account tables. [`cql`]:
//!   the ScyllaDB/Cassandra foundation (config, session, keyspaces, schemas and migrations,
//!   lightweight transactions, batches, count ledgers, the CQL outbox, deleted accounts).
//!   [`outbox`]: the outbox trait both backends implement. [`purge`]: the purge of deleted
//!   accounts that services which keep what users did run in the background. [`backup`]: a
//!   consistent copy of a running process's embedded files (`twtr.admin.v1.Admin/Backup`) and
//!   its restore.
//! - **Events.** [`bus`]: the event-bus trait, its in-process and RabbitMQ backends, the
//!   consumer loop, the dead-letter admin service, and the conformance suite every backend
//!   passes. [`relay`]: what moves stored events from an outbox onto the bus.
//! - **Runtime.** [`runtime`]: how a service process lives: its gRPC server, relay, consumer
//!   and background passes, one drain order. [`grpc`]: serving one tonic service with health,
//!   reflection and readiness. [`client`]: channels to other services, balanced per request.
//!   [`shutdown`]: process signals.
//! - **Security.** [`text`]: the characters user-written text may hold. [`files`]: the data
//!   directory and its secrets kept private to this user. [`tokens`]: signing
//!   and verifying the bearer tokens users log in with. [`auth`]: the internal boundary (every
//!   gRPC server checks the caller's forwarded token; a call that acts as a user needs that
//!   user's token). [`tls`]: optional mutual TLS between the parts, and the methods only the
//!   parts may call when it is on.
//! - **Observability.** [`context`]: the request id and trace context that follow a request
//!   across services and events. [`metrics`]: Prometheus metrics of every process.
//!   [`telemetry`]: structured logs and OpenTelemetry traces.
//! - **Test support**, only with the `testsuite` feature (and in this crate's own tests):
//!   `testing` (the servers tests run against, skipped outside CI when absent), `cql::testing`
//!   (migrated test keyspaces) and `bus::conformance` (the bus conformance suite), and the
//!   [`conformance_tests!`] macro that every store's suite uses.
//!
//! # How data flows
//!
//! A service handler validates its input, then writes its rows *and* the domain event in one
//! store transaction (the outbox). The [`relay::run_relay`] task publishes stored events to the
//! [`bus::EventBus`] and deletes them once the bus confirms. Consumers run [`bus::consume`], which
//! hands each delivery to an idempotent handler and acknowledges only after the effect is stored.

pub mod auth;
pub mod backup;
pub mod bus;
pub mod client;
pub mod clock;
pub mod context;
pub mod cql;
pub mod embedded;
pub mod error;
pub mod events;
pub mod files;
pub mod grpc;
pub mod id;
pub mod metrics;
pub mod outbox;
pub mod page;
pub mod purge;
pub mod relay;
pub mod runtime;
pub mod shutdown;
pub mod store;
pub mod telemetry;
#[cfg(any(test, feature = "testsuite"))]
pub mod testing;
pub mod text;
pub mod tls;
pub mod tokens;
pub mod words;

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
