//! The long-running work of a service beside its gRPC server: the event consumer, which the
//! service lives and dies with, and background passes run when woken and on a timer.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::Notify;
use tokio::task::{JoinError, JoinHandle};
use tokio_util::sync::CancellationToken;

/// Runs the gRPC server `grpc` of service `name` beside its event `consumer` until `shutdown`,
/// and ends them as one. If the consumer ends while the process is not shutting down (its bus
/// is gone), the server is stopped through `grpc_stop` and the service fails with the
/// consumer's error, rather than serving data that no longer updates. After the server ends,
/// the consumer is awaited (it watches `shutdown` too), so deliveries in hand are finished.
pub async fn serve_beside_consumer<E>(
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

/// When a background pass runs besides being woken: every `poll` (for work nobody announced,
/// such as a pass a crash left unfinished or one taken over from another replica), and `retry`
/// after a failed pass.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub poll: Duration,
    pub retry: Duration,
}

/// Runs `pass` now, whenever `wake` is notified, and on `schedule`, until `shutdown`. A pass
/// returns how many items it handled; a pass that handled some is logged as `done` with the
/// count, a failed one as a warning (and retried).
pub async fn run_passes<F, Fut, E>(
    done: &str,
    mut pass: F,
    wake: Arc<Notify>,
    schedule: Schedule,
    shutdown: CancellationToken,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<usize, E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    loop {
        let wait = tokio::select! {
            () = shutdown.cancelled() => return,
            handled = pass() => match handled {
                Ok(0) => schedule.poll,
                Ok(count) => {
                    tracing::info!(count, "{done}");
                    schedule.poll
                }
                Err(err) => {
                    tracing::warn!(error = %anyhow::Error::new(err), "{done}: failed; will retry");
                    schedule.retry
                }
            },
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = wake.notified() => {}
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
            tokio::spawn(async move {
                run_passes(
                    "test passes",
                    || {
                        let n = passes.fetch_add(1, Ordering::SeqCst) + 1;
                        // The second pass fails.
                        async move { if n == 2 { Err(Gone) } else { Ok(n) } }
                    },
                    wake,
                    schedule,
                    shutdown,
                )
                .await;
            })
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
