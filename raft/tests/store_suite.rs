//! openraft's storage conformance suite against the sled store, on a real temp dir.

use evio_raft::store::{self, LogStore, StateMachineStore};
use evio_raft::types::{StorageError, TypeConfig};
use evio_raft::Pool;
use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageIOError;

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for SledBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(&e))?;
        let pool = Pool::parse("10.244.0.0/16", 8).map_err(|e| StorageIOError::write(&e))?;
        let (logs, sm) = store::open(&dir.path().join("db"), pool, store::DEFAULT_CACHE_BYTES)
            .map_err(|e| StorageIOError::write(&e))?;
        Ok((dir, logs, sm))
    }
}

#[test]
fn openraft_store_suite() {
    if let Err(e) = Suite::test_all(SledBuilder) {
        panic!("openraft storage suite failed: {e}");
    }
}
