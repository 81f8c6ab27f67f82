//! The API's concurrency limit, adapted to measured latency: while requests finish as fast as
//! they do when nothing queues, the limit grows; when their latency rises (they queue, in the
//! gateway or behind it), it shrinks. A request over the limit is refused at once ([`Shed`],
//! answered 503 with `Retry-After` by [`crate::limits::overloaded`]), never queued, so the
//! requests that are accepted keep a bounded latency and the excess hears so at once.
//!
//! # The algorithm (a gradient limiter, after Netflix's Gradient2 and TCP Vegas)
//!
//! Completed requests are summed in windows of at least [`WINDOW`] and [`MIN_SAMPLES`]
//! requests. At the end of each, [`Gradient::update`]:
//!
//! - **short-term latency**: the window's mean latency of requests that finished normally;
//! - **baseline** (the latency with nothing queued): a smoothed minimum, which falls at once
//!   to a lower window and rises towards a higher one only slowly ([`BASELINE_RISE`] of the
//!   gap per window, a time constant of tens of seconds): it follows a lasting change in what
//!   a request costs, but not a burst of queueing (and a probe, below, resets it);
//! - **gradient** = [`TOLERANCE`] × baseline / short-term, clamped to [[`MIN_GRADIENT`], 1]:
//!   1 while latency stays within the tolerance, smaller as requests queue; a window in which
//!   a request ran out of time (504) or was dropped unfinished (its deadline passed, or its
//!   client went) is overloaded whatever its mean: the smallest gradient;
//! - **new limit** = limit × gradient + √limit (the queue allowance: the limit keeps probing
//!   upwards), blended into the old one with [`SMOOTHING`], and kept within [min, max];
//! - **probe**: a gateway that sheds never sees its latency with nothing queued, so its
//!   baseline may be stale or, if it started under overload, never learned. While it sheds, at
//!   most every [`PROBE_EVERY`] windows (and at the first shedding window), it holds the limit
//!   at its minimum until the requests admitted before have drained, for [`PROBE_WINDOWS`]
//!   windows after that (at most [`PROBE_PATIENCE`] in all), takes their lowest mean as the
//!   baseline, and goes back to the limit it had (as BBR probes its path's round-trip time). A gateway that
//!   does not shed never probes: it sees its baseline in the normal course.
//!
//! A window whose peak in flight stayed under half the limit says nothing about the limit
//! (the traffic, not the limit, held requests back): it moves the baseline but not the limit,
//! so a quiet gateway's limit does not creep up to max while nothing tests it.
//!
//! # The hot path
//!
//! Taking a slot is a compare-and-swap on the in-flight count against the limit (an atomic);
//! a completed request adds to a few atomic sums. Only the request that closes a window takes
//! a mutex (with `try_lock`: another request closing it at the same moment just goes on).
//!
//! A slot is held until the response's head is ready, not while its body streams: a live feed
//! (`GET /v1/feed/stream`) holds none (it would hold it for hours; see [`crate::streams`]), and
//! its head's latency is no sample.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, TryLockError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::http::{self, StatusCode, header};
use tower::{BoxError, Layer, Service};

/// The shortest window over which latency is measured before the limit moves.
pub const WINDOW: Duration = Duration::from_millis(100);
/// The fewest completed requests a window needs (with fewer, it stays open: a few samples say
/// little).
pub const MIN_SAMPLES: u64 = 10;
/// How far short-term latency may exceed the baseline before the limit shrinks.
pub const TOLERANCE: f64 = 1.5;
/// The smallest gradient: one window at most halves the limit's target.
pub const MIN_GRADIENT: f64 = 0.5;
/// How much of the new target a window's update takes (the rest is the old limit).
pub const SMOOTHING: f64 = 0.2;
/// The share of the gap a baseline below the short-term latency closes per window.
pub const BASELINE_RISE: f64 = 0.002;
/// While shedding, the fewest windows between two probes of the baseline.
pub const PROBE_EVERY: u32 = 50;
/// How many windows a probe measures, once the requests admitted before it have drained (a
/// window whose peak in flight stayed within the minimum).
pub const PROBE_WINDOWS: u32 = 3;
/// The most windows a probe lasts, drained or not.
pub const PROBE_PATIENCE: u32 = 10;

