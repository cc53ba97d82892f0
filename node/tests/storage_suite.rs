//! openraft's storage conformance suite, run against the RocksDB log store and state machine.

use std::sync::Arc;

use openraft::StorageError;
use openraft::testing::log::StoreBuilder;
use openraft::testing::log::Suite;
use shardkv_node::metrics::NodeMetrics;
use shardkv_node::state_machine::SnapshotStore;
use shardkv_node::state_machine::StateMachine;
use shardkv_node::state_machine::copy_files::CopyFiles;
use shardkv_node::state_machine::sharding::Role;
use shardkv_node::storage::LogFlusher;
use shardkv_node::storage::LogGrowth;
use shardkv_node::storage::LogStore;
use shardkv_node::storage::open_db;
use shardkv_node::types::TypeConfig;
use tempfile::TempDir;

struct RocksStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for RocksStoreBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let metrics = Arc::new(NodeMetrics::default());
        let db = open_db(&dir.path().join("db")).expect("open rocksdb");
        let copy_files = CopyFiles::open(dir.path().join("copies"), 1).expect("copy file dir");
        let (log, _) = LogStore::open(
            db.clone(),
            LogFlusher::start(db.clone(), metrics.clone()),
            copy_files.clone(),
            LogGrowth::new(u64::MAX),
        )
        .expect("open log");
        let snapshots = SnapshotStore::open(dir.path().join("snapshots")).expect("snapshot dir");
        let sm = StateMachine::open(db, snapshots, copy_files, Role::Standalone { group: 0 }, 64, metrics)
            .expect("open state machine");
        Ok((dir, log, sm))
    }
}

#[test]
fn rocksdb_log_store_and_state_machine_pass_the_openraft_suite() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(Suite::test_all(RocksStoreBuilder)).expect("storage suite");
}
