//! The client side of Raft RPC: HTTP to other members and openraft's network factory.

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::EntryPayload;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::contact::Contacts;
use super::{
    encode_snapshot_chunk, APPEND_PATH, CLUSTER_HEADER, DENY_PEERS_ENV, SNAPSHOT_CONTENT_TYPE,
    SNAPSHOT_PATH, TARGET_HEADER, VOTE_PATH,
};
use crate::store::LocalView;
use crate::tls::{TlsContext, TlsError};
use crate::types::{Entry, EvioNode, LogId, NodeId, RaftServerMetrics, TypeConfig, Vote};
use tokio::sync::watch;

/// HTTP to other members: one connection pool, the cluster id once known, and either mutual
/// TLS with this member's certificate or (plaintext, `--insecure-plaintext` and `dev`) the
/// cluster token on every request.
#[derive(Clone)]
pub struct PeerHttp {
    http: reqwest::Client,
    token: Arc<str>,
    cluster_id: Arc<RwLock<Option<String>>>,
    deny: Arc<Vec<String>>,
    tls: Option<Arc<TlsContext>>,
    contacts: Arc<Contacts>,
}

/// The peers `DENY_PEERS_ENV` names: read only in builds with the `test-hooks` feature.
#[cfg(feature = "test-hooks")]
fn deny_list() -> Vec<String> {
    std::env::var(DENY_PEERS_ENV)
        .map(|v| {
            v.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(not(feature = "test-hooks"))]
fn deny_list() -> Vec<String> {
    Vec::new()
}

/// A request this process cannot send.
#[derive(Debug, thiserror::Error)]
pub enum Denied {
    /// Test-only deny list.
    #[error("path to {0} is blocked by {DENY_PEERS_ENV}")]
    Blocked(String),
    #[error("TLS to {addr}: {source}")]
    Tls {
        addr: String,
        #[source]
        source: TlsError,
    },
}

impl PeerHttp {
    pub fn new(token: &str, cluster_id: Option<String>, tls: Option<Arc<TlsContext>>) -> Self {
        crate::tls::ensure_provider();
        let deny = deny_list();
        Self {
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(2))
                .build()
                .unwrap_or_default(),
            token: Arc::from(token),
            cluster_id: Arc::new(RwLock::new(cluster_id)),
            deny: Arc::new(deny),
            contacts: Arc::default(),
            tls,
        }
    }

    /// This member's TLS, `None` when members speak plaintext.
    pub fn tls(&self) -> Option<&Arc<TlsContext>> {
        self.tls.as_ref()
    }

    /// `https` with TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    pub fn set_cluster_id(&self, id: &str) {
        if let Ok(mut slot) = self.cluster_id.write() {
            *slot = Some(id.to_string());
        }
    }

    pub fn cluster_id(&self) -> Option<String> {
        self.cluster_id.read().ok().and_then(|id| id.clone())
    }

    /// The Raft traffic with each member so far.
    pub fn contacts(&self) -> &Contacts {
        &self.contacts
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// A request to `{scheme}://{addr}{path}` carrying the cluster id, and the token when
    /// members speak plaintext (with TLS the certificate says who is asking).
    pub fn request(
        &self,
        method: reqwest::Method,
        addr: &str,
        path: &str,
    ) -> Result<reqwest::RequestBuilder, Denied> {
        if self.deny.iter().any(|d| d == addr) {
            // Test builds only (the list is empty otherwise): tests check the hook took effect.
            tracing::info!(peer = addr, "not dialing: blocked by {DENY_PEERS_ENV}");
            return Err(Denied::Blocked(addr.to_string()));
        }
        let mut request = match &self.tls {
            Some(tls) => tls
                .http()
                .map_err(|source| Denied::Tls {
                    addr: addr.to_string(),
                    source,
                })?
                .request(method, format!("https://{addr}{path}")),
            None => self
                .http
                .request(method, format!("http://{addr}{path}"))
                .bearer_auth(&*self.token),
        };
        if let Some(id) = self.cluster_id() {
            request = request.header(CLUSTER_HEADER, id);
        }
        Ok(request)
    }
}

/// A learner is sent at most one heartbeat this often: it has no election timer, so more
/// only costs the leader an RPC (and the learner a request) per member every 100 ms, which
/// dominated idle CPU at 256 members. Voters get every heartbeat.
pub const LEARNER_HEARTBEAT: Duration = Duration::from_secs(1);

/// How long new entries for a learner wait for their commit on the leader (see
/// [`HttpPeer::append_entries`]); after that they are sent as they are.
pub const LEARNER_COMMIT_WAIT: Duration = Duration::from_millis(200);

/// This member's Raft role and effective membership (the last one appended, committed or
/// not), once Raft runs: set right after `Raft::new`, which needs the network first.
pub type EffectiveMembership = Arc<OnceLock<watch::Receiver<RaftServerMetrics>>>;

/// Hands out one client per target; all share one connection pool.
#[derive(Clone)]
pub struct HttpNetwork {
    peers: PeerHttp,
    view: LocalView,
    effective: EffectiveMembership,
}

impl HttpNetwork {
    /// `view` is the local replica (its applied membership), `effective` the membership Raft
    /// works with: a target is a learner only when neither makes it a voter.
    pub fn new(peers: PeerHttp, view: LocalView, effective: EffectiveMembership) -> Self {
        Self {
            peers,
            view,
            effective,
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for HttpNetwork {
    type Network = HttpPeer;

    async fn new_client(&mut self, target: NodeId, node: &EvioNode) -> Self::Network {
        HttpPeer {
            peers: self.peers.clone(),
            view: self.view.clone(),
            effective: self.effective.clone(),
            target,
            node: node.clone(),
            acked: None,
        }
    }
}

/// An append the target acknowledged: its term, the log position it left the target at,
/// and the commit index it told. An empty append with the same term and position and a
/// commit no later says nothing new.
type Heartbeat = (Vote, Option<LogId>, Option<LogId>);

/// Whether `entries` change the membership (such an entry may make a learner a voter whose
/// acknowledgement a commit needs: it is never held back).
fn changes_membership(entries: &[Entry]) -> bool {
    entries
        .iter()
        .any(|e| matches!(e.payload, EntryPayload::Membership(_)))
}

pub struct HttpPeer {
    peers: PeerHttp,
    view: LocalView,
    effective: EffectiveMembership,
    target: NodeId,
    node: EvioNode,
    /// The last heartbeat this target acknowledged and when it was sent. openraft keeps one
    /// client per replication stream, so this lives as long as the stream; a leader's quorum
    /// check uses a new client and so always sends.
    acked: Option<(Heartbeat, Instant)>,
}

impl HttpPeer {
    /// True when the applied membership has the target, but not as a voter, and neither
    /// does the effective one (the last appended: a promotion in flight makes the target a
    /// voter whose acknowledgements the joint commit needs, before it is applied), in any
    /// of the configurations of a joint change. Unknown effective membership: not a learner.
    fn is_learner(&self) -> bool {
        let votes_in = |membership: &openraft::Membership<NodeId, EvioNode>| {
            membership
                .get_joint_config()
                .iter()
                .any(|voters| voters.contains(&self.target))
        };
        let Some(effective) = self.effective.get() else {
            return false;
        };
        if votes_in(effective.borrow().membership_config.membership()) {
            return false;
        }
        let applied = self.view.read();
        let membership = applied.membership.membership();
        membership.get_node(&self.target).is_some() && !votes_in(membership)
    }

    /// A JSON RPC.
    async fn call<Req, Resp, E>(
        &self,
        path: &str,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, EvioNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let body =
            serde_json::to_vec(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let result = self.send(path, "application/json", body, option).await;
        self.note(&result);
        result
    }

    /// Notes whether the target answered (a remote error is an answer: it is reachable).
    fn note<T, E: std::error::Error>(&self, result: &Result<T, RPCError<NodeId, EvioNode, E>>) {
        let contacts = self.peers.contacts();
        match result {
            Ok(_) => contacts.answered(self.target),
            Err(RPCError::RemoteError(_)) => contacts.reached(self.target),
            Err(e) => contacts.failed(self.target, e),
        }
    }

    /// Posts `body` and reads openraft's JSON result.
    async fn send<Resp, E>(
        &self,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, EvioNode, RaftError<NodeId, E>>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let url = format!("{}://{}{}", self.peers.scheme(), self.node.addr, path);
        let response = self
            .peers
            .request(reqwest::Method::POST, &self.node.addr, path)
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?
            .header(TARGET_HEADER, self.target.to_string())
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .timeout(option.hard_ttl())
            .body(body)
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() || e.is_timeout() {
                    RPCError::Unreachable(Unreachable::new(&e))
                } else {
                    RPCError::Network(NetworkError::new(&e))
                }
            })?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            let err = std::io::Error::other(format!("{url}: HTTP {status}: {body}"));
            return Err(RPCError::Network(NetworkError::new(&err)));
        }
        let result: Result<Resp, RaftError<NodeId, E>> = response
            .json()
            .await
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }
}

impl RaftNetwork<TypeConfig> for HttpPeer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, EvioNode, RaftError<NodeId>>> {
        let mut rpc = rpc;
        if let Some(last) = rpc.entries.last().map(|e| e.log_id) {
            // New entries for a learner wait until the leader has committed (and applied)
            // them, then go out with that commit: the voters' appends, which the commit
            // waits for, do not queue behind one append per learner, and the learner gets
            // entries and commit in one RPC instead of two (the commit-only append that
            // follows is answered below). Its acknowledgement never counts towards a commit.
            if self.is_learner() && !changes_membership(&rpc.entries) {
                let applied = self
                    .view
                    .applied_from(last.index, LEARNER_COMMIT_WAIT)
                    .await;
                // Committed on this leader's log only if applied up to there in the same
                // term: entries of one term at one index are the same entry everywhere.
                if applied.is_some_and(|a| a.leader_id == last.leader_id && a.index >= last.index) {
                    rpc.leader_commit = rpc.leader_commit.max(Some(last));
                }
            }
        }
        let told: Heartbeat = (
            rpc.vote,
            rpc.entries.last().map(|e| e.log_id).or(rpc.prev_log_id),
            rpc.leader_commit,
        );
        // Answered for the target only when it is a learner, an append it acknowledged less
        // than LEARNER_HEARTBEAT ago left it at this term and log position, and this one
        // tells no later commit: the answer it gave then is still true, and a learner's ack
        // never counts towards a quorum or a leader lease. Anything new (an entry, a commit,
        // a term) is sent.
        if rpc.entries.is_empty() {
            if let Some(((vote, position, commit), sent)) = &self.acked {
                if *vote == rpc.vote
                    && *position == rpc.prev_log_id
                    && rpc.leader_commit <= *commit
                    && sent.elapsed() < LEARNER_HEARTBEAT
                    && self.is_learner()
                {
                    return Ok(AppendEntriesResponse::Success);
                }
            }
        }
        let sent = Instant::now();
        let result = self.call(APPEND_PATH, &rpc, &option).await;
        self.acked = match &result {
            Ok(AppendEntriesResponse::Success) => Some((told, sent)),
            _ => None,
        };
        result
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, EvioNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let body =
            encode_snapshot_chunk(&rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let result = self
            .send(SNAPSHOT_PATH, SNAPSHOT_CONTENT_TYPE, body, &option)
            .await;
        self.note(&result);
        result
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, EvioNode, RaftError<NodeId>>> {
        self.call(VOTE_PATH, &rpc, &option).await
    }
}

#[cfg(test)]
mod tests;