/// How many API requests a gateway serves at once (configuration; `twtr gateway --help`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConcurrencyLimits {
    pub mode: ConcurrencyMode,
    /// The adaptive limit never goes below this.
    pub min: usize,
    /// Where the adaptive limit starts.
    pub initial: usize,
    /// The hard upper bound: the adaptive limit never exceeds it; the fixed limit is it.
    pub max: usize,
    /// The mean latency the adaptive limit tolerates whatever the baseline: it shrinks only
    /// when a window's mean is over both this and [`TOLERANCE`] × the baseline. A CPU-bound
    /// mesh's latency grows with what it serves at once long before it is overloaded (two
    /// cores serving 64 feed reads at once answer in ~20 ms, their baseline is ~2 ms): without
    /// a target, the limit cut ordinary load down to a few requests and shed the rest.
    pub target: Duration,
}

/// The default [`ConcurrencyLimits::target`]: accepted requests' p99 stays near twice it.
pub const DEFAULT_TARGET: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConcurrencyMode {
    /// The limit follows measured latency, within [min, max].
    Adaptive,
    /// The limit is max, whatever the latency.
    Fixed,
}

impl ConcurrencyLimits {
    /// A fixed limit of `max` requests in flight.
    pub fn fixed(max: usize) -> Self {
        Self {
            mode: ConcurrencyMode::Fixed,
            min: max,
            initial: max,
            max,
            target: DEFAULT_TARGET,
        }
    }

    /// min ≤ initial ≤ max, all at least 1 (configuration checks this; the limiter relies on
    /// it).
    fn bounds(&self) -> (usize, usize, usize) {
        let max = self.max.max(1);
        let min = self.min.clamp(1, max);
        (min, self.initial.clamp(min, max), max)
    }
}

impl Default for ConcurrencyLimits {
    /// Adaptive between 64 and 1024, starting at 64. The floor is what a mesh serves well in
    /// parallel however slow its store: latency that stays high for reasons no gateway limit
    /// changes (a loaded Cassandra node) drove a floor of 8 down to it, at 37 posts/s.
    fn default() -> Self {
        Self {
            mode: ConcurrencyMode::Adaptive,
            min: 64,
            initial: 64,
            max: 1024,
            target: DEFAULT_TARGET,
        }
    }
}

/// What the requests that completed in one window say.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Window {
    /// Requests that finished normally.
    pub samples: u64,
    /// Their mean latency.
    pub mean: Duration,
    /// Requests that ran out of time (504) or were dropped unfinished: signs of overload.
    pub overloaded: u64,
    /// The most requests in flight at once during the window.
    pub peak_in_flight: usize,
    /// Requests refused over the limit.
    pub shed: u64,
}

/// The limit's arithmetic, free of clocks and atomics (see the module's docs).
#[derive(Debug, Clone)]
pub struct Gradient {
    min: f64,
    max: f64,
    limit: f64,
    /// The smoothed minimum latency, in seconds; `None` until the first sample.
    baseline: Option<f64>,
    /// [`ConcurrencyLimits::target`], in seconds.
    target: f64,
    /// Windows since the last probe ended.
    since_probe: u32,
    probe: Option<Probe>,
}

/// A probe of the baseline under way: the limit is held at its minimum.
#[derive(Debug, Clone, Copy)]
struct Probe {
    /// Drained windows it still measures.
    remaining: u32,
    /// Windows it may still last.
    patience: u32,
    /// The limit to go back to.
    resume: f64,
    /// The lowest window mean seen so far, in seconds.
    lowest: f64,
}

impl Gradient {
    pub fn new(limits: &ConcurrencyLimits) -> Self {
        let (min, initial, max) = limits.bounds();
        Self {
            min: min as f64,
            max: max as f64,
            limit: initial as f64,
            baseline: None,
            target: limits.target.as_secs_f64(),
            // The first shedding window probes: a gateway that starts under overload has
            // never seen its latency with nothing queued.
            since_probe: PROBE_EVERY,
            probe: None,
        }
    }

    pub fn limit(&self) -> usize {
        self.limit as usize
    }

