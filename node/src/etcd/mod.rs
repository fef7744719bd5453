//! Talking to an etcd cluster: the connection settings shared by the mirror (`run
//! --etcd-endpoints`) and the importer (`import-etcd`), and the keys evio writes there.
//!
//! - [`mirror`]: the Raft leader keeps etcd in step with the lease table.

pub mod mirror;

use std::path::{Path, PathBuf};
use std::time::Duration;

use evio_node::etcd_gateway::{Gateway, GatewayError, TlsFiles};
use evio_raft::legacy::{OriginalRange, ORIGINAL_PREFIX};
use evio_raft::pool::Family;
use evio_raft::Lease;

/// evio's own keys: one JSON document per lease owner.
pub const LEASES_PREFIX: &str = "/evio/leases/";

/// Every etcd call gives up after this; a slow etcd must never hold anything else up.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// How to reach etcd: endpoints, optional username/password (files, like the original's
/// `/etc/credentials/*`) and optional TLS.
#[derive(Debug, Clone, Default)]
pub struct EtcdSettings {
    pub endpoints: Vec<String>,
    pub username_file: Option<PathBuf>,
    pub password_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// etcd's credentials and TLS: the flags of `run` (the mirror) and of `import-etcd`.
#[derive(clap::Args, serde::Serialize, serde::Deserialize, Debug, Clone, Default)]
#[serde(rename_all = "kebab-case")]
pub struct EtcdArgs {
    /// File with the etcd username (like the original's /etc/credentials/username).
    #[arg(long)]
    pub etcd_username_file: Option<PathBuf>,
    /// File with the etcd password (like the original's /etc/credentials/password).
    #[arg(long)]
    pub etcd_password_file: Option<PathBuf>,
    /// CA certificate (PEM) for etcd over TLS.
    #[arg(long)]
    pub etcd_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for etcd over TLS.
    #[arg(long)]
    pub etcd_cert_file: Option<PathBuf>,
    /// Client key (PEM) for etcd over TLS.
    #[arg(long)]
    pub etcd_key_file: Option<PathBuf>,
}

impl EtcdArgs {
    /// The settings for `endpoints`, checked (reading nothing yet).
    pub fn settings(&self, endpoints: Vec<String>) -> Result<EtcdSettings, EtcdError> {
        let settings = EtcdSettings {
            endpoints,
            username_file: self.etcd_username_file.clone(),
            password_file: self.etcd_password_file.clone(),
            ca_file: self.etcd_ca_file.clone(),
            cert_file: self.etcd_cert_file.clone(),
            key_file: self.etcd_key_file.clone(),
        };
        settings.validate()?;
        Ok(settings)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("reading {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Settings(String),
    #[error(transparent)]
    Gateway(#[from] GatewayError),
}

fn read_file(what: &'static str, path: &Path) -> Result<String, EtcdError> {
    std::fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_string())
        .map_err(|source| EtcdError::Read {
            what,
            path: path.display().to_string(),
            source,
        })
}

impl EtcdSettings {
    /// Checks the combination of flags (reading nothing yet).
    pub fn validate(&self) -> Result<(), EtcdError> {
        if self.endpoints.is_empty() {
            return Err(EtcdError::Settings("no etcd endpoint given".into()));
        }
        for endpoint in &self.endpoints {
            let ok = endpoint.starts_with("http://") || endpoint.starts_with("https://");
            if !ok {
                return Err(EtcdError::Settings(format!(
                    "etcd endpoint {endpoint:?}: expected http://HOST:PORT or https://HOST:PORT"
                )));
            }
        }
        if self.username_file.is_some() != self.password_file.is_some() {
            return Err(EtcdError::Settings(
                "etcd credentials need both a username file and a password file".into(),
            ));
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(EtcdError::Settings(
                "an etcd client certificate needs both a cert file and a key file".into(),
            ));
        }
        Ok(())
    }

    pub fn shown_endpoints(&self) -> String {
        self.endpoints.join(",")
    }

    /// A client (authenticated, when credentials are set); every call gives up after
    /// [`CALL_TIMEOUT`].
    pub async fn connect(&self) -> Result<Gateway, EtcdError> {
        self.validate()?;
        let tls = TlsFiles {
            ca: self.ca_file.as_deref(),
            identity: self.cert_file.as_deref().zip(self.key_file.as_deref()),
        };
        let mut client = Gateway::new(&self.endpoints, &tls, CALL_TIMEOUT)?;
        if let (Some(user), Some(password)) = (&self.username_file, &self.password_file) {
            let user = read_file("etcd username file", user)?;
            let password = read_file("etcd password file", password)?;
            client.authenticate(&user, &password).await?;
        }
        Ok(client)
    }
}

/// The keys (and values) a lease is mirrored as: the original layout
/// `/evpn/<rangeStart>,<rangeEnd>,<gateway>/<podCIDR prefix>` = `ok` for its IPv4 block (the
/// original layout is IPv4-only: an IPv6-only lease has no such key), and
/// `/evio/leases/<owner>` = the lease as the API shows it (every family's block).
pub fn lease_keys(lease: &Lease) -> Vec<(String, String)> {
    let json = serde_json::to_string(&evio_api::LeaseJson::from(lease)).unwrap_or_default();
    let original = lease
        .pool
        .block_of(Family::V4, lease.record.block)
        .and_then(|block| OriginalRange::of_block(&lease.pool, &block))
        .map(|range| (range.key(ORIGINAL_PREFIX), "ok".to_string()));
    original
        .into_iter()
        .chain([(format!("{LEASES_PREFIX}{}", lease.record.node), json)])
        .collect()
}

/// The original-layout range of a lease as mirrored under `/evio/leases/` (its IPv4 block),
/// if it has one.
pub fn original_range(lease: &evio_api::LeaseJson) -> Option<OriginalRange> {
    let v4 = |addr: std::net::IpAddr| match addr {
        std::net::IpAddr::V4(v4) => Some(v4),
        std::net::IpAddr::V6(_) => None,
    };
    let block = lease.blocks().into_iter().find(|b| b.subnet.is_ipv4())?;
    Some(OriginalRange {
        range_start: v4(block.range_start)?,
        range_end: v4(block.range_end)?,
        gateway: v4(block.gateway)?,
        prefix: block.pod_cidr.prefix(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use evio_raft::{LeaseCommand, LeaseTable, Pool};

    fn lease_in(pod_cidr: &str) -> Lease {
        let pool = Pool::parse(pod_cidr, 8).unwrap_or_else(|e| panic!("{e}"));
        let mut table = LeaseTable::new(pool);
        for node in ["a", "edge-1"] {
            table.apply(
                &LeaseCommand::Acquire {
                    node: node.into(),
                    host_ip: None,
                    request_id: "r".into(),
                    at: 0,
                },
                1,
            );
        }
        table.get("edge-1").unwrap_or_else(|| panic!("lease"))
    }

    /// The original layout is IPv4-only: an IPv6 block lives only in the lease JSON under
    /// `/evio/leases/`, and reading that JSON back finds the IPv4 block's original key.
    #[test]
    fn ipv6_blocks_are_mirrored_only_under_evio_leases() {
        for (pod_cidr, original) in [
            (
                "10.244.0.0/16",
                Some("/evpn/10.244.1.2,10.244.1.254,10.244.1.1/16"),
            ),
            (
                "10.244.0.0/16,fd00:10:244::/56",
                Some("/evpn/10.244.1.2,10.244.1.254,10.244.1.1/16"),
            ),
            ("fd00:10:244::/56", None),
        ] {
            let keys = lease_keys(&lease_in(pod_cidr));
            let names: Vec<&str> = keys.iter().map(|(k, _)| k.as_str()).collect();
            let want: Vec<&str> = original
                .into_iter()
                .chain(["/evio/leases/edge-1"])
                .collect();
            assert_eq!(names, want, "{pod_cidr}");
            let json = &keys[keys.len() - 1].1;
            let lease: evio_api::LeaseJson =
                serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
            assert_eq!(
                original_range(&lease)
                    .map(|r| r.key(ORIGINAL_PREFIX))
                    .as_deref(),
                original,
                "{pod_cidr}"
            );
            let ipv6 = lease.subnets.iter().any(|b| b.subnet.is_ipv6());
            assert_eq!(ipv6, pod_cidr.contains("fd00"), "{json}");
        }
    }
}
