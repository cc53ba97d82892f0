//! The shards of one data group and the state of each: what applying a config does to them,
//! and which requests they admit. Pure: the state machine persists it, the driver reads it.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::Serialize;

use crate::meta::Config;
use crate::meta::GroupId;
use crate::meta::Member;
use crate::types::ShardId;
use crate::types::decode;

/// Where one shard stands in this group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShardState {
    /// Owned now; requests are served.
    Serving,
    /// Owned in the current config, owned by `from` in the previous one: the leader pulls it.
    Pulling { from: GroupId, members: Vec<Member> },
    /// Owned in the previous config, by `to` now: frozen until `to` confirms it installed it,
    /// then deleted.
    BePulled { to: GroupId, members: Vec<Member> },
    // New variants go last: stored states encode a variant by its position.
    /// Not owned yet: a copy is being taken from `from`, which still serves it, ahead of the
    /// move to this group at `config_num`. `begun_at`, the log index of the entry that began
    /// it, tells this copy from an earlier one a former leader began and never finished.
    Copying { config_num: u64, from: GroupId, begun_at: u64 },
    /// Not owned yet: a whole copy taken from `from` ahead of the move at `config_num`.
    Copied { config_num: u64, from: GroupId },
    /// Owned in the current config, copied from `from` while it still served it: the leader
    /// pulls only the keys `from` changed since the copy, and the sessions.
    CatchingUp { from: GroupId, members: Vec<Member> },
}

impl ShardState {
    pub fn name(&self) -> &'static str {
        match self {
            ShardState::Serving => "serving",
            ShardState::Pulling { .. } => "pulling",
            ShardState::BePulled { .. } => "be_pulled",
            ShardState::Copying { .. } => "copying",
            ShardState::Copied { .. } => "copied",
            ShardState::CatchingUp { .. } => "catching_up",
        }
    }

    /// A copy taken ahead of a move: the shard is not this group's yet.
    fn is_copy(&self) -> bool {
        matches!(self, ShardState::Copying { .. } | ShardState::Copied { .. })
    }
}

/// How a request for a shard is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Serve,
    /// The shard is being pulled into this group: retry shortly.
    MovingIn,
    /// Not this group's shard in its current config.
    WrongGroup {
        config_num: u64,
    },
}

/// Why an ApplyConfig or StartAfter entry was not applied (every replica decides the same way).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ConfigRefusal {
    /// Configs are applied one number at a time.
    #[error("the group is at config {current}; config {offered} is not the next one")]
    OutOfOrder { current: u64, offered: u64 },
    /// A shard of the current config is still moving.
    #[error("a shard of the current config is still moving")]
    Unsettled,
    /// Only a group that has applied no config and holds no shard may start at a later config.
    #[error("only a fresh group may start after a later config; this one is at config {current}")]
    NotFresh { current: u64 },
    /// A group may start only after a config it is not in: it would otherwise own shards it
    /// never received.
    #[error("the group is a member of config {config}, so it cannot start after it")]
    MemberAtStart { config: u64 },
}

/// One shard moving between this group and `group`, whose replicas are `members`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    pub shard: ShardId,
    pub group: GroupId,
    pub members: Vec<Member>,
}

/// The replicated shard state of a data group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupShards {
    pub group: GroupId,
    /// The last config applied (number 0: none yet).
    pub config: Config,
    /// Every shard this group serves, pulls or still holds; absent shards are not ours.
    pub shards: BTreeMap<ShardId, ShardState>,
    /// The first config this state went through. A group that started fresh at a later join
    /// never applied the configs before it, so it can vouch for no move in them. Last, so that
    /// the state stored before it existed reads as this one without its last 8 bytes.
    pub history_from: u64,
}

/// The stored form of [`GroupShards`] before `history_from`: a state that went through every
/// config, so it reads as `history_from` 1.
#[derive(Deserialize)]
struct GroupShardsWithoutHistory {
    group: GroupId,
    config: Config,
    shards: BTreeMap<ShardId, ShardState>,
}

