//! The invariant checkers over hand-made histories.

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
    let overlapping = ("k1".to_string(), net("10.124.0.0/23"));
    h.samples[0].leases.push(overlapping);
    let r = no_overlapping_subnets(&h);
    assert!(!r.passed);
    assert_eq!(r.violation_count, 2, "{r:?}");
}

#[test]
fn two_leases_for_one_node_fail() {
    let mut h = healthy();
    let second = ("h1".to_string(), net("10.124.7.0/24"));
    h.final_states[1].leases.push(second);
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
