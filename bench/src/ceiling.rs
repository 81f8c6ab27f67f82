//! The ceiling: a bare HTTP server (axum, in this process) that answers every request with the
//! bytes of one feed page and does nothing else. What it serves per second, driven by the same
//! client over the same loopback, bounds what any twtr route can serve on this machine.

use anyhow::Context as _;
use axum::http::header;
use tokio_util::sync::CancellationToken;

pub struct Server {
    pub url: String,
    stop: CancellationToken,
}

impl Server {
    /// Serves `page` (a JSON body) on a free loopback port until [`Server::stop`].
    pub async fn start(page: Vec<u8>) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("failed to bind the ceiling server")?;
        let url = format!("http://{}", listener.local_addr()?);
        let body = axum::body::Bytes::from(page);
        let app = axum::Router::new().fallback(move || {
            let body = body.clone();
            async move { ([(header::CONTENT_TYPE, "application/json")], body) }
        });
        let stop = CancellationToken::new();
        let until = stop.clone();
        tokio::spawn(async move {
            // As the gateway does: Nagle's algorithm off.
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                let _ = tcp.set_nodelay(true);
            });
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { until.cancelled().await })
                .await;
        });
        Ok(Self { url, stop })
    }

    pub fn stop(&self) {
        self.stop.cancel();
    }
}
