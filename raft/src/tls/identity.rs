//! What a certificate says: the CA hash, PEM parsing, the evio identity it names, and a
//! member's credentials with the rustls configurations built from them.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use super::revoke::{Revocations, RevokingVerifier};
use super::verify::{ClusterVerifier, Trust};
use super::{provider, read, TlsError, NODE_URI_PREFIX};
use crate::types::NodeId;

/// `sha256:<hex>` of a certificate's DER: what a joining node checks the cluster CA against.
pub fn ca_hash(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Validates a `sha256:<hex>` CA hash given by an operator; returns it normalised.
pub fn parse_ca_hash(text: &str) -> Result<String, TlsError> {
    let trimmed = text.trim();
    let hex = trimmed
        .strip_prefix("sha256:")
        .ok_or_else(|| TlsError::BadCaHash(text.to_string()))?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(TlsError::BadCaHash(text.to_string()));
    }
    Ok(format!("sha256:{}", hex.to_ascii_lowercase()))
}

/// All certificates in a PEM text, in order.
pub fn certs_from_pem(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadPem {
            what: what.to_string(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoPem {
            what: what.to_string(),
            kind: "certificate",
        });
    }
    Ok(certs)
}

pub(super) fn key_from_pem(pem: &str, what: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoPem {
            what: what.to_string(),
            kind: "private key",
        },
        e => TlsError::BadPem {
            what: what.to_string(),
            reason: e.to_string(),
        },
    })
}

/// Who a certificate names: the node id (always) and the node name (when present).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    pub node_id: NodeId,
    pub name: Option<String>,
}

/// Put on every request that came over TLS: the client certificate's identity, `None`
/// when the client sent no certificate (allowed at the TLS layer, refused per route).
#[derive(Debug, Clone)]
pub struct TlsPeer(pub Option<PeerIdentity>);

/// Reads the evio identity out of a certificate (`None` when it names no node id).
pub fn peer_identity(cert: &CertificateDer<'_>) -> Option<PeerIdentity> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let sans = parsed.subject_alternative_name().ok()??;
    let mut node_id = None;
    let mut name = None;
    for general in &sans.value.general_names {
        match general {
            x509_parser::extensions::GeneralName::URI(uri) => {
                if let Some(id) = uri.strip_prefix(NODE_URI_PREFIX) {
                    node_id = id.parse().ok();
                }
            }
            x509_parser::extensions::GeneralName::DNSName(dns) => name = Some(dns.to_string()),
            _ => {}
        }
    }
    Some(PeerIdentity {
        node_id: node_id?,
        name,
    })
}

/// When a certificate stops being valid.
pub fn not_after(cert: &CertificateDer<'_>) -> Option<SystemTime> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let secs = parsed.validity().not_after.timestamp();
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}
/// A member's credentials: the CA it trusts, its certificate chain and key.
#[derive(Clone)]
pub struct Credentials {
    pub ca: Vec<CertificateDer<'static>>,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: Arc<PrivateKeyDer<'static>>,
    pub identity: PeerIdentity,
    pub not_after: SystemTime,
}

impl Credentials {
    pub fn from_pem(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let ca = certs_from_pem(ca_pem, "CA certificate")?;
        let chain = certs_from_pem(cert_pem, "node certificate")?;
        let key = key_from_pem(key_pem, "node key")?;
        let identity = peer_identity(&chain[0]).ok_or_else(|| TlsError::NoNodeId {
            what: "the node certificate".into(),
        })?;
        let not_after = not_after(&chain[0]).unwrap_or(SystemTime::UNIX_EPOCH);
        Ok(Self {
            ca,
            chain,
            key: Arc::new(key),
            identity,
            not_after,
        })
    }

    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Self, TlsError> {
        Self::from_pem(&read(ca)?, &read(cert)?, &read(key)?)
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, TlsError> {
        let mut roots = RootCertStore::empty();
        for cert in &self.ca {
            roots.add(cert.clone())?;
        }
        Ok(Arc::new(roots))
    }

    /// The server side: TLS 1.3, this member's certificate, client certificates verified
    /// against the CA but optional at the TLS layer (probes and reads need none; the API
    /// requires one per route for writes and Raft RPC).
    /// A certificate naming a node id in `revocations` is refused in the handshake.
    pub fn server_config(&self, revocations: &Revocations) -> Result<Arc<ServerConfig>, TlsError> {
        let inner = WebPkiClientVerifier::builder_with_provider(self.roots()?, provider())
            .allow_unauthenticated()
            .build()?;
        let verifier = Arc::new(RevokingVerifier {
            inner,
            revocations: revocations.clone(),
            provider: provider(),
        });
        let config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        Ok(Arc::new(config))
    }

    /// The client side, presenting this member's certificate; servers must chain to the CA.
    pub fn client_config(&self) -> Result<ClientConfig, TlsError> {
        let verifier = ClusterVerifier::new(Trust::Roots(self.roots()?))?;
        Ok(ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?)
    }
}
