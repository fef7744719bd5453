//! The CNI side of evio.
//!
//! - [`conf`]: the network configuration list kubelet reads (`10-evio.conflist`), generated
//!   from this node's lease.
//!
//! - [`spec`]: the CNI protocol (versions, error codes, the request forwarded to the daemon).
//! - [`result`]: ADD results across spec versions and chaining (`prevResult`).
//! - [`shim`]: **where a CNI request enters** — the `evio-cni` binary kubelet execs.
//!
//! The node's packet path (bridge, veth, IPAM, masquerade) is built here as it lands.

pub mod conf;
pub mod dataplane;
pub mod result;
pub mod shim;
pub mod spec;

pub use conf::{conflist, write_conflist, BridgeType, NetConf, OriginalNetConf, CONFLIST_FILE};
