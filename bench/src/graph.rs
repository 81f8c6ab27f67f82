//! The seeded data set, computed from a seed alone so that `twtr seed` and `twtr bench` agree
//! on it without sharing anything but the seed and the sizes.
//!
//! Users are numbered `0..users`. The follow graph is heavy-tailed like a real network's:
//! - user 0 is the "official account" every other user follows (so the largest author has
//!   `users - 1` followers: 10,000 with 10,001 users);
//! - each user follows a Pareto-distributed number of others (most a few, some hundreds),
//!   picked with Zipf popularity (user `r` is chosen with weight `1 / (r + 1)`), so a few
//!   accounts have thousands of followers and most have a handful.
//!
//! Tweets are spread evenly over authors (`tweet_author`), so every feed has some.

use std::collections::HashSet;

use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GraphSpec {
    pub users: usize,
    pub seed: u64,
    /// Mean number of accounts a user follows besides the official one.
    pub mean_follows: usize,
}

/// A follow graph: `follows[i] = (follower, followee)`, in the order seeding sends them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Graph {
    pub users: usize,
    pub follows: Vec<(u32, u32)>,
}

/// The most accounts one user follows.
const MAX_FOLLOWS: usize = 1_000;
/// Pareto shape of the out-degree: 2 gives a finite mean and a long tail.
const PARETO_ALPHA: f64 = 2.0;

/// Generates the graph for `spec`; the same spec always yields the same graph.
pub fn generate(spec: GraphSpec) -> Graph {
    let n = spec.users;
    let mut follows = Vec::new();
    if n < 2 {
        return Graph { users: n, follows };
    }
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    // Cumulative Zipf weights over users 1..n (user 0 is followed by everyone already).
    let mut cumulative = Vec::with_capacity(n - 1);
    let mut total = 0.0;
    for rank in 1..n {
        total += 1.0 / rank as f64;
        cumulative.push(total);
    }
    // Pareto with mean `mean_follows`: x_min = mean * (alpha - 1) / alpha.
    let x_min = spec.mean_follows as f64 * (PARETO_ALPHA - 1.0) / PARETO_ALPHA;
    let cap = MAX_FOLLOWS.min(n - 2);
    for user in 1..n {
        follows.push((user as u32, 0));
        let u: f64 = rng.random_range(f64::EPSILON..1.0);
        let wanted = ((x_min / u.powf(1.0 / PARETO_ALPHA)).round() as usize).min(cap);
        let mut chosen = HashSet::with_capacity(wanted);
        let mut attempts = 0;
        while chosen.len() < wanted && attempts < wanted * 20 {
            attempts += 1;
            let x = rng.random_range(0.0..total);
            let index = cumulative.partition_point(|c| *c <= x).min(n - 2);
            let followee = index + 1;
            if followee != user && chosen.insert(followee) {
                follows.push((user as u32, followee as u32));
            }
        }
    }
    Graph { users: n, follows }
}

impl Graph {
    /// Followers per user.
    pub fn follower_counts(&self) -> Vec<u32> {
        let mut counts = vec![0u32; self.users];
        for (_, followee) in &self.follows {
            counts[*followee as usize] += 1;
        }
        counts
    }

    /// Accounts each user follows.
    pub fn following(&self) -> Vec<Vec<u32>> {
        let mut out = vec![Vec::new(); self.users];
        for (follower, followee) in &self.follows {
            out[*follower as usize].push(*followee);
        }
        out
    }

    /// Followers of each user.
    pub fn followers(&self) -> Vec<Vec<u32>> {
        let mut out = vec![Vec::new(); self.users];
        for (follower, followee) in &self.follows {
            out[*followee as usize].push(*follower);
        }
        out
    }

    /// Up to `max` users whose follower count is within 20% of `target` (closest first).
    pub fn authors_near(&self, target: u32, max: usize) -> Vec<u32> {
        let counts = self.follower_counts();
        let (low, high) = (target - target / 5, target + target / 5);
        let mut near: Vec<u32> = (0..self.users as u32)
            .filter(|u| (low..=high).contains(&counts[*u as usize]))
            .collect();
        near.sort_by_key(|u| (counts[*u as usize].abs_diff(target), *u));
        near.truncate(max);
        near
    }
}

/// Who posts seeded tweet `index`: spread evenly, in an order that does not follow user IDs.
pub fn tweet_author(seed: u64, index: usize, users: usize) -> u32 {
    // SplitMix64 of (seed, index): cheap, stateless, well mixed.
    let mut z = seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z % users.max(1) as u64) as u32
}

/// The username of user `index` in data set `seed`: 3 to 15 of `A-Za-z0-9_`.
pub fn username(seed: u64, index: usize) -> String {
    format!("s{seed}x{index}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(users: usize, seed: u64) -> GraphSpec {
        GraphSpec {
            users,
            seed,
            mean_follows: 10,
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_graph_and_another_seed_another() {
        assert_eq!(generate(spec(500, 7)), generate(spec(500, 7)));
        assert_ne!(generate(spec(500, 7)), generate(spec(500, 8)));
    }

    #[test]
    fn no_one_follows_themselves_or_anyone_twice() {
        let graph = generate(spec(2_000, 1));
        let mut seen = HashSet::new();
        for (a, b) in &graph.follows {
            assert_ne!(a, b);
            assert!(seen.insert((*a, *b)), "{a} follows {b} twice");
            assert!((*a as usize) < graph.users && (*b as usize) < graph.users);
        }
    }

    #[test]
    fn the_follower_counts_are_heavy_tailed() {
        let graph = generate(spec(5_000, 3));
        let mut counts = graph.follower_counts();
        assert_eq!(counts[0], 4_999, "everyone follows the official account");
        counts.sort_unstable();
        let median = counts[counts.len() / 2];
        let second = counts[counts.len() - 2];
        assert!(median <= 5, "most have few followers (median {median})");
        assert!(second >= 500, "a few have many (runner-up {second})");
        // The mean out-degree is near what was asked for (plus the official account).
        let mean = graph.follows.len() as f64 / 4_999.0;
        assert!((8.0..=13.0).contains(&mean), "mean follows {mean}");
    }

    #[test]
    fn authors_near_a_target_are_within_a_fifth_of_it() {
        let graph = generate(spec(5_000, 3));
        let counts = graph.follower_counts();
        let near = graph.authors_near(100, 10);
        assert!(!near.is_empty());
        for author in near {
            assert!((80..=120).contains(&counts[author as usize]));
        }
    }

    #[test]
    fn tiny_graphs_are_fine() {
        assert!(generate(spec(0, 1)).follows.is_empty());
        assert!(generate(spec(1, 1)).follows.is_empty());
        assert_eq!(generate(spec(2, 1)).follows, vec![(1, 0)]);
    }

    #[test]
    fn tweets_spread_over_every_author_and_usernames_are_valid() {
        let mut per_author = [0u32; 10];
        for i in 0..10_000 {
            per_author[tweet_author(1, i, 10) as usize] += 1;
        }
        assert!(per_author.iter().all(|n| (900..=1100).contains(n)));
        assert_eq!(tweet_author(1, 5, 10), tweet_author(1, 5, 10));
        let name = username(99_999, 999_999);
        assert!(name.len() <= 15 && name.chars().all(|c| c.is_ascii_alphanumeric()));
    }
}
