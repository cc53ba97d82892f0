//! The ShardCluster status as a pure function of what a reconcile observed and planned.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use shardkv_proto::v1::ShardConfig;

use std::collections::BTreeSet;

use crate::crd::GroupRemovalStatus;
use crate::crd::GroupStatus;
use crate::crd::MemberStatus;
use crate::crd::OperationStatus;
use crate::crd::PodRestart;
use crate::crd::RolloutHalt;
use crate::crd::RolloutStatus;
use crate::crd::ShardClusterStatus;
use crate::crd::ShardMoveStatus;
use crate::plan::GroupPlan;
use crate::plan::GroupStep;
use crate::plan::GroupView;
use crate::plan::HeldShard;
use crate::plan::MetaStep;
use crate::plan::Removal;
use crate::plan::RemovalPhase;
use crate::plan::RolloutStep;
use crate::resources::META_GROUP;

pub const AVAILABLE: &str = "Available";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
pub const PAUSED: &str = "Paused";
/// Phases of `status.rollout`.
pub const ROLLOUT_ROLLING: &str = "Rolling";
pub const ROLLOUT_PAUSED: &str = "Paused";
pub const ROLLOUT_HALTED: &str = "Halted";
pub const ROLLOUT_COMPLETE: &str = "Complete";
/// Restarts kept in `status.rollout.restarts`.
const RESTARTS_KEPT: usize = 10;

/// One group as observed and planned in this reconcile.
#[derive(Debug, Clone)]
pub struct ObservedGroup {
    pub view: GroupView,
    pub plan: GroupPlan,
    pub statefulset: String,
    /// Pod-template revision label of each pod, by ordinal.
    pub revisions: Vec<(u32, String)>,
    /// The StatefulSet's update revision: what every pod should run.
    pub update_revision: Option<String>,
    /// The group was initialised, now or in an earlier reconcile.
    pub initialized: bool,
}

/// Everything the status is computed from.
#[derive(Debug, Clone)]
pub struct Observed<'a> {
    pub generation: Option<i64>,
    pub paused: bool,
    /// Data groups the spec asks for.
    pub wanted: &'a BTreeSet<u64>,
    pub groups: &'a [ObservedGroup],
    pub config: Option<&'a ShardConfig>,
    pub meta_steps: &'a [MetaStep],
    /// Removals as planned in this reconcile.
    pub removals: &'a [Removal],
    /// The highest data group id ever created, this reconcile included.
    pub last_group_id: u64,
    pub rollout: &'a RolloutObserved,
    pub previous: Option<&'a ShardClusterStatus>,
    pub now: Timestamp,
}

/// The rollout as planned and acted on in this reconcile.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutObserved {
    pub step: RolloutStep,
    pub updated: u32,
    pub total: u32,
    /// The revision the rolled group's pods leave, and the one they move to.
    pub from_revision: Option<String>,
    pub to_revision: Option<String>,
    /// The pod restarted in this reconcile.
    pub restart: Option<PodRestart>,
    /// The halt that holds (recorded now or before).
    pub halt: Option<RolloutHalt>,
}

