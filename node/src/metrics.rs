//! Prometheus metrics of one node, served as text on the admin port's /metrics.

use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::registry::Registry;

use crate::types::RaftMetrics;

/// Label sets of static strings: recording a request allocates nothing.
type Labels<const N: usize> = [(&'static str, &'static str); N];
type HistogramFamily = Family<Labels<1>, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 50 µs .. ~26 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

/// The name of a gRPC status code as the `code` label shows it (as `tonic::Code`'s Debug does).
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "Ok",
        Code::Cancelled => "Cancelled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

pub struct NodeMetrics {
    registry: Registry,
    pub applied_entries: Counter,
    pub snapshots_installed: Counter,
    pub shards_pulled: Counter,
    pub shard_moved_bytes: Counter,
    pub shard_copied_bytes: Counter,
    pub startup_log_entries: Gauge,
    fsync_seconds: Histogram,
    fsync_group_size: Histogram,
    batch_items: Histogram,
    snapshot_build_seconds: Histogram,
    snapshot_bytes: Gauge,
    rpc_requests: Family<Labels<2>, Counter>,
    rpc_seconds: HistogramFamily,
    prestop_step_seconds: HistogramFamily,
    tls_refused: Family<Labels<1>, Counter>,
    /// By RPC path, which is not a static string (refusals are rare; allocating is fine).
    rpc_denied: Family<Vec<(&'static str, String)>, Counter>,
    term: Gauge,
    is_leader: Gauge,
    leader_id: Gauge,
    last_log_index: Gauge,
    committed_index: Gauge,
    applied_index: Gauge,
    snapshot_index: Gauge,
    purged_index: Gauge,
}

impl Default for NodeMetrics {
    fn default() -> Self {
        let mut m = Self {
            registry: Registry::with_prefix("shardkv"),
            applied_entries: Counter::default(),
            snapshots_installed: Counter::default(),
            shards_pulled: Counter::default(),
            shard_moved_bytes: Counter::default(),
            shard_copied_bytes: Counter::default(),
            startup_log_entries: Gauge::default(),
            fsync_seconds: latency_histogram(),
            fsync_group_size: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            batch_items: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            snapshot_build_seconds: latency_histogram(),
            snapshot_bytes: Gauge::default(),
            rpc_requests: Family::default(),
            rpc_seconds: Family::new_with_constructor(latency_histogram),
            prestop_step_seconds: Family::new_with_constructor(latency_histogram),
            tls_refused: Family::default(),
            rpc_denied: Family::default(),
            term: Gauge::default(),
            is_leader: Gauge::default(),
            leader_id: Gauge::default(),
            last_log_index: Gauge::default(),
            committed_index: Gauge::default(),
            applied_index: Gauge::default(),
            snapshot_index: Gauge::default(),
            purged_index: Gauge::default(),
        };
        let r = &mut m.registry;
        r.register("applied_entries", "Raft log entries applied to the state machine", m.applied_entries.clone());
        r.register(
            "snapshots_installed",
            "Snapshots received from a leader and installed",
            m.snapshots_installed.clone(),
        );
        r.register(
            "startup_log_entries",
            "Log entries on disk when this process started",
            m.startup_log_entries.clone(),
        );
        r.register("shards_pulled", "Shards this replica pulled in from their previous owner", m.shards_pulled.clone());
        r.register(
            "shard_moved_bytes",
            "Bytes pulled from frozen shards (whole or changes)",
            m.shard_moved_bytes.clone(),
        );
        r.register("shard_copied_bytes", "Bytes copied from shards still served", m.shard_copied_bytes.clone());
        r.register("wal_fsync_seconds", "Latency of one group-commit WAL fsync", m.fsync_seconds.clone());
        r.register("wal_fsync_group_size", "Log appends made durable by one fsync", m.fsync_group_size.clone());
        r.register("kv_batch_items", "Requests per Kv/Batch call", m.batch_items.clone());
        r.register("snapshot_build_seconds", "Time to write a snapshot file", m.snapshot_build_seconds.clone());
        r.register("snapshot_bytes", "Size of the newest snapshot file", m.snapshot_bytes.clone());
        r.register("grpc_requests", "gRPC requests served, by method and status code", m.rpc_requests.clone());
        r.register("grpc_request_seconds", "gRPC request latency, by method", m.rpc_seconds.clone());
        r.register("prestop_step_seconds", "Duration of each preStop step", m.prestop_step_seconds.clone());
        r.register(
            "tls_connections_refused",
            "Connections refused before any request (plaintext, a certificate of another CA, expired, ...), by reason",
            m.tls_refused.clone(),
        );
        r.register("grpc_permission_denied", "gRPC calls refused by authorization, by RPC", m.rpc_denied.clone());
        r.register("raft_term", "Current Raft term", m.term.clone());
        r.register("raft_is_leader", "1 when this replica is the leader", m.is_leader.clone());
        r.register("raft_leader_id", "Node id of the known leader (0 = none)", m.leader_id.clone());
        r.register("raft_last_log_index", "Last log index", m.last_log_index.clone());
        r.register("raft_committed_index", "Committed index", m.committed_index.clone());
        r.register("raft_applied_index", "Applied index", m.applied_index.clone());
        r.register("raft_snapshot_index", "Index of the newest snapshot", m.snapshot_index.clone());
        r.register("raft_purged_index", "Index up to which the log is purged", m.purged_index.clone());
        m
    }
}

impl NodeMetrics {
    pub fn observe_fsync(&self, took: Duration, appends: usize) {
        self.fsync_seconds.observe(took.as_secs_f64());
        self.fsync_group_size.observe(appends as f64);
    }

