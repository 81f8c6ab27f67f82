//! The edge's limits, each configurable and each answered in the one JSON error shape:
//!
//! - **Body size**: a body over [`EdgeLimits::body_limit`] is a 413 (axum's `DefaultBodyLimit`,
//!   read by [`crate::extract::JsonBody`]).
//! - **Rate limits** ([`RateLimiter`], GCRA from the `governor` crate): per client IP on every
//!   API route, per caller (the user of a valid token) on every API route, and a stricter one per
//!   client IP on login and sign-up. A request over a limit is a 429 with `Retry-After`.
//! - **Deadline**: every request has [`EdgeLimits::request_timeout`]; each RPC it makes carries
//!   what is left of it (see [`crate::upstream::rpc`]), and an expired one is a 504.
//! - **Concurrency**: at most [`EdgeLimits::concurrency`] API requests are served at once, a
//!   limit that adapts to measured latency (see [`crate::adaptive`]) or a fixed one; one more is
//!   shed at once with a 503, so overload is answered fast instead of queueing, and the requests
//!   accepted keep a bounded latency.
//! - **CORS** (tower-http's `CorsLayer`) for the origins in [`EdgeLimits::cors_origins`].
//!
//! Health, readiness, metrics and the API documents are outside the rate and concurrency limits,
//! so probes and scrapes keep working under load.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderName, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
pub use ipnet::IpNet;
use tower_http::cors::{AllowOrigin, CorsLayer};
use twtr_common::tokens::TokenVerifier;
use twtr_common::{ErrorCode, auth};

use crate::adaptive::{self, ConcurrencyLimits};
use crate::error::ApiError;
use crate::server::ConnectionLimits;

/// The edge's limits (configuration; `twtr gateway --help` lists the variables).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeLimits {
    /// The largest request body accepted, in bytes.
    pub body_limit: usize,
    /// How long a request may take, RPCs included.
    pub request_timeout: Duration,
    /// API requests served at once (adaptive or fixed); more are shed with a 503.
    pub concurrency: ConcurrencyLimits,
    pub rates: RateLimits,
    /// Origins allowed to call the API from a browser (`*` for any); empty: no CORS headers.
    pub cors_origins: Vec<String>,
    /// Proxies in front of the gateway that append to `X-Forwarded-For`: 0 means the client is
    /// the TCP peer; n means it is the n-th address from the right of that header, when the
    /// TCP peer is in [`Self::trusted_proxies`].
    pub trusted_proxy_hops: usize,
    /// The networks the proxies in front connect from; `X-Forwarded-For` from any other peer is
    /// ignored (anyone can send the header).
    pub trusted_proxies: Vec<IpNet>,
    /// The HTTP server's per-connection limits (header read and idle timeouts, header size,
    /// HTTP/2 streams).
    pub connections: ConnectionLimits,
    /// Live feeds (`GET /v1/feed/stream`) this gateway serves at once.
    pub streams: StreamLimits,
}

/// How many live feeds one gateway serves (a stream holds no in-flight slot: it would hold it
/// for hours). One more is a 429 with `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// In all.
    pub total: usize,
    /// Per caller (a user with several tabs or devices).
    pub per_caller: usize,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            total: 10_000,
            per_caller: 5,
        }
    }
}

/// Requests per minute allowed to one key (a burst of that many, refilled evenly over the
/// minute); `None` turns the limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// Per client IP, on every API route.
    pub per_ip: Option<NonZeroU32>,
    /// Per caller (the user of a valid token), on every API route.
    pub per_caller: Option<NonZeroU32>,
    /// Per client IP, on login (`POST /v1/sessions`) and sign-up (`POST /v1/users`).
    pub auth_per_ip: Option<NonZeroU32>,
}

impl RateLimits {
    /// No rate limits at all (for load tests).
    pub const OFF: Self = Self {
        per_ip: None,
        per_caller: None,
        auth_per_ip: None,
    };
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            per_ip: NonZeroU32::new(1200),
            per_caller: NonZeroU32::new(600),
            auth_per_ip: NonZeroU32::new(60),
        }
    }
}

