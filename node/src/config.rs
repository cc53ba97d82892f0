//! Command-line flags of `shardkv-node` (each also settable by environment variable).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use clap::ValueEnum;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Parser)]
#[command(name = "shardkv-node", version, about = "A shardkv node: one Raft replica of a shardkv group")]
pub struct NodeArgs {
    /// Cluster this node belongs to; persisted at first start and checked at every later one.
    #[arg(long, env = "SHARDKV_CLUSTER_ID")]
    pub cluster_id: String,
    /// Replica group this node is a member of.
    #[arg(long, env = "SHARDKV_GROUP_ID", default_value_t = 0)]
    pub group_id: u64,
    /// This node's id within its group (1 or more).
    #[arg(long, env = "SHARDKV_NODE_ID", value_parser = clap::value_parser!(u64).range(1..))]
    pub node_id: u64,
    /// Directory holding RocksDB, snapshots and the node identity.
    #[arg(long, env = "SHARDKV_DATA_DIR")]
    pub data_dir: PathBuf,
    /// gRPC listen address (KV, Admin and Raft services).
    #[arg(long, env = "SHARDKV_LISTEN", default_value = "127.0.0.1:7100")]
    pub listen: SocketAddr,
    /// Admin HTTP listen address: /healthz, /readyz, /metrics, /lifecycle/prestop.
    #[arg(long, env = "SHARDKV_ADMIN_LISTEN", default_value = "127.0.0.1:7180")]
    pub admin_listen: SocketAddr,
    /// Number of shards keys hash into; fixed when the cluster is created.
    #[arg(long, env = "SHARDKV_SHARDS", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub shards: u32,
    /// Largest accepted key, in bytes.
    #[arg(long, env = "SHARDKV_MAX_KEY_BYTES", default_value_t = 4096)]
    pub max_key_bytes: usize,
    /// Largest accepted value, in bytes.
    #[arg(long, env = "SHARDKV_MAX_VALUE_BYTES", default_value_t = 1 << 20)]
    pub max_value_bytes: usize,
    /// Build a snapshot after this many log entries since the last one.
    #[arg(long, env = "SHARDKV_SNAPSHOT_EVERY", default_value_t = 20_000)]
    pub snapshot_every: u64,
    /// Raft heartbeat interval in milliseconds.
    #[arg(long, env = "SHARDKV_HEARTBEAT_MS", default_value_t = 100)]
    pub heartbeat_ms: u64,
    /// Minimum election timeout in milliseconds (the maximum is twice this).
    #[arg(long, env = "SHARDKV_ELECTION_TIMEOUT_MS", default_value_t = 1000)]
    pub election_timeout_ms: u64,
    #[arg(long, env = "SHARDKV_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}
