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
    let views = replica_views(history);
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

/// Every replica view the history holds: each sample (member, time, leases) and each
/// member's final state (time `u64::MAX`, shown as "final state" by [`at_text`]).
fn replica_views(
    history: &History,
) -> impl Iterator<Item = (usize, u64, &Vec<(String, IpNetwork)>)> {
    let finals = history
        .final_states
        .iter()
        .map(|f| (f.member, u64::MAX, &f.leases));
    history
        .samples
        .iter()
        .map(|s| (s.member, s.at_ms, &s.leases))
        .chain(finals)
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
    let views = replica_views(history);
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
mod tests;
