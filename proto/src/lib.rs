//! The shardkv wire protocol (package `shardkv.v1`): client KV API, admin API, and the
//! node-to-node Raft transport.

pub mod v1 {
    tonic::include_proto!("shardkv.v1");
}

/// Encoded file descriptor set, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("shardkv_descriptor");

/// Response metadata key carrying the current leader's node id on an UNAVAILABLE answer.
pub const LEADER_ID_HEADER: &str = "x-shardkv-leader-id";
/// Response metadata key carrying the current leader's gRPC address on an UNAVAILABLE answer.
pub const LEADER_ADDR_HEADER: &str = "x-shardkv-leader-addr";
