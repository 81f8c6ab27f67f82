//! One service runtime: how every twtr service process lives.
//!
//! A service crate turns its dependencies into a [`ServiceRuntime`]: its tonic service, the
//! probe of its own store (its readiness), the event bus, the keys it verifies callers' tokens
//! with, and what it has of the optional parts: the outbox relay (a service that publishes),
//! an event consumer (a service that consumes) and background passes (work run when woken and
//! on a schedule, such as the purge of deleted accounts). [`ServiceRuntime::run`] runs them all
//! beside the gRPC server until `shutdown`, then ends them in one order:
//!
//! 1. health turns NOT_SERVING, the server stops accepting and drains the calls in flight,
//!    and the consumer stops taking deliveries and settles those in hand (both watch
//!    `shutdown`);
//! 2. the background passes stop;
//! 3. the relay flushes what the calls and handlers stored, and gives its leases back.
//!
//! A consumer that ends while the process is not shutting down (its bus is gone) stops the
//! server too, and `run` fails with the consumer's error, rather than serve data that no
//! longer updates.
//!
//! Readiness, health entries and the operator endpoints are [`crate::grpc`]'s (see
//! [`grpc::Serving`]); the relay is [`crate::relay`]'s; the consumer loop is
//! [`bus::consume`]'s.

use std::convert::Infallible;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::future::BoxFuture;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::{JoinError, JoinHandle};
use tokio_util::sync::CancellationToken;
use tonic::codegen::{Service, http};
use tonic::server::NamedService;

use crate::backup::BackupAdmin;
use crate::bus::admin::DeadLetterAdmin;
use crate::bus::{self, ConsumerSettings, EventBus, EventHandler, QueueSpec, Subscription};
use crate::grpc;
use crate::outbox::Outbox;
use crate::store::StoreError;
use crate::tls::MeshTls;
use crate::tokens::TokenVerifier;

/// A probe of a service's own store: its readiness, and what its consumer asks before it
/// spends a retry.
pub type Ping = Arc<dyn Fn() -> BoxFuture<'static, Result<(), StoreError>> + Send + Sync>;

/// A service's event consumer: the subscription to its queue (declared already, so events
/// published from now on reach it) and what handles the deliveries.
pub struct Consumer {
    pub queue: QueueSpec,
    pub subscription: Box<dyn Subscription>,
    pub handler: Arc<dyn EventHandler>,
    pub settings: ConsumerSettings,
}

impl Consumer {
    /// Declares `queue` on `bus` and subscribes to it.
    pub async fn subscribe(
        bus: &dyn EventBus,
        queue: QueueSpec,
        handler: Arc<dyn EventHandler>,
        settings: ConsumerSettings,
    ) -> anyhow::Result<Self> {
        let subscription = bus
            .subscribe(&queue)
            .await
            .with_context(|| format!("failed to declare the {} queue", queue.name))?;
        Ok(Self {
            queue,
            subscription,
            handler,
            settings,
        })
    }
}

/// When a background pass runs besides being woken: every `poll` (for work nobody announced,
/// such as a pass a crash left unfinished or one taken over from another replica), and `retry`
/// after a failed pass.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub poll: Duration,
    pub retry: Duration,
}

/// Why a background pass failed (it is retried).
pub type PassError = Box<dyn std::error::Error + Send + Sync>;

/// Background work: `run` handles what is pending and says how much (0 when nothing was).
pub struct Pass {
    /// What a pass that handled something did, for the log (`"purged deleted accounts"`).
    pub done: &'static str,
    pub run: Box<dyn FnMut() -> BoxFuture<'static, Result<usize, PassError>> + Send>,
    /// Runs a pass now when notified (say, when the consumer recorded new work).
    pub wake: Arc<Notify>,
    pub schedule: Schedule,
}

