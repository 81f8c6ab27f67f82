//! Mutual TLS between the parts, optional.
//!
//! With the three settings (`TWTR_GRPC_TLS_CERT`, `TWTR_GRPC_TLS_KEY`, `TWTR_GRPC_TLS_CA`: PEM
//! files) a process serves gRPC over TLS only, requires every caller to present a certificate
//! signed by the CA, and calls the other parts over TLS with the same certificate, checking
//! that theirs names the host of the service's URL. Without them everything is plaintext, as
//! before; a partial set is refused at startup ([`TlsFiles::from_settings`]).
//!
//! The certificate is also who the caller is. A few methods exist for the parts to call each
//! other and for no one else ([`SERVICE_ONLY_METHODS`]: the token-state and batch reads, login):
//! with TLS on, [`ServiceOnlyLayer`] (which every gRPC server runs, see [`crate::grpc`]) refuses
//! them (`PERMISSION_DENIED`) to a caller whose certificate does not name a twtr service
//! ([`MeshTls::service_names`], `TWTR_GRPC_TLS_SERVICE_NAMES`), such as an operator's for
//! `grpcurl`, who can still call everything else. With TLS off, nothing tells a part from an
//! operator, and those methods are as open as the network lets them be (the chart's
//! NetworkPolicies).
//!
//! A certificate names a service when its subject's common name, one of its DNS or URI subject
//! alternative names, or the first label of a DNS name (`twtr-users` of
//! `twtr-users.twtr.svc.cluster.local`) is on the list, ignoring case.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use tonic::codegen::http;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// The names a certificate of a twtr part carries by default (the chart's Service names for a
/// release called `twtr`).
pub const DEFAULT_SERVICE_NAMES: [&str; 5] = [
    "twtr-gateway",
    "twtr-users",
    "twtr-tweets",
    "twtr-followers",
    "twtr-feeds",
];

/// Methods only the parts call: with TLS on, only a caller whose certificate names a twtr
/// service may call them. Token states and login are the gateway's; the batch reads are how the
/// gateway (and the services) hydrate pages, and would let anyone else scrape whole tables.
pub const SERVICE_ONLY_METHODS: [&str; 6] = [
    "/twtr.users.v1.UsersService/GetTokenStates",
    "/twtr.users.v1.UsersService/Login",
    "/twtr.users.v1.UsersService/BatchGetUsers",
    "/twtr.tweets.v1.TweetsService/BatchGetTweets",
    "/twtr.tweets.v1.TweetsService/BatchGetTweetCounts",
    "/twtr.followers.v1.FollowersService/BatchGetCounts",
];

/// How long a TLS handshake may take before the server drops the connection.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the PEM files of mutual TLS are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// This process's certificate (it may be followed by intermediates).
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// The CA that signed every part's certificate: what peers are checked against.
    pub ca: PathBuf,
}

impl TlsFiles {
    /// The files of the three settings: all set turns mutual TLS on, none leaves it off, and
    /// anything in between is an error that names what is missing.
    pub fn from_settings(
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        ca: Option<PathBuf>,
    ) -> anyhow::Result<Option<Self>> {
        let nonempty = |p: Option<PathBuf>| p.filter(|p| !p.as_os_str().is_empty());
        match (nonempty(cert), nonempty(key), nonempty(ca)) {
            (None, None, None) => Ok(None),
            (Some(cert), Some(key), Some(ca)) => Ok(Some(Self { cert, key, ca })),
            (cert, key, ca) => {
                let missing: Vec<&str> = [
                    (cert.is_none(), "TWTR_GRPC_TLS_CERT"),
                    (key.is_none(), "TWTR_GRPC_TLS_KEY"),
                    (ca.is_none(), "TWTR_GRPC_TLS_CA"),
                ]
                .into_iter()
                .filter_map(|(gone, name)| gone.then_some(name))
                .collect();
                anyhow::bail!(
                    "mutual TLS needs all three of TWTR_GRPC_TLS_CERT, TWTR_GRPC_TLS_KEY and \
                     TWTR_GRPC_TLS_CA; missing: {}",
                    missing.join(", ")
                )
            }
        }
    }
}