    /// The latency the limit compares against.
    pub fn baseline(&self) -> Option<Duration> {
        self.baseline.map(Duration::from_secs_f64)
    }

    /// Learns from one window; returns the new limit.
    pub fn update(&mut self, window: &Window) -> usize {
        let short = window.mean.as_secs_f64().max(1e-6);
        if let Some(probe) = &mut self.probe {
            // Only once the requests admitted under the old limit are gone does latency say
            // what a request costs with (almost) nothing queued.
            if window.samples > 0 && window.peak_in_flight as f64 <= self.min {
                probe.lowest = probe.lowest.min(short);
                probe.remaining -= 1;
            }
            probe.patience -= 1;
            if probe.remaining == 0 || probe.patience == 0 {
                if probe.lowest.is_finite() {
                    self.baseline = Some(probe.lowest);
                }
                self.limit = probe.resume;
                self.probe = None;
                self.since_probe = 0;
            }
            return self.limit();
        }
        self.since_probe = self.since_probe.saturating_add(1);
        if window.samples > 0 {
            self.baseline = Some(match self.baseline {
                Some(baseline) if baseline < short => baseline + (short - baseline) * BASELINE_RISE,
                _ => short,
            });
        }
        // Within the target, latency says nothing is wrong: neither a probe nor a cut.
        let over_target = short > self.target;
        if window.shed > 0
            && over_target
            && self.since_probe >= PROBE_EVERY
            && self.limit > self.min
        {
            self.probe = Some(Probe {
                remaining: PROBE_WINDOWS,
                patience: PROBE_PATIENCE,
                resume: self.limit,
                lowest: f64::INFINITY,
            });
            self.limit = self.min;
            return self.limit();
        }
        let gradient = if window.overloaded > 0 {
            MIN_GRADIENT
        } else if window.samples == 0 || (window.peak_in_flight as f64) < self.limit / 2.0 {
            return self.limit();
        } else {
            let baseline = self.baseline.unwrap_or(short);
            let allowed = (TOLERANCE * baseline).max(self.target);
            (allowed / short).clamp(MIN_GRADIENT, 1.0)
        };
        let target = self.limit * gradient + self.limit.sqrt();
        self.limit =
            (self.limit * (1.0 - SMOOTHING) + target * SMOOTHING).clamp(self.min, self.max);
        self.limit()
    }
}

/// How a request that held a slot ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It was answered: its latency is a sample.
    Served,
    /// It ran out of time, or was dropped unfinished: overload.
    Overloaded,
    /// Neither (a failure that says nothing about latency, a live feed's head).
    Ignored,
}

/// One gateway's limit, its in-flight count, and the window being measured.
#[derive(Debug)]
pub struct Limiter {
    mode: ConcurrencyMode,
    in_flight: AtomicUsize,
    limit: AtomicUsize,
    /// The window so far: samples, their summed latency (µs), overloaded requests, peak in
    /// flight, requests shed.
    samples: AtomicU64,
    latency_micros: AtomicU64,
    overloaded: AtomicU64,
    peak_in_flight: AtomicUsize,
    shed: AtomicU64,
    /// When the window may close, in µs since `epoch`.
    window_ends: AtomicU64,
    epoch: Instant,
    closing: Mutex<Closing>,
}

/// What only the request closing a window touches.
#[derive(Debug)]
struct Closing {
    gradient: Gradient,
    /// When shedding was last logged (at most once a second).
    warned_at: Option<Instant>,
}

impl Limiter {
    pub fn new(limits: &ConcurrencyLimits) -> Arc<Self> {
        let gradient = Gradient::new(limits);
        let limit = gradient.limit();
        twtr_common::metrics::http_concurrency_limit(limit);
        Arc::new(Self {
            mode: limits.mode,
            in_flight: AtomicUsize::new(0),
            limit: AtomicUsize::new(limit),
            samples: AtomicU64::new(0),
            latency_micros: AtomicU64::new(0),
            overloaded: AtomicU64::new(0),
            peak_in_flight: AtomicUsize::new(0),
            shed: AtomicU64::new(0),
            window_ends: AtomicU64::new(micros(WINDOW)),
            epoch: Instant::now(),
            closing: Mutex::new(Closing {
                gradient,
                warned_at: None,
            }),
        })
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// Requests holding a slot now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// A slot, or `None` at once when every slot under the limit is taken.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        let limit = self.limit();
        let mut held = self.in_flight.load(Ordering::Relaxed);
        loop {
            if held >= limit {
                self.shed.fetch_add(1, Ordering::Relaxed);
                twtr_common::metrics::http_shed();
                return None;
            }
            match self.in_flight.compare_exchange_weak(
                held,
                held + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => held = now,
            }
        }
        self.peak_in_flight.fetch_max(held + 1, Ordering::Relaxed);
        Some(Permit {
            limiter: Arc::clone(self),
            started: Instant::now(),
            finished: false,
        })
    }

