//! gRPC clients for the four services. Channels connect lazily and reconnect on their own, so
//! the gateway starts even while a service is still coming up. A URL whose host is a name (a
//! headless Kubernetes Service) gets a channel balanced per request across every address the
//! name resolves to ([`twtr_common::client`]).
//!
//! Every RPC is made with [`rpc`], which gives it what the HTTP request it serves has in
//! [`scope`]: what is left of the request's deadline (so the service stops working on it when
//! the caller can no longer use the answer, and the gateway answers 504), the caller's verified
//! token (so the service can check who acts; see `twtr_common::auth`), and the request id.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use twtr_common::{auth, context};
use twtr_proto::feeds::v1::feeds_service_client::FeedsServiceClient;
use twtr_proto::followers::v1::followers_service_client::FollowersServiceClient;
use twtr_proto::tweets::v1::tweets_service_client::TweetsServiceClient;
use twtr_proto::users::v1::users_service_client::UsersServiceClient;

use twtr_common::client::{Routable, routed_channel};
use twtr_common::tls::MeshTls;

use crate::authors::Authors;

/// The deadline of a request, and so of the RPCs it makes, when none is configured.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The least an RPC is given, so one made as the deadline passes fails as a deadline.
const MIN_RPC_TIMEOUT: Duration = Duration::from_millis(1);

/// Where each service is reached, e.g. `http://127.0.0.1:50051`.
#[derive(Debug, Clone)]
pub struct UpstreamUrls {
    pub users: String,
    pub tweets: String,
    pub followers: String,
    pub feeds: String,
}

#[derive(Clone)]
pub struct Upstreams {
    pub users: UsersServiceClient<Channel>,
    pub tweets: TweetsServiceClient<Channel>,
    pub followers: FollowersServiceClient<Channel>,
    pub feeds: FeedsServiceClient<Channel>,
    /// The users shown beside tweets, remembered for a few seconds ([`crate::authors`]).
    pub authors: Authors,
    /// Each service's health client and whether its URL leads anywhere, by service name: for
    /// readiness and the health details.
    pub health: Vec<(&'static str, HealthClient<Channel>, Routable)>,
}

impl Upstreams {
    /// Channels to the services at `urls`, over mutual TLS when `tls` is given.
    pub fn connect(urls: &UpstreamUrls, tls: Option<&MeshTls>) -> anyhow::Result<Self> {
        let (users, tweets, followers, feeds) = (
            routed_channel(&urls.users, tls)?,
            routed_channel(&urls.tweets, tls)?,
            routed_channel(&urls.followers, tls)?,
            routed_channel(&urls.feeds, tls)?,
        );
        let health = |(channel, routable): &(Channel, Routable)| {
            (HealthClient::new(channel.clone()), routable.clone())
        };
        let with_name = |name, (client, routable)| (name, client, routable);
        let health = vec![
            with_name("users", health(&users)),
            with_name("tweets", health(&tweets)),
            with_name("followers", health(&followers)),
            with_name("feeds", health(&feeds)),
        ];
        let (users, tweets, followers, feeds) = (users.0, tweets.0, followers.0, feeds.0);
        Ok(Self {
            health,
            authors: Authors::new(UsersServiceClient::new(users.clone())),
            users: UsersServiceClient::new(users),
            tweets: TweetsServiceClient::new(tweets),
            followers: FollowersServiceClient::new(followers),
            feeds: FeedsServiceClient::new(feeds),
        })
    }
}

/// What the RPCs made on behalf of one HTTP request share.
#[derive(Debug)]
struct CallScope {
    deadline: Instant,
    /// `Bearer <token>`, once the caller's token is verified.
    authorization: OnceLock<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

tokio::task_local! {
    static CALL: CallScope;
}

/// Runs `work` (an HTTP request's handling) with a deadline `timeout` from now for every RPC it
/// makes.
pub async fn scope<F: Future>(timeout: Duration, work: F) -> F::Output {
    let call = CallScope {
        deadline: Instant::now() + timeout,
        authorization: OnceLock::new(),
    };
    CALL.scope(call, work).await
}

/// The deadline of the request being served (`None` outside a request).
pub fn deadline() -> Option<Instant> {
    CALL.try_with(|call| call.deadline).ok()
}

/// Whether the deadline of the request being served has passed (false outside a request).
pub fn deadline_passed() -> bool {
    CALL.try_with(|call| Instant::now() >= call.deadline)
        .unwrap_or(false)
}

/// Forwards the caller's token, verified, with every RPC made from now on for this request.
pub fn forward_token(token: &str) {
    let Ok(value) = format!("Bearer {token}").parse() else {
        return;
    };
    let _ = CALL.try_with(|call| call.authorization.set(value));
}

/// Wraps a message in a request with what is left of the HTTP request's deadline, the caller's
/// token (when verified) and the current request id.
pub fn rpc<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let (timeout, authorization) = CALL
        .try_with(|call| {
            let left = call.deadline.saturating_duration_since(Instant::now());
            (left, call.authorization.get().cloned())
        })
        .unwrap_or((DEFAULT_REQUEST_TIMEOUT, None));
    request.set_timeout(timeout.max(MIN_RPC_TIMEOUT));
    if let Some(value) = authorization {
        request.metadata_mut().insert(auth::AUTHORIZATION, value);
    }
    if let Some(id) = context::current().and_then(|id| id.parse().ok()) {
        request.metadata_mut().insert(context::REQUEST_ID, id);
    }
    context::inject_trace(&mut context::Metadata(request.metadata_mut()));
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeout_of<T>(request: &tonic::Request<T>) -> Duration {
        let value = request.metadata().get("grpc-timeout").unwrap();
        let value = value.to_str().unwrap();
        let (number, unit) = value.split_at(value.len() - 1);
        let number: u64 = number.parse().unwrap();
        match unit {
            "n" => Duration::from_nanos(number),
            "u" => Duration::from_micros(number),
            "m" => Duration::from_millis(number),
            "S" => Duration::from_secs(number),
            other => panic!("unit {other}"),
        }
    }

