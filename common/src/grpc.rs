//! Serving one twtr service over gRPC, the same way for every service: alongside the service
//! itself, `grpc.health.v1.Health` and server reflection (v1 and v1alpha: grpcurl 1.8 speaks only
//! the latter), so `grpcurl` can list and call it with no `.proto` files at hand.
//!
//! Every request runs with the caller's request id (see [`crate::context`]).
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

use crate::bus::Readiness;

use crate::context::RequestIdLayer;

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
    tonic::transport::Server::builder()
        .layer(RequestIdLayer)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(service)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), drained)
        .await
        .with_context(|| format!("gRPC server for {} failed", S::NAME))
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
