//! `twtr events dead list|show|redrive`: the operator's commands for a consumer queue's dead
//! letters. They call the `twtr.events.v1.DeadLetters` service of the service that owns the
//! queue (its `TWTR_<SERVICE>_URL`), so they work the same on RabbitMQ and on the in-process bus
//! of a running `twtr all`.

use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};
use twtr_common::clock;
use twtr_common::tls::MeshTls;
use twtr_gateway::UpstreamUrls;
use twtr_proto::events::v1::dead_letters_client::DeadLettersClient;
use twtr_proto::events::v1::envelope::Payload;
use twtr_proto::events::v1::{DeadLetter, ListDeadLettersRequest, RedriveDeadLettersRequest};

/// How long a command waits for the service.
const TIMEOUT: Duration = Duration::from_secs(30);
/// The most dead letters `show` looks through.
const SHOW_SCAN: u32 = 1000;

#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct EventsArgs {
    #[command(subcommand)]
    pub command: EventsCommand,
}

#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum EventsCommand {
    /// Events a consumer gave up on: list them, show one, re-drive them.
    Dead {
        #[command(subcommand)]
        command: DeadCommand,
    },
}

/// A consumer queue, named after the service that consumes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Queue {
    Tweets,
    Followers,
    Feeds,
}

impl Queue {
    fn url(self, urls: &UpstreamUrls) -> &str {
        match self {
            Self::Tweets => &urls.tweets,
            Self::Followers => &urls.followers,
            Self::Feeds => &urls.feeds,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum DeadCommand {
    /// The oldest dead letters of a queue, one line each: event, type, attempts, age, reason.
    List {
        #[arg(long, value_enum)]
        queue: Queue,
        /// How many (at most 1000).
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// One dead letter, whole: its event and why it was given up on.
    Show {
        #[arg(long, value_enum)]
        queue: Queue,
        event_id: u64,
    },
    /// Moves dead letters back into the queue, to be handled again from a clean record.
    /// Handlers are idempotent: re-driving an event that took effect changes nothing.
    Redrive {
        #[arg(long, value_enum)]
        queue: Queue,
        /// At most this many (at most 10000).
        #[arg(long, default_value_t = 1000)]
        limit: u32,
        /// Only these events (repeat the flag); without it, any.
        #[arg(long = "event")]
        events: Vec<u64>,
    },
}

/// Runs an `events` command against the services at `urls`, printing to stdout.
/// Over mutual TLS when `tls` is given.
pub async fn run(
    args: EventsArgs,
    urls: &UpstreamUrls,
    tls: Option<&MeshTls>,
) -> anyhow::Result<()> {
    let EventsCommand::Dead { command } = args.command;
    let queue = match &command {
        DeadCommand::List { queue, .. }
        | DeadCommand::Show { queue, .. }
        | DeadCommand::Redrive { queue, .. } => *queue,
    };
    let url = queue.url(urls);
    let channel = twtr_common::client::endpoint(url, tls)?
        .timeout(TIMEOUT)
        .connect()
        .await
        .with_context(|| format!("failed to reach the {queue:?} service at {url}"))?;
    let mut client = DeadLettersClient::new(channel);
    match command {
        DeadCommand::List { limit, .. } => {
            let listed = client
                .list_dead_letters(ListDeadLettersRequest { limit })
                .await
                .context("failed to list the dead letters")?
                .into_inner();
            println!(
                "{} dead letter(s) in queue {} (oldest first):",
                listed.items.len(),
                listed.queue
            );
            for item in &listed.items {
                println!("{}", line(item));
            }
        }
        DeadCommand::Show { event_id, .. } => {
            let listed = client
                .list_dead_letters(ListDeadLettersRequest { limit: SHOW_SCAN })
                .await
                .context("failed to list the dead letters")?
                .into_inner();
            let found = listed
                .items
                .iter()
                .find(|item| item.event.as_ref().is_some_and(|e| e.event_id == event_id))
                .with_context(|| {
                    format!(
                        "no dead letter of event {event_id} among the oldest {SHOW_SCAN} of queue {}",
                        listed.queue
                    )
                })?;
            print!("{}", whole(found));
        }
        DeadCommand::Redrive { limit, events, .. } => {
            let redriven = client
                .redrive_dead_letters(RedriveDeadLettersRequest {
                    limit,
                    event_ids: events,
                })
                .await
                .context("failed to re-drive the dead letters")?
                .into_inner()
                .redriven;
            println!("re-drove {redriven} dead letter(s) into queue {queue:?}");
        }
    }
    Ok(())
}

fn millis(ts: Option<&prost_types::Timestamp>) -> i64 {
    ts.map_or(0, clock::from_timestamp)
}

/// "3m12s ago" from a time in Unix milliseconds.
fn age(at_ms: i64) -> String {
    if at_ms <= 0 {
        return "unknown".to_owned();
    }
    let secs = (clock::now_millis() - at_ms).max(0) / 1000;
    let (days, hours, minutes, seconds) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{seconds}s ago"),
        (0, 0, _) => format!("{minutes}m{seconds}s ago"),
        (0, _, _) => format!("{hours}h{minutes}m ago"),
        _ => format!("{days}d{hours}h ago"),
    }
}

fn line(item: &DeadLetter) -> String {
    let (id, kind) = item.event.as_ref().map_or_else(
        || ("-".to_owned(), "undecodable".to_owned()),
        |e| (e.event_id.to_string(), e.r#type.clone()),
    );
    format!(
        "{id}  {kind}  attempts={}  dead {}  reason: {}",
        item.attempts,
        age(millis(item.dead_at.as_ref())),
        item.error
    )
}

fn whole(item: &DeadLetter) -> String {
    let mut out = String::new();
    let mut add = |name: &str, value: String| out.push_str(&format!("{name:<16}{value}\n"));
    if let Some(event) = &item.event {
        add("event_id", event.event_id.to_string());
        add("type", event.r#type.clone());
        add(
            "occurred_at",
            clock::rfc3339(millis(event.occurred_at.as_ref())),
        );
        add("aggregate_id", event.aggregate_id.to_string());
        for (name, value) in &event.headers {
            add(&format!("header {name}"), value.clone());
        }
        add("payload", payload(event.payload.as_ref()));
    } else {
        add(
            "body",
            format!("{} undecodable bytes", item.undecodable_body.len()),
        );
    }
    add("attempts", item.attempts.to_string());
    let first = millis(item.first_failed_at.as_ref());
    add(
        "first_failed_at",
        format!("{} ({})", clock::rfc3339(first), age(first)),
    );
    let dead = millis(item.dead_at.as_ref());
    add(
        "dead_at",
        format!("{} ({})", clock::rfc3339(dead), age(dead)),
    );
    add("reason", item.error.clone());
    out
}

fn payload(payload: Option<&Payload>) -> String {
    payload.map_or_else(|| "none".to_owned(), |p| format!("{p:?}"))
}
