//! Serving one twtr service over gRPC, the same way for every service: alongside the service
//! itself, `grpc.health.v1.Health` and server reflection (v1 and v1alpha: grpcurl 1.8 speaks only
//! the latter), so `grpcurl` can list and call it with no `.proto` files at hand.
//!
//! Every request runs with the caller's request id (see [`crate::context`]).
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

use crate::context::RequestIdLayer;

const HEALTH_SERVICE: &str = "grpc.health.v1.Health";
const REFLECTION_SERVICES: [&str; 2] = [
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// Serves `service` on `listener` until `shutdown` is cancelled, then drains.
pub async fn serve<S>(
    service: S,
    listener: TcpListener,
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
    health.set_serving::<S>().await;

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
        health.set_not_serving::<S>().await;
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
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
