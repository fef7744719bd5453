//! Raft RPC between members over HTTP (JSON bodies): the client openraft calls
//! ([`client`]) and the axum routes that answer it ([`server`]), sharing the paths and
//! headers defined here.

pub mod client;
pub mod server;

pub use client::{Denied, HttpNetwork, HttpPeer, PeerHttp};
pub use server::{router, RpcRefusal};

pub const APPEND_PATH: &str = "/raft/append";
pub const VOTE_PATH: &str = "/raft/vote";
pub const SNAPSHOT_PATH: &str = "/raft/snapshot";
/// Every Raft RPC path starts with this; the API requires the cluster token under it.
pub const PATH_PREFIX: &str = "/raft/";
/// Header carrying the sender's cluster id; a member refuses RPC from another cluster.
pub const CLUSTER_HEADER: &str = "x-evio-cluster";
/// Header naming the node id an RPC is meant for: a new member that reuses a dead member's
/// address must not answer for it (openraft's leader panics on such replies).
pub const TARGET_HEADER: &str = "x-evio-target-node";
/// Test-only: comma-separated peer addresses this process must not dial, to cut one network
/// path (e.g. member to leader) while every other path works.
pub const DENY_PEERS_ENV: &str = "EVIO_TEST_DENY_PEERS";
