//! The live feed's post-to-client latency: followers of one author hold `GET /v1/feed/stream`
//! open while the author posts; for each post and each stream, the time from sending the post
//! to the `tweet` event carrying it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::mpsc;

use crate::api::Api;
use crate::graph::Graph;
use crate::hist::Recorder;
use crate::run::Visibility;

/// How long a post may take to reach every stream before it counts as missed there.
const WAIT: Duration = Duration::from_secs(10);

/// Opens a stream for up to `sample` followers of an author with about 100 followers, posts
/// `posts` times as the author (one after the other, each once every stream has it or
/// [`WAIT`] passed), and summarizes the latencies. `None` when the data set has no such author.
pub async fn post_to_client(
    api: &Api,
    graph: &Graph,
    token: &(dyn Fn(u32) -> String + Sync),
    followers: &[Vec<u32>],
    posts: usize,
    sample: usize,
) -> anyhow::Result<Option<Visibility>> {
    let Some(author) = graph.authors_near(100, 1).first().copied() else {
        println!("  stream: no author near 100 followers in this data set");
        return Ok(None);
    };
    let all = &followers[author as usize];
    let step = (all.len() / sample.max(1)).max(1);
    let watchers: Vec<u32> = all.iter().step_by(step).take(sample).copied().collect();
    // No overall timeout: a stream lasts.
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .context("failed to build the streaming client")?;
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, u64, Instant)>();
    let mut readers = Vec::new();
    for (n, &watcher) in watchers.iter().enumerate() {
        let response = client
            .get(format!("{}/v1/feed/stream", api.base))
            .bearer_auth(token(watcher))
            .send()
            .await
            .context("failed to open a live feed")?;
        anyhow::ensure!(
            response.status().is_success(),
            "a live feed answered {}",
            response.status()
        );
        readers.push(tokio::spawn(read_events(n, response, tx.clone())));
    }
    // Every stream is ready (its first event) before the first post.
    let mut ready = 0;
    while ready < watchers.len() {
        let (_, id, _) = tokio::time::timeout(WAIT, rx.recv())
            .await
            .context("a live feed did not get ready")?
            .context("the live feeds ended")?;
        ready += usize::from(id == 0);
    }

    let author_token = token(author);
    let mut recorder = Recorder::new();
    let started = Instant::now();
    let mut early: HashMap<u64, Vec<Instant>> = HashMap::new();
    for n in 0..posts {
        let sent = Instant::now();
        let id = api
            .post(&author_token, &format!("live probe {n}"), None)
            .await
            .map_err(|e| anyhow::anyhow!("probe post failed: {e}"))?;
        let second = started.elapsed().as_secs() as usize;
        let mut arrived = early.remove(&id).unwrap_or_default();
        let deadline = tokio::time::Instant::now() + WAIT;
        while arrived.len() < watchers.len() {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some((_, got, at))) if got == id => arrived.push(at),
                Ok(Some((_, got, at))) => early.entry(got).or_default().push(at),
                Ok(None) | Err(_) => break,
            }
        }
        for at in &arrived {
            recorder.record(second, at.duration_since(sent));
        }
        for _ in arrived.len()..watchers.len() {
            recorder.error("not pushed within 10 s");
        }
    }
    for reader in readers {
        reader.abort();
    }
    let summary = recorder.summary(started.elapsed());
    println!(
        "  stream   {} streams, author with {} followers: p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms  missed {}",
        watchers.len(),
        all.len(),
        summary.at(50.0).unwrap_or(0.0),
        summary.at(99.0).unwrap_or(0.0),
        summary.max_ms,
        summary.errors
    );
    Ok(Some(Visibility {
        tier: format!("{} streams", watchers.len()),
        author_followers: all.len() as u32,
        summary,
    }))
}

/// Reads one stream's events, sending `(n, tweet ID, when)` per `tweet` event, and `(n, 0,
/// when)` for its `ready`.
async fn read_events(
    n: usize,
    mut response: reqwest::Response,
    tx: mpsc::UnboundedSender<(usize, u64, Instant)>,
) {
    let mut buffer = String::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let at = Instant::now();
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let (mut event, mut data) = ("message", "");
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("event: ") {
                    event = if value == "tweet" {
                        "tweet"
                    } else if value == "ready" {
                        "ready"
                    } else {
                        "other"
                    };
                } else if let Some(value) = line.strip_prefix("data: ") {
                    data = value;
                }
            }
            let id = match event {
                "ready" => Some(0),
                "tweet" => serde_json::from_str::<serde_json::Value>(data)
                    .ok()
                    .and_then(|item| item["id"].as_str()?.parse().ok()),
                _ => None,
            };
            if let Some(id) = id
                && tx.send((n, id, at)).is_err()
            {
                return;
            }
        }
    }
}
