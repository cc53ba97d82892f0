//! Node-to-node Raft transport over gRPC: `peer` sends, `service` receives; `channels` holds
//! the connections every outgoing call shares.

pub mod append_batch;
pub mod append_stream;
pub mod channels;
pub mod commit_notice;
pub mod copy_fetch;
pub mod peer;
pub mod service;

pub use shardkv_proto::MAX_MESSAGE_BYTES;
/// Snapshot data and copy files travel in chunks of this size.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;

/// Which cluster and group this node's Raft traffic belongs to; every RPC carries it so that a
/// peer of another cluster is refused instead of corrupting this one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupScope {
    pub cluster_id: String,
    pub group_id: u64,
}

impl GroupScope {
    /// Refuses (FAILED_PRECONDITION, logged as "refused `what` from another cluster") a request
    /// naming another cluster or group.
    pub fn admit(&self, what: &str, cluster_id: &str, group_id: u64) -> Result<(), tonic::Status> {
        if cluster_id != self.cluster_id || group_id != self.group_id {
            tracing::warn!(peer_cluster = cluster_id, peer_group = group_id, "refused {what} from another cluster");
            return Err(tonic::Status::failed_precondition(format!(
                "wrong cluster: this node belongs to cluster {:?} group {}, the caller to cluster {:?} group {}",
                self.cluster_id, self.group_id, cluster_id, group_id
            )));
        }
        Ok(())
    }
}
