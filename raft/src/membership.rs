//! Where members are decided: admitting a joining node (as a learner) and the leader's
//! controller that promotes learners to voters and replaces voters that stay unreachable.
//! Every change is made by the leader, one at a time.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use openraft::ChangeMembers;
use serde::{Deserialize, Serialize};

use crate::replica::{Replica, RequestError};
use crate::types::{EvioNode, NodeId};

/// Body of `POST /v1/cluster/join`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JoinRequest {
    pub node_id: NodeId,
    pub name: String,
    pub addr: String,
    #[serde(rename = "podCIDR")]
    pub pod_cidr: String,
    pub node_bits: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinResponse {
    pub cluster_id: String,
    pub leader_id: NodeId,
}

#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    #[error("pool mismatch: this cluster serves podCIDR {cluster_cidr} nodeBits {cluster_bits} ({cluster_families}), the joining node {node} asks for podCIDR {node_cidr} nodeBits {node_bits} ({node_families})")]
    PoolMismatch {
        node: String,
        cluster_cidr: String,
        cluster_bits: u8,
        cluster_families: String,
        node_families: String,
        node_cidr: String,
        node_bits: u8,
    },
    #[error("node name {name:?} is already used by live member {id} at {addr}; start the second node with another --node-name")]
    DuplicateName {
        name: String,
        id: NodeId,
        addr: String,
    },
    /// The name's member does not answer now, but the leader heard from it within the
    /// voter grace: a partition or a pause, not a node back with a wiped disk. Retry later.
    #[error("node name {name:?} belongs to member {id} at {addr}, which the leader heard from less than {grace:?} ago (--voter-grace); not replacing it yet")]
    RecentlyHeard {
        name: String,
        id: NodeId,
        addr: String,
        grace: Duration,
    },
    #[error(transparent)]
    Request(#[from] RequestError),
}

/// Why `DELETE /v1/cluster/members/{id}` removed nothing.
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    #[error("node {0} is not a member of this cluster")]
    NotMember(NodeId),
    #[error("node {0} is the leader: stop it (another member takes over), then remove it")]
    IsLeader(NodeId),
    #[error(transparent)]
    Request(#[from] RequestError),
}

/// What a removal did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RemoveResponse {
    pub node_id: NodeId,
    /// Whether it was a member until now (false: removed and revoked before).
    pub was_member: bool,
}

fn write_error(e: RaftError<NodeId, ClientWriteError<NodeId, EvioNode>>) -> RequestError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => RequestError::NotLeader {
            leader: f.leader_id.zip(f.leader_node),
        },
        other => RequestError::Fatal(other.to_string()),
    }
}

