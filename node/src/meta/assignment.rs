//! Shard assignment: which group owns each shard, recomputed on every Join, Leave and Move.
//!
//! Everything here is pure and deterministic. Every meta replica computes the next config from
//! the same previous config and the same operation, so all replicas must arrive at exactly the
//! same shard map; only ordered maps are used and ties are broken by the lowest group id or the
//! lowest shard id.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::collections::BTreeSet;

use serde::Deserialize;
use serde::Serialize;

use super::GroupId;
use super::Member;
use crate::types::ShardId;

/// One numbered shard map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// Increases by one with every change; data groups apply configs strictly in this order.
    pub num: u64,
    /// Owner of each shard, indexed by shard id; `None` only while no group exists.
    pub shards: Vec<Option<GroupId>>,
    /// The replicas of each group.
    pub groups: BTreeMap<GroupId, Vec<Member>>,
    /// Shards an operator placed with Move; rebalancing leaves them where they are.
    pub pinned: BTreeMap<ShardId, GroupId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum AssignmentError {
    #[error("group {0} has already joined; it must leave before it can join again with other members")]
    GroupAlreadyJoined(GroupId),
    #[error("group {0} cannot join without member addresses; give at least one")]
    NoMembers(GroupId),
    #[error("group {0} is not in the current config")]
    UnknownGroup(GroupId),
    #[error(
        "group {group} cannot leave: it is the last group and {shards} shards need an owner; join another group first"
    )]
    LastGroup { group: GroupId, shards: u32 },
    #[error("shard {shard} cannot be moved: it does not exist (this cluster has shards 0..{shards})")]
    UnknownShard { shard: ShardId, shards: u32 },
    #[error("shard {shard} cannot be moved to group {group}: that group is not in the current config")]
    MoveToUnknownGroup { shard: ShardId, group: GroupId },
}

impl Config {
    /// The config before any group joined: `shards` shards, all unassigned.
    pub fn initial(shards: u32) -> Config {
        Config { num: 0, shards: vec![None; shards as usize], groups: BTreeMap::new(), pinned: BTreeMap::new() }
    }

    /// The next config, with `group` added and given its share of the shards.
    pub fn join(&self, group: GroupId, members: Vec<Member>) -> Result<Config, AssignmentError> {
        if self.groups.contains_key(&group) {
            return Err(AssignmentError::GroupAlreadyJoined(group));
        }
        if members.is_empty() {
            return Err(AssignmentError::NoMembers(group));
        }
        let mut groups = self.groups.clone();
        groups.insert(group, members);
        Ok(self.next(groups, self.pinned.clone()))
    }

    /// The next config, with `group` removed, its shards spread over the others and its pins dropped.
    pub fn leave(&self, group: GroupId) -> Result<Config, AssignmentError> {
        if !self.groups.contains_key(&group) {
            return Err(AssignmentError::UnknownGroup(group));
        }
        if self.groups.len() == 1 && !self.shards.is_empty() {
            return Err(AssignmentError::LastGroup { group, shards: self.shard_count() });
        }
        let mut groups = self.groups.clone();
        groups.remove(&group);
        let mut pinned = self.pinned.clone();
        pinned.retain(|_, owner| *owner != group);
        Ok(self.next(groups, pinned))
    }

    /// The next config, with `shard` pinned to `group`. Other shards may move to restore balance,
    /// because the pinned shard counts towards its group's load.
    pub fn move_shard(&self, shard: ShardId, group: GroupId) -> Result<Config, AssignmentError> {
        if shard >= self.shard_count() {
            return Err(AssignmentError::UnknownShard { shard, shards: self.shard_count() });
        }
        if !self.groups.contains_key(&group) {
            return Err(AssignmentError::MoveToUnknownGroup { shard, group });
        }
        let mut pinned = self.pinned.clone();
        pinned.insert(shard, group);
        Ok(self.next(self.groups.clone(), pinned))
    }

