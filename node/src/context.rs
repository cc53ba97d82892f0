//! What every request handler of a node shares.

use openraft::async_runtime::WatchReceiver;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;

use rocksdb::DB;

use crate::metrics::NodeMetrics;
use crate::migration::Admission;
use crate::migration::progress::MoveProgress;
use crate::network::GroupScope;
use crate::state_machine::copy_files::CopyFiles;
use crate::state_machine::sharding::Sharding;
use crate::state_machine::sharding::SharedSharding;
use crate::types::NodeId;
use crate::types::Raft;
use crate::types::ShardId;

/// Request size limits, enforced before anything reaches the Raft log.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
}

/// Room in a KV request for everything but its key and values (header, field tags).
const KV_REQUEST_OVERHEAD: usize = 64 << 10;

impl Limits {
    /// The largest KV request worth decoding: a compare-and-swap carries a key and two values.
    /// Anything within it is decoded and, if a key or value is over its limit, refused with a
    /// message that names the limit.
    pub fn max_kv_request_bytes(&self) -> usize {
        self.max_key_bytes + 2 * self.max_value_bytes + KV_REQUEST_OVERHEAD
    }
}

pub struct NodeContext {
    pub node_id: NodeId,
    pub scope: GroupScope,
    pub shards: u32,
    pub limits: Limits,
    pub raft: Raft,
    pub db: Arc<DB>,
    pub metrics: Arc<NodeMetrics>,
    /// The sharding state as of the last applied entry.
    pub sharding: SharedSharding,
    /// Progress of the shard pulls this replica leads.
    pub moves: MoveProgress,
    /// Where identity records live (see `identity`).
    pub data_dir: PathBuf,
    /// Table files of the shard copies this group ingests.
    pub copy_files: CopyFiles,
    /// Set by preStop: the node stops reporting ready and is on its way out.
    stopping: AtomicBool,
    /// Set once the state machine has re-applied what was committed before a restart; local
    /// (serializable) reads wait for it so they never see state older than before the restart.
    recovered: AtomicBool,
}

impl NodeContext {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        node_id: NodeId,
        scope: GroupScope,
        shards: u32,
        limits: Limits,
        raft: Raft,
        db: Arc<DB>,
        metrics: Arc<NodeMetrics>,
        sharding: SharedSharding,
        data_dir: PathBuf,
        copy_files: CopyFiles,
    ) -> Self {
        Self {
            node_id,
            scope,
            shards,
            limits,
            raft,
            db,
            metrics,
            sharding,
            moves: MoveProgress::default(),
            data_dir,
            copy_files,
            stopping: AtomicBool::new(false),
            recovered: AtomicBool::new(false),
        }
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    pub fn is_recovered(&self) -> bool {
        self.recovered.load(Ordering::SeqCst)
    }

    pub fn set_recovered(&self) {
        self.recovered.store(true, Ordering::SeqCst);
    }

    /// How this replica answers a request for `shard` now.
    pub fn admission(&self, shard: ShardId) -> Admission {
        self.sharding.read().unwrap_or_else(std::sync::PoisonError::into_inner).group.admission(shard)
    }

    /// A copy of the sharding state as of the last applied entry.
    pub fn sharding(&self) -> Sharding {
        self.sharding.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// This replica is its group's leader as far as it knows.
    pub fn leads(&self) -> bool {
        self.raft.metrics().borrow_watched().current_leader == Some(self.node_id)
    }

    /// Node id and address of the leader as this replica knows it.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let metrics = self.raft.metrics().borrow_watched().clone();
        let leader = metrics.current_leader?;
        let addr = metrics.membership_config.membership().get_node(&leader).map(|n| n.addr.clone());
        Some((leader, addr.unwrap_or_default()))
    }
}
