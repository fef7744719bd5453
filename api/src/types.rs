//! JSON shapes of the HTTP API (camelCase), shared by the server and the typed client.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// How the API writes a moment: RFC 3339, UTC, milliseconds.
pub fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

/// A lease as the API shows it. `subnet`, `gateway`, `rangeStart`, `rangeEnd` and `podCIDR`
/// describe the primary block — the IPv4 one whenever the pool has IPv4, as clients of earlier
/// versions expect; `subnets` lists the block of every family (IPv4 first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LeaseJson {
    pub node: String,
    #[schema(value_type = String, example = "10.244.3.0/24")]
    pub subnet: IpNetwork,
    #[schema(value_type = String, example = "10.244.3.1")]
    pub gateway: IpAddr,
    #[schema(value_type = String, example = "10.244.3.2")]
    pub range_start: IpAddr,
    #[schema(value_type = String, example = "10.244.3.254")]
    pub range_end: IpAddr,
    #[serde(rename = "podCIDR")]
    #[schema(value_type = String, example = "10.244.0.0/16")]
    pub pod_cidr: IpNetwork,
    /// The node's block in each family of the pool, IPv4 first (absent from earlier servers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subnets: Vec<BlockJson>,
    #[serde(rename = "hostIP")]
    #[schema(value_type = Option<String>, format = Ipv4)]
    pub host_ip: Option<Ipv4Addr>,
    pub revision: u64,
    /// RFC 3339, UTC.
    pub acquired_at: String,
}

/// One family's block of a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BlockJson {
    #[schema(value_type = String, example = "fd00:10:244:3::/64")]
    pub subnet: IpNetwork,
    #[schema(value_type = String, example = "fd00:10:244:3::1")]
    pub gateway: IpAddr,
    #[schema(value_type = String, example = "fd00:10:244:3::2")]
    pub range_start: IpAddr,
    #[schema(value_type = String, example = "fd00:10:244:3:ffff:ffff:ffff:fffe")]
    pub range_end: IpAddr,
    /// The family's podCIDR: pods take its mask.
    #[serde(rename = "podCIDR")]
    #[schema(value_type = String, example = "fd00:10:244::/56")]
    pub pod_cidr: IpNetwork,
}

impl LeaseJson {
    /// Every family's block; from a server that predates `subnets`, the primary one.
    pub fn blocks(&self) -> Vec<BlockJson> {
        if !self.subnets.is_empty() {
            return self.subnets.clone();
        }
        vec![BlockJson {
            subnet: self.subnet,
            gateway: self.gateway,
            range_start: self.range_start,
            range_end: self.range_end,
            pod_cidr: self.pod_cidr,
        }]
    }
}

impl From<&evio_raft::Lease> for LeaseJson {
    fn from(lease: &evio_raft::Lease) -> Self {
        let acquired = UNIX_EPOCH + Duration::from_millis(lease.record.acquired_at);
        let subnets = lease
            .blocks()
            .into_iter()
            .filter_map(|block| {
                Some(BlockJson {
                    subnet: block.subnet,
                    gateway: block.gateway,
                    range_start: block.range_start,
                    range_end: block.range_end,
                    pod_cidr: lease.pool.cidr_of(block.family())?,
                })
            })
            .collect();
        Self {
            node: lease.record.node.clone(),
            subnet: lease.block.subnet,
            gateway: lease.block.gateway,
            range_start: lease.block.range_start,
            range_end: lease.block.range_end,
            pod_cidr: lease.pool.pod_cidr(),
            subnets,
            host_ip: lease.record.host_ip,
            revision: lease.record.revision,
            acquired_at: rfc3339(acquired),
        }
    }
}

/// Optional body of `PUT /v1/leases/{node}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcquireBody {
    #[serde(rename = "hostIP", default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = Ipv4)]
    pub host_ip: Option<Ipv4Addr>,
}

/// Every error response: a message for people and a stable code for programs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
    pub code: ErrorCode,
}

