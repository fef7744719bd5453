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

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
pub use rustls::ClientConfig;
use rustls::{
    CertificateError, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme,
};

use crate::types::NodeId;

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
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

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

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
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

fn key_from_pem(pem: &str, what: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
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

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(io(path))
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

/// The cluster CA: its certificate, and its key when this member may sign.
pub struct Authority {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    key: Option<KeyPair>,
}

impl Authority {
    /// A new CA for a new cluster.
    pub fn generate(cluster: &str) -> Result<Self, TlsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("evio cluster CA {cluster}"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + CA_LIFETIME;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key: Some(key),
        })
    }

    pub fn from_pem(cert_pem: &str, key_pem: Option<&str>) -> Result<Self, TlsError> {
        let cert_der = certs_from_pem(cert_pem, "CA certificate")?
            .into_iter()
            .next()
            .ok_or_else(|| TlsError::NoPem {
                what: "CA certificate".into(),
                kind: "certificate",
            })?;
        let key = key_pem.map(KeyPair::from_pem).transpose()?;
        Ok(Self {
            cert_pem: cert_pem.to_string(),
            cert_der,
            key,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The CA key in PEM, when this member holds it.
    pub fn key_pem(&self) -> Option<String> {
        self.key.as_ref().map(KeyPair::serialize_pem)
    }

    pub fn hash(&self) -> String {
        ca_hash(&self.cert_der)
    }

    /// A member certificate (PEM, followed by the CA's) for `public_key`, naming `node_id`
    /// and `name`, valid from an hour ago (clock skew) for `lifetime`.
    pub fn issue(
        &self,
        public_key: &impl PublicKeyData,
        node_id: NodeId,
        name: &str,
        lifetime: Duration,
    ) -> Result<String, TlsError> {
        let key = self.key.as_ref().ok_or(TlsError::NoCaKey)?;
        let issuer = Issuer::from_ca_cert_der(&self.cert_der, key)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.subject_alt_names = vec![
            SanType::URI(format!("{NODE_URI_PREFIX}{node_id}").try_into()?),
            SanType::DnsName(name.try_into()?),
        ];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + lifetime;
        let cert = params.signed_by(public_key, &issuer)?;
        Ok(format!("{}{}", cert.pem(), self.cert_pem))
    }

    /// Signs a joining node's certificate request. Only the request's public key is used
    /// (its signature proves the node holds the key); the names come from the join.
    pub fn sign_request(
        &self,
        csr_pem: &str,
        node_id: NodeId,
        name: &str,
        lifetime: Duration,
    ) -> Result<String, TlsError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
        self.issue(&csr.public_key, node_id, name, lifetime)
    }
}

/// A certificate request for a new key: what a joining node sends with its join.
pub fn new_key_and_request(node_id: NodeId, name: &str) -> Result<(String, String), TlsError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![
        SanType::URI(format!("{NODE_URI_PREFIX}{node_id}").try_into()?),
        SanType::DnsName(name.try_into()?),
    ];
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
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
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots()?, provider())
            .allow_unauthenticated()
            .build()?;
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
struct ClusterVerifier {
    trust: TrustInner,
    provider: Arc<CryptoProvider>,
}

#[derive(Debug)]
enum TrustInner {
    Roots(Arc<rustls::client::WebPkiServerVerifier>),
    CaHash(String),
}

impl ClusterVerifier {
    fn new(trust: Trust) -> Result<Self, TlsError> {
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

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
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

/// Where this member's certificates come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// `<data-dir>/tls/`, with the CA key: issued at bootstrap or join, renewed here.
    Managed { dir: PathBuf, lifetime: Duration },
    /// Operator files; re-read to renew.
    Files {
        ca: PathBuf,
        cert: PathBuf,
        key: PathBuf,
    },
}

/// The managed PKI's files in a data dir.
pub fn managed_paths(dir: &Path) -> [PathBuf; 4] {
    [CA_CERT_FILE, CA_KEY_FILE, NODE_CERT_FILE, NODE_KEY_FILE].map(|f| dir.join(f))
}

/// What the current credentials give: server and client configs built once per change.
struct Loaded {
    credentials: Credentials,
    server: Arc<ServerConfig>,
    http: reqwest::Client,
}

/// A member's TLS: its credentials, swapped in place when they are issued, renewed or
/// re-read, so nothing restarts. Empty until a joining node has its certificate.
pub struct TlsContext {
    source: Source,
    current: RwLock<Option<Arc<Loaded>>>,
}

impl std::fmt::Debug for TlsContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsContext")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl TlsContext {
    /// Loads the credentials `source` holds now, if any.
    pub fn new(source: Source) -> Result<Arc<Self>, TlsError> {
        let context = Arc::new(Self {
            source,
            current: RwLock::new(None),
        });
        if context.has_files() {
            context.reload()?;
        }
        Ok(context)
    }

