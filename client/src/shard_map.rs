//! Pure routing logic: which group owns a key's shard, which shards to ask each group for in
//! a scan, and the key-ordered merge of the groups' scan pages.

use std::collections::{BTreeMap, VecDeque};

use shardkv_proto::shard_for_key;
use shardkv_proto::v1::ShardConfig;

/// One shard map ("config") of a sharded cluster, indexed for routing.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardMap {
    config: ShardConfig,
    /// Replica addresses of every group in the config.
    members: BTreeMap<u64, Vec<String>>,
}

/// Why a key or a scan cannot be routed with a shard map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unroutable {
    /// The map has no shards at all (a meta group that has not created its first map).
    NoShards,
    /// The shard belongs to no group (no data group has joined yet).
    Unassigned { shard: u32 },
    /// The map names `group` as an owner but lists no replica address for it.
    NoMembers { shard: u32, group: u64 },
}

impl std::fmt::Display for Unroutable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unroutable::NoShards => write!(f, "the shard map has no shards"),
            Unroutable::Unassigned { shard } => {
                write!(f, "shard {shard} is not assigned to any group (has a data group joined?)")
            }
            Unroutable::NoMembers { shard, group } => {
                write!(f, "shard {shard} belongs to group {group}, but the shard map lists no members for it")
            }
        }
    }
}

impl ShardMap {
    pub fn new(config: ShardConfig) -> Self {
        let members = config
            .groups
            .iter()
            .map(|group| (group.group_id, group.members.iter().map(|m| m.addr.clone()).collect()))
            .collect();
        Self { config, members }
    }

    pub fn config(&self) -> &ShardConfig {
        &self.config
    }

    /// The config number.
    pub fn num(&self) -> u64 {
        self.config.num
    }

    pub fn shard_count(&self) -> u32 {
        u32::try_from(self.config.shard_groups.len()).unwrap_or(u32::MAX)
    }

    /// The shard `key` belongs to, or `None` when the map has no shards.
    pub fn shard_for_key(&self, key: &[u8]) -> Option<u32> {
        let shards = self.shard_count();
        (shards > 0).then(|| shard_for_key(key, shards))
    }

    /// The group owning `shard` in this config (`None`: unassigned or out of range).
    pub fn owner(&self, shard: u32) -> Option<u64> {
        self.config.shard_groups.get(shard as usize).copied().filter(|&group| group != 0)
    }

    /// Replica addresses of `group` (empty when the group is not in this config).
    pub fn members(&self, group: u64) -> &[String] {
        self.members.get(&group).map_or(&[], Vec::as_slice)
    }

    /// Every group of the config with its replica addresses, ascending by id.
    pub fn groups(&self) -> impl Iterator<Item = (u64, &[String])> {
        self.members.iter().map(|(&group, members)| (group, members.as_slice()))
    }

    /// The shard of `key` and the group to send it to.
    pub fn route(&self, key: &[u8]) -> Result<(u32, u64), Unroutable> {
        let shard = self.shard_for_key(key).ok_or(Unroutable::NoShards)?;
        let group = self.routable_owner(shard)?;
        Ok((shard, group))
    }

    fn routable_owner(&self, shard: u32) -> Result<u64, Unroutable> {
        let group = self.owner(shard).ok_or(Unroutable::Unassigned { shard })?;
        if self.members(group).is_empty() {
            return Err(Unroutable::NoMembers { shard, group });
        }
        Ok(group)
    }

    /// The shards each group must scan to cover every shard once, ascending by group and by
    /// shard. Fails when any shard has no routable owner: a scan would silently miss it.
    pub fn scan_plan(&self) -> Result<BTreeMap<u64, Vec<u32>>, Unroutable> {
        if self.shard_count() == 0 {
            return Err(Unroutable::NoShards);
        }
        let mut plan: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
        for shard in 0..self.shard_count() {
            plan.entry(self.routable_owner(shard)?).or_default().push(shard);
        }
        Ok(plan)
    }
}

/// A key-value pair as scans return it.
pub type Item = (Vec<u8>, Vec<u8>);

/// The smallest key greater than `key`: scanning from it resumes right after `key`.
pub fn successor(key: &[u8]) -> Vec<u8> {
    let mut next = Vec::with_capacity(key.len() + 1);
    next.extend_from_slice(key);
    next.push(0);
    next
}

/// Merges the key-ordered page streams of several sources (one per group) into one
/// key-ordered result, asking for a source's next page only when the merge needs it.
///
/// The driver loop is: `drain()`; if it returns false, fetch a page for every source in
/// `pending()` and `supply()` it; repeat. Every key emitted so far is smaller than every key
/// not yet emitted by any source, so a scan can restart from `successor(last_key)` with a
/// new set of sources (after the shard map changed) without losing or repeating keys.
#[derive(Debug)]
pub struct ScanMerge {
    sources: Vec<Source>,
    out: Vec<Item>,
    limit: Option<usize>,
}