/// Mutual TLS, loaded: what a server accepts and what a client presents and trusts.
#[derive(Clone)]
pub struct MeshTls {
    identity: Identity,
    ca: Certificate,
    /// The name to check servers' certificates against instead of each URL's host.
    server_name: Option<String>,
    /// Names of the twtr parts' certificates (see the [module docs](self)).
    services: Arc<[String]>,
}

impl std::fmt::Debug for MeshTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshTls")
            .field("server_name", &self.server_name)
            .field("services", &self.services)
            .finish_non_exhaustive()
    }
}

impl MeshTls {
    /// Reads and checks `files`. `server_name` overrides the name servers' certificates are
    /// checked against (normally each service URL's host); `services` lists the names of the
    /// parts' certificates (empty: [`DEFAULT_SERVICE_NAMES`]).
    pub fn load(
        files: &TlsFiles,
        server_name: Option<String>,
        services: Vec<String>,
    ) -> anyhow::Result<Self> {
        let read = |path: &Path, what: &str| {
            std::fs::read(path)
                .with_context(|| format!("failed to read the TLS {what} {}", path.display()))
        };
        let cert = read(&files.cert, "certificate (TWTR_GRPC_TLS_CERT)")?;
        let key = read(&files.key, "key (TWTR_GRPC_TLS_KEY)")?;
        let ca = read(&files.ca, "CA certificate (TWTR_GRPC_TLS_CA)")?;
        Self::from_pem(&cert, &key, &ca, server_name, services)
    }

    /// [`MeshTls::load`] from the PEM text itself.
    pub fn from_pem(
        cert: &[u8],
        key: &[u8],
        ca: &[u8],
        server_name: Option<String>,
        services: Vec<String>,
    ) -> anyhow::Result<Self> {
        let own =
            first_certificate(cert).context("invalid TLS certificate (TWTR_GRPC_TLS_CERT)")?;
        first_certificate(ca).context("invalid TLS CA certificate (TWTR_GRPC_TLS_CA)")?;
        let services: Vec<String> = services
            .into_iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        let services = if services.is_empty() {
            DEFAULT_SERVICE_NAMES.map(str::to_owned).to_vec()
        } else {
            services
        };
        let tls = Self {
            identity: Identity::from_pem(cert, key),
            ca: Certificate::from_pem(ca),
            server_name: server_name.filter(|s| !s.is_empty()),
            services: services.into(),
        };
        // Both sides build their rustls configuration now, so a key that does not match the
        // certificate (or cannot be read) stops the process at startup, not at the first call.
        tonic::transport::Server::builder()
            .tls_config(tls.server_config())
            .context("invalid TLS certificate or key (TWTR_GRPC_TLS_CERT, TWTR_GRPC_TLS_KEY)")?;
        tonic::transport::Endpoint::from_static("https://localhost")
            .tls_config(tls.client_config("localhost"))
            .context("invalid TLS certificate or key (TWTR_GRPC_TLS_CERT, TWTR_GRPC_TLS_KEY)")?;
        tracing::info!(
            certificate_names = ?certificate_names(&own),
            service = tls.is_service(&own),
            "grpc mutual tls on"
        );
        Ok(tls)
    }

    /// What a server requires: TLS, and a client certificate the CA signed.
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity.clone())
            .client_ca_root(self.ca.clone())
            .timeout(HANDSHAKE_TIMEOUT)
    }

    /// What a client presents and trusts when it calls the server at `host` (the host of the
    /// service's URL), whose certificate must name that host (or the configured server name).
    pub fn client_config(&self, host: &str) -> ClientTlsConfig {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        ClientTlsConfig::new()
            .identity(self.identity.clone())
            .ca_certificate(self.ca.clone())
            .domain_name(self.server_name.as_deref().unwrap_or(host))
    }

    /// The names that make a certificate a twtr part's.
    pub fn service_names(&self) -> &[String] {
        &self.services
    }

    /// Whether the certificate (DER) names a twtr service (see the [module docs](self)).
    pub fn is_service(&self, der: &[u8]) -> bool {
        certificate_names(der).iter().any(|name| {
            let first_label = name.split('.').next().unwrap_or(name);
            self.services.iter().any(|service| {
                service.eq_ignore_ascii_case(name) || service.eq_ignore_ascii_case(first_label)
            })
        })
    }
}

