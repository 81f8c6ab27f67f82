//! The live home feed (`WatchFeed`, and through the gateway `GET /v1/feed/stream`): each entry
//! that arrives in a user's feed, pushed as it arrives, resumable without a gap or a repeat.
//!
//! # Where arrivals come from
//!
//! Fan-out logs each entry it writes in the feed's arrival log, stamped with the writer's clock
//! ([`FeedStore::arrivals`]), and then broadcasts a notice ([`FeedArrivals`], on the bus's
//! notice topic [`TOPIC`]) naming the users of that chunk: one notice per fan-out chunk of 500
//! followers, so a post to 10,000 followers is 20 messages on the broker, whoever listens. A
//! celebrity's post is not fanned out (readers merge it); its notice names the celebrity, and
//! each replica wakes the streams of its followers. Every feeds replica listens and wakes the
//! streams it serves ([`Hub`]); a woken stream reads its log. Notices are best effort: a stream
//! also reads every [`LiveSettings::poll`], and every stream reads at once after the listener
//! reports it may have missed some.
//!
//! # The cursor
//!
//! Arrivals are logged in the order each replica stamps them, but land in the store in the order
//! their writes finish, and two replicas' clocks differ: an arrival can land *behind* one a
//! stream already delivered. So a stream does not resume from "the last arrival it sent".
//! Its [`Cursor`] holds a watermark (every arrival stamped at or before it was delivered, or is
//! taken to never come) and the arrivals delivered above it. After each read, the watermark
//! moves to the read's start minus [`LiveSettings::settle`]: a write that lands later than that
//! after its stamp (or a clock more than that behind) is the one case a stream misses, and
//! the entry is still in feed pages. Each read reads from the watermark and skips what the
//! cursor holds, so it never sends an entry twice; within one stream, repeats of one tweet
//! (fan-out repeated after a failure, which CQL logs again under a new stamp) are skipped too.
//! A cursor older than the arrivals kept resets to now, saying so.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message as _;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use twtr_common::bus::{EventBus, Heard};
use twtr_common::store::StoreError;
use twtr_common::{clock, error::error_chain, id};
use twtr_proto::feeds::v1 as pb;
pub use twtr_proto::feeds::v1::FeedArrivals;

use crate::store::{Arrival, FeedEntry, FeedStore};

/// The bus's notice topic of [`FeedArrivals`].
pub const TOPIC: &str = "feeds.arrivals";

/// Arrivals read from the log per query.
const PAGE: usize = 200;
/// Arrivals sent per read at most; a stream with more to send reads again at once.
const MAX_PER_READ: usize = 1_000;
/// Arrivals a cursor holds above its watermark at most (past it, the watermark moves up).
const SEEN_CAP: usize = 200;
/// Tweets a stream remembers having sent, to skip their repeats.
const DELIVERED_KEPT: usize = 1_024;
/// The longest cursor accepted, in bytes.
const MAX_CURSOR: usize = 8 * 1024;
/// Messages buffered towards one stream's client.
const STREAM_BUFFER: usize = 64;

/// How the live feed reads and waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveSettings {
    /// How late an arrival may land after its stamp and still be sent (see the module docs).
    pub settle: Duration,
    /// How often a stream reads its log without a notice.
    pub poll: Duration,
    /// How long a stream stays quiet before it sends a cursor-only message.
    pub keep_alive: Duration,
    /// How long arrivals are kept: an older cursor resets.
    pub kept: Duration,
}

impl Default for LiveSettings {
    fn default() -> Self {
        Self {
            settle: Duration::from_secs(5),
            poll: Duration::from_secs(10),
            keep_alive: Duration::from_secs(15),
            kept: crate::store::ARRIVALS_KEPT,
        }
    }
}

