//! Serving one twtr service over gRPC, the same way for every service: alongside the service
//! itself, `grpc.health.v1.Health` and server reflection (v1 and v1alpha: grpcurl 1.8 speaks only
//! the latter), so `grpcurl` can list and call it with no `.proto` files at hand.
//!
//! Every request runs with the caller's request id (see [`crate::context`]), and with its caller
//! checked: a bearer token in the metadata is verified with the service's keys
//! ([`Serving::tokens`]) and the [`crate::auth::Caller`] recorded for the service's
//! [`crate::auth::acting_as`]. With mutual TLS on ([`Serving::tls`]), the server speaks TLS
//! only, to callers whose certificate the CA signed, and keeps the service-only methods to the
//! parts ([`crate::tls`]); health and reflection are behind TLS too, so probes and `grpcurl`
//! need a certificate.
//! The deadline a caller sets (`grpc-timeout`) is honored by tonic itself: when it passes, the
//! handler's future is dropped (the work stops) and the caller gets `CANCELLED`.
//!
//! # Health
//!
//! Readiness means "this process can serve its own requests": it listens and its own store
//! answers ([`store_readiness`] probes it). The overall entry (`""`) and the service's own name
//! follow that, and nothing else: a dependency that every replica shares, such as the event
//! broker, never takes a replica out of its load balancer (that would take every replica out at
//! once and turn a blip into an outage). The broker has an entry of its own, [`EVENTS_HEALTH`]
//! (`twtr.events`), for humans and alerts: while it is down, writes still succeed and their
//! events wait in the outbox.
//!
//! On shutdown, every entry turns NOT_SERVING first (so load balancers stop sending), then the
//! server stops accepting and drains the requests in flight.

use std::convert::Infallible;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::codegen::{Service, http};
use tonic::server::NamedService;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use twtr_proto::admin::v1::admin_server::AdminServer;
use twtr_proto::events::v1::dead_letters_server::DeadLettersServer;

use crate::auth::CallerLayer;
use crate::backup::BackupAdmin;
use crate::bus::Readiness;
use crate::bus::admin::DeadLetterAdmin;
use crate::context::RequestIdLayer;
use crate::error::error_chain;
use crate::metrics::{self, GrpcMethods, GrpcMetricsLayer};
use crate::store::StoreError;
use crate::tls::{MeshTls, ServiceOnlyLayer};
use crate::tokens::TokenVerifier;

const HEALTH_SERVICE: &str = "grpc.health.v1.Health";
/// The health entry of the event broker (see the [module docs](self)).
pub const EVENTS_HEALTH: &str = "twtr.events";
const DEAD_LETTERS_SERVICE: &str = "twtr.events.v1.DeadLetters";
const ADMIN_SERVICE: &str = "twtr.admin.v1.Admin";
/// How often a ready store is probed, and an unready one.
const PROBE_READY: std::time::Duration = std::time::Duration::from_secs(5);
const PROBE_UNREADY: std::time::Duration = std::time::Duration::from_secs(1);
/// How long a probe may take before it counts as failed.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// What a served service's health follows, and the operator endpoints beside it.
pub struct Serving {
    /// Readiness: the service's own store answers ([`store_readiness`]).
    pub ready: Readiness,
    /// The event broker, shown as the [`EVENTS_HEALTH`] entry; never readiness.
    pub events: Readiness,
    /// The dead letters of the queue the service consumes, if it consumes one.
    pub dead_letters: Option<DeadLettersServer<DeadLetterAdmin>>,
    /// Backups of the process's embedded files, if it keeps its data in them.
    pub admin: Option<AdminServer<BackupAdmin>>,
    /// The keys callers' tokens are verified with; `None` refuses every call that acts as a
    /// user.
    pub tokens: Option<Arc<TokenVerifier>>,
    /// Mutual TLS: serve over TLS only, to callers with a certificate the CA signed, and keep
    /// the service-only methods to the parts ([`crate::tls`]). `None`: plaintext.
    pub tls: Option<MeshTls>,
}

impl Serving {
    /// Always ready, no broker, no dead letters (tests, and services with nothing to probe).
    pub fn always() -> Self {
        Self {
            ready: Readiness::always(),
            events: Readiness::always(),
            dead_letters: None,
            admin: None,
            tokens: None,
            tls: None,
        }
    }
}

