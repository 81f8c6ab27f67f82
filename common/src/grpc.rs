//! Serving one twtr service over gRPC, the same way for every service: alongside the service
//! itself, `grpc.health.v1.Health` and server reflection (v1 and v1alpha: grpcurl 1.8 speaks only
//! the latter), so `grpcurl` can list and call it with no `.proto` files at hand.
//!
//! Every request runs with the caller's request id (see [`crate::context`]), and with its caller
//! checked: a bearer token in the metadata is verified with the keys of the surrounding
//! [`auth::scope`] and the [`auth::Caller`] recorded for the service's [`auth::acting_as`].
//! The deadline a caller sets (`grpc-timeout`) is honored by tonic itself: when it passes, the
//! handler's future is dropped (the work stops) and the caller gets `CANCELLED`.
//!
//! Health follows the service's [`Readiness`] (its event bus): NOT_SERVING while the broker is
//! unreachable, though requests are still served (writes wait in the outbox).
//!
//! On shutdown, health turns NOT_SERVING first (so load balancers stop sending), then the server
//! stops accepting and drains the requests in flight.

use std::convert::Infallible;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::codegen::{Service, http};
use tonic::server::NamedService;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::auth::{self, CallerLayer};
use crate::bus::Readiness;
use crate::context::RequestIdLayer;
use crate::metrics::{self, GrpcMetricsLayer};

const HEALTH_SERVICE: &str = "grpc.health.v1.Health";
const REFLECTION_SERVICES: [&str; 2] = [
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// Serves `service` on `listener` until `shutdown` is cancelled, then drains. Health reports
/// SERVING only while `readiness` says ready.
pub async fn serve<S>(
    service: S,
    listener: TcpListener,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> anyhow::Result<()>
where
    S: Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let addr = listener
        .local_addr()
        .context("failed to read the gRPC listen address")?;
    let (health, health_service) = tonic_health::server::health_reporter();
    let reporter = tokio::spawn(report_readiness::<S>(
        health.clone(),
        readiness,
        shutdown.clone(),
    ));

    let reflection = || {
        let mut builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(twtr_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name(S::NAME)
            .with_service_name(HEALTH_SERVICE);
        for name in REFLECTION_SERVICES {
            builder = builder.with_service_name(name);
        }
        builder
    };
    let reflection_v1 = reflection()
        .build_v1()
        .context("failed to build reflection v1")?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .context("failed to build reflection v1alpha")?;

    tracing::info!(service = S::NAME, %addr, "grpc server listening");
    let drained = async move {
        shutdown.cancelled().await;
        tracing::info!(service = S::NAME, "grpc server shutting down");
        let _ = reporter.await;
        set_status::<S>(&health, ServingStatus::NotServing).await;
    };
    let callers = CallerLayer::new(auth::scoped_keys());
    if auth::scoped_keys().is_none() {
        tracing::warn!(
            service = S::NAME,
            "no keys to verify callers with: every call that acts as a user is refused"
        );
    }
    metrics::install();
    // Outermost first: every call is counted, refused ones included.
    tonic::transport::Server::builder()
        .layer(GrpcMetricsLayer)
        .layer(RequestIdLayer)
        .layer(callers)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(service)
        .serve_with_incoming_shutdown(without_nagle(listener), drained)
        .await
        .with_context(|| format!("gRPC server for {} failed", S::NAME))
}

/// The connections `listener` accepts, with Nagle's algorithm off. A gRPC response is written
/// in small pieces (headers, data, trailers); with Nagle on, the last one waits for the
/// caller's delayed ACK, about 40 ms on Linux, on every call.
fn without_nagle(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt as _;
    TcpListenerStream::new(listener).map(|accepted| {
        let stream = accepted?;
        stream.set_nodelay(true)?;
        Ok(stream)
    })
}

async fn set_status<S: NamedService>(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status(S::NAME, status).await;
    health.set_service_status("", status).await;
}

/// Mirrors `readiness` into the health service until `shutdown`, logging each change.
async fn report_readiness<S: NamedService>(
    health: HealthReporter,
    mut readiness: Readiness,
    shutdown: CancellationToken,
) {
    loop {
        let ready = readiness.is_ready();
        let status = if ready {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        set_status::<S>(&health, status).await;
        tracing::debug!(service = S::NAME, ready, "health updated");
        tokio::select! {
            changed = readiness.changed() => if !changed { shutdown.cancelled().await; return },
            () = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::task::{Context, Poll};
    use std::time::Duration;

    use super::*;

    /// A service whose one method never finishes, recording when its work starts and when it is
    /// dropped (abandoned).
    #[derive(Clone, Default)]
    struct Stuck {
        started: Arc<AtomicBool>,
        dropped: Arc<AtomicBool>,
    }

    impl NamedService for Stuck {
        const NAME: &'static str = "test.Stuck";
    }

    struct SetOnDrop(Arc<AtomicBool>);

    impl Drop for SetOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    impl Service<http::Request<tonic::body::Body>> for Stuck {
        type Response = http::Response<tonic::body::Body>;
        type Error = Infallible;
        type Future = std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>,
        >;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<tonic::body::Body>) -> Self::Future {
            let (started, guard) = (
                Arc::clone(&self.started),
                SetOnDrop(Arc::clone(&self.dropped)),
            );
            Box::pin(async move {
                let _guard = guard;
                started.store(true, Ordering::SeqCst);
                std::future::pending::<()>().await;
                unreachable!()
            })
        }
    }

    #[tokio::test]
    async fn a_call_past_its_deadline_is_cancelled_and_its_work_dropped() {
        let stuck = Stuck::default();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(
            stuck.clone(),
            listener,
            Readiness::always(),
            shutdown.clone(),
        ));
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = tonic::client::Grpc::new(channel);
        client.ready().await.unwrap();
        let mut request = tonic::Request::new(());
        request.set_timeout(Duration::from_millis(100));
        let path = http::uri::PathAndQuery::from_static("/test.Stuck/Wait");
        let codec = tonic_prost::ProstCodec::<(), ()>::default();
        let answered =
            tokio::time::timeout(Duration::from_secs(5), client.unary(request, path, codec))
                .await
                .expect("the server answered when the deadline passed");
        let status = answered.unwrap_err();

        assert_eq!(status.code(), tonic::Code::Cancelled, "{status:?}");
        assert!(stuck.started.load(Ordering::SeqCst), "the work had begun");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !stuck.dropped.load(Ordering::SeqCst) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the server kept working past the deadline"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        shutdown.cancel();
        server.await.unwrap().unwrap();
    }
}