/// The DER of the first certificate in `pem`.
fn first_certificate(pem: &[u8]) -> anyhow::Result<Vec<u8>> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).context("not a PEM certificate")?;
    anyhow::ensure!(
        pem.label == "CERTIFICATE",
        "a PEM {} where a CERTIFICATE was expected",
        pem.label
    );
    pem.parse_x509().context("not an X.509 certificate")?;
    Ok(pem.contents)
}

/// The names a certificate (DER) is known by: its subject's common names and its DNS and URI
/// subject alternative names. Empty for what does not parse.
pub fn certificate_names(der: &[u8]) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .map(str::to_owned)
        .collect();
    if let Ok(Some(sans)) = cert.subject_alternative_name() {
        for name in &sans.value.general_names {
            match name {
                GeneralName::DNSName(name) | GeneralName::URI(name) => {
                    names.push((*name).to_owned());
                }
                _ => {}
            }
        }
    }
    names
}

/// Tower layer for gRPC servers: with TLS on, refuses [`SERVICE_ONLY_METHODS`] to callers
/// whose certificate does not name a twtr service (`PERMISSION_DENIED`). With TLS off
/// (`None`), it lets everything through.
#[derive(Debug, Clone, Default)]
pub struct ServiceOnlyLayer {
    tls: Option<MeshTls>,
}

impl ServiceOnlyLayer {
    pub fn new(tls: Option<MeshTls>) -> Self {
        Self { tls }
    }

    /// Whether TLS is on (and so the service-only methods are kept to the parts).
    pub fn enabled(&self) -> bool {
        self.tls.is_some()
    }

    /// Whether the call may go on: `Err` with the refusal when it may not.
    fn check<B>(&self, request: &http::Request<B>) -> Result<(), tonic::Status> {
        let Some(tls) = &self.tls else {
            return Ok(());
        };
        let method = request.uri().path();
        if !SERVICE_ONLY_METHODS.contains(&method) {
            return Ok(());
        }
        let peer = request
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(TlsConnectInfo::peer_certs);
        let leaf = peer.as_ref().and_then(|certs| certs.first());
        if leaf.is_some_and(|cert| tls.is_service(cert)) {
            return Ok(());
        }
        let names = leaf.map(|cert| certificate_names(cert)).unwrap_or_default();
        tracing::info!(%method, certificate_names = ?names, "call refused: not a twtr service");
        Err(tonic::Status::permission_denied(format!(
            "{method} is for twtr services only: the client certificate names {names:?}, none of \
             {:?} (TWTR_GRPC_TLS_SERVICE_NAMES)",
            tls.services
        )))
    }
}

