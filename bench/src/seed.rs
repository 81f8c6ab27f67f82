//! `twtr seed`: a deterministic data set (see [`crate::graph`]) written through the public API.
//!
//! Safe to repeat and resumable: usernames come from the seed and an index (a 409 on a repeat
//! means "look the ID up"), follows are idempotent, tweets carry an `Idempotency-Key` from the
//! seed and their index. Progress is checkpointed into a state file after every chunk, so a
//! second run skips what is done; the state file also hands the IDs and tokens to `twtr bench`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::StreamExt as _;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use twtr_common::tokens::TokenSigner;

use crate::api::{Api, CallError, with_retries};
use crate::graph::{self, Graph, GraphSpec};

/// `twtr seed` options.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct SeedArgs {
    /// The gateway to seed through.
    #[arg(long, env = "TWTR_BENCH_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Accounts to create (10,001 gives the largest author 10,000 followers).
    #[arg(long, default_value_t = 2_000)]
    pub users: usize,
    /// Tweets to post, spread evenly over the accounts.
    #[arg(long, default_value_t = 10_000)]
    pub tweets: usize,
    /// Mean accounts each user follows besides the official one (user 0).
    #[arg(long, default_value_t = 10)]
    pub mean_follows: usize,
    /// The data set's seed: the same seed and sizes give the same data set.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(0..100_000))]
    pub seed: u64,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Where progress, IDs and tokens are kept (read by `twtr bench`).
    #[arg(long, default_value = "./data/seed-state.json")]
    pub state: PathBuf,
    /// PEM file of the token signing key (e.g. `<data dir>/token_private.pem` of `twtr all`):
    /// tokens are signed here instead of one login (a password hash) per account.
    #[arg(long)]
    pub token_key: Option<PathBuf>,
}

/// What a seeding run has done so far, and what `twtr bench` needs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SeedState {
    pub seed: u64,
    pub users: usize,
    pub tweets: usize,
    pub mean_follows: usize,
    /// User ID by index; 0 = not known yet.
    pub ids: Vec<u64>,
    /// A bearer token by index; empty = none yet.
    pub tokens: Vec<String>,
    /// When the oldest token expires (Unix milliseconds).
    pub tokens_expire_at_ms: i64,
    /// The first `follows_done` follows of the graph are stored.
    pub follows_done: usize,
    /// The first `tweets_done` tweets are stored.
    pub tweets_done: usize,
}

impl SeedState {
    fn new(args: &SeedArgs) -> Self {
        Self {
            seed: args.seed,
            users: args.users,
            tweets: args.tweets,
            mean_follows: args.mean_follows,
            ids: vec![0; args.users],
            tokens: vec![String::new(); args.users],
            tokens_expire_at_ms: i64::MAX,
            follows_done: 0,
            tweets_done: 0,
        }
    }

    pub fn spec(&self) -> GraphSpec {
        GraphSpec {
            users: self.users,
            seed: self.seed,
            mean_follows: self.mean_follows,
        }
    }

    fn matches(&self, args: &SeedArgs) -> bool {
        (self.seed, self.users, self.tweets, self.mean_follows)
            == (args.seed, args.users, args.tweets, args.mean_follows)
    }

    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let bytes =
            std::fs::read(path).with_context(|| format!("failed to read {}", path.display()))?;
        serde_json::from_slice(&bytes)
            .with_context(|| format!("invalid state in {}", path.display()))
    }

    fn save(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("failed to create {}", parent.display()))?;
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(self)?)
            .with_context(|| format!("failed to write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("failed to write {}", path.display()))
    }
}

/// Items per checkpoint.
const CHUNK: usize = 2_000;

fn bar(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg:>9} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, {eta} left)",
    ) {
        bar.set_style(style);
    }
    bar.set_message(what.to_owned());
    bar
}

