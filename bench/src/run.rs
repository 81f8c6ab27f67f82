//! `twtr bench run`: drives a running mesh over HTTP and writes `results.json`.
//!
//! Phases, in order: the ceiling (a bare HTTP server in this process answering a feed page's
//! bytes), feed reads at maximum throughput, feed reads at a fixed rate, posts at maximum
//! throughput (with the fan-out they cause), the mixed workload at a fixed rate, the discovery
//! reads, feed reads under overload (a closed loop of many more connections than the gateway
//! serves at once: the latency of the accepted requests, and how many were shed), then fan-out
//! visibility per author size and the live feed. The mesh's resident memory is sampled
//! throughout.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};

use crate::api::{Api, CallError};
use crate::graph::{self, Graph};
use crate::hist::{Recorder, Summary};
use crate::load::{self, Op};
use crate::schedule::{Mix, Schedule};
use crate::seed::SeedState;
use crate::{ceiling, memory};

/// `twtr bench run` options.
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct RunArgs {
    /// The gateway to drive.
    #[arg(long, env = "TWTR_BENCH_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// The state file `twtr seed` wrote (IDs, tokens, the data set's seed and sizes).
    #[arg(long, default_value = "./data/seed-state.json")]
    pub state: PathBuf,
    /// A name for this run in the report, e.g. `embedded`, `rabbitmq`, `cql`.
    #[arg(long, default_value = "embedded")]
    pub label: String,
    /// Where `results.json` goes.
    #[arg(long, default_value = "./target/bench")]
    pub out: PathBuf,
    /// Process IDs of the mesh, for its resident memory (summed).
    #[arg(long, value_delimiter = ',')]
    pub pids: Vec<u32>,
    /// Seconds of each measured phase.
    #[arg(long, default_value_t = 15)]
    pub duration: u64,
    /// Seconds of unmeasured warm-up before each maximum-throughput phase.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Concurrent connections of the closed-loop (maximum throughput) phases.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Feed reads per second of the fixed-rate phase.
    #[arg(long, default_value_t = 2_000.0)]
    pub feed_rate: f64,
    /// Requests per second of the mixed workload (60% feeds, 30% timelines, 10% posts).
    #[arg(long, default_value_t = 1_000.0)]
    pub mixed_rate: f64,
    /// Follower counts whose post-to-feed time is measured (the nearest author in the data
    /// set; `max` is the largest author).
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000,max")]
    pub fanout_tiers: Vec<String>,
    /// Posts per tier in the fan-out visibility phase.
    #[arg(long, default_value_t = 20)]
    pub fanout_posts: usize,
    /// Followers watched per post.
    #[arg(long, default_value_t = 20)]
    pub fanout_sample: usize,
    /// Connections of the overload phase's closed loop of feed reads (many more than the
    /// gateway serves at once; each needs a file descriptor here and in the gateway: raise
    /// `ulimit -n` above it).
    #[arg(long, default_value_t = 1000)]
    pub overload_connections: usize,
    /// Skip phases, by name: ceiling, feed-max, feed-rate, posts, mixed, discovery, overload,
    /// fanout, stream.
    #[arg(long, value_delimiter = ',')]
    pub skip: Vec<String>,
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    pub label: String,
    pub url: String,
    pub started_at: String,
    pub users: usize,
    pub follows: usize,
    pub seeded_tweets: usize,
    pub duration_secs: u64,
    pub connections: usize,
    pub phases: Vec<Phase>,
    /// Feed entries written per second while posting at maximum throughput.
    pub fanout: Option<Fanout>,
    /// Post-to-feed latency per author size.
    pub visibility: Vec<Visibility>,
    /// Post-to-client latency of live feeds (`GET /v1/feed/stream`).
    #[serde(default)]
    pub live: Option<Visibility>,
    pub rss_idle_mb: Option<f64>,
    pub rss_peak_mb: Option<f64>,
    /// Load average at the start (other work on the machine shows here).
    pub load_average: String,
}