    /// The next config with new members for a group that has joined; no shard moves.
    pub fn update_members(&self, group: GroupId, members: Vec<Member>) -> Result<Config, AssignmentError> {
        if !self.groups.contains_key(&group) {
            return Err(AssignmentError::UnknownGroup(group));
        }
        if members.is_empty() {
            return Err(AssignmentError::NoMembers(group));
        }
        let mut next = self.clone();
        next.num += 1;
        next.groups.insert(group, members);
        Ok(next)
    }

    /// The shards `group` owns in this config, in ascending order.
    pub fn shards_of(&self, group: GroupId) -> Vec<ShardId> {
        (0..self.shard_count()).filter(|&shard| self.shards[shard as usize] == Some(group)).collect()
    }

    fn shard_count(&self) -> u32 {
        self.shards.len() as u32
    }

    fn next(&self, groups: BTreeMap<GroupId, Vec<Member>>, pinned: BTreeMap<ShardId, GroupId>) -> Config {
        let group_ids: BTreeSet<GroupId> = groups.keys().copied().collect();
        let shards = rebalance(self.shard_count(), &group_ids, &pinned, &self.shards);
        Config { num: self.num + 1, shards, groups, pinned }
    }
}

/// Assigns `shards` shards to `groups`, moving as few shards away from their `previous` owner as
/// balance allows.
///
/// - Pinned shards go to their pinned group and count towards its load. Pins naming a shard or
///   group that does not exist are ignored.
/// - Loads are balanced within one shard (max - min <= 1 over all groups). When pins alone give
///   a group more than that, perfect balance is impossible; the pinned group then keeps only its
///   pinned shards and the unpinned shards are spread as evenly as possible over the rest
///   ("water-filling"): no group that owns an unpinned shard has more than one shard above any
///   other group.
/// - A shard keeps its previous owner unless that owner is gone or is above its target load. A
///   group above its target gives up its lowest-numbered unpinned shards; targets one above the
///   common level go to the groups already holding the most shards, so after a join only the
///   new group gains shards and after a leave only the leaving group's shards move.
/// - Shards without an owner, lowest id first, fill the groups below target, lowest id first.
/// - With no groups every shard is unassigned. `previous` may be shorter than `shards`; missing
///   entries count as unassigned.
pub fn rebalance(
    shards: u32,
    groups: &BTreeSet<GroupId>,
    pinned: &BTreeMap<ShardId, GroupId>,
    previous: &[Option<GroupId>],
) -> Vec<Option<GroupId>> {
    if groups.is_empty() {
        return vec![None; shards as usize];
    }
    let existing = |group: &GroupId| groups.contains(group);
    let pin: Vec<Option<GroupId>> = (0..shards).map(|shard| pinned.get(&shard).copied().filter(existing)).collect();
    let mut owners: Vec<Option<GroupId>> = (0..shards as usize)
        .map(|shard| pin[shard].or_else(|| previous.get(shard).copied().flatten().filter(existing)))
        .collect();

    let mut load: BTreeMap<GroupId, u32> = groups.iter().map(|&group| (group, 0)).collect();
    let mut pinned_load = load.clone();
    for (shard, owner) in owners.iter().enumerate() {
        if let Some(group) = owner {
            *load.entry(*group).or_default() += 1;
            if pin[shard].is_some() {
                *pinned_load.entry(*group).or_default() += 1;
            }
        }
    }
    let target = target_loads(shards, &pinned_load, &load);

    for shard in 0..shards as usize {
        let Some(group) = owners[shard] else { continue };
        let group_load = load.entry(group).or_default();
        if pin[shard].is_none() && *group_load > target[&group] {
            *group_load -= 1;
            owners[shard] = None;
        }
    }

    // Releasing never takes a group below its target and pinned shards never exceed it, so the
    // open slots add up to exactly the number of unowned shards.
    let open_slots = groups
        .iter()
        .flat_map(|&group| std::iter::repeat_n(group, target[&group].saturating_sub(load[&group]) as usize));
    let unowned: Vec<usize> = (0..shards as usize).filter(|&shard| owners[shard].is_none()).collect();
    for (shard, group) in unowned.into_iter().zip(open_slots) {
        owners[shard] = Some(group);
    }
    owners
}

