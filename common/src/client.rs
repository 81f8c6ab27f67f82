//! The client side of gRPC between the parts: a channel to a service's URL ([`channel`]),
//! balanced per request across every address its host name resolves to.
//!
//! gRPC runs over HTTP/2, which multiplexes every call on one connection: a channel to a single
//! address behind a Kubernetes Service pins all of a caller's requests to one pod. Behind a
//! headless Service (`clusterIP: None`) the name resolves to one address per ready pod instead,
//! so the channel keeps one connection per address and spreads requests across them
//! (power-of-two-choices, tonic's balanced channel).
//!
//! A background task re-resolves the name every [`RESOLVE_EVERY`] and tells the channel which
//! addresses appeared and which went away. The set is never left empty: until the first answer,
//! and whenever a lookup fails or finds nothing, the channel keeps what it has (at first, the URL
//! itself, whose host is then resolved at connect time, as an unbalanced channel would). A
//! request therefore fails fast with a connection error rather than waiting for an address that
//! may never come. The task ends when the last clone of the channel is dropped.
//!
//! IP literals and `localhost` are not balanced: there is one server behind them (and
//! `localhost` may resolve to an IPv6 address nothing listens on).
//!
//! Whether a name currently has addresses is the gateway's readiness ([`Routable`]): behind a
//! headless Service, a name with no ready pod resolves to nothing.
//!
//! With mutual TLS ([`crate::tls::MeshTls`]) every connection is TLS, whatever the URL's scheme
//! (`http://` is taken as `https://`), presents this process's certificate and checks that the
//! server's names the URL's host, also when the balancer connects to a resolved address.

use std::collections::BTreeSet;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::mpsc::Sender;
use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::tls::MeshTls;

/// How often a balanced channel looks its host name up again. Pods that became ready since get
/// requests after at most this long; a pod that went away keeps being tried (and failing fast)
/// at most this long after DNS stopped naming it.
pub const RESOLVE_EVERY: Duration = Duration::from_secs(5);
/// How long one lookup may take before it counts as failed.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);
/// Changes queued for the balancer before the resolver task waits for it.
const CHANGES_QUEUE: usize = 64;

/// The connection options applied to the endpoint of each address (timeouts, TLS).
pub type Configure = Arc<dyn Fn(Endpoint) -> Endpoint + Send + Sync>;

/// Whether a service's URL leads anywhere: for a balanced name, whether its latest successful
/// lookup found an address (a failed lookup changes nothing); always for a single server.
#[derive(Debug, Clone)]
pub struct Routable(Arc<AtomicBool>);

impl Routable {
    /// A URL with one server behind it (an IP literal, `localhost`).
    pub fn always() -> Self {
        Self(Arc::new(AtomicBool::new(true)))
    }

    fn unknown() -> Self {
        Self(Arc::new(AtomicBool::new(false)))
    }

    pub fn is_routable(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    fn set(&self, routable: bool) {
        self.0.store(routable, Ordering::Relaxed);
    }
}

/// What the balancer holds a connection to: one resolved address, or the URL as given (before
/// the first answer).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Target {
    Url,
    Addr(SocketAddr),
}

/// The host name to resolve and the port, when `uri` names a host that may stand for several
/// servers; `None` for IP literals and `localhost`.
pub fn host_to_balance(uri: &Uri) -> Option<(String, u16)> {
    let host = uri.host()?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<IpAddr>().is_ok() || bare.eq_ignore_ascii_case("localhost") {
        return None;
    }
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    Some((host.to_owned(), port))
}

/// A channel to `url` that balances each request across the addresses `host` resolves to,
/// re-resolved every [`RESOLVE_EVERY`], and whether it has any. `configure` applies the
/// connection options to the endpoint of each address. Must be called within a tokio runtime.
pub fn balanced_channel(
    url: Endpoint,
    host: (String, u16),
    configure: Configure,
) -> (Channel, Routable) {
    balanced_channel_with(url, configure, RESOLVE_EVERY, move || {
        let (name, port) = host.clone();
        async move {
            let lookup = tokio::net::lookup_host((name.as_str(), port));
            match tokio::time::timeout(LOOKUP_TIMEOUT, lookup).await {
                Ok(addrs) => addrs.map(Iterator::collect),
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the name lookup timed out",
                )),
            }
        }
    })
}

