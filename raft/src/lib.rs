//! evio's replicated subnet-lease table.
//!
//! - [`pool`]: how podCIDR + nodeBits split the pod overlay into node blocks.
//! - [`lease`]: **where a lease is decided** — the deterministic state machine every member applies.
//! - [`store`]: durable openraft storage (log, vote, state machine, snapshots) on sled.
//! - [`membership`]: **where members are decided** — joins, promotions, voter replacement.
//! - [`network`]: Raft RPC between members: the client openraft calls and the server routes.
//! - [`replica`]: one member: data dir + store + Raft, local reads and leader writes.

pub mod data_dir;
pub mod lease;
pub mod legacy;
pub mod membership;
pub mod network;
pub mod pool;
pub mod replica;
pub mod store;
pub mod tls;
pub mod types;

pub use lease::{
    validate_node_name, Lease, LeaseCommand, LeaseOutcome, LeaseRecord, LeaseTable, Refusal,
};
pub use legacy::{validate_owner, OriginalRange};
pub use membership::{AdmitError, JoinRequest, JoinResponse, MembershipController};
pub use pool::{Block, Pool, PoolError};
pub use replica::{OpenError, RaftTuning, Replica, ReplicaConfig, RequestError};
pub use types::{EvioNode, NodeId, TypeConfig};