impl<S> tower::Layer<S> for ServiceOnlyLayer {
    type Service = ServiceOnly<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServiceOnly {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`ServiceOnlyLayer`] makes.
#[derive(Debug, Clone)]
pub struct ServiceOnly<S> {
    inner: S,
    layer: ServiceOnlyLayer,
}

impl<S, B, RB> tower::Service<http::Request<B>> for ServiceOnly<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        match self.layer.check(&request) {
            Ok(()) => Box::pin(self.inner.call(request)),
            Err(status) => Box::pin(std::future::ready(Ok(status.into_http::<RB>()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::time::Duration;

    use tokio::net::TcpListener;
    use tokio_util::sync::CancellationToken;
    use tonic::server::NamedService;
    use tonic::transport::Endpoint;

    use super::*;
    use crate::grpc::{Serving, serve};
    use crate::testing::pki::TestPki;

    #[test]
    fn all_three_files_or_none_and_a_partial_set_names_what_is_missing() {
        let p = |s: &str| Some(PathBuf::from(s));
        assert_eq!(TlsFiles::from_settings(None, None, None).unwrap(), None);
        assert_eq!(
            TlsFiles::from_settings(p(""), p(""), None).unwrap(),
            None,
            "empty values are unset"
        );
        assert_eq!(
            TlsFiles::from_settings(p("c.pem"), p("k.pem"), p("ca.pem")).unwrap(),
            Some(TlsFiles {
                cert: "c.pem".into(),
                key: "k.pem".into(),
                ca: "ca.pem".into()
            })
        );
        let partial = TlsFiles::from_settings(p("c.pem"), None, p("ca.pem")).unwrap_err();
        assert!(
            partial.to_string().ends_with("missing: TWTR_GRPC_TLS_KEY"),
            "{partial}"
        );
        let partial = TlsFiles::from_settings(None, None, p("ca.pem")).unwrap_err();
        assert!(
            partial
                .to_string()
                .ends_with("missing: TWTR_GRPC_TLS_CERT, TWTR_GRPC_TLS_KEY"),
            "{partial}"
        );
    }

    #[test]
    fn a_key_that_is_not_the_certificates_or_no_certificate_is_refused_at_load() {
        let (one, other) = (TestPki::generate(), TestPki::generate());
        let load = |cert: &str, key: &str, ca: &str| {
            MeshTls::from_pem(cert.as_bytes(), key.as_bytes(), ca.as_bytes(), None, vec![])
        };
        assert!(load(&one.service.cert, &one.service.key, &one.ca).is_ok());
        assert!(load(&one.service.cert, &other.service.key, &one.ca).is_err());
        assert!(load(&one.service.key, &one.service.key, &one.ca).is_err());
        assert!(load(&one.service.cert, &one.service.key, "not a pem").is_err());
    }

    fn der(pem: &str) -> Vec<u8> {
        first_certificate(pem.as_bytes()).unwrap()
    }

    #[test]
    fn a_certificate_is_a_services_when_one_of_its_names_is_listed() {
        let pki = TestPki::generate();
        let tls = pki.service_tls();
        assert!(tls.is_service(&der(&pki.service.cert)));
        assert!(!tls.is_service(&der(&pki.operator.cert)));
        assert_eq!(
            certificate_names(&der(&pki.operator.cert)),
            ["operator", "operator.example"]
        );
        assert!(!tls.is_service(b"not a certificate"));

        // A configured list replaces the default; the first label of a DNS name counts.
        let listed = |names: &[&str]| {
            MeshTls::from_pem(
                pki.service.cert.as_bytes(),
                pki.service.key.as_bytes(),
                pki.ca.as_bytes(),
                None,
                names.iter().map(|n| (*n).to_owned()).collect(),
            )
            .unwrap()
        };
        assert!(listed(&["OPERATOR"]).is_service(&der(&pki.operator.cert)));
        assert!(!listed(&["ops"]).is_service(&der(&pki.service.cert)));
        assert_eq!(listed(&[" ", ""]).service_names(), DEFAULT_SERVICE_NAMES);
    }

    #[test]
    fn the_service_only_methods_exist() {
        use prost::Message as _;
        let set = prost_types::FileDescriptorSet::decode(twtr_proto::FILE_DESCRIPTOR_SET).unwrap();
        let mut methods = Vec::new();
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    methods.push(format!(
                        "/{}.{}/{}",
                        file.package(),
                        service.name(),
                        method.name()
                    ));
                }
            }
        }
        for method in SERVICE_ONLY_METHODS {
            assert!(methods.iter().any(|m| m == method), "no method {method}");
        }
    }

    /// Answers every call `NOT_FOUND` ("reached the service"), as the users service.
    #[derive(Clone)]
    struct Users;

    impl NamedService for Users {
        const NAME: &'static str = "twtr.users.v1.UsersService";
    }

    impl tower::Service<http::Request<tonic::body::Body>> for Users {
        type Response = http::Response<tonic::body::Body>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Self::Response, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<tonic::body::Body>) -> Self::Future {
            std::future::ready(Ok(tonic::Status::not_found("reached").into_http()))
        }
    }

