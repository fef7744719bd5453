//! **Where a packet path is built**: the node's side of a pod's network.
//!
//! - [`pods::PodNetwork`]: what the daemon calls — deadlines, per-attachment ordering, the one
//!   conversion of [`error::DataplaneError`] to a CNI error.
//! - `add`, `del`, `check`, `gc`: the CNI verbs, written against the bridge driver.
//! - [`bridge`]: **where each bridge kind lives** — the [`bridge::BridgeDriver`] trait,
//!   `bridge::ovs` (Open vSwitch over one OVSDB session, [`ovsdb`]) and `bridge::linux`.
//! - [`netlink`]: links, addresses and routes over rtnetlink in the host namespace;
//!   [`pod_netns`]: the same inside a pod's namespace.
//! - [`ipam`]: delegation to the IPAM plugin, or [`evio_ipam`], the daemon's own; [`masquerade`]: the nftables rule per node
//!   subnet; [`reaper`]: deleting retired veths off the DEL path; [`attachment`]: names;
//!   `announce`: gratuitous ARPs and unsolicited neighbour advertisements after ADD;
//!   [`timing`]: where a request's time goes (debug logs, `evio-bench pods --breakdown`).

mod add;
mod announce;
pub mod attachment;
pub mod bridge;
mod check;
mod del;
pub mod error;
pub mod evio_ipam;
mod gc;
pub mod ipam;
pub mod masquerade;
pub mod netlink;
mod nftables;
pub mod ovsdb;
pub mod pod_netns;
pub mod pods;
pub mod reaper;
pub mod timing;

pub use pods::{AttachedPod, Limits, PodNetwork};
