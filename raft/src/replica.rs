//! One member of the lease cluster: its data dir, durable store and Raft instance, and the
//! two ways to touch leases — local reads that never leave the node, and writes/linearizable
//! reads that go through the Raft leader.
//!
//! Over 500 lines on purpose: this is the narrow interface the API and the daemon use instead
//! of openraft, one type whose methods share the Raft handle and the mapping of Raft errors to
//! `RequestError`; split up, each part would need the private fields of the others.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::storage::RaftLogStorage;
use openraft::{Config, SnapshotPolicy};

use crate::data_dir::{random_hex, DataDir, DataDirError};
use crate::lease::{validate_node_name, Lease, LeaseCommand, LeaseOutcome, NodeNameError, Refusal};
use crate::legacy::{is_legacy_owner, validate_owner};
use crate::network::{HttpNetwork, PeerHttp, SNAPSHOT_CHUNK_BYTES};
use crate::pool::Pool;
use crate::store::{self, LocalView, StoreError};
use crate::types::{
    EvioNode, NodeId, Raft, RaftDataMetrics, RaftMetrics, RaftServerMetrics, ServerState,
};

/// Raft timing and log compaction; the defaults suit edge links (slower than a datacenter).
///
/// How the timing adds up (openraft 0.9): a follower that heard its leader keeps refusing
/// votes for a leader lease of `election_timeout_max_ms`, and stands for election only after
/// hearing nothing for that lease plus its own timeout (drawn once per process from
/// `[min, max)`), checked every 1.5 heartbeats. With the defaults (heartbeat 100 ms, 200–300
/// ms) a follower tolerates 500–600 ms of silence (5–6 lost heartbeats) and a dead leader is
/// replaced 0.5–0.75 s after its last heartbeat. See docs/failover.md.
#[derive(Debug, Clone)]
pub struct RaftTuning {
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot every this many applied entries.
    pub snapshot_every: u64,
    /// Log entries kept before the snapshot, so slightly lagging members catch up from the
    /// log instead of a full snapshot.
    pub logs_kept_after_snapshot: u64,
    /// Snapshots are sent in chunks of at most this many bytes (at most
    /// [`SNAPSHOT_CHUNK_BYTES`], which fits the Raft routes' body limit).
    pub snapshot_chunk_bytes: usize,
}

impl RaftTuning {
    /// The largest election timeout for a smallest one of `min_ms`: 1.5 times it, wide enough
    /// that two survivors rarely stand at the same tick, and short because openraft adds the
    /// maximum again as the leader lease before anyone may stand.
    pub const fn election_max_for(min_ms: u64) -> u64 {
        min_ms + min_ms / 2
    }
}

