//! Invariant checkers: pure functions over a recorded [`History`]. Each returns an
//! [`InvariantResult`] with how much it checked and what it found wrong.

use std::collections::{BTreeMap, HashMap};

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use crate::history::{History, Op, OpKind, Outcome, ProbeKind};
use crate::linearizability::{self, Verdict};

/// Violations listed per invariant (the count is always complete).
const LISTED: usize = 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvariantResult {
    pub name: String,
    pub passed: bool,
    /// Things examined (samples, ops, keys, probes, members, log lines).
    pub checked: usize,
    pub violation_count: usize,
    pub violations: Vec<String>,
}

impl InvariantResult {
    fn new(name: &str, checked: usize, violations: Vec<String>) -> Self {
        Self {
            name: name.to_string(),
            passed: violations.is_empty(),
            checked,
            violation_count: violations.len(),
            violations: violations.into_iter().take(LISTED).collect(),
        }
    }
}

/// Every invariant, in report order.
pub fn check_all(history: &History) -> Vec<InvariantResult> {
    vec![
        no_overlapping_subnets(history),
        one_lease_per_node(history),
        acknowledged_leases_kept(history),
        linearizable(history),
        partitioned_members_serve(history),
        converged_after_heal(history),
        no_panics(history),
    ]
}

fn overlaps(a: IpNetwork, b: IpNetwork) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

/// No two different nodes hold overlapping subnets on any member's replica at any sample
/// (nor in the final states).
pub fn no_overlapping_subnets(history: &History) -> InvariantResult {
    let mut violations = Vec::new();
    let views = history
        .samples
        .iter()
        .map(|s| (s.member, s.at_ms, &s.leases))
        .chain(
            history
                .final_states
                .iter()
                .map(|f| (f.member, u64::MAX, &f.leases)),
        );
    let mut checked = 0;
    for (member, at, leases) in views {
        checked += 1;
        for (i, (node_a, a)) in leases.iter().enumerate() {
            for (node_b, b) in &leases[i + 1..] {
                if node_a != node_b && overlaps(*a, *b) {
                    violations.push(format!(
                        "member {member} at {}: {node_a} {a} overlaps {node_b} {b}",
                        at_text(at)
                    ));
                }
            }
        }
    }
    InvariantResult::new("no overlapping subnets", checked, violations)
}

fn at_text(at: u64) -> String {
    if at == u64::MAX {
        "final state".into()
    } else {
        format!("{at} ms")
    }
}

/// At most one lease per node name on any replica view.
pub fn one_lease_per_node(history: &History) -> InvariantResult {
    let mut violations = Vec::new();
    let mut checked = 0;
    let views = history
        .samples
        .iter()
        .map(|s| (s.member, s.at_ms, &s.leases))
        .chain(
            history
                .final_states
                .iter()
                .map(|f| (f.member, u64::MAX, &f.leases)),
        );
    for (member, at, leases) in views {
        checked += 1;
        let mut count: BTreeMap<&str, usize> = BTreeMap::new();
        for (node, _) in leases {
            *count.entry(node).or_default() += 1;
        }
        for (node, n) in count.into_iter().filter(|(_, n)| *n > 1) {
            violations.push(format!(
                "member {member} at {}: {n} leases for {node}",
                at_text(at)
            ));
        }
    }
    InvariantResult::new("at most one lease per node name", checked, violations)
}

