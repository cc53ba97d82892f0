//! The shard-map plan: which data groups exist, when one joins the meta group's shard map, when
//! one leaves it, and when a group that left may be deleted.
//!
//! Every change of the map moves shards, so the map changes only once the previous change has
//! finished everywhere (one reconfiguration at a time), and a group that left is deleted only
//! when no shard it held or was due to receive can still need it: deleting it earlier freezes
//! the shards of whichever group is still waiting on it.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use shardkv_proto::v1::GroupMembers;
use shardkv_proto::v1::Member;
use shardkv_proto::v1::ShardConfig;
use shardkv_proto::v1::ShardStatus;

/// A shard's state on the group that reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardState {
    Serving,
    /// Moving in from the peer group.
    Pulling,
    /// Being copied from the peer group ahead of the move (while that group serves it), or
    /// copied and waiting for the move.
    Copying,
    /// Frozen until the peer group confirms it installed the shard, then deleted here.
    BePulled,
}

impl ShardState {
    /// Parses the node's state string; a state this operator does not know counts as a shard in
    /// motion, so nothing proceeds on a guess.
    fn parse(state: &str) -> Self {
        match state {
            "serving" => ShardState::Serving,
            "pulling" | "catching_up" => ShardState::Pulling,
            "copying" | "copied" => ShardState::Copying,
            _ => ShardState::BePulled,
        }
    }
}

/// One shard a data group's leader reports.
#[derive(Debug, Clone, PartialEq)]
pub struct HeldShard {
    pub shard: u32,
    pub state: ShardState,
    pub peer_group: u64,
    /// Bytes received so far by a pull this group leads.
    pub moved_bytes: u64,
}

impl From<&ShardStatus> for HeldShard {
    fn from(s: &ShardStatus) -> Self {
        HeldShard {
            shard: s.shard,
            state: ShardState::parse(&s.state),
            peer_group: s.peer_group,
            moved_bytes: s.moved_bytes,
        }
    }
}

impl HeldShard {
    /// Moving into the reporting group (copied ahead, or pulled).
    pub fn moving_in(&self) -> bool {
        matches!(self.state, ShardState::Pulling | ShardState::Copying)
    }

    fn describe(&self, group_id: u64) -> String {
        match self.state {
            ShardState::Serving => format!("group {group_id} serves shard {}", self.shard),
            ShardState::Pulling => {
                format!("group {group_id} is pulling shard {} from group {}", self.shard, self.peer_group)
            }
            ShardState::Copying => {
                format!(
                    "group {group_id} is copying shard {} from group {} ahead of the move",
                    self.shard, self.peer_group
                )
            }
            ShardState::BePulled => {
                format!("group {group_id} holds shard {} until group {} has it", self.shard, self.peer_group)
            }
        }
    }
}

/// What a data group's leader reported about the shard map.
#[derive(Debug, Clone, PartialEq)]
pub struct DataLeader {
    /// The config number the group has applied.
    pub applied_config: u64,
    /// Every shard it serves, pulls or still holds for a new owner.
    pub shards: Vec<HeldShard>,
}

impl DataGroupView {
    /// Why the group's shards are not all settled (one pulling or held for a new owner), when
    /// they are not.
    pub fn shards_moving(&self) -> Option<String> {
        let leader = self.leader.as_ref()?;
        leader.shards.iter().find(|s| s.state != ShardState::Serving).map(|s| s.describe(self.group_id))
    }
}

/// What was observed of a data group, for the shard-map plan.
#[derive(Debug, Clone, PartialEq)]
pub struct DataGroupView {
    pub group_id: u64,
    /// The group's voters with their addresses when its membership is settled, None otherwise.
    pub settled_voters: Option<Vec<Member>>,
    /// None when no leader answered.
    pub leader: Option<DataLeader>,
    /// A node of the group is (or was recorded as) initialised: it may hold data.
    pub initialized: bool,
    /// Its StatefulSet is being deleted.
    pub being_deleted: bool,
}

/// Where the removal of a data group is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemovalPhase {
    /// Still in the shard map: Leave is (about to be) issued.
    Leaving,
    /// Out of the map; its shards are moving to their new owners.
    Draining,
    /// Nothing can need it any more: its objects are being deleted.
    Deleting,
}