/// One operation of one phase.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Phase {
    /// e.g. `ceiling`, `feed-max`, `feed-rate`, `posts`, `mixed`.
    pub phase: String,
    /// e.g. `feed`, `timeline`, `post`.
    pub op: String,
    /// `closed` (maximum throughput) or `open @ <rate>/s`.
    pub mode: String,
    pub summary: Summary,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fanout {
    pub posts: u64,
    /// Feed entries those posts fan out to (followers + the author, per post).
    pub entries: u64,
    /// From the first post to the last one's appearance in its followers' feeds.
    pub seconds: f64,
    pub entries_per_sec: f64,
    /// Whether every watched post was seen (false: the drain timed out).
    pub drained: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Visibility {
    pub tier: String,
    pub author_followers: u32,
    pub summary: Summary,
}

const FEED_QUERY: &str = "limit=20";

/// The data set, resolved: IDs, tokens, who follows whom.
struct World {
    api: Api,
    state: SeedState,
    graph: Graph,
    followers: Vec<Vec<u32>>,
    /// Users whose feeds have a full page, to read.
    readers: Vec<u32>,
}

impl World {
    fn token(&self, user: u32) -> &str {
        &self.state.tokens[user as usize]
    }
}

/// Runs `twtr bench run`.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let state = SeedState::load(&args.state)?;
    anyhow::ensure!(
        state.tweets_done >= state.tweets && state.users > 1,
        "the data set in {} is not fully seeded: run `twtr seed` first",
        args.state.display()
    );
    let api = Api::new(&args.url, args.connections * 2)?;
    let graph = graph::generate(state.spec());
    let followers = graph.followers();
    let readers = readers(&state, &graph);
    let world = Arc::new(World {
        api,
        state,
        graph,
        followers,
        readers,
    });
    let mut results = Results {
        label: args.label.clone(),
        url: args.url.clone(),
        started_at: now_rfc3339(),
        users: world.state.users,
        follows: world.graph.follows.len(),
        seeded_tweets: world.state.tweets,
        duration_secs: args.duration,
        connections: args.connections,
        phases: Vec::new(),
        fanout: None,
        visibility: Vec::new(),
        live: None,
        rss_idle_mb: memory::rss_mb(&args.pids),
        rss_peak_mb: None,
        load_average: std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
            .to_owned(),
    };
    let sampler = memory::Sampler::start(args.pids.clone());
    let duration = Duration::from_secs(args.duration);
    let warmup = Duration::from_secs(args.warmup);
    let wants = |phase: &str| !args.skip.iter().any(|s| s == phase);
    println!(
        "bench {}: {} users, {} follows, {} readers with a full page",
        args.label,
        world.state.users,
        world.graph.follows.len(),
        world.readers.len()
    );

    if wants("ceiling") {
        let page = world
            .api
            .get_bytes(
                &format!("/v1/feed?{FEED_QUERY}"),
                Some(world.token(world.readers[0])),
            )
            .await
            .context("failed to read a feed page for the ceiling")?;
        let server = ceiling::Server::start(page).await?;
        let bare = Api::new(&server.url, args.connections * 2)?;
        let op: Op = Arc::new(move |_| {
            let bare = bare.clone();
            Box::pin(async move {
                (
                    0,
                    bare.get("/", None)
                        .await
                        .map(drop)
                        .map_err(|e| e.to_string()),
                )
            })
        });
        let _ = load::closed_loop(args.connections, warmup, Arc::clone(&op)).await;
        let run = load::closed_loop(args.connections, duration, op).await;
        push(&mut results, "ceiling", &["feed page"], "closed", &run);
        server.stop();
    }
    if wants("feed-max") {
        let op = feed_op(&world);
        let _ = load::closed_loop(args.connections, warmup, Arc::clone(&op)).await;
        let run = load::closed_loop(args.connections, duration, op).await;
        push(&mut results, "feed-max", &["feed"], "closed", &run);
    }
    if wants("feed-rate") {
        let run = load::open_loop(
            Schedule::new(args.feed_rate, duration),
            10_000,
            feed_op(&world),
        )
        .await;
        let mode = format!("open @ {:.0}/s", args.feed_rate);
        push(&mut results, "feed-rate", &["feed"], &mode, &run);
    }
    if wants("posts") {
        let (run, fanout) = posts(&world, &args, duration).await?;
        push(&mut results, "posts", &["post"], "closed", &run);
        results.fanout = Some(fanout);
    }
    if wants("mixed") {
        let run = load::open_loop(
            Schedule::new(args.mixed_rate, duration),
            10_000,
            mixed_op(&world),
        )
        .await;
        let mode = format!("open @ {:.0}/s", args.mixed_rate);
        push(
            &mut results,
            "mixed",
            &["feed", "timeline", "post"],
            &mode,
            &run,
        );
    }
    if wants("discovery") {
        let op = discovery_op(&world);
        let _ = load::closed_loop(args.connections, warmup, Arc::clone(&op)).await;
        let run = load::closed_loop(args.connections, duration, op).await;
        push(
            &mut results,
            "discovery",
            &["tag", "search", "trends", "people", "notifications"],
            "closed",
            &run,
        );
    }
    if wants("overload") {
        let connections = args.overload_connections.max(1);
        warn_if_too_few_files(connections);
        // A client of its own: its pool holds every connection of the loop.
        let api = Api::new(&args.url, connections)?;
        let op = overload_op(&world, api);
        let _ = load::closed_loop(connections, warmup, Arc::clone(&op)).await;
        let run = load::closed_loop(connections, duration, op).await;
        let mode = format!("closed, {connections} connections");
        push(&mut results, "overload", &["feed"], &mode, &run);
    }
    if wants("fanout") {
        for tier in &args.fanout_tiers {
            if let Some(visibility) = visibility(&world, &args, tier).await? {
                results.visibility.push(visibility);
            }
        }
    }
    if wants("stream") {
        results.live = crate::live::post_to_client(
            &world.api,
            &world.graph,
            &|user| world.token(user).to_owned(),
            &world.followers,
            args.fanout_posts,
            args.fanout_sample,
        )
        .await?;
    }
    results.rss_peak_mb = sampler.stop().await;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("failed to create {}", args.out.display()))?;
    let path = args.out.join(format!("{}.json", args.label));
    std::fs::write(&path, serde_json::to_vec_pretty(&results)?)
        .with_context(|| format!("failed to write {}", path.display()))?;
    println!("results in {}", path.display());
    Ok(())
}

