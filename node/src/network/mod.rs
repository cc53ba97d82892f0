//! Node-to-node Raft transport over gRPC: `peer` sends, `service` receives; `channels` holds
//! the connections every outgoing call shares.

pub mod channels;
pub mod peer;
pub mod service;

/// Largest gRPC message a node sends or accepts (an append of many large values).
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;
/// Snapshot data travels in chunks of this size.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;

/// Which cluster and group this node's Raft traffic belongs to; every RPC carries it so that a
/// peer of another cluster is refused instead of corrupting this one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupScope {
    pub cluster_id: String,
    pub group_id: u64,
}