fn rollout_status(observed: &Observed<'_>) -> RolloutStatus {
    let r = observed.rollout;
    let previous = observed.previous.and_then(|p| p.rollout.as_ref());
    let phase = match r.step {
        RolloutStep::Complete => ROLLOUT_COMPLETE,
        RolloutStep::Halted { .. } => ROLLOUT_HALTED,
        RolloutStep::Paused { .. } => ROLLOUT_PAUSED,
        RolloutStep::Wait { .. } | RolloutStep::TransferLeader { .. } | RolloutStep::Restart { .. } => ROLLOUT_ROLLING,
    };
    let complete = phase == ROLLOUT_COMPLETE;
    let was_complete = previous.is_none_or(|p| p.phase == ROLLOUT_COMPLETE);
    let started_at = match (complete, was_complete) {
        (true, _) | (false, false) => previous.and_then(|p| p.started_at.clone()),
        (false, true) => Some(Time(observed.now)),
    };
    let finished_at = match (complete, was_complete) {
        (true, true) => previous.and_then(|p| p.finished_at.clone()),
        (true, false) => Some(Time(observed.now)),
        (false, _) => None,
    };
    let mut restarts: Vec<PodRestart> = previous.map(|p| p.restarts.clone()).unwrap_or_default();
    restarts.extend(r.restart.clone());
    let excess = restarts.len().saturating_sub(RESTARTS_KEPT);
    restarts.drain(..excess);
    RolloutStatus {
        phase: phase.to_string(),
        progress: format!("{}/{}", r.updated, r.total),
        updated: r.updated,
        total: r.total,
        group: r.step.group_id(),
        message: (r.step != RolloutStep::Complete).then(|| r.step.describe()),
        from_revision: r.from_revision.clone(),
        to_revision: r.to_revision.clone(),
        halt: r.halt.clone(),
        restarts,
        started_at,
        finished_at,
    }
}

fn group_status(group: &ObservedGroup, config: Option<&ShardConfig>) -> GroupStatus {
    let leader = group.view.leader();
    let members = group
        .view
        .pods
        .iter()
        .map(|pod| {
            let id = pod.node_id();
            let member = leader.as_ref().and_then(|l| l.status.members.iter().find(|m| m.node_id == id));
            MemberStatus {
                pod: format!("{}-{}", group.statefulset, pod.ordinal),
                node_id: id,
                role: member.map_or("none".to_string(), |m| m.role.clone()),
                ready: pod.ready,
                lag: leader.as_ref().and_then(|l| l.lag(id)),
                revision: group.revisions.iter().find(|(o, _)| *o == pod.ordinal).map(|(_, r)| r.clone()),
                version: pod.status.as_ref().map(|s| s.version.clone()).filter(|v| !v.is_empty()),
            }
        })
        .collect();
    GroupStatus {
        group_id: group.view.group_id,
        statefulset: group.statefulset.clone(),
        initialized: group.initialized,
        joined: config.is_some_and(|c| c.groups.iter().any(|g| g.group_id == group.view.group_id)),
        leader: leader.map(|l| crate::resources::node_id(l.ordinal)),
        ready_replicas: group.view.pods.iter().filter(|p| p.ready).count() as i32,
        updated_replicas: match &group.update_revision {
            Some(update) => group.revisions.iter().filter(|(_, r)| r == update).count() as i32,
            None => group.revisions.len() as i32,
        },
        versions: group
            .view
            .pods
            .iter()
            .filter_map(|p| p.status.as_ref().map(|s| s.version.clone()))
            .filter(|v| !v.is_empty())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect(),
        members,
    }
}

fn operations(observed: &Observed<'_>) -> Vec<OperationStatus> {
    let group_ops = observed.groups.iter().filter_map(|g| {
        g.plan.step.operation().map(|operation| OperationStatus {
            group_id: g.view.group_id,
            operation: operation.as_str().to_string(),
            step: g.plan.step.name().to_string(),
            message: g.plan.step.describe(),
        })
    });
    let meta_ops = observed.meta_steps.iter().map(|s| OperationStatus {
        group_id: s.group_id(),
        operation: s.operation().to_string(),
        step: s.name().to_string(),
        message: s.describe(),
    });
    let rollout_op = match &observed.rollout.step {
        RolloutStep::Complete | RolloutStep::Halted { .. } => None,
        step => Some(OperationStatus {
            group_id: step.group_id().unwrap_or_default(),
            operation: "Rollout".to_string(),
            step: step.name().to_string(),
            message: step.describe(),
        }),
    };
    group_ops.chain(meta_ops).chain(rollout_op).collect()
}

