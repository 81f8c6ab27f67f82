//! Snowflake-style IDs: 41 bits of milliseconds since [`EPOCH_MS`], 10 bits of worker, 12 bits of
//! sequence. IDs from one generator strictly increase; IDs from generators with different worker
//! numbers never collide. Sorting by ID sorts by creation time, which is what makes "newest first"
//! a plain descending scan.

use std::sync::Mutex;

use crate::clock;

/// 2024-01-01T00:00:00Z, the zero of the ID clock.
pub const EPOCH_MS: i64 = 1_704_067_200_000;
const WORKER_BITS: u32 = 10;
const SEQUENCE_BITS: u32 = 12;
/// The largest worker number an ID can carry.
pub const MAX_WORKER: u16 = (1 << WORKER_BITS) - 1;
const MAX_SEQUENCE: u64 = (1 << SEQUENCE_BITS) - 1;

/// Hands out unique, increasing IDs. Share one per process (it is cheap to lock).
#[derive(Debug)]
pub struct IdGenerator {
    worker: u64,
    /// (milliseconds since the epoch of the last ID, sequence used within that millisecond)
    last: Mutex<(i64, u64)>,
}

impl IdGenerator {
    /// A generator for `worker` (0..=[`MAX_WORKER`]); every live replica needs its own number.
    pub fn new(worker: u16) -> Result<Self, InvalidWorker> {
        if worker > MAX_WORKER {
            return Err(InvalidWorker(worker));
        }
        Ok(Self {
            worker: u64::from(worker),
            last: Mutex::new((0, 0)),
        })
    }

    pub fn next_id(&self) -> u64 {
        self.next_id_at(clock::now_millis())
    }

    /// The ID for a clock reading of `now_ms`. If the clock stands still past 4096 IDs in one
    /// millisecond, or steps backwards, the generator borrows from the next millisecond rather
    /// than waiting or repeating itself.
    fn next_id_at(&self, now_ms: i64) -> u64 {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (last_ms, last_seq) = *last;
        let elapsed = (now_ms - EPOCH_MS).max(0);
        let (ms, seq) = if elapsed > last_ms {
            (elapsed, 0)
        } else if last_seq < MAX_SEQUENCE {
            (last_ms, last_seq + 1)
        } else {
            (last_ms + 1, 0)
        };
        *last = (ms, seq);
        // `ms` is non-negative and below 2^41 for the next seventy years.
        let ms = u64::try_from(ms).unwrap_or(0);
        (ms << (WORKER_BITS + SEQUENCE_BITS)) | (self.worker << SEQUENCE_BITS) | seq
    }
}

/// The Unix time in milliseconds at which `id` was generated.
pub const fn millis_of(id: u64) -> i64 {
    ((id >> (WORKER_BITS + SEQUENCE_BITS)) as i64) + EPOCH_MS
}

/// The smallest ID generated at Unix time `millis` (worker 0, sequence 0): every ID minted at
/// or after `millis` is at least this, every ID minted before it is smaller. Lets a time range
/// be read as an ID range (`seq >= first_id_at(from)`).
pub const fn first_id_at(millis: i64) -> u64 {
    let elapsed = millis - EPOCH_MS;
    if elapsed <= 0 {
        return 0;
    }
    (elapsed as u64) << (WORKER_BITS + SEQUENCE_BITS)
}

#[derive(Debug, thiserror::Error)]
#[error("worker number {0} is out of range (0..={MAX_WORKER})")]
pub struct InvalidWorker(pub u16);

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = EPOCH_MS + 1_000_000;

    #[test]
    fn ids_strictly_increase_within_one_millisecond() {
        let ids = IdGenerator::new(3).unwrap();
        let mut prev = 0;
        for _ in 0..10_000 {
            let id = ids.next_id_at(NOW);
            assert!(id > prev);
            prev = id;
        }
    }

    #[test]
    fn ids_keep_increasing_when_the_clock_steps_back() {
        let ids = IdGenerator::new(0).unwrap();
        let a = ids.next_id_at(NOW);
        let b = ids.next_id_at(NOW - 5_000);
        assert!(b > a);
    }

    #[test]
    fn workers_never_collide() {
        let a = IdGenerator::new(1).unwrap();
        let b = IdGenerator::new(2).unwrap();
        let from_a: std::collections::HashSet<u64> = (0..5000).map(|_| a.next_id_at(NOW)).collect();
        assert!((0..5000).all(|_| !from_a.contains(&b.next_id_at(NOW))));
    }

    #[test]
    fn an_id_remembers_its_millisecond() {
        let ids = IdGenerator::new(MAX_WORKER).unwrap();
        assert_eq!(millis_of(ids.next_id_at(NOW)), NOW);
    }

    #[test]
    fn first_id_at_bounds_the_ids_of_a_millisecond() {
        let ids = IdGenerator::new(MAX_WORKER).unwrap();
        let id = ids.next_id_at(NOW);
        assert!(first_id_at(NOW) <= id && id < first_id_at(NOW + 1));
        assert_eq!(millis_of(first_id_at(NOW)), NOW);
        assert_eq!(
            first_id_at(EPOCH_MS - 5),
            0,
            "before the epoch clamps to zero"
        );
    }

    #[test]
    fn worker_out_of_range_is_refused() {
        assert!(IdGenerator::new(MAX_WORKER + 1).is_err());
    }
}