/// [`balanced_channel`] with the lookup and its period given (tests use a scripted lookup).
fn balanced_channel_with<L, F>(
    url: Endpoint,
    configure: Configure,
    every: Duration,
    lookup: L,
) -> (Channel, Routable)
where
    L: FnMut() -> F + Send + 'static,
    F: Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'static,
{
    let (channel, changes) = Channel::balance_channel(CHANGES_QUEUE);
    let routable = Routable::unknown();
    tokio::spawn(resolve_loop(
        url,
        configure,
        every,
        lookup,
        changes,
        routable.clone(),
    ));
    (channel, routable)
}

/// Keeps the balancer's set equal to the latest successful lookup until the channel is gone.
async fn resolve_loop<L, F>(
    url: Endpoint,
    configure: Configure,
    every: Duration,
    mut lookup: L,
    changes: Sender<Change<Target, Endpoint>>,
    routable: Routable,
) where
    L: FnMut() -> F,
    F: Future<Output = io::Result<Vec<SocketAddr>>>,
{
    let shown = url.uri().to_string();
    let mut current = BTreeSet::new();
    let mut failing = false;
    loop {
        let resolved = lookup().await;
        if let Ok(addrs) = &resolved {
            routable.set(!addrs.is_empty());
        }
        match (&resolved, failing) {
            (Err(error), false) => {
                tracing::warn!(url = %shown, %error, "cannot resolve a service's addresses; keeping the ones known");
                failing = true;
            }
            (Ok(_), true) => {
                tracing::info!(url = %shown, "resolving a service's addresses again");
                failing = false;
            }
            _ => {}
        }
        let plan = plan(&current, resolved.ok());
        if !plan.is_empty() {
            tracing::debug!(url = %shown, insert = ?plan.insert, remove = ?plan.remove, "service addresses changed");
        }
        for target in plan.insert {
            let endpoint = match &target {
                Target::Url => configure(url.clone()),
                Target::Addr(addr) => match endpoint_for(&url, *addr) {
                    Ok(endpoint) => configure(endpoint),
                    Err(error) => {
                        tracing::warn!(url = %shown, %addr, %error, "cannot make an endpoint for an address");
                        continue;
                    }
                },
            };
            current.insert(target.clone());
            if changes
                .send(Change::Insert(target, endpoint))
                .await
                .is_err()
            {
                return;
            }
        }
        for target in plan.remove {
            current.remove(&target);
            if changes.send(Change::Remove(target)).await.is_err() {
                return;
            }
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = changes.closed() => return,
        }
    }
}

/// `url` with its host replaced by `addr`; requests still name the URL's host (`:authority`).
fn endpoint_for(url: &Endpoint, addr: SocketAddr) -> Result<Endpoint, tonic::transport::Error> {
    let scheme = url.uri().scheme_str().unwrap_or("http");
    Ok(Endpoint::from_shared(format!("{scheme}://{addr}"))?.origin(url.uri().clone()))
}

/// The changes that take the balancer from `current` to what a lookup found.
#[derive(Debug, Default, PartialEq, Eq)]
struct Plan {
    insert: Vec<Target>,
    remove: Vec<Target>,
}

impl Plan {
    fn is_empty(&self) -> bool {
        self.insert.is_empty() && self.remove.is_empty()
    }
}

/// What to insert and remove (in that order, so the set never runs empty) after a lookup.
/// `resolved` is `None` when the lookup failed. A failed or empty lookup keeps what is there;
/// with nothing there yet, the URL itself stands in.
fn plan(current: &BTreeSet<Target>, resolved: Option<Vec<SocketAddr>>) -> Plan {
    let found: BTreeSet<Target> = resolved
        .unwrap_or_default()
        .into_iter()
        .map(Target::Addr)
        .collect();
    let wanted = match (found.is_empty(), current.is_empty()) {
        (false, _) => found,
        (true, false) => return Plan::default(),
        (true, true) => BTreeSet::from([Target::Url]),
    };
    Plan {
        insert: wanted.difference(current).cloned().collect(),
        remove: current.difference(&wanted).cloned().collect(),
    }
}

/// How long connecting to a service may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A lazily connected channel to `url`: to the one server of an IP literal (or `localhost`), or
/// balanced across the addresses a host name resolves to; over mutual TLS when `tls` is given.
/// Must be called within a tokio runtime.
pub fn channel(url: &str, tls: Option<&MeshTls>) -> anyhow::Result<Channel> {
    Ok(routed_channel(url, tls)?.0)
}