/// Host leases (never released) are on every member in every sample after the start and in
/// the final state with their subnet; a workload key whose acknowledged acquire no release
/// could follow is in the final state with the acknowledged subnet.
pub fn acknowledged_leases_kept(history: &History) -> InvariantResult {
    let mut violations = Vec::new();
    let mut checked = 0;
    let mut expected: Vec<(String, IpNetwork)> = history.host_leases.clone();
    let mut by_key: HashMap<&str, Vec<&Op>> = HashMap::new();
    for op in &history.ops {
        by_key.entry(&op.key).or_default().push(op);
    }
    for (key, ops) in &by_key {
        let last_ack = ops
            .iter()
            .filter(|op| op.kind == OpKind::Acquire && op.outcome == Outcome::Ok)
            .max_by_key(|op| op.complete_ms);
        let Some(ack) = last_ack else { continue };
        // A release that did not definitely fail and could be ordered after the acquire.
        let maybe_released = ops.iter().any(|op| {
            op.kind == OpKind::Release
                && op.outcome != Outcome::Fail
                && (op.outcome == Outcome::Unknown || op.complete_ms > ack.invoke_ms)
        });
        if !maybe_released {
            if let Some(subnet) = ack.value {
                expected.push((key.to_string(), subnet));
            }
        }
    }
    for state in &history.final_states {
        for (node, subnet) in &expected {
            checked += 1;
            match state.leases.iter().find(|(n, _)| n == node) {
                Some((_, held)) if held == subnet => {}
                Some((_, held)) => violations.push(format!(
                    "member {} final state: {node} acknowledged with {subnet}, now {held}",
                    state.member
                )),
                None => violations.push(format!(
                    "member {} final state: acknowledged lease {node} {subnet} vanished",
                    state.member
                )),
            }
        }
    }
    // Host leases were acquired in order before any workload write, so a replica that is
    // still catching up (a wiped member replaying the log) holds a prefix of them and nothing
    // else. A host lease missing while something written after it is present was lost.
    let host_names: Vec<&str> = history
        .host_leases
        .iter()
        .map(|(n, _)| n.as_str())
        .collect();
    for sample in &history.samples {
        for (i, (node, subnet)) in history.host_leases.iter().enumerate() {
            checked += 1;
            let later_present = sample
                .leases
                .iter()
                .any(|(n, _)| host_names.iter().position(|h| h == n).is_none_or(|j| j > i));
            match sample.leases.iter().find(|(n, _)| n == node) {
                Some((_, held)) if held == subnet => {}
                Some((_, held)) => violations.push(format!(
                    "member {} at {} ms: host lease {node} {subnet} changed to {held}",
                    sample.member, sample.at_ms
                )),
                None if !later_present => {}
                None => violations.push(format!(
                    "member {} at {} ms: host lease {node} {subnet} vanished",
                    sample.member, sample.at_ms
                )),
            }
        }
    }
    InvariantResult::new(
        "acknowledged leases never vanish or change",
        checked,
        violations,
    )
}

pub fn linearizable(history: &History) -> InvariantResult {
    let (_keys, bad) = linearizability::check(&history.ops);
    let considered = history
        .ops
        .iter()
        .filter(|op| {
            op.outcome == Outcome::Ok || (op.outcome == Outcome::Unknown && op.kind != OpKind::Read)
        })
        .count();
    let violations = bad
        .into_iter()
        .map(|v| match v {
            Verdict::NotLinearizable { key, ops } => {
                format!("key {key}: not linearizable ({} ops: {ops:?})", ops.len())
            }
            Verdict::Inconclusive { key, states } => {
                format!("key {key}: search gave up after {states} states")
            }
            Verdict::Linearizable => String::new(),
        })
        .collect();
    InvariantResult::new(
        "lease history linearizable (ops, per key)",
        considered,
        violations,
    )
}

/// During a network fault every member is up: each must answer local reads with its own
/// lease and complete pod ADD/DEL. Probes invoked inside a partition window count.
pub fn partitioned_members_serve(history: &History) -> InvariantResult {
    let mut violations = Vec::new();
    let mut checked = 0;
    for window in history.faults.iter().filter(|w| w.partition) {
        for probe in history
            .probes
            .iter()
            .filter(|p| p.invoke_ms >= window.start_ms && p.invoke_ms < window.end_ms)
        {
            checked += 1;
            if !probe.ok {
                let kind = match probe.kind {
                    ProbeKind::LocalRead => "local read",
                    ProbeKind::PodAdd => "pod ADD",
                    ProbeKind::PodDel => "pod DEL",
                };
                violations.push(format!(
                    "{} ({}): member {} {kind} at {} ms failed: {}",
                    window.name, window.detail, probe.member, probe.invoke_ms, probe.detail
                ));
            }
        }
    }
    InvariantResult::new(
        "partitioned members serve local reads and pods",
        checked,
        violations,
    )
}

