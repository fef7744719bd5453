use std::collections::{BTreeMap, BTreeSet};

use openraft::{CommittedLeaderId, Membership};

use super::*;
use crate::lease::LeaseTable;
use crate::pool::Pool;
use crate::store::Applied;
use crate::types::StoredMembership;

const VOTER: NodeId = 1;
const LEARNER: NodeId = 2;

fn log_id(index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(3, VOTER), index)
}

/// A client for `target` in a cluster of one voter and one learner, dialing a port
/// nothing listens on: a request that goes out fails, one answered here succeeds.
fn peer(target: NodeId, acked_commit: u64, promoting: bool) -> HttpPeer {
    let pool = Pool::parse("10.0.0.0/16", 8).unwrap_or_else(|e| panic!("{e}"));
    let nodes: BTreeMap<NodeId, EvioNode> = [VOTER, LEARNER]
        .into_iter()
        .map(|id| (id, EvioNode::default()))
        .collect();
    let membership = Membership::new(vec![BTreeSet::from([VOTER])], nodes);
    let view = LocalView::new(Applied {
        table: LeaseTable::new(pool),
        last_applied: Some(log_id(10)),
        membership: StoredMembership::new(Some(log_id(1)), membership.clone()),
    });
    let vote = Vote::new_committed(3, VOTER);
    // A promotion appended but not applied: the effective membership is a joint one.
    let effective = if promoting {
        let both = [VOTER, LEARNER].into_iter().collect::<BTreeSet<_>>();
        Membership::new(
            vec![BTreeSet::from([VOTER]), both],
            membership
                .nodes()
                .map(|(id, n)| (*id, n.clone()))
                .collect::<BTreeMap<_, _>>(),
        )
    } else {
        membership.clone()
    };
    let (_, server) = watch::channel(RaftServerMetrics {
        membership_config: Arc::new(StoredMembership::new(Some(log_id(11)), effective)),
        ..Default::default()
    });
    HttpPeer {
        peers: PeerHttp::new("test-token", None, None),
        view,
        effective: Arc::new(OnceLock::from(server)),
        target,
        node: EvioNode {
            name: "closed".into(),
            addr: "127.0.0.1:9".into(),
        },
        acked: Some((
            (vote, Some(log_id(10)), Some(log_id(acked_commit))),
            Instant::now(),
        )),
    }
}

fn heartbeat(commit: u64) -> AppendEntriesRequest<TypeConfig> {
    AppendEntriesRequest {
        vote: Vote::new_committed(3, VOTER),
        prev_log_id: Some(log_id(10)),
        entries: Vec::new(),
        leader_commit: Some(log_id(commit)),
    }
}

async fn answered_here(target: NodeId, acked_commit: u64, commit: u64) -> bool {
    answered_here_promoting(target, acked_commit, commit, false).await
}

/// Whether the client answered the heartbeat itself (`promoting`: with a promotion of
/// the learner appended but not applied).
async fn answered_here_promoting(
    target: NodeId,
    acked_commit: u64,
    commit: u64,
    promoting: bool,
) -> bool {
    let option = RPCOption::new(Duration::from_millis(500));
    peer(target, acked_commit, promoting)
        .append_entries(heartbeat(commit), option)
        .await
        .is_ok()
}

#[tokio::test]
async fn a_learner_is_not_told_a_commit_it_already_has() {
    // The learner acknowledged commit 10 (sent with the entries): a commit-only append
    // for 9 or 10 says nothing new; 11 is new and goes out.
    assert!(answered_here(LEARNER, 10, 10).await);
    assert!(answered_here(LEARNER, 10, 9).await);
    assert!(!answered_here(LEARNER, 10, 11).await);
    // A voter is always sent every heartbeat, and so is a learner being promoted (a
    // voter in the joint membership appended, whose acknowledgements its commit needs).
    assert!(!answered_here(VOTER, 10, 10).await);
    assert!(!answered_here_promoting(LEARNER, 10, 10, true).await);
}
