//! The CNI side of evio.
//!
//! - [`conf`]: the network configuration list kubelet reads (`10-evio.conflist`), generated
//!   from this node's lease.
//!
//! The `evio-cni` plugin shim and the node's packet path (bridge, veth, IPAM, masquerade)
//! are built here too as they land.

pub mod conf;

pub use conf::{conflist, write_conflist, BridgeType, NetConf, OriginalNetConf, CONFLIST_FILE};