/// Where a stream stands (see the module docs): opaque to clients, e.g.
/// `1733230000000.1s-2kd0v3b5mdc`: the watermark in Unix ms, then each arrival held above it as
/// its stamp's distance from the watermark and its tweet ID, both base 36.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    watermark: i64,
    /// `(stamp, tweet)` of the arrivals sent above the watermark, ascending.
    seen: Vec<(i64, u64)>,
}

/// A cursor this service did not issue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a live feed cursor")]
pub struct BadCursor;

impl Cursor {
    /// A cursor that takes everything stamped after `watermark`.
    pub fn at(watermark: i64) -> Self {
        Self {
            watermark,
            seen: Vec::new(),
        }
    }

    pub fn parse(text: &str) -> Result<Self, BadCursor> {
        if text.len() > MAX_CURSOR {
            return Err(BadCursor);
        }
        let mut parts = text.split('.');
        let watermark: i64 = parts.next().and_then(|w| w.parse().ok()).ok_or(BadCursor)?;
        let mut seen = Vec::new();
        for part in parts {
            let (delta, tweet) = part.split_once('-').ok_or(BadCursor)?;
            let delta = i64::from_str_radix(delta, 36).map_err(|_| BadCursor)?;
            let tweet = u64::from_str_radix(tweet, 36).map_err(|_| BadCursor)?;
            let stamp = watermark.checked_add(delta).ok_or(BadCursor)?;
            if delta <= 0 || seen.last().is_some_and(|&last| last >= (stamp, tweet)) {
                return Err(BadCursor);
            }
            seen.push((stamp, tweet));
        }
        if seen.len() > SEEN_CAP {
            return Err(BadCursor);
        }
        Ok(Self { watermark, seen })
    }

    pub fn encode(&self) -> String {
        let mut text = self.watermark.to_string();
        for &(stamp, tweet) in &self.seen {
            text.push('.');
            text.push_str(&base36((stamp - self.watermark) as u64));
            text.push('-');
            text.push_str(&base36(tweet));
        }
        text
    }

    fn holds(&self, tweet: u64) -> bool {
        self.seen.iter().any(|&(_, t)| t == tweet)
    }

    /// Records that the arrival was sent.
    fn sent(&mut self, arrival: &Arrival) {
        let key = (arrival.at_ms, arrival.entry.tweet_id);
        if arrival.at_ms > self.watermark
            && let Err(at) = self.seen.binary_search(&key)
        {
            self.seen.insert(at, key);
        }
        while self.seen.len() > SEEN_CAP {
            let oldest = self.seen[0].0;
            self.advance(oldest);
        }
    }

    /// Moves the watermark up to `to` (never down), forgetting what it now covers.
    fn advance(&mut self, to: i64) {
        if to > self.watermark {
            self.watermark = to;
            self.seen.retain(|&(stamp, _)| stamp > to);
        }
    }
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// The streams this replica serves, by user, each woken by its own [`Notify`] (which keeps a
/// wake that comes while its stream is busy reading).
#[derive(Debug, Default)]
pub struct Hub {
    streams: Mutex<HashMap<u64, Vec<Arc<Notify>>>>,
}

/// A stream's registration in the [`Hub`]; leaves it when dropped.
struct Watching {
    hub: Arc<Hub>,
    user: u64,
    wake: Arc<Notify>,
}

impl Drop for Watching {
    fn drop(&mut self) {
        let mut streams = twtr_common::lock(&self.hub.streams);
        if let Some(list) = streams.get_mut(&self.user) {
            list.retain(|wake| !Arc::ptr_eq(wake, &self.wake));
            if list.is_empty() {
                streams.remove(&self.user);
            }
        }
    }
}

impl Hub {
    fn watch(self: &Arc<Self>, user: u64) -> Watching {
        let wake = Arc::new(Notify::new());
        twtr_common::lock(&self.streams)
            .entry(user)
            .or_default()
            .push(Arc::clone(&wake));
        Watching {
            hub: Arc::clone(self),
            user,
            wake,
        }
    }