/// After the heal: every member answered, one leader agreed by all, the same applied index
/// and identical lease state, within the bound.
pub fn converged_after_heal(history: &History) -> InvariantResult {
    let mut violations = Vec::new();
    let states = &history.final_states;
    if states.is_empty() {
        violations.push("no member answered after the heal".into());
    }
    let leaders: Vec<usize> = states
        .iter()
        .filter(|s| s.is_leader)
        .map(|s| s.member)
        .collect();
    if leaders.len() != 1 {
        violations.push(format!("{} leaders after heal: {leaders:?}", leaders.len()));
    }
    if let Some(first) = states.first() {
        for s in &states[1..] {
            if s.leader_id != first.leader_id {
                violations.push(format!(
                    "member {} follows leader {:?}, member {} follows {:?}",
                    s.member, s.leader_id, first.member, first.leader_id
                ));
            }
            if s.last_applied != first.last_applied {
                violations.push(format!(
                    "member {} applied {:?}, member {} applied {:?}",
                    s.member, s.last_applied, first.member, first.last_applied
                ));
            }
            let mut a = s.leases.clone();
            let mut b = first.leases.clone();
            a.sort();
            b.sort();
            if a != b {
                violations.push(format!(
                    "member {} and member {} hold different leases: {a:?} vs {b:?}",
                    s.member, first.member
                ));
            }
        }
    }
    match history.recovery_ms {
        Some(ms) if ms <= history.recovery_bound_ms => {}
        Some(ms) => violations.push(format!(
            "recovered in {ms} ms, over the {} ms bound",
            history.recovery_bound_ms
        )),
        None => violations.push(format!(
            "did not converge within {} ms",
            history.recovery_bound_ms
        )),
    }
    InvariantResult::new("converged after heal", states.len(), violations)
}