    /// Counts one request's outcome into the window, and closes the window when it is due at
    /// `now`.
    pub fn record(&self, outcome: Outcome, latency: Duration, now: Instant) {
        match outcome {
            Outcome::Served => {
                self.samples.fetch_add(1, Ordering::Relaxed);
                self.latency_micros
                    .fetch_add(micros(latency), Ordering::Relaxed);
            }
            Outcome::Overloaded => {
                self.overloaded.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Ignored => {}
        }
        let at = micros(now.saturating_duration_since(self.epoch));
        if at < self.window_ends.load(Ordering::Relaxed)
            || (self.samples.load(Ordering::Relaxed) < MIN_SAMPLES
                && self.overloaded.load(Ordering::Relaxed) == 0)
        {
            return;
        }
        let mut closing = match self.closing.try_lock() {
            Ok(closing) => closing,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        if at < self.window_ends.load(Ordering::Relaxed) {
            return; // another request closed it a moment ago
        }
        let samples = self.samples.swap(0, Ordering::Relaxed);
        let window = Window {
            samples,
            mean: Duration::from_micros(
                self.latency_micros.swap(0, Ordering::Relaxed) / samples.max(1),
            ),
            overloaded: self.overloaded.swap(0, Ordering::Relaxed),
            peak_in_flight: self
                .peak_in_flight
                .swap(self.in_flight(), Ordering::Relaxed),
            shed: self.shed.swap(0, Ordering::Relaxed),
        };
        let shed = window.shed;
        let limit = match self.mode {
            ConcurrencyMode::Adaptive => closing.gradient.update(&window),
            ConcurrencyMode::Fixed => self.limit(),
        };
        self.limit.store(limit, Ordering::Relaxed);
        self.window_ends
            .store(at + micros(WINDOW), Ordering::Relaxed);
        twtr_common::metrics::http_concurrency_limit(limit);
        if shed > 0
            && closing
                .warned_at
                .is_none_or(|at| now.saturating_duration_since(at) >= Duration::from_secs(1))
        {
            closing.warned_at = Some(now);
            tracing::warn!(
                shed,
                limit,
                mean_ms = window.mean.as_secs_f64() * 1e3,
                baseline_ms = closing
                    .gradient
                    .baseline()
                    .map_or(0.0, |b| b.as_secs_f64() * 1e3),
                "shedding load: too many requests in flight"
            );
        }
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// A request's slot: freed when dropped. Dropped without [`Permit::finish`], the request was
/// abandoned unfinished (its deadline passed, or its client went): that counts as overload.
#[derive(Debug)]
pub struct Permit {
    limiter: Arc<Limiter>,
    started: Instant,
    finished: bool,
}

impl Permit {
    /// Frees the slot, counting how the request ended.
    pub fn finish(mut self, outcome: Outcome) {
        self.finished = true;
        self.limiter
            .record(outcome, self.started.elapsed(), Instant::now());
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limiter.in_flight.fetch_sub(1, Ordering::AcqRel);
        if !self.finished {
            self.limiter
                .record(Outcome::Overloaded, self.started.elapsed(), Instant::now());
        }
    }
}

/// A request refused because every slot under the limit was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shed;

impl fmt::Display for Shed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("too many requests in flight")
    }
}

impl std::error::Error for Shed {}

/// Puts a [`Limiter`] in front of a service (the API's routes).
#[derive(Debug, Clone)]
pub struct ConcurrencyLimitLayer {
    limiter: Arc<Limiter>,
}

impl ConcurrencyLimitLayer {
    pub fn new(limiter: Arc<Limiter>) -> Self {
        Self { limiter }
    }
}

impl<S> Layer<S> for ConcurrencyLimitLayer {
    type Service = ConcurrencyLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ConcurrencyLimit {
            inner,
            limiter: Arc::clone(&self.limiter),
        }
    }
}

/// See [`ConcurrencyLimitLayer`]: fails with [`Shed`] at once over the limit.
#[derive(Debug, Clone)]
pub struct ConcurrencyLimit<S> {
    inner: S,
    limiter: Arc<Limiter>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, Request, B> Service<Request> for ConcurrencyLimit<S>
where
    S: Service<Request, Response = http::Response<B>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<B>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let Some(permit) = self.limiter.try_acquire() else {
            return Box::pin(std::future::ready(Err(Shed.into())));
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await.map_err(Into::into);
            permit.finish(match &response {
                Ok(response) => outcome(response),
                Err(_) => Outcome::Ignored,
            });
            response
        })
    }
}

