//! How the checker's clients reach the members: mutual TLS, as everything else that speaks
//! to a member, with a certificate the cluster's own CA issues for the checker (a node id no
//! member has) once the bootstrap member has made that CA.

use std::path::Path;
use std::time::{Duration, Instant};

use evio_api::tls::{self, Authority, ClientConfig, Credentials};
use evio_api::{Client, ClientError};

/// The checker's identity in its certificates (never a member's: those are random).
const CHECKER_ID: u64 = 0xc4ec;
const CHECKER_NAME: &str = "evio-chaos-checker";

#[derive(Clone)]
pub struct Access(ClientConfig);

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("no cluster CA in {0} after {1:?}: did the bootstrap member start?")]
    NoCa(String, Duration),
    #[error("issuing the checker's certificate: {0}")]
    Tls(#[from] tls::TlsError),
}

impl Access {
    /// Waits (up to `wait`) for the CA the bootstrap member writes into `tls_dir`, then
    /// issues the checker a certificate with it.
    pub async fn issue(tls_dir: &Path, wait: Duration) -> Result<Access, AccessError> {
        let [ca, ca_key, ..] = tls::managed_paths(tls_dir);
        let deadline = Instant::now() + wait;
        let (ca_pem, key_pem) = loop {
            if let (Ok(ca), Ok(key)) = (
                std::fs::read_to_string(&ca),
                std::fs::read_to_string(&ca_key),
            ) {
                break (ca, key);
            }
            if Instant::now() > deadline {
                return Err(AccessError::NoCa(tls_dir.display().to_string(), wait));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let authority = Authority::from_pem(&ca_pem, Some(&key_pem))?;
        let (key, csr) = tls::new_key_and_request(CHECKER_ID, CHECKER_NAME)?;
        let lifetime = Duration::from_secs(24 * 3600);
        let cert = authority.sign_request(&csr, CHECKER_ID, CHECKER_NAME, lifetime)?;
        let credentials = Credentials::from_pem(&ca_pem, &cert, &key)?;
        Ok(Access(credentials.client_config()?))
    }

    /// A client of the member at `base` (https://...).
    pub fn client(&self, base: &str) -> Result<Client, ClientError> {
        Client::new(base)?.with_tls(self.0.clone())
    }

    /// Whether `GET url` answers 2xx within a second (`/readyz`, `/healthz`).
    pub async fn http_ok(&self, url: &str) -> bool {
        let Ok(client) = tls::http_client(self.0.clone(), Some(Duration::from_secs(1))) else {
            return false;
        };
        matches!(client.get(url).send().await, Ok(r) if r.status().is_success())
    }
}