    /// Wakes every stream of `users`.
    fn wake(&self, users: &[u64]) {
        let streams = twtr_common::lock(&self.streams);
        for user in users {
            for wake in streams.get(user).into_iter().flatten() {
                wake.notify_one();
            }
        }
    }

    fn wake_all(&self) {
        for wake in twtr_common::lock(&self.streams).values().flatten() {
            wake.notify_one();
        }
    }

    /// The users with a stream here.
    fn users(&self) -> Vec<u64> {
        twtr_common::lock(&self.streams).keys().copied().collect()
    }
}

/// The live feed of one feeds replica: its [`Hub`], the store the streams read, and the bus it
/// hears notices on.
pub struct Live {
    store: Arc<dyn FeedStore>,
    hub: Arc<Hub>,
    settings: LiveSettings,
    /// Cancelled when the service shuts down: every stream ends.
    stop: CancellationToken,
    /// Whether notices are heard now.
    listening: std::sync::atomic::AtomicBool,
}

impl Live {
    pub fn new(store: Arc<dyn FeedStore>, settings: LiveSettings, stop: CancellationToken) -> Self {
        Self {
            store,
            hub: Arc::new(Hub::default()),
            settings,
            stop,
            listening: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Whether this replica hears notices now (else its streams only poll).
    pub fn is_listening(&self) -> bool {
        self.listening.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Ends every stream (the service is shutting down) and the listener.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Hears the notices on `bus` and wakes the streams they concern, until the service stops.
    /// While it cannot listen (the broker is down), streams still read every poll.
    pub async fn listen(self: Arc<Self>, bus: Arc<dyn EventBus>) {
        let mut listener = loop {
            match bus.listen(TOPIC).await {
                Ok(listener) => break listener,
                Err(err) => {
                    tracing::debug!(error = %error_chain(&err), "cannot listen for feed arrivals yet");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(2)) => {}
                        () = self.stop.cancelled() => return,
                    }
                }
            }
        };
        // Whatever was announced before listening started may have been missed.
        self.listening
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.hub.wake_all();
        loop {
            let heard = tokio::select! {
                heard = listener.next() => heard,
                () = self.stop.cancelled() => return,
            };
            match heard {
                Some(Heard::Notice(bytes)) => match FeedArrivals::decode(bytes.as_slice()) {
                    Ok(notice) => self.heard(notice).await,
                    Err(err) => tracing::warn!(error = %err, "an undecodable feed arrivals notice"),
                },
                Some(Heard::Missed) => self.hub.wake_all(),
                None => {
                    self.listening
                        .store(false, std::sync::atomic::Ordering::Relaxed);
                    return;
                }
            }
        }
    }

    async fn heard(&self, notice: FeedArrivals) {
        self.hub.wake(&notice.user_ids);
        let Some(celebrity) = notice.celebrity_id else {
            return;
        };
        let users = self.hub.users();
        if users.is_empty() {
            return;
        }
        let pairs = users.iter().map(|&user| (user, celebrity)).collect();
        match self.store.edges(pairs).await {
            Ok(live) => {
                let followers: Vec<u64> = users
                    .iter()
                    .zip(live)
                    .filter_map(|(&user, live)| (live || user == celebrity).then_some(user))
                    .collect();
                self.hub.wake(&followers);
            }
            Err(_) => self.hub.wake_all(),
        }
    }

    /// Starts streaming `user`'s arrivals after `cursor` (`None`: from now): the messages to
    /// send, until the client goes or the service stops.
    pub fn watch(
        self: &Arc<Self>,
        user: u64,
        cursor: Option<Cursor>,
    ) -> mpsc::Receiver<pb::WatchFeedResponse> {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        // Registered before the first read, so no notice after it goes unheard.
        let watching = self.hub.watch(user);
        let live = Arc::clone(self);
        tokio::spawn(async move { live.stream(watching, cursor, tx).await });
        rx
    }

    async fn stream(
        self: Arc<Self>,
        watching: Watching,
        cursor: Option<Cursor>,
        tx: mpsc::Sender<pb::WatchFeedResponse>,
    ) {
        let user = watching.user;
        let now = clock::now_millis();
        let settle = self.settings.settle.as_millis() as i64;
        let oldest_kept = now - self.settings.kept.as_millis() as i64;
        // A new stream takes what is stamped from now on: what arrived before is in feed pages.
        let (mut cursor, reset) = match cursor {
            Some(cursor) if cursor.watermark >= oldest_kept => (cursor, false),
            Some(_) => (Cursor::at(now), true),
            None => (Cursor::at(now), false),
        };
        let mut delivered = Delivered::default();
        let first = pb::WatchFeedResponse {
            entry: None,
            cursor: cursor.encode(),
            reset,
        };
        if tx.send(first).await.is_err() {
            return;
        }
        let mut quiet_since = tokio::time::Instant::now();
        let mut read_now = true;
        let mut next_poll = tokio::time::Instant::now();
        loop {
            // (After a keep-alive, the stream waits on without a read.)
            if read_now {
                next_poll = tokio::time::Instant::now() + self.settings.poll;
                let read_at = clock::now_millis();
                match self.read(user, &cursor, &delivered).await {
                    Ok((arrivals, complete)) => {
                        for arrival in &arrivals {
                            cursor.sent(arrival);
                            delivered.add(arrival.entry.tweet_id);
                            let message = pb::WatchFeedResponse {
                                entry: Some(entry_to_pb(arrival.entry)),
                                cursor: cursor.encode(),
                                reset: false,
                            };
                            if tx.send(message).await.is_err() {
                                return;
                            }
                            quiet_since = tokio::time::Instant::now();
                        }
                        match complete {
                            None => cursor.advance(read_at - settle),
                            // Read only up to an arrival: the watermark stays below it, and
                            // the rest is read at once.
                            Some(up_to) => {
                                cursor.advance((read_at - settle).min(up_to - 1));
                                continue;
                            }
                        }
                    }
                    Err(err) => {
                        tracing::debug!(user, error = %error_chain(&err), "a live feed read failed");
                    }
                }
            }
            let Some(now) = self
                .wait(&watching, &tx, &mut quiet_since, &cursor, next_poll)
                .await
            else {
                return;
            };
            read_now = now;
        }
    }

    /// Waits for a reason to read: a notice, or the poll (due at `next_poll`); or, when a quiet
    /// stretch comes first, sends a keep-alive. `Some(true)`: read now; `Some(false)`: a
    /// keep-alive went out; `None`: the client went or the service stops.
    async fn wait(
        &self,
        watching: &Watching,
        tx: &mpsc::Sender<pb::WatchFeedResponse>,
        quiet_since: &mut tokio::time::Instant,
        cursor: &Cursor,
        next_poll: tokio::time::Instant,
    ) -> Option<bool> {
        let keep_alive = *quiet_since + self.settings.keep_alive;
        tokio::select! {
            () = watching.wake.notified() => Some(true),
            () = tokio::time::sleep_until(next_poll) => Some(true),
            () = tokio::time::sleep_until(keep_alive) => {
                let message = pb::WatchFeedResponse {
                    entry: None,
                    cursor: cursor.encode(),
                    reset: false,
                };
                tx.send(message).await.ok()?;
                *quiet_since = tokio::time::Instant::now();
                Some(false)
            }
            () = tx.closed() => None,
            () = self.stop.cancelled() => None,
        }
    }

    /// What arrived for `user` past `cursor` and is not sent yet, oldest first, deleted tweets
    /// left out; and `Some(stamp)` when the read stopped at [`MAX_PER_READ`] (more may follow
    /// that stamp).
    async fn read(
        &self,
        user: u64,
        cursor: &Cursor,
        delivered: &Delivered,
    ) -> Result<(Vec<Arrival>, Option<i64>), StoreError> {
        let fresh =
            |a: &Arrival| !cursor.holds(a.entry.tweet_id) && !delivered.has(a.entry.tweet_id);
        let mut found: Vec<Arrival> = Vec::new();
        let mut after = (cursor.watermark, u64::MAX);
        let mut stopped_at = None;
        loop {
            let page = self.store.arrivals(user, after, PAGE).await?;
            let full = page.len() == PAGE;
            if let Some(last) = page.last() {
                after = (last.at_ms, last.entry.tweet_id);
            }
            found.extend(page.into_iter().filter(|a| fresh(a)));
            if !full {
                break;
            }
            if found.len() >= MAX_PER_READ {
                stopped_at = Some(after.0);
                break;
            }
        }
        // A celebrity's tweets are merged at read time, never fanned out: they arrive when
        // they are posted.
        for tweet_id in self.celebrity_tweets(user, cursor.watermark).await? {
            let arrival = Arrival {
                at_ms: id::millis_of(tweet_id.0),
                entry: FeedEntry {
                    tweet_id: tweet_id.0,
                    author_id: tweet_id.1,
                    retweeted_by: None,
                },
            };
            if fresh(&arrival) && stopped_at.is_none_or(|stop| arrival.at_ms < stop) {
                found.push(arrival);
            }
        }
        found.sort_by_key(|a| (a.at_ms, a.entry.tweet_id));
        let mut once = HashSet::new();
        found.retain(|a| once.insert(a.entry.tweet_id));
        if found.is_empty() {
            return Ok((found, stopped_at));
        }
        let deleted = self
            .store
            .deleted(found.iter().map(|a| a.entry.tweet_id).collect())
            .await?;
        let mut deleted = deleted.into_iter();
        found.retain(|_| !deleted.next().unwrap_or(false));
        Ok((found, stopped_at))
    }

    /// `(tweet, author)` of the recent tweets, posted after `after_ms`, of the celebrities
    /// `user` follows (or is).
    async fn celebrity_tweets(
        &self,
        user: u64,
        after_ms: i64,
    ) -> Result<Vec<(u64, u64)>, StoreError> {
        let celebrities = self.store.celebrities().await?;
        if celebrities.is_empty() {
            return Ok(Vec::new());
        }
        let live = self
            .store
            .edges(celebrities.iter().map(|&c| (user, c)).collect())
            .await?;
        let mut tweets = Vec::new();
        for (&celebrity, live) in celebrities.iter().zip(live) {
            if !live && celebrity != user {
                continue;
            }
            for tweet in self.store.recent_tweets(celebrity).await? {
                if id::millis_of(tweet) > after_ms {
                    tweets.push((tweet, celebrity));
                }
            }
        }
        Ok(tweets)
    }
}

fn entry_to_pb(entry: FeedEntry) -> pb::FeedEntry {
    pb::FeedEntry {
        tweet_id: entry.tweet_id,
        author_id: entry.author_id,
        retweeted_by: entry.retweeted_by,
    }
}

/// The tweets a stream sent most recently, to skip their repeats.
#[derive(Debug, Default)]
struct Delivered {
    order: VecDeque<u64>,
    set: HashSet<u64>,
}

impl Delivered {
    fn add(&mut self, tweet: u64) {
        if self.set.insert(tweet) {
            self.order.push_back(tweet);
            if self.order.len() > DELIVERED_KEPT
                && let Some(old) = self.order.pop_front()
            {
                self.set.remove(&old);
            }
        }
    }