/// The stable code of every error the API answers with; each has one HTTP status. Clients
/// match on these, not on statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: a node name (or `legacy:` owner) that is not valid.
    InvalidNodeName,
    /// 400: a body that is not the JSON the route takes.
    InvalidBody,
    /// 400: an unknown query parameter or value.
    InvalidQuery,
    /// 400: a body on GET, HEAD or DELETE.
    BodyNotAllowed,
    /// 400: a subnet that is not a node block of the pool.
    OutsidePool,
    /// 400: a request that could not be read at all.
    BadRequest,
    /// 401: missing or wrong cluster token.
    Unauthorized,
    /// 403: Raft RPC from another cluster.
    ClusterMismatch,
    /// 400: plaintext HTTP to a member that speaks TLS.
    TlsRequired,
    /// 401: over TLS, a write or Raft RPC without a client certificate of the cluster.
    CertificateRequired,
    /// 403: Raft RPC speaking for another node than the sender's certificate names.
    WrongSender,
    /// 403: a certificate request this member will not sign (another member's node id, or
    /// no CA key here).
    CertificateRefused,
    /// 404: no such route, or no such lease.
    NotFound,
    /// 405: the route exists, the method does not.
    MethodNotAllowed,
    /// 413: a body over the route's limit.
    PayloadTooLarge,
    /// 421: Raft RPC meant for another node id.
    WrongNode,
    /// 409: the block is held by another owner.
    BlockTaken,
    /// 409: the owner already holds another block.
    HoldsOtherLease,
    /// 409: no free block left.
    PoolExhausted,
    /// 409: a joining node configured with another pool.
    PoolMismatch,
    /// 409: a live member already has this name.
    DuplicateNodeName,
    /// 409: `claim --from` names an owner that is not a `legacy:` range.
    NotLegacyOwner,
    /// 409: a conditional release whose revision is no longer the lease's.
    RevisionMismatch,
    /// 429: too many linearizable reads without the token; `Retry-After` says when.
    RateLimited,
    /// 500: a bug or a broken data dir.
    Internal,
    /// 503 + `Retry-After`: no leader reachable.
    NoQuorum,
    /// 503 + `Retry-After`: the leader is known but could not be reached.
    NotLeader,
    /// 503 + `Retry-After`: the member has not caught up yet.
    NotReady,
    /// 503: Raft stopped on this member.
    RaftStopped,
    /// 503 + `Retry-After`: a member with this name was heard from within the voter grace;
    /// the admission waits rather than evict it.
    MemberRecentlyHeard,
    /// 503 + `Retry-After`: the request did not complete within the route's timeout.
    Timeout,
    /// A code this client does not know (a newer server).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The HTTP status this code is always answered with.
    pub fn status(self) -> u16 {
        use ErrorCode::*;
        match self {
            InvalidNodeName | InvalidBody | InvalidQuery | BodyNotAllowed | OutsidePool
            | BadRequest | TlsRequired => 400,
            Unauthorized | CertificateRequired => 401,
            ClusterMismatch | WrongSender | CertificateRefused => 403,
            NotFound => 404,
            MethodNotAllowed => 405,
            BlockTaken | HoldsOtherLease | PoolExhausted | PoolMismatch | DuplicateNodeName
            | NotLegacyOwner | RevisionMismatch => 409,
            PayloadTooLarge => 413,
            WrongNode => 421,
            RateLimited => 429,
            Internal | Unknown => 500,
            NoQuorum | NotLeader | NotReady | RaftStopped | MemberRecentlyHeard | Timeout => 503,
        }
    }

    /// True when the same request may succeed later unchanged (the answer carries
    /// `Retry-After`).
    pub fn is_retryable(self) -> bool {
        use ErrorCode::*;
        matches!(
            self,
            RateLimited | NoQuorum | NotLeader | NotReady | MemberRecentlyHeard | Timeout
        )
    }

    pub fn as_str(self) -> &'static str {
        use ErrorCode::*;
        match self {
            InvalidNodeName => "invalid_node_name",
            InvalidBody => "invalid_body",
            InvalidQuery => "invalid_query",
            BodyNotAllowed => "body_not_allowed",
            OutsidePool => "outside_pool",
            BadRequest => "bad_request",
            Unauthorized => "unauthorized",
            ClusterMismatch => "cluster_mismatch",
            TlsRequired => "tls_required",
            CertificateRequired => "certificate_required",
            WrongSender => "wrong_sender",
            CertificateRefused => "certificate_refused",
            NotFound => "not_found",
            MethodNotAllowed => "method_not_allowed",
            PayloadTooLarge => "payload_too_large",
            WrongNode => "wrong_node",
            BlockTaken => "block_taken",
            HoldsOtherLease => "holds_other_lease",
            PoolExhausted => "pool_exhausted",
            PoolMismatch => "pool_mismatch",
            DuplicateNodeName => "duplicate_node_name",
            NotLegacyOwner => "not_legacy_owner",
            RevisionMismatch => "revision_mismatch",
            RateLimited => "rate_limited",
            Internal => "internal",
            NoQuorum => "no_quorum",
            NotLeader => "not_leader",
            NotReady => "not_ready",
            RaftStopped => "raft_stopped",
            MemberRecentlyHeard => "member_recently_heard",
            Timeout => "timeout",
            Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberJson {
    pub id: u64,
    pub name: String,
    pub addr: String,
    /// `leader`, `voter` or `learner`.
    pub role: String,
    /// Log entries this member is behind the leader's log; only in the leader's answer
    /// (followers do not track each other's progress).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_lag: Option<u64>,
    /// Whether this member exchanged Raft traffic with it lately (this member itself: true).
    /// Absent when none is expected between the two (two followers of a known leader).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reachable: Option<bool>,
    /// Milliseconds since its last Raft RPC reached this member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heard_ms_ago: Option<u64>,
    /// Milliseconds since it last answered an RPC of this member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reached_ms_ago: Option<u64>,
    /// Why this member's last RPC to it failed, when that is newer than its last answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterJson {
    pub node_id: u64,
    pub node_name: String,
    pub leader_id: Option<u64>,
    pub term: u64,
    pub last_applied: Option<u64>,
    /// The primary podCIDR (IPv4 whenever the pool has IPv4).
    #[serde(rename = "podCIDR")]
    #[schema(value_type = String, example = "10.244.0.0/16")]
    pub pod_cidr: IpNetwork,
    /// Every podCIDR of the pool, IPv4 first (absent from earlier servers).
    #[serde(rename = "podCIDRs", default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<String>, example = json!(["10.244.0.0/16", "fd00:10:244::/56"]))]
    pub pod_cidrs: Vec<IpNetwork>,
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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
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
    /// When etcd last matched the leases (a reconcile or a mirrored change), RFC 3339, UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_at: Option<String>,
}

/// `GET /v1/node`: this member and what runs beside it on its node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeJson {
    pub node_id: u64,
    pub node_name: String,
    /// The address other members dial.
    pub addr: String,
    /// This node's lease in the local replica (never waits on the network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseJson>,
    pub cni: CniJson,
    /// The etcd mirror's state; absent when no etcd is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_mirror: Option<EtcdMirrorJson>,
    pub kubernetes: KubernetesJson,
}

