//! Snapshots only move forward: a build checkpoints the state applied when it runs, and a
//! build that finishes after a newer snapshot was installed does not replace that snapshot.
//! Real RocksDB state machines on disk, driven through the openraft storage traits.

use std::path::Path;
use std::sync::Arc;

use futures::stream;
use openraft::RaftSnapshotBuilder;
use openraft::entry::RaftEntry;
use openraft::storage::RaftStateMachine;
use openraft::vote::RaftLeaderId;
use shardkv_node::metrics::NodeMetrics;
use shardkv_node::state_machine::SnapshotStore;
use shardkv_node::state_machine::StateMachine;
use shardkv_node::state_machine::check_snapshot;
use shardkv_node::state_machine::copy_files::CopyFiles;
use shardkv_node::state_machine::sharding::Role;
use shardkv_node::storage::CF_DATA;
use shardkv_node::storage::cf;
use shardkv_node::storage::keys::data_key;
use shardkv_node::storage::open_db;
use shardkv_node::types::Command;
use shardkv_node::types::Entry;
use shardkv_node::types::LogId;
use shardkv_node::types::Op;

const SHARDS: u32 = 8;

fn open_sm(dir: &Path) -> (StateMachine, Arc<rocksdb::DB>) {
    let metrics = Arc::new(NodeMetrics::default());
    let db = open_db(&dir.join("db")).unwrap();
    let snapshots = SnapshotStore::open(dir.join("snapshots")).unwrap();
    let copy_files = CopyFiles::open(dir.join("copies"), 1).unwrap();
    (StateMachine::open(db.clone(), snapshots, copy_files, Role::Standalone { group: 0 }, SHARDS, metrics).unwrap(), db)
}

fn log_id(index: u64) -> Option<LogId> {
    let leader = openraft::impls::leader_id_adv::LeaderId::<u64, u64>::new(1, 1);
    Some(LogId::new(leader.to_committed(), index))
}

/// Applies puts of `{prefix}{index}` at log indexes `from..=to`.
async fn apply_puts(sm: &mut StateMachine, prefix: &str, from: u64, to: u64) {
    let entries: Vec<_> = (from..=to)
        .map(|index| {
            let op = Op::Put { key: format!("{prefix}{index}").into_bytes(), value: b"v".to_vec() };
            Ok((Entry::new_normal(log_id(index).unwrap(), Command { session: None, shard: 0, op }), None))
        })
        .collect();
    sm.apply(stream::iter(entries)).await.unwrap();
}

fn has_key(db: &rocksdb::DB, key: &str) -> bool {
    db.get_cf(cf(db, CF_DATA), data_key(0, key.as_bytes())).unwrap().is_some()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_build_checkpoints_what_is_applied_when_it_runs_and_its_header_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let (mut sm, _db) = open_sm(dir.path());
    apply_puts(&mut sm, "k", 1, 10).await;
    let mut builder = sm.get_snapshot_builder().await;
    apply_puts(&mut sm, "k", 11, 15).await;

    let built = builder.build_snapshot().await.unwrap();
    assert_eq!(built.meta.last_log_id, log_id(15), "writes applied without the WAL are in the checkpoint");
    check_snapshot(&built.snapshot.path, &built.meta).unwrap();
    assert_eq!(sm.get_current_snapshot().await.unwrap().unwrap().meta.last_log_id, log_id(15));

    let replica_dir = tempfile::tempdir().unwrap();
    let (mut replica, replica_db) = open_sm(replica_dir.path());
    replica.install_snapshot(&built.meta, built.snapshot.clone()).await.unwrap();
    assert!(has_key(&replica_db, "k15") && has_key(&replica_db, "k1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_follower_installing_a_leader_snapshot_while_building_its_own_ends_with_the_newer_one() {
    let (leader_dir, follower_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut leader, _leader_db) = open_sm(leader_dir.path());
    apply_puts(&mut leader, "leader-", 1, 20).await;
    let from_leader = leader.get_snapshot_builder().await.build_snapshot().await.unwrap();

    let (mut follower, follower_db) = open_sm(follower_dir.path());
    apply_puts(&mut follower, "follower-", 1, 10).await;
    let mut own_build = follower.get_snapshot_builder().await;
    follower.install_snapshot(&from_leader.meta, from_leader.snapshot.clone()).await.unwrap();
    assert!(has_key(&follower_db, "leader-20") && !has_key(&follower_db, "follower-10"));

    // The follower's own build, of index 10, finishes after the install of index 20.
    let built = own_build.build_snapshot().await.unwrap();
    assert_eq!(built.meta.last_log_id, log_id(20), "the build answers with the newer snapshot");
    let current = follower.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta.last_log_id, log_id(20));
    check_snapshot(&current.snapshot.path, &current.meta).expect("the current snapshot is whole");
    let snapshots = std::fs::read_dir(follower_dir.path().join("snapshots")).unwrap().count();
    assert_eq!(snapshots, 1, "only the current snapshot is kept");
    assert_eq!(follower.applied_state().await.unwrap().0, log_id(20));

    drop((own_build, follower, follower_db));
    let (mut reopened, db) = open_sm(follower_dir.path());
    assert_eq!(reopened.get_current_snapshot().await.unwrap().unwrap().meta.last_log_id, log_id(20));
    assert_eq!(reopened.applied_state().await.unwrap().0, log_id(20));
    assert!(has_key(&db, "leader-1") && !has_key(&db, "follower-1"));
}