    fn has(&self, tweet: u64) -> bool {
        self.set.contains(&tweet)
    }
}

#[cfg(test)]
mod tests {
    use twtr_common::bus::{EventHandler as _, InProcessBus};
    use twtr_proto::events::v1::envelope::Payload;
    use twtr_proto::events::v1::{Envelope, TweetCreated, TweetDeleted, UserFollowed};

    use super::*;
    use crate::service::Feeds;
    use crate::store::{EmbeddedFeedStore, FeedLimits};

    /// The feeds domain announcing on an in-process bus, and a live feed listening to it, with
    /// a poll too slow to matter: what a stream gets quickly, a notice woke it for.
    struct World {
        feeds: Feeds,
        live: Arc<Live>,
        _dir: tempfile::TempDir,
    }

    async fn world(celebrity_threshold: Option<usize>) -> World {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn FeedStore> = Arc::new(
            EmbeddedFeedStore::open(&dir.path().join("feeds.redb"), FeedLimits::default()).unwrap(),
        );
        let bus: Arc<dyn EventBus> =
            Arc::new(InProcessBus::open(&dir.path().join("bus.redb")).unwrap());
        let feeds = Feeds::new(Arc::clone(&store))
            .with_celebrity_threshold(celebrity_threshold)
            .announcing(Arc::clone(&bus));
        let settings = LiveSettings {
            poll: Duration::from_secs(3_600),
            keep_alive: Duration::from_millis(300),
            ..LiveSettings::default()
        };
        let live = Arc::new(Live::new(store, settings, CancellationToken::new()));
        tokio::spawn(Arc::clone(&live).listen(bus));
        while !live.is_listening() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        World {
            feeds,
            live,
            _dir: dir,
        }
    }