fn push(results: &mut Results, phase: &str, ops: &[&str], mode: &str, run: &load::Run) {
    for (op, recorder) in ops.iter().zip(
        run.recorders
            .iter()
            .chain(std::iter::repeat(&Recorder::new())),
    ) {
        let summary = recorder.summary(run.elapsed);
        println!(
            "  {phase:<10} {op:<9} {mode:<14} {:>9.0}/s  p50 {:>7.2} ms  p99 {:>7.2} ms  p99.9 {:>7.2} ms  errors {}  shed {}",
            summary.throughput,
            summary.at(50.0).unwrap_or(0.0),
            summary.at(99.0).unwrap_or(0.0),
            summary.at(99.9).unwrap_or(0.0),
            summary.errors,
            summary.shed,
        );
        results.phases.push(Phase {
            phase: phase.to_owned(),
            op: (*op).to_owned(),
            mode: mode.to_owned(),
            summary,
        });
    }
}

/// Users whose feed should hold at least a page: seeded tweets by the accounts they follow
/// (and their own) add up to 20 or more. Deterministic, from the data set alone.
fn readers(state: &SeedState, graph: &Graph) -> Vec<u32> {
    let mut posted = vec![0u32; state.users];
    for index in 0..state.tweets {
        posted[graph::tweet_author(state.seed, index, state.users) as usize] += 1;
    }
    let following = graph.following();
    let mut readers: Vec<u32> = (0..state.users as u32)
        .filter(|u| {
            let own = posted[*u as usize];
            let theirs: u32 = following[*u as usize]
                .iter()
                .map(|f| posted[*f as usize])
                .sum();
            own + theirs >= 20
        })
        .collect();
    if readers.is_empty() {
        readers = (0..state.users as u32).collect();
    }
    readers
}

