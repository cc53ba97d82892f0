//! Snapshot benchmark: how long building and installing a snapshot takes as the state grows.
//!
//! For each size it fills a real RocksDB state machine through `apply` (64 KiB values of
//! pseudo-random bytes, which do not compress, spread over 64 shards), builds a snapshot
//! through openraft's builder (a checkpoint), sends it as a follower receives it (packed into
//! the archive format and unpacked into the receiver's snapshot directory, on local disk),
//! installs it into a second state machine, and prints the times. Data lives under $TMPDIR
//! and is removed afterwards.
//!
//!   cargo run --release -p shardkv-node --example snapshot_bench -- [MIB ...]   (default 64 1024)

use std::sync::Arc;
use std::time::Instant;

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
use shardkv_node::state_machine::snapshot_archive;
use shardkv_node::storage::open_db;
use shardkv_node::types::Command;
use shardkv_node::types::Entry;
use shardkv_node::types::LogId;
use shardkv_node::types::Op;

const VALUE_BYTES: usize = 64 << 10;
/// Entries per apply call while filling, about what one apply batch holds under load.
const ENTRIES_PER_APPLY: usize = 64;

fn open_state_machine(dir: &std::path::Path) -> StateMachine {
    let db = open_db(&dir.join("db")).expect("opening RocksDB");
    let snapshots = SnapshotStore::open(dir.join("snapshots")).expect("opening the snapshot store");
    let copy_files = CopyFiles::open(dir.join("copies"), 1).expect("opening the copy file directory");
    StateMachine::open(db, snapshots, copy_files, Role::Standalone { group: 1 }, 64, Arc::new(NodeMetrics::default()))
        .expect("opening the state machine")
}

fn log_id(index: u64) -> LogId {
    let leader = openraft::impls::leader_id_adv::LeaderId::<u64, u64>::new(1, 1);
    LogId::new(leader.to_committed(), index)
}

/// Fills `sm` with `mib` MiB of values and returns the seconds it took.
async fn fill(sm: &mut StateMachine, mib: usize) -> f64 {
    let started = Instant::now();
    let keys = (mib << 20) / VALUE_BYTES;
    for first in (0..keys).step_by(ENTRIES_PER_APPLY) {
        let entries: Vec<_> = (first..keys.min(first + ENTRIES_PER_APPLY))
            .map(|i| {
                let op = Op::Put { key: format!("key-{i:08}").into_bytes(), value: random_value(i as u64) };
                let command = Command { session: None, shard: (i % 64) as u32, op };
                Ok((Entry::new_normal(log_id(i as u64 + 1), command), None))
            })
            .collect();
        sm.apply(stream::iter(entries)).await.expect("applying");
    }
    started.elapsed().as_secs_f64()
}

/// Bytes from a xorshift generator seeded by the key number: no two values alike, and nothing
/// for LZ4 to compress.
fn random_value(seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut value = Vec::with_capacity(VALUE_BYTES);
    while value.len() < VALUE_BYTES {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        value.extend_from_slice(&state.to_le_bytes());
    }
    value
}

#[tokio::main]
async fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|arg| arg.parse().unwrap_or_else(|_| panic!("sizes are whole MiB, not {arg:?}")))
        .collect();
    let sizes = if sizes.is_empty() { vec![64, 1024] } else { sizes };
    println!("state MiB  fill s  snapshot MiB  build s  send s  install s  build MB/s  send MB/s  install MB/s");
    for mib in sizes {
        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut sender = open_state_machine(dir_a.path());
        let fill_secs = fill(&mut sender, mib).await;

        let started = Instant::now();
        let mut snapshot = sender.get_snapshot_builder().await.build_snapshot().await.expect("building the snapshot");
        let build_secs = started.elapsed().as_secs_f64();
        let snapshot_mib = snapshot.snapshot.size as f64 / f64::from(1 << 20);

        let mut receiver = open_state_machine(dir_b.path());
        let started = Instant::now();
        let received = dir_b.path().join("snapshots").join("received.tmp");
        let (from, to) = (snapshot.snapshot.path.clone(), received.clone());
        tokio::task::spawn_blocking(move || {
            let (reader, writer) = std::io::pipe().expect("a pipe");
            let packer = std::thread::spawn(move || snapshot_archive::pack(&from, writer).expect("packing"));
            snapshot_archive::unpack(reader, &to).expect("unpacking");
            packer.join().expect("the packing thread");
        })
        .await
        .unwrap();
        let send_secs = started.elapsed().as_secs_f64();
        snapshot.snapshot.path = received;

        let started = Instant::now();
        receiver.install_snapshot(&snapshot.meta, snapshot.snapshot).await.expect("installing the snapshot");
        let install_secs = started.elapsed().as_secs_f64();

        let mb = (mib << 20) as f64 / 1e6;
        println!(
            "{mib:>9}  {fill_secs:>6.1}  {snapshot_mib:>12.1}  {build_secs:>7.3}  {send_secs:>6.2}  {install_secs:>9.2}  {:>9.0}  {:>9.0}  {:>12.0}",
            mb / build_secs,
            mb / send_secs,
            mb / install_secs
        );
    }
}