impl Default for EdgeLimits {
    fn default() -> Self {
        Self {
            body_limit: 64 * 1024,
            request_timeout: crate::upstream::DEFAULT_REQUEST_TIMEOUT,
            concurrency: ConcurrencyLimits::default(),
            rates: RateLimits::default(),
            cors_origins: Vec::new(),
            trusted_proxy_hops: 0,
            trusted_proxies: Vec::new(),
            connections: ConnectionLimits::default(),
            streams: StreamLimits::default(),
        }
    }
}

type Keyed<K> = Option<DefaultKeyedRateLimiter<K>>;

/// The keyed rate limiters of one gateway, and what it needs to tell callers apart.
pub struct RateLimiter {
    per_ip: Keyed<IpAddr>,
    per_caller: Keyed<u64>,
    auth_per_ip: Keyed<IpAddr>,
    tokens: TokenVerifier,
    trusted_proxy_hops: usize,
    trusted_proxies: Vec<IpNet>,
    clock: DefaultClock,
}

impl RateLimiter {
    pub fn new(limits: &EdgeLimits, tokens: TokenVerifier) -> Self {
        fn keyed<K: std::hash::Hash + Eq + Clone>(per_minute: Option<NonZeroU32>) -> Keyed<K> {
            per_minute.map(|n| DefaultKeyedRateLimiter::keyed(Quota::per_minute(n)))
        }
        Self {
            per_ip: keyed(limits.rates.per_ip),
            per_caller: keyed(limits.rates.per_caller),
            auth_per_ip: keyed(limits.rates.auth_per_ip),
            tokens,
            trusted_proxy_hops: limits.trusted_proxy_hops,
            trusted_proxies: limits.trusted_proxies.clone(),
            clock: DefaultClock::default(),
        }
    }

    /// Forgets keys whose limit is back to full (call now and then: it bounds memory).
    pub fn forget_idle(&self) {
        for limiter in [&self.per_ip, &self.auth_per_ip].into_iter().flatten() {
            limiter.retain_recent();
        }
        if let Some(limiter) = &self.per_caller {
            limiter.retain_recent();
        }
    }

    /// Takes one request from `key`'s allowance, or says how long until it may try again.
    fn take<K>(&self, limiter: &Keyed<K>, key: &K, what: &str) -> Result<(), ApiError>
    where
        K: std::hash::Hash + Eq + Clone,
    {
        let Some(limiter) = limiter else {
            return Ok(());
        };
        limiter.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            ApiError::rate_limited(format!("too many requests {what}; retry later"), secs)
        })
    }

    /// Checks every limit that applies to `request`.
    fn check(&self, request: &Request) -> Result<(), ApiError> {
        if let Some(ip) = self.client_ip(request).map(rate_key) {
            self.take(&self.per_ip, &ip, "from this address")?;
            if is_login_or_sign_up(request) {
                self.take(
                    &self.auth_per_ip,
                    &ip,
                    "to log in or sign up from this address",
                )?;
            }
        }
        if let Some(user_id) = self.caller(request) {
            self.take(&self.per_caller, &user_id, "for this user")?;
        }
        Ok(())
    }

    /// The user of the request's token, if it carries a valid one (an invalid one is refused
    /// later, by the route).
    fn caller(&self, request: &Request) -> Option<u64> {
        self.per_caller.as_ref()?;
        let token = auth::bearer_token(request.headers()).ok().flatten()?;
        self.tokens.verify(token).ok().map(|v| v.user_id)
    }

    /// The client's address: the TCP peer, or, when that peer is one of the trusted proxies,
    /// the address the first of them saw (`X-Forwarded-For`, the n-th entry from the right).
    fn client_ip(&self, request: &Request) -> Option<IpAddr> {
        let peer = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip().to_canonical())?;
        if self.trusted_proxy_hops == 0 || !self.trusted_proxies.iter().any(|n| n.contains(&peer)) {
            return Some(peer);
        }
        let forwarded: Vec<&str> = request
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let client = forwarded
            .len()
            .checked_sub(self.trusted_proxy_hops)
            .and_then(|i| forwarded.get(i))
            .and_then(|addr| addr.parse::<IpAddr>().ok())
            .map(|ip| ip.to_canonical());
        Some(client.unwrap_or(peer))
    }
}