/// A random reader's first feed page (20 hydrated tweets).
fn feed_op(world: &Arc<World>) -> Op {
    let world = Arc::clone(world);
    Arc::new(move |i| {
        let world = Arc::clone(&world);
        Box::pin(async move {
            let reader = world.readers[pick(i, world.readers.len())];
            let read = world
                .api
                .get(&format!("/v1/feed?{FEED_QUERY}"), Some(world.token(reader)))
                .await;
            (0, read.map(drop).map_err(failure))
        })
    })
}

/// What a failed request counts as: a 503 is the gateway shedding load (answered at once over
/// its concurrency limit), counted apart as [`load::SHED`]; anything else is an error.
fn failure(err: CallError) -> String {
    match err {
        CallError::Status(StatusCode::SERVICE_UNAVAILABLE) => load::SHED.to_owned(),
        err => err.to_string(),
    }
}

/// A random reader's first feed page through `api`, a 503 counted as shed: the gateway's
/// answer to more requests than it serves at once.
fn overload_op(world: &Arc<World>, api: Api) -> Op {
    let world = Arc::clone(world);
    Arc::new(move |i| {
        let (world, api) = (Arc::clone(&world), api.clone());
        Box::pin(async move {
            let reader = world.readers[pick(i, world.readers.len())];
            let read = api
                .get(&format!("/v1/feed?{FEED_QUERY}"), Some(world.token(reader)))
                .await;
            (0, read.map(drop).map_err(failure))
        })
    })
}

/// Says so when this process may open fewer files than `connections` need (its soft
/// `RLIMIT_NOFILE`, from `/proc/self/limits`; `scripts/bench.sh` raises it to the hard limit).
fn warn_if_too_few_files(connections: usize) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(soft) = soft.filter(|soft| *soft < connections + 256) {
        println!(
            "  overload: this process may open {soft} files, {connections} connections need \
             more: raise `ulimit -n` (the gateway needs as many)"
        );
    }
}

/// The mixed workload: 60% feed reads, 30% user timelines, 10% posts by random users.
fn mixed_op(world: &Arc<World>) -> Op {
    let world = Arc::clone(world);
    let mix = Arc::new(Mix::new(vec![(0usize, 60.0), (1, 30.0), (2, 10.0)]));
    Arc::new(move |i| {
        let (world, mix) = (Arc::clone(&world), Arc::clone(&mix));
        Box::pin(async move {
            let mut rng = ChaCha8Rng::seed_from_u64(i ^ 0x5EED);
            let op = mix.pick(rng.random_range(0.0..1.0)).unwrap_or(0);
            let user = rng.random_range(0..world.state.users as u32);
            let result = match op {
                0 => {
                    let reader = world.readers[rng.random_range(0..world.readers.len())];
                    world
                        .api
                        .get(&format!("/v1/feed?{FEED_QUERY}"), Some(world.token(reader)))
                        .await
                        .map(drop)
                }
                1 => {
                    let id = world.state.ids[user as usize];
                    world
                        .api
                        .get(&format!("/v1/users/{id}/tweets?limit=20"), None)
                        .await
                        .map(drop)
                }
                _ => world
                    .api
                    .post(
                        world.token(user),
                        &load_post_text("mixed workload post", i),
                        None,
                    )
                    .await
                    .map(drop),
            };
            (op, result.map_err(failure))
        })
    })
}

/// The text of a post of the load phases: tagged (`#bench` and one of ten `#load<n>`), so the
/// discovery phase's tag pages and trends have something to read.
fn load_post_text(what: &str, i: u64) -> String {
    format!("{what} {i} #bench #load{}", i % 10)
}

