//! A small typed client of twtr's public HTTP API (DESIGN.md, "Edge API"): just what seeding
//! and benchmarking call.

use std::time::Duration;

use anyhow::Context as _;
use reqwest::StatusCode;
use serde::Deserialize;

/// The password of every seeded account.
pub const PASSWORD: &str = "bench-password-1";

#[derive(Debug, Clone)]
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

/// What an HTTP call came back with, when it was not what was hoped for.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("HTTP {0}")]
    Status(StatusCode),
    #[error("request failed: {0}")]
    Transport(#[from] reqwest::Error),
}

impl CallError {
    /// Worth trying again: the service said it is busy, the request ran out of time (a store
    /// under load; every call the seeder repeats is idempotent), or the connection broke.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Status(s) => matches!(
                *s,
                StatusCode::SERVICE_UNAVAILABLE
                    | StatusCode::GATEWAY_TIMEOUT
                    | StatusCode::TOO_MANY_REQUESTS
            ),
            Self::Transport(_) => true,
        }
    }
}

#[derive(Debug, Deserialize)]
struct Created {
    id: String,
}

#[derive(Debug, Deserialize)]
struct Session {
    token: String,
}

#[derive(Debug, Deserialize)]
pub struct FeedPage {
    pub items: Vec<FeedItem>,
}

#[derive(Debug, Deserialize)]
pub struct FeedItem {
    pub id: String,
}

impl Api {
    /// A client of the gateway at `base` (e.g. `http://127.0.0.1:8080`) holding up to
    /// `connections` idle keep-alive connections.
    pub fn new(base: &str, connections: usize) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(connections)
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(30))
            .build()
            .context("failed to build the HTTP client")?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            http,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Signs up `username`; `Ok(None)` when the name is taken (409).
    pub async fn sign_up(&self, username: &str) -> Result<Option<u64>, CallError> {
        let body = serde_json::json!({ "username": username, "password": PASSWORD });
        let response = self
            .http
            .post(self.url("/v1/users"))
            .json(&body)
            .send()
            .await?;
        match response.status() {
            StatusCode::CREATED => Ok(Some(parse_id(&response.json::<Created>().await?.id)?)),
            StatusCode::CONFLICT => Ok(None),
            status => Err(CallError::Status(status)),
        }
    }

    pub async fn user_id(&self, username: &str) -> Result<u64, CallError> {
        let response = self
            .http
            .get(self.url(&format!("/v1/users/by-username/{username}")))
            .send()
            .await?;
        match response.status() {
            StatusCode::OK => parse_id(&response.json::<Created>().await?.id),
            status => Err(CallError::Status(status)),
        }
    }

    pub async fn log_in(&self, username: &str) -> Result<String, CallError> {
        let body = serde_json::json!({ "username": username, "password": PASSWORD });
        let response = self
            .http
            .post(self.url("/v1/sessions"))
            .json(&body)
            .send()
            .await?;
        match response.status() {
            StatusCode::OK => Ok(response.json::<Session>().await?.token),
            status => Err(CallError::Status(status)),
        }
    }

    pub async fn follow(&self, token: &str, followee: u64) -> Result<(), CallError> {
        let response = self
            .http
            .post(self.url(&format!("/v1/users/{followee}/follow")))
            .bearer_auth(token)
            .send()
            .await?;
        expect(response.status(), StatusCode::NO_CONTENT)
    }

    /// Posts `text`; with a key, a repeat returns the first tweet. Returns the tweet's ID.
    pub async fn post(&self, token: &str, text: &str, key: Option<&str>) -> Result<u64, CallError> {
        let mut request = self
            .http
            .post(self.url("/v1/tweets"))
            .bearer_auth(token)
            .json(&serde_json::json!({ "text": text }));
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        let response = request.send().await?;
        expect(response.status(), StatusCode::CREATED)?;
        parse_id(&response.json::<Created>().await?.id)
    }

    /// One page of the caller's home feed; the body is read in full (and parsed only when
    /// `parse` is set, which a load generator skips to stay cheap).
    pub async fn feed(&self, token: &str, query: &str) -> Result<Option<FeedPage>, CallError> {
        let response = self
            .http
            .get(self.url(&format!("/v1/feed?{query}")))
            .bearer_auth(token)
            .send()
            .await?;
        expect(response.status(), StatusCode::OK)?;
        let body = response.bytes().await?;
        Ok(serde_json::from_slice(&body).ok())
    }

    /// GET `path` and read the whole body; `Ok(bytes)` on 200.
    pub async fn get(&self, path: &str, token: Option<&str>) -> Result<usize, CallError> {
        let mut request = self.http.get(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await?;
        expect(response.status(), StatusCode::OK)?;
        Ok(response.bytes().await?.len())
    }

    /// The raw bytes of a 200 answer to `path`.
    pub async fn get_bytes(&self, path: &str, token: Option<&str>) -> Result<Vec<u8>, CallError> {
        let mut request = self.http.get(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await?;
        expect(response.status(), StatusCode::OK)?;
        Ok(response.bytes().await?.to_vec())
    }
}

fn expect(got: StatusCode, wanted: StatusCode) -> Result<(), CallError> {
    if got == wanted {
        Ok(())
    } else {
        Err(CallError::Status(got))
    }
}

fn parse_id(id: &str) -> Result<u64, CallError> {
    id.parse()
        .map_err(|_| CallError::Status(StatusCode::BAD_GATEWAY))
}

/// Calls `call` until it succeeds or fails for good, waiting a little longer after each
/// transient failure (503 from a busy password hasher, a 504, a dropped connection).
pub async fn with_retries<T, F, Fut>(mut call: F) -> Result<T, CallError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, CallError>>,
{
    let mut wait = Duration::from_millis(50);
    let mut attempt = 0;
    loop {
        match call().await {
            Err(err) if err.is_transient() && attempt < 20 => {
                attempt += 1;
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
            other => return other,
        }
    }
}
