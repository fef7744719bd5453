//! evio's replicated subnet-lease table.
//!
//! - [`pool`], [`lease`], [`legacy`]: the pure lease model, re-exported from `evio-lease-model`
//!   (**where a lease is decided** is `evio_lease_model::lease`).
//! - [`store`]: durable openraft storage (log, vote, state machine, snapshots) on sled.
//! - [`membership`]: **where members are decided** — joins, promotions, voter replacement.
//! - [`network`]: Raft RPC between members: the client openraft calls and the server routes.
//! - [`replica`]: one member: data dir + store + Raft, local reads and leader writes.
//! - [`alloc`]: glibc malloc tuning (arenas, handing freed memory back).

pub mod alloc;
pub mod data_dir;
pub mod membership;
pub mod network;
pub mod replica;
pub mod store;
pub mod tls;
pub mod types;

pub use evio_lease_model::{lease, legacy, pool};
pub use lease::{
    validate_node_name, Lease, LeaseCommand, LeaseOutcome, LeaseRecord, LeaseTable, Refusal,
};
pub use legacy::{validate_owner, OriginalRange};
pub use membership::{
    AdmitError, JoinRequest, JoinResponse, MembershipController, RemoveError, RemoveResponse,
};
pub use pool::{Block, Pool, PoolError};
pub use replica::{OpenError, RaftTuning, Replica, ReplicaConfig, RequestError};
pub use types::{EvioNode, NodeId, TypeConfig};
