//! The openraft type configuration shared by storage, network and API.

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::lease::{LeaseCommand, LeaseOutcome};

pub type NodeId = u64;

/// What a member tells others about itself: its node name and the address peers dial.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvioNode {
    pub name: String,
    pub addr: String,
}

impl fmt::Display for EvioNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.addr)
    }
}

openraft::declare_raft_types!(
    /// evio's Raft: lease commands in, lease outcomes out.
    pub TypeConfig:
        D = LeaseCommand,
        R = LeaseOutcome,
        NodeId = NodeId,
        Node = EvioNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
/// A member's Raft role (leader, follower, learner, ...), as in [`RaftMetrics`].
pub use openraft::ServerState;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StoredMembership = openraft::StoredMembership<NodeId, EvioNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, EvioNode>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type RaftMetrics = openraft::RaftMetrics<NodeId, EvioNode>;
/// Log, applied index and snapshot: changes only when one of them does.
pub type RaftDataMetrics = openraft::metrics::RaftDataMetrics<NodeId>;
/// Role, term, leader and membership: changes only when one of them does.
pub type RaftServerMetrics = openraft::metrics::RaftServerMetrics<NodeId, EvioNode>;