/// What a response says about latency: a 504 is overload; another server error (a service
/// down, a bug) and a live feed's head say nothing; anything else was served.
fn outcome<B>(response: &http::Response<B>) -> Outcome {
    let status = response.status();
    let streaming = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if status == StatusCode::GATEWAY_TIMEOUT {
        Outcome::Overloaded
    } else if status.is_server_error() || streaming {
        Outcome::Ignored
    } else {
        Outcome::Served
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Adaptive limits with a target below every latency these tests feed (the gradient
    /// alone decides), but for the tests of the target itself.
    fn adaptive(min: usize, initial: usize, max: usize) -> ConcurrencyLimits {
        ConcurrencyLimits {
            mode: ConcurrencyMode::Adaptive,
            min,
            initial,
            max,
            target: Duration::from_micros(1),
        }
    }

    /// A window of a gateway held at its limit (nothing shed) whose requests took `mean`.
    fn busy(gradient: &Gradient, mean: Duration) -> Window {
        Window {
            samples: 100,
            mean,
            overloaded: 0,
            peak_in_flight: gradient.limit(),
            shed: 0,
        }
    }

    fn ms(n: f64) -> Duration {
        Duration::from_secs_f64(n / 1e3)
    }

    #[test]
    fn steady_low_latency_grows_the_limit_to_its_max() {
        let mut gradient = Gradient::new(&adaptive(8, 64, 1024));
        let mut last = gradient.limit();
        for _ in 0..1000 {
            let limit = gradient.update(&busy(&gradient, ms(5.0)));
            assert!(limit >= last, "{limit} < {last}");
            last = limit;
        }
        assert_eq!(gradient.limit(), 1024);
    }

    #[test]
    fn rising_latency_shrinks_the_limit_to_its_min() {
        let mut gradient = Gradient::new(&adaptive(8, 512, 1024));
        for _ in 0..10 {
            gradient.update(&busy(&gradient, ms(5.0)));
        }
        let before = gradient.limit();
        for step in 0..100 {
            gradient.update(&busy(&gradient, ms(5.0 + f64::from(step))));
        }
        assert!(gradient.limit() < before / 4, "{}", gradient.limit());
        for _ in 0..200 {
            gradient.update(&busy(&gradient, ms(200.0)));
        }
        assert_eq!(gradient.limit(), 8);
        // 30 s of high latency moved the baseline part of the way up: slowly.
        assert!(gradient.baseline().is_some_and(|b| b < ms(100.0)));
    }

    #[test]
    fn latency_within_the_target_never_shrinks_the_limit_nor_probes() {
        let limits = ConcurrencyLimits {
            target: ms(50.0),
            ..adaptive(8, 64, 1024)
        };
        let mut gradient = Gradient::new(&limits);
        // A 2 ms baseline, then ten times that under load, while shedding: within the target.
        for _ in 0..10 {
            gradient.update(&busy(&gradient, ms(2.0)));
        }
        let mut last = gradient.limit();
        for _ in 0..200 {
            let window = Window {
                shed: 5,
                ..busy(&gradient, ms(20.0))
            };
            let limit = gradient.update(&window);
            assert!(limit >= last, "{limit} < {last}");
            last = limit;
        }
        // Over the target, it shrinks.
        for _ in 0..200 {
            gradient.update(&busy(&gradient, ms(400.0)));
        }
        assert_eq!(gradient.limit(), 8);
    }

    #[test]
    fn timeouts_and_abandoned_requests_shrink_the_limit_however_fast_the_rest() {
        let mut gradient = Gradient::new(&adaptive(8, 512, 1024));
        let mut last = gradient.limit();
        for _ in 0..100 {
            let window = Window {
                overloaded: 3,
                ..busy(&gradient, ms(1.0))
            };
            let limit = gradient.update(&window);
            assert!(limit <= last, "{limit} > {last}");
            last = limit;
        }
        assert_eq!(gradient.limit(), 8);
    }

    #[test]
    fn a_window_that_never_reached_the_limit_does_not_move_it() {
        let mut gradient = Gradient::new(&adaptive(8, 64, 1024));
        for _ in 0..100 {
            let quiet = Window {
                peak_in_flight: 10,
                ..busy(&gradient, ms(2.0))
            };
            assert_eq!(gradient.update(&quiet), 64);
        }
        assert_eq!(gradient.baseline(), Some(ms(2.0)));
        assert_eq!(gradient.update(&Window::default()), 64, "an empty window");
    }

    /// A saturated server under a closed loop of many more clients than the limit: requests
    /// finish at `throughput` whatever the limit, so latency is the limit over it (Little's
    /// law), never below what one request costs alone.
    fn saturated(gradient: &Gradient, alone: Duration, throughput: f64) -> Window {
        let queued = Duration::from_secs_f64(gradient.limit() as f64 / throughput);
        Window {
            shed: 1000,
            ..busy(gradient, alone.max(queued))
        }
    }

    #[test]
    fn a_gateway_started_under_overload_probes_and_bounds_its_latency() {
        // 2 ms alone, 2,500 requests a second: at the initial limit (64) requests queue for
        // 25 ms, and at the old fixed limit (1024) for 410 ms.
        let mut gradient = Gradient::new(&adaptive(8, 64, 1024));
        let mut worst = Duration::ZERO;
        for window in 0..2000 {
            let sample = saturated(&gradient, ms(2.0), 2500.0);
            if window > 100 {
                worst = worst.max(sample.mean);
            }
            gradient.update(&sample);
            assert!((8..=1024).contains(&gradient.limit()));
        }
        // The probes learned the latency at the minimum limit (3.2 ms here; it creeps up between
        // them), and the limit
        // settled where latency stays within the tolerance of it.
        let baseline = gradient.baseline().unwrap_or_default();
        assert!(baseline <= ms(4.0), "{baseline:?}");
        assert!(worst <= ms(10.0), "{worst:?} (limit {})", gradient.limit());
    }

    #[test]
    fn probes_wait_between_them_and_restore_the_limit() {
        let mut gradient = Gradient::new(&adaptive(8, 64, 1024));
        let shedding = |g: &Gradient| Window {
            shed: 5,
            ..busy(g, ms(2.0))
        };
        // The first shedding window probes at once.
        assert_eq!(gradient.update(&shedding(&gradient)), 8);
        for _ in 1..PROBE_WINDOWS {
            assert_eq!(gradient.update(&shedding(&gradient)), 8);
        }
        assert_eq!(
            gradient.update(&shedding(&gradient)),
            64,
            "back after the probe"
        );
        for _ in 0..PROBE_EVERY - 1 {
            assert!(gradient.update(&shedding(&gradient)) > 8);
        }
        assert_eq!(gradient.update(&shedding(&gradient)), 8, "the next probe");
    }

    #[test]
    fn a_probe_measures_only_once_the_old_requests_have_drained() {
        let mut gradient = Gradient::new(&adaptive(8, 64, 1024));
        let window = |peak_in_flight, mean| Window {
            samples: 50,
            mean,
            overloaded: 0,
            peak_in_flight,
            shed: 100,
        };
        assert_eq!(gradient.update(&window(64, ms(40.0))), 8, "probing");
        // Still draining what the old limit let in: slow, and not the baseline.
        for _ in 0..4 {
            assert_eq!(gradient.update(&window(30, ms(30.0))), 8);
        }
        for _ in 0..PROBE_WINDOWS - 1 {
            assert_eq!(gradient.update(&window(8, ms(3.0))), 8);
        }
        assert_eq!(gradient.update(&window(8, ms(2.5))), 64, "done");
        assert_eq!(gradient.baseline(), Some(ms(2.5)));

        // A probe that never drains gives up, keeping the baseline it had.
        for _ in 0..PROBE_EVERY {
            gradient.update(&window(gradient.limit(), ms(2.5)));
        }
        assert_eq!(gradient.limit(), 8, "the next probe");
        for _ in 0..PROBE_PATIENCE - 1 {
            assert_eq!(gradient.update(&window(30, ms(30.0))), 8);
        }
        assert!(gradient.update(&window(30, ms(30.0))) > 8, "gave up");
        assert_eq!(gradient.baseline(), Some(ms(2.5)));
    }

    #[test]
    fn the_limit_never_leaves_its_bounds() {
        // Any sequence of windows, from a fixed-seed generator.
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for (min, initial, max) in [(8, 64, 1024), (1, 1, 1), (5, 500, 20), (3, 1, 7)] {
            let mut gradient = Gradient::new(&adaptive(min, initial, max));
            let (lo, hi) = (min.min(max), max);
            assert!((lo..=hi).contains(&gradient.limit()));
            for _ in 0..5000 {
                let window = Window {
                    samples: next(3) * next(100),
                    mean: Duration::from_micros(next(2_000_000)),
                    overloaded: next(4) / 3,
                    peak_in_flight: next(2000) as usize,
                    shed: next(2) * next(100),
                };
                let limit = gradient.update(&window);
                assert!((lo..=hi).contains(&limit), "{limit} outside [{lo}, {hi}]");
            }
        }
    }

    #[test]
    fn over_the_limit_requests_are_refused_at_once_while_those_in_flight_finish() {
        let limiter = Limiter::new(&ConcurrencyLimits::fixed(2));
        let first = limiter.try_acquire().expect("a slot");
        let second = limiter.try_acquire().expect("a slot");
        assert!(limiter.try_acquire().is_none());
        assert!(limiter.try_acquire().is_none());
        assert_eq!(limiter.in_flight(), 2);
        first.finish(Outcome::Served);
        let third = limiter.try_acquire().expect("the freed slot");
        assert!(limiter.try_acquire().is_none());
        // An abandoned request frees its slot too.
        drop(second);
        drop(third);
        assert_eq!(limiter.in_flight(), 0);
        assert_eq!(limiter.limit(), 2);
    }

    #[test]
    fn the_limiter_closes_a_window_once_it_is_due_and_has_samples() {
        let limiter = Limiter::new(&adaptive(8, 64, 1024));
        let start = limiter.epoch;
        // Hold the limit's worth of slots, so the window is not app-limited.
        let held: Vec<_> = (0..64).filter_map(|_| limiter.try_acquire()).collect();
        assert_eq!(held.len(), 64);
        // Not yet due: nothing moves, however many samples.
        for _ in 0..100 {
            limiter.record(Outcome::Served, ms(2.0), start + ms(50.0));
        }
        assert_eq!(limiter.limit(), 64);
        // Due: low latency at the limit, so it grows.
        limiter.record(Outcome::Served, ms(2.0), start + WINDOW);
        assert!(limiter.limit() > 64, "{}", limiter.limit());
        let grown = limiter.limit();
        // The next window is due one window later, and then a timeout shrinks the limit.
        limiter.record(Outcome::Overloaded, ms(100.0), start + WINDOW + ms(50.0));
        assert_eq!(limiter.limit(), grown);
        limiter.record(Outcome::Overloaded, ms(100.0), start + WINDOW * 2);
        assert!(limiter.limit() < grown, "{}", limiter.limit());
        drop(held);
        assert_eq!(limiter.in_flight(), 0);
    }

    #[test]
    fn a_fixed_limit_stays_put() {
        let limiter = Limiter::new(&ConcurrencyLimits::fixed(3));
        let start = limiter.epoch;
        for i in 0..100u32 {
            limiter.record(Outcome::Overloaded, ms(500.0), start + WINDOW * i);
        }
        assert_eq!(limiter.limit(), 3);
    }
}
