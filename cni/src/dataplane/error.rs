//! The dataplane's one error type, with typed sources, and its one conversion to the CNI
//! error a runtime reads ([`DataplaneError::into_cni`]). DEL collects several
//! ([`DataplaneError::Several`]) instead of stopping at the first.

use crate::plugin_conf::InvalidKey;
use crate::spec::{code, CniError};

use super::ipam::IpamError;
use super::masquerade::MasqueradeError;
use super::netlink::NetlinkError;
use super::ovsdb::OvsdbError;

/// Interface-name collisions in the pod netns (plugin-specific code, as the spec allows).
pub const CODE_INTERFACE_EXISTS: u32 = 100;
/// A netlink step failed.
pub const CODE_NETLINK: u32 = 101;
/// An OVSDB step failed.
pub const CODE_OVSDB: u32 = 102;
/// The spec's "plugin not available" (STATUS).
pub const CODE_PLUGIN_NOT_AVAILABLE: u32 = 50;
/// CHECK found the pod's network not as ADD left it.
pub const CODE_CHECK_FAILED: u32 = 110;

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(transparent)]
    Config(#[from] InvalidKey),
    /// A `CNI_*` variable the request cannot be served with (code 4).
    #[error("{0}")]
    Environment(String),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Ovsdb(#[from] OvsdbError),
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error(transparent)]
    Masquerade(#[from] MasqueradeError),
    #[error("{0}")]
    InterfaceExists(String),
    #[error("{0}")]
    CheckFailed(String),
    /// STATUS: the daemon or its dataplane cannot serve ADDs now.
    #[error("{0}")]
    Unavailable(String),
    /// The request's deadline passed; whatever it had done was undone.
    #[error("{0}")]
    Deadline(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    /// A protocol-level error already in CNI form (prevResult, a version mismatch, ...).
    #[error(transparent)]
    Cni(#[from] CniError),
    /// Everything DEL or GC could not do.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Several(Vec<DataplaneError>),
}

impl DataplaneError {
    /// The CNI error code.
    pub fn code(&self) -> u32 {
        match self {
            DataplaneError::Config(_) => code::INVALID_NETWORK_CONFIG,
            DataplaneError::Environment(_) => code::INVALID_ENVIRONMENT,
            DataplaneError::Netlink(_) | DataplaneError::Masquerade(_) => CODE_NETLINK,
            DataplaneError::Ovsdb(_) => CODE_OVSDB,
            DataplaneError::Ipam(e) => e.code(),
            DataplaneError::InterfaceExists(_) => CODE_INTERFACE_EXISTS,
            DataplaneError::CheckFailed(_) => CODE_CHECK_FAILED,
            DataplaneError::Unavailable(_) => CODE_PLUGIN_NOT_AVAILABLE,
            DataplaneError::Deadline(_) => code::TRY_AGAIN_LATER,
            DataplaneError::Io { .. } => code::IO_FAILURE,
            DataplaneError::Cni(e) => e.code,
            DataplaneError::Several(all) => all.first().map_or(code::IO_FAILURE, Self::code),
        }
    }

    /// The CNI error for a request of config version `version`.
    pub fn into_cni(self, version: &str) -> CniError {
        let code = self.code();
        match self {
            DataplaneError::Cni(e) => e,
            DataplaneError::Ipam(IpamError::Plugin(e)) => CniError {
                cni_version: if e.cni_version.is_empty() {
                    version.to_string()
                } else {
                    e.cni_version
                },
                ..e
            },
            DataplaneError::Ipam(e) => {
                CniError::new(version, code, e.to_string()).with_details(e.details())
            }
            DataplaneError::Config(e) => {
                CniError::new(version, code, e.to_string()).with_details(e.reason)
            }
            DataplaneError::Netlink(e) => {
                let details = e.source_text();
                CniError::new(version, code, e.action).with_details(details)
            }
            DataplaneError::Several(all) if all.len() == 1 => all.into_iter().next().map_or_else(
                || CniError::new(version, code, "failed"),
                |e| e.into_cni(version),
            ),
            other => CniError::new(version, code, other.to_string()),
        }
    }

    /// All of `errors` as one, or Ok when there are none.
    pub fn collect(errors: Vec<DataplaneError>) -> Result<(), DataplaneError> {
        if errors.is_empty() {
            Ok(())
        } else {
            Err(DataplaneError::Several(errors))
        }
    }
}

pub type Result<T, E = DataplaneError> = std::result::Result<T, E>;
