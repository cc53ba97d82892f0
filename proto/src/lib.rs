//! The shardkv wire protocol (package `shardkv.v1`): client KV API, admin API, the meta
//! group's shard-map API, and the node-to-node Raft and shard-migration transports.

pub mod v1 {
    tonic::include_proto!("shardkv.v1");
}

/// Largest gRPC message a node or the client sends or accepts: a Raft append of many large
/// values, or a value read back (nodes may be configured for values up to 64 MiB).
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;

mod batch;
pub use batch::{MAX_BATCH_ITEMS, MAX_BATCH_REQUEST_BYTES};

/// Encoded file descriptor set, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("shardkv_descriptor");

/// Response metadata key carrying the current leader's node id on an UNAVAILABLE answer.
pub const LEADER_ID_HEADER: &str = "x-shardkv-leader-id";
/// Response metadata key carrying the current leader's gRPC address on an UNAVAILABLE answer.
pub const LEADER_ADDR_HEADER: &str = "x-shardkv-leader-addr";
/// Response metadata key on a WrongGroup answer (FAILED_PRECONDITION): the config number of the
/// group that refused, so the client knows how fresh a shard map it needs.
pub const CONFIG_NUM_HEADER: &str = "x-shardkv-config-num";
/// Response metadata key on an UNAVAILABLE answer for a shard moving into the group (any
/// value). A move freezes a shard only while the changes since its copy are pulled, moments,
/// so the client retries at short steady intervals instead of backing off.
pub const MOVING_IN_HEADER: &str = "x-shardkv-moving-in";

/// Response metadata key on a failed write whose proposal may still commit (its log entry was
/// discarded on a leader change, or Raft stopped with it in flight): value [`OUTCOME_UNKNOWN`].
/// A failed write without it was not applied by that attempt.
pub const OUTCOME_HEADER: &str = "x-shardkv-outcome";
pub const OUTCOME_UNKNOWN: &str = "unknown";

/// The shard a key belongs to: FNV-1a 64 of the key, modulo the cluster's fixed shard count.
///
/// This is part of the protocol: clients route with it and nodes store keys under it, so it
/// must never change for an existing cluster.
pub fn shard_for_key(key: &[u8], shards: u32) -> u32 {
    assert!(shards > 0, "a cluster has at least one shard");
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = key.iter().fold(FNV_OFFSET, |h, b| (h ^ u64::from(*b)).wrapping_mul(FNV_PRIME));
    (hash % u64::from(shards)) as u32
}

#[cfg(test)]
mod tests {
    use super::shard_for_key;

    #[test]
    fn shard_for_key_is_stable_across_releases() {
        // Pinned values: changing the hash would silently re-home every key of a live cluster.
        assert_eq!(shard_for_key(b"", 64), (0xcbf2_9ce4_8422_2325_u64 % 64) as u32);
        assert_eq!(shard_for_key(b"a", 64), (0xaf63_dc4c_8601_ec8c_u64 % 64) as u32);
        assert_eq!(shard_for_key(b"foo", 1024), (0xdcb2_7518_fed9_d577_u64 % 1024) as u32);
    }

    #[test]
    fn shard_for_key_spreads_keys_over_all_shards() {
        let shards = 64;
        let mut counts = vec![0u32; shards as usize];
        for i in 0..64_000 {
            counts[shard_for_key(format!("key-{i}").as_bytes(), shards) as usize] += 1;
        }
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(*min > 800 && *max < 1200, "uneven spread: min {min}, max {max}");
    }
}