impl RemovalPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            RemovalPhase::Leaving => "Leaving",
            RemovalPhase::Draining => "Draining",
            RemovalPhase::Deleting => "Deleting",
        }
    }

    pub fn parse(phase: &str) -> Option<Self> {
        [RemovalPhase::Leaving, RemovalPhase::Draining, RemovalPhase::Deleting]
            .into_iter()
            .find(|p| p.as_str() == phase)
    }
}

/// The recorded removal of one data group.
#[derive(Debug, Clone, PartialEq)]
pub struct Removal {
    pub group_id: u64,
    /// The config that no longer lists the group (the one its Leave produced); None while it is
    /// still in the map.
    pub leave_config: Option<u64>,
    pub phase: RemovalPhase,
}

/// Which operation a shard-map step belongs to (status and Events).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapOperation {
    JoinMeta,
    GroupScaleIn,
}

impl MapOperation {
    pub fn as_str(self) -> &'static str {
        match self {
            MapOperation::JoinMeta => "JoinMeta",
            MapOperation::GroupScaleIn => "GroupScaleIn",
        }
    }
}

/// A step on the meta group's shard map, or on a whole data group.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaStep {
    /// Add a data group to the shard map, or update its members there.
    Join(GroupMembers),
    /// Remove a data group from the shard map (its shards move to the others).
    Leave {
        group_id: u64,
    },
    /// Nothing needs the group any more: delete its StatefulSet, Services and PDB.
    DeleteGroup {
        group_id: u64,
    },
    Wait {
        group_id: u64,
        operation: MapOperation,
        reason: String,
    },
}

impl MetaStep {
    pub fn group_id(&self) -> u64 {
        match self {
            MetaStep::Join(g) => g.group_id,
            MetaStep::Leave { group_id } | MetaStep::DeleteGroup { group_id } | MetaStep::Wait { group_id, .. } => {
                *group_id
            }
        }
    }

    pub fn operation(&self) -> &'static str {
        match self {
            MetaStep::Join(_) => MapOperation::JoinMeta.as_str(),
            MetaStep::Leave { .. } | MetaStep::DeleteGroup { .. } => MapOperation::GroupScaleIn.as_str(),
            MetaStep::Wait { operation, .. } => operation.as_str(),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            MetaStep::Join(_) => "Join",
            MetaStep::Leave { .. } => "Leave",
            MetaStep::DeleteGroup { .. } => "DeleteGroup",
            MetaStep::Wait { .. } => "Wait",
        }
    }

    pub fn describe(&self) -> String {
        match self {
            MetaStep::Join(g) => {
                let ids: Vec<u64> = g.members.iter().map(|m| m.node_id).collect();
                format!("joining group {} into the shard map with nodes {ids:?}", g.group_id)
            }
            MetaStep::Leave { group_id } => format!("removing group {group_id} from the shard map"),
            MetaStep::DeleteGroup { group_id } => format!("group {group_id} is drained: deleting it"),
            MetaStep::Wait { reason, .. } => reason.clone(),
        }
    }
}

/// The shard-map steps to take and the removals to record.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MetaPlan {
    pub steps: Vec<MetaStep>,
    pub removals: Vec<Removal>,
    /// Why the shard map is changing (a change not finished everywhere, or one this plan
    /// issues); None when it is settled. Nothing else disruptive starts meanwhile.
    pub in_flight: Option<String>,
}

/// The data groups the spec's `groups` asks for: the lowest ids among the live groups (those
/// with a StatefulSet not being removed), then new ids above every id ever issued, so an id is
/// never reused for a group with different data (its retained volumes would come back).
pub fn wanted_groups(desired: u32, live: &BTreeSet<u64>, last_group_id: u64) -> BTreeSet<u64> {
    let desired = usize::try_from(desired).unwrap_or(usize::MAX);
    let mut wanted: BTreeSet<u64> = live.iter().copied().take(desired).collect();
    let mut next = live.last().copied().unwrap_or(0).max(last_group_id) + 1;
    while wanted.len() < desired {
        wanted.insert(next);
        next += 1;
    }
    wanted
}

