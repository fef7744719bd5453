//! The CNI side of evio.
//!
//! - [`conf`]: the network configuration list kubelet reads (`10-evio.conflist`), generated
//!   from this node's lease.
//!
//! - [`plugin_conf`]: the plugin's keys, one typed struct the writer and the daemon share.
//! - [`dataplane`]: **where a packet path is built** (bridge drivers, veths, IPAM, masquerade).
//! - [`spec`]: the CNI protocol (versions, error codes, the request forwarded to the daemon).
//! - [`result`]: ADD results across spec versions and chaining (`prevResult`).
//! - [`shim`]: **where a CNI request enters** — the `evio-cni` binary kubelet execs.

pub mod conf;
pub mod dataplane;
pub mod plugin_conf;
pub mod result;
pub mod shim;
pub mod spec;

pub use conf::{conflist, write_conflist, NetConf, OriginalNetConf, CONFLIST_FILE};
pub use plugin_conf::{BridgeType, OvsDatapath, PluginConf};