/// How many shards each group should own: every group is raised to a common level (or keeps its
/// pinned shards if it has more), and the shards left over raise some groups at the level by one.
fn target_loads(
    shards: u32,
    pinned_load: &BTreeMap<GroupId, u32>,
    load: &BTreeMap<GroupId, u32>,
) -> BTreeMap<GroupId, u32> {
    let needed = |level: u32| -> u64 { pinned_load.values().map(|&pinned| u64::from(pinned.max(level))).sum() };
    // The highest level every group can be raised to; needed(0) is the pinned total, which fits.
    let (mut low, mut high) = (0, shards);
    while low < high {
        let mid = low + (high - low).div_ceil(2);
        if needed(mid) <= u64::from(shards) {
            low = mid;
        } else {
            high = mid - 1;
        }
    }
    let level = low;
    // Fewer than the groups at the level, since otherwise the level would be one higher.
    let left_over = (u64::from(shards) - needed(level)) as usize;
    let mut at_level: Vec<GroupId> =
        pinned_load.iter().filter(|&(_, &pinned)| pinned <= level).map(|(&group, _)| group).collect();
    // Raising the groups that already hold the most means the fewest shards have to move.
    at_level.sort_by_key(|group| (Reverse(load[group]), *group));
    let raised: BTreeSet<GroupId> = at_level.into_iter().take(left_over).collect();
    pinned_load
        .iter()
        .map(|(&group, &pinned)| (group, pinned.max(level) + u32::from(raised.contains(&group))))
        .collect()
}