#[derive(Debug, Default)]
struct Source {
    buffer: VecDeque<Item>,
    /// Token for the next page; empty before the first page.
    continuation: Vec<u8>,
    fetched: bool,
    exhausted: bool,
}

impl Source {
    fn needs_page(&self) -> bool {
        self.buffer.is_empty() && !self.exhausted
    }
}

impl ScanMerge {
    pub fn new(sources: usize, limit: Option<usize>) -> Self {
        Self { sources: (0..sources).map(|_| Source::default()).collect(), out: Vec::new(), limit }
    }

    /// Drops every source (and what they buffered but did not emit) and starts over with
    /// `sources` new ones; items already emitted are kept.
    pub fn restart(&mut self, sources: usize) {
        self.sources = (0..sources).map(|_| Source::default()).collect();
    }

    /// How many more items the caller asked for (`None`: no limit).
    pub fn wanted(&self) -> Option<usize> {
        self.limit.map(|limit| limit.saturating_sub(self.out.len()))
    }

    fn complete(&self) -> bool {
        self.wanted() == Some(0) || self.sources.iter().all(|s| s.exhausted && s.buffer.is_empty())
    }

    /// Sources whose next page the merge needs before it can emit anything more.
    pub fn pending(&self) -> Vec<usize> {
        if self.complete() {
            return Vec::new();
        }
        (0..self.sources.len()).filter(|&i| self.sources[i].needs_page()).collect()
    }

    /// The continuation token to send for source `i`'s next page (empty for its first).
    pub fn continuation(&self, i: usize) -> &[u8] {
        &self.sources[i].continuation
    }

    /// Whether source `i` has returned its first page (a later page passes its continuation).
    pub fn started(&self, i: usize) -> bool {
        self.sources[i].fetched
    }

    /// Hands over a page of source `i`; an empty `continuation` means the source is done.
    pub fn supply(&mut self, i: usize, items: Vec<Item>, continuation: Vec<u8>) {
        let source = &mut self.sources[i];
        source.fetched = true;
        source.exhausted = continuation.is_empty();
        source.continuation = continuation;
        source.buffer.extend(items);
    }

    /// Emits items in key order while every source has a buffered item or is exhausted.
    /// Returns true when the scan is complete (limit reached or every source exhausted).
    pub fn drain(&mut self) -> bool {
        loop {
            if self.complete() {
                return true;
            }
            if self.sources.iter().any(Source::needs_page) {
                return false;
            }
            let smallest = (0..self.sources.len())
                .filter_map(|i| self.sources[i].buffer.front().map(|(key, _)| (key, i)))
                .min()
                .map(|(_, i)| i);
            let Some(i) = smallest else {
                return true;
            };
            let item = self.sources[i].buffer.pop_front().expect("the chosen source has a head");
            // A source repeating a key already emitted (a misbehaving server) must not produce
            // duplicates or break the key order.
            if self.out.last().is_none_or(|(last, _)| *last < item.0) {
                self.out.push(item);
            }
        }
    }

    /// How many items were emitted so far.
    pub fn emitted(&self) -> usize {
        self.out.len()
    }

    /// The last key emitted so far.
    pub fn last_key(&self) -> Option<&[u8]> {
        self.out.last().map(|(key, _)| key.as_slice())
    }