/// The discovery reads, at maximum throughput: 25% a tag's first page (one of the ten tags
/// the load phases post), 25% a two-word search every seeded tweet matches (the walk of one
/// word's postings, checking the other on each), 15% trends, 15% a people search for a seeded
/// username, which is also the prefix of up to 50 others (`s<seed>x1` starts `s<seed>x10` to
/// `s<seed>x19`, `s<seed>x100`, ...): the exact match, the prefix read and its ranking; 20% a
/// reader's first page of notifications (the follows of the seeding and the likes, retweets and
/// mentions it made), hydrated.
fn discovery_op(world: &Arc<World>) -> Op {
    let world = Arc::clone(world);
    let mix = Arc::new(Mix::new(vec![
        (0usize, 25.0),
        (1, 25.0),
        (2, 15.0),
        (3, 15.0),
        (4, 20.0),
    ]));
    Arc::new(move |i| {
        let (world, mix) = (Arc::clone(&world), Arc::clone(&mix));
        Box::pin(async move {
            let mut rng = ChaCha8Rng::seed_from_u64(i ^ 0xD15C);
            let op = mix.pick(rng.random_range(0.0..1.0)).unwrap_or(0);
            let path = match op {
                0 => format!("/v1/tags/load{}/tweets?limit=20", rng.random_range(0..10)),
                1 => "/v1/search/tweets?q=quick+fox&limit=20".to_owned(),
                2 => "/v1/trends".to_owned(),
                3 => {
                    let who = rng.random_range(0..world.state.users.clamp(1, 100));
                    let name = graph::username(world.state.seed, who);
                    format!("/v1/users/search?q={name}&limit=10")
                }
                _ => "/v1/notifications?limit=20".to_owned(),
            };
            let token = (op == 4).then(|| {
                let reader = world.readers[rng.random_range(0..world.readers.len())];
                world.token(reader)
            });
            let read = world.api.get(&path, token).await;
            (op, read.map(drop).map_err(failure))
        })
    })
}

