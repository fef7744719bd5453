//! Durable openraft storage (v2: log store + state machine + snapshots) in one sled database.

// openraft's storage traits fix `StorageError` (large) as the error type of every method.
#![allow(clippy::result_large_err)]

mod log;
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