/// Why the shard map must not change now, if it must not: a group the map involves has not
/// applied its latest config, has no leader to ask, or has a shard in motion.
fn reconfiguration_in_flight(
    config: &ShardConfig,
    groups: &[DataGroupView],
    involved: &BTreeSet<u64>,
) -> Option<String> {
    involved.iter().find_map(|id| {
        let Some(group) = groups.iter().find(|g| g.group_id == *id) else {
            return Some(format!("group {id} is in the shard map but has no StatefulSet"));
        };
        let Some(leader) = &group.leader else {
            return Some(format!("group {id} has no leader to ask"));
        };
        if leader.applied_config < config.num {
            return Some(format!("group {id} has applied config {} of {}", leader.applied_config, config.num));
        }
        group.shards_moving()
    })
}

/// Whether a group that is out of the shard map may be deleted: it applied the config that
/// dropped it and holds nothing, and every group still in the map applied that config and waits
/// for nothing from it. `Err` says what it waits for.
fn may_delete(
    leaver: &DataGroupView,
    leave_config: u64,
    config: &ShardConfig,
    groups: &[DataGroupView],
    in_map: &BTreeMap<u64, BTreeSet<(u64, &str)>>,
) -> Result<(), String> {
    let id = leaver.group_id;
    let assigned = config.shard_groups.iter().filter(|g| **g == id).count();
    if assigned > 0 {
        return Err(format!("{assigned} shards still assigned to group {id}"));
    }
    if !leaver.initialized {
        // Never initialised, so never in a config: it holds nothing and nobody waits on it.
        return Ok(());
    }
    let Some(leader) = &leaver.leader else {
        return Err(format!("group {id} has no leader to ask"));
    };
    if leader.applied_config < leave_config {
        return Err(format!(
            "group {id} has applied config {}, its leave is config {leave_config}",
            leader.applied_config
        ));
    }
    if !leader.shards.is_empty() {
        return Err(format!("group {id} still holds {} shards until their new owners have them", leader.shards.len()));
    }
    for other in groups.iter().filter(|g| in_map.contains_key(&g.group_id)) {
        let o = other.group_id;
        let Some(leader) = &other.leader else {
            return Err(format!("group {o} has no leader to ask whether it still needs group {id}"));
        };
        if leader.applied_config < leave_config {
            return Err(format!(
                "group {o} has applied config {}, group {id} left in config {leave_config}",
                leader.applied_config
            ));
        }
        if let Some(s) = leader.shards.iter().find(|s| s.peer_group == id && s.state != ShardState::Serving) {
            return Err(s.describe(o));
        }
    }
    Ok(())
}

