//! A state larger than 200 MiB is snapshotted and installed by streaming: peak memory grows
//! far less than the data set, and the installed copy equals the original.

use std::sync::Arc;

use futures::stream;
use openraft::RaftSnapshotBuilder;
use openraft::entry::RaftEntry;
use openraft::storage::RaftStateMachine;
use openraft::vote::RaftLeaderId;
use shardkv_node::metrics::NodeMetrics;
use shardkv_node::state_machine::SnapshotStore;
use shardkv_node::state_machine::StateMachine;
use shardkv_node::state_machine::copy_files::CopyFiles;
use shardkv_node::state_machine::sharding::Role;
use shardkv_node::storage::CF_DATA;
use shardkv_node::storage::cf;
use shardkv_node::storage::open_db;
use shardkv_node::types::Command;
use shardkv_node::types::Entry;
use shardkv_node::types::LogId;
use shardkv_node::types::Op;

const VALUE_BYTES: usize = 256 << 10;
const KEYS: usize = 840; // 210 MiB
const PER_BATCH: usize = 40;

fn open_sm(dir: &std::path::Path) -> (StateMachine, Arc<rocksdb::DB>) {
    let metrics = Arc::new(NodeMetrics::default());
    let db = open_db(&dir.join("db")).unwrap();
    let snapshots = SnapshotStore::open(dir.join("snapshots")).unwrap();
    let copy_files = CopyFiles::open(dir.join("copies"), 1).unwrap();
    (StateMachine::open(db.clone(), snapshots, copy_files, Role::Standalone { group: 0 }, 64, metrics).unwrap(), db)
}

fn log_id(index: u64) -> LogId {
    let leader = openraft::impls::leader_id_adv::LeaderId::<u64, u64>::new(1, 1);
    LogId::new(leader.to_committed(), index)
}

fn value_for(i: usize) -> Vec<u8> {
    let seed = (i as u8).wrapping_mul(31);
    (0..VALUE_BYTES).map(|j| seed.wrapping_add((j % 251) as u8)).collect()
}

/// Peak resident memory since the last reset, in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

fn reset_peak_rss() {
    std::fs::write("/proc/self/clear_refs", "5").expect("resetting VmHWM needs Linux");
}

#[test]
fn a_210_mib_state_is_snapshotted_and_installed_without_holding_it_in_memory() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (mut sm_a, _db_a) = open_sm(dir_a.path());
        let mut index = 0u64;
        for batch in (0..KEYS).collect::<Vec<_>>().chunks(PER_BATCH) {
            let entries: Vec<_> = batch
                .iter()
                .map(|i| {
                    index += 1;
                    let op = Op::Put { key: format!("key-{i:05}").into_bytes(), value: value_for(*i) };
                    let entry =
                        Entry::new_normal(log_id(index), Command { session: None, shard: (*i % 64) as u32, op });
                    Ok((entry, None))
                })
                .collect();
            sm_a.apply(stream::iter(entries)).await.unwrap();
        }

        reset_peak_rss();
        let baseline = peak_rss();
        let snapshot = sm_a.get_snapshot_builder().await.build_snapshot().await.unwrap();
        // The kernel's RSS counters are approximate (batched per CPU): a peak read after a
        // reset can come out below the baseline (seen in CI), which means no growth.
        let build_peak = peak_rss().saturating_sub(baseline);
        let data_bytes = (KEYS * VALUE_BYTES) as u64;
        assert_eq!(snapshot.meta.last_log_id, Some(log_id(index)));

        let (mut sm_b, db_b) = open_sm(dir_b.path());
        reset_peak_rss();
        let baseline = peak_rss();
        sm_b.install_snapshot(&snapshot.meta, snapshot.snapshot.clone()).await.unwrap();
        let install_peak = peak_rss().saturating_sub(baseline);
        println!("data {data_bytes} B, snapshot build peak +{build_peak} B, install peak +{install_peak} B");
        let limit = data_bytes / 2;
        assert!(build_peak < limit, "building held {build_peak} bytes of a {data_bytes}-byte state");
        assert!(install_peak < limit, "installing held {install_peak} bytes of a {data_bytes}-byte state");

        let (applied, _) = sm_b.applied_state().await.unwrap();
        assert_eq!(applied, Some(log_id(index)));
        let count = db_b.iterator_cf(cf(&db_b, CF_DATA), rocksdb::IteratorMode::Start).count();
        assert_eq!(count, KEYS);
        for i in [0, KEYS / 2, KEYS - 1] {
            let key = shardkv_node::storage::keys::data_key((i % 64) as u32, format!("key-{i:05}").as_bytes());
            assert_eq!(db_b.get_cf(cf(&db_b, CF_DATA), key).unwrap(), Some(value_for(i)), "key {i}");
        }
    });
}