/// An index in `0..len` for request `i`, scattered (so consecutive requests hit other users).
fn pick(i: u64, len: usize) -> usize {
    (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as usize % len.max(1)
}

/// Posts at maximum throughput by authors with about 100 followers, then waits until the last
/// posts are in their followers' feeds: the fan-out rate is the entries written over that time.
async fn posts(
    world: &Arc<World>,
    args: &RunArgs,
    duration: Duration,
) -> anyhow::Result<(load::Run, Fanout)> {
    let mut authors = world.graph.authors_near(100, 64);
    if authors.is_empty() {
        authors = vec![0];
    }
    let authors = Arc::new(authors);
    let entries = Arc::new(AtomicU64::new(0));
    let last = Arc::new(std::sync::Mutex::new(Vec::<(u32, u64)>::new()));
    let op: Op = {
        let (world, authors, entries, last) = (
            Arc::clone(world),
            Arc::clone(&authors),
            Arc::clone(&entries),
            Arc::clone(&last),
        );
        Arc::new(move |i| {
            let (world, authors, entries, last) = (
                Arc::clone(&world),
                Arc::clone(&authors),
                Arc::clone(&entries),
                Arc::clone(&last),
            );
            Box::pin(async move {
                let author = authors[i as usize % authors.len()];
                let posted = world
                    .api
                    .post(
                        world.token(author),
                        &load_post_text("benchmark post", i),
                        None,
                    )
                    .await;
                if let Ok(id) = posted {
                    let fanned = world.followers[author as usize].len() as u64 + 1;
                    entries.fetch_add(fanned, Ordering::Relaxed);
                    let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
                    last.push((author, id));
                    if last.len() > 256 {
                        last.drain(..128);
                    }
                }
                (0, posted.map(drop).map_err(failure))
            })
        })
    };
    let started = Instant::now();
    let run = load::closed_loop(args.connections, duration, op).await;
    // The last post of each author, seen by one of its followers, marks the end of fan-out.
    let watched: Vec<(u32, u64)> = {
        let last = last.lock().unwrap_or_else(|p| p.into_inner());
        let mut seen = std::collections::HashSet::new();
        last.iter()
            .rev()
            .filter(|(a, _)| seen.insert(*a))
            .copied()
            .collect()
    };
    let mut drained = true;
    let polls = tokio::sync::Semaphore::new(POLLS_IN_FLIGHT);
    for (author, tweet) in watched {
        let follower = world.followers[author as usize]
            .first()
            .copied()
            .unwrap_or(author);
        if !appears(world, &polls, follower, tweet, Duration::from_secs(60)).await {
            drained = false;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let entries = entries.load(Ordering::Relaxed);
    let fanout = Fanout {
        posts: run.recorders.first().map_or(0, Recorder::count),
        entries,
        seconds,
        entries_per_sec: entries as f64 / seconds,
        drained,
    };
    println!(
        "  fan-out    {} posts -> {} feed entries in {:.1} s: {:.0} entries/s{}",
        fanout.posts,
        fanout.entries,
        fanout.seconds,
        fanout.entries_per_sec,
        if drained { "" } else { " (drain timed out)" }
    );
    Ok((run, fanout))
}

/// Polls `reader`'s feed until `tweet` is in it; false after `patience`.
async fn appears(
    world: &World,
    polls: &tokio::sync::Semaphore,
    reader: u32,
    tweet: u64,
    patience: Duration,
) -> bool {
    let deadline = Instant::now() + patience;
    let query = format!("since={}&limit=1", tweet.saturating_sub(1));
    let wanted = tweet.to_string();
    while Instant::now() < deadline {
        let seen = {
            let _turn = polls.acquire().await;
            world.api.feed(world.token(reader), &query).await
        };
        if let Ok(Some(page)) = seen
            && page.items.iter().any(|item| item.id == wanted)
        {
            return true;
        }
        tokio::time::sleep(POLL_PAUSE).await;
    }
    false
}

/// Feed reads the visibility probe has in flight at most, across its sample of followers, and
/// each follower's pause between reads. The probe reads feeds through the same mesh it
/// measures: twenty followers each polling every 2 ms asked for more reads than the mesh
/// serves, and the probe's own queueing showed as post-to-feed latency. Bounded, it costs a
/// few cores' percent and adds at most about one polling round (~5–10 ms) to what it reports.
const POLLS_IN_FLIGHT: usize = 4;
const POLL_PAUSE: Duration = Duration::from_millis(5);

/// Post-to-feed latency for an author with about `tier` followers: each post's time from its
/// 201 to its appearance in each of a sample of followers' feeds.
async fn visibility(
    world: &Arc<World>,
    args: &RunArgs,
    tier: &str,
) -> anyhow::Result<Option<Visibility>> {
    let counts = world.graph.follower_counts();
    let author = if tier == "max" {
        (0..world.state.users as u32).max_by_key(|u| counts[*u as usize])
    } else {
        let target: u32 = tier
            .parse()
            .with_context(|| format!("invalid fan-out tier {tier:?}"))?;
        world.graph.authors_near(target, 1).first().copied()
    };
    let Some(author) = author else {
        println!("  visibility: no author near {tier} followers in this data set");
        return Ok(None);
    };
    let followers = &world.followers[author as usize];
    let step = (followers.len() / args.fanout_sample.max(1)).max(1);
    let sample: Vec<u32> = followers
        .iter()
        .step_by(step)
        .take(args.fanout_sample)
        .copied()
        .collect();
    let mut recorder = Recorder::new();
    let polls = Arc::new(tokio::sync::Semaphore::new(POLLS_IN_FLIGHT));
    let started = Instant::now();
    for n in 0..args.fanout_posts {
        let id = world
            .api
            .post(
                world.token(author),
                &format!("visibility probe {n} ({tier})"),
                None,
            )
            .await
            .map_err(|e| anyhow::anyhow!("probe post failed: {e}"))?;
        let acknowledged = tokio::time::Instant::now();
        let second = started.elapsed().as_secs() as usize;
        let waits = sample.iter().map(|reader| {
            let (world, polls) = (Arc::clone(world), Arc::clone(&polls));
            let reader = *reader;
            async move {
                let seen = appears(&world, &polls, reader, id, Duration::from_secs(10)).await;
                (seen, acknowledged.elapsed())
            }
        });
        for (seen, latency) in futures_util::future::join_all(waits).await {
            if seen {
                recorder.record(second, latency);
            } else {
                recorder.error("not in the feed within 10 s");
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let summary = recorder.summary(started.elapsed());
    println!(
        "  visibility author with {:>6} followers: p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms  missed {}",
        counts[author as usize],
        summary.at(50.0).unwrap_or(0.0),
        summary.at(99.0).unwrap_or(0.0),
        summary.max_ms,
        summary.errors
    );
    Ok(Some(Visibility {
        tier: tier.to_owned(),
        author_followers: counts[author as usize],
        summary,
    }))
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