impl GroupShards {
    /// Decodes stored state, of this version or of the one before `history_from`, so that a
    /// node upgraded in place (or sent a snapshot by an older node) still loads it. The two
    /// forms cannot be mistaken for each other: the decoder refuses trailing and missing bytes.
    pub fn from_bytes(bytes: &[u8]) -> std::io::Result<Self> {
        decode::<GroupShards>(bytes).or_else(|error| {
            let old = decode::<GroupShardsWithoutHistory>(bytes).map_err(|_| error)?;
            Ok(GroupShards { group: old.group, config: old.config, shards: old.shards, history_from: 1 })
        })
    }

    /// A group that has applied no config owns nothing.
    pub fn new(group: GroupId, shards: u32) -> Self {
        Self { group, config: Config::initial(shards), history_from: 1, shards: BTreeMap::new() }
    }

    /// A group outside any sharded cluster: it serves all `shards` shards, always.
    pub fn standalone(group: GroupId, shards: u32) -> Self {
        let serving = (0..shards).map(|s| (s, ShardState::Serving)).collect();
        Self { group, config: Config::initial(shards), history_from: 1, shards: serving }
    }

    pub fn config_num(&self) -> u64 {
        self.config.num
    }

    pub fn admission(&self, shard: ShardId) -> Admission {
        match self.shards.get(&shard) {
            Some(ShardState::Serving) => Admission::Serve,
            Some(ShardState::Pulling { .. } | ShardState::CatchingUp { .. }) => Admission::MovingIn,
            Some(ShardState::BePulled { .. } | ShardState::Copying { .. } | ShardState::Copied { .. }) | None => {
                Admission::WrongGroup { config_num: self.config.num }
            }
        }
    }

    /// Every shard has finished moving: the next config may be applied. Copies taken ahead of
    /// the next config's moves are not moves yet.
    pub fn settled(&self) -> bool {
        self.shards.values().all(|state| *state == ShardState::Serving || state.is_copy())
    }

