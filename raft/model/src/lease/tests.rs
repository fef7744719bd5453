//! Unit tests of [`super`] (a sibling file keeps lease.rs to the model itself).

use super::*;

fn pool(cidr: &str, bits: u8) -> Pool {
    Pool::parse(cidr, bits).unwrap_or_else(|e| panic!("{e}"))
}

fn acquire(node: &str) -> LeaseCommand {
    LeaseCommand::acquire(node, None, format!("req-{node}"), 1_700_000_000_000)
}

fn release(node: &str) -> LeaseCommand {
    LeaseCommand::release(node, None, format!("rel-{node}"), 1_700_000_000_001)
}

#[test]
fn a_command_without_a_request_id_is_read() {
    let read: LeaseCommand =
        serde_json::from_str(r#"{"op":"acquire","node":"n1","hostIp":null,"at":5}"#)
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        read,
        LeaseCommand::Acquire {
            node: "n1".into(),
            host_ip: None,
            request_id: String::new(),
            at: 5,
        }
    );
}

#[test]
fn a_conditional_release_needs_the_current_revision() {
    let mut t = LeaseTable::new(pool("10.244.0.0/16", 8));
    t.apply(&acquire("a"), 5);
    let stale = LeaseCommand::release("a", Some(4), "r".into(), 1);
    let (o, change) = t.apply(&stale, 6);
    assert!(
        matches!(
            o,
            LeaseOutcome::Refused {
                reason: Refusal::RevisionMismatch {
                    expected: 4,
                    actual: 5,
                    ..
                }
            }
        ),
        "{o:?}"
    );
    assert!(matches!(change, Change::Unchanged));
    assert!(t.get("a").is_some());
    let current = LeaseCommand::release("a", Some(5), "r2".into(), 2);
    let (o, _) = t.apply(&current, 7);
    assert_eq!(o, LeaseOutcome::Released { existed: true });
    // A release logged by earlier versions (no ifRevision) still reads and applies.
    let old: LeaseCommand =
        serde_json::from_str(r#"{"op":"release","node":"a","requestId":"x","at":1}"#)
            .unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        old,
        LeaseCommand::Release {
            if_revision: None,
            ..
        }
    ));
}

/// Acquires `node` at `revision`: the block and whether it is new.
fn acquired(t: &mut LeaseTable, node: &str, revision: u64) -> (u32, bool) {
    acquired_block(&t.apply(&acquire(node), revision).0)
}

fn acquired_block(outcome: &LeaseOutcome) -> (u32, bool) {
    match outcome {
        LeaseOutcome::Acquired { lease, created } => (lease.block, *created),
        other => panic!("expected Acquired, got {other:?}"),
    }
}

#[test]
fn acquire_is_idempotent_and_keyed_by_name() {
    let mut t = LeaseTable::new(pool("10.244.0.0/16", 8));
    let (first, change) = t.apply(&acquire("a"), 5);
    assert_eq!(acquired_block(&first), (0, true));
    assert!(matches!(change, Change::Put(_)));
    let (again, change) = t.apply(&acquire("a"), 6);
    assert_eq!(acquired_block(&again), (0, false));
    assert_eq!(change, Change::Unchanged);
    // revision and acquiredAt stay those of the acquiring entry
    let lease = t.get("a").unwrap_or_else(|| panic!("lease a"));
    assert_eq!(lease.record.revision, 5);
    assert_eq!(lease.record.acquired_at, 1_700_000_000_000);
    assert_eq!(lease.block.subnet.to_string(), "10.244.0.0/24");
    assert_eq!(t.len(), 1);
    assert_eq!(t.free_blocks(), 255);
}

#[test]
fn new_host_ip_keeps_block_bumps_revision() {
    let mut t = LeaseTable::new(pool("10.244.0.0/16", 8));
    t.apply(&acquire("a"), 1);
    let cmd = LeaseCommand::acquire("a", Some(Ipv4Addr::new(10, 10, 0, 3)), "r2".into(), 99);
    let (outcome, change) = t.apply(&cmd, 2);
    assert_eq!(acquired_block(&outcome), (0, false));
    assert!(
        matches!(change, Change::Put(ref r) if r.revision == 2 && r.acquired_at == 1_700_000_000_000)
    );
}

