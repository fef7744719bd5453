//! The lease state machine on sled, with an in-memory copy that local reads use without
//! ever waiting on Raft.
//!
//! Each `apply` call writes its changes and the new `last_applied` in one atomic sled batch,
//! so the stored table always matches the applied index it claims.

use std::io::Cursor;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, RaftSnapshotBuilder, StorageIOError};
use serde::Serialize;

use super::snapshot;
use crate::lease::{Change, LeaseOutcome, LeaseRecord, LeaseTable};
use crate::pool::Pool;
use crate::types::{Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};

const LEASE_PREFIX: &[u8] = b"lease/";
const LAST_APPLIED: &[u8] = b"meta/last_applied";
const MEMBERSHIP: &[u8] = b"meta/membership";
const SNAPSHOT_META: &[u8] = b"meta";
const SNAPSHOT_DATA: &[u8] = b"data";
/// Present while an installed snapshot is being written lease by lease (see [`write_table`]).
const INSTALLING: &[u8] = b"meta/installing";
/// Leases written per sled batch when a snapshot replaces the table: one batch of all 65,536
/// left a joining member with 3-4 times the RSS of members that applied them one by one.
const INSTALL_BATCH: usize = 4096;

/// The applied state of this replica.
#[derive(Debug, Clone)]
pub struct Applied {
    pub table: LeaseTable,
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
}

/// A cheap handle on the applied state for local reads.
#[derive(Clone)]
pub struct LocalView(Arc<RwLock<Applied>>);

