//! Load generators: a closed loop (N workers, each sending its next request when the last one
//! answered: the maximum throughput) and an open loop (requests at a fixed rate, latency from
//! the intended send time, see [`crate::schedule`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::hist::Recorder;
use crate::schedule::Schedule;

/// One request: given its index, sends it and says which operation it was and how it went.
pub type Op = Arc<dyn Fn(u64) -> Pin<Box<dyn Future<Output = Outcome> + Send>> + Send + Sync>;

/// Which operation (an index into the run's list) and whether it succeeded; an error of
/// [`SHED`] is a request the gateway shed, counted apart.
pub type Outcome = (usize, Result<(), String>);

/// The error of a request the gateway shed (503 at once over its concurrency limit): the
/// overload phase expects many, and they are neither errors nor latency samples.
pub const SHED: &str = "shed (503)";

/// What a run measured: a recorder per operation, and how long it took.
#[derive(Debug)]
pub struct Run {
    pub recorders: Vec<Recorder>,
    pub elapsed: Duration,
}

fn record(recorders: &Mutex<Vec<Recorder>>, start: Instant, intended: Instant, outcome: Outcome) {
    let latency = intended.elapsed();
    let second = intended.saturating_duration_since(start).as_secs() as usize;
    let mut recorders = recorders
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let (op, result) = outcome;
    while recorders.len() <= op {
        recorders.push(Recorder::new());
    }
    match result {
        Ok(()) => recorders[op].record(second, latency),
        Err(err) if err == SHED => recorders[op].shed(),
        Err(err) => recorders[op].error(err),
    }
}

fn finish(recorders: Arc<Mutex<Vec<Recorder>>>, elapsed: Duration) -> Run {
    let recorders = match Arc::try_unwrap(recorders) {
        Ok(mutex) => mutex.into_inner().unwrap_or_else(|p| p.into_inner()),
        Err(shared) => shared.lock().unwrap_or_else(|p| p.into_inner()).clone(),
    };
    Run { recorders, elapsed }
}

/// How long a closed loop's worker waits after a request was shed: the gateway's
/// `Retry-After`, as a client that honours it does. Retrying at once, a thousand clients on the
/// mesh's own two cores spent the CPU on being refused (44 reads/s accepted, 12,000/s shed).
pub const SHED_BACKOFF: Duration = Duration::from_secs(1);

/// `workers` loops, each sending one request at a time, for `duration`; a worker whose
/// request was shed waits [`SHED_BACKOFF`] before its next.
pub async fn closed_loop(workers: usize, duration: Duration, op: Op) -> Run {
    let recorders = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let deadline = start + duration;
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers.max(1) {
        let (op, recorders, next) = (Arc::clone(&op), Arc::clone(&recorders), Arc::clone(&next));
        tasks.spawn(async move {
            while Instant::now() < deadline {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let sent = Instant::now();
                let outcome = op(i).await;
                let shed = matches!(&outcome.1, Err(err) if err == SHED);
                record(&recorders, start, sent, outcome);
                if shed {
                    tokio::time::sleep(
                        SHED_BACKOFF.min(deadline.saturating_duration_since(Instant::now())),
                    )
                    .await;
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    finish(recorders, start.elapsed())
}

/// Requests on `schedule`, at most `max_in_flight` outstanding (past that, sending waits, and
/// the wait shows in the latencies since they count from the intended time).
pub async fn open_loop(schedule: Schedule, max_in_flight: usize, op: Op) -> Run {
    let recorders = Arc::new(Mutex::new(Vec::new()));
    let permits = Arc::new(Semaphore::new(max_in_flight.max(1)));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut next = 0;
    while next < schedule.len() {
        let due = schedule.due(next, start.elapsed());
        for i in due.clone() {
            let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                break;
            };
            let intended = start + schedule.intended(i);
            let (op, recorders) = (Arc::clone(&op), Arc::clone(&recorders));
            tasks.spawn(async move {
                let outcome = op(i).await;
                record(&recorders, start, intended, outcome);
                drop(permit);
            });
        }
        next = due.end;
        // Reap finished tasks so the set stays small.
        while tasks.try_join_next().is_some() {}
        if next < schedule.len() {
            tokio::time::sleep_until(start + schedule.intended(next)).await;
        }
    }
    while tasks.join_next().await.is_some() {}
    finish(recorders, start.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op_that_sleeps(ms: u64) -> Op {
        Arc::new(move |i| {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                (usize::from(i % 10 == 0), Ok(()))
            })
        })
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_loop_sends_on_schedule_and_splits_by_operation() {
        let run = open_loop(
            Schedule::new(100.0, Duration::from_secs(2)),
            1000,
            op_that_sleeps(5),
        )
        .await;
        let counts: Vec<u64> = run.recorders.iter().map(Recorder::count).collect();
        assert_eq!(counts, vec![180, 20]);
        let s = run.recorders[0].summary(run.elapsed);
        // Paused time: every request takes exactly its 5 ms.
        assert!((s.at(99.0).unwrap() - 5.0).abs() < 0.1, "{s:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_loop_counts_queueing_that_a_closed_loop_hides() {
        // One request in flight at a time, 10 ms each, asked for every 5 ms: the queue grows,
        // and latency from the intended send time shows it.
        let run = open_loop(
            Schedule::new(200.0, Duration::from_secs(1)),
            1,
            op_that_sleeps(10),
        )
        .await;
        let s = run.recorders[0].summary(run.elapsed);
        assert!(
            s.max_ms > 900.0,
            "the last requests waited ~1 s: {}",
            s.max_ms
        );
        let closed = closed_loop(1, Duration::from_secs(1), op_that_sleeps(10)).await;
        let c = closed.recorders[0].summary(closed.elapsed);
        assert!(c.max_ms < 11.0, "a closed loop sees only service time");
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_loop_runs_its_workers_for_the_duration() {
        let run = closed_loop(4, Duration::from_secs(1), op_that_sleeps(10)).await;
        let total: u64 = run.recorders.iter().map(Recorder::count).sum();
        assert_eq!(total, 400);
        assert!(run.elapsed >= Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn failures_are_counted_apart_from_latencies() {
        let op: Op = Arc::new(|i| {
            Box::pin(async move {
                (
                    0,
                    if i % 2 == 0 {
                        Ok(())
                    } else {
                        Err("503".into())
                    },
                )
            })
        });
        let run = open_loop(Schedule::new(10.0, Duration::from_secs(1)), 10, op).await;
        let s = run.recorders[0].summary(run.elapsed);
        assert_eq!((s.ok, s.errors), (5, 5));
    }

    #[tokio::test(start_paused = true)]
    async fn shed_requests_are_counted_apart_from_errors_and_latencies() {
        let op: Op = Arc::new(|i| {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(if i % 4 == 0 { 50 } else { 1 })).await;
                let result = match i % 4 {
                    0 => Ok(()),
                    1 | 2 => Err(SHED.to_owned()),
                    _ => Err("HTTP 500".to_owned()),
                };
                (0, result)
            })
        });
        let run = open_loop(Schedule::new(100.0, Duration::from_secs(1)), 100, op).await;
        let s = run.recorders[0].summary(run.elapsed);
        assert_eq!((s.ok, s.shed, s.errors), (25, 50, 25));
        assert!(s.at(50.0).is_some_and(|ms| ms >= 50.0), "{s:?}");
    }
}
