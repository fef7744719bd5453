//! What a chaos run records: every client operation with its invoke/complete time and
//! outcome, replica samples, availability probes and the fault windows. Checkers read only
//! this, so they can be fed planted histories in tests.

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    Acquire,
    Release,
    Read,
}

/// `Fail` means the server definitely did not apply it (a 4xx answer); `Unknown` means it
/// may have been applied (timeout, transport error, 5xx).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Fail,
    Unknown,
}

/// One client operation on one lease key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// Unique request id of the run.
    pub id: u64,
    pub client: usize,
    /// The member the request was sent to.
    pub member: usize,
    pub key: String,
    pub kind: OpKind,
    pub invoke_ms: u64,
    pub complete_ms: u64,
    pub outcome: Outcome,
    /// Acquire: the subnet returned. Read: the subnet seen (`None`: no lease).
    pub value: Option<IpNetwork>,
}

/// One member's local replica (`?consistency=local`) at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    pub member: usize,
    pub at_ms: u64,
    pub leases: Vec<(String, IpNetwork)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProbeKind {
    /// The member's own host lease, read locally.
    LocalRead,
    PodAdd,
    PodDel,
}

/// A availability probe against one member (local read of its own lease, pod ADD/DEL).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    pub member: usize,
    pub kind: ProbeKind,
    pub invoke_ms: u64,
    pub complete_ms: u64,
    pub ok: bool,
    pub detail: String,
}

/// A fault as applied: `[start_ms, end_ms)`; `partition` marks network faults, during which
/// every member's process is up and must keep serving local reads and pods.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultWindow {
    pub name: String,
    pub detail: String,
    pub start_ms: u64,
    pub end_ms: u64,
    pub partition: bool,
    /// Members cut off on the minority side (informational).
    pub minority: Vec<usize>,
}

/// What each member reported after the heal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberState {
    pub member: usize,
    pub node_id: u64,
    pub leader_id: Option<u64>,
    pub is_leader: bool,
    pub last_applied: Option<u64>,
    pub leases: Vec<(String, IpNetwork)>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct History {
    pub ops: Vec<Op>,
    pub samples: Vec<Sample>,
    pub probes: Vec<Probe>,
    pub faults: Vec<FaultWindow>,
    /// Host leases acquired before the faults (never released): node name -> subnet.
    pub host_leases: Vec<(String, IpNetwork)>,
    /// Final states, one per member, taken when they converged (or at the deadline).
    pub final_states: Vec<MemberState>,
    /// Heal to convergence, when it converged.
    pub recovery_ms: Option<u64>,
    /// Convergence bound used.
    pub recovery_bound_ms: u64,
    /// Each member's log text (all restarts).
    #[serde(skip)]
    pub logs: Vec<(usize, String)>,
}
