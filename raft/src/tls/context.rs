//! A member's TLS at run time: where its certificates come from, swapped in place when
//! issued, renewed or re-read.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rcgen::KeyPair;
use rustls::ServerConfig;

use super::ca::Authority;
use super::identity::Credentials;
use super::revoke::Revocations;
use super::verify::http_client;
use super::{
    io, read, TlsError, CA_CERT_FILE, CA_KEY_FILE, DEFAULT_CERT_LIFETIME, NODE_CERT_FILE,
    NODE_KEY_FILE,
};
use crate::types::NodeId;

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
    /// Removed members' node ids, refused by the server side (filled by the replica).
    revocations: Revocations,
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
            revocations: Revocations::default(),
        });
        if context.has_files() {
            context.reload()?;
        }
        Ok(context)
    }

    pub fn source(&self) -> &Source {
        &self.source
    }

    /// The revoked node ids this member's server refuses.
    pub fn revocations(&self) -> &Revocations {
        &self.revocations
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
        let server = credentials.server_config(&self.revocations)?;
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