impl Replica {
    /// Leader side of a join: checks the pool and the name, retires a dead member that held
    /// the same name (a node back with a wiped data dir), and adds the node as a learner.
    pub async fn admit(&self, join: &JoinRequest) -> Result<JoinResponse, AdmitError> {
        let pool = self.pool();
        let asked = crate::Pool::parse(&join.pod_cidr, join.node_bits).ok();
        if asked != Some(pool) {
            return Err(AdmitError::PoolMismatch {
                node: join.name.clone(),
                cluster_cidr: pool.pod_cidr_list(),
                cluster_bits: pool.node_bits(),
                cluster_families: pool.family_names(),
                node_families: asked.map_or_else(|| "invalid".to_string(), |p| p.family_names()),
                node_cidr: join.pod_cidr.clone(),
                node_bits: join.node_bits,
            });
        }
        crate::validate_node_name(&join.name).map_err(RequestError::from)?;
        let metrics = self.metrics();
        if metrics.current_leader != Some(self.node_id()) {
            let leader = metrics.current_leader.and_then(|id| {
                metrics
                    .membership_config
                    .membership()
                    .get_node(&id)
                    .map(|n| (id, n.clone()))
            });
            return Err(RequestError::NotLeader { leader }.into());
        }
        let cluster_id = self
            .cluster_id()
            .ok_or_else(|| RequestError::Fatal("leader has no cluster id".into()))?;
        let membership = metrics.membership_config.membership().clone();
        for (id, node) in membership.nodes() {
            if node.name != join.name || *id == join.node_id {
                continue;
            }
            let answered = self.probe_node_id(&node.addr).await;
            if answered == Some(*id) {
                return Err(AdmitError::DuplicateName {
                    name: join.name.clone(),
                    id: *id,
                    addr: node.addr.clone(),
                });
            }
            // The joiner itself answers at the old member's address: that member is gone
            // from it (a node back with a wiped disk). Otherwise silence alone must outlast
            // the voter grace, as for replacing a voter.
            if answered != Some(join.node_id) {
                if let Some(grace) = self.heard_within_grace(*id) {
                    return Err(AdmitError::RecentlyHeard {
                        name: join.name.clone(),
                        id: *id,
                        addr: node.addr.clone(),
                        grace,
                    });
                }
            }
            tracing::info!(old_id = id, new_id = join.node_id, name = %join.name, "member returned under a new id; removing the old id");
            let is_voter = membership.voter_ids().any(|v| v == *id);
            let change = if is_voter {
                ChangeMembers::RemoveVoters(BTreeSet::from([*id]))
            } else {
                ChangeMembers::RemoveNodes(BTreeSet::from([*id]))
            };
            self.raft()
                .change_membership(change, false)
                .await
                .map_err(write_error)?;
            // The old id's certificate is the lost data dir's: nobody should speak with it.
            self.revoke(*id).await?;
        }
        if membership.get_node(&join.node_id).is_none() {
            let node = EvioNode {
                name: join.name.clone(),
                addr: join.addr.clone(),
            };
            self.raft()
                .add_learner(join.node_id, node, false)
                .await
                .map_err(write_error)?;
            tracing::info!(id = join.node_id, name = %join.name, addr = %join.addr, "admitted learner");
        }
        Ok(JoinResponse {
            cluster_id,
            leader_id: self.node_id(),
        })
    }

    /// Leader side of removing member `id` for good: out of the membership, then its node id
    /// revoked, so its certificate is refused everywhere from then on. Idempotent.
    pub async fn remove_member(&self, id: NodeId) -> Result<RemoveResponse, RemoveError> {
        let metrics = self.metrics();
        if metrics.current_leader != Some(self.node_id()) {
            let leader = metrics.current_leader.and_then(|l| {
                let membership = metrics.membership_config.membership();
                membership.get_node(&l).map(|n| (l, n.clone()))
            });
            return Err(RequestError::NotLeader { leader }.into());
        }
        if id == self.node_id() {
            return Err(RemoveError::IsLeader(id));
        }
        let membership = metrics.membership_config.membership().clone();
        let was_member = membership.get_node(&id).is_some();
        if !was_member && !self.local().read().table.revoked().contains(&id) {
            return Err(RemoveError::NotMember(id));
        }
        if was_member {
            let change = if membership.voter_ids().any(|v| v == id) {
                ChangeMembers::RemoveVoters(BTreeSet::from([id]))
            } else {
                ChangeMembers::RemoveNodes(BTreeSet::from([id]))
            };
            self.raft()
                .change_membership(change, false)
                .await
                .map_err(write_error)?;
        }
        self.revoke(id).await?;
        tracing::warn!(
            node_id = id,
            was_member,
            "removed member; its certificate is revoked"
        );
        Ok(RemoveResponse {
            node_id: id,
            was_member,
        })
    }

    /// The node id a member at `addr` reports, if it answers.
    async fn probe_node_id(&self, addr: &str) -> Option<NodeId> {
        let request = self
            .peers()
            .request(reqwest::Method::GET, addr, "/v1/cluster")
            .ok()?;
        let response = request.timeout(Duration::from_secs(2)).send().await.ok()?;
        let value: serde_json::Value = response.json().await.ok()?;
        value["nodeId"].as_u64()
    }
}

