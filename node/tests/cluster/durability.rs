//! Applied state is written without the WAL: the Raft log holds every applied entry, and the
//! state machine's memtables are flushed before the log is purged. Killing every replica at
//! once loses all their memtables; the log must bring back exactly what was acknowledged.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::counters::Load;
use crate::counters::check;
use crate::harness::Cluster;
use crate::harness::WAIT;
use crate::harness::wait_for;

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