pub fn no_panics(history: &History) -> InvariantResult {
    let mut violations = Vec::new();
    let mut checked = 0;
    for (member, log) in &history.logs {
        for line in log.lines() {
            checked += 1;
            if line.contains("panicked") || line.contains("RUST_BACKTRACE") {
                violations.push(format!("member {member}: {line}"));
            }
        }
    }
    InvariantResult::new("no panics in node logs", checked, violations)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{FaultWindow, MemberState, Probe, Sample};

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    fn member(member: usize, leader: bool, applied: u64, leases: &[(&str, &str)]) -> MemberState {
        MemberState {
            member,
            node_id: member as u64 + 100,
            leader_id: Some(100),
            is_leader: leader,
            last_applied: Some(applied),
            leases: leases
                .iter()
                .map(|(n, s)| (n.to_string(), net(s)))
                .collect(),
        }
    }

    fn healthy() -> History {
        let leases = [("h0", "10.124.0.0/24"), ("h1", "10.124.1.0/24")];
        History {
            host_leases: leases
                .iter()
                .map(|(n, s)| (n.to_string(), net(s)))
                .collect(),
            samples: vec![Sample {
                member: 1,
                at_ms: 10,
                leases: leases
                    .iter()
                    .map(|(n, s)| (n.to_string(), net(s)))
                    .collect(),
            }],
            final_states: vec![member(0, true, 9, &leases), member(1, false, 9, &leases)],
            recovery_ms: Some(500),
            recovery_bound_ms: 30_000,
            logs: vec![(0, "INFO evio-node running".into())],
            ..History::default()
        }
    }

    #[test]
    fn a_healthy_history_passes_every_invariant() {
        for result in check_all(&healthy()) {
            assert!(result.passed, "{result:?}");
        }
    }

    #[test]
    fn overlapping_subnets_fail() {
        let mut h = healthy();
        h.samples[0]
            .leases
            .push(("k1".into(), net("10.124.0.0/23")));
        let r = no_overlapping_subnets(&h);
        assert!(!r.passed);
        assert_eq!(r.violation_count, 2, "{r:?}");
    }

    #[test]
    fn two_leases_for_one_node_fail() {
        let mut h = healthy();
        h.final_states[1]
            .leases
            .push(("h1".into(), net("10.124.7.0/24")));
        assert!(!one_lease_per_node(&h).passed);
    }

    #[test]
    fn a_lost_acknowledged_lease_fails() {
        let mut h = healthy();
        h.final_states[1].leases.retain(|(n, _)| n != "h1");
        assert!(!acknowledged_leases_kept(&h).passed);
        // A workload lease acknowledged and never released must be there too.
        let mut h = healthy();
        h.ops.push(Op {
            id: 1,
            client: 0,
            member: 0,
            key: "k3".into(),
            kind: OpKind::Acquire,
            invoke_ms: 1,
            complete_ms: 2,
            outcome: Outcome::Ok,
            value: Some(net("10.124.5.0/24")),
        });
        assert!(!acknowledged_leases_kept(&h).passed);
        // ... unless a release may have followed it.
        h.ops.push(Op {
            id: 2,
            client: 1,
            member: 0,
            key: "k3".into(),
            kind: OpKind::Release,
            invoke_ms: 3,
            complete_ms: 4,
            outcome: Outcome::Unknown,
            value: None,
        });
        assert!(acknowledged_leases_kept(&h).passed);
    }

    #[test]
    fn a_catching_up_replica_is_not_a_loss_but_a_gap_is() {
        let mut h = healthy();
        // Only a prefix of the log applied (h0): fine.
        h.samples[0].leases.truncate(1);
        assert!(acknowledged_leases_kept(&h).passed);
        // h0 missing while h1, written after it, is there: lost.
        let mut h = healthy();
        h.samples[0].leases.remove(0);
        assert!(!acknowledged_leases_kept(&h).passed);
        // h1 missing while a workload lease is there: lost.
        let mut h = healthy();
        h.samples[0].leases[1] = ("k0".into(), net("10.124.8.0/24"));
        assert!(!acknowledged_leases_kept(&h).passed);
    }

    #[test]
    fn a_changed_host_lease_in_a_sample_fails() {
        let mut h = healthy();
        h.samples[0].leases[1].1 = net("10.124.9.0/24");
        assert!(!acknowledged_leases_kept(&h).passed);
    }

    #[test]
    fn a_non_linearizable_read_fails() {
        let mut h = healthy();
        h.ops = vec![
            Op {
                id: 1,
                client: 0,
                member: 0,
                key: "k1".into(),
                kind: OpKind::Acquire,
                invoke_ms: 0,
                complete_ms: 5,
                outcome: Outcome::Ok,
                value: Some(net("10.124.2.0/24")),
            },
            Op {
                id: 2,
                client: 1,
                member: 3,
                key: "k1".into(),
                kind: OpKind::Read,
                invoke_ms: 6,
                complete_ms: 8,
                outcome: Outcome::Ok,
                value: None,
            },
        ];
        let r = linearizable(&h);
        assert!(!r.passed, "{r:?}");
    }

    #[test]
    fn a_failed_probe_inside_a_partition_fails() {
        let mut h = healthy();
        h.faults.push(FaultWindow {
            name: "isolate".into(),
            detail: "member 2 alone".into(),
            start_ms: 100,
            end_ms: 200,
            partition: true,
            minority: vec![2],
        });
        let probe = |invoke_ms, ok| Probe {
            member: 2,
            kind: ProbeKind::PodAdd,
            invoke_ms,
            complete_ms: invoke_ms + 5,
            ok,
            detail: String::new(),
        };
        // Failures outside the window (e.g. a killed member) do not count.
        h.probes = vec![probe(150, true), probe(250, false)];
        assert!(partitioned_members_serve(&h).passed);
        h.probes.push(probe(160, false));
        assert!(!partitioned_members_serve(&h).passed);
    }

    #[test]
    fn divergent_members_after_heal_fail() {
        let mut h = healthy();
        h.final_states[1].last_applied = Some(8);
        assert!(!converged_after_heal(&h).passed);
        let mut h = healthy();
        h.final_states[1].is_leader = true;
        assert!(!converged_after_heal(&h).passed);
        let mut h = healthy();
        h.final_states[1].leases.pop();
        assert!(!converged_after_heal(&h).passed);
        let mut h = healthy();
        h.recovery_ms = None;
        assert!(!converged_after_heal(&h).passed);
    }

    #[test]
    fn a_panic_in_a_log_fails() {
        let mut h = healthy();
        h.logs.push((
            3,
            "thread 'tokio-runtime-worker' panicked at raft/src/store.rs:10:5".into(),
        ));
        assert!(!no_panics(&h).passed);
    }
}