/// Everything one service process runs (see the [module docs](self)).
pub struct ServiceRuntime<S> {
    name: &'static str,
    service: S,
    ping: Ping,
    bus: Arc<dyn EventBus>,
    tokens: Option<Arc<TokenVerifier>>,
    tls: Option<MeshTls>,
    outbox: Option<Arc<dyn Outbox>>,
    consumer: Option<Consumer>,
    passes: Vec<Pass>,
    /// The data directory whose embedded files `twtr.admin.v1.Admin/Backup` copies.
    backups: Option<PathBuf>,
    tasks: Vec<Task>,
}

/// Work that runs beside a service until its shutdown (see [`ServiceRuntime::with_task`]).
pub type Task = Box<dyn FnOnce(CancellationToken) -> BoxFuture<'static, ()> + Send>;

impl<S> std::fmt::Debug for ServiceRuntime<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceRuntime")
            .field("name", &self.name)
            .field("verifies_tokens", &self.tokens.is_some())
            .field("tls", &self.tls.is_some())
            .field("relays", &self.outbox.is_some())
            .field("consumes", &self.consumer.as_ref().map(|c| &c.queue.name))
            .field("passes", &self.passes.len())
            .finish_non_exhaustive()
    }
}

impl<S> ServiceRuntime<S>
where
    S: Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    /// The service `name` serving `service`, ready while `ping` succeeds, on `bus`.
    pub fn new<F, Fut>(name: &'static str, service: S, bus: Arc<dyn EventBus>, ping: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), StoreError>> + Send + 'static,
    {
        Self {
            name,
            service,
            ping: Arc::new(move || Box::pin(ping())),
            bus,
            tokens: None,
            tls: None,
            outbox: None,
            consumer: None,
            passes: Vec::new(),
            backups: None,
            tasks: Vec::new(),
        }
    }

    /// Verifies callers' tokens with `tokens` (see [`crate::auth`]). Without it, every call
    /// that acts as a user is refused.
    pub fn verifying(mut self, tokens: TokenVerifier) -> Self {
        self.tokens = Some(Arc::new(tokens));
        self
    }

    /// Serves over mutual TLS when `tls` is given (see [`crate::tls`]); plaintext otherwise.
    pub fn with_tls(mut self, tls: Option<MeshTls>) -> Self {
        self.tls = tls;
        self
    }

    /// Publishes what `outbox` stores (a service that publishes events).
    pub fn relaying(mut self, outbox: Arc<dyn Outbox>) -> Self {
        self.outbox = Some(outbox);
        self
    }

    /// Consumes events (and serves its queue's dead letters to operators).
    pub fn consuming(mut self, consumer: Consumer) -> Self {
        self.consumer = Some(consumer);
        self
    }

    /// Serves backups of the embedded files in `data_dir` (`twtr.admin.v1.Admin`, see
    /// [`crate::backup`]).
    pub fn serving_backups(mut self, data_dir: PathBuf) -> Self {
        self.backups = Some(data_dir);
        self
    }

    /// Runs `task` beside the server, given a token cancelled as soon as shutdown begins (before
    /// calls drain: a task that ends long-lived calls, such as streams, does it then). It is
    /// dropped once the server has ended.
    pub fn with_task<F, Fut>(mut self, task: F) -> Self
    where
        F: FnOnce(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.tasks.push(Box::new(move |stop| Box::pin(task(stop))));
        self
    }

    /// Runs `pass` in the background.
    pub fn with_pass(mut self, pass: Pass) -> Self {
        self.passes.push(pass);
        self
    }

    /// Runs the service on `listener` until `shutdown` (see the [module docs](self)).
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let Self {
            name,
            service,
            ping,
            bus,
            tokens,
            tls,
            outbox,
            consumer,
            passes,
            backups,
            tasks,
        } = self;
        if tokens.is_none() {
            tracing::warn!(
                service = name,
                "no keys to verify callers with: every call that acts as a user is refused"
            );
        }
        let ready = grpc::store_readiness(name, move || ping(), shutdown.clone()).await;

        let relay_stop = CancellationToken::new();
        let relay = outbox.map(|outbox| {
            let depth = tokio::spawn(crate::relay::sample_depth(
                name,
                Arc::clone(&outbox),
                relay_stop.clone(),
            ));
            let relay = tokio::spawn(crate::relay::run_relay(
                name,
                outbox,
                Arc::clone(&bus),
                relay_stop.clone(),
            ));
            (relay, depth)
        });
        let passes_stop = CancellationToken::new();
        let passes: Vec<JoinHandle<()>> = passes
            .into_iter()
            .map(|pass| tokio::spawn(run_passes(pass, passes_stop.clone())))
            .collect();

        let tasks: Vec<JoinHandle<()>> = tasks
            .into_iter()
            .map(|task| tokio::spawn(task(shutdown.clone())))
            .collect();

        let grpc_stop = shutdown.child_token();
        let serving = grpc::Serving {
            ready,
            events: bus.readiness(),
            dead_letters: consumer
                .as_ref()
                .map(|c| DeadLetterAdmin::server(Arc::clone(&bus), &c.queue.name)),
            admin: backups.map(BackupAdmin::server),
            tokens,
            tls,
        };
        let server = grpc::serve(service, listener, serving, grpc_stop.clone());
        let served = match consumer {
            Some(consumer) => {
                let consuming = tokio::spawn({
                    let shutdown = shutdown.clone();
                    async move {
                        bus::consume(
                            &consumer.queue.name,
                            consumer.subscription,
                            consumer.handler.as_ref(),
                            consumer.settings,
                            shutdown,
                        )
                        .await
                    }
                });
                serve_beside_consumer(name, server, &grpc_stop, consuming, &shutdown).await
            }
            None => server.await,
        };

        for task in tasks {
            task.abort();
            if let Err(err) = task.await
                && err.is_panic()
            {
                anyhow::bail!("a {name} task panicked");
            }
        }
        passes_stop.cancel();
        for pass in passes {
            pass.await
                .with_context(|| format!("a {name} pass panicked"))?;
        }
        // Calls and deliveries have drained: whatever they stored goes out before the end.
        relay_stop.cancel();
        if let Some((relay, depth)) = relay {
            relay
                .await
                .with_context(|| format!("the {name} relay panicked"))?;
            depth.await?;
        }
        served
    }
}