/// The key a client address is rate limited by: an IPv4 address, or an IPv6 address's /64 (one
/// subscriber's network: rotating addresses inside it must not escape a limit).
fn rate_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
    }
}

/// Reads a network in CIDR notation (`130.211.0.0/22`, `2600:1900::/28`); a bare address is a
/// network of one.
pub fn parse_network(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{text:?} is not a network (CIDR, e.g. 130.211.0.0/22) or an address"))
}

/// The longest path and query the gateway reads (longer: 414). No route needs more than a few
/// hundred bytes; the header size limit bounds the request head as a whole.
pub const MAX_URI_BYTES: usize = 4096;

pub fn uri_too_long(uri: &axum::http::Uri) -> bool {
    uri.path_and_query().map_or(0, |pq| pq.as_str().len()) > MAX_URI_BYTES
}

fn is_login_or_sign_up(request: &Request) -> bool {
    request.method() == Method::POST && matches!(request.uri().path(), "/v1/sessions" | "/v1/users")
}

/// Middleware: a 429 with `Retry-After` for a request over any of its rate limits.
pub async fn rate_limit(
    State(limiter): State<Arc<RateLimiter>>,
    request: Request,
    next: Next,
) -> Response {
    match limiter.check(&request) {
        Ok(()) => next.run(request).await,
        Err(err) => err.into_response(),
    }
}

/// Answers a request that the concurrency limit refused ([`adaptive::Shed`], see
/// [`crate::app::router`]): a 503 at once, in the API's error shape. (The limiter logs shedding,
/// at most once a second: a line per refused request would add to the overload.)
pub async fn overloaded(err: tower::BoxError) -> Response {
    let error = if err.is::<adaptive::Shed>() {
        ApiError {
            retry_after: Some(1),
            ..ApiError::new(
                ErrorCode::Unavailable,
                "the server is overloaded; retry later",
            )
        }
    } else {
        tracing::error!(error = %err, "request failed in a middleware");
        ApiError::new(ErrorCode::Internal, "internal error")
    };
    error.into_response()
}

/// CORS for `origins` (`*`: any origin), or `None` when there are none.
pub fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    let header = HeaderName::from_static;
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
            .allow_headers([
                AUTHORIZATION,
                CONTENT_TYPE,
                header("idempotency-key"),
                header("x-request-id"),
                header("traceparent"),
                header("tracestate"),
            ])
            .expose_headers([header("x-request-id"), RETRY_AFTER])
            .max_age(Duration::from_secs(600)),
    )
}