    pub fn serving(&self) -> impl Iterator<Item = ShardId> + '_ {
        self.shards.iter().filter(|(_, state)| **state == ShardState::Serving).map(|(shard, _)| *shard)
    }

    /// Moves to `next`, which must be the config after the current one, with every shard
    /// settled. Shards gained from another group start Pulling, or CatchingUp when a whole copy
    /// was taken ahead of this config from that group; shards gained from nobody (the first
    /// config) start Serving empty; shards lost become BePulled. Returns the shards whose local
    /// copies no longer count (a copy cut short, or taken for another move) and must be deleted.
    pub fn apply_config(&mut self, next: Config) -> Result<Vec<ShardId>, ConfigRefusal> {
        if next.num != self.config.num + 1 {
            return Err(ConfigRefusal::OutOfOrder { current: self.config.num, offered: next.num });
        }
        if !self.settled() {
            return Err(ConfigRefusal::Unsettled);
        }
        let copies: BTreeMap<ShardId, ShardState> = {
            let (copies, owned) = std::mem::take(&mut self.shards).into_iter().partition(|(_, s)| s.is_copy());
            self.shards = owned;
            copies
        };
        let me = Some(self.group);
        let previous = &self.config;
        let mut changes = Vec::new();
        let mut discarded: Vec<ShardId> = copies.keys().copied().collect();
        for shard in 0..next.shards.len() as ShardId {
            let before = previous.shards.get(shard as usize).copied().flatten();
            let after = next.shards[shard as usize];
            let state = match (before == me, after == me) {
                (true, true) => continue,
                (false, true) => match before {
                    None => ShardState::Serving,
                    Some(from) => {
                        let members = members_of(previous, from);
                        let copied = ShardState::Copied { config_num: next.num, from };
                        if copies.get(&shard) == Some(&copied) {
                            discarded.retain(|&s| s != shard);
                            ShardState::CatchingUp { from, members }
                        } else {
                            ShardState::Pulling { from, members }
                        }
                    }
                },
                (true, false) => match after {
                    Some(to) => ShardState::BePulled { to, members: members_of(&next, to) },
                    // Only reachable if every group left, which the meta group refuses; the data
                    // would have no owner, so it is kept where it is.
                    None => continue,
                },
                (false, false) => continue,
            };
            changes.push((shard, state));
        }
        self.shards.extend(changes);
        self.config = next;
        Ok(discarded)
    }

    /// The shards `next`, the config after the current one, gives this group from another
    /// group, with that group's replicas now: what to copy before applying it.
    pub fn incoming(&self, next: &Config) -> Vec<Transfer> {
        self.moves_to(next, |before, after| (after == self.group && before != self.group).then_some(before))
            .map(|(shard, from)| Transfer { shard, group: from, members: members_of(&self.config, from) })
            .collect()
    }

    /// The shards `next` takes from this group to another one, with that group's replicas in
    /// `next`: what must be copied there before this group applies it and freezes them.
    pub fn outgoing(&self, next: &Config) -> Vec<Transfer> {
        self.moves_to(next, |before, after| (before == self.group && after != self.group).then_some(after))
            .map(|(shard, to)| Transfer { shard, group: to, members: members_of(next, to) })
            .collect()
    }

    /// Each shard owned by a group in both the current config and `next` (when it is the config
    /// after the current one) for which `pick` names a group.
    fn moves_to<'a>(
        &'a self,
        next: &'a Config,
        pick: impl Fn(GroupId, GroupId) -> Option<GroupId> + 'a,
    ) -> impl Iterator<Item = (ShardId, GroupId)> + 'a {
        let in_order = next.num == self.config.num + 1;
        let owners = self.config.shards.iter().zip(&next.shards).take(if in_order { usize::MAX } else { 0 });
        owners.enumerate().filter_map(move |(shard, owners)| match owners {
            (Some(before), Some(after)) => pick(*before, *after).map(|group| (shard as ShardId, group)),
            _ => None,
        })
    }

    /// Starts (or restarts) a copy of `shard` ahead of the move to this group at `config_num`,
    /// the next config, from the group that owns it now. False, and nothing changes, when the
    /// shard is this group's already or `config_num` is not the next config. On true, whatever
    /// this replica holds of the shard must be deleted before the copy is written.
    pub fn begin_copy(&mut self, config_num: u64, shard: ShardId, begun_at: u64) -> bool {
        let owner = self.config.shards.get(shard as usize).copied().flatten();
        let Some(from) = owner.filter(|&g| g != self.group) else { return false };
        let fresh = match self.shards.get(&shard) {
            None => true,
            Some(state) => state.is_copy(),
        };
        if config_num != self.config.num + 1 || !fresh {
            return false;
        }
        self.shards.insert(shard, ShardState::Copying { config_num, from, begun_at });
        true
    }

    /// The copy of `shard` in progress for the move at `config_num`: the log index it began at.
    pub fn copying(&self, config_num: u64, shard: ShardId) -> Option<u64> {
        match self.shards.get(&shard) {
            Some(ShardState::Copying { config_num: c, begun_at, .. }) if *c == config_num => Some(*begun_at),
            _ => None,
        }
    }

    /// Whether a chunk of the copy of `shard` begun at `begun_at` for the move at `config_num`
    /// may be written now.
    pub fn accepts_copy(&self, config_num: u64, begun_at: u64, shard: ShardId) -> bool {
        self.copying(config_num, shard) == Some(begun_at)
    }

    /// The copy of `shard` begun at `begun_at` for the move at `config_num` is whole. False for
    /// a stale or repeated completion, or one of another copy.
    pub fn finish_copy(&mut self, config_num: u64, begun_at: u64, shard: ShardId) -> bool {
        let Some(ShardState::Copying { from, .. }) = self.shards.get(&shard) else { return false };
        if self.copying(config_num, shard) != Some(begun_at) {
            return false;
        }
        let from = *from;
        self.shards.insert(shard, ShardState::Copied { config_num, from });
        true
    }

    /// Whether the previous owner of `shard` may freeze it for the move at `config_num`: this
    /// group holds a whole copy for that move, or has applied that config already (and pulls
    /// whatever it lacks).
    pub fn ready_for(&self, config_num: u64, shard: ShardId) -> bool {
        self.config.num >= config_num
            || matches!(self.shards.get(&shard), Some(ShardState::Copied { config_num: c, .. }) if *c == config_num)
    }

    /// The previous owner has no changes of `shard` since its copy: pull it whole instead. False
    /// for a stale or repeated request. On true, the copy must be deleted.
    pub fn discard_copy(&mut self, config_num: u64, shard: ShardId) -> bool {
        let Some(ShardState::CatchingUp { from, members }) = self.shards.get(&shard) else { return false };
        if config_num != self.config.num {
            return false;
        }
        let pulling = ShardState::Pulling { from: *from, members: members.clone() };
        self.shards.insert(shard, pulling);
        true
    }

    /// Whether the changes made to `shard` since its copy may be written now.
    pub fn accepts_changes(&self, config_num: u64, shard: ShardId) -> bool {
        config_num == self.config.num && matches!(self.shards.get(&shard), Some(ShardState::CatchingUp { .. }))
    }

    /// Starts a group that has applied no config (its data is new or was wiped) right after
    /// `baseline`, the config before the one it joined in, as if it had applied every config up
    /// to it owning nothing. That is true of this group: it is no member of `baseline`, so it
    /// owns none of its shards, and whatever an earlier membership of the same id held was
    /// handed on when it left. The next config makes it pull what it gains from the previous
    /// owners as usual. Replaying the older configs instead would make it pull, at its first
    /// join long ago, from groups that have long moved on, and wait for them forever.
    pub fn start_after(&mut self, baseline: Config) -> Result<(), ConfigRefusal> {
        if self.config.num != 0 || !self.shards.is_empty() {
            return Err(ConfigRefusal::NotFresh { current: self.config.num });
        }
        if baseline.groups.contains_key(&self.group) {
            return Err(ConfigRefusal::MemberAtStart { config: baseline.num });
        }
        self.history_from = baseline.num + 1;
        self.config = baseline;
        Ok(())
    }

    /// The last chunk of a pulled shard (or of its changes since a copy) was applied: the shard
    /// serves from now on. False (and nothing changes) for a stale or repeated completion.
    pub fn finish_pull(&mut self, config_num: u64, shard: ShardId) -> bool {
        self.transition(
            config_num,
            shard,
            |state| matches!(state, ShardState::Pulling { .. } | ShardState::CatchingUp { .. }),
            Some(ShardState::Serving),
        )
    }

    /// The new owner confirmed it installed the shard: drop it. False for a stale or repeated
    /// deletion, which must then delete nothing.
    pub fn finish_handoff(&mut self, config_num: u64, shard: ShardId) -> bool {
        self.transition(config_num, shard, |state| matches!(state, ShardState::BePulled { .. }), None)
    }

    /// Whether a chunk of `shard` for `config_num` may be written now.
    pub fn accepts_chunk(&self, config_num: u64, shard: ShardId) -> bool {
        config_num == self.config.num && matches!(self.shards.get(&shard), Some(ShardState::Pulling { .. }))
    }

    /// Whether this group has installed `shard` as of `config_num` (the question the previous
    /// owner asks before deleting its copy). Having moved past the config means every move of
    /// it finished; but a group that started after `config_num` never went through it, and
    /// whatever an earlier membership of its id did there is unknown to it, so it says no.
    pub fn installed(&self, config_num: u64, shard: ShardId) -> bool {
        config_num >= self.history_from
            && (self.config.num > config_num
                || (self.config.num == config_num && self.shards.get(&shard) == Some(&ShardState::Serving)))
    }

    /// Whether `shard` is frozen here for its new owner at `config_num`, so its data is final.
    pub fn handing_off(&self, config_num: u64, shard: ShardId) -> bool {
        config_num == self.config.num && matches!(self.shards.get(&shard), Some(ShardState::BePulled { .. }))
    }

    fn transition(
        &mut self,
        config_num: u64,
        shard: ShardId,
        expected: impl Fn(&ShardState) -> bool,
        next: Option<ShardState>,
    ) -> bool {
        if config_num != self.config.num || !self.shards.get(&shard).is_some_and(expected) {
            return false;
        }
        match next {
            Some(state) => self.shards.insert(shard, state),
            None => self.shards.remove(&shard),
        };
        true
    }
}