#[test]
fn lowest_free_block_is_reused_after_release() {
    let mut t = LeaseTable::new(pool("10.244.0.0/16", 8));
    for (i, n) in ["a", "b", "c", "d"].iter().enumerate() {
        let (o, _) = t.apply(&acquire(n), i as u64 + 1);
        assert_eq!(acquired_block(&o), (i as u32, true));
    }
    let (o, change) = t.apply(&release("b"), 10);
    assert_eq!(o, LeaseOutcome::Released { existed: true });
    assert_eq!(change, Change::Delete("b".into()));
    t.apply(&release("c"), 11);
    assert_eq!(acquired(&mut t, "e", 12), (1, true));
    assert_eq!(acquired(&mut t, "f", 13), (2, true));
    assert_eq!(acquired(&mut t, "g", 14), (4, true));
    // releasing an absent node is a no-op
    let (o, change) = t.apply(&release("zzz"), 15);
    assert_eq!(o, LeaseOutcome::Released { existed: false });
    assert_eq!(change, Change::Unchanged);
}

#[test]
fn exhaustion_is_typed_and_changes_nothing() {
    // /30 blocks on a /28: 4 blocks.
    let mut t = LeaseTable::new(pool("192.168.0.0/28", 2));
    for i in 0..4 {
        let (o, _) = t.apply(&acquire(&format!("n{i}")), i + 1);
        assert_eq!(acquired_block(&o), (i as u32, true));
    }
    let (o, change) = t.apply(&acquire("late"), 9);
    assert_eq!(o, LeaseOutcome::PoolExhausted { blocks: 4 });
    assert_eq!(change, Change::Unchanged);
    assert!(t.get("late").is_none());
    assert_eq!(t.free_blocks(), 0);
    // existing holders still get theirs back
    assert_eq!(acquired(&mut t, "n2", 10), (2, false));
    // a release makes room again
    t.apply(&release("n1"), 11);
    assert_eq!(acquired(&mut t, "late", 12), (1, true));
}

#[test]
fn node_bits_zero_has_one_block() {
    let mut t = LeaseTable::new(pool("10.244.0.0/16", 0));
    assert_eq!(acquired(&mut t, "only", 1), (0, true));
    let (o, _) = t.apply(&acquire("second"), 2);
    assert_eq!(o, LeaseOutcome::PoolExhausted { blocks: 1 });
}