    pub fn observe_snapshot_built(&self, took: Duration, bytes: u64) {
        self.snapshot_build_seconds.observe(took.as_secs_f64());
        self.snapshot_bytes.set(bytes as i64);
    }

    pub fn observe_rpc(&self, method: &'static str, code: tonic::Code, took: Duration) {
        self.rpc_requests.get_or_create(&[("method", method), ("code", code_name(code))]).inc();
        self.rpc_seconds.get_or_create(&[("method", method)]).observe(took.as_secs_f64());
    }

    pub fn observe_batch(&self, items: usize) {
        self.batch_items.observe(items as f64);
    }

    pub fn observe_prestop_step(&self, step: &'static str, took: Duration) {
        self.prestop_step_seconds.get_or_create(&[("step", step)]).observe(took.as_secs_f64());
    }

    pub fn observe_tls_refused(&self, reason: &'static str) {
        self.tls_refused.get_or_create(&[("reason", reason)]).inc();
    }

    pub fn observe_denied(&self, rpc: &str) {
        self.rpc_denied.get_or_create(&vec![("rpc", rpc.to_string())]).inc();
    }

    /// Renders the Prometheus text format, with the Raft gauges read from `raft` now.
    pub fn render(&self, raft: &RaftMetrics) -> String {
        let index = |id: &Option<crate::types::LogId>| crate::types::index_of(id) as i64;
        self.term.set(raft.current_term as i64);
        self.is_leader.set(i64::from(raft.current_leader == Some(raft.id)));
        self.leader_id.set(raft.current_leader.unwrap_or(0) as i64);
        self.last_log_index.set(raft.last_log_index.unwrap_or(0) as i64);
        self.committed_index.set(index(&raft.local_committed));
        self.applied_index.set(index(&raft.last_applied));
        self.snapshot_index.set(index(&raft.snapshot));
        self.purged_index.set(index(&raft.purged));
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_labels_are_the_names_of_the_codes() {
        for n in 0..=16 {
            let code = tonic::Code::from_i32(n);
            assert_eq!(code_name(code), format!("{code:?}"));
        }
    }
}
