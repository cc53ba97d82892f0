//! Storage key layout. Big-endian integers keep RocksDB's byte order equal to numeric order.

use crate::types::ShardId;

pub fn log_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

pub fn log_index(key: &[u8]) -> u64 {
    u64::from_be_bytes(key.try_into().expect("raft log keys are 8 bytes"))
}

pub const SHARD_PREFIX_LEN: usize = 4;

/// Data key: shard id, then the user key.
pub fn data_key(shard: ShardId, user_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(SHARD_PREFIX_LEN + user_key.len());
    k.extend_from_slice(&shard.to_be_bytes());
    k.extend_from_slice(user_key);
    k
}

/// Splits a data key into its shard and user key.
pub fn split_data_key(key: &[u8]) -> (ShardId, &[u8]) {
    let (shard, user) = key.split_at(SHARD_PREFIX_LEN);
    (ShardId::from_be_bytes(shard.try_into().expect("4-byte shard prefix")), user)
}

/// Session key: shard id, then client id, so a shard's sessions move with its data.
pub fn session_key(shard: ShardId, client_id: u64) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&shard.to_be_bytes());
    k[4..].copy_from_slice(&client_id.to_be_bytes());
    k
}

/// Prefix of the keys recorded as changed in shards being copied by their next owner
/// (sharding-state column family).
pub const CHANGE_PREFIX: &[u8] = b"changed/";

/// Records that user key `user_key` of `shard` was written since its copy began.
pub fn change_key(shard: ShardId, user_key: &[u8]) -> Vec<u8> {
    [CHANGE_PREFIX, &shard.to_be_bytes(), user_key].concat()
}

/// The key range `[start, end)` of the changes recorded for `shard`.
pub fn change_range(shard: ShardId) -> (Vec<u8>, Vec<u8>) {
    let (start, end) = shard_range(shard);
    ([CHANGE_PREFIX, &start].concat(), [CHANGE_PREFIX, &end].concat())
}

/// The key range `[start, end)` holding every data item or session of `shard`.
pub fn shard_range(shard: ShardId) -> ([u8; 4], [u8; 4]) {
    (shard.to_be_bytes(), (shard + 1).to_be_bytes())
}

/// An exclusive upper bound above every shard-prefixed key (shard ids stay far below u32::MAX).
pub const SHARD_KEYS_END: [u8; 4] = [0xff; 4];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keys_sort_numerically() {
        assert!(log_key(255) < log_key(256));
        assert!(log_key(1 << 40) > log_key(u32::MAX as u64));
        assert_eq!(log_index(&log_key(123_456_789)), 123_456_789);
    }

    #[test]
    fn data_keys_group_by_shard_then_key() {
        let a = data_key(1, b"zzz");
        let b = data_key(2, b"aaa");
        assert!(a < b, "all keys of shard 1 sort before shard 2");
        assert_eq!(split_data_key(&data_key(7, b"hello")), (7, &b"hello"[..]));
        assert!(data_key(u16::MAX as u32, &[0xff; 64]).as_slice() < &SHARD_KEYS_END[..]);
    }

    #[test]
    fn change_keys_of_a_shard_stay_in_its_range() {
        let (start, end) = change_range(3);
        for key in [change_key(3, b""), change_key(3, b"a"), change_key(3, &[0xff; 32])] {
            assert!(start <= key && key < end);
        }
        assert!(change_key(2, &[0xff; 32]) < start && change_key(4, b"") >= end);
    }

    #[test]
    fn session_keys_group_by_shard() {
        assert!(session_key(1, u64::MAX) < session_key(2, 0));
    }
}
