//! Clients counting keys up with compare-and-swap while the cluster is changed or broken
//! underneath, and the check that no acknowledged write was lost or applied twice.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use shardkv_client::Client;
use shardkv_proto::shard_for_key;

use crate::harness::WAIT;
use crate::harness::wait_for;

/// What one writer saw. Each writer counts its own keys up with compare-and-swap, so a write
/// applied twice shows as a swap that finds the counter one ahead of what was acknowledged.
#[derive(Debug, Default)]
pub struct WriterReport {
    /// Acknowledged count per key (the counter's value as far as acknowledgements go).
    acked: BTreeMap<String, u64>,
    /// Keys whose last write failed, so that write may or may not have applied.
    uncertain: BTreeSet<String>,
    /// Failed requests per shard.
    failures: BTreeMap<u32, u64>,
    /// Swaps refused although the writer had the acknowledged value: a lost or doubled write.
    anomalies: Vec<String>,
    ops: u64,
}

pub struct Load {
    stop: Arc<AtomicBool>,
    /// Requests made so far by all writers.
    ops: Arc<AtomicU64>,
    writers: Vec<tokio::task::JoinHandle<WriterReport>>,
}

impl Load {
    /// `writers` tasks, each cycling over `keys` keys of its own, for at most `limit` and
    /// `max_ops` operations each, against a cluster of `shards` shards.
    pub fn start(client: &Client, writers: usize, keys: usize, max_ops: u64, limit: Duration, shards: u32) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ops = Arc::new(AtomicU64::new(0));
        let writers = (0..writers)
            .map(|w| {
                let (client, stop, ops) = (client.new_session(), stop.clone(), ops.clone());
                let bounds = Bounds { keys, max_ops, limit, shards };
                tokio::spawn(async move { write_counters(client, w, bounds, stop, ops).await })
            })
            .collect();
        Load { stop, ops, writers }
    }

    /// Lets the load run until it has made `more` further requests (the cluster keeps serving
    /// after the change, not only through it).
    pub async fn continue_for(&self, more: u64) {
        let target = self.ops.load(Ordering::SeqCst) + more;
        wait_for(&format!("{more} more requests"), WAIT, || async {
            (self.ops.load(Ordering::SeqCst) >= target).then_some(())
        })
        .await;
    }

    pub async fn finish(self) -> Vec<WriterReport> {
        self.continue_for(200).await;
        self.stop.store(true, Ordering::SeqCst);
        let mut reports = Vec::new();
        for writer in self.writers {
            reports.push(writer.await.expect("writer task"));
        }
        reports
    }
}

/// How far one writer goes.
#[derive(Clone, Copy)]
struct Bounds {
    keys: usize,
    max_ops: u64,
    limit: Duration,
    shards: u32,
}

async fn write_counters(
    client: Client,
    writer: usize,
    Bounds { keys, max_ops, limit, shards }: Bounds,
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
) -> WriterReport {
    let deadline = Instant::now() + limit;
    let mut report = WriterReport::default();
    while report.ops < max_ops && Instant::now() < deadline && !stop.load(Ordering::SeqCst) {
        let key = format!("w{writer}-k{}", report.ops as usize % keys);
        report.ops += 1;
        ops.fetch_add(1, Ordering::SeqCst);
        let mut count = report.acked.get(&key).copied().unwrap_or(0);
        if report.uncertain.contains(&key) {
            // The failed write may have applied: learn where the counter is before going on.
            match client.get(key.clone()).await {
                Ok(value) => {
                    let current = value.map_or(0, |v| String::from_utf8(v).unwrap().parse::<u64>().unwrap());
                    assert!(current == count || current == count + 1, "{key}: {current} after {count} acked");
                    count = current;
                    report.acked.insert(key.clone(), count);
                    report.uncertain.remove(&key);
                }
                Err(_) => {
                    *report.failures.entry(shard_for_key(key.as_bytes(), shards)).or_default() += 1;
                    continue;
                }
            }
        }
        let expected = (count > 0).then(|| count.to_string().into_bytes());
        match client.compare_and_swap(key.clone(), expected, (count + 1).to_string()).await {
            Ok(outcome) if outcome.succeeded => {
                report.acked.insert(key, count + 1);
            }
            Ok(outcome) => report.anomalies.push(format!(
                "{key}: swap from {count} refused, found {:?}",
                outcome.previous.map(|v| String::from_utf8_lossy(&v).into_owned())
            )),
            Err(_) => {
                *report.failures.entry(shard_for_key(key.as_bytes(), shards)).or_default() += 1;
                report.uncertain.insert(key);
            }
        }
    }
    report
}

/// Every acknowledged count is what the store holds (or one more, for a key whose last write
/// failed); nothing was applied twice; only shards in `may_fail` (those that moved) failed a
/// request.
pub async fn check(client: &Client, reports: &[WriterReport], may_fail: &BTreeSet<u32>) {
    let mut total_ops = 0;
    for report in reports {
        total_ops += report.ops;
        assert!(report.anomalies.is_empty(), "writes lost or applied twice: {:?}", report.anomalies);
        for (key, &acked) in &report.acked {
            let value = client.get(key.clone()).await.expect("final read");
            let stored = value.map_or(0, |v| String::from_utf8(v).unwrap().parse::<u64>().unwrap());
            let allowed = if report.uncertain.contains(key) { acked..=acked + 1 } else { acked..=acked };
            assert!(allowed.contains(&stored), "{key}: store has {stored}, acknowledged {acked}");
        }
        for (shard, failures) in &report.failures {
            assert!(may_fail.contains(shard), "{failures} requests to shard {shard}, which was not to fail, failed");
        }
    }
    let failures: u64 = reports.iter().flat_map(|r| r.failures.values()).sum();
    eprintln!("load: {total_ops} requests, {failures} failed, shards that could fail {may_fail:?}");
    assert!(total_ops >= 200, "the load made only {total_ops} requests");
}

/// Every counter key that `replica` holds (`held_by_replica`) reads the same from its own
/// applied state (serializable reads, once it has caught up) as through the leader.
pub async fn check_replica_agrees(
    replica: &Client,
    client: &Client,
    reports: &[WriterReport],
    held_by_replica: impl Fn(&str) -> bool,
) {
    for key in reports.iter().flat_map(|r| r.acked.keys()).filter(|key| held_by_replica(key)) {
        let local = replica.get_serializable(key.clone()).await.expect("replica read");
        let through_leader = client.get(key.clone()).await.expect("read");
        assert_eq!(local, through_leader, "{key}: the replica and the leader disagree");
    }
}
