//! How a client decides a server belongs to the cluster, and the HTTP client built on it.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, RootCertStore};

use super::identity::{ca_hash, certs_from_pem, parse_ca_hash, peer_identity};
use super::{ensure_provider, provider, TlsError};

/// A client configuration without a certificate of its own (a joining node before it has
/// one, a CLI reading), trusting servers by `trust`.
pub fn anonymous_client_config(trust: Trust) -> Result<ClientConfig, TlsError> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ClusterVerifier::new(trust)?))
        .with_no_client_auth())
}

/// How a client decides a server belongs to the cluster.
#[derive(Clone)]
pub enum Trust {
    /// Chains to one of these CA certificates.
    Roots(Arc<RootCertStore>),
    /// Chains to the CA certificate the server sends along, whose hash is this
    /// `sha256:<hex>` (a joining node that only knows the hash).
    CaHash(String),
}

impl Trust {
    pub fn ca_pem(pem: &str) -> Result<Self, TlsError> {
        let mut roots = RootCertStore::empty();
        for cert in certs_from_pem(pem, "CA certificate")? {
            roots.add(cert)?;
        }
        Ok(Trust::Roots(Arc::new(roots)))
    }
}

/// Verifies a server's chain against the cluster CA, ignoring the host name: members are
/// dialled by address and their certificates name node ids, not addresses.
#[derive(Debug)]
pub(super) struct ClusterVerifier {
    trust: TrustInner,
    provider: Arc<CryptoProvider>,
}

#[derive(Debug)]
enum TrustInner {
    Roots(Arc<rustls::client::WebPkiServerVerifier>),
    CaHash(String),
}

impl ClusterVerifier {
    pub(super) fn new(trust: Trust) -> Result<Self, TlsError> {
        let provider = provider();
        let trust = match trust {
            Trust::Roots(roots) => TrustInner::Roots(
                rustls::client::WebPkiServerVerifier::builder_with_provider(
                    roots,
                    provider.clone(),
                )
                .build()?,
            ),
            Trust::CaHash(hash) => TrustInner::CaHash(parse_ca_hash(&hash)?),
        };
        Ok(Self { trust, provider })
    }
}

impl ServerCertVerifier for ClusterVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let by_hash;
        let inner = match &self.trust {
            TrustInner::Roots(inner) => inner,
            TrustInner::CaHash(hash) => {
                let ca = intermediates
                    .iter()
                    .find(|c| ca_hash(c) == *hash)
                    .ok_or_else(|| {
                        rustls::Error::General(format!(
                            "the server's CA does not match {hash}: not the cluster this node was told to join"
                        ))
                    })?;
                let mut roots = RootCertStore::empty();
                roots.add(ca.clone().into_owned())?;
                by_hash = rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    self.provider.clone(),
                )
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
                &by_hash
            }
        };
        match inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => {}
            other => {
                other?;
            }
        }
        if peer_identity(end_entity).is_none() {
            return Err(rustls::Error::General(
                "the server's certificate names no evio node id".into(),
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    signature_checks!();
}

/// A reqwest client speaking TLS with `config` (HTTP/1.1, as the API serves).
pub fn http_client(
    config: ClientConfig,
    timeout: Option<Duration>,
) -> Result<reqwest::Client, TlsError> {
    ensure_provider();
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .tls_backend_preconfigured(config);
    if let Some(timeout) = timeout {
        builder = builder.timeout(timeout);
    }
    Ok(builder.build()?)
}
