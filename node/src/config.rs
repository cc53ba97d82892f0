//! Command-line flags of `shardkv-node` (each also settable by environment variable).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use clap::ValueEnum;
use shardkv_tls::{Role, TlsFiles};

use crate::meta::META_GROUP;
use crate::state_machine::sharding::Role as GroupRole;
use crate::storage::keys::SHARD_PREFIX_LEN;

/// The largest key or value a node may be configured to accept: one record must fit a Raft
/// append or a shard chunk (gRPC messages of at most `network::MAX_MESSAGE_BYTES`, 256 MiB)
/// with room for the rest of its batch.
pub const MAX_RECORD_BYTES: usize = 64 << 20;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    /// A replica of the meta group (group 0), which holds the shard maps.
    Meta,
    /// A replica of a data group, serving the shards the meta group gives it (or, without
    /// --meta-endpoints, every shard as a standalone group).
    Data,
}

#[derive(Debug, Clone, Parser)]
// Without any argument or SHARDKV_* variable (a bare `docker run IMAGE`), print the help.
#[command(
    name = "shardkv-node",
    version,
    about = "A shardkv node: one Raft replica of a shardkv group",
    arg_required_else_help = true
)]
pub struct NodeArgs {
    /// Cluster this node belongs to; persisted at first start and checked at every later one.
    #[arg(long, env = "SHARDKV_CLUSTER_ID")]
    pub cluster_id: String,
    #[arg(long, env = "SHARDKV_ROLE", value_enum, default_value = "data")]
    pub role: RoleArg,
    /// Replica group this node is a member of: 0 for the meta group, 1 and up for data groups.
    #[arg(long, env = "SHARDKV_GROUP_ID", default_value_t = 0)]
    pub group_id: u64,
    /// gRPC addresses of the meta group's replicas (comma-separated). A data node without them
    /// is a standalone group serving every shard.
    #[arg(long, env = "SHARDKV_META_ENDPOINTS", value_delimiter = ',')]
    pub meta_endpoints: Vec<String>,
    /// This node's id within its group (1 or more). When unset, derived from --pod-name.
    #[arg(long, env = "SHARDKV_NODE_ID", value_parser = clap::value_parser!(u64).range(1..))]
    pub node_id: Option<u64>,
    /// StatefulSet pod name (`<name>-<ordinal>`); the node id is the ordinal plus one.
    #[arg(long, env = "SHARDKV_POD_NAME")]
    pub pod_name: Option<String>,
    /// Directory holding RocksDB, snapshots and the node identity.
    #[arg(long, env = "SHARDKV_DATA_DIR")]
    pub data_dir: PathBuf,
    /// When the data dir is that of a node removed from its group (`left.json`), move its old
    /// state aside into `<data-dir>/removed-<membership index>` (replacing any older copy) and
    /// start as a new, uninitialised member with the same identity, to be added again as a
    /// learner. Without it such a node refuses to start (exit code 2).
    /// The variable takes true/false, yes/no, on/off or 1/0.
    #[arg(long, env = "SHARDKV_REJOIN_AFTER_REMOVAL", value_parser = clap::builder::BoolishValueParser::new())]
    pub rejoin_after_removal: bool,
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
    /// Delete a client session (its deduplication record) after this many seconds without a
    /// write through it, measured in log time, the same on every replica. It must exceed the
    /// longest a client keeps retrying one write (the Rust client: its request timeout, 5 s by
    /// default): a retry arriving after its session expired would be applied again.
    #[arg(long, env = "SHARDKV_SESSION_EXPIRY_SECS", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    pub session_expiry_secs: u64,
    /// Build a snapshot after this many log entries since the last one (the default of etcd
    /// 3.4's `--snapshot-count`). Each snapshot flushes the memtables, so under load a small
    /// count costs write throughput; a large one lets a restart replay more entries.
    #[arg(long, env = "SHARDKV_SNAPSHOT_EVERY", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub snapshot_every: u64,
    /// Also build one once the log has grown this many bytes since the last, whatever the
    /// count: with large values the entry count alone would let the log grow to gigabytes.
    #[arg(long, env = "SHARDKV_SNAPSHOT_EVERY_BYTES", default_value_t = 256 << 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub snapshot_every_bytes: u64,
    /// Raft heartbeat interval in milliseconds.
    #[arg(long, env = "SHARDKV_HEARTBEAT_MS", default_value_t = 100)]
    pub heartbeat_ms: u64,
    /// Minimum election timeout in milliseconds (the maximum is twice this).
    #[arg(long, env = "SHARDKV_ELECTION_TIMEOUT_MS", default_value_t = 1000)]
    pub election_timeout_ms: u64,
    #[arg(long, env = "SHARDKV_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Threads that run the node's async tasks; by default one per CPU this process may use.
    /// Nodes sharing a machine do better with their share of it: fewer threads mean fewer
    /// cross-thread wake-ups per request.
    #[arg(long, env = "SHARDKV_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
    pub worker_threads: Option<u16>,
    /// PEM CA certificate of the cluster. With --tls-cert and --tls-key, every gRPC connection,
    /// in and out, is mutual TLS verified against it; without all three, TLS is off.
    #[arg(long, env = "SHARDKV_TLS_CA", value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,
    /// PEM certificate of this node: a `spiffe://shardkv/<cluster-id>/node/<name>` URI name, and
    /// the host names or addresses peers and clients connect to. Reloaded when it changes.
    #[arg(long, env = "SHARDKV_TLS_CERT", value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert. Reloaded when it changes.
    #[arg(long, env = "SHARDKV_TLS_KEY", value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
}

