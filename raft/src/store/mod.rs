//! Durable openraft storage (v2: log store + state machine + snapshots) in one sled database.

// openraft's storage traits fix `StorageError` (large) as the error type of every method.
#![allow(clippy::result_large_err)]

mod log;
pub mod snapshot;
mod state_machine;

pub use log::LogStore;
pub use state_machine::{Applied, LoadError, LocalView, StateMachineStore};

use std::path::Path;

use crate::pool::Pool;

/// sled's default cache is 1 GiB; a lease table needs a few MiB.
pub const DEFAULT_CACHE_BYTES: u64 = 8 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("opening the database at {path}: {source}")]
    Open { path: String, source: sled::Error },
    #[error("database at {path}: {source}")]
    Load { path: String, source: LoadError },
    #[error("reading the Raft log at {path}: {reason}")]
    Log { path: String, reason: String },
}

impl StoreError {
    /// True when another process (a running evio-node) holds the database's file lock.
    pub fn is_locked(&self) -> bool {
        matches!(self, StoreError::Open { source: sled::Error::Io(e), .. }
            if e.to_string().contains("could not acquire lock"))
    }
}

/// Opens (or creates) the store at `path`: returns the log store and the state machine.
pub fn open(
    path: &Path,
    pool: Pool,
    cache_bytes: u64,
) -> Result<(LogStore, StateMachineStore), StoreError> {
    let shown = path.display().to_string();
    let db = sled::Config::new()
        .path(path)
        .cache_capacity(cache_bytes)
        // Raft decides when data must be durable (explicit flushes); this is a backstop.
        .flush_every_ms(Some(1000))
        .open()
        .map_err(|source| StoreError::Open {
            path: shown.clone(),
            source,
        })?;
    let logs = LogStore::open(&db).map_err(|source| StoreError::Open {
        path: shown.clone(),
        source,
    })?;
    let sm = StateMachineStore::open(&db, pool).map_err(|source| StoreError::Load {
        path: shown,
        source,
    })?;
    Ok((logs, sm))
}

/// The lease table as this member's disk knows it committed, for readers that run while no
/// Raft does (`evio-node config-gen`): the stored state machine plus the log entries up to
/// the stored commit index that were not applied yet (state machine writes are not flushed
/// on their own; the log is). Entries past the commit index are never used: they may still
/// be rolled back.
pub async fn committed_table(
    path: &Path,
    pool: Pool,
) -> Result<crate::lease::LeaseTable, StoreError> {
    use openraft::storage::RaftLogStorage;
    use openraft::{EntryPayload, RaftLogReader};
    let shown = path.display().to_string();
    let (mut logs, state_machine) = open(path, pool, DEFAULT_CACHE_BYTES)?;
    let (mut table, applied) = {
        let view = state_machine.view();
        let applied = view.read();
        (
            applied.table.clone(),
            applied.last_applied.map_or(0, |id| id.index),
        )
    };
    let log_error = |e: crate::types::StorageError| StoreError::Log {
        path: shown.clone(),
        reason: e.to_string(),
    };
    let committed = logs
        .read_committed()
        .await
        .map_err(log_error)?
        .map_or(0, |id| id.index);
    if committed > applied {
        let entries = logs
            .try_get_log_entries(applied + 1..=committed)
            .await
            .map_err(log_error)?;
        for entry in entries {
            if let EntryPayload::Normal(command) = &entry.payload {
                table.apply(command, entry.log_id.index);
            }
        }
    }
    Ok(table)
}
