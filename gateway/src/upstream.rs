//! gRPC clients for the four services. Channels connect lazily and reconnect on their own, so
//! the gateway starts even while a service is still coming up; every call carries a deadline
//! that the service honors. A URL whose host is a name (a headless Kubernetes Service) gets a
//! channel balanced per request across every address the name resolves to ([`crate::balance`]).

use std::time::Duration;

use anyhow::Context as _;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_client::HealthClient;
use twtr_common::context;
use twtr_proto::feeds::v1::feeds_service_client::FeedsServiceClient;
use twtr_proto::followers::v1::followers_service_client::FollowersServiceClient;
use twtr_proto::tweets::v1::tweets_service_client::TweetsServiceClient;
use twtr_proto::users::v1::users_service_client::UsersServiceClient;

use crate::balance;

/// The deadline of each RPC the gateway makes.
pub const RPC_DEADLINE: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

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
    /// Health clients, by service name, for readiness.
    pub health: Vec<(&'static str, HealthClient<Channel>)>,
}

/// A lazily connected channel to `url`: to the one server of an IP literal (or `localhost`), or
/// balanced across the addresses a host name resolves to. Must be called within a tokio runtime.
pub fn channel(url: &str) -> anyhow::Result<Channel> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("invalid service URL {url:?}"))?;
    Ok(match balance::host_to_balance(endpoint.uri()) {
        Some(host) => balance::balanced_channel(endpoint, host, connection_options),
        None => connection_options(endpoint).connect_lazy(),
    })
}

/// The options of every connection to a service.
fn connection_options(endpoint: Endpoint) -> Endpoint {
    endpoint.connect_timeout(CONNECT_TIMEOUT).tcp_nodelay(true)
}

impl Upstreams {
    pub fn connect(urls: &UpstreamUrls) -> anyhow::Result<Self> {
        let (users, tweets, followers, feeds) = (
            channel(&urls.users)?,
            channel(&urls.tweets)?,
            channel(&urls.followers)?,
            channel(&urls.feeds)?,
        );
        Ok(Self {
            health: vec![
                ("users", HealthClient::new(users.clone())),
                ("tweets", HealthClient::new(tweets.clone())),
                ("followers", HealthClient::new(followers.clone())),
                ("feeds", HealthClient::new(feeds.clone())),
            ],
            users: UsersServiceClient::new(users),
            tweets: TweetsServiceClient::new(tweets),
            followers: FollowersServiceClient::new(followers),
            feeds: FeedsServiceClient::new(feeds),
        })
    }
}

/// Wraps a message in a request with the gateway's deadline and the current request id.
pub fn rpc<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(RPC_DEADLINE);
    if let Some(id) = context::current().and_then(|id| id.parse().ok()) {
        request.metadata_mut().insert(context::REQUEST_ID, id);
    }
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn calls_carry_the_request_id_and_a_deadline() {
        let request = context::scope("req-7".into(), async { rpc(()) }).await;
        let sent = request
            .metadata()
            .get(context::REQUEST_ID)
            .and_then(|v| v.to_str().ok());
        assert_eq!(sent, Some("req-7"));
        assert!(request.metadata().get("grpc-timeout").is_some());
    }
}