impl NodeArgs {
    /// Refuses limits under which a record could not travel: a data record (shard prefix, key,
    /// value) must fit `MAX_RECORD_BYTES`.
    pub fn check_limits(&self) -> anyhow::Result<()> {
        let limit = MAX_RECORD_BYTES;
        if self.max_key_bytes + SHARD_PREFIX_LEN > limit || self.max_value_bytes > limit {
            anyhow::bail!(
                "--max-key-bytes {} / --max-value-bytes {} exceed the record limit of {limit} bytes",
                self.max_key_bytes,
                self.max_value_bytes
            );
        }
        Ok(())
    }

    pub fn session_expiry(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.session_expiry_secs)
    }

    /// The node id, from --node-id or else from the pod name.
    pub fn resolved_node_id(&self) -> anyhow::Result<u64> {
        match (self.node_id, &self.pod_name) {
            (Some(id), _) => Ok(id),
            (None, Some(pod)) => node_id_from_pod_name(pod).ok_or_else(|| {
                anyhow::anyhow!("cannot derive a node id from pod name {pod:?}: expected <name>-<ordinal>")
            }),
            (None, None) => anyhow::bail!("set --node-id (SHARDKV_NODE_ID) or --pod-name (SHARDKV_POD_NAME)"),
        }
    }

    /// The TLS files, all three or none; a node's certificate must name a node of its cluster.
    pub fn tls_files(&self) -> anyhow::Result<Option<TlsFiles>> {
        let files = TlsFiles::from_parts(self.tls_ca.clone(), self.tls_cert.clone(), self.tls_key.clone())
            .map_err(|e| anyhow::anyhow!("--tls-ca, --tls-cert, --tls-key: {e}"))?;
        if let Some(files) = &files {
            let identity = files.identity()?;
            if identity.cluster != self.cluster_id || identity.role != Role::Node {
                anyhow::bail!(
                    "--tls-cert {} names {identity}, not a node of cluster {}",
                    files.cert.display(),
                    self.cluster_id
                );
            }
        }
        Ok(files)
    }

    /// The role this node plays, checked against its group id.
    pub fn resolved_role(&self) -> anyhow::Result<GroupRole> {
        match self.role {
            RoleArg::Meta if self.group_id != META_GROUP => {
                anyhow::bail!("a meta replica belongs to group {META_GROUP}, not group {}", self.group_id)
            }
            RoleArg::Meta => Ok(GroupRole::Meta),
            RoleArg::Data if self.meta_endpoints.is_empty() => Ok(GroupRole::Standalone { group: self.group_id }),
            RoleArg::Data if self.group_id == META_GROUP => {
                anyhow::bail!("a data group of a sharded cluster needs --group-id 1 or higher (0 is the meta group)")
            }
            RoleArg::Data => Ok(GroupRole::Sharded { group: self.group_id }),
        }
    }
}

