//! Range scans over a group: one iterator per shard over a consistent RocksDB view, merged in
//! key order.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rocksdb::DB;
use rocksdb::Direction;
use rocksdb::IteratorMode;
use rocksdb::ReadOptions;
use shardkv_proto::v1::KeyValue;

use crate::storage::CF_DATA;
use crate::storage::cf;
use crate::storage::io_err;
use crate::storage::keys::data_key;
use crate::storage::keys::split_data_key;
use crate::types::ShardId;

/// User-key range of a scan: `lower` inclusive, `upper` exclusive (None = unbounded).
#[derive(Debug, PartialEq, Eq)]
pub struct ScanBounds {
    pub lower: Vec<u8>,
    pub upper: Option<Vec<u8>>,
}

/// Combines start/end/prefix and a continuation token into one range; None if it is empty.
pub fn scan_bounds(start: &[u8], end: &[u8], prefix: &[u8], continuation: &[u8]) -> Option<ScanBounds> {
    let after_continuation = if continuation.is_empty() {
        Vec::new()
    } else {
        let mut k = continuation.to_vec();
        k.push(0);
        k
    };
    let lower = [start, prefix, after_continuation.as_slice()].into_iter().max().unwrap_or_default().to_vec();
    let upper = [(!end.is_empty()).then(|| end.to_vec()), prefix_end(prefix)].into_iter().flatten().min();
    match &upper {
        Some(u) if *u <= lower => None,
        _ => Some(ScanBounds { lower, upper }),
    }
}

/// The smallest key greater than every key with this prefix (None: no such bound).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Up to `limit` items in key order, and whether more remain. A page also ends once its keys
/// and values reach `max_bytes` (it always holds at least one item), so pages of large values
/// stay far below the gRPC message limit; the client follows the continuation.
pub fn scan(
    db: &DB,
    shards: &[ShardId],
    bounds: &ScanBounds,
    limit: usize,
    max_bytes: usize,
) -> std::io::Result<(Vec<KeyValue>, bool)> {
    let view = db.snapshot();
    let data_cf = cf(db, CF_DATA);
    let mut iters: Vec<_> = shards
        .iter()
        .map(|&shard| {
            let mut opts = ReadOptions::default();
            let upper = match &bounds.upper {
                Some(u) => data_key(shard, u),
                None => data_key(shard + 1, &[]),
            };
            opts.set_iterate_upper_bound(upper);
            let from = data_key(shard, &bounds.lower);
            view.iterator_cf_opt(data_cf, opts, IteratorMode::From(&from, Direction::Forward))
        })
        .collect();
    let mut heap = BinaryHeap::new();
    for (i, iter) in iters.iter_mut().enumerate() {
        if let Some(item) = iter.next() {
            let (key, value) = item.map_err(io_err)?;
            heap.push(Reverse((split_data_key(&key).1.to_vec(), i, value.to_vec())));
        }
    }
    let (mut items, mut bytes) = (Vec::new(), 0);
    while items.len() < limit && bytes < max_bytes {
        let Some(Reverse((key, i, value))) = heap.pop() else { break };
        bytes += key.len() + value.len();
        items.push(KeyValue { key, value });
        if let Some(item) = iters[i].next() {
            let (key, value) = item.map_err(io_err)?;
            heap.push(Reverse((split_data_key(&key).1.to_vec(), i, value.to_vec())));
        }
    }
    Ok((items, !heap.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_bounds_cover_exactly_the_prefix() {
        let b = scan_bounds(b"", b"", b"user/", b"").unwrap();
        assert_eq!(b.lower, b"user/");
        assert_eq!(b.upper.as_deref(), Some(&b"user0"[..]));
        assert_eq!(prefix_end(&[0x61, 0xff]), Some(vec![0x62]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
    }

    #[test]
    fn continuation_resumes_after_the_last_key() {
        let b = scan_bounds(b"a", b"z", b"", b"m").unwrap();
        assert_eq!(b.lower, b"m\0");
        assert_eq!(b.upper.as_deref(), Some(&b"z"[..]));
    }

    #[test]
    fn an_empty_range_scans_nothing() {
        assert_eq!(scan_bounds(b"m", b"c", b"", b""), None);
        assert_eq!(
            scan_bounds(b"", b"", b"ab", b"ab\xff\xff"),
            Some(ScanBounds { lower: b"ab\xff\xff\0".to_vec(), upper: Some(b"ac".to_vec()) })
        );
        assert_eq!(scan_bounds(b"", b"b", b"", b"b"), None);
    }

    #[test]
    fn pages_end_at_the_byte_bound_and_hold_at_least_one_item() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::storage::open_db(dir.path()).unwrap();
        for i in 0..10u8 {
            db.put_cf(cf(&db, CF_DATA), data_key(u32::from(i % 3), &[b'k', i]), vec![i; 1000]).unwrap();
        }
        let all = ScanBounds { lower: Vec::new(), upper: None };
        let page = |limit, max_bytes| scan(&db, &[0, 1, 2], &all, limit, max_bytes).unwrap();
        let (items, more) = page(100, 2500);
        assert_eq!(items.len(), 3, "2 x 1002 bytes stay under 2500, the third reaches it");
        assert!(more);
        assert_eq!(items.iter().map(|kv| kv.key[1]).collect::<Vec<_>>(), [0, 1, 2], "still in key order");
        let (items, more) = page(100, 1);
        assert_eq!((items.len(), more), (1, true), "one item even when it alone exceeds the bound");
        let (items, more) = page(100, 1 << 20);
        assert_eq!((items.len(), more), (10, false));
        let (items, more) = page(4, 1 << 20);
        assert_eq!((items.len(), more), (4, true), "the item limit still applies");
    }
}
