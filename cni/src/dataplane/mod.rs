//! **Where a packet path is built**: the node's side of a pod's network — bridge, veth pair,
//! IPAM by delegation, addresses and routes.

pub mod ipam;
pub mod masquerade;
pub mod netlink;
pub mod ovsdb;
pub mod pod;
pub mod reaper;

pub use pod::PodNetwork;