/// Runs the gRPC server `grpc` of service `name` beside its event `consumer` until `shutdown`,
/// and ends them as one. If the consumer ends while the process is not shutting down (its bus
/// is gone), the server is stopped through `grpc_stop` and the service fails with the
/// consumer's error. After the server ends, the consumer is awaited (it watches `shutdown`
/// too), so deliveries in hand are finished.
async fn serve_beside_consumer<E>(
    name: &str,
    grpc: impl Future<Output = anyhow::Result<()>>,
    grpc_stop: &CancellationToken,
    mut consumer: JoinHandle<Result<(), E>>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let consumed = |joined: Result<Result<(), E>, JoinError>| {
        joined
            .with_context(|| format!("{name} consumer panicked"))?
            .with_context(|| format!("{name} consumer failed"))
    };
    tokio::pin!(grpc);
    tokio::select! {
        served = &mut grpc => {
            let joined = consumer.await;
            served?;
            consumed(joined)
        }
        joined = &mut consumer => {
            grpc_stop.cancel();
            let served = grpc.await;
            consumed(joined)?;
            anyhow::ensure!(shutdown.is_cancelled(), "{name} consumer stopped unexpectedly");
            served
        }
    }
}

/// Runs `pass` now, whenever it is woken, and on its schedule, until `stop`. A pass that
/// handled some is logged as `done` with the count, a failed one as a warning (and retried).
async fn run_passes(mut pass: Pass, stop: CancellationToken) {
    loop {
        let wait = tokio::select! {
            () = stop.cancelled() => return,
            handled = (pass.run)() => match handled {
                Ok(0) => pass.schedule.poll,
                Ok(count) => {
                    tracing::info!(count, "{}", pass.done);
                    pass.schedule.poll
                }
                Err(err) => {
                    let error = crate::error::error_chain(err.as_ref());
                    tracing::warn!(%error, "{}: failed; will retry", pass.done);
                    pass.schedule.retry
                }
            },
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = pass.wake.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("the bus is gone")]
    struct Gone;

    /// Serves "test" with a server that runs until its stop token is cancelled (a child of
    /// `shutdown`, as in the services) beside `consumer`; also returns whether the server was
    /// told to stop.
    async fn serve(
        consumer: JoinHandle<Result<(), Gone>>,
        shutdown: &CancellationToken,
    ) -> (anyhow::Result<()>, bool) {
        let grpc_stop = shutdown.child_token();
        let server = {
            let stop = grpc_stop.clone();
            async move {
                stop.cancelled().await;
                Ok(())
            }
        };
        let served = serve_beside_consumer("test", server, &grpc_stop, consumer, shutdown).await;
        (served, grpc_stop.is_cancelled())
    }

    #[tokio::test]
    async fn a_consumer_that_fails_stops_the_server_and_the_service_fails_with_its_error() {
        let shutdown = CancellationToken::new();
        let (served, stopped) = serve(tokio::spawn(async { Err(Gone) }), &shutdown).await;
        assert!(stopped, "the server was told to stop");
        let err = served.unwrap_err();
        assert_eq!(format!("{err:#}"), "test consumer failed: the bus is gone");
    }

    #[tokio::test]
    async fn a_consumer_that_ends_without_a_shutdown_is_an_error_too() {
        let shutdown = CancellationToken::new();
        let (served, _) = serve(tokio::spawn(async { Ok(()) }), &shutdown).await;
        let err = served.unwrap_err();
        assert_eq!(err.to_string(), "test consumer stopped unexpectedly");
    }

    #[tokio::test]
    async fn on_shutdown_both_end_and_the_service_succeeds() {
        let shutdown = CancellationToken::new();
        let consumer = {
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                shutdown.cancelled().await;
                Ok(())
            })
        };
        shutdown.cancel();
        let (served, _) = serve(consumer, &shutdown).await;
        served.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn passes_run_at_once_when_woken_and_on_schedule_and_retry_sooner_after_a_failure() {
        let schedule = Schedule {
            poll: Duration::from_secs(60),
            retry: Duration::from_secs(5),
        };
        let (wake, shutdown) = (Arc::new(Notify::new()), CancellationToken::new());
        let passes = Arc::new(AtomicUsize::new(0));
        let runner = {
            let (passes, wake, shutdown) = (passes.clone(), wake.clone(), shutdown.clone());
            let pass = Pass {
                done: "test passes",
                run: Box::new(move || {
                    let n = passes.fetch_add(1, Ordering::SeqCst) + 1;
                    // The second pass fails.
                    Box::pin(async move {
                        if n == 2 {
                            Err(Box::new(Gone) as PassError)
                        } else {
                            Ok(n)
                        }
                    })
                }),
                wake,
                schedule,
            };
            tokio::spawn(run_passes(pass, shutdown))
        };
        let settle = || tokio::time::sleep(Duration::from_millis(1));
        settle().await;
        assert_eq!(passes.load(Ordering::SeqCst), 1, "one pass at once");
        wake.notify_one();
        settle().await;
        assert_eq!(passes.load(Ordering::SeqCst), 2, "one when woken");
        tokio::time::sleep(schedule.retry).await;
        assert_eq!(
            passes.load(Ordering::SeqCst),
            3,
            "a failure is retried after `retry`"
        );
        tokio::time::sleep(schedule.retry).await;
        assert_eq!(
            passes.load(Ordering::SeqCst),
            3,
            "a success waits for `poll`"
        );
        tokio::time::sleep(schedule.poll).await;
        assert_eq!(passes.load(Ordering::SeqCst), 4, "and then runs again");
        shutdown.cancel();
        runner.await.unwrap();
    }
}