#[test]
fn rebuild_refuses_overlaps() {
    let p = pool("10.244.0.0/16", 8);
    let rec = |node: &str, block| LeaseRecord {
        node: node.into(),
        block,
        host_ip: None,
        revision: 1,
        acquired_at: 0,
    };
    let t =
        LeaseTable::from_records(p, [rec("a", 0), rec("b", 7)]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(t.free_blocks(), 254);
    let mut t2 = t.clone();
    let (o, _) = t2.apply(&acquire("c"), 3);
    assert_eq!(acquired_block(&o), (1, true));
    assert!(matches!(
        LeaseTable::from_records(p, [rec("a", 3), rec("b", 3)]),
        Err(TableError::DoubleLeased { block: 3, .. })
    ));
    assert!(matches!(
        LeaseTable::from_records(p, [rec("a", 256)]),
        Err(TableError::BlockOutsidePool { .. })
    ));
}

fn reserve(owner: &str, block: u32) -> LeaseCommand {
    LeaseCommand::Reserve {
        owner: owner.into(),
        block,
        request_id: format!("res-{owner}"),
        at: 5,
    }
}

fn claim(node: &str, from: &str) -> LeaseCommand {
    LeaseCommand::Claim {
        node: node.into(),
        from: from.into(),
        request_id: format!("claim-{node}"),
        at: 7,
    }
}

fn refusal(outcome: &LeaseOutcome) -> &Refusal {
    match outcome {
        LeaseOutcome::Refused { reason } => reason,
        other => panic!("expected Refused, got {other:?}"),
    }
}

#[test]
fn reserved_blocks_are_never_handed_out() {
    let mut t = LeaseTable::new(pool("10.244.0.0/16", 8));
    let (o, change) = t.apply(&reserve("legacy:a", 0), 1);
    assert_eq!(acquired_block(&o), (0, true));
    assert!(matches!(change, Change::Put(ref r) if r.node == "legacy:a" && r.block == 0));
    t.apply(&reserve("legacy:b", 2), 2);
    // acquire skips both reserved blocks
    assert_eq!(acquired(&mut t, "n1", 3), (1, true));
    assert_eq!(acquired(&mut t, "n2", 4), (3, true));
    assert_eq!(t.free_blocks(), 252);
    // re-reserving the same block for the same owner is idempotent
    let (o, change) = t.apply(&reserve("legacy:a", 0), 5);
    assert_eq!(acquired_block(&o), (0, false));
    assert_eq!(change, Change::Unchanged);
    // a taken block, another block for the same owner, a block past the pool: refused
    let (o, change) = t.apply(&reserve("legacy:c", 1), 6);
    assert_eq!(
        refusal(&o),
        &Refusal::BlockTaken {
            block: 1,
            holder: "n1".into()
        }
    );
    assert_eq!(change, Change::Unchanged);
    let (o, _) = t.apply(&reserve("legacy:a", 9), 7);
    assert!(matches!(
        refusal(&o),
        Refusal::OwnerHoldsOther { block: 0, .. }
    ));
    let (o, _) = t.apply(&reserve("legacy:z", 256), 8);
    assert_eq!(refusal(&o), &Refusal::OutsidePool { block: 256 });
    assert_eq!(t.free_blocks(), 252);
    // the free set stays exact: releasing the reservation makes block 0 the lowest again
    t.apply(&release("legacy:a"), 9);
    assert_eq!(acquired(&mut t, "n3", 10), (0, true));
}

#[test]
fn claim_moves_a_reserved_block_to_a_node() {
    let mut t = LeaseTable::new(pool("10.244.0.0/16", 8));
    t.apply(&reserve("legacy:r", 5), 1);
    t.apply(&acquire("busy"), 2);
    let free_before = t.free_blocks();
    let (o, change) = t.apply(&claim("edge-1", "legacy:r"), 3);
    assert_eq!(acquired_block(&o), (5, true));
    match change {
        Change::Move { from, record } => {
            assert_eq!(from, "legacy:r");
            assert_eq!(
                (record.node.as_str(), record.block, record.revision),
                ("edge-1", 5, 3)
            );
        }
        other => panic!("expected Move, got {other:?}"),
    }
    assert!(t.get("legacy:r").is_none());
    assert_eq!(t.get("edge-1").map(|l| l.record.block), Some(5));
    assert_eq!(t.free_blocks(), free_before);
    // the source is gone now; a node with a lease cannot claim; nothing changes
    let (o, change) = t.apply(&claim("edge-2", "legacy:r"), 4);
    assert!(matches!(refusal(&o), Refusal::NoSuchLease { .. }));
    assert_eq!(change, Change::Unchanged);
    t.apply(&reserve("legacy:s", 6), 5);
    let (o, _) = t.apply(&claim("busy", "legacy:s"), 6);
    assert!(matches!(
        refusal(&o),
        Refusal::OwnerHoldsOther { block: 0, .. }
    ));
    assert_eq!(t.get("legacy:s").map(|l| l.record.block), Some(6));
    // the rebuilt table (what a restart loads) agrees
    let rebuilt =
        LeaseTable::from_records(t.pool(), t.records().cloned()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rebuilt.free_blocks(), t.free_blocks());
}

#[test]
fn node_names() {
    for ok in ["node-1", "a", "worker.edge.example.com", "0abc"] {
        assert!(validate_node_name(ok).is_ok(), "{ok}");
    }
    let long = "a".repeat(254);
    for bad in ["", "Node1", "-a", "a-", "a..b", "a_b", "a b", long.as_str()] {
        assert!(validate_node_name(bad).is_err(), "{bad}");
    }
    let err = validate_node_name("Bad_Name").map(|_| ()).unwrap_err();
    assert!(err.to_string().contains("\"Bad_Name\""));
}
