//! The state machine's snapshots on a real sled store: built on one member, installed on
//! another, the same table comes out; a snapshot an earlier version stored as JSON in its
//! data dir is still served and installed; IPv6 and dual-stack pools round-trip the same way.

use std::io::Cursor;

use evio_raft::store::{self, StateMachineStore};
use evio_raft::types::{Entry, LogId, SnapshotMeta, StoredMembership};
use evio_raft::{LeaseCommand, Pool};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload, RaftSnapshotBuilder};

fn pool() -> Pool {
    Pool::parse("10.0.0.0/8", 16).unwrap_or_else(|e| panic!("{e}"))
}

fn open(dir: &tempfile::TempDir) -> StateMachineStore {
    open_with(dir, pool())
}

fn open_with(dir: &tempfile::TempDir, pool: Pool) -> StateMachineStore {
    // sled gives up a dropped database's file lock only when its flusher thread ends, which
    // can be after the drop returns: a reopen right after a drop waits for it (10 s at most).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match store::open(&dir.path().join("db"), pool, store::DEFAULT_CACHE_BYTES) {
            Ok((_, sm)) => return sm,
            Err(e) if e.is_locked() && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            Err(e) => panic!("{e}"),
        }
    }
}

fn log_id(index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(1, 1), index)
}

fn acquire(index: u64, node: String) -> Entry {
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(LeaseCommand::Acquire {
            node,
            host_ip: None,
            request_id: format!("r{index}"),
            at: 1_700_000_000_000 + index,
        }),
    }
}

/// Applies acquires of `node-1..=node-<count>` (log indexes 1..=count), then builds a snapshot.
async fn acquire_and_snapshot(
    sm: &mut StateMachineStore,
    count: u64,
) -> evio_raft::types::Snapshot {
    let entries: Vec<Entry> = (1..=count)
        .map(|i| acquire(i, format!("node-{i}")))
        .collect();
    sm.apply(entries).await.unwrap_or_else(|e| panic!("{e}"));
    sm.get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Every lease as (node, every family's subnet), ordered.
fn leases(sm: &StateMachineStore) -> Vec<(String, String)> {
    sm.view()
        .read()
        .table
        .leases()
        .into_iter()
        .map(|l| {
            let subnets: Vec<String> = l.subnets().iter().map(ToString::to_string).collect();
            (l.record.node, subnets.join(","))
        })
        .collect()
}

#[tokio::test]
async fn a_snapshot_built_on_one_member_installs_on_another() {
    let (a_dir, b_dir) = (tempdir(), tempdir());
    let mut a = open(&a_dir);
    let snapshot = acquire_and_snapshot(&mut a, 5_000).await;
    let bytes = snapshot.snapshot.get_ref().clone();
    assert!(bytes.starts_with(b"EVSNAP"), "not the binary format");

    let mut b = open(&b_dir);
    b.install_snapshot(&snapshot.meta, Box::new(Cursor::new(bytes)))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(leases(&b), leases(&a));
    assert_eq!(b.view().read().last_applied, Some(log_id(5_000)));
    // And it survives a reopen from disk.
    drop(b);
    let b = open(&b_dir);
    assert_eq!(leases(&b), leases(&a));
}

/// The state machine applies the same commands to IPv6 and dual-stack pools: a lease holds
/// block i of each family; a snapshot of it installs on another member and survives a reopen.
#[tokio::test]
async fn ipv6_and_dual_stack_state_machines_round_trip_through_snapshots() {
    for (text, bits, first) in [
        ("fd00:10::/48", 16, "fd00:10::/64"),
        ("10.0.0.0/8,fd00:10::/48", 16, "10.0.0.0/24,fd00:10::/64"),
    ] {
        let pool = Pool::parse(text, bits).unwrap_or_else(|e| panic!("{e}"));
        let (a_dir, b_dir) = (tempdir(), tempdir());
        let mut a = open_with(&a_dir, pool);
        let snapshot = acquire_and_snapshot(&mut a, 1_000).await;
        let before = leases(&a);
        assert_eq!(before.len(), 1_000);
        assert_eq!(before[0], ("node-1".to_string(), first.to_string()));
        let mut b = open_with(&b_dir, pool);
        b.install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(leases(&b), before, "{text}");
        drop(b);
        assert_eq!(leases(&open_with(&b_dir, pool)), before, "{text}: reopened");
        drop(a);
        assert_eq!(
            leases(&open_with(&a_dir, pool)),
            before,
            "{text}: log replayed"
        );
    }
}

#[tokio::test]
async fn an_earlier_json_snapshot_in_a_data_dir_is_served_and_installed() {
    let (old_dir, new_dir) = (tempdir(), tempdir());
    // What an earlier version left in its data dir: the snapshot tree's meta and JSON data.
    let meta = SnapshotMeta {
        last_log_id: Some(log_id(7)),
        last_membership: StoredMembership::default(),
        snapshot_id: "1-1-7".into(),
    };
    let json = br#"{"pool":{"podCidr":"10.0.0.0/8","nodeBits":16},"leases":[
        {"node":"old-a","block":0,"hostIp":null,"revision":3,"acquiredAt":17},
        {"node":"old-b","block":1,"hostIp":"192.168.1.2","revision":7,"acquiredAt":18}]}"#;
    {
        let db = sled::open(old_dir.path().join("db")).unwrap_or_else(|e| panic!("{e}"));
        let tree = db.open_tree("snapshot").unwrap_or_else(|e| panic!("{e}"));
        let meta_json = serde_json::to_vec(&meta).unwrap_or_else(|e| panic!("{e}"));
        tree.insert("meta", meta_json)
            .unwrap_or_else(|e| panic!("{e}"));
        tree.insert("data", &json[..])
            .unwrap_or_else(|e| panic!("{e}"));
        db.flush().unwrap_or_else(|e| panic!("{e}"));
    }
    let mut old = open(&old_dir);
    let served = old
        .get_current_snapshot()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("the stored snapshot was not found"));
    let mut new = open(&new_dir);
    new.install_snapshot(&served.meta, served.snapshot)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        leases(&new),
        [
            ("old-a".to_string(), "10.0.0.0/24".to_string()),
            ("old-b".to_string(), "10.0.1.0/24".to_string())
        ]
    );
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"))
}