/// Runs `twtr seed`.
pub async fn run(args: SeedArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.url, args.concurrency)?;
    let mut state = match SeedState::load(&args.state) {
        Ok(state) if state.matches(&args) && still_there(&api, &state).await => {
            println!("resuming from {}", args.state.display());
            state
        }
        _ => SeedState::new(&args),
    };
    let started = Instant::now();
    let graph = graph::generate(state.spec());
    println!(
        "data set: {} users, {} follows, {} tweets (seed {})",
        state.users,
        graph.follows.len(),
        state.tweets,
        state.seed
    );
    sign_up(&api, &args, &mut state).await?;
    tokens(&api, &args, &mut state).await?;
    follows(&api, &args, &graph, &mut state).await?;
    post(&api, &args, &mut state).await?;
    println!(
        "seeded in {:.1} s; state in {}",
        started.elapsed().as_secs_f64(),
        args.state.display()
    );
    Ok(())
}

/// Whether the mesh still has the data the state file describes (it may have been wiped).
async fn still_there(api: &Api, state: &SeedState) -> bool {
    match state.ids.first() {
        Some(0) | None => true,
        Some(id) => api
            .user_id(&graph::username(state.seed, 0))
            .await
            .is_ok_and(|found| found == *id),
    }
}

async fn sign_up(api: &Api, args: &SeedArgs, state: &mut SeedState) -> anyhow::Result<()> {
    let todo: Vec<usize> = (0..state.users).filter(|i| state.ids[*i] == 0).collect();
    if todo.is_empty() {
        return Ok(());
    }
    let bar = bar(todo.len(), "sign-ups");
    for chunk in todo.chunks(CHUNK) {
        let results: Vec<(usize, Result<u64, CallError>)> =
            futures_util::stream::iter(chunk.iter().copied())
                .map(|i| {
                    let name = graph::username(state.seed, i);
                    let bar = &bar;
                    async move {
                        let id = with_retries(|| async {
                            match api.sign_up(&name).await? {
                                Some(id) => Ok(id),
                                None => api.user_id(&name).await,
                            }
                        })
                        .await;
                        bar.inc(1);
                        (i, id)
                    }
                })
                .buffer_unordered(args.concurrency)
                .collect()
                .await;
        for (i, id) in results {
            state.ids[i] = id.with_context(|| format!("failed to sign up user {i}"))?;
        }
        state.save(&args.state)?;
    }
    bar.finish();
    Ok(())
}

async fn tokens(api: &Api, args: &SeedArgs, state: &mut SeedState) -> anyhow::Result<()> {
    // Tokens that would expire within the hour are renewed.
    let soon = now_ms() + 3_600_000;
    if state.tokens_expire_at_ms < soon {
        state.tokens.iter_mut().for_each(String::clear);
        state.tokens_expire_at_ms = i64::MAX;
    }
    let todo: Vec<usize> = (0..state.users)
        .filter(|i| state.tokens[*i].is_empty())
        .collect();
    if todo.is_empty() {
        return Ok(());
    }
    if let Some(key) = &args.token_key {
        let pem = std::fs::read_to_string(key)
            .with_context(|| format!("failed to read {}", key.display()))?;
        let signer = TokenSigner::from_pem(&pem, Duration::from_secs(7 * 24 * 3600))
            .context("invalid token signing key")?;
        for i in todo {
            let issued = signer.issue(state.ids[i], 0)?;
            state.tokens_expire_at_ms = state.tokens_expire_at_ms.min(issued.expires_at_ms);
            state.tokens[i] = issued.token;
        }
        state.save(&args.state)?;
        return Ok(());
    }
    let bar = bar(todo.len(), "logins");
    // A login is a password hash: the users service allows a few at once.
    let concurrency = args.concurrency.min(8);
    for chunk in todo.chunks(CHUNK) {
        let results: Vec<(usize, Result<String, CallError>)> =
            futures_util::stream::iter(chunk.iter().copied())
                .map(|i| {
                    let name = graph::username(state.seed, i);
                    let bar = &bar;
                    async move {
                        let token = with_retries(|| api.log_in(&name)).await;
                        bar.inc(1);
                        (i, token)
                    }
                })
                .buffer_unordered(concurrency)
                .collect()
                .await;
        for (i, token) in results {
            state.tokens[i] = token.with_context(|| format!("failed to log in user {i}"))?;
        }
        // Tokens last a day unless the mesh says otherwise; assume the default.
        state.tokens_expire_at_ms = state.tokens_expire_at_ms.min(now_ms() + 86_400_000);
        state.save(&args.state)?;
    }
    bar.finish();
    Ok(())
}