impl Default for RaftTuning {
    fn default() -> Self {
        Self {
            heartbeat_ms: 100,
            election_timeout_min_ms: 200,
            election_timeout_max_ms: RaftTuning::election_max_for(200),
            snapshot_every: 1000,
            logs_kept_after_snapshot: 500,
            snapshot_chunk_bytes: SNAPSHOT_CHUNK_BYTES,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    pub data_dir: PathBuf,
    pub pool: Pool,
    pub node_name: String,
    /// Address other members dial for Raft RPC and the API.
    pub advertise: String,
    pub cache_bytes: u64,
    pub tuning: RaftTuning,
    /// How long a write or linearizable read waits for the leader/quorum before giving up.
    pub request_timeout: Duration,
    /// The cluster secret: what a joining node shows to get its certificate (TLS), or what
    /// every member-to-member request carries (plaintext).
    pub token: String,
    /// Mutual TLS between members; `None`: plaintext (`dev`, `--insecure-plaintext`).
    pub tls: Option<Arc<crate::tls::TlsContext>>,
}

impl ReplicaConfig {
    pub fn new(data_dir: PathBuf, pool: Pool, node_name: String, advertise: String) -> Self {
        Self {
            data_dir,
            pool,
            node_name,
            advertise,
            cache_bytes: store::DEFAULT_CACHE_BYTES,
            tuning: RaftTuning::default(),
            request_timeout: Duration::from_secs(5),
            token: String::new(),
            tls: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("invalid Raft settings: {0}")]
    Config(String),
    #[error("starting Raft: {0}")]
    Raft(String),
    #[error(transparent)]
    NodeName(#[from] NodeNameError),
}

/// Why a write or a linearizable read did not complete.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error(transparent)]
    InvalidNodeName(#[from] NodeNameError),
    #[error("the pool is exhausted: all {blocks} node blocks are leased")]
    PoolExhausted { blocks: u64 },
    #[error("this member is not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<(NodeId, EvioNode)> },
    #[error("no quorum: the request did not complete within {0:?}")]
    NoQuorum(Duration),
    #[error("{}", describe_refusal(.0))]
    Refused(Refusal),
    #[error("raft stopped: {0}")]
    Fatal(String),
}

fn describe_refusal(refusal: &Refusal) -> String {
    match refusal {
        Refusal::OutsidePool { block } => format!("block {block} is outside the pool"),
        Refusal::BlockTaken { block, holder } => {
            format!("block {block} is already leased to {holder}")
        }
        Refusal::OwnerHoldsOther { owner, block } => {
            format!("{owner} already holds another block ({block})")
        }
        Refusal::NoSuchLease { owner } => format!("{owner} holds no lease"),
        Refusal::RevisionMismatch {
            owner,
            expected,
            actual,
        } => format!(
            "the lease of {owner} is at revision {actual}, not {expected}: it changed since it was read"
        ),
        Refusal::NotLegacyOwner { owner } => format!(
            "{owner:?} is not an imported range (legacy:<rangeStart>-<rangeEnd>): a node's lease is never claimed from it"
        ),
    }
}

pub struct Replica {
    data_dir: Mutex<DataDir>,
    peers: PeerHttp,
    node_id: NodeId,
    node: EvioNode,
    pool: Pool,
    raft: Raft,
    view: LocalView,
    committed_at_open: Option<u64>,
    request_timeout: Duration,
    /// Snapshot bytes received from leaders: a joining member's progress before its first
    /// snapshot is installed.
    snapshot_bytes: AtomicU64,
    /// While leader: the voter grace and when each member last answered (or was first
    /// tracked), kept by the membership controller, read by admissions.
    liveness: Mutex<(Duration, HashMap<NodeId, Instant>)>,
    /// Turns openraft's tick off while this member cannot stand for election.
    ticks: tokio::task::JoinHandle<()>,
}

impl Drop for Replica {
    fn drop(&mut self) {
        // The task holds a Raft handle: it must not keep Raft running after the replica.
        self.ticks.abort();
    }
}

/// openraft ticks every 1.5 heartbeats on every member: a turn of its loop that checks the
/// election timer (and on the leader sends heartbeats), then publishes [`RaftMetrics`],
/// waking everything that watches them. A learner never stands for election, so on a
/// learner a tick does nothing but that (six and a half times a second, most of an idle
/// learner's CPU). The tick runs while this member is a voter (in either configuration of a
/// joint change), a candidate or the leader (a leader removed from the voters steps down
/// on a tick); a promotion turns it on as soon as the new membership is appended here.
async fn tick_while_voting(raft: Raft, id: NodeId) {
    let mut server = raft.server_metrics();
    let mut ticking = None;
    loop {
        let wanted = {
            let m = server.borrow_and_update();
            matches!(m.state, ServerState::Leader | ServerState::Candidate)
                || m.membership_config
                    .membership()
                    .get_joint_config()
                    .iter()
                    .any(|voters| voters.contains(&id))
        };
        if ticking != Some(wanted) {
            tracing::debug!(ticking = wanted, "raft tick");
            raft.runtime_config().tick(wanted);
            ticking = Some(wanted);
        }
        if server.changed().await.is_err() {
            return;
        }
    }
}

/// How long one snapshot chunk RPC may take. Real snapshots over edge links take longer than
/// openraft's 200 ms default, and the last chunk also installs the whole table on the
/// receiver (decode, one sled batch, a flush), so the limit grows with the largest table the
/// pool can hold: 5 s plus 0.1 ms a block (65,536 blocks: 11.5 s), at most 60 s.
pub fn snapshot_rpc_timeout(pool: &Pool) -> Duration {
    let per_block_us = 100;
    Duration::from_millis(5_000)
        .saturating_add(Duration::from_micros(
            pool.block_count().saturating_mul(per_block_us),
        ))
        .min(Duration::from_secs(60))
}

/// Wall-clock Unix milliseconds (for proposed commands and request deadlines, never for apply).
pub fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn request_id() -> String {
    format!(
        "{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    )
}

impl Replica {
    /// Opens the data dir and store and starts Raft. Does not join or bootstrap a cluster.
    pub async fn open(config: ReplicaConfig) -> Result<Arc<Self>, OpenError> {
        validate_node_name(&config.node_name)?;
        // Operator-issued certificates name the node id: a new data dir takes it.
        let certified = config
            .tls
            .as_ref()
            .filter(|tls| matches!(tls.source(), crate::tls::Source::Files { .. }))
            .and_then(|tls| tls.credentials().ok())
            .map(|c| c.identity.node_id);
        let data_dir = DataDir::open_as(&config.data_dir, config.pool, certified)?;
        let (mut logs, state_machine) =
            store::open(&data_dir.db_path(), config.pool, config.cache_bytes)?;
        let committed_at_open = logs
            .read_committed()
            .await
            .map_err(|e| OpenError::Raft(e.to_string()))?
            .map(|id| id.index);
        let view = state_machine.view();
        let tuning = &config.tuning;
        let raft_config = Config {
            cluster_name: "evio".into(),
            heartbeat_interval: tuning.heartbeat_ms,
            election_timeout_min: tuning.election_timeout_min_ms,
            election_timeout_max: tuning.election_timeout_max_ms,
            install_snapshot_timeout: snapshot_rpc_timeout(&config.pool).as_millis() as u64,
            snapshot_max_chunk_size: tuning.snapshot_chunk_bytes.clamp(1, SNAPSHOT_CHUNK_BYTES)
                as u64,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(tuning.snapshot_every),
            max_in_snapshot_log_to_keep: tuning.logs_kept_after_snapshot,
            ..Default::default()
        }
        .validate()
        .map_err(|e| OpenError::Config(e.to_string()))?;
        let peers = PeerHttp::new(
            &config.token,
            data_dir.cluster_id().map(str::to_string),
            config.tls.clone(),
        );
        if let Some(tls) = &config.tls {
            let applied = view.clone();
            tls.revocations()
                .set(move |id| applied.read().table.revoked().contains(&id));
        }
        let effective = crate::network::client::EffectiveMembership::default();
        let network = HttpNetwork::new(peers.clone(), view.clone(), effective.clone());
        let node_id = data_dir.node_id();
        let raft = Raft::new(node_id, Arc::new(raft_config), network, logs, state_machine)
            .await
            .map_err(|e| OpenError::Raft(e.to_string()))?;
        // Set once: nothing else sets it.
        let _ = effective.set(raft.server_metrics());
        let ticks = tokio::spawn(tick_while_voting(raft.clone(), node_id));
        tracing::info!(
            node_id,
            node = %config.node_name,
            data_dir = %config.data_dir.display(),
            new = data_dir.created(),
            "replica opened"
        );
        Ok(Arc::new(Self {
            data_dir: Mutex::new(data_dir),
            peers,
            node_id,
            node: EvioNode {
                name: config.node_name,
                addr: config.advertise,
            },
            pool: config.pool,
            raft,
            view,
            committed_at_open,
            request_timeout: config.request_timeout,
            snapshot_bytes: AtomicU64::new(0),
            liveness: Mutex::new((Duration::ZERO, HashMap::new())),
            ticks,
        }))
    }

    /// Makes this member the only voter of a new cluster (with a new cluster id); a no-op when
    /// already initialised.
    pub async fn bootstrap_single(&self) -> Result<(), RequestError> {
        let initialized = self
            .raft
            .is_initialized()
            .await
            .map_err(|e| RequestError::Fatal(e.to_string()))?;
        if self.cluster_id().is_none() {
            self.set_cluster_id(&random_hex(8))
                .map_err(|e| RequestError::Fatal(e.to_string()))?;
        }
        if !initialized {
            let members = BTreeMap::from([(self.node_id, self.node.clone())]);
            self.raft
                .initialize(members)
                .await
                .map_err(|e| RequestError::Fatal(e.to_string()))?;
        }
        Ok(())
    }

    /// Waits until some member is known as leader.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<NodeId, RequestError> {
        let metrics = self
            .raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader.is_some(), "a leader is known")
            .await
            .map_err(|_| RequestError::NoQuorum(timeout))?;
        metrics
            .current_leader
            .ok_or(RequestError::NoQuorum(timeout))
    }

    /// Waits until this member knows of a leader other than `previous` (after an election),
    /// for at most two election timeouts and `limit`; the new leader, if one came.
    pub async fn wait_for_new_leader(
        &self,
        previous: Option<NodeId>,
        limit: Duration,
    ) -> Option<NodeId> {
        let election = Duration::from_millis(self.raft.config().election_timeout_max);
        self.raft
            .wait(Some(limit.min(2 * election)))
            .metrics(
                |m| m.current_leader.is_some() && m.current_leader != previous,
                "a new leader is known",
            )
            .await
            .ok()
            .and_then(|m| m.current_leader)
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The cluster this member belongs to, once it bootstrapped or joined one.
    pub fn cluster_id(&self) -> Option<String> {
        self.peers.cluster_id()
    }

    /// Durably records the cluster this member joined; RPC carries it from now on.
    pub fn set_cluster_id(&self, id: &str) -> Result<(), DataDirError> {
        let mut data_dir = self.data_dir.lock().unwrap_or_else(|p| p.into_inner());
        data_dir.set_cluster_id(id)?;
        self.peers.set_cluster_id(id);
        Ok(())
    }

    /// HTTP to other members (token, cluster id, test deny list).
    pub fn peers(&self) -> &PeerHttp {
        &self.peers
    }

    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    pub fn node(&self) -> &EvioNode {
        &self.node
    }

    pub fn pool(&self) -> Pool {
        self.pool
    }

    /// The openraft instance, for this crate only (membership, the RPC server): callers
    /// outside use the narrow interface below.
    pub(crate) fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Raft's metrics as they change. They are published on every turn of Raft's loop (every
    /// tick and heartbeat, changed or not): a loop that only needs the applied table waits
    /// on [`Self::watch_applied`], one that needs the role on [`Self::watch_role`].
    pub fn watch_metrics(&self) -> tokio::sync::watch::Receiver<RaftMetrics> {
        self.raft.metrics()
    }

    /// Changes when this member's log, applied index or snapshot does (a lease may have
    /// changed): idle, never.
    pub fn watch_applied(&self) -> tokio::sync::watch::Receiver<RaftDataMetrics> {
        self.raft.data_metrics()
    }

    /// Changes when this member's role, term, leader or membership does.
    pub fn watch_role(&self) -> tokio::sync::watch::Receiver<RaftServerMetrics> {
        self.raft.server_metrics()
    }

    /// Whether this member is the Raft leader now.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == openraft::ServerState::Leader
    }

    /// Whether this member already belongs to a Raft cluster (bootstrapped or joined before).
    pub async fn is_initialized(&self) -> Result<bool, RequestError> {
        self.raft
            .is_initialized()
            .await
            .map_err(|e| RequestError::Fatal(e.to_string()))
    }

    /// Starts a cluster with exactly `members` as voters (a multi-member bootstrap; one
    /// member alone uses [`Self::bootstrap_single`]).
    pub async fn initialize(
        &self,
        members: BTreeMap<NodeId, EvioNode>,
    ) -> Result<(), RequestError> {
        self.raft
            .initialize(members)
            .await
            .map_err(|e| RequestError::Fatal(e.to_string()))
    }

    /// Adds `node` as a learner and waits until it caught up (joins go through the join
    /// handler, which also checks name, pool and token).
    pub async fn add_learner(&self, id: NodeId, node: EvioNode) -> Result<(), RequestError> {
        self.raft
            .add_learner(id, node, true)
            .await
            .map(|_| ())
            .map_err(|e| RequestError::Fatal(e.to_string()))
    }

    /// Records the controller's view of when members last answered (see [`Self::heard_within_grace`]).
    pub(crate) fn set_liveness(&self, grace: Duration, last_seen: &HashMap<NodeId, Instant>) {
        let mut liveness = self.liveness.lock().unwrap_or_else(|p| p.into_inner());
        *liveness = (grace, last_seen.clone());
    }

    /// `Some(grace)` unless this leader has tracked `id` for longer than the voter grace
    /// without an answer: a member is only given up after the grace, never on one failed
    /// probe (a partition would otherwise hand its name, and subnet, to a second host).
    pub(crate) fn heard_within_grace(&self, id: NodeId) -> Option<Duration> {
        let liveness = self.liveness.lock().unwrap_or_else(|p| p.into_inner());
        let (grace, last_seen) = &*liveness;
        match last_seen.get(&id) {
            Some(seen) if seen.elapsed() > *grace => None,
            _ => Some(*grace),
        }
    }

    /// Counts snapshot bytes received (the Raft RPC server calls this per chunk).
    pub fn note_snapshot_bytes(&self, bytes: usize) {
        self.snapshot_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Snapshot bytes received since this process started.
    pub fn snapshot_bytes_received(&self) -> u64 {
        self.snapshot_bytes.load(Ordering::Relaxed)
    }

    pub fn metrics(&self) -> RaftMetrics {
        self.raft.metrics().borrow().clone()
    }

    /// The local replica; never waits on the network.
    pub fn local(&self) -> &LocalView {
        &self.view
    }

    /// Ready once Raft runs, the member belongs to a cluster and it has applied at least
    /// everything it knew to be committed when it started.
    pub fn is_ready(&self) -> bool {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        if metrics.running_state.is_err() {
            return false;
        }
        let applied = self.view.read();
        let in_cluster = applied
            .membership
            .membership()
            .get_node(&self.node_id)
            .is_some();
        let applied_index = applied.last_applied.map(|id| id.index);
        in_cluster && applied_index >= self.committed_at_open
    }

    /// Confirms leadership with a quorum, then waits until the local replica has applied
    /// everything committed before the call: a read after this is linearizable.
    pub async fn linearizable_barrier(&self) -> Result<(), RequestError> {
        match tokio::time::timeout(self.request_timeout, self.raft.ensure_linearizable()).await {
            Err(_) => Err(RequestError::NoQuorum(self.request_timeout)),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                Err(RequestError::NotLeader {
                    leader: f.leader_id.zip(f.leader_node),
                })
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))) => {
                Err(RequestError::NoQuorum(self.request_timeout))
            }
            Ok(Err(RaftError::Fatal(f))) => Err(RequestError::Fatal(f.to_string())),
        }
    }

    async fn write(&self, command: LeaseCommand) -> Result<LeaseOutcome, RequestError> {
        match tokio::time::timeout(self.request_timeout, self.raft.client_write(command)).await {
            Err(_) => Err(RequestError::NoQuorum(self.request_timeout)),
            Ok(Ok(response)) => Ok(response.data),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(RequestError::NotLeader {
                    leader: f.leader_id.zip(f.leader_node),
                })
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
                Err(RequestError::Fatal(e.to_string()))
            }
            Ok(Err(RaftError::Fatal(f))) => Err(RequestError::Fatal(f.to_string())),
        }
    }

    /// Gets `node` its lease (the one it holds, or the lowest free block). Returns the lease
    /// and whether it was newly created.
    pub async fn acquire(
        &self,
        node: &str,
        host_ip: Option<Ipv4Addr>,
    ) -> Result<(Lease, bool), RequestError> {
        validate_node_name(node)?;
        let command = LeaseCommand::acquire(node, host_ip, request_id(), unix_millis());
        let outcome = self.write(command).await?;
        self.expand(outcome)
    }

    fn expand(&self, outcome: LeaseOutcome) -> Result<(Lease, bool), RequestError> {
        match outcome {
            LeaseOutcome::Acquired { lease, created } => {
                let block = self.pool.block(lease.block).ok_or_else(|| {
                    RequestError::Fatal(format!("block {} outside pool", lease.block))
                })?;
                Ok((
                    Lease {
                        record: lease,
                        block,
                        pool: self.pool,
                    },
                    created,
                ))
            }
            LeaseOutcome::PoolExhausted { blocks } => Err(RequestError::PoolExhausted { blocks }),
            LeaseOutcome::Refused { reason } => Err(RequestError::Refused(reason)),
            other => Err(RequestError::Fatal(format!("unexpected outcome {other:?}"))),
        }
    }

    /// Holds `block` for `owner` (an imported `legacy:...` range). Returns the lease and
    /// whether it was newly reserved; a block taken by another owner is refused.
    pub async fn reserve(&self, owner: &str, block: u32) -> Result<(Lease, bool), RequestError> {
        validate_owner(owner)?;
        let outcome = self
            .write(LeaseCommand::Reserve {
                owner: owner.to_string(),
                block,
                request_id: request_id(),
                at: unix_millis(),
            })
            .await?;
        self.expand(outcome)
    }

    /// Gives `from`'s block (an imported `legacy:` range) to `node` (which must hold no lease).
    pub async fn claim(&self, node: &str, from: &str) -> Result<Lease, RequestError> {
        validate_node_name(node)?;
        validate_owner(from)?;
        if !is_legacy_owner(from) {
            return Err(RequestError::Refused(Refusal::NotLegacyOwner {
                owner: from.to_string(),
            }));
        }
        let outcome = self
            .write(LeaseCommand::Claim {
                node: node.to_string(),
                from: from.to_string(),
                request_id: request_id(),
                at: unix_millis(),
            })
            .await?;
        self.expand(outcome).map(|(lease, _)| lease)
    }

    /// Returns `node`'s block to the pool (a node or a `legacy:...` owner). Ok(false) when it
    /// held none.
    pub async fn release(&self, node: &str) -> Result<bool, RequestError> {
        self.release_if(node, None).await
    }

    /// Like [`Self::release`]; with `if_revision`, refused (nothing changes) unless the lease
    /// is still at that revision, so a release decided on a stale read cannot free a lease
    /// given out again since.
    pub async fn release_if(
        &self,
        node: &str,
        if_revision: Option<u64>,
    ) -> Result<bool, RequestError> {
        validate_owner(node)?;
        let outcome = self
            .write(LeaseCommand::release(
                node,
                if_revision,
                request_id(),
                unix_millis(),
            ))
            .await?;
        match outcome {
            LeaseOutcome::Released { existed } => Ok(existed),
            LeaseOutcome::Refused { reason } => Err(RequestError::Refused(reason)),
            other => Err(RequestError::Fatal(format!("unexpected outcome {other:?}"))),
        }
    }

    /// Adds `node_id` to the replicated revoked set: every member refuses its certificate.
    pub async fn revoke(&self, node_id: NodeId) -> Result<(), RequestError> {
        let outcome = self
            .write(LeaseCommand::Revoke {
                node_id,
                at: unix_millis(),
            })
            .await?;
        match outcome {
            LeaseOutcome::Revoked { .. } => Ok(()),
            other => Err(RequestError::Fatal(format!("unexpected outcome {other:?}"))),
        }
    }

    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }
}