    fn event(payload: Payload) -> Envelope {
        twtr_common::events::envelope(1, 1, payload)
    }

    fn posted(tweet_id: u64, author_id: u64) -> Envelope {
        event(Payload::TweetCreated(TweetCreated {
            tweet_id,
            author_id,
            ..Default::default()
        }))
    }

    fn followed(follower_id: u64, followee_id: u64) -> Envelope {
        event(Payload::UserFollowed(UserFollowed {
            follower_id,
            followee_id,
            version: 1,
        }))
    }

    /// The tweets a stream sends until its next keep-alive, and the cursor then.
    async fn until_quiet(rx: &mut mpsc::Receiver<pb::WatchFeedResponse>) -> (Vec<u64>, String) {
        let mut tweets = Vec::new();
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("a message within 10 s")
                .expect("the stream goes on");
            match message.entry {
                Some(entry) => tweets.push(entry.tweet_id),
                None => return (tweets, message.cursor),
            }
        }
    }

    fn tweet_at(ms_from_now: i64) -> u64 {
        id::first_id_at(clock::now_millis() + ms_from_now) + 1
    }

    #[tokio::test]
    async fn streams_get_new_posts_once_and_resume_without_a_gap() {
        let w = world(None).await;
        let (reader, author, stranger) = (10, 20, 30);
        w.feeds.handle(&followed(reader, author)).await.unwrap();
        let mut stream = w.live.watch(reader, None);
        let first = stream.recv().await.unwrap();
        assert!(
            first.entry.is_none() && !first.reset,
            "a cursor-only message first"
        );

        let (t1, t2, t3) = (tweet_at(0), tweet_at(1), tweet_at(2));
        // Delivered twice, as at-least-once delivery may: sent once.
        w.feeds.handle(&posted(t1, author)).await.unwrap();
        w.feeds.handle(&posted(t1, author)).await.unwrap();
        w.feeds
            .handle(&posted(tweet_at(3), stranger))
            .await
            .unwrap();
        let (tweets, cursor) = until_quiet(&mut stream).await;
        assert_eq!(tweets, [t1]);
        drop(stream);

        // While away: a newer tweet arrives before an older one, and a third is deleted.
        w.feeds.handle(&posted(t3, author)).await.unwrap();
        w.feeds.handle(&posted(t2, author)).await.unwrap();
        let gone = tweet_at(4);
        w.feeds.handle(&posted(gone, author)).await.unwrap();
        w.feeds
            .handle(&event(Payload::TweetDeleted(TweetDeleted {
                tweet_id: gone,
                author_id: author,
                ..Default::default()
            })))
            .await
            .unwrap();
        let mut resumed = w.live.watch(reader, Some(Cursor::parse(&cursor).unwrap()));
        resumed.recv().await.unwrap();
        assert_eq!(
            until_quiet(&mut resumed).await.0,
            [t3, t2],
            "in arrival order"
        );
    }