/// [`channel`], and whether it currently leads anywhere.
pub fn routed_channel(url: &str, tls: Option<&MeshTls>) -> anyhow::Result<(Channel, Routable)> {
    let (endpoint, configure) = service_endpoint(url, tls)?;
    Ok(match host_to_balance(endpoint.uri()) {
        Some(host) => balanced_channel(endpoint, host, configure),
        None => (configure(endpoint).connect_lazy(), Routable::always()),
    })
}

/// An endpoint of the one server at `url`, with the options of every connection to a service
/// (over mutual TLS when `tls` is given), for a client that connects once (a command).
pub fn endpoint(url: &str, tls: Option<&MeshTls>) -> anyhow::Result<Endpoint> {
    let (endpoint, configure) = service_endpoint(url, tls)?;
    Ok(configure(endpoint))
}

/// `url` as an endpoint (`https://` with TLS), and the options of its connections.
fn service_endpoint(url: &str, tls: Option<&MeshTls>) -> anyhow::Result<(Endpoint, Configure)> {
    use anyhow::Context as _;
    let url = match (tls, url.strip_prefix("http://")) {
        (Some(_), Some(rest)) => format!("https://{rest}"),
        _ => url.to_owned(),
    };
    anyhow::ensure!(
        tls.is_some() || !url.starts_with("https://"),
        "{url}: an https:// service URL needs mutual TLS (TWTR_GRPC_TLS_CERT, \
         TWTR_GRPC_TLS_KEY, TWTR_GRPC_TLS_CA)"
    );
    let endpoint = Endpoint::from_shared(url.clone())
        .with_context(|| format!("invalid service URL {url:?}"))?;
    let configure = connection_options(tls, endpoint.uri());
    Ok((endpoint, configure))
}