/// Keeps the rate limiters' memory bounded until `shutdown`.
pub async fn forget_idle_keys(
    limiter: Arc<RateLimiter>,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<(), Infallible> {
    let mut every = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = every.tick() => limiter.forget_idle(),
            () = shutdown.cancelled() => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(limits: EdgeLimits) -> RateLimiter {
        let (_, public) = twtr_common::tokens::generate_key_pair().unwrap();
        RateLimiter::new(&limits, TokenVerifier::from_pems(&[public]).unwrap())
    }

    fn request(method: Method, path: &str, peer: &str, forwarded: Option<&str>) -> Request {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(value) = forwarded {
            request = request.header("x-forwarded-for", value);
        }
        let mut request = request.body(axum::body::Body::empty()).unwrap();
        let peer: SocketAddr = peer.parse().unwrap();
        request.extensions_mut().insert(ConnectInfo(peer));
        request
    }

    fn behind(hops: usize, proxies: &[&str]) -> RateLimiter {
        limiter(EdgeLimits {
            trusted_proxy_hops: hops,
            trusted_proxies: proxies.iter().map(|n| n.parse().unwrap()).collect(),
            ..EdgeLimits::default()
        })
    }

    #[test]
    fn the_client_is_the_peer_unless_proxies_are_trusted() {
        let r = request(
            Method::GET,
            "/v1/timeline",
            "10.0.0.9:5000",
            Some("203.0.113.7, 198.51.100.2"),
        );
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert_eq!(limiter(EdgeLimits::default()).client_ip(&r), ip("10.0.0.9"));
        assert_eq!(behind(1, &["10.0.0.0/8"]).client_ip(&r), ip("198.51.100.2"));
        assert_eq!(behind(2, &["10.0.0.0/8"]).client_ip(&r), ip("203.0.113.7"));
        // Fewer entries than trusted hops: the header is not to be trusted; the peer it is.
        assert_eq!(behind(3, &["10.0.0.0/8"]).client_ip(&r), ip("10.0.0.9"));
    }

    #[test]
    fn forwarded_for_from_a_peer_outside_the_proxy_networks_is_ignored() {
        // Anyone can send the header: a client connecting directly names whom it likes.
        let spoofed = request(
            Method::GET,
            "/v1/timeline",
            "192.0.2.50:5000",
            Some("203.0.113.7, 198.51.100.2"),
        );
        let limiter = behind(2, &["130.211.0.0/22", "35.191.0.0/16"]);
        assert_eq!(
            limiter.client_ip(&spoofed),
            Some("192.0.2.50".parse().unwrap())
        );
        let via_google = request(
            Method::GET,
            "/v1/timeline",
            "35.191.3.4:5000",
            Some("203.0.113.7, 34.120.1.1"),
        );
        assert_eq!(
            limiter.client_ip(&via_google),
            Some("203.0.113.7".parse().unwrap())
        );
    }

    #[test]
    fn ipv6_clients_share_a_limit_per_64() {
        let limits = EdgeLimits {
            rates: RateLimits {
                per_ip: NonZeroU32::new(2),
                per_caller: None,
                auth_per_ip: None,
            },
            ..EdgeLimits::default()
        };
        let limiter = limiter(limits);
        let from = |peer: &str| request(Method::GET, "/v1/timeline", peer, None);
        assert!(limiter.check(&from("[2001:db8:1:2::1]:1")).is_ok());
        assert!(limiter.check(&from("[2001:db8:1:2:ffff::9]:1")).is_ok());
        // A third address in the same /64: the same subscriber, over the limit.
        assert!(limiter.check(&from("[2001:db8:1:2:abcd::1]:1")).is_err());
        // The next /64 is someone else.
        assert!(limiter.check(&from("[2001:db8:1:3::1]:1")).is_ok());
        // An IPv4 client on a dual-stack socket is keyed by its IPv4 address.
        assert_eq!(
            rate_key("::ffff:192.0.2.1".parse::<IpAddr>().unwrap().to_canonical()),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn login_and_sign_up_have_their_own_stricter_allowance() {
        let limits = EdgeLimits {
            rates: RateLimits {
                per_ip: NonZeroU32::new(100),
                per_caller: None,
                auth_per_ip: NonZeroU32::new(2),
            },
            ..EdgeLimits::default()
        };
        let limiter = limiter(limits);
        let login = || request(Method::POST, "/v1/sessions", "10.0.0.1:1", None);
        assert!(limiter.check(&login()).is_ok());
        assert!(limiter.check(&login()).is_ok());
        let refused = limiter.check(&login()).unwrap_err();
        assert_eq!(refused.code, ErrorCode::RateLimited);
        assert!(
            refused
                .retry_after
                .is_some_and(|secs| (1..=30).contains(&secs))
        );
        // Sign-up shares the allowance; other routes and other addresses do not.
        let sign_up = request(Method::POST, "/v1/users", "10.0.0.1:1", None);
        assert!(limiter.check(&sign_up).is_err());
        let read = request(Method::GET, "/v1/timeline", "10.0.0.1:1", None);
        assert!(limiter.check(&read).is_ok());
        let elsewhere = request(Method::POST, "/v1/sessions", "10.0.0.2:1", None);
        assert!(limiter.check(&elsewhere).is_ok());
    }

    #[test]
    fn switched_off_limits_never_refuse() {
        let limiter = limiter(EdgeLimits {
            rates: RateLimits::OFF,
            ..EdgeLimits::default()
        });
        for _ in 0..1000 {
            let login = request(Method::POST, "/v1/sessions", "10.0.0.1:1", None);
            assert!(limiter.check(&login).is_ok());
        }
    }

    #[test]
    fn cors_is_off_without_origins() {
        assert!(cors(&[]).is_none());
        assert!(cors(&["https://app.example".to_owned()]).is_some());
    }
}