    #[tokio::test]
    async fn a_celebritys_post_reaches_their_followers_streams() {
        let w = world(Some(1)).await;
        let (celebrity, fan1, fan2, other) = (50, 51, 52, 53);
        w.feeds.handle(&followed(fan1, celebrity)).await.unwrap();
        w.feeds.handle(&followed(fan2, celebrity)).await.unwrap();
        let mut fan = w.live.watch(fan1, None);
        let mut not_a_fan = w.live.watch(other, None);
        fan.recv().await.unwrap();
        not_a_fan.recv().await.unwrap();
        // (Posted after the streams started: a tweet ID is stamped with its time.)
        let tweet = tweet_at(5);
        w.feeds.handle(&posted(tweet, celebrity)).await.unwrap();
        assert_eq!(until_quiet(&mut fan).await.0, [tweet]);
        assert!(until_quiet(&mut not_a_fan).await.0.is_empty());
    }

    #[tokio::test]
    async fn an_old_cursor_resets_and_streams_end_when_the_service_stops() {
        let w = world(None).await;
        let mut stream = w.live.watch(7, Some(Cursor::at(1_000)));
        assert!(stream.recv().await.unwrap().reset);
        w.live.stop();
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            while stream.recv().await.is_some() {}
        })
        .await;
        assert!(ended.is_ok(), "the stream ended");
    }

    #[test]
    fn cursors_round_trip_and_refuse_what_was_not_issued() {
        let mut cursor = Cursor::at(1_733_230_000_000);
        assert_eq!(Cursor::parse(&cursor.encode()).unwrap(), cursor);
        for (at_ms, tweet_id) in [(1_733_230_000_050, 7), (1_733_230_000_010, 99_999_999_999)] {
            cursor.sent(&Arrival {
                at_ms,
                entry: FeedEntry {
                    tweet_id,
                    author_id: 1,
                    retweeted_by: None,
                },
            });
        }
        let text = cursor.encode();
        assert_eq!(Cursor::parse(&text).unwrap(), cursor);
        assert!(cursor.holds(7) && cursor.holds(99_999_999_999) && !cursor.holds(8));
        for bad in [
            "",
            "x",
            "12.",
            "12.5",
            "12.0-1",
            "12.-1-1",
            "12.2-1.1-2",
            "12.zzzzzzzzzzzzzz-1",
        ] {
            assert_eq!(Cursor::parse(bad), Err(BadCursor), "{bad:?}");
        }
        assert_eq!(Cursor::parse(&"1".repeat(MAX_CURSOR + 1)), Err(BadCursor));
    }

    #[test]
    fn the_watermark_forgets_what_it_covers_and_bounds_the_cursor() {
        let mut cursor = Cursor::at(1_000);
        let arrival = |at_ms, tweet_id| Arrival {
            at_ms,
            entry: FeedEntry {
                tweet_id,
                author_id: 1,
                retweeted_by: None,
            },
        };
        cursor.sent(&arrival(1_010, 1));
        cursor.sent(&arrival(1_020, 2));
        cursor.advance(1_015);
        assert!(!cursor.holds(1) && cursor.holds(2));
        cursor.advance(900); // never back
        assert_eq!(cursor.watermark, 1_015);
        for i in 0..(SEEN_CAP as u64 + 10) {
            cursor.sent(&arrival(2_000 + i as i64, 100 + i));
        }
        assert!(cursor.seen.len() <= SEEN_CAP);
        assert!(cursor.encode().len() < MAX_CURSOR);
        assert_eq!(Cursor::parse(&cursor.encode()).unwrap(), cursor);
    }
}
