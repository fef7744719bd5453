use super::*;
use crate::lease::LeaseCommand;
use openraft::CommittedLeaderId;

fn check<T, E: std::fmt::Display>(result: Result<T, E>) -> T {
    result.unwrap_or_else(|e| panic!("{e}"))
}

fn entry(index: u64, command: LeaseCommand) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(command),
    }
}

fn acquire(node: &str) -> LeaseCommand {
    LeaseCommand::acquire(node, None, format!("a-{node}"), 1)
}

fn release(node: &str) -> LeaseCommand {
    LeaseCommand::release(node, None, format!("r-{node}"), 2)
}

/// A state machine on a new database (the directory lives as long as the first value).
fn empty_store() -> (tempfile::TempDir, sled::Db, Pool, StateMachineStore) {
    let dir = check(tempfile::tempdir());
    let db = check(sled::Config::new().path(dir.path()).open());
    let pool = check(Pool::parse("10.0.0.0/16", 8));
    let store = check(StateMachineStore::open(&db, pool));
    (dir, db, pool, store)
}

fn names(store: &StateMachineStore) -> Vec<(String, u32)> {
    let applied = store.view.read();
    let mut names: Vec<_> = applied
        .table
        .records()
        .map(|r| (r.node.clone(), r.block))
        .collect();
    names.sort_unstable();
    names
}

#[tokio::test]
async fn base_and_changed_keys_reload_as_the_applied_table() {
    let (_dir, db, pool, mut store) = empty_store();
    let first: Vec<Entry> = (0..5u64)
        .map(|i| entry(1 + i, acquire(&format!("n{i}"))))
        .collect();
    check(store.apply(first).await);
    check(store.build_snapshot().await);
    // After the base: one gone, one new, one gone and back (a new block).
    let later = vec![
        entry(6, release("n1")),
        entry(7, acquire("n5")),
        entry(8, release("n3")),
        entry(9, acquire("n3")),
    ];
    check(store.apply(later).await);
    let before = names(&store);
    assert!(before.iter().all(|(n, _)| n != "n1"), "{before:?}");
    assert_eq!(before.len(), 5);
    let reopened = check(StateMachineStore::open(&db, pool));
    assert_eq!(names(&reopened), before);
    assert_eq!(
        reopened.view.read().last_applied.map(|id| id.index),
        Some(9)
    );
    // A second snapshot folds the changes into the base and drops their keys.
    check(store.build_snapshot().await);
    assert_eq!(
        check(db.open_tree("state_machine"))
            .scan_prefix(LEASE_PREFIX)
            .count(),
        0
    );
    assert_eq!(names(&check(StateMachineStore::open(&db, pool))), before);
}

/// Revoked node ids survive a restart, before and after they are folded into the base.
#[tokio::test]
async fn revoked_node_ids_reload() {
    let (_dir, db, pool, mut store) = empty_store();
    let revoke = |node_id| LeaseCommand::Revoke { node_id, at: 1 };
    check(
        store
            .apply(vec![entry(1, revoke(7)), entry(2, acquire("n0"))])
            .await,
    );
    check(store.build_snapshot().await);
    check(store.apply(vec![entry(3, revoke(9))]).await);
    let revoked = |s: &StateMachineStore| s.view.read().table.revoked().clone();
    let want = std::collections::BTreeSet::from([7, 9]);
    assert_eq!(revoked(&check(StateMachineStore::open(&db, pool))), want);
    check(store.build_snapshot().await);
    assert_eq!(revoked(&check(StateMachineStore::open(&db, pool))), want);
}

#[tokio::test]
async fn an_installed_snapshot_replaces_base_and_changes() {
    let (_dir, db, pool, mut store) = empty_store();
    check(store.apply(vec![entry(1, acquire("old"))]).await);
    let mut table = LeaseTable::new(pool);
    for i in 0..3u64 {
        table.apply(&acquire(&format!("s{i}")), 10 + i);
    }
    let meta = SnapshotMeta {
        last_log_id: Some(LogId::new(CommittedLeaderId::new(2, 1), 12)),
        last_membership: StoredMembership::default(),
        snapshot_id: "2-1-12".into(),
    };
    let data = Box::new(Cursor::new(snapshot::encode(&table)));
    check(store.install_snapshot(&meta, data).await);
    let want = vec![
        ("s0".to_string(), 0),
        ("s1".to_string(), 1),
        ("s2".to_string(), 2),
    ];
    assert_eq!(names(&store), want);
    let reopened = check(StateMachineStore::open(&db, pool));
    assert_eq!(names(&reopened), want);
    assert_eq!(reopened.view.read().last_applied, meta.last_log_id);
}