/// StatefulSet pods are named `<set>-<ordinal>`; node ids start at 1.
fn node_id_from_pod_name(pod: &str) -> Option<u64> {
    let (_, ordinal) = pod.rsplit_once('-')?;
    ordinal.parse::<u64>().ok()?.checked_add(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> NodeArgs {
        let base = ["shardkv-node", "--cluster-id", "c", "--data-dir", "/tmp/x"];
        NodeArgs::try_parse_from(base.iter().chain(extra)).unwrap()
    }

    #[test]
    fn node_id_comes_from_the_flag_or_the_pod_ordinal() {
        assert_eq!(args(&["--node-id", "4"]).resolved_node_id().unwrap(), 4);
        assert_eq!(args(&["--pod-name", "demo-g2-0"]).resolved_node_id().unwrap(), 1);
        assert_eq!(args(&["--pod-name", "demo-meta-12"]).resolved_node_id().unwrap(), 13);
        let err = args(&["--pod-name", "nodash"]).resolved_node_id().unwrap_err();
        assert!(err.to_string().contains("expected <name>-<ordinal>"), "{err}");
        assert!(args(&[]).resolved_node_id().is_err());
    }

    #[test]
    fn limits_must_fit_a_snapshot_record_and_sessions_expire_after_ten_minutes() {
        assert!(args(&[]).check_limits().is_ok());
        assert_eq!(args(&[]).session_expiry(), std::time::Duration::from_secs(600));
        assert_eq!(args(&["--session-expiry-secs", "2"]).session_expiry(), std::time::Duration::from_secs(2));
        let err = args(&["--max-value-bytes", "100000000"]).check_limits().unwrap_err();
        assert!(err.to_string().contains("the record limit"), "{err}");
        assert!(
            NodeArgs::try_parse_from(["n", "--cluster-id", "c", "--data-dir", "d", "--session-expiry-secs", "0"])
                .is_err()
        );
    }

    #[test]
    fn no_arguments_at_all_print_the_help() {
        let err = NodeArgs::try_parse_from(["shardkv-node"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand);
        assert!(err.to_string().contains("--cluster-id"), "{err}");
    }

    #[test]
    fn rejoin_after_removal_is_off_unless_set() {
        assert!(!args(&[]).rejoin_after_removal);
        assert!(args(&["--rejoin-after-removal"]).rejoin_after_removal);
    }

    #[test]
    fn tls_needs_all_three_files() {
        assert!(args(&[]).tls_files().unwrap().is_none());
        let err = args(&["--tls-ca", "ca.pem", "--tls-key", "k.pem"]).tls_files().unwrap_err();
        assert!(err.to_string().contains("missing: certificate"), "{err}");
    }

    #[test]
    fn roles_follow_group_and_meta_endpoints() {
        assert_eq!(args(&["--role", "meta"]).resolved_role().unwrap(), GroupRole::Meta);
        assert!(args(&["--role", "meta", "--group-id", "3"]).resolved_role().is_err());
        assert_eq!(args(&["--group-id", "2"]).resolved_role().unwrap(), GroupRole::Standalone { group: 2 });
        let sharded = args(&["--group-id", "2", "--meta-endpoints", "a:1,b:2"]);
        assert_eq!(sharded.meta_endpoints, ["a:1", "b:2"]);
        assert_eq!(sharded.resolved_role().unwrap(), GroupRole::Sharded { group: 2 });
        assert!(args(&["--meta-endpoints", "a:1"]).resolved_role().is_err());
    }
}