    pub fn into_items(self) -> Vec<Item> {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardkv_proto::v1::{GroupMembers, Member};

    fn config(num: u64, shard_groups: Vec<u64>, groups: &[(u64, &[&str])]) -> ShardConfig {
        ShardConfig {
            num,
            shard_groups,
            groups: groups
                .iter()
                .map(|(group_id, addrs)| GroupMembers {
                    group_id: *group_id,
                    members: addrs
                        .iter()
                        .enumerate()
                        .map(|(i, addr)| Member { node_id: i as u64 + 1, addr: addr.to_string() })
                        .collect(),
                })
                .collect(),
            pinned: Vec::new(),
        }
    }

    #[test]
    fn a_key_routes_to_the_owner_of_its_shard_and_that_groups_members() {
        let map = ShardMap::new(config(3, vec![1, 1, 2, 2], &[(1, &["a:1", "a:2"]), (2, &["b:1"])]));
        assert_eq!(map.num(), 3);
        assert_eq!(map.shard_count(), 4);
        for key in [&b"alpha"[..], b"beta", b"gamma", b"delta", b""] {
            let shard = shard_for_key(key, 4);
            let expected_group = if shard < 2 { 1 } else { 2 };
            assert_eq!(map.route(key), Ok((shard, expected_group)), "{key:?}");
        }
        assert_eq!(map.members(1), ["a:1", "a:2"]);
        assert_eq!(map.members(2), ["b:1"]);
        assert!(map.members(9).is_empty());
    }

    #[test]
    fn unassigned_shards_and_groups_without_members_are_unroutable() {
        let empty = ShardMap::new(config(0, vec![0; 8], &[]));
        let key = b"k";
        assert_eq!(empty.route(key), Err(Unroutable::Unassigned { shard: shard_for_key(key, 8) }));
        assert_eq!(empty.scan_plan(), Err(Unroutable::Unassigned { shard: 0 }));

        let no_shards = ShardMap::new(config(0, vec![], &[]));
        assert_eq!(no_shards.route(key), Err(Unroutable::NoShards));
        assert_eq!(no_shards.scan_plan(), Err(Unroutable::NoShards));

        let memberless = ShardMap::new(config(2, vec![1, 7], &[(1, &["a:1"])]));
        assert_eq!(memberless.scan_plan(), Err(Unroutable::NoMembers { shard: 1, group: 7 }));
        assert_eq!(memberless.owner(1), Some(7));
        assert_eq!(memberless.owner(5), None, "out of range");
    }

    #[test]
    fn scan_plan_gives_each_group_exactly_its_shards() {
        let map = ShardMap::new(config(5, vec![2, 1, 2, 3, 1, 2], &[(1, &["a:1"]), (2, &["b:1"]), (3, &["c:1"])]));
        let plan = map.scan_plan().unwrap();
        assert_eq!(plan.into_iter().collect::<Vec<_>>(), [(1, vec![1, 4]), (2, vec![0, 2, 5]), (3, vec![3])]);
    }

    fn items(keys: &[&str]) -> Vec<Item> {
        keys.iter().map(|k| (k.as_bytes().to_vec(), format!("v-{k}").into_bytes())).collect()
    }

    fn keys(items: &[Item]) -> Vec<String> {
        items.iter().map(|(k, _)| String::from_utf8(k.clone()).unwrap()).collect()
    }

    /// Drives a merge over in-memory sources served `page` items at a time; returns the
    /// result and how many pages were requested.
    fn run_merge(runs: &[Vec<&str>], page: usize, limit: Option<usize>) -> (Vec<Item>, usize) {
        let mut merge = ScanMerge::new(runs.len(), limit);
        let mut positions = vec![0usize; runs.len()];
        let mut requests = 0;
        while !merge.drain() {
            let pending = merge.pending();
            assert!(!pending.is_empty(), "an incomplete merge that cannot drain must need a page");
            for i in pending {
                requests += 1;
                let run = &runs[i];
                let take = merge.wanted().map_or(page, |w| w.min(page));
                let end = (positions[i] + take).min(run.len());
                let slice = items(&run[positions[i]..end]);
                positions[i] = end;
                let continuation = if end < run.len() { run[end - 1].as_bytes().to_vec() } else { Vec::new() };
                merge.supply(i, slice, continuation);
            }
        }
        (merge.into_items(), requests)
    }

    #[test]
    fn merge_interleaves_sources_in_key_order() {
        let runs = vec![vec!["a", "d", "e", "k"], vec!["b", "c", "m"], vec![], vec!["f", "g", "h", "i", "j", "l"]];
        let (merged, _) = run_merge(&runs, 2, None);
        assert_eq!(keys(&merged), ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m"]);
        assert_eq!(merged[0].1, b"v-a");
    }

    #[test]
    fn merge_stops_at_the_limit_without_fetching_pages_it_does_not_need() {
        let runs = vec![vec!["a", "b", "c", "d", "e", "f"], vec!["x", "y", "z"]];
        let (merged, requests) = run_merge(&runs, 2, Some(3));
        assert_eq!(keys(&merged), ["a", "b", "c"]);
        // First page of each source (limit 3 → "a","b" and "x","y"), then one more page of
        // the first; the second source's next page is never requested.
        assert_eq!(requests, 3);
        let (none, requests) = run_merge(&runs, 2, Some(0));
        assert!(none.is_empty());
        assert_eq!(requests, 0);
    }

    #[test]
    fn a_restarted_merge_keeps_what_it_emitted_and_resumes_after_it() {
        let mut merge = ScanMerge::new(2, Some(4));
        merge.supply(0, items(&["a", "c"]), b"c".to_vec());
        merge.supply(1, items(&["b"]), b"b".to_vec());
        assert!(!merge.drain());
        assert_eq!(merge.last_key(), Some(&b"b"[..]), "the second source needs its next page before c can go out");
        assert_eq!(merge.pending(), [1]);
        assert_eq!(merge.continuation(1), b"b");

        // The shard map changed: one source now covers everything; restart after "b".
        merge.restart(1);
        assert_eq!(successor(merge.last_key().unwrap()), b"b\0");
        assert!(!merge.started(0));
        merge.supply(0, items(&["c", "d", "e"]), Vec::new());
        assert!(merge.drain());
        assert_eq!(keys(&merge.into_items()), ["a", "b", "c", "d"]);
    }

    #[test]
    fn merge_drops_keys_a_source_repeats() {
        let mut merge = ScanMerge::new(2, None);
        merge.supply(0, items(&["a", "b"]), Vec::new());
        merge.supply(1, items(&["a", "c"]), Vec::new());
        assert!(merge.drain());
        assert_eq!(keys(&merge.into_items()), ["a", "b", "c"]);
    }
}
