//! JSON shapes of the HTTP API (camelCase), shared by the server and the typed client.

use std::net::Ipv4Addr;
use std::time::{Duration, UNIX_EPOCH};

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

/// A lease as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseJson {
    pub node: String,
    pub subnet: Ipv4Network,
    pub gateway: Ipv4Addr,
    pub range_start: Ipv4Addr,
    pub range_end: Ipv4Addr,
    #[serde(rename = "podCIDR")]
    pub pod_cidr: Ipv4Network,
    #[serde(rename = "hostIP")]
    pub host_ip: Option<Ipv4Addr>,
    pub revision: u64,
    /// RFC 3339, UTC.
    pub acquired_at: String,
}

impl From<&evio_raft::Lease> for LeaseJson {
    fn from(lease: &evio_raft::Lease) -> Self {
        let acquired = UNIX_EPOCH + Duration::from_millis(lease.record.acquired_at);
        Self {
            node: lease.record.node.clone(),
            subnet: lease.block.subnet,
            gateway: lease.block.gateway,
            range_start: lease.block.range_start,
            range_end: lease.block.range_end,
            pod_cidr: lease.pool.pod_cidr(),
            host_ip: lease.record.host_ip,
            revision: lease.record.revision,
            acquired_at: humantime::format_rfc3339_millis(acquired).to_string(),
        }
    }
}

/// Optional body of `PUT /v1/leases/{node}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcquireBody {
    #[serde(rename = "hostIP", default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<Ipv4Addr>,
}

/// Every error response: a message for people and a stable code for programs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub code: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberJson {
    pub id: u64,
    pub name: String,
    pub addr: String,
    /// `leader`, `voter` or `learner`.
    pub role: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterJson {
    pub node_id: u64,
    pub node_name: String,
    pub leader_id: Option<u64>,
    pub term: u64,
    pub last_applied: Option<u64>,
    #[serde(rename = "podCIDR")]
    pub pod_cidr: Ipv4Network,
    pub node_bits: u8,
    /// True while a membership change (joint configuration) is in flight.
    #[serde(default)]
    pub membership_changing: bool,
    pub members: Vec<MemberJson>,
    /// The etcd mirror's state; absent when no etcd is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_mirror: Option<EtcdMirrorJson>,
}

/// The etcd mirror as `GET /v1/cluster` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EtcdMirrorJson {
    pub endpoints: Vec<String>,
    /// True while this member is the Raft leader, the only one that writes to etcd.
    pub active: bool,
    /// False after a failed etcd call, until the next full reconcile succeeds.
    pub healthy: bool,
    /// The last Raft applied index whose lease state etcd is known to hold.
    pub mirrored_revision: u64,
    /// Applied revisions not yet in etcd (0 when not active).
    pub lag_revisions: u64,
    /// Keys evio holds in etcd (original layout plus `/evio/leases/`).
    pub keys: u64,
    pub errors: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// RFC 3339, UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error_at: Option<String>,
}

/// Body of `POST /v1/reservations`: hold a block for an imported range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReserveBody {
    pub owner: String,
    pub subnet: Ipv4Network,
}

/// Body of `POST /v1/leases/{node}/claim`: take over a reserved range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimBody {
    pub from: String,
}

/// Read consistency, `?consistency=local|linearizable`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// From this member's replica; never waits on the network.
    Local,
    /// Confirmed by the leader with a quorum before answering.
    #[default]
    Linearizable,
}

impl Consistency {
    pub fn as_str(self) -> &'static str {
        match self {
            Consistency::Local => "local",
            Consistency::Linearizable => "linearizable",
        }
    }
}