/// The leader's membership loop: keeps `target_voters` voters (odd) out of healthy,
/// caught-up members, replacing a voter unreachable for longer than `grace`.
pub struct MembershipController {
    replica: Arc<Replica>,
    target_voters: usize,
    grace: Duration,
    last_seen: HashMap<NodeId, Instant>,
}

/// A learner this many entries behind the leader is not promoted yet.
const CAUGHT_UP_SLACK: u64 = 64;

impl MembershipController {
    pub fn new(replica: Arc<Replica>, target_voters: usize, grace: Duration) -> Self {
        Self {
            replica,
            target_voters: target_voters.max(1),
            grace,
            last_seen: HashMap::new(),
        }
    }

    /// Steps every 500 ms while this member leads, until `stop` resolves.
    pub async fn run(mut self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut role = self.replica.watch_role();
        loop {
            // Only the leader changes members: the others wait to lead instead of polling.
            tokio::select! {
                led = role.wait_for(|m| m.state == crate::types::ServerState::Leader) => {
                    if led.is_err() {
                        return;
                    }
                }
                _ = &mut stop => return,
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = &mut stop => return,
            }
            if let Err(e) = self.step().await {
                tracing::warn!(error = %e, "membership change failed; will retry");
            }
        }
    }

    /// One round: probe members, then at most one membership change.
    pub async fn step(&mut self) -> Result<(), RequestError> {
        let replica = self.replica.clone();
        let metrics = replica.metrics();
        if metrics.current_leader != Some(replica.node_id()) {
            self.last_seen.clear();
            replica.set_liveness(self.grace, &self.last_seen);
            return Ok(());
        }
        let membership = metrics.membership_config.membership().clone();
        if membership.get_joint_config().len() > 1 {
            return Ok(()); // a change is in flight
        }
        // Liveness is when a member last answered this leader's Raft RPC (heartbeats reach
        // every member several times a second), not a probe of its own: probing every member
        // twice a second cost the leader as many requests again as the heartbeats at 256.
        let now = Instant::now();
        for (id, _) in membership.nodes() {
            let seen = self.last_seen.entry(*id).or_insert(now);
            if let Some(answered) = replica.peers().contacts().get(*id).answered {
                *seen = (*seen).max(answered);
            }
        }
        self.last_seen.insert(replica.node_id(), now);
        self.last_seen
            .retain(|id, _| membership.get_node(id).is_some());
        replica.set_liveness(self.grace, &self.last_seen);

        let leader_last = metrics.last_log_index.unwrap_or(0);
        let matched = |id: &NodeId| {
            metrics
                .replication
                .as_ref()
                .and_then(|r| r.get(id).cloned().flatten())
                .map_or(0, |log_id| log_id.index)
        };
        let fresh = |id: &NodeId| {
            self.last_seen
                .get(id)
                .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(3))
        };
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let mut ready_learners: Vec<NodeId> = membership
            .learner_ids()
            .filter(|id| fresh(id) && matched(id) + CAUGHT_UP_SLACK >= leader_last)
            .collect();
        let dead: Vec<NodeId> = voters
            .iter()
            .filter(|id| {
                self.last_seen
                    .get(id)
                    .is_some_and(|t| now.duration_since(*t) > self.grace)
            })
            .copied()
            .collect();

        let mut next = voters.clone();
        for id in &dead {
            if let Some(replacement) = ready_learners.pop() {
                next.remove(id);
                next.insert(replacement);
                tracing::warn!(
                    dead = id,
                    replacement,
                    "replacing a voter unreachable longer than the grace period"
                );
            }
        }
        let possible = next.len() + ready_learners.len();
        let mut desired = self.target_voters.min(possible);
        if desired.is_multiple_of(2) {
            desired -= 1;
        }
        while next.len() < desired {
            match ready_learners.pop() {
                Some(id) => {
                    next.insert(id);
                }
                None => break,
            }
        }
        if next == voters {
            return Ok(());
        }
        tracing::info!(?voters, ?next, "changing voters");
        replica
            .raft()
            .change_membership(ChangeMembers::ReplaceAllVoters(next), true)
            .await
            .map_err(write_error)?;
        Ok(())
    }
}
