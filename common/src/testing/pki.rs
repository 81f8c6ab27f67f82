//! Certificates for tests of mutual TLS, made with `rcgen`: a CA, a certificate every part of
//! a test mesh shares (it names `localhost`, `127.0.0.1` and each part's default service name)
//! and an operator's (a name that is not a service's, as someone using `grpcurl` would have).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use crate::tls::{DEFAULT_SERVICE_NAMES, MeshTls, TlsFiles};

/// A certificate and its private key, PEM.
#[derive(Debug, Clone)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

/// A CA and the certificates it signed (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct TestPki {
    /// The CA certificate, PEM.
    pub ca: String,
    /// What every part of a test mesh presents.
    pub service: Pem,
    /// An operator's certificate (common name `operator`).
    pub operator: Pem,
}

impl TestPki {
    /// A fresh CA and certificates.
    #[allow(clippy::expect_used)]
    pub fn generate() -> Self {
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.distinguished_name
            .push(DnType::CommonName, "twtr test CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("CA key"))
            .expect("self-signed CA");

        let leaf = |common_name: &str, names: Vec<String>| {
            let mut params = CertificateParams::new(names).expect("leaf params");
            params
                .distinguished_name
                .push(DnType::CommonName, common_name);
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let key = KeyPair::generate().expect("leaf key");
            let cert = params.signed_by(&key, &ca).expect("signed leaf");
            Pem {
                cert: cert.pem(),
                key: key.serialize_pem(),
            }
        };
        let mut service_names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        service_names.extend(DEFAULT_SERVICE_NAMES.map(str::to_owned));
        Self {
            service: leaf("twtr-mesh", service_names),
            operator: leaf("operator", vec!["operator.example".to_owned()]),
            ca: ca.pem(),
        }
    }

    /// Mutual TLS as a part of the mesh has it.
    pub fn service_tls(&self) -> MeshTls {
        self.tls(&self.service)
    }

    /// Mutual TLS as an operator's client has it.
    pub fn operator_tls(&self) -> MeshTls {
        self.tls(&self.operator)
    }

    #[allow(clippy::expect_used)]
    fn tls(&self, pem: &Pem) -> MeshTls {
        MeshTls::from_pem(
            pem.cert.as_bytes(),
            pem.key.as_bytes(),
            self.ca.as_bytes(),
            None,
            Vec::new(),
        )
        .expect("test certificates load")
    }

    /// Writes every file into `dir`: `ca.pem`, `service.pem`, `service-key.pem`,
    /// `operator.pem`, `operator-key.pem`; returns the files a part is started with.
    #[allow(clippy::expect_used)]
    pub fn write(&self, dir: &Path) -> TlsFiles {
        let write = |name: &str, text: &str| -> PathBuf {
            let path = dir.join(name);
            std::fs::write(&path, text).expect("write a test certificate");
            path
        };
        write("operator.pem", &self.operator.cert);
        write("operator-key.pem", &self.operator.key);
        TlsFiles {
            cert: write("service.pem", &self.service.cert),
            key: write("service-key.pem", &self.service.key),
            ca: write("ca.pem", &self.ca),
        }
    }
}