impl LocalView {
    /// Reads the applied state. A poisoned lock only means a panicking writer; the data is
    /// still the last consistent table, so reads go on.
    pub fn read(&self) -> RwLockReadGuard<'_, Applied> {
        self.0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Applied> {
        self.0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Why the stored state machine cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("reading the state machine: {0}")]
    Db(#[from] sled::Error),
    #[error("stored {what} is corrupt: {source}")]
    Corrupt {
        what: String,
        source: serde_json::Error,
    },
    #[error("stored lease table is inconsistent: {0}")]
    Inconsistent(#[from] crate::lease::TableError),
    #[error("encoding the lease table: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("a snapshot install was interrupted and the saved snapshot cannot redo it: {0}")]
    InterruptedInstall(String),
}

#[derive(Clone)]
pub struct StateMachineStore {
    db: sled::Db,
    tree: sled::Tree,
    snapshots: sled::Tree,
    view: LocalView,
}

fn lease_key(node: &str) -> Vec<u8> {
    [LEASE_PREFIX, node.as_bytes()].concat()
}

fn corrupt(what: impl Into<String>) -> impl FnOnce(serde_json::Error) -> LoadError {
    let what = what.into();
    move |source| LoadError::Corrupt { what, source }
}

impl StateMachineStore {
    pub(crate) fn open(db: &sled::Db, pool: Pool) -> Result<Self, LoadError> {
        let tree = db.open_tree("state_machine")?;
        let snapshots = db.open_tree("snapshot")?;
        if tree.contains_key(INSTALLING)? {
            redo_install(&tree, &snapshots, pool)?;
        }
        let mut records = Vec::new();
        for item in tree.scan_prefix(LEASE_PREFIX) {
            let (key, bytes) = item?;
            let what = format!(
                "lease {}",
                String::from_utf8_lossy(&key[LEASE_PREFIX.len()..])
            );
            records.push(serde_json::from_slice::<LeaseRecord>(&bytes).map_err(corrupt(what))?);
        }
        let table = LeaseTable::from_records(pool, records)?;
        let last_applied = match tree.get(LAST_APPLIED)? {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(corrupt("last applied index"))?,
            None => None,
        };
        let membership = match tree.get(MEMBERSHIP)? {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(corrupt("membership"))?,
            None => StoredMembership::default(),
        };
        Ok(Self {
            db: db.clone(),
            tree,
            snapshots,
            view: LocalView(Arc::new(RwLock::new(Applied {
                table,
                last_applied,
                membership,
            }))),
        })
    }

    pub fn view(&self) -> LocalView {
        self.view.clone()
    }

    fn load_snapshot(&self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let meta = self
            .snapshots
            .get(SNAPSHOT_META)
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        let data = self
            .snapshots
            .get(SNAPSHOT_DATA)
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        let (Some(meta), Some(data)) = (meta, data) else {
            return Ok(None);
        };
        let meta: SnapshotMeta =
            serde_json::from_slice(&meta).map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data.to_vec())),
        }))
    }

    async fn save_snapshot(&self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StorageError> {
        let err = |e: &dyn std::error::Error| {
            StorageIOError::write_snapshot(
                Some(meta.signature()),
                &std::io::Error::other(e.to_string()),
            )
        };
        let meta_bytes = serde_json::to_vec(meta).map_err(|e| err(&e))?;
        let mut batch = sled::Batch::default();
        batch.insert(SNAPSHOT_META, meta_bytes);
        batch.insert(SNAPSHOT_DATA, data);
        self.snapshots.apply_batch(batch).map_err(|e| err(&e))?;
        self.db.flush_async().await.map_err(|e| err(&e))?;
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (meta, data) = {
            let applied = self.view.read();
            let data = snapshot::encode(&applied.table);
            let snapshot_id = match applied.last_applied {
                Some(id) => format!(
                    "{}-{}-{}",
                    id.leader_id.term, id.leader_id.node_id, id.index
                ),
                None => "empty".to_string(),
            };
            let meta = SnapshotMeta {
                last_log_id: applied.last_applied,
                last_membership: applied.membership.clone(),
                snapshot_id,
            };
            (meta, data)
        };
        self.save_snapshot(&meta, &data).await?;
        tracing::info!(
            snapshot = %meta.snapshot_id,
            bytes = data.len(),
            leases = self.view.read().table.len(),
            "snapshot built"
        );
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

fn json<T: Serialize>(value: &T) -> Result<Vec<u8>, StorageError> {
    serde_json::to_vec(value).map_err(|e| StorageIOError::write_state_machine(&e).into())
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let applied = self.view.read();
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<LeaseOutcome>, StorageError>
    where
        I: IntoIterator<Item = Entry> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        // Applied in place (cloning a 65,536-lease table per batch would dominate apply time).
        // If the sled write below fails, openraft treats the storage error as fatal and stops
        // this member; /healthz then reports it, and a restart reloads the table from sled.
        let mut view = self.view.write();
        let mut batch = sled::Batch::default();
        let mut outcomes = Vec::new();
        for entry in entries {
            view.last_applied = Some(entry.log_id);
            let outcome = match entry.payload {
                EntryPayload::Blank => LeaseOutcome::None,
                EntryPayload::Normal(command) => {
                    let (outcome, change) = view.table.apply(&command, entry.log_id.index);
                    match change {
                        Change::Unchanged => {}
                        Change::Put(record) => {
                            batch.insert(lease_key(&record.node), json(&record)?)
                        }
                        Change::Delete(node) => batch.remove(lease_key(&node)),
                        Change::Move { from, record } => {
                            batch.remove(lease_key(&from));
                            batch.insert(lease_key(&record.node), json(&record)?);
                        }
                    }
                    outcome
                }
                EntryPayload::Membership(membership) => {
                    view.membership = StoredMembership::new(Some(entry.log_id), membership);
                    batch.insert(MEMBERSHIP, json(&view.membership)?);
                    LeaseOutcome::None
                }
            };
            outcomes.push(outcome);
        }
        batch.insert(LAST_APPLIED, json(&view.last_applied)?);
        self.tree
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_state_machine(&e))?;
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let err = |e: &dyn std::error::Error| {
            StorageIOError::read_snapshot(
                Some(meta.signature()),
                &std::io::Error::other(e.to_string()),
            )
        };
        let data = snapshot.into_inner();
        let body = snapshot::decode(&data).map_err(|e| err(&e))?;
        let pool = self.view.read().table.pool();
        if body.pool != pool {
            let mismatch = std::io::Error::other(format!(
                "snapshot is for {}, this member serves {pool}",
                body.pool
            ));
            return Err(err(&mismatch).into());
        }
        let table = LeaseTable::from_records(pool, body.leases).map_err(|e| err(&e))?;
        let membership = meta.last_membership.clone();

        // The snapshot is saved (and flushed) first: if the process dies while the table is
        // written below, open() redoes the install from it.
        self.save_snapshot(meta, &data).await?;
        write_table(&self.tree, &table, &meta.last_log_id, &membership).map_err(|e| err(&e))?;
        // Durable before openraft purges the log the snapshot covers.
        self.db.flush_async().await.map_err(|e| err(&e))?;

        tracing::info!(
            snapshot = %meta.snapshot_id,
            bytes = data.len(),
            leases = table.len(),
            "snapshot installed"
        );
        *self.view.write() = Applied {
            table,
            last_applied: meta.last_log_id,
            membership,
        };
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        self.load_snapshot()
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, LoadError> {
    serde_json::to_vec(value).map_err(LoadError::Encode)
}

/// Replaces the stored state machine with `table`, in batches of [`INSTALL_BATCH`] leases: the
/// first batch also writes the [`INSTALLING`] marker, the last one the applied index and
/// membership and removes the marker, so a half-written table is never taken for a whole one.
fn write_table(
    tree: &sled::Tree,
    table: &LeaseTable,
    last_applied: &Option<LogId>,
    membership: &StoredMembership,
) -> Result<(), LoadError> {
    let mut batch = sled::Batch::default();
    batch.insert(INSTALLING, &b"1"[..]);
    let mut pending = 0;
    let flush = |batch: &mut sled::Batch, pending: &mut usize| -> Result<(), LoadError> {
        *pending += 1;
        if *pending >= INSTALL_BATCH {
            tree.apply_batch(std::mem::take(batch))?;
            *pending = 0;
        }
        Ok(())
    };
    for item in tree.iter() {
        let (key, _) = item?;
        if key.as_ref() != INSTALLING {
            batch.remove(key);
            flush(&mut batch, &mut pending)?;
        }
    }
    for record in table.records() {
        batch.insert(lease_key(&record.node), encode(record)?);
        flush(&mut batch, &mut pending)?;
    }
    batch.insert(LAST_APPLIED, encode(last_applied)?);
    batch.insert(MEMBERSHIP, encode(membership)?);
    batch.remove(INSTALLING);
    tree.apply_batch(batch)?;
    Ok(())
}

/// Finishes an install that a crash interrupted, from the snapshot it saved before writing.
fn redo_install(tree: &sled::Tree, snapshots: &sled::Tree, pool: Pool) -> Result<(), LoadError> {
    let interrupted = LoadError::InterruptedInstall;
    let (Some(meta), Some(data)) = (snapshots.get(SNAPSHOT_META)?, snapshots.get(SNAPSHOT_DATA)?)
    else {
        return Err(interrupted("no snapshot was saved".into()));
    };
    let meta: SnapshotMeta = serde_json::from_slice(&meta).map_err(corrupt("snapshot meta"))?;
    let body = snapshot::decode(&data).map_err(|e| interrupted(e.to_string()))?;
    if body.pool != pool {
        return Err(interrupted(format!(
            "the saved snapshot is for {}, this member serves {pool}",
            body.pool
        )));
    }
    let table = LeaseTable::from_records(pool, body.leases)?;
    tracing::warn!(snapshot = %meta.snapshot_id, leases = table.len(), "redoing an interrupted snapshot install");
    write_table(tree, &table, &meta.last_log_id, &meta.last_membership)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::LeaseCommand;
    use openraft::CommittedLeaderId;

    fn check<T, E: std::fmt::Display>(result: Result<T, E>) -> T {
        result.unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn an_interrupted_install_is_redone_from_the_saved_snapshot() {
        let dir = check(tempfile::tempdir());
        let db = check(sled::Config::new().path(dir.path()).open());
        let pool = check(Pool::parse("10.0.0.0/16", 8));
        let mut table = LeaseTable::new(pool);
        for i in 0..3u64 {
            let command = LeaseCommand::Acquire {
                node: format!("n{i}"),
                host_ip: None,
                request_id: format!("r{i}"),
                at: 1,
            };
            table.apply(&command, 10 + i);
        }
        let meta = SnapshotMeta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(1, 1), 12)),
            last_membership: StoredMembership::default(),
            snapshot_id: "1-1-12".into(),
        };
        let snapshots = check(db.open_tree("snapshot"));
        check(snapshots.insert(SNAPSHOT_META, check(serde_json::to_vec(&meta))));
        check(snapshots.insert(SNAPSHOT_DATA, snapshot::encode(&table)));
        // The crash: the marker and one batch of the old table's removals were written, a
        // lease of the old table is still there, the applied index is the old one.
        let tree = check(db.open_tree("state_machine"));
        check(tree.insert(INSTALLING, &b"1"[..]));
        let stale = LeaseRecord {
            node: "stale".into(),
            block: 7,
            host_ip: None,
            revision: 3,
            acquired_at: 1,
        };
        check(tree.insert(lease_key("stale"), check(serde_json::to_vec(&stale))));

        let store = check(StateMachineStore::open(&db, pool));
        let applied = store.view().read().clone();
        let mut names: Vec<&str> = applied.table.records().map(|r| r.node.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["n0", "n1", "n2"]);
        assert_eq!(applied.last_applied, meta.last_log_id);
        assert!(!check(tree.contains_key(INSTALLING)));
        // And what was redone is what the next open reads.
        drop(store);
        let again = check(StateMachineStore::open(&db, pool));
        assert_eq!(again.view().read().table.len(), 3);
    }
}