/// Plans the shard-map steps: join each wanted data group once its membership is settled (and
/// re-join when its voters change); remove the groups not wanted, highest id first, only after
/// every wanted group joined; issue no Join or Leave while the previous change is in flight,
/// and at most one per plan; delete a removed group only when `may_delete` allows it.
/// `groups` are every observed data group, `removals` what status recorded, and `config` the
/// meta group's latest shard map (None while it has no leader: nothing changes then).
pub fn plan_meta(
    wanted: &BTreeSet<u64>,
    groups: &[DataGroupView],
    config: Option<&ShardConfig>,
    removals: &[Removal],
) -> MetaPlan {
    let Some(config) = config else {
        let steps = wanted
            .iter()
            .map(|id| MetaStep::Wait {
                group_id: *id,
                operation: MapOperation::JoinMeta,
                reason: "the shard map is unknown: the meta group has no leader".to_string(),
            })
            .collect();
        let in_flight = Some("the shard map is unknown: the meta group has no leader".to_string());
        return MetaPlan { steps, removals: removals.to_vec(), in_flight };
    };
    let in_map: BTreeMap<u64, BTreeSet<(u64, &str)>> = config
        .groups
        .iter()
        .map(|g| (g.group_id, g.members.iter().map(|m| (m.node_id, m.addr.as_str())).collect()))
        .collect();
    let previous = |id: u64| removals.iter().find(|r| r.group_id == id);
    let draining = |g: &DataGroupView| {
        !wanted.contains(&g.group_id)
            && !in_map.contains_key(&g.group_id)
            && previous(g.group_id).is_some_and(|r| r.phase != RemovalPhase::Deleting)
    };
    let involved: BTreeSet<u64> = in_map
        .keys()
        .copied()
        .chain(groups.iter().filter(|g| draining(g)).map(|g| g.group_id))
        .chain(groups.iter().filter(|g| g.leader.as_ref().is_some_and(|l| !l.shards.is_empty())).map(|g| g.group_id))
        .collect();
    let mut busy = reconfiguration_in_flight(config, groups, &involved);

    let mut plan = MetaPlan::default();
    let mut all_joined = true;
    for group in groups.iter().filter(|g| wanted.contains(&g.group_id)) {
        let id = group.group_id;
        let joined_members = in_map.get(&id);
        let step = match &group.settled_voters {
            Some(voters) => {
                let members: BTreeSet<(u64, &str)> = voters.iter().map(|m| (m.node_id, m.addr.as_str())).collect();
                if joined_members == Some(&members) {
                    continue;
                }
                all_joined = false;
                match &busy {
                    Some(reason) => MetaStep::Wait {
                        group_id: id,
                        operation: MapOperation::JoinMeta,
                        reason: format!("group {id} joins once the shard map settles: {reason}"),
                    },
                    None => {
                        busy = Some(format!("group {id} is joining"));
                        MetaStep::Join(GroupMembers { group_id: id, members: voters.clone() })
                    }
                }
            }
            None if joined_members.is_none() => {
                all_joined = false;
                MetaStep::Wait {
                    group_id: id,
                    operation: MapOperation::JoinMeta,
                    reason: format!("group {id} joins once its membership is settled"),
                }
            }
            // Already in the map; a membership change in progress re-joins once settled.
            None => continue,
        };
        plan.steps.push(step);
    }

    for group in groups.iter().rev().filter(|g| !wanted.contains(&g.group_id)) {
        let id = group.group_id;
        let recorded = previous(id);
        let (phase, leave_config, step) = if group.being_deleted
            || recorded.is_some_and(|r| r.phase == RemovalPhase::Deleting)
        {
            (RemovalPhase::Deleting, recorded.and_then(|r| r.leave_config), MetaStep::DeleteGroup { group_id: id })
        } else if in_map.contains_key(&id) {
            let wait = |reason: String| MetaStep::Wait { group_id: id, operation: MapOperation::GroupScaleIn, reason };
            let step = if !all_joined {
                wait(format!("group {id} leaves after every wanted group joined"))
            } else if let Some(reason) = &busy {
                wait(format!("group {id} leaves once the shard map settles: {reason}"))
            } else {
                busy = Some(format!("group {id} is leaving"));
                MetaStep::Leave { group_id: id }
            };
            (RemovalPhase::Leaving, None, step)
        } else {
            // The first config seen without the group is the one its Leave produced: no other
            // change is issued while a Leave is in flight.
            let leave_config = recorded.and_then(|r| r.leave_config).unwrap_or(config.num);
            match may_delete(group, leave_config, config, groups, &in_map) {
                Ok(()) => (RemovalPhase::Deleting, Some(leave_config), MetaStep::DeleteGroup { group_id: id }),
                Err(reason) => (
                    RemovalPhase::Draining,
                    Some(leave_config),
                    MetaStep::Wait { group_id: id, operation: MapOperation::GroupScaleIn, reason },
                ),
            }
        };
        plan.removals.push(Removal { group_id: id, leave_config, phase });
        plan.steps.push(step);
    }
    plan.in_flight = busy;
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64) -> Member {
        Member { node_id: id, addr: format!("n{id}:7100") }
    }

    fn config(num: u64, shard_groups: &[u64], groups: &[u64]) -> ShardConfig {
        ShardConfig {
            num,
            shard_groups: shard_groups.to_vec(),
            groups: groups.iter().map(|g| GroupMembers { group_id: *g, members: vec![member(1)] }).collect(),
            pinned: Vec::new(),
        }
    }

    fn shard(shard: u32, state: ShardState, peer_group: u64) -> HeldShard {
        HeldShard { shard, state, peer_group, moved_bytes: 0 }
    }

    /// A settled, initialised group whose leader applied `applied` and reports `shards`.
    fn group(group_id: u64, applied: u64, shards: Vec<HeldShard>) -> DataGroupView {
        DataGroupView {
            group_id,
            settled_voters: Some(vec![member(1)]),
            leader: Some(DataLeader { applied_config: applied, shards }),
            initialized: true,
            being_deleted: false,
        }
    }

    fn serving(shards: &[u32]) -> Vec<HeldShard> {
        shards.iter().map(|s| shard(*s, ShardState::Serving, 0)).collect()
    }

    fn ids(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    fn removal(group_id: u64, leave_config: Option<u64>, phase: RemovalPhase) -> Removal {
        Removal { group_id, leave_config, phase }
    }

    fn waits_for(plan: &MetaPlan, group_id: u64, needle: &str) -> bool {
        plan.steps.iter().any(
            |s| matches!(s, MetaStep::Wait { group_id: g, reason, .. } if *g == group_id && reason.contains(needle)),
        )
    }

    #[test]
    fn new_group_ids_are_never_reused() {
        assert_eq!(wanted_groups(2, &ids(&[]), 0), ids(&[1, 2]));
        assert_eq!(wanted_groups(3, &ids(&[1, 2]), 3), ids(&[1, 2, 4]), "group 3 was issued and deleted");
        assert_eq!(wanted_groups(2, &ids(&[1, 2, 3]), 3), ids(&[1, 2]), "the highest ids are removed");
        assert_eq!(wanted_groups(3, &ids(&[1, 2, 3]), 3), ids(&[1, 2, 3]), "a group being removed is wanted again");
    }

    #[test]
    fn settled_groups_join_one_at_a_time_and_rejoin_when_voters_change() {
        let mut fresh = group(2, 0, vec![]);
        fresh.settled_voters = None;
        assert!(
            plan_meta(&ids(&[1, 2]), &[group(1, 0, vec![]), fresh.clone()], None, &[])
                .steps
                .iter()
                .all(|s| matches!(s, MetaStep::Wait { operation: MapOperation::JoinMeta, .. }))
        );

        let empty = config(0, &[0, 0, 0, 0], &[]);
        let two = [group(1, 0, vec![]), group(2, 0, vec![])];
        let plan = plan_meta(&ids(&[1, 2]), &two, Some(&empty), &[]);
        assert_eq!(plan.steps[0], MetaStep::Join(GroupMembers { group_id: 1, members: vec![member(1)] }));
        assert!(waits_for(&plan, 2, "group 1 is joining"), "{plan:?}");

        let plan = plan_meta(&ids(&[1, 2]), &[group(1, 0, vec![]), fresh], Some(&empty), &[]);
        assert!(waits_for(&plan, 2, "once its membership is settled"), "{plan:?}");

        let joined = config(1, &[1, 1, 1, 1], &[1]);
        assert_eq!(plan_meta(&ids(&[1]), &[group(1, 1, serving(&[0, 1, 2, 3]))], Some(&joined), &[]).steps, []);
        let mut grown = group(1, 1, serving(&[0, 1, 2, 3]));
        grown.settled_voters = Some(vec![member(1), member(2), member(3)]);
        let plan = plan_meta(&ids(&[1]), &[grown], Some(&joined), &[]);
        assert!(matches!(&plan.steps[..], [MetaStep::Join(g)] if g.members.len() == 3), "{plan:?}");
    }

    #[test]
    fn no_join_while_a_group_has_not_applied_the_latest_config() {
        let map = config(5, &[1, 1, 1, 1], &[1]);
        let plan =
            plan_meta(&ids(&[1, 2]), &[group(1, 4, serving(&[0, 1, 2, 3])), group(2, 5, vec![])], Some(&map), &[]);
        assert!(waits_for(&plan, 2, "group 1 has applied config 4 of 5"), "{plan:?}");
    }

    #[test]
    fn no_join_while_a_shard_moves() {
        let map = config(6, &[1, 1, 2, 2], &[1, 2]);
        let moving = [
            group(1, 6, vec![shard(0, ShardState::Serving, 0), shard(2, ShardState::BePulled, 2)]),
            group(2, 6, vec![shard(2, ShardState::Pulling, 1)]),
            group(3, 6, vec![]),
        ];
        let plan = plan_meta(&ids(&[1, 2, 3]), &moving, Some(&map), &[]);
        assert!(waits_for(&plan, 3, "group 1 holds shard 2 until group 2 has it"), "{plan:?}");
        assert!(!plan.steps.iter().any(|s| matches!(s, MetaStep::Join(_))));
        assert_eq!(plan.in_flight.as_deref(), Some("group 1 holds shard 2 until group 2 has it"));
    }

    #[test]
    fn no_join_while_a_group_in_the_map_has_no_leader() {
        let map = config(6, &[1, 1, 1, 1], &[1]);
        let mut leaderless = group(1, 6, vec![]);
        leaderless.leader = None;
        let plan = plan_meta(&ids(&[1, 2]), &[leaderless, group(2, 6, vec![])], Some(&map), &[]);
        assert!(waits_for(&plan, 2, "group 1 has no leader to ask"), "{plan:?}");
    }

    #[test]
    fn groups_leave_highest_first_one_at_a_time_after_every_wanted_group_joined() {
        let map = config(4, &[1, 2, 3, 1], &[1, 2, 3]);
        let groups = [group(1, 4, serving(&[0, 3])), group(2, 4, serving(&[1])), group(3, 4, serving(&[2]))];
        let plan = plan_meta(&ids(&[1]), &groups, Some(&map), &[]);
        assert_eq!(plan.steps[0], MetaStep::Leave { group_id: 3 });
        assert!(waits_for(&plan, 2, "group 3 is leaving"), "{plan:?}");
        assert_eq!(plan.in_flight.as_deref(), Some("group 3 is leaving"));
        assert_eq!(plan.removals, [removal(3, None, RemovalPhase::Leaving), removal(2, None, RemovalPhase::Leaving)]);

        let mut unsettled = groups.clone();
        unsettled[0].settled_voters = Some(vec![member(1), member(2)]);
        let plan = plan_meta(&ids(&[1]), &unsettled, Some(&map), &[]);
        assert!(matches!(plan.steps[0], MetaStep::Join(_)));
        assert!(waits_for(&plan, 3, "after every wanted group joined"), "{plan:?}");
    }

    /// Group 2 left in config 7; group 1 took its shards. Each case breaks exactly one gate.
    fn drained() -> (ShardConfig, Vec<DataGroupView>, Vec<Removal>) {
        let map = config(7, &[1, 1, 1, 1], &[1]);
        let groups = vec![group(1, 7, serving(&[0, 1, 2, 3])), group(2, 7, vec![])];
        (map, groups, vec![removal(2, Some(7), RemovalPhase::Draining)])
    }

    fn deletes(plan: &MetaPlan) -> bool {
        plan.steps.contains(&MetaStep::DeleteGroup { group_id: 2 })
    }

    #[test]
    fn a_drained_group_is_deleted() {
        let (map, groups, removals) = drained();
        let plan = plan_meta(&ids(&[1]), &groups, Some(&map), &removals);
        assert!(deletes(&plan), "{plan:?}");
        assert_eq!(plan.removals, [removal(2, Some(7), RemovalPhase::Deleting)]);
    }

    #[test]
    fn not_deleted_before_the_leaver_applied_its_leave() {
        let (map, mut groups, removals) = drained();
        groups[1].leader.as_mut().unwrap().applied_config = 6;
        let plan = plan_meta(&ids(&[1]), &groups, Some(&map), &removals);
        assert!(!deletes(&plan) && waits_for(&plan, 2, "group 2 has applied config 6"), "{plan:?}");
        assert_eq!(plan.removals, [removal(2, Some(7), RemovalPhase::Draining)]);
    }

    #[test]
    fn not_deleted_while_the_leaver_holds_shards() {
        let (map, mut groups, removals) = drained();
        groups[1].leader.as_mut().unwrap().shards = vec![shard(3, ShardState::BePulled, 1)];
        let plan = plan_meta(&ids(&[1]), &groups, Some(&map), &removals);
        assert!(!deletes(&plan) && waits_for(&plan, 2, "still holds 1 shards"), "{plan:?}");
    }

    #[test]
    fn not_deleted_before_every_remaining_group_applied_the_leave() {
        let (map, mut groups, removals) = drained();
        groups[0].leader.as_mut().unwrap().applied_config = 6;
        let plan = plan_meta(&ids(&[1]), &groups, Some(&map), &removals);
        assert!(!deletes(&plan) && waits_for(&plan, 2, "group 1 has applied config 6"), "{plan:?}");
    }

    #[test]
    fn not_deleted_while_a_remaining_group_waits_on_it() {
        // Group 1 still holds a shard for the leaver (the leaver joined, then left before it
        // confirmed a pull): deleting the leaver would freeze that shard for good.
        let (map, mut groups, removals) = drained();
        groups[0].leader.as_mut().unwrap().shards.push(shard(9, ShardState::BePulled, 2));
        let plan = plan_meta(&ids(&[1]), &groups, Some(&map), &removals);
        assert!(!deletes(&plan) && waits_for(&plan, 2, "group 1 holds shard 9 until group 2 has it"), "{plan:?}");
    }

    #[test]
    fn not_deleted_while_a_remaining_group_has_no_leader_or_shards_are_assigned_to_it() {
        let (map, mut groups, removals) = drained();
        groups[0].leader = None;
        assert!(!deletes(&plan_meta(&ids(&[1]), &groups, Some(&map), &removals)));
        let (mut map, groups, removals) = drained();
        map.shard_groups[0] = 2;
        let plan = plan_meta(&ids(&[1]), &groups, Some(&map), &removals);
        assert!(!deletes(&plan) && waits_for(&plan, 2, "1 shards still assigned to group 2"), "{plan:?}");
    }

    #[test]
    fn the_leave_config_is_the_first_config_seen_without_the_group() {
        let (map, mut groups, _) = drained();
        groups[1].leader.as_mut().unwrap().applied_config = 6;
        let plan = plan_meta(&ids(&[1]), &groups, Some(&map), &[removal(2, None, RemovalPhase::Leaving)]);
        assert_eq!(plan.removals, [removal(2, Some(7), RemovalPhase::Draining)]);
        // A later config does not move the recorded one.
        let later = config(9, &[1, 1, 1, 1], &[1]);
        let plan = plan_meta(&ids(&[1]), &groups, Some(&later), &plan.removals);
        assert_eq!(plan.removals, [removal(2, Some(7), RemovalPhase::Draining)]);
    }

    #[test]
    fn a_draining_group_blocks_the_next_change() {
        let map = config(7, &[1, 1, 1, 1], &[1, 3]);
        let groups = [
            group(1, 7, vec![shard(0, ShardState::Pulling, 2)]),
            group(2, 7, vec![shard(0, ShardState::BePulled, 1)]),
            group(3, 7, vec![]),
        ];
        let plan = plan_meta(&ids(&[1]), &groups, Some(&map), &[removal(2, Some(7), RemovalPhase::Draining)]);
        assert!(waits_for(&plan, 3, "group 1 is pulling shard 0 from group 2"), "{plan:?}");
        assert!(!plan.steps.contains(&MetaStep::Leave { group_id: 3 }));
    }

    #[test]
    fn wanting_a_removed_group_again_cancels_its_removal_and_rejoins_it_once_settled() {
        let map = config(7, &[1, 1, 1, 1], &[1]);
        let groups =
            [group(1, 7, vec![shard(0, ShardState::Pulling, 2)]), group(2, 7, vec![shard(0, ShardState::BePulled, 1)])];
        let removals = [removal(2, Some(7), RemovalPhase::Draining)];
        let plan = plan_meta(&ids(&[1, 2]), &groups, Some(&map), &removals);
        assert_eq!(plan.removals, [], "no longer being removed");
        assert!(waits_for(&plan, 2, "group 2 joins once the shard map settles"), "{plan:?}");

        let settled = [group(1, 7, serving(&[0, 1, 2, 3])), group(2, 7, vec![])];
        let plan = plan_meta(&ids(&[1, 2]), &settled, Some(&map), &removals);
        assert!(matches!(&plan.steps[..], [MetaStep::Join(g)] if g.group_id == 2), "{plan:?}");
    }

    #[test]
    fn a_group_that_never_joined_is_deleted_at_once_and_deleting_is_never_undone() {
        let map = config(7, &[1, 1, 1, 1], &[1]);
        let mut new = group(2, 0, vec![]);
        new.initialized = false;
        new.leader = None;
        let plan = plan_meta(&ids(&[1]), &[group(1, 7, serving(&[0, 1, 2, 3])), new.clone()], Some(&map), &[]);
        assert!(deletes(&plan), "{plan:?}");

        let deleting = [removal(2, Some(7), RemovalPhase::Deleting)];
        let plan = plan_meta(&ids(&[1]), &[group(1, 7, serving(&[0])), new.clone()], Some(&map), &deleting);
        assert!(deletes(&plan), "{plan:?}");
        new.being_deleted = true;
        let plan = plan_meta(&ids(&[1]), &[group(1, 7, serving(&[0])), new], Some(&map), &[]);
        assert_eq!(plan.removals[0].phase, RemovalPhase::Deleting);
    }
}