fn members_of(config: &Config, group: GroupId) -> Vec<Member> {
    config.groups.get(&group).cloned().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(group: GroupId) -> Vec<Member> {
        vec![Member { node_id: 1, addr: format!("127.0.0.{group}:7100") }]
    }

    fn configs() -> Vec<Config> {
        let c0 = Config::initial(8);
        let c1 = c0.join(1, member(1)).unwrap();
        let c2 = c1.join(2, member(2)).unwrap();
        vec![c0, c1, c2]
    }

    /// Groups 1 and 2 after group 2 joined (config 2), neither having moved anything yet.
    fn after_second_join() -> (Vec<Config>, GroupShards, GroupShards) {
        let c = configs();
        let (mut one, mut two) = (GroupShards::new(1, 8), GroupShards::new(2, 8));
        one.apply_config(c[1].clone()).unwrap();
        two.config = c[1].clone();
        one.apply_config(c[2].clone()).unwrap();
        two.apply_config(c[2].clone()).unwrap();
        (c, one, two)
    }

    #[test]
    fn the_first_config_serves_its_shards_at_once() {
        let c = configs();
        let mut group = GroupShards::new(1, 8);
        assert_eq!(group.admission(3), Admission::WrongGroup { config_num: 0 });
        group.apply_config(c[1].clone()).unwrap();
        assert_eq!(group.serving().count(), 8);
        assert!(group.settled());
    }

    #[test]
    fn a_join_freezes_the_giver_and_makes_the_taker_pull() {
        let (c, one, two) = after_second_join();
        let moved = c[2].shards_of(2);
        assert_eq!(moved.len(), 4);
        for &shard in &moved {
            assert_eq!(one.admission(shard), Admission::WrongGroup { config_num: 2 });
            assert!(one.handing_off(2, shard));
            assert_eq!(two.admission(shard), Admission::MovingIn);
            assert_eq!(two.shards[&shard], ShardState::Pulling { from: 1, members: member(1) });
        }
        for shard in c[2].shards_of(1) {
            assert_eq!(one.admission(shard), Admission::Serve, "shards that stay keep serving");
        }
        assert!(!one.settled() && !two.settled());
    }

    #[test]
    fn a_move_completes_only_through_its_own_config_and_only_once() {
        let (c, mut one, mut two) = after_second_join();
        let shard = c[2].shards_of(2)[0];
        assert!(two.accepts_chunk(2, shard));
        assert!(!two.accepts_chunk(1, shard), "a chunk fenced by another config is refused");
        assert!(!two.installed(2, shard));
        assert!(!two.finish_pull(1, shard), "stale completion");
        assert!(two.finish_pull(2, shard));
        assert!(!two.finish_pull(2, shard), "repeated completion");
        assert!(!two.accepts_chunk(2, shard), "a serving shard takes no more chunks");
        assert!(two.installed(2, shard));
        assert!(!one.finish_handoff(1, shard));
        assert!(one.finish_handoff(2, shard));
        assert!(!one.finish_handoff(2, shard), "a repeated delete deletes nothing");
        assert_eq!(one.admission(shard), Admission::WrongGroup { config_num: 2 });
    }

    #[test]
    fn configs_apply_in_order_and_only_when_settled() {
        let c = configs();
        let mut one = GroupShards::new(1, 8);
        assert_eq!(one.apply_config(c[2].clone()), Err(ConfigRefusal::OutOfOrder { current: 0, offered: 2 }));
        one.apply_config(c[1].clone()).unwrap();
        one.apply_config(c[2].clone()).unwrap();
        let c3 = c[2].join(3, member(3)).unwrap();
        assert_eq!(one.apply_config(c3.clone()), Err(ConfigRefusal::Unsettled));
        for shard in c[2].shards_of(2) {
            assert!(one.finish_handoff(2, shard));
        }
        one.apply_config(c3).unwrap();
        assert_eq!(one.config_num(), 3);
    }

    #[test]
    fn installed_stays_true_once_the_taker_moved_past_the_config() {
        let mut two = GroupShards::new(2, 8);
        two.config.num = 5;
        assert!(two.installed(4, 0), "a later config implies every earlier move finished");
        assert!(!two.installed(5, 0), "shard 0 is not served in config 5");
    }

    /// Group 2 joined at config 2 and left at 3; group 1 has owned everything since.
    fn joined_and_left() -> Vec<Config> {
        let mut c = configs();
        let c3 = c[2].leave(2).unwrap();
        let c4 = c3.join(3, member(3)).unwrap();
        c.extend([c3, c4]);
        c
    }

    #[test]
    fn a_fresh_group_starts_after_a_config_it_is_not_in_owning_nothing() {
        let c = joined_and_left();
        let c5 = c[4].join(2, member(2)).unwrap();
        let mut two = GroupShards::new(2, 8);
        two.start_after(c[4].clone()).unwrap();
        assert_eq!((two.config_num(), two.history_from), (4, 5));
        assert!(two.shards.is_empty() && two.settled());
        two.apply_config(c5.clone()).unwrap();
        let gained = c5.shards_of(2);
        assert!(!gained.is_empty());
        for shard in gained {
            let from = c[4].shards[shard as usize].unwrap();
            assert_eq!(two.shards[&shard], ShardState::Pulling { from, members: member(from) }, "pulled at the rejoin");
        }
    }

    #[test]
    fn only_a_fresh_group_starts_and_only_where_it_owned_nothing() {
        let c = joined_and_left();
        let mut two = GroupShards::new(2, 8);
        assert_eq!(two.start_after(c[2].clone()), Err(ConfigRefusal::MemberAtStart { config: 2 }));
        two.start_after(c[0].clone()).unwrap();
        assert_eq!(two.history_from, 1, "starting after config 0 is starting from the beginning");
        two.start_after(c[3].clone()).unwrap();
        assert_eq!(two.start_after(c[4].clone()), Err(ConfigRefusal::NotFresh { current: 3 }));
        let mut standalone = GroupShards::standalone(2, 8);
        assert_eq!(standalone.start_after(c[3].clone()), Err(ConfigRefusal::NotFresh { current: 0 }));
    }

    #[test]
    fn a_group_vouches_for_no_install_before_it_started() {
        let c = joined_and_left();
        let mut two = GroupShards::new(2, 8);
        two.start_after(c[4].clone()).unwrap();
        two.config.num = 9;
        assert!(!two.installed(2, 0), "what the earlier group 2 did at config 2 is unknown here");
        assert!(!two.installed(4, 0));
        assert!(two.installed(5, 0), "config 5 was applied here and settled");
    }

    #[test]
    fn a_standalone_group_serves_everything() {
        let group = GroupShards::standalone(0, 4);
        assert!((0..4).all(|s| group.admission(s) == Admission::Serve));
        assert!(group.settled());
    }

    #[test]
    fn state_stored_before_history_from_still_loads() {
        #[derive(Serialize)]
        struct Stored<'a> {
            group: GroupId,
            config: &'a Config,
            shards: &'a BTreeMap<ShardId, ShardState>,
        }
        let (c, one, _) = after_second_join();
        let old = crate::types::encode(&Stored { group: one.group, config: &one.config, shards: &one.shards });
        let loaded = GroupShards::from_bytes(&old).unwrap();
        assert_eq!(loaded, GroupShards { history_from: 1, ..one.clone() });
        assert_eq!(loaded.config, c[2]);
        let mut fresh = one.clone();
        fresh.history_from = 5;
        assert_eq!(GroupShards::from_bytes(&crate::types::encode(&fresh)).unwrap(), fresh);
        assert!(GroupShards::from_bytes(&old[..old.len() - 1]).is_err());
    }

    /// Group 2 started after config 1 (group 1 owning everything), about to apply config 2.
    fn before_second_join() -> (Vec<Config>, GroupShards, GroupShards) {
        let c = configs();
        let mut one = GroupShards::new(1, 8);
        one.apply_config(c[1].clone()).unwrap();
        let mut two = GroupShards::new(2, 8);
        two.start_after(c[1].clone()).unwrap();
        (c, one, two)
    }

    #[test]
    fn the_next_config_names_what_to_copy_in_and_what_to_wait_for() {
        let (c, one, two) = before_second_join();
        let gained = c[2].shards_of(2);
        let incoming: Vec<_> = gained.iter().map(|&shard| Transfer { shard, group: 1, members: member(1) }).collect();
        assert_eq!(two.incoming(&c[2]), incoming);
        let outgoing: Vec<_> = gained.iter().map(|&shard| Transfer { shard, group: 2, members: member(2) }).collect();
        assert_eq!(one.outgoing(&c[2]), outgoing);
        assert!(one.incoming(&c[2]).is_empty() && two.outgoing(&c[2]).is_empty());
        assert!(two.incoming(&c[1]).is_empty(), "only the config after the current one counts");
        let c3 = c[2].join(3, member(3)).unwrap();
        assert!(one.outgoing(&c3).is_empty(), "a config two ahead is not the next one");
    }

    #[test]
    fn a_whole_copy_taken_ahead_makes_the_move_catch_up_and_a_partial_one_is_discarded() {
        let (c, mut one, mut two) = before_second_join();
        let gained = c[2].shards_of(2);
        let (whole, partial) = (gained[0], gained[1]);
        assert!(!two.begin_copy(3, whole, 10), "only for the next config");
        assert!(!one.begin_copy(2, whole, 10), "not a shard this group owns already");
        for &shard in &gained[..2] {
            assert!(two.begin_copy(2, shard, 10));
            assert!(two.accepts_copy(2, 10, shard) && !two.accepts_copy(3, 10, shard));
            assert_eq!(two.admission(shard), Admission::WrongGroup { config_num: 1 }, "a copy serves nothing");
        }
        assert!(!two.ready_for(2, whole));
        assert!(!two.finish_copy(3, 10, whole), "stale completion");
        assert!(two.begin_copy(2, whole, 20), "a copy may be started over, by another leader");
        assert!(!two.accepts_copy(2, 10, whole), "chunks of the copy begun before are refused");
        assert!(!two.finish_copy(2, 10, whole), "and so is its completion: it may be partial");
        assert!(two.finish_copy(2, 20, whole));
        assert!(!two.finish_copy(2, 20, whole), "repeated completion");
        assert!(!two.accepts_copy(2, 20, whole), "a whole copy takes no more chunks");
        assert!(two.ready_for(2, whole) && !two.ready_for(2, partial));
        assert!(two.settled(), "copies ahead of a config do not hold it back");
        assert!(two.begin_copy(2, whole, 30), "a whole copy may be started over too");
        assert!(two.finish_copy(2, 30, whole));

        assert_eq!(two.apply_config(c[2].clone()), Ok(vec![partial]), "the partial copy is deleted");
        assert_eq!(two.shards[&whole], ShardState::CatchingUp { from: 1, members: member(1) });
        assert_eq!(two.shards[&partial], ShardState::Pulling { from: 1, members: member(1) });
        assert_eq!(two.admission(whole), Admission::MovingIn);
        assert!(two.ready_for(2, partial), "past the config, the giver need not wait");
        assert!(two.accepts_changes(2, whole) && !two.accepts_changes(2, partial) && !two.accepts_changes(1, whole));
        assert!(!two.accepts_chunk(2, whole), "a caught-up shard takes changes, not whole chunks");
        let mut without_changes = two.clone();
        assert!(!without_changes.discard_copy(1, whole) && !without_changes.discard_copy(2, partial));
        assert!(without_changes.discard_copy(2, whole));
        assert!(without_changes.accepts_chunk(2, whole), "then it is pulled whole");
        assert!(two.finish_pull(2, whole));
        assert_eq!(two.admission(whole), Admission::Serve);
        one.apply_config(c[2].clone()).unwrap();
        assert!(one.handing_off(2, whole));
    }

    #[test]
    fn a_copy_for_a_move_that_does_not_happen_is_discarded() {
        let (c, _, mut two) = before_second_join();
        let shard = c[2].shards_of(2)[0];
        assert!(two.begin_copy(2, shard, 10));
        assert!(two.finish_copy(2, 10, shard));
        two.shards.insert(shard, ShardState::Copied { config_num: 2, from: 3 });
        assert_eq!(two.apply_config(c[2].clone()), Ok(vec![shard]), "copied from a group that does not give it");
        assert_eq!(two.shards[&shard], ShardState::Pulling { from: 1, members: member(1) });
    }
}
