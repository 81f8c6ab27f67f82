//! Latency recording: one [`hdrhistogram`] per operation for the whole run, plus one per second
//! for the latency-over-time plot. Latencies are microseconds; a value beyond the histogram's
//! range is clamped to its top rather than lost.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// The largest latency recorded exactly: a minute.
const HIGHEST_MICROS: u64 = 60_000_000;
/// Significant decimal digits kept: 0.1% error at any magnitude.
const SIGFIGS: u8 = 3;

/// The percentiles every report shows.
pub const PERCENTILES: [f64; 4] = [50.0, 90.0, 99.0, 99.9];

/// Latencies of one operation during one run.
#[derive(Debug, Clone)]
pub struct Recorder {
    total: Histogram<u64>,
    /// `per_second[s]`: requests whose intended send time fell in second `s` of the run.
    per_second: Vec<Histogram<u64>>,
    errors: u64,
    /// Requests the gateway shed (503 at once over its concurrency limit): counted apart from
    /// errors, and not in the latency histograms.
    shed: u64,
    /// The first few distinct error messages, for the report.
    error_samples: Vec<String>,
}

fn histogram() -> Histogram<u64> {
    // The bounds are constants that `new_with_bounds` accepts; failing would be a bug here.
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1, HIGHEST_MICROS, SIGFIGS).expect("valid histogram bounds")
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    pub fn new() -> Self {
        Self {
            total: histogram(),
            per_second: Vec::new(),
            errors: 0,
            shed: 0,
            error_samples: Vec::new(),
        }
    }

    /// Records a latency for a request intended at `second` (from the start of the run).
    pub fn record(&mut self, second: usize, latency: Duration) {
        let micros = (latency.as_micros().min(u128::from(HIGHEST_MICROS)) as u64).max(1);
        self.total.saturating_record(micros);
        while self.per_second.len() <= second {
            self.per_second.push(histogram());
        }
        self.per_second[second].saturating_record(micros);
    }

    /// Counts a failed request (it is not in the latency histograms).
    pub fn error(&mut self, message: impl Into<String>) {
        self.errors += 1;
        let message = message.into();
        if self.error_samples.len() < 5 && !self.error_samples.contains(&message) {
            self.error_samples.push(message);
        }
    }

    /// Counts a request the gateway shed.
    pub fn shed(&mut self) {
        self.shed += 1;
    }

    /// Adds everything `other` recorded.
    pub fn merge(&mut self, other: &Recorder) {
        // Both have the same bounds, so adding cannot fail.
        let _ = self.total.add(&other.total);
        while self.per_second.len() < other.per_second.len() {
            self.per_second.push(histogram());
        }
        for (mine, theirs) in self.per_second.iter_mut().zip(&other.per_second) {
            let _ = mine.add(theirs);
        }
        self.errors += other.errors;
        self.shed += other.shed;
        for sample in &other.error_samples {
            if self.error_samples.len() < 5 && !self.error_samples.contains(sample) {
                self.error_samples.push(sample.clone());
            }
        }
    }

    pub fn count(&self) -> u64 {
        self.total.len()
    }

    /// The summary a report shows, for a run that lasted `elapsed`.
    pub fn summary(&self, elapsed: Duration) -> Summary {
        Summary {
            ok: self.count(),
            errors: self.errors,
            shed: self.shed,
            error_samples: self.error_samples.clone(),
            throughput: rate(self.count(), elapsed),
            mean_ms: self.total.mean() / 1000.0,
            percentiles_ms: PERCENTILES
                .iter()
                .map(|q| (*q, millis(self.total.value_at_percentile(*q))))
                .collect(),
            max_ms: millis(self.total.max()),
            spectrum: spectrum(&self.total),
            timeline: self
                .per_second
                .iter()
                .enumerate()
                .map(|(second, h)| TimelinePoint {
                    second: second as u32,
                    count: h.len(),
                    p50_ms: millis(h.value_at_percentile(50.0)),
                    p99_ms: millis(h.value_at_percentile(99.0)),
                    max_ms: millis(h.max()),
                })
                .collect(),
        }
    }
}