/// The CNI service of this node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CniJson {
    /// False when this member serves no CNI socket.
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
}

/// The Kubernetes integration (`run --kubernetes`) of this member.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KubernetesJson {
    pub enabled: bool,
    /// The Node object this member annotates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// True once the Node carries this member's current subnet and API address.
    pub annotated: bool,
    /// The subnet last written to the Node (`evio.io/pod-subnet`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotated_subnet: Option<String>,
    /// RFC 3339, UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotated_at: Option<String>,
    /// True while this member (the Raft leader) watches Nodes to release deleted ones' leases.
    pub node_gc_active: bool,
    pub errors: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// RFC 3339, UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error_at: Option<String>,
}

/// One pod interface attached through this node's CNI socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodJson {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`, the interface inside the pod.
    pub interface: String,
    /// The CNI network's name.
    pub network: String,
    /// The pod's addresses with prefix (`10.244.3.5/16`); empty when this daemon did not
    /// attach it itself (before a restart).
    pub addresses: Vec<String>,
    /// The host end of the pod's veth.
    pub host_interface: String,
    /// When this daemon attached it (RFC 3339, UTC); absent when attached before a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attached_at: Option<String>,
}

/// `GET /v1/node/pods`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodePodsJson {
    pub node_name: String,
    /// False when this member serves no CNI socket (then `pods` is empty).
    pub cni: bool,
    pub pods: Vec<PodJson>,
}

/// Body of `POST /v1/cluster/certificate`: a joining node's certificate request, shown with
/// the cluster token (the one exchange the token authorises when members speak TLS).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CertificateRequest {
    pub node_id: u64,
    pub name: String,
    /// PKCS#10 request in PEM; only its public key is used.
    pub csr: String,
}

/// Answer to a [`CertificateRequest`]: the node's certificate (PEM, followed by the CA's),
/// the CA certificate, and the CA key (every member signs joins and renews itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateResponse {
    pub certificate: String,
    pub ca: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_key: Option<String>,
}

/// Body of `POST /v1/reservations`: hold a block for an imported range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReserveBody {
    pub owner: String,
    #[schema(value_type = String, example = "10.244.3.0/24")]
    pub subnet: IpNetwork,
}

/// Body of `POST /v1/leases/{node}/claim`: take over a reserved range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimBody {
    pub from: String,
}

/// Read consistency, `?consistency=local|linearizable`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
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

#[cfg(test)]
mod tests;
