//! Applied state is written without the WAL: the Raft log holds every applied entry, and the
//! state machine's memtables are flushed before the log is purged. Killing every replica at
//! once loses all their memtables; the log must bring back exactly what was acknowledged.
//! Snapshots are checkpoints, loaded into a replica in batches: a replica killed while it
//! loads one must load it again, not serve a mix.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::counters::Load;
use crate::counters::check;
use crate::counters::check_replica_agrees;
use crate::harness::Cluster;
use crate::harness::WAIT;
use crate::harness::wait_for;
use crate::harness::write_bulk;

/// The node's default number of shards (the test cluster is one standalone group).
const SHARDS: u32 = 64;
const NODES: [u64; 3] = [1, 2, 3];

/// The lowest log index every node has purged up to.
async fn purged_everywhere(cluster: &Cluster) -> Option<u64> {
    let mut lowest = u64::MAX;
    for id in NODES {
        lowest = lowest.min(cluster.status(id).await?.purged_index);
    }
    Some(lowest)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_replica_killed_at_once_loses_no_acknowledged_write_and_applies_none_twice() {
    // A snapshot, and with it a purge of the log, every 300 entries: many during the load.
    let mut cluster = Cluster::start(223, 3, &["--snapshot-every", "300"]).await;
    let client = cluster.client();
    let load = Load::start(&client, 8, 8, 100_000, Duration::from_secs(150), SHARDS);
    let mut purged = 0;
    for _ in 0..3 {
        load.continue_for(1200).await;
        // The log has been purged since the last crash: the state machine's durable state is
        // what the flush before that purge wrote, plus nothing from the WAL.
        purged = wait_for("a log purge on every node", WAIT, || async {
            purged_everywhere(&cluster).await.filter(|&p| p > purged)
        })
        .await;
        for id in NODES {
            cluster.kill9(id);
        }
        for id in NODES {
            cluster.start_node(id);
        }
    }
    let reports = load.finish().await;
    let every_shard: BTreeSet<u32> = (0..SHARDS).collect();
    check(&client, &reports, &every_shard).await;
}

/// Bulk keys of 256 KiB, 96 MiB in all: enough that loading a snapshot takes a second.
const BULK_KEYS: usize = 384;
const BULK_VALUE_BYTES: usize = 256 << 10;

/// Bytes that do not compress, different for every key.
fn bulk_value(i: usize) -> Vec<u8> {
    let mut state = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut value = Vec::with_capacity(BULK_VALUE_BYTES);
    while value.len() < BULK_VALUE_BYTES {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        value.extend_from_slice(&state.to_le_bytes());
    }
    value
}

#[tokio::test(flavor = "multi_thread")]
async fn a_follower_killed_while_loading_a_snapshot_loads_it_again_and_loses_nothing() {
    let mut cluster = Cluster::start(224, 3, &["--snapshot-every", "300"]).await;
    let client = cluster.client();
    let leader = cluster.leader().await;
    let follower = NODES.into_iter().find(|&id| id != leader).unwrap();
    let others: Vec<u64> = NODES.into_iter().filter(|&id| id != follower).collect();
    cluster.kill9(follower);
    write_bulk(&client, BULK_KEYS, bulk_value).await;
    let load = Load::start(&client, 8, 8, 100_000, Duration::from_secs(150), SHARDS);
    load.continue_for(600).await;
    // The others have purged the log the follower would need: it can only catch up by snapshot.
    let snapshot_index = wait_for("a snapshot and log purge past the bulk data on the others", WAIT, || async {
        let mut purged = u64::MAX;
        for &id in &others {
            purged = purged.min(cluster.status(id).await?.purged_index);
        }
        (purged > BULK_KEYS as u64).then_some(purged)
    })
    .await;

    let logged_before = cluster.log(follower).len();
    cluster.start_node(follower);
    wait_for("the follower to start loading a snapshot", WAIT, || async {
        cluster.log(follower)[logged_before..].contains("loading a snapshot into the state machine").then_some(())
    })
    .await;
    cluster.kill9(follower);
    let logged_before = cluster.log(follower).len();
    cluster.start_node(follower);
    let status = wait_for("the restarted follower to catch up", WAIT, || async {
        let status = cluster.status(follower).await?;
        (status.applied_index >= snapshot_index).then_some(status)
    })
    .await;
    let restart_log = cluster.log(follower)[logged_before..].to_string();
    assert!(
        restart_log.contains("a snapshot install was interrupted; loading it again"),
        "the kill did not land while the snapshot loaded (status {status:?}):\n{restart_log}"
    );

    let reports = load.finish().await;
    let every_shard: BTreeSet<u32> = (0..SHARDS).collect();
    check(&client, &reports, &every_shard).await;
    cluster.wait_applied_as_leader(follower).await;
    let replica = cluster.client_for([follower]);
    check_replica_agrees(&replica, &client, &reports, |_| true).await;
    for i in 0..BULK_KEYS {
        let value = replica.get_serializable(format!("bulk-{i}")).await.unwrap();
        assert!(value.as_deref() == Some(bulk_value(i).as_slice()), "bulk-{i} lost or damaged on the follower");
    }
}
