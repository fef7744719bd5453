//! Mutual TLS between members: the cluster CA, each member's certificate, and the rustls
//! configurations both ends of a connection use.
//!
//! Identity: a member's certificate carries two subject alternative names, the URI
//! `evio://node/<node id>` (what Raft RPC is checked against) and the DNS name of its node
//! name. Certificates are issued by the cluster CA; a connection's peer is trusted when its
//! chain ends at that CA. Host names are not checked (members dial each other by IP and an
//! address may move): the node id in the certificate is what counts.
//!
//! Two ways to get certificates ([`Source`]):
//! - **managed** (the default): the bootstrap member creates the CA in `<data-dir>/tls/`;
//!   a joining node sends a certificate request with the cluster token and gets its
//!   certificate, the CA certificate and the CA key back (so every member can sign joins and
//!   renew its own certificate while any minority is down); certificates are renewed by
//!   the member itself before they expire.
//! - **files**: CA certificate, node certificate and key from files an operator manages
//!   (e.g. cert-manager); the CA key is nowhere on the members; files are re-read to renew.

/// The handshake signature checks of a certificate verifier with a `provider` field: rustls's
/// own, with the provider's algorithms (the same for both verifiers here).
macro_rules! signature_checks {
    () => {
        signature_checks!(
            verify_tls12_signature,
            rustls::crypto::verify_tls12_signature
        );
        signature_checks!(
            verify_tls13_signature,
            rustls::crypto::verify_tls13_signature
        );

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
    ($name:ident, $check:path) => {
        fn $name(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            $check(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }
    };
}

mod ca;
mod context;
mod identity;
mod revoke;
#[cfg(test)]
mod tests;
mod verify;

pub use ca::{new_key_and_request, Authority};
pub use context::{managed_paths, Source, TlsContext};
pub use identity::{
    ca_hash, certs_from_pem, not_after, parse_ca_hash, peer_identity, Credentials, PeerIdentity,
    TlsPeer,
};
pub use revoke::Revocations;
pub use verify::{anonymous_client_config, http_client, Trust};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
pub use rustls::ClientConfig;

/// The URI subject alternative name prefix naming a member's node id.
pub const NODE_URI_PREFIX: &str = "evio://node/";
/// Sub-directory of the data dir holding the managed PKI.
pub const TLS_DIR: &str = "tls";
pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca-key.pem";
pub const NODE_CERT_FILE: &str = "node.pem";
pub const NODE_KEY_FILE: &str = "node-key.pem";
/// Lifetime of a managed member certificate; renewed once two thirds of it have passed.
pub const DEFAULT_CERT_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);
/// Lifetime of the cluster CA.
pub(super) const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: no PEM {kind} found")]
    NoPem { what: String, kind: &'static str },
    #[error("{what}: invalid PEM: {reason}")]
    BadPem { what: String, reason: String },
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("{what} names no evio node id (expected a URI SAN {NODE_URI_PREFIX}<id>)")]
    NoNodeId { what: String },
    #[error(
        "CA hash {0:?}: expected sha256:<64 hex digits> (`evio-node cluster ca-hash` prints it)"
    )]
    BadCaHash(String),
    #[error(
        "this member has no CA key (operator-supplied certificates): it cannot issue certificates"
    )]
    NoCaKey,
    #[error("no TLS certificate yet (this node has not joined)")]
    NotReady,
    #[error("HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

pub(super) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The crypto every configuration uses: ring, as kube's client.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs ring as the process's default rustls provider. reqwest is built without a
/// provider of its own (one TLS stack in the binary): every process that builds a reqwest
/// client calls this first (the API client and the peer transport do).
pub fn ensure_provider() {
    if CryptoProvider::get_default().is_none() {
        // Losing the race to another thread installing the same provider is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

pub(super) fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(io(path))
}
