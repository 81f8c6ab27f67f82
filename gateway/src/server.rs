//! The HTTP server under the application: accepts connections and speaks HTTP/1.1 and HTTP/2
//! (hyper, through hyper-util's `auto` builder) with the connection-level limits that keep slow
//! or idle clients from holding the gateway:
//!
//! - **Header read timeout** ([`ConnectionLimits::header_read_timeout`]): an HTTP/1 client
//!   must send a whole request head within it, or its connection is closed. hyper starts the
//!   timer whenever it waits for a head, so it also bounds how long an idle keep-alive
//!   connection stays open.
//! - **Idle timeout** ([`ConnectionLimits::idle_timeout`]): a connection on which nothing was
//!   read or written for that long is closed (HTTP/2 connections without streams, mostly).
//! - **Header size** ([`ConnectionLimits::max_header_bytes`]): an HTTP/1 request head over it is
//!   answered 431 by hyper; an HTTP/2 header list over it is refused.
//! - **HTTP/2 streams** ([`ConnectionLimits::http2_max_concurrent_streams`]) per connection.
//!
//! What a request may take once its head has arrived (reading its body included) is the
//! application's deadline (see [`crate::app`]); what an API request may hold is one in-flight
//! slot ([`crate::limits`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

/// Per-connection limits of the HTTP server (configuration; see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub http2_max_concurrent_streams: u32,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(75),
            max_header_bytes: 16 * 1024,
            http2_max_concurrent_streams: 100,
        }
    }
}

/// hyper's HTTP/1 read buffer has a floor; the header limit cannot be lower.
pub const MIN_HEADER_BYTES: usize = 8 * 1024;

/// Serves `app` on `listener` until `shutdown`, then lets the requests in flight finish (for at
/// most `drain`) and closes every connection.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    drain: Duration,
    shutdown: CancellationToken,
) {
    let builder = builder(&limits);
    let graceful = GracefulShutdown::new();
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors or a connection reset before it was accepted:
                    // both pass; a short pause keeps a full descriptor table from spinning.
                    tracing::warn!(error = %err, "could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        // Nagle's algorithm off, or a response's last piece may wait for the client's delayed
        // ACK.
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::warn!(error = %err, "could not turn Nagle's algorithm off");
        }
        // The peer address is the client's (or the last proxy's), for the per-IP limits.
        let service = app
            .clone()
            .map_request(move |mut request: axum::http::Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            });
        let io = TokioIo::new(IdleTimeout::new(tcp, limits.idle_timeout));
        let connection = builder
            .serve_connection(io, TowerToHyperService::new(service))
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%peer, error = %err, "connection closed with an error");
            }
        });
    }
    drop(listener);
    tracing::info!(service = "gateway", "http server shutting down");
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "requests still in flight after {} ms; closing their connections",
            drain.as_millis()
        );
    }
}

fn builder(limits: &ConnectionLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(MIN_HEADER_BYTES));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

/// A connection that fails its next read once nothing has been read from or written to it for
/// `timeout`: hyper then closes it. (hyper always has a read pending on a connection it serves,
/// so the read side is where an idle connection is noticed.)
struct IdleTimeout {
    inner: TcpStream,
    timeout: Duration,
    idle: Pin<Box<Sleep>>,
}

impl IdleTimeout {
    fn new(inner: TcpStream, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            idle: Box::pin(tokio::time::sleep(timeout)),
        }
    }

    fn active(&mut self) {
        let deadline = Instant::now() + self.timeout;
        self.idle.as_mut().reset(deadline);
    }
}

impl AsyncRead for IdleTimeout {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    self.active();
                }
                Poll::Ready(result)
            }
            Poll::Pending => {
                ready!(self.idle.as_mut().poll(cx));
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection idle for too long",
                )))
            }
        }
    }
}

impl AsyncWrite for IdleTimeout {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = ready!(Pin::new(&mut self.inner).poll_write(cx, buf));
        if matches!(written, Ok(n) if n > 0) {
            self.active();
        }
        Poll::Ready(written)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, bufs));
        if matches!(written, Ok(n) if n > 0) {
            self.active();
        }
        Poll::Ready(written)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    async fn pair(timeout: Duration) -> (IdleTimeout, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (IdleTimeout::new(server, timeout), client)
    }

    #[tokio::test]
    async fn a_silent_connection_fails_its_read_after_the_idle_timeout() {
        let (mut server, _client) = pair(Duration::from_millis(200)).await;
        let mut buf = [0u8; 8];
        let err = server.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn traffic_keeps_a_connection_open() {
        let (mut server, mut client) = pair(Duration::from_millis(300)).await;
        let mut buf = [0u8; 8];
        // Each byte arrives before the timeout passes; the sum of the waits is well past it.
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            client.write_all(b"x").await.unwrap();
            assert_eq!(server.read(&mut buf).await.unwrap(), 1);
        }
        server.write_all(b"y").await.unwrap();
        assert_eq!(client.read(&mut buf).await.unwrap(), 1);
    }
}