/// The shards whose owner differs between two configs, as (shard, owner in `from`, owner in `to`),
/// in ascending shard order.
pub fn moves(from: &Config, to: &Config) -> Vec<(ShardId, Option<GroupId>, Option<GroupId>)> {
    let count = from.shards.len().max(to.shards.len());
    (0..count)
        .filter_map(|shard| {
            let before = from.shards.get(shard).copied().flatten();
            let after = to.shards.get(shard).copied().flatten();
            (before != after).then_some((shard as ShardId, before, after))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(group: GroupId) -> Vec<Member> {
        (1..=2).map(|node_id| Member { node_id, addr: format!("10.0.{group}.{node_id}:7000") }).collect()
    }

    fn loads(config: &Config) -> BTreeMap<GroupId, usize> {
        config.groups.keys().map(|&group| (group, config.shards_of(group).len())).collect()
    }

    fn spread(config: &Config) -> usize {
        let loads = loads(config);
        loads.values().max().unwrap() - loads.values().min().unwrap()
    }

    /// Groups 1..=count joined in order, with every intermediate config.
    fn joined(shards: u32, count: u64) -> Vec<Config> {
        let mut configs = vec![Config::initial(shards)];
        for group in 1..=count {
            let next = configs.last().unwrap().join(group, members(group)).unwrap();
            configs.push(next);
        }
        configs
    }

    /// What must hold for every config, whatever produced it.
    fn assert_invariants(config: &Config) {
        if config.groups.is_empty() {
            assert!(config.shards.iter().all(Option::is_none), "no groups, yet shards are owned: {config:?}");
            assert!(config.pinned.is_empty());
            return;
        }
        for (shard, owner) in config.shards.iter().enumerate() {
            let owner = owner.unwrap_or_else(|| panic!("shard {shard} unassigned: {config:?}"));
            assert!(config.groups.contains_key(&owner), "shard {shard} owned by unknown group {owner}");
        }
        for (&shard, &group) in &config.pinned {
            assert!(config.groups.contains_key(&group), "pin of shard {shard} to departed group {group}");
            assert_eq!(config.shards[shard as usize], Some(group), "pin of shard {shard} not honoured");
        }
        // As even as pins allow: a group owning an unpinned shard could hand it to any group
        // more than one below it, so no such group may exist.
        let loads = loads(config);
        for (shard, owner) in config.shards.iter().enumerate() {
            if config.pinned.contains_key(&(shard as ShardId)) {
                continue;
            }
            let owner_load = loads[&owner.unwrap()];
            for (&group, &load) in &loads {
                assert!(owner_load <= load + 1, "group {group} owns {load}, {owner:?} owns {owner_load}: {config:?}");
            }
        }
        if config.pinned.is_empty() {
            assert!(spread(config) <= 1, "unbalanced: {loads:?}");
        }
    }

    fn assert_join_moves_only_to(before: &Config, after: &Config, group: GroupId) {
        let moved = moves(before, after);
        assert!(moved.iter().all(|&(_, _, to)| to == Some(group)), "join of {group} moved {moved:?}");
        assert!(moved.iter().all(|&(_, from, _)| from != Some(group)));
        assert_eq!(moved.len(), after.shards_of(group).len());
    }

    fn assert_leave_moves_only_from(before: &Config, after: &Config, group: GroupId) {
        let moved = moves(before, after);
        assert!(moved.iter().all(|&(_, from, _)| from == Some(group)), "leave of {group} moved {moved:?}");
        assert_eq!(moved.len(), before.shards_of(group).len());
        assert!(after.shards_of(group).is_empty());
    }

    #[test]
    fn balanced_within_one_after_every_join_and_leave() {
        for (shards, max_groups) in [(64, 10), (10, 12)] {
            let configs = joined(shards, max_groups);
            for config in &configs {
                assert_invariants(config);
            }
            // Odd groups first, then even ones, so leaves hit both early and late joiners.
            let mut config = configs.last().unwrap().clone();
            let leaving: Vec<GroupId> =
                (1..=max_groups).filter(|g| g % 2 == 1).chain((1..=max_groups).filter(|g| g % 2 == 0)).collect();
            for &group in &leaving[..leaving.len() - 1] {
                config = config.leave(group).unwrap();
                assert_invariants(&config);
                assert!(spread(&config) <= 1);
            }
            assert_eq!(config.groups.keys().copied().collect::<Vec<_>>(), vec![*leaving.last().unwrap()]);
            assert_eq!(config.shards_of(*leaving.last().unwrap()).len(), shards as usize);
        }
    }

    #[test]
    fn more_groups_than_shards_leaves_some_groups_empty_but_balanced() {
        let config = joined(10, 12).pop().unwrap();
        let loads = loads(&config);
        assert_eq!(loads.values().filter(|&&load| load == 0).count(), 2);
        assert_eq!(loads.values().filter(|&&load| load == 1).count(), 10);
    }

    #[test]
    fn join_moves_exactly_the_minimum_all_to_the_new_group() {
        for (shards, max_groups) in [(64u32, 10u64), (10, 12), (7, 3)] {
            let configs = joined(shards, max_groups);
            for (old_groups, pair) in configs.windows(2).enumerate() {
                let new_group = old_groups as u64 + 1;
                // Balance needs the new group to own at least floor(S / (G + 1)); the first group
                // has to take every shard.
                let minimum = if old_groups == 0 { shards } else { shards / (old_groups as u32 + 1) };
                let moved = moves(&pair[0], &pair[1]);
                assert_eq!(moved.len(), minimum as usize, "S={shards} joining group {new_group}");
                assert_join_moves_only_to(&pair[0], &pair[1], new_group);
            }
        }
    }

    #[test]
    fn leave_moves_only_the_leaving_groups_shards() {
        for (shards, groups) in [(64, 10), (10, 12), (64, 2)] {
            let full = joined(shards, groups).pop().unwrap();
            for group in 1..=groups {
                let after = full.leave(group).unwrap();
                assert_leave_moves_only_from(&full, &after, group);
                assert_invariants(&after);
            }
        }
    }

    #[test]
    fn move_pins_a_shard_through_later_joins_and_leaves() {
        let config = joined(64, 3).pop().unwrap();
        let shard = 5;
        let destination = (1..=3).find(|&g| config.shards[shard as usize] != Some(g)).unwrap();
        let mut config = config.move_shard(shard, destination).unwrap();
        assert_eq!(config.shards[shard as usize], Some(destination));
        assert_eq!(config.pinned.get(&shard), Some(&destination));
        assert!(spread(&config) <= 1, "one pin does not prevent balance: {:?}", loads(&config));
        assert_invariants(&config);

        for group in 4..=6 {
            config = config.join(group, members(group)).unwrap();
            assert_invariants(&config);
        }
        for group in (1..=6).filter(|&g| g != destination) {
            config = config.leave(group).unwrap();
            assert_eq!(config.shards[shard as usize], Some(destination));
            assert_invariants(&config);
        }
        config = config.join(7, members(7)).unwrap();
        assert_eq!(config.shards[shard as usize], Some(destination));
        assert_eq!(config.pinned.get(&shard), Some(&destination));

        let config = config.leave(destination).unwrap();
        assert!(config.pinned.is_empty(), "pin to a departed group must be dropped");
        assert_eq!(config.shards[shard as usize], Some(7));
        assert_invariants(&config);
    }

    #[test]
    fn moving_a_pinned_shard_again_replaces_its_pin() {
        let config = joined(16, 2).pop().unwrap();
        let config = config.move_shard(3, 1).unwrap().move_shard(3, 2).unwrap();
        assert_eq!(config.pinned, BTreeMap::from([(3, 2)]));
        assert_eq!(config.shards[3], Some(2));
        assert_invariants(&config);
    }

    #[test]
    fn pins_that_prevent_balance_still_spread_the_rest_evenly() {
        let mut config = joined(12, 3).pop().unwrap();
        for shard in 0..8 {
            config = config.move_shard(shard, 1).unwrap();
        }
        assert_eq!(loads(&config), BTreeMap::from([(1, 8), (2, 2), (3, 2)]));
        assert_invariants(&config);

        // Pins that exactly reach the level leave the pinned group with nothing else.
        let mut config = joined(12, 3).pop().unwrap();
        for shard in 0..6 {
            config = config.move_shard(shard, 1).unwrap();
        }
        assert_eq!(loads(&config), BTreeMap::from([(1, 6), (2, 3), (3, 3)]));
        assert_eq!(config.shards_of(1), (0..6).collect::<Vec<_>>());
    }

    #[test]
    fn invalid_operations_are_refused_with_a_reason() {
        let config = joined(8, 2).pop().unwrap();

        let err = config.join(1, members(1)).unwrap_err();
        assert_eq!(err, AssignmentError::GroupAlreadyJoined(1));
        assert!(err.to_string().contains("group 1 has already joined"));

        let err = config.join(3, vec![]).unwrap_err();
        assert_eq!(err, AssignmentError::NoMembers(3));
        assert!(err.to_string().contains("at least one"));

        let err = config.leave(9).unwrap_err();
        assert_eq!(err, AssignmentError::UnknownGroup(9));
        assert!(err.to_string().contains("group 9"));

        let last = config.leave(1).unwrap();
        let err = last.leave(2).unwrap_err();
        assert_eq!(err, AssignmentError::LastGroup { group: 2, shards: 8 });
        assert!(err.to_string().contains("join another group first"));

        let err = config.move_shard(8, 1).unwrap_err();
        assert_eq!(err, AssignmentError::UnknownShard { shard: 8, shards: 8 });
        assert!(err.to_string().contains("shards 0..8"));

        let err = config.move_shard(2, 9).unwrap_err();
        assert_eq!(err, AssignmentError::MoveToUnknownGroup { shard: 2, group: 9 });
        assert!(err.to_string().contains("group 9"));

        // Moving to an unknown group is refused even when there are no groups at all.
        assert!(Config::initial(8).move_shard(0, 1).is_err());
    }

    #[test]
    fn the_last_group_may_leave_when_there_are_no_shards() {
        let config = Config::initial(0).join(1, members(1)).unwrap().leave(1).unwrap();
        assert!(config.groups.is_empty());
        assert_eq!(config.num, 2);
    }

    #[test]
    fn first_join_assigns_every_shard_and_moves_reports_it() {
        let initial = Config::initial(4);
        let config = initial.join(7, members(7)).unwrap();
        assert_eq!(config.shards_of(7), vec![0, 1, 2, 3]);
        assert_eq!(
            moves(&initial, &config),
            vec![(0, None, Some(7)), (1, None, Some(7)), (2, None, Some(7)), (3, None, Some(7))]
        );
        assert!(moves(&config, &config).is_empty());
        assert!(initial.shards_of(7).is_empty());
    }

    /// Knuth's MMIX linear congruential generator: enough randomness for a reproducible churn.
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, bound: u64) -> u64 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (self.0 >> 33) % bound
        }
    }

    /// A seeded sequence of joins, leaves and occasional moves; every config is returned.
    fn churn(shards: u32, seed: u64, steps: usize) -> Vec<Config> {
        let mut random = Lcg(seed);
        let mut configs = vec![Config::initial(shards)];
        for step in 0..steps {
            let config = configs.last().unwrap();
            let next = if step % 7 == 6 && !config.groups.is_empty() {
                let shard = random.below(u64::from(shards)) as ShardId;
                let ids: Vec<GroupId> = config.groups.keys().copied().collect();
                let group = ids[random.below(ids.len() as u64) as usize];
                config.move_shard(shard, group).unwrap()
            } else {
                // Ids from a small range, so groups come back after leaving.
                let group = 1 + random.below(16);
                if config.groups.contains_key(&group) && config.groups.len() > 1 {
                    let next = config.leave(group).unwrap();
                    assert_leave_moves_only_from(config, &next, group);
                    assert!(next.pinned.values().all(|&g| g != group));
                    assert!(
                        config.pinned.iter().filter(|&(_, &g)| g != group).all(|(s, g)| next.pinned.get(s) == Some(g))
                    );
                    next
                } else if config.groups.contains_key(&group) {
                    config.join(group + 100, members(group + 100)).unwrap()
                } else {
                    let next = config.join(group, members(group)).unwrap();
                    assert_join_moves_only_to(config, &next, group);
                    assert_eq!(next.pinned, config.pinned);
                    next
                }
            };
            assert_eq!(next.num, config.num + 1);
            assert_invariants(&next);
            configs.push(next);
        }
        configs
    }

    #[test]
    fn churn_keeps_every_invariant() {
        for shards in [64, 10] {
            let configs = churn(shards, 0x5eed, 50);
            assert!(configs.iter().any(|c| c.groups.len() >= 5), "the churn should grow to several groups");
            assert!(configs.iter().any(|c| !c.pinned.is_empty()), "the churn should exercise pins");
        }
    }

    #[test]
    fn same_operations_give_identical_configs() {
        assert_eq!(churn(64, 42, 50), churn(64, 42, 50));
        assert_eq!(joined(64, 10), joined(64, 10));
    }

    #[test]
    fn config_numbers_increase_by_one_per_change() {
        let configs = joined(16, 4);
        assert_eq!(configs.iter().map(|c| c.num).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
        let last = configs.last().unwrap();
        let moved = last.move_shard(0, 4).unwrap();
        assert_eq!(moved.num, 5);
        assert_eq!(moved.leave(4).unwrap().num, 6);
        assert_eq!(last.num, 4, "operations return the next config without changing this one");
    }
}