async fn follows(
    api: &Api,
    args: &SeedArgs,
    graph: &Graph,
    state: &mut SeedState,
) -> anyhow::Result<()> {
    let todo = &graph.follows[state.follows_done.min(graph.follows.len())..];
    if todo.is_empty() {
        return Ok(());
    }
    let bar = bar(todo.len(), "follows");
    for chunk in todo.chunks(CHUNK) {
        let failed = futures_util::stream::iter(chunk.iter().copied())
            .map(|(follower, followee)| {
                let (token, id) = (
                    &state.tokens[follower as usize],
                    state.ids[followee as usize],
                );
                let bar = &bar;
                async move {
                    let done = with_retries(|| api.follow(token, id)).await;
                    bar.inc(1);
                    done.err().map(|err| (follower, followee, err))
                }
            })
            .buffer_unordered(args.concurrency)
            .filter_map(|failure| async move { failure })
            .collect::<Vec<_>>()
            .await
            .pop();
        if let Some((follower, followee, err)) = failed {
            return Err(err)
                .with_context(|| format!("user {follower} failed to follow {followee}"));
        }
        state.follows_done += chunk.len();
        state.save(&args.state)?;
    }
    bar.finish();
    Ok(())
}

/// The text of seeded tweet `index`: plausible length, unique.
pub fn tweet_text(seed: u64, index: usize) -> String {
    format!(
        "Seeded tweet {index} of data set {seed}: the quick brown fox jumps over the lazy dog, \
         as benchmarks have always insisted."
    )
}

async fn post(api: &Api, args: &SeedArgs, state: &mut SeedState) -> anyhow::Result<()> {
    if state.tweets_done >= state.tweets {
        return Ok(());
    }
    let bar = bar(state.tweets - state.tweets_done, "tweets");
    let todo: Vec<usize> = (state.tweets_done..state.tweets).collect();
    for chunk in todo.chunks(CHUNK) {
        let failed = futures_util::stream::iter(chunk.iter().copied())
            .map(|index| {
                let author = graph::tweet_author(state.seed, index, state.users) as usize;
                let token = &state.tokens[author];
                let (text, key) = (
                    tweet_text(state.seed, index),
                    format!("seed-{}-{index}", state.seed),
                );
                let bar = &bar;
                async move {
                    let done = with_retries(|| api.post(token, &text, Some(&key))).await;
                    bar.inc(1);
                    done.err().map(|err| (index, err))
                }
            })
            .buffer_unordered(args.concurrency)
            .filter_map(|failure| async move { failure })
            .collect::<Vec<_>>()
            .await
            .pop();
        if let Some((index, err)) = failed {
            return Err(err).with_context(|| format!("failed to post tweet {index}"));
        }
        state.tweets_done += chunk.len();
        state.save(&args.state)?;
    }
    bar.finish();
    Ok(())
}

fn now_ms() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp() * 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(state: PathBuf) -> SeedArgs {
        SeedArgs {
            url: "http://127.0.0.1:1".into(),
            users: 10,
            tweets: 20,
            mean_follows: 3,
            seed: 4,
            concurrency: 2,
            state,
            token_key: None,
        }
    }

    #[test]
    fn state_round_trips_and_knows_which_run_it_belongs_to() {
        let dir = tempfile::tempdir().unwrap();
        let args = args(dir.path().join("deep/state.json"));
        let mut state = SeedState::new(&args);
        state.ids[3] = 77;
        state.follows_done = 5;
        state.save(&args.state).unwrap();
        let loaded = SeedState::load(&args.state).unwrap();
        assert_eq!(loaded, state);
        assert!(loaded.matches(&args));
        let other = SeedArgs {
            seed: 5,
            ..args.clone()
        };
        assert!(!loaded.matches(&other), "another seed starts over");
    }

    #[test]
    fn tweet_texts_are_unique_and_within_280_characters() {
        let a = tweet_text(99_999, 1_000_000);
        assert!(a.chars().count() <= 280);
        assert_ne!(tweet_text(1, 1), tweet_text(1, 2));
    }
}