fn millis(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

/// Events per second.
pub fn rate(count: u64, elapsed: Duration) -> f64 {
    if elapsed.is_zero() {
        return 0.0;
    }
    count as f64 / elapsed.as_secs_f64()
}

/// Latency at percentiles spaced evenly in "nines" (50, 75, 87.5, ... up to 99.99), the usual
/// shape of an HdrHistogram percentile plot.
fn spectrum(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut points = Vec::new();
    let mut missing = 1.0_f64; // 1 - quantile
    while missing >= 1e-4 {
        let q = (1.0 - missing) * 100.0;
        points.push((q, millis(h.value_at_percentile(q))));
        missing /= 10f64.powf(0.1);
    }
    points.push((100.0, millis(h.max())));
    points
}

/// One operation's results, as stored in `results.json` and shown in the report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub ok: u64,
    pub errors: u64,
    /// Requests the gateway shed at once (503 over its concurrency limit).
    #[serde(default)]
    pub shed: u64,
    pub error_samples: Vec<String>,
    /// Successful requests per second over the measured period.
    pub throughput: f64,
    pub mean_ms: f64,
    /// (percentile, milliseconds) for each of [`PERCENTILES`].
    pub percentiles_ms: Vec<(f64, f64)>,
    pub max_ms: f64,
    /// (percentile, milliseconds) from 0 to 99.99 and the max, for the distribution plot.
    pub spectrum: Vec<(f64, f64)>,
    pub timeline: Vec<TimelinePoint>,
}

impl Summary {
    /// The latency at percentile `q` (one of [`PERCENTILES`]), in milliseconds.
    pub fn at(&self, q: f64) -> Option<f64> {
        self.percentiles_ms
            .iter()
            .find(|(p, _)| (*p - q).abs() < 1e-9)
            .map(|(_, ms)| *ms)
    }
}

/// Latency of the requests intended in one second of the run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TimelinePoint {
    pub second: u32,
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn percentiles_of_a_uniform_run_are_where_they_belong() {
        let mut r = Recorder::new();
        // 0.1 ms, 0.2 ms, ... 1000 ms.
        for n in 1..=10_000 {
            r.record(0, Duration::from_micros(n * 100));
        }
        let s = r.summary(Duration::from_secs(20));
        assert_eq!(s.ok, 10_000);
        assert!((s.throughput - 500.0).abs() < 1e-9);
        // Three significant digits: within 0.1% of the order statistic (give or take one rank).
        for (q, exact) in [(50.0, 500.0), (90.0, 900.0), (99.0, 990.0), (99.9, 999.0)] {
            let got = s.at(q).unwrap();
            assert!((got - exact).abs() <= exact * 0.001 + 0.1, "p{q}: {got}");
        }
        assert!((s.max_ms - 1000.0).abs() <= 1.0);
        assert!((s.mean_ms - 500.5).abs() <= 1.0);
    }

    #[test]
    fn one_slow_request_in_ten_thousand_shows_in_the_max_not_at_p999() {
        let mut r = Recorder::new();
        for _ in 0..9_999 {
            r.record(0, ms(1));
        }
        r.record(0, ms(2000));
        let s = r.summary(Duration::from_secs(1));
        assert!(s.at(99.0).unwrap() < 1.01);
        assert!(s.at(99.9).unwrap() < 1.01);
        assert!(s.max_ms > 1990.0);
        // 9,999 of 10,000 at 1 ms: the spectrum's top point carries the outlier.
        assert_eq!(s.spectrum.last().map(|p| p.0), Some(100.0));
        assert!(s.spectrum.last().unwrap().1 > 1990.0);
    }

    #[test]
    fn per_second_buckets_follow_the_intended_time() {
        let mut r = Recorder::new();
        r.record(0, ms(1));
        r.record(2, ms(30));
        r.record(2, ms(10));
        let s = r.summary(Duration::from_secs(3));
        let counts: Vec<u64> = s.timeline.iter().map(|p| p.count).collect();
        assert_eq!(counts, vec![1, 0, 2]);
        assert!((s.timeline[2].max_ms - 30.0).abs() < 0.1);
    }

    #[test]
    fn merging_adds_counts_and_errors_and_keeps_samples_distinct() {
        let (mut a, mut b) = (Recorder::new(), Recorder::new());
        a.record(0, ms(5));
        a.error("503");
        b.record(1, ms(7));
        b.error("503");
        b.error("timeout");
        a.merge(&b);
        let s = a.summary(Duration::from_secs(1));
        assert_eq!((s.ok, s.errors), (2, 3));
        assert_eq!(
            s.error_samples,
            vec!["503".to_owned(), "timeout".to_owned()]
        );
        assert_eq!(s.timeline.len(), 2);
    }

    #[test]
    fn latencies_past_the_range_are_clamped_not_dropped() {
        let mut r = Recorder::new();
        r.record(0, Duration::from_secs(3600));
        r.record(0, Duration::ZERO);
        assert_eq!(r.count(), 2);
        let s = r.summary(Duration::from_secs(1));
        assert!(s.max_ms >= 59_000.0);
    }

    #[test]
    fn an_empty_run_has_no_rate_and_no_spectrum() {
        let s = Recorder::new().summary(Duration::ZERO);
        assert_eq!(s.throughput, 0.0);
        assert!(s.spectrum.is_empty());
    }
}