    #[tokio::test]
    async fn calls_carry_the_request_id_and_a_deadline() {
        let request = context::scope("req-7".into(), async { rpc(()) }).await;
        let sent = request
            .metadata()
            .get(context::REQUEST_ID)
            .and_then(|v| v.to_str().ok());
        assert_eq!(sent, Some("req-7"));
        assert_eq!(timeout_of(&request), DEFAULT_REQUEST_TIMEOUT);
        assert!(request.metadata().get(auth::AUTHORIZATION).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn rpcs_get_what_is_left_of_the_requests_deadline() {
        scope(Duration::from_secs(3), async {
            assert_eq!(timeout_of(&rpc(())), Duration::from_secs(3));
            tokio::time::advance(Duration::from_secs(2)).await;
            assert_eq!(timeout_of(&rpc(())), Duration::from_secs(1));
        })
        .await;
        scope(Duration::ZERO, async {
            assert_eq!(timeout_of(&rpc(())), MIN_RPC_TIMEOUT, "an expired budget");
        })
        .await;
    }

    #[tokio::test]
    async fn the_verified_token_is_forwarded_once_known() {
        scope(Duration::from_secs(1), async {
            assert!(rpc(()).metadata().get(auth::AUTHORIZATION).is_none());
            forward_token("abc.def.ghi");
            let request = rpc(());
            assert_eq!(
                request.metadata().get(auth::AUTHORIZATION).unwrap(),
                "Bearer abc.def.ghi"
            );
        })
        .await;
        // Outside a request there is nothing to forward to.
        forward_token("ignored");
        assert!(rpc(()).metadata().get(auth::AUTHORIZATION).is_none());
    }
}