/// The options of every connection to the service at `uri`: timeouts, and with `tls`, TLS
/// that checks the server's certificate names `uri`'s host.
fn connection_options(tls: Option<&MeshTls>, uri: &Uri) -> Configure {
    let tls = tls.map(|tls| tls.client_config(uri.host().unwrap_or_default()));
    Arc::new(move |endpoint: Endpoint| {
        let endpoint = endpoint.connect_timeout(CONNECT_TIMEOUT).tcp_nodelay(true);
        match &tls {
            None => endpoint,
            // The configuration was built once at startup (`MeshTls::from_pem`), so this does
            // not fail; if it did, the endpoint stays `https://` without TLS, and every
            // connection fails rather than going out in plaintext.
            Some(config) => match endpoint.clone().tls_config(config.clone()) {
                Ok(endpoint) => endpoint,
                Err(error) => {
                    tracing::error!(%error, "cannot configure TLS for a service; its calls will fail");
                    endpoint
                }
            },
        }
    })
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    use tonic::transport::server::TcpIncoming;
    use tonic_health::ServingStatus;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    fn set(targets: &[Target]) -> BTreeSet<Target> {
        targets.iter().cloned().collect()
    }

    #[test]
    fn only_host_names_are_balanced() {
        let host = |url: &str| host_to_balance(&url.parse().unwrap());
        assert_eq!(
            host("http://twtr-users:50051"),
            Some(("twtr-users".to_owned(), 50051))
        );
        assert_eq!(
            host("http://users.twtr.svc.cluster.local"),
            Some(("users.twtr.svc.cluster.local".to_owned(), 80))
        );
        assert_eq!(host("http://127.0.0.1:50051"), None);
        assert_eq!(host("http://[::1]:50051"), None);
        assert_eq!(host("http://LocalHost:50051"), None);
    }

    #[test]
    fn the_url_stands_in_until_the_first_answer() {
        let empty = BTreeSet::new();
        assert_eq!(plan(&empty, None).insert, vec![Target::Url]);
        assert_eq!(plan(&empty, Some(vec![])).insert, vec![Target::Url]);

        let first = plan(
            &set(&[Target::Url]),
            Some(vec![addr("10.0.0.2:50051"), addr("10.0.0.1:50051")]),
        );
        assert_eq!(
            first,
            Plan {
                insert: vec![
                    Target::Addr(addr("10.0.0.1:50051")),
                    Target::Addr(addr("10.0.0.2:50051"))
                ],
                remove: vec![Target::Url],
            }
        );
    }

    #[test]
    fn scaling_changes_only_the_addresses_that_changed() {
        let a = Target::Addr(addr("10.0.0.1:50051"));
        let b = Target::Addr(addr("10.0.0.2:50051"));
        let c = Target::Addr(addr("10.0.0.3:50051"));
        let current = set(&[a.clone(), b.clone()]);

        let up = plan(
            &current,
            Some(vec![
                addr("10.0.0.3:50051"),
                addr("10.0.0.1:50051"),
                addr("10.0.0.2:50051"),
            ]),
        );
        assert_eq!(up.insert, vec![c.clone()]);
        assert!(up.remove.is_empty());

        let down_and_moved = plan(&current, Some(vec![addr("10.0.0.3:50051")]));
        assert_eq!(down_and_moved.insert, vec![c]);
        assert_eq!(down_and_moved.remove, vec![a, b]);

        // getaddrinfo may name an address twice; unchanged answers change nothing.
        let same = plan(
            &current,
            Some(vec![
                addr("10.0.0.2:50051"),
                addr("10.0.0.1:50051"),
                addr("10.0.0.1:50051"),
            ]),
        );
        assert!(same.is_empty());
    }

    #[test]
    fn a_failed_or_empty_lookup_keeps_the_known_addresses() {
        let current = set(&[Target::Addr(addr("10.0.0.1:50051"))]);
        assert!(plan(&current, None).is_empty());
        assert!(plan(&current, Some(vec![])).is_empty());
    }

    /// A health server on loopback that reports `name` as SERVING (and knows no other name).
    async fn health_server(name: &'static str) -> SocketAddr {
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status(name, ServingStatus::Serving)
            .await;
        let incoming = TcpIncoming::bind(addr("127.0.0.1:0")).unwrap();
        let local = incoming.local_addr().unwrap();
        tokio::spawn(async move {
            // Keeps the reporter (and so the statuses) alive as long as the server runs.
            let _reporter = reporter;
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await
        });
        local
    }

    #[tokio::test]
    async fn requests_spread_over_every_resolved_address_and_follow_changes() {
        let one = health_server("one").await;
        let two = health_server("two").await;
        // The lookup answers from a script: both servers, then only the second.
        let answers = Arc::new(Mutex::new(VecDeque::from([vec![one, two]])));
        let script = Arc::clone(&answers);
        let lookup = move || {
            let next = script.lock().unwrap().pop_front();
            async move { next.ok_or_else(|| io::Error::other("no new answer")) }
        };
        let url = Endpoint::from_static("http://twtr-test.invalid:1");
        let (channel, _) =
            balanced_channel_with(url, Arc::new(|e| e), Duration::from_millis(20), lookup);
        let mut health = HealthClient::new(channel);

        // Each server knows only its own name, so the answer says which one served the call.
        let mut served_by = BTreeSet::new();
        for _ in 0..64 {
            let request = HealthCheckRequest {
                service: "one".to_owned(),
            };
            let answer = health.check(request).await;
            served_by.insert(answer.is_ok());
        }
        assert_eq!(
            served_by,
            BTreeSet::from([false, true]),
            "64 calls all went to one server"
        );

        answers.lock().unwrap().push_back(vec![two]);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut in_a_row = 0;
        while in_a_row < 32 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the removed address kept getting calls"
            );
            let request = HealthCheckRequest {
                service: "two".to_owned(),
            };
            in_a_row = if health.check(request).await.is_ok() {
                in_a_row + 1
            } else {
                0
            };
        }
    }

    #[tokio::test]
    async fn the_resolver_stops_with_the_channel() {
        let calls = Arc::new(Mutex::new(0_u32));
        let counted = Arc::clone(&calls);
        let lookup = move || {
            *counted.lock().unwrap() += 1;
            async { Ok(vec![addr("127.0.0.1:9")]) }
        };
        let url = Endpoint::from_static("http://twtr-test.invalid:1");
        let (channel, _) =
            balanced_channel_with(url, Arc::new(|e| e), Duration::from_millis(10), lookup);
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(channel);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let after_drop = *calls.lock().unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(*calls.lock().unwrap(), after_drop, "lookups went on");
    }
}