    pub fn source(&self) -> &Source {
        &self.source
    }

    fn files(&self) -> (PathBuf, PathBuf, PathBuf) {
        match &self.source {
            Source::Managed { dir, .. } => (
                dir.join(CA_CERT_FILE),
                dir.join(NODE_CERT_FILE),
                dir.join(NODE_KEY_FILE),
            ),
            Source::Files { ca, cert, key } => (ca.clone(), cert.clone(), key.clone()),
        }
    }

    /// Whether the node certificate exists (a managed member that has not joined has none).
    pub fn has_files(&self) -> bool {
        let (ca, cert, key) = self.files();
        ca.exists() && cert.exists() && key.exists()
    }

    /// Reads the files again and swaps the configurations in.
    pub fn reload(&self) -> Result<(), TlsError> {
        let (ca, cert, key) = self.files();
        self.install(Credentials::load(&ca, &cert, &key)?)
    }

    fn install(&self, credentials: Credentials) -> Result<(), TlsError> {
        let server = credentials.server_config()?;
        let http = http_client(credentials.client_config()?, None)?;
        let loaded = Arc::new(Loaded {
            credentials,
            server,
            http,
        });
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(loaded);
        Ok(())
    }

    fn loaded(&self) -> Result<Arc<Loaded>, TlsError> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(TlsError::NotReady)
    }

    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        Ok(self.loaded()?.server.clone())
    }

    /// The HTTP client presenting this member's certificate.
    pub fn http(&self) -> Result<reqwest::Client, TlsError> {
        Ok(self.loaded()?.http.clone())
    }

    pub fn credentials(&self) -> Result<Credentials, TlsError> {
        Ok(self.loaded()?.credentials.clone())
    }

    /// The CA certificate in PEM (what a CLI or joining node trusts).
    pub fn ca_pem(&self) -> Result<String, TlsError> {
        read(&self.files().0)
    }

    /// The managed CA (with its key), when this member holds it.
    pub fn authority(&self) -> Result<Authority, TlsError> {
        let Source::Managed { dir, .. } = &self.source else {
            return Err(TlsError::NoCaKey);
        };
        let key_path = dir.join(CA_KEY_FILE);
        if !key_path.exists() {
            return Err(TlsError::NoCaKey);
        }
        Authority::from_pem(&read(&dir.join(CA_CERT_FILE))?, Some(&read(&key_path)?))
    }

    /// Managed: writes the CA (and its key) and this member's certificate and key, then
    /// swaps them in. Keys are written 0600.
    pub fn store_managed(
        &self,
        ca_pem: &str,
        ca_key_pem: Option<&str>,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<(), TlsError> {
        let Source::Managed { dir, .. } = &self.source else {
            return Err(TlsError::NoCaKey);
        };
        // Parse before writing, so a bad answer leaves the data dir as it was.
        let credentials = Credentials::from_pem(ca_pem, cert_pem, key_pem)?;
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let write = |file: &str, text: &str, mode: u32| {
            let path = dir.join(file);
            crate::data_dir::write_atomic(&path, text.as_bytes(), mode).map_err(io(&path))
        };
        write(CA_CERT_FILE, ca_pem, 0o644)?;
        if let Some(ca_key) = ca_key_pem {
            write(CA_KEY_FILE, ca_key, 0o600)?;
        }
        write(NODE_KEY_FILE, key_pem, 0o600)?;
        write(NODE_CERT_FILE, cert_pem, 0o644)?;
        self.install(credentials)
    }

    /// Bootstrap: creates the cluster CA and this member's certificate.
    pub fn create_authority(
        &self,
        cluster: &str,
        node_id: NodeId,
        name: &str,
    ) -> Result<(), TlsError> {
        let authority = Authority::generate(cluster)?;
        let key = KeyPair::generate()?;
        let cert = authority.issue(&key, node_id, name, self.lifetime())?;
        self.store_managed(
            authority.cert_pem(),
            authority.key_pem().as_deref(),
            &cert,
            &key.serialize_pem(),
        )
    }

    fn lifetime(&self) -> Duration {
        match &self.source {
            Source::Managed { lifetime, .. } => *lifetime,
            Source::Files { .. } => DEFAULT_CERT_LIFETIME,
        }
    }

    /// Signs a joining node's request with the managed CA.
    pub fn sign_request(
        &self,
        csr_pem: &str,
        node_id: NodeId,
        name: &str,
    ) -> Result<String, TlsError> {
        self.authority()?
            .sign_request(csr_pem, node_id, name, self.lifetime())
    }

    /// Renews when a third of the certificate's life is left (managed: a new key and
    /// certificate from the CA; files: re-read, picking up what the operator renewed).
    /// Returns whether anything changed.
    pub fn renew_if_due(&self) -> Result<bool, TlsError> {
        match &self.source {
            Source::Files { .. } => {
                let before = self.loaded().ok().map(|l| l.credentials.chain.clone());
                self.reload()?;
                let after = self.loaded().ok().map(|l| l.credentials.chain.clone());
                Ok(before != after)
            }
            Source::Managed { lifetime, .. } => {
                let credentials = self.credentials()?;
                let left = credentials
                    .not_after
                    .duration_since(SystemTime::now())
                    .unwrap_or_default();
                if left > *lifetime / 3 {
                    return Ok(false);
                }
                let authority = self.authority()?;
                let key = KeyPair::generate()?;
                let identity = &credentials.identity;
                let name = identity.name.clone().unwrap_or_default();
                let cert = authority.issue(&key, identity.node_id, &name, *lifetime)?;
                self.store_managed(authority.cert_pem(), None, &cert, &key.serialize_pem())?;
                Ok(true)
            }
        }
    }

    /// How often [`Self::renew_if_due`] should run: a tenth of the lifetime, between a
    /// second and an hour.
    pub fn renew_interval(&self) -> Duration {
        (self.lifetime() / 10).clamp(Duration::from_secs(1), Duration::from_secs(3600))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(authority: &Authority, id: NodeId, name: &str) -> Credentials {
        let (key, csr) = new_key_and_request(id, name).unwrap_or_else(|e| panic!("{e}"));
        let cert = authority
            .sign_request(&csr, id, name, Duration::from_secs(3600))
            .unwrap_or_else(|e| panic!("{e}"));
        Credentials::from_pem(authority.cert_pem(), &cert, &key).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn issued_certificates_name_the_node_and_chain_to_the_ca() {
        let ca = Authority::generate("c1").unwrap_or_else(|e| panic!("{e}"));
        let creds = member(&ca, 42, "edge-1");
        assert_eq!(
            creds.identity,
            PeerIdentity {
                node_id: 42,
                name: Some("edge-1".into())
            }
        );
        assert_eq!(creds.chain.len(), 2, "leaf and CA");
        assert_eq!(ca_hash(&creds.chain[1]), ca.hash());
        assert!(creds.server_config().is_ok());
        assert!(creds.client_config().is_ok());
        let left = creds
            .not_after
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        assert!(left > Duration::from_secs(3000) && left <= Duration::from_secs(3600));
    }

    #[test]
    fn ca_hashes_are_validated() {
        let ca = Authority::generate("c1").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            parse_ca_hash(&ca.hash().to_uppercase().replace("SHA256", "sha256")).ok(),
            Some(ca.hash())
        );
        for bad in ["", "sha256:", "md5:abcd", "sha256:zz", &ca.hash()[..40]] {
            assert!(parse_ca_hash(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn garbage_requests_and_keys_are_refused() {
        let ca = Authority::generate("c1").unwrap_or_else(|e| panic!("{e}"));
        assert!(ca
            .sign_request("not a csr", 1, "n", Duration::from_secs(60))
            .is_err());
        let without_key =
            Authority::from_pem(ca.cert_pem(), None).unwrap_or_else(|e| panic!("{e}"));
        let (_, csr) = new_key_and_request(1, "n").unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            without_key.sign_request(&csr, 1, "n", Duration::from_secs(60)),
            Err(TlsError::NoCaKey)
        ));
        assert!(Credentials::from_pem(ca.cert_pem(), "junk", "junk").is_err());
    }

    #[test]
    fn managed_renewal_swaps_in_a_new_certificate() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let context = TlsContext::new(Source::Managed {
            dir: dir.path().join(TLS_DIR),
            lifetime: Duration::from_secs(3),
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(context.http(), Err(TlsError::NotReady)));
        context
            .create_authority("c1", 7, "edge-7")
            .unwrap_or_else(|e| panic!("{e}"));
        let first = context.credentials().unwrap_or_else(|e| panic!("{e}"));
        assert!(!context.renew_if_due().unwrap_or_else(|e| panic!("{e}")));
        std::thread::sleep(Duration::from_millis(2100));
        assert!(context.renew_if_due().unwrap_or_else(|e| panic!("{e}")));
        let second = context.credentials().unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(first.chain[0], second.chain[0]);
        assert_eq!(second.identity.node_id, 7);
        // The key file is private.
        use std::os::unix::fs::PermissionsExt;
        for file in [CA_KEY_FILE, NODE_KEY_FILE] {
            let mode = std::fs::metadata(dir.path().join(TLS_DIR).join(file))
                .map(|m| m.permissions().mode() & 0o777)
                .unwrap_or(0);
            assert_eq!(mode, 0o600, "{file}");
        }
    }
}