/// A condition, keeping the previous transition time when its status did not change.
fn condition(observed: &Observed<'_>, type_: &str, status: bool, reason: &str, message: String) -> Condition {
    let status = if status { "True" } else { "False" }.to_string();
    let previous = observed.previous.and_then(|p| p.conditions.iter().find(|c| c.type_ == type_));
    let last_transition_time = match previous {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => Time(observed.now),
    };
    Condition {
        type_: type_.to_string(),
        status,
        reason: reason.to_string(),
        message,
        observed_generation: observed.generation,
        last_transition_time,
    }
}

/// Computes the status to write.
pub fn build(observed: &Observed<'_>) -> ShardClusterStatus {
    let groups: Vec<GroupStatus> = observed.groups.iter().map(|g| group_status(g, observed.config)).collect();
    let operations = operations(observed);

    let wanted = |g: &&GroupStatus| g.group_id == META_GROUP || observed.wanted.contains(&g.group_id);
    let unavailable: Vec<String> = groups
        .iter()
        .filter(wanted)
        .filter_map(|g| {
            if g.leader.is_none() {
                Some(format!("group {} has no leader", g.group_id))
            } else if g.group_id != META_GROUP && !g.joined {
                Some(format!("group {} is not in the shard map", g.group_id))
            } else {
                None
            }
        })
        .collect();
    // A group being removed is reported by its removal, not as needing attention.
    let blocked: Vec<String> = observed
        .groups
        .iter()
        .filter(|g| g.view.group_id == META_GROUP || observed.wanted.contains(&g.view.group_id))
        .filter_map(|g| match &g.plan.step {
            GroupStep::Blocked { reason } => Some(format!("group {}: {reason}", g.view.group_id)),
            _ => None,
        })
        .collect();
    let initialized_without_leader: Vec<String> = groups
        .iter()
        .filter(wanted)
        .filter(|g| g.initialized && g.leader.is_none())
        .map(|g| format!("group {} lost its leader", g.group_id))
        .collect();
    let halted = match &observed.rollout.step {
        RolloutStep::Halted { reason, .. } => Some(format!("rollout halted: {reason}")),
        _ => None,
    };
    // Deleted while it still held shards (its StatefulSet deleted by hand): those shards can
    // no longer move, and a person has to know.
    let deleted_holding: Vec<String> = observed
        .removals
        .iter()
        .filter(|r| r.phase == RemovalPhase::Deleting)
        .filter_map(|r| {
            let held =
                observed.groups.iter().find(|g| g.view.group_id == r.group_id)?.view.leader()?.status.shards.len();
            (held > 0).then(|| format!("group {} is being deleted while it still holds {held} shards", r.group_id))
        })
        .collect();
    let degraded: Vec<String> =
        blocked.into_iter().chain(initialized_without_leader).chain(deleted_holding).chain(halted).collect();

    let available = unavailable.is_empty();
    let mut conditions = vec![
        if available {
            condition(
                observed,
                AVAILABLE,
                true,
                "AllGroupsServing",
                "every group has a leader and is in the shard map".into(),
            )
        } else {
            condition(observed, AVAILABLE, false, "GroupsUnavailable", unavailable.join("; "))
        },
        match (observed.paused, operations.first()) {
            (true, _) => condition(observed, PROGRESSING, false, "Paused", "spec.paused is true".into()),
            (false, Some(op)) => condition(
                observed,
                PROGRESSING,
                true,
                &op.operation,
                operations
                    .iter()
                    .map(|o| format!("group {}: {}", o.group_id, o.message))
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            (false, None) => condition(observed, PROGRESSING, false, "Settled", "no operation in flight".into()),
        },
        if degraded.is_empty() {
            condition(observed, DEGRADED, false, "Healthy", "no group needs attention".into())
        } else {
            condition(observed, DEGRADED, true, "GroupNeedsAttention", degraded.join("; "))
        },
    ];
    if observed.paused {
        conditions.push(condition(
            observed,
            PAUSED,
            true,
            "SpecPaused",
            "spec.paused is true: the operator changes nothing until it is false".into(),
        ));
    }

    let phase = if observed.paused {
        "Paused"
    } else if !degraded.is_empty() {
        "Degraded"
    } else if operations.iter().any(|o| o.operation == "Bootstrap") || groups.iter().any(|g| !g.initialized) {
        "Bootstrapping"
    } else if operations.iter().all(|o| o.operation == "Rollout") && !operations.is_empty() {
        "Rolling"
    } else if !operations.is_empty() {
        "Scaling"
    } else if available {
        "Running"
    } else {
        "Creating"
    };

    let group_removals = removals(observed);
    ShardClusterStatus {
        observed_generation: observed.generation,
        phase: Some(phase.to_string()),
        conditions,
        config_num: observed.config.map(|c| c.num),
        ready_replicas: groups.iter().map(|g| g.ready_replicas).sum(),
        operation: summary(observed.paused, &operations, &group_removals, observed.rollout),
        rollout: Some(rollout_status(observed)),
        shards_in_flight: held_shards(observed).filter(|(_, s)| s.moving_in()).count() as u32,
        groups,
        operations,
        group_removals,
        last_group_id: observed.last_group_id,
        // The certificate step reports this itself.
        tls: None,
    }
}

/// Every shard each data group's leader reports, with the group.
fn held_shards<'a>(observed: &'a Observed<'_>) -> impl Iterator<Item = (u64, HeldShard)> + 'a {
    observed.groups.iter().filter(|g| g.view.group_id != META_GROUP).flat_map(|g| {
        let shards: Vec<HeldShard> =
            g.view.leader().map(|l| l.status.shards.iter().map(HeldShard::from).collect()).unwrap_or_default();
        shards.into_iter().map(move |s| (g.view.group_id, s))
    })
}

/// The removals as planned, with what was observed of their progress: shards the leaver still
/// holds, and bytes its shards' new owners received (a move's last figure is kept once it is
/// done, so the total only grows).
fn removals(observed: &Observed<'_>) -> Vec<GroupRemovalStatus> {
    observed
        .removals
        .iter()
        .map(|removal| {
            let id = removal.group_id;
            let previous = observed.previous.and_then(|p| p.group_removals.iter().find(|r| r.group_id == id)).cloned();
            let mut moves = previous.as_ref().map(|p| p.moves.clone()).unwrap_or_default();
            for (to_group, shard) in held_shards(observed).filter(|(_, s)| s.peer_group == id) {
                if !shard.moving_in() {
                    continue;
                }
                match moves.iter_mut().find(|m| m.shard == shard.shard && m.to_group == to_group) {
                    Some(m) => m.bytes = m.bytes.max(shard.moved_bytes),
                    None => moves.push(ShardMoveStatus { shard: shard.shard, to_group, bytes: shard.moved_bytes }),
                }
            }
            moves.sort_by_key(|m| (m.shard, m.to_group));
            let leaver = observed.groups.iter().find(|g| g.view.group_id == id);
            let shards_held = leaver
                .and_then(|g| g.view.leader())
                .map(|l| l.status.shards.len() as u64)
                .or_else(|| previous.as_ref().and_then(|p| p.shards_held));
            GroupRemovalStatus {
                group_id: id,
                phase: removal.phase.as_str().to_string(),
                leave_config: removal.leave_config,
                shards_held,
                bytes_moved: moves.iter().map(|m| m.bytes).sum(),
                moves,
                started_at: previous.and_then(|p| p.started_at).or(Some(Time(observed.now))),
            }
        })
        .collect()
}

/// One line for `kubectl get`: the removal under way, else the first operation in flight.
fn summary(
    paused: bool,
    operations: &[OperationStatus],
    removals: &[GroupRemovalStatus],
    rollout: &RolloutObserved,
) -> Option<String> {
    if paused {
        return Some("paused".to_string());
    }
    if let RolloutStep::Halted { group_id, .. } = &rollout.step {
        return Some(format!("rollout halted at group {group_id} ({}/{} updated)", rollout.updated, rollout.total));
    }
    if let Some(r) = removals.iter().find(|r| r.phase != RemovalPhase::Leaving.as_str()).or(removals.first()) {
        let held = r.shards_held.map_or("unknown".to_string(), |n| n.to_string());
        return Some(format!(
            "removing group {}: {} ({held} shards held, {} bytes moved)",
            r.group_id, r.phase, r.bytes_moved
        ));
    }
    operations.first().map(|o| format!("{} group {}: {}", o.operation, o.group_id, o.step))
}

#[cfg(test)]
mod tests {
    use shardkv_proto::v1::GroupMembers;
    use shardkv_proto::v1::ReplicaStatus;
    use shardkv_proto::v1::ShardStatus;
    use shardkv_proto::v1::StatusResponse;

    use super::*;
    use crate::plan::Operation;
    use crate::plan::PodView;

    fn settled_group(group_id: u64) -> ObservedGroup {
        let leader = StatusResponse {
            state: "Leader".into(),
            initialized: true,
            term: 1,
            last_log_index: 10,
            members: vec![ReplicaStatus { node_id: 1, addr: "a".into(), role: "voter".into(), matched_index: Some(7) }],
            ..Default::default()
        };
        ObservedGroup {
            view: GroupView {
                group_id,
                desired_replicas: 1,
                recorded_initialized: true,
                statefulset_replicas: Some(1),
                pods: vec![PodView { ordinal: 0, peer_addr: "a".into(), ready: true, status: Some(leader) }],
            },
            plan: GroupPlan { step: GroupStep::Settled, statefulset_replicas: 1 },
            statefulset: format!("demo-g{group_id}"),
            revisions: vec![(0, "rev-1".into())],
            update_revision: Some("rev-1".into()),
            initialized: true,
        }
    }

    static NO_DATA_GROUPS: BTreeSet<u64> = BTreeSet::new();
    const SETTLED: RolloutObserved = RolloutObserved {
        step: RolloutStep::Complete,
        updated: 2,
        total: 2,
        from_revision: None,
        to_revision: None,
        restart: None,
        halt: None,
    };

    fn observed<'a>(
        groups: &'a [ObservedGroup],
        config: Option<&'a ShardConfig>,
        wanted: &'a BTreeSet<u64>,
    ) -> Observed<'a> {
        Observed {
            generation: Some(4),
            paused: false,
            wanted,
            groups,
            config,
            meta_steps: &[],
            removals: &[],
            last_group_id: 1,
            rollout: &SETTLED,
            previous: None,
            now: Timestamp::UNIX_EPOCH,
        }
    }

    fn find<'a>(status: &'a ShardClusterStatus, type_: &str) -> &'a Condition {
        status.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn settled_joined_cluster_is_available_and_running() {
        let groups = [settled_group(0), settled_group(1)];
        let config = ShardConfig {
            num: 3,
            shard_groups: vec![1],
            groups: vec![GroupMembers { group_id: 1, members: vec![] }],
            pinned: vec![],
        };
        let wanted = BTreeSet::from([1]);
        let status = build(&observed(&groups, Some(&config), &wanted));
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(status.operation, None);
        assert_eq!(status.config_num, Some(3));
        assert_eq!(status.observed_generation, Some(4));
        assert_eq!(find(&status, AVAILABLE).status, "True");
        assert_eq!(find(&status, PROGRESSING).status, "False");
        let member = &status.groups[1].members[0];
        assert_eq!((member.role.as_str(), member.lag, member.revision.as_deref()), ("voter", Some(3), Some("rev-1")));
    }

    #[test]
    fn an_unjoined_group_is_not_available_and_a_step_is_progress() {
        let mut groups = [settled_group(0), settled_group(1)];
        groups[1].plan.step = GroupStep::Wait { operation: Operation::ScaleUp, reason: "learner 2 catching up".into() };
        let wanted = BTreeSet::from([1]);
        let status = build(&observed(&groups, None, &wanted));
        let available = find(&status, AVAILABLE);
        assert_eq!(
            (available.status.as_str(), available.message.as_str()),
            ("False", "group 1 is not in the shard map")
        );
        let progressing = find(&status, PROGRESSING);
        assert_eq!((progressing.status.as_str(), progressing.reason.as_str()), ("True", "ScaleUp"));
        assert_eq!(status.operations[0].message, "learner 2 catching up");
        assert_eq!(status.operation.as_deref(), Some("ScaleUp group 1: Wait"));
        assert_eq!(status.phase.as_deref(), Some("Scaling"));
    }

    #[test]
    fn blocked_group_is_degraded_and_paused_says_so() {
        let mut groups = [settled_group(0)];
        groups[0].plan.step = GroupStep::Blocked { reason: "volumes lost".into() };
        let o = observed(&groups, None, &NO_DATA_GROUPS);
        let status = build(&o);
        assert_eq!(find(&status, DEGRADED).status, "True");
        assert_eq!(status.phase.as_deref(), Some("Degraded"));
        let paused = build(&Observed { paused: true, ..o });
        assert_eq!(find(&paused, PAUSED).status, "True");
        assert_eq!(find(&paused, PROGRESSING).reason, "Paused");
        assert_eq!(paused.phase.as_deref(), Some("Paused"));
    }

    #[test]
    fn transition_time_is_kept_while_a_condition_holds() {
        let groups = [settled_group(0)];
        let mut o = observed(&groups, None, &NO_DATA_GROUPS);
        let first = build(&o);
        let later = Timestamp::from_second(1_000).unwrap();
        o.previous = Some(&first);
        o.now = later;
        let second = build(&o);
        assert_eq!(find(&second, AVAILABLE).last_transition_time, Time(Timestamp::UNIX_EPOCH));
        o.paused = true;
        let third = build(&o);
        assert_eq!(find(&third, PROGRESSING).last_transition_time, Time(Timestamp::UNIX_EPOCH), "still False");
        assert_eq!(find(&third, PAUSED).last_transition_time, Time(later), "new condition");
    }

    fn shard(shard: u32, state: &str, peer_group: u64, moved_bytes: u64) -> ShardStatus {
        ShardStatus { shard, state: state.into(), peer_group, moved_items: 0, moved_bytes }
    }

    #[test]
    fn a_removal_reports_shards_held_and_bytes_moved_which_only_grow() {
        let mut groups = [settled_group(0), settled_group(1), settled_group(2)];
        groups[1].view.pods[0].status.as_mut().unwrap().shards =
            vec![shard(0, "serving", 0, 0), shard(1, "pulling", 2, 300), shard(2, "pulling", 2, 100)];
        groups[2].view.pods[0].status.as_mut().unwrap().shards =
            vec![shard(1, "be_pulled", 1, 0), shard(2, "be_pulled", 1, 0), shard(3, "be_pulled", 1, 0)];
        // A group being removed that lost its leader is not Degraded.
        groups[2].plan.step = GroupStep::Blocked { reason: "ignored while removed".into() };
        let wanted = BTreeSet::from([1]);
        let removals = [Removal { group_id: 2, leave_config: Some(7), phase: RemovalPhase::Draining }];
        let mut o = observed(&groups, None, &wanted);
        o.removals = &removals;
        let first = build(&o);
        let r = &first.group_removals[0];
        assert_eq!(
            (r.phase.as_str(), r.leave_config, r.shards_held, r.bytes_moved),
            ("Draining", Some(7), Some(3), 400)
        );
        assert_eq!(first.shards_in_flight, 2);
        assert_eq!(first.operation.as_deref(), Some("removing group 2: Draining (3 shards held, 400 bytes moved)"));
        assert_eq!(find(&first, DEGRADED).status, "False");
        let deleting = [Removal { group_id: 2, leave_config: Some(7), phase: RemovalPhase::Deleting }];
        let mut o = observed(&groups, None, &wanted);
        o.removals = &deleting;
        let deleted_by_hand = build(&o);
        assert_eq!(find(&deleted_by_hand, DEGRADED).message, "group 2 is being deleted while it still holds 3 shards");

        // Shard 1 finished (no longer pulling), shard 2 progressed: 300 is kept, 100 -> 250.
        groups[1].view.pods[0].status.as_mut().unwrap().shards =
            vec![shard(0, "serving", 0, 0), shard(1, "serving", 0, 0), shard(2, "pulling", 2, 250)];
        groups[2].view.pods[0].status.as_mut().unwrap().shards = vec![shard(2, "be_pulled", 1, 0)];
        let later = Timestamp::from_second(60).unwrap();
        let mut o = observed(&groups, None, &wanted);
        o.removals = &removals;
        o.previous = Some(&first);
        o.now = later;
        let second = build(&o);
        let r = &second.group_removals[0];
        assert_eq!((r.shards_held, r.bytes_moved, r.moves.len()), (Some(1), 550, 2));
        assert_eq!(r.started_at, Some(Time(Timestamp::UNIX_EPOCH)), "kept from the first record");
        assert_eq!(second.shards_in_flight, 1);
    }

    #[test]
    fn a_rollout_reports_progress_keeps_its_start_and_a_halt_is_degraded() {
        let groups = [settled_group(0), settled_group(1)];
        let wanted = BTreeSet::from([1]);
        let restart = PodRestart {
            pod: "demo-g1-2".into(),
            clean: true,
            deleted_at: Some(Time(Timestamp::UNIX_EPOCH)),
            ..Default::default()
        };
        let rolling = RolloutObserved {
            step: RolloutStep::Restart { group_id: 1, ordinal: 2, uid: "u".into(), down: false },
            updated: 4,
            total: 6,
            from_revision: Some("rev-1".into()),
            to_revision: Some("rev-2".into()),
            restart: Some(restart),
            halt: None,
        };
        let mut o = observed(&groups, None, &wanted);
        o.rollout = &rolling;
        let first = build(&o);
        let r = first.rollout.as_ref().unwrap();
        assert_eq!((r.phase.as_str(), r.progress.as_str(), r.group), ("Rolling", "4/6", Some(1)));
        assert_eq!(
            (r.started_at.clone(), r.finished_at.clone(), r.restarts.len()),
            (Some(Time(Timestamp::UNIX_EPOCH)), None, 1)
        );
        assert_eq!(first.operations.last().unwrap().operation, "Rollout");

        let halted = RolloutObserved {
            step: RolloutStep::Halted { group_id: 1, reason: "pod 2 not Ready".into() },
            restart: None,
            ..rolling.clone()
        };
        let later = Timestamp::from_second(100).unwrap();
        let mut o = observed(&groups, None, &wanted);
        o.rollout = &halted;
        o.previous = Some(&first);
        o.now = later;
        let second = build(&o);
        let r = second.rollout.as_ref().unwrap();
        assert_eq!(
            (r.phase.as_str(), r.started_at.clone(), r.restarts.len()),
            ("Halted", Some(Time(Timestamp::UNIX_EPOCH)), 1)
        );
        assert_eq!(find(&second, DEGRADED).message, "rollout halted: pod 2 not Ready");
        assert_eq!(second.operation.as_deref(), Some("rollout halted at group 1 (4/6 updated)"));

        let mut o = observed(&groups, None, &wanted);
        o.previous = Some(&second);
        o.now = later;
        let done = build(&o);
        let r = done.rollout.as_ref().unwrap();
        assert_eq!((r.phase.as_str(), r.finished_at.clone()), ("Complete", Some(Time(later))));
    }
}