/// Readiness that follows whether `ping` succeeds: it is probed now, then every 5 s while it
/// answers and every second while it does not, until `shutdown`. Each change is logged once
/// and shown in `twtr_dependency_up{dependency="<name>_store"}`.
pub async fn store_readiness<F, Fut>(name: &str, ping: F, shutdown: CancellationToken) -> Readiness
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), StoreError>> + Send,
{
    let probe = move || {
        let attempt = ping();
        async move {
            match tokio::time::timeout(PROBE_TIMEOUT, attempt).await {
                Ok(answer) => answer,
                Err(elapsed) => Err(StoreError::backend(elapsed)),
            }
        }
    };
    let dependency = format!("{name}_store");
    let first = probe().await;
    if let Err(err) = &first {
        tracing::warn!(service = name, error = %error_chain(err), "the store does not answer; not ready until it does");
    }
    crate::metrics::dependency_up(&dependency, first.is_ok());
    let (sender, receiver) = tokio::sync::watch::channel(first.is_ok());
    let name = name.to_owned();
    tokio::spawn(async move {
        loop {
            let wait = if *sender.borrow() {
                PROBE_READY
            } else {
                PROBE_UNREADY
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            let answered = probe().await;
            let up = answered.is_ok();
            if sender.send_replace(up) != up {
                match &answered {
                    Ok(()) => tracing::info!(service = name, "the store answers again; ready"),
                    Err(err) => {
                        tracing::warn!(service = name, error = %error_chain(err), "the store does not answer; not ready until it does")
                    }
                }
                crate::metrics::dependency_up(&dependency, up);
            }
        }
    });
    Readiness::new(receiver)
}
const REFLECTION_SERVICES: [&str; 2] = [
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// Serves `service` (and the operator endpoints of `serving`) on `listener` until `shutdown` is
/// cancelled, then drains. Health follows `serving` (see the [module docs](self)).
pub async fn serve<S>(
    service: S,
    listener: TcpListener,
    serving: Serving,
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
    let reporters = [
        tokio::spawn(report(
            health.clone(),
            vec!["", S::NAME],
            serving.ready,
            shutdown.clone(),
        )),
        tokio::spawn(report(
            health.clone(),
            vec![EVENTS_HEALTH],
            serving.events,
            shutdown.clone(),
        )),
    ];
    let dead_letters = serving.dead_letters;
    let serves_dead_letters = dead_letters.is_some();
    let admin = serving.admin;
    let serves_admin = admin.is_some();

    let reflection = || {
        let mut builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(twtr_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name(S::NAME)
            .with_service_name(HEALTH_SERVICE);
        for name in REFLECTION_SERVICES {
            builder = builder.with_service_name(name);
        }
        if serves_dead_letters {
            builder = builder.with_service_name(DEAD_LETTERS_SERVICE);
        }
        if serves_admin {
            builder = builder.with_service_name(ADMIN_SERVICE);
        }
        builder
    };
    let reflection_v1 = reflection()
        .build_v1()
        .context("failed to build reflection v1")?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .context("failed to build reflection v1alpha")?;

    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = &serving.tls {
        server = server
            .tls_config(tls.server_config())
            .context("failed to configure TLS")?;
    }
    let service_only = ServiceOnlyLayer::new(serving.tls);
    tracing::info!(service = S::NAME, %addr, tls = service_only.enabled(), "grpc server listening");
    let drained = async move {
        shutdown.cancelled().await;
        tracing::info!(service = S::NAME, "grpc server shutting down");
        for reporter in reporters {
            let _ = reporter.await;
        }
        for name in ["", S::NAME, EVENTS_HEALTH] {
            health
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
    };
    let callers = CallerLayer::new(serving.tokens);
    let mut served = vec![S::NAME];
    if serves_dead_letters {
        served.push(DEAD_LETTERS_SERVICE);
    }
    if serves_admin {
        served.push(ADMIN_SERVICE);
    }
    metrics::install();
    // Outermost first: every call is counted, refused ones included.
    server
        .layer(GrpcMetricsLayer::new(GrpcMethods::of(&served)))
        .layer(RequestIdLayer)
        .layer(service_only)
        .layer(callers)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(service)
        .add_optional_service(dead_letters)
        .add_optional_service(admin)
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

/// Mirrors `readiness` into the health entries `names` until `shutdown`, logging each change.
async fn report(
    health: HealthReporter,
    names: Vec<&'static str>,
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
        for name in &names {
            health.set_service_status(*name, status).await;
        }
        tracing::debug!(entries = ?names, ready, "health updated");
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
            Serving::always(),
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