    async fn call(channel: tonic::transport::Channel, method: &'static str) -> tonic::Code {
        let mut client = tonic::client::Grpc::new(channel);
        let call = async {
            client
                .ready()
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            let path = http::uri::PathAndQuery::from_static(method);
            let codec = tonic_prost::ProstCodec::<(), ()>::default();
            let mut request = tonic::Request::new(());
            request.set_timeout(Duration::from_secs(5));
            client.unary(request, path, codec).await
        };
        match tokio::time::timeout(Duration::from_secs(10), call).await {
            Ok(answer) => answer.map_or_else(|status| status.code(), |_| tonic::Code::Ok),
            Err(_) => panic!("{method} did not answer"),
        }
    }

    #[tokio::test]
    async fn over_mutual_tls_only_services_call_service_only_methods_and_only_with_a_certificate() {
        let pki = TestPki::generate();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let shutdown = CancellationToken::new();
        let serving = Serving {
            tls: Some(pki.service_tls()),
            ..Serving::always()
        };
        let server = tokio::spawn(serve(Users, listener, serving, shutdown.clone()));
        const TOKEN_STATES: &str = "/twtr.users.v1.UsersService/GetTokenStates";
        const GET_USER: &str = "/twtr.users.v1.UsersService/GetUser";

        // A part: by IP (the certificate names 127.0.0.1) and by name, any method.
        let (service, operator) = (pki.service_tls(), pki.operator_tls());
        for url in [
            format!("http://127.0.0.1:{port}"),
            format!("https://localhost:{port}"),
        ] {
            let part = crate::client::channel(&url, Some(&service)).unwrap();
            assert_eq!(
                call(part.clone(), TOKEN_STATES).await,
                tonic::Code::NotFound
            );
            assert_eq!(call(part, GET_USER).await, tonic::Code::NotFound);
        }

        // An operator: everything but the service-only methods.
        let url = format!("http://127.0.0.1:{port}");
        let ops = crate::client::channel(&url, Some(&operator)).unwrap();
        assert_eq!(call(ops.clone(), GET_USER).await, tonic::Code::NotFound);
        for method in SERVICE_ONLY_METHODS {
            if method.starts_with("/twtr.users.") {
                assert_eq!(
                    call(ops.clone(), method).await,
                    tonic::Code::PermissionDenied,
                    "{method}"
                );
            }
        }

        // No certificate, or no TLS at all: refused before any method.
        let anonymous = Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
            .unwrap()
            .tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(&pki.ca))
                    .domain_name("localhost"),
            )
            .unwrap()
            .connect_lazy();
        let refused = call(anonymous, GET_USER).await;
        assert!(
            matches!(refused, tonic::Code::Unavailable | tonic::Code::Unknown),
            "{refused:?}"
        );
        let plaintext = crate::client::channel(&url, None).unwrap();
        let refused = call(plaintext, GET_USER).await;
        assert!(
            matches!(
                refused,
                tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal
            ),
            "{refused:?}"
        );

        // A server whose certificate does not name the URL's host is refused by the client.
        let wrong_name = MeshTls::from_pem(
            pki.service.cert.as_bytes(),
            pki.service.key.as_bytes(),
            pki.ca.as_bytes(),
            Some("twtr-elsewhere".to_owned()),
            vec![],
        )
        .unwrap();
        let misnamed = crate::client::channel(&url, Some(&wrong_name)).unwrap();
        assert_eq!(call(misnamed, GET_USER).await, tonic::Code::Unavailable);

        shutdown.cancel();
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn with_tls_off_the_layer_lets_everything_through() {
        use tower::{Layer as _, ServiceExt as _};
        let seen = tower::service_fn(|_: http::Request<()>| async {
            Ok::<_, Infallible>(http::Response::new(String::new()))
        });
        let request = http::Request::builder()
            .uri(SERVICE_ONLY_METHODS[0])
            .body(())
            .unwrap();
        let response = ServiceOnlyLayer::new(None)
            .layer(seen)
            .oneshot(request)
            .await
            .unwrap();
        assert!(response.headers().get("grpc-status").is_none());
    }
}
