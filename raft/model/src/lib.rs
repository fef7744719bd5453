//! evio's pure lease model: what a lease is and how one is decided, without Raft, storage or an
//! async runtime, so the CNI side can use it without pulling in the replicated store.
//!
//! - [`pool`]: how podCIDR + nodeBits split the pod overlay into node blocks.
//! - [`lease`]: **where a lease is decided** — the deterministic table every member applies.
//! - [`legacy`]: the original etcd key layout and the owners of ranges imported from it.
//! - [`atomic_file`]: whole-file replacement, shared by the data dir and the CNI config writer.

pub mod atomic_file;
pub mod lease;
pub mod legacy;
pub mod pool;

pub use atomic_file::write_atomic;
pub use lease::{
    validate_node_name, Lease, LeaseCommand, LeaseOutcome, LeaseRecord, LeaseTable, Refusal,
};
pub use legacy::{validate_owner, OriginalRange};
pub use pool::{Block, Pool, PoolError};
