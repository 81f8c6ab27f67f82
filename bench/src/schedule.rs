//! The open-loop arrival schedule and the operation mix.
//!
//! Open loop: request `i` is *intended* at `start + i / rate`, whatever happened to the ones
//! before it, and its latency is measured from that intended time. A server that stalls for a
//! second therefore shows a second of queueing in every request that should have gone out
//! meanwhile, instead of the one slow request a closed loop would record (coordinated omission).

use std::ops::Range;
use std::time::Duration;

/// Requests at a fixed rate for a fixed time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    rate: f64,
    count: u64,
}

impl Schedule {
    /// `rate` requests per second for `duration` (at least one request when both are positive).
    pub fn new(rate: f64, duration: Duration) -> Self {
        let count = if rate > 0.0 {
            (rate * duration.as_secs_f64()).floor() as u64
        } else {
            0
        };
        Self { rate, count }
    }

    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// When request `i` is intended, from the start of the run.
    pub fn intended(&self, i: u64) -> Duration {
        Duration::from_secs_f64(i as f64 / self.rate)
    }

    /// The requests from `next` on that are due `elapsed` into the run (possibly none).
    pub fn due(&self, next: u64, elapsed: Duration) -> Range<u64> {
        if next >= self.count {
            return next..next;
        }
        // Request i is due when intended(i) <= elapsed. Start from elapsed * rate and correct
        // for rounding, so that `due` agrees exactly with `intended` (a sender that sleeps until
        // `intended(next)` must then find `next` due, or it would spin).
        let mut end = ((elapsed.as_secs_f64() * self.rate).floor() as u64)
            .saturating_add(1)
            .clamp(next, self.count);
        while end < self.count && self.intended(end) <= elapsed {
            end += 1;
        }
        while end > next && self.intended(end - 1) > elapsed {
            end -= 1;
        }
        next..end
    }
}

/// A weighted choice of operations, e.g. 60% feed reads, 30% timelines, 10% posts.
#[derive(Debug, Clone, PartialEq)]
pub struct Mix<T> {
    choices: Vec<(T, f64)>,
    total: f64,
}

impl<T: Copy> Mix<T> {
    /// `choices`: (operation, weight), weights positive.
    pub fn new(choices: Vec<(T, f64)>) -> Self {
        let total = choices.iter().map(|(_, w)| w.max(0.0)).sum();
        Self { choices, total }
    }

    /// The operation for `u` in `[0, 1)`: each gets a share of the interval by weight.
    pub fn pick(&self, u: f64) -> Option<T> {
        let mut x = u * self.total;
        for (op, weight) in &self.choices {
            let weight = weight.max(0.0);
            if x < weight {
                return Some(*op);
            }
            x -= weight;
        }
        self.choices.last().map(|(op, _)| *op)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedule_spaces_requests_evenly() {
        let s = Schedule::new(2_000.0, Duration::from_secs(3));
        assert_eq!(s.len(), 6_000);
        assert_eq!(s.intended(0), Duration::ZERO);
        assert_eq!(s.intended(1), Duration::from_micros(500));
        assert_eq!(s.intended(2_000), Duration::from_secs(1));
    }

    #[test]
    fn due_catches_up_after_a_stall_without_skipping_or_repeating() {
        let s = Schedule::new(1_000.0, Duration::from_secs(1));
        assert_eq!(s.due(0, Duration::ZERO), 0..1);
        assert_eq!(s.due(1, Duration::from_micros(999)), 1..1);
        assert_eq!(s.due(1, Duration::from_millis(1)), 1..2);
        // The sender was stalled for 100 ms: everything intended meanwhile is due now.
        assert_eq!(s.due(2, Duration::from_millis(101)), 2..102);
        // And nothing past the end of the run.
        assert_eq!(s.due(102, Duration::from_secs(10)), 102..1_000);
        assert_eq!(s.due(1_000, Duration::from_secs(10)), 1_000..1_000);
    }

    #[test]
    fn walking_the_schedule_sends_each_request_once() {
        let s = Schedule::new(333.0, Duration::from_secs(2));
        let mut next = 0;
        let mut sent = 0;
        let mut t = Duration::ZERO;
        while next < s.len() {
            let due = s.due(next, t);
            for i in due.clone() {
                assert!(s.intended(i) <= t);
            }
            sent += due.end - due.start;
            next = due.end;
            t += Duration::from_micros(1_700);
        }
        assert_eq!(sent, s.len());
    }

    #[test]
    fn the_request_intended_now_is_due_now_whatever_the_rounding() {
        for rate in [3.0, 7.0, 100.0, 333.0, 2_000.0] {
            let s = Schedule::new(rate, Duration::from_secs(3));
            for i in 0..s.len() {
                assert_eq!(s.due(i, s.intended(i)).start, i);
                assert!(s.due(i, s.intended(i)).end > i, "rate {rate}, request {i}");
            }
        }
    }

    #[test]
    fn a_zero_rate_sends_nothing() {
        let s = Schedule::new(0.0, Duration::from_secs(5));
        assert!(s.is_empty());
        assert_eq!(s.due(0, Duration::from_secs(5)), 0..0);
    }

    #[test]
    fn a_mix_gives_each_operation_its_share() {
        let mix = Mix::new(vec![('f', 60.0), ('t', 30.0), ('p', 10.0)]);
        let mut counts = [0; 3];
        for i in 0..1000 {
            match mix.pick(i as f64 / 1000.0) {
                Some('f') => counts[0] += 1,
                Some('t') => counts[1] += 1,
                Some('p') => counts[2] += 1,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(counts, [600, 300, 100]);
        assert_eq!(Mix::<char>::new(vec![]).pick(0.5), None);
    }
}
