//! The rollout plan: which pod restarts next so that every node ends on its StatefulSet's
//! update revision (the StatefulSets are `OnDelete`: nothing restarts unless the operator
//! deletes it).
//!
//! One pod in the whole cluster at a time, groups in the order given (meta first, then data
//! groups by id), and within a group the pods that are down already first, then followers from
//! the highest ordinal, the leader last once leadership moved to an updated voter. Before each
//! pod every group must be healthy (a leader, every voter caught up, every pod Ready), and the
//! group must have no membership change, shard move or shard-map change in flight. Everything
//! is decided from what is observed, plus a recorded halt, so a new operator continues where
//! the last one stopped.

use std::time::Duration;

use shardkv_proto::v1::StopReport;

use crate::plan::GroupView;

/// What the rollout needs to know of one pod besides its node's Status.
#[derive(Debug, Clone, PartialEq)]
pub struct PodRevision {
    pub ordinal: u32,
    pub uid: String,
    /// The pod's `controller-revision-hash`.
    pub revision: Option<String>,
    /// The pod has a deletion timestamp.
    pub terminating: bool,
    /// Time since the pod was created.
    pub age: Duration,
}

/// One group as the rollout sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutGroup<'a> {
    pub view: &'a GroupView,
    /// The StatefulSet's `status.updateRevision`: what every pod should run.
    pub update_revision: Option<String>,
    pub pods: Vec<PodRevision>,
    /// No bootstrap or replica scale step is in flight for the group.
    pub membership_settled: bool,
    /// Why the group's shards are not all settled, when they are not.
    pub shards_moving: Option<String>,
}

impl RolloutGroup<'_> {
    fn updated(&self, pod: &PodRevision) -> bool {
        self.update_revision.is_none() || pod.revision == self.update_revision
    }

    /// Not serving: not Ready, or its node ran its stop sequence and waits to be restarted.
    fn down(&self, pod: &PodRevision) -> bool {
        self.view.pod(pod.ordinal).is_none_or(|p| !p.ready || p.status.as_ref().is_some_and(|s| s.stopping))
    }

    /// Pods to restart: those not on the update revision, and members whose node stopped (a
    /// node the group removed stops too; its pod goes when the StatefulSet shrinks).
    fn to_restart(&self) -> Vec<&PodRevision> {
        let members = self.view.leader().map(|l| l.members());
        let stopped_member = |p: &PodRevision| {
            let stopped = self.view.pod(p.ordinal).and_then(|v| v.status.as_ref()).is_some_and(|s| s.stopping);
            stopped && members.as_ref().is_some_and(|m| m.contains(&crate::resources::node_id(p.ordinal)))
        };
        self.pods.iter().filter(|p| !p.terminating && (!self.updated(p) || stopped_member(p))).collect()
    }

    /// Why the group is not healthy enough to lose a pod, ignoring `except`.
    fn unhealthy(&self, max_lag: u64, except: Option<u32>) -> Option<String> {
        let group_id = self.view.group_id;
        if let Some(pod) = self.pods.iter().find(|p| Some(p.ordinal) != except && self.down(p)) {
            return Some(format!("group {group_id}: pod {} is not Ready", pod.ordinal));
        }
        let Some(leader) = self.view.leader() else {
            return Some(format!("group {group_id} has no leader"));
        };
        leader.voters().into_iter().find(|id| !leader.caught_up(*id, max_lag)).map(|id| {
            let lag = leader.lag(id).map_or("unknown".to_string(), |l| l.to_string());
            format!("group {group_id}: node {id} is not caught up (lag {lag}, at most {max_lag})")
        })
    }
}

/// A halt recorded in status: the pod whose stop report was not clean, and the revision the
/// rollout was moving to. It holds until the target changes (the spec was fixed).
#[derive(Debug, Clone, PartialEq)]
pub struct Halt {
    pub group_id: u64,
    pub uid: String,
    pub revision: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RolloutSettings {
    /// Log entries a voter may lag and still count as caught up.
    pub max_lag: u64,
    /// A restarted pod that is not Ready and caught up this long after it started halts the
    /// rollout.
    pub pod_ready_timeout: Duration,
    /// `spec.rollout.paused`: no pod is restarted.
    pub paused: bool,
    /// A rollout is in flight (status.rollout's phase is not Complete): once no pod is left to
    /// restart, it completes only when the pods it restarted are back (none terminating or
    /// missing, every pod Ready and caught up), and a late one halts it.
    pub rolling: bool,
}

/// The next rollout step.
#[derive(Debug, Clone, PartialEq)]
pub enum RolloutStep {
    /// Every pod runs its StatefulSet's update revision.
    Complete,
    /// Nothing more is touched until the spec changes.
    Halted {
        group_id: u64,
        reason: String,
    },
    Paused {
        group_id: u64,
    },
    Wait {
        group_id: u64,
        reason: String,
    },
    /// Hand leadership to an updated, caught-up voter before the leader restarts.
    TransferLeader {
        group_id: u64,
        leader: u32,
        to: u64,
    },
    /// Run the pod's stop sequence (unless it is down already), check its report, then delete
    /// the pod with this UID as a precondition.
    Restart {
        group_id: u64,
        ordinal: u32,
        uid: String,
        down: bool,
    },
}

impl RolloutStep {
    pub fn name(&self) -> &'static str {
        match self {
            RolloutStep::Complete => "Complete",
            RolloutStep::Halted { .. } => "Halted",
            RolloutStep::Paused { .. } => "Paused",
            RolloutStep::Wait { .. } => "Wait",
            RolloutStep::TransferLeader { .. } => "TransferLeader",
            RolloutStep::Restart { .. } => "Restart",
        }
    }

    pub fn group_id(&self) -> Option<u64> {
        match self {
            RolloutStep::Complete => None,
            RolloutStep::Halted { group_id, .. }
            | RolloutStep::Paused { group_id }
            | RolloutStep::Wait { group_id, .. }
            | RolloutStep::TransferLeader { group_id, .. }
            | RolloutStep::Restart { group_id, .. } => Some(*group_id),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            RolloutStep::Complete => "every pod runs its StatefulSet's update revision".to_string(),
            RolloutStep::Halted { reason, .. } => format!("halted: {reason}"),
            RolloutStep::Paused { group_id } => format!("paused by spec.rollout.paused (next: group {group_id})"),
            RolloutStep::Wait { reason, .. } => reason.clone(),
            RolloutStep::TransferLeader { group_id, leader, to } => {
                format!("group {group_id}: moving leadership from pod {leader} to updated node {to}")
            }
            RolloutStep::Restart { group_id, ordinal, down: true, .. } => {
                format!("group {group_id}: restarting pod {ordinal}, which is down already")
            }
            RolloutStep::Restart { group_id, ordinal, .. } => {
                format!("group {group_id}: stopping pod {ordinal} (leadership, snapshot) and restarting it")
            }
        }
    }
}

/// Pods on their update revision (a terminating pod is on its way out: not counted), and all
/// pods the StatefulSets want (a pod being recreated counts as not updated yet), over the groups.
pub fn progress(groups: &[RolloutGroup<'_>]) -> (u32, u32) {
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    let updated = groups.iter().map(|g| count(g.pods.iter().filter(|p| g.updated(p) && !p.terminating).count())).sum();
    let total = groups.iter().map(|g| count(g.pods.len()).max(g.view.statefulset_replicas.unwrap_or(0))).sum();
    (updated, total)
}

/// A pod restarted onto the update revision that is not Ready and caught up within the timeout.
fn late_pod(groups: &[RolloutGroup<'_>], settings: &RolloutSettings) -> Option<RolloutStep> {
    for g in groups {
        for pod in g.pods.iter().filter(|p| g.updated(p) && !p.terminating && p.age > settings.pod_ready_timeout) {
            let caught_up = g.view.leader().is_some_and(|l| {
                let id = crate::resources::node_id(pod.ordinal);
                !l.voters().contains(&id) || l.caught_up(id, settings.max_lag)
            });
            if g.down(pod) || !caught_up {
                return Some(RolloutStep::Halted {
                    group_id: g.view.group_id,
                    reason: format!(
                        "group {}: pod {} on the new revision is not Ready and caught up {} s after it started",
                        g.view.group_id,
                        pod.ordinal,
                        pod.age.as_secs()
                    ),
                });
            }
        }
    }
    None
}

/// A pod of any group terminating or missing (being replaced).
fn in_transit(groups: &[RolloutGroup<'_>]) -> Option<RolloutStep> {
    for g in groups {
        let group_id = g.view.group_id;
        if let Some(pod) = g.pods.iter().find(|p| p.terminating) {
            return Some(RolloutStep::Wait {
                group_id,
                reason: format!("group {group_id}: pod {} is terminating", pod.ordinal),
            });
        }
        let expected = g.view.statefulset_replicas.unwrap_or(0);
        if let Some(missing) = (0..expected).find(|o| !g.pods.iter().any(|p| p.ordinal == *o)) {
            return Some(RolloutStep::Wait { group_id, reason: format!("group {group_id}: pod {missing} is missing") });
        }
    }
    None
}

/// Plans the next rollout step over `groups` in roll order. `map_in_flight` says why the shard
/// map is changing, when it is.
pub fn plan_rollout(
    groups: &[RolloutGroup<'_>],
    map_in_flight: Option<&str>,
    halt: Option<&Halt>,
    settings: &RolloutSettings,
) -> RolloutStep {
    let Some(group) = groups.iter().find(|g| !g.to_restart().is_empty()) else {
        if !settings.rolling {
            return RolloutStep::Complete;
        }
        // The last pod restarted must be back before the rollout is complete.
        let unhealthy = || {
            groups.iter().find_map(|g| {
                g.unhealthy(settings.max_lag, None)
                    .map(|reason| RolloutStep::Wait { group_id: g.view.group_id, reason })
            })
        };
        return late_pod(groups, settings)
            .or_else(|| in_transit(groups))
            .or_else(unhealthy)
            .unwrap_or(RolloutStep::Complete);
    };
    let group_id = group.view.group_id;
    let wait = |reason: String| RolloutStep::Wait { group_id, reason };

    if let Some(h) = halt {
        let target = groups.iter().find(|g| g.view.group_id == h.group_id).and_then(|g| g.update_revision.as_deref());
        if target == Some(h.revision.as_str()) {
            return RolloutStep::Halted { group_id: h.group_id, reason: h.reason.clone() };
        }
    }
    // A pod that was restarted onto the update revision and did not come back in time.
    if let Some(halted) = late_pod(groups, settings) {
        return halted;
    }
    if settings.paused {
        return RolloutStep::Paused { group_id };
    }
    if let Some(wait) = in_transit(groups) {
        return wait;
    }
    if !group.membership_settled {
        return wait(format!("group {group_id} is changing membership"));
    }
    if let Some(reason) = map_in_flight.or(group.shards_moving.as_deref()) {
        return wait(format!("the shard map is changing: {reason}"));
    }

    let candidates = group.to_restart();
    // Restarting a pod that is down already costs nothing: it goes first.
    if let Some(pod) = candidates.iter().filter(|p| group.down(p)).max_by_key(|p| p.ordinal) {
        return RolloutStep::Restart { group_id, ordinal: pod.ordinal, uid: pod.uid.clone(), down: true };
    }
    if let Some(reason) = groups.iter().find_map(|g| g.unhealthy(settings.max_lag, None)) {
        return wait(reason);
    }
    let leader = group.view.leader().expect("a healthy group has a leader");
    if let Some(pod) = candidates.iter().filter(|p| p.ordinal != leader.ordinal).max_by_key(|p| p.ordinal) {
        return RolloutStep::Restart { group_id, ordinal: pod.ordinal, uid: pod.uid.clone(), down: false };
    }
    // Only the leader is left.
    let leader_pod = candidates[0];
    let voters = leader.voters();
    if voters.len() <= 1 {
        // A single voter has nobody to hand leadership to: the group is down while it restarts.
        return RolloutStep::Restart {
            group_id,
            ordinal: leader_pod.ordinal,
            uid: leader_pod.uid.clone(),
            down: false,
        };
    }
    let updated_voter = group
        .pods
        .iter()
        .filter(|p| p.ordinal != leader.ordinal && group.updated(p))
        .map(|p| crate::resources::node_id(p.ordinal))
        .filter(|id| voters.contains(id))
        .max_by_key(|id| leader.status.members.iter().find(|m| m.node_id == *id).and_then(|m| m.matched_index));
    match updated_voter {
        Some(to) => RolloutStep::TransferLeader { group_id, leader: leader.ordinal, to },
        None => wait(format!("group {group_id}: no updated voter to hand leadership to")),
    }
}

/// Why a node's stop report does not allow deleting its pod.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StopProblem {
    #[error("the stop report names no group")]
    NoGroup,
    #[error("leadership transfer failed: {0}")]
    TransferFailed(String),
    #[error("snapshot failed: {0}")]
    SnapshotFailed(String),
    #[error("it led the group and did not hand leadership over")]
    KeptLeadership,
    #[error("its snapshot ({}) does not cover the applied index {applied}", .snapshot.map_or("none".to_string(), |s| s.to_string()))]
    SnapshotBehind { snapshot: Option<u64>, applied: u64 },
    #[error("the node reported its stop as not clean")]
    NotClean,
}

/// Why a node's stop report does not allow deleting its pod, if it does not: every step must
/// have succeeded, a leader must have handed leadership over (unless it was the only voter),
/// and the snapshot must cover the applied log.
pub fn stop_report_problem(report: &StopReport, voters: usize) -> Option<StopProblem> {
    if report.groups.is_empty() {
        return Some(StopProblem::NoGroup);
    }
    for g in &report.groups {
        if !g.transfer_error.is_empty() {
            return Some(StopProblem::TransferFailed(g.transfer_error.clone()));
        }
        if !g.snapshot_error.is_empty() {
            return Some(StopProblem::SnapshotFailed(g.snapshot_error.clone()));
        }
        if g.was_leader && g.new_leader.is_none() && voters > 1 {
            return Some(StopProblem::KeptLeadership);
        }
        if g.snapshot_index.is_none_or(|s| s < g.applied_index) {
            return Some(StopProblem::SnapshotBehind { snapshot: g.snapshot_index, applied: g.applied_index });
        }
    }
    (!report.clean).then_some(StopProblem::NotClean)
}

/// A semver `major.minor.patch` (an optional leading `v`, pre-release and build suffixes
/// ignored), as node versions and image tags carry it.
fn parse_version(text: &str) -> Option<(u64, u64, u64)> {
    let core = text.strip_prefix('v').unwrap_or(text);
    let core = core.split(['-', '+']).next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
    Some((parts.next()??, parts.next()??, parts.next()??))
}

/// The version an image reference's tag names, when it names one (`repo/shardkv:0.3.1`).
pub fn image_version(image: &str) -> Option<(u64, u64, u64)> {
    let name = image.split('@').next()?;
    let (_, tag) = name.rsplit_once(':').filter(|(_, tag)| !tag.contains('/'))?;
    parse_version(tag)
}

/// Why moving nodes running `running` versions to `target` breaks the skew rule, if it does:
/// upgrades go at most one minor version up (within a major), and downgrades stay within the
/// same minor. Adjacent minors are what nodes guarantee to interoperate with.
pub fn version_skew(running: &[String], target: (u64, u64, u64)) -> Option<String> {
    let (major, minor, _) = target;
    running.iter().filter_map(|v| Some((v, parse_version(v)?))).find_map(|(text, (m, n, _))| {
        let show = format!("{major}.{minor}.{}", target.2);
        if major != m {
            Some(format!("nodes run {text} and the new image is {show}: a rollout may not change the major version"))
        } else if minor > n + 1 {
            Some(format!("nodes run {text} and the new image is {show}: upgrades go one minor version at a time"))
        } else if minor < n {
            Some(format!("nodes run {text} and the new image is {show}: a downgrade may not cross a minor version"))
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use shardkv_proto::v1::ReplicaStatus;
    use shardkv_proto::v1::StatusResponse;

    use super::*;
    use crate::plan::PodView;

    const OLD: &str = "rev-old";
    const NEW: &str = "rev-new";

    fn settings() -> RolloutSettings {
        RolloutSettings { max_lag: 100, pod_ready_timeout: Duration::from_secs(300), paused: false, rolling: false }
    }

    /// A 3-voter group led by `leader`, every pod Ready and caught up.
    fn view(group_id: u64, leader: u32) -> GroupView {
        let members: Vec<ReplicaStatus> = (1..=3)
            .map(|id| ReplicaStatus {
                node_id: id,
                addr: String::new(),
                role: "voter".into(),
                matched_index: Some(50 - id),
            })
            .collect();
        let pods = (0..3)
            .map(|o| PodView {
                ordinal: o,
                peer_addr: String::new(),
                ready: true,
                status: Some(if o == leader {
                    StatusResponse {
                        state: "Leader".into(),
                        term: 2,
                        last_log_index: 50,
                        members: members.clone(),
                        ..Default::default()
                    }
                } else {
                    StatusResponse { state: "Follower".into(), term: 2, ..Default::default() }
                }),
            })
            .collect();
        GroupView { group_id, desired_replicas: 3, recorded_initialized: true, statefulset_replicas: Some(3), pods }
    }

    fn pods(revisions: [&str; 3]) -> Vec<PodRevision> {
        (0..3)
            .map(|o| PodRevision {
                ordinal: o,
                uid: format!("uid-{o}-{}", revisions[o as usize]),
                revision: Some(revisions[o as usize].to_string()),
                terminating: false,
                age: Duration::from_secs(10),
            })
            .collect()
    }

    fn group<'a>(view: &'a GroupView, revisions: [&str; 3]) -> RolloutGroup<'a> {
        RolloutGroup {
            view,
            update_revision: Some(NEW.to_string()),
            pods: pods(revisions),
            membership_settled: true,
            shards_moving: None,
        }
    }

    fn restart(group_id: u64, ordinal: u32, revision: &str) -> RolloutStep {
        RolloutStep::Restart { group_id, ordinal, uid: format!("uid-{ordinal}-{revision}"), down: false }
    }

    #[test]
    fn followers_from_the_highest_ordinal_then_the_leader_after_handing_over() {
        let (meta, data) = (view(0, 0), view(1, 1));
        let step =
            |m: [&str; 3], d: [&str; 3]| plan_rollout(&[group(&meta, m), group(&data, d)], None, None, &settings());
        assert_eq!(step([OLD, OLD, OLD], [OLD, OLD, OLD]), restart(0, 2, OLD), "meta first, highest follower");
        assert_eq!(step([OLD, OLD, NEW], [OLD, OLD, OLD]), restart(0, 1, OLD));
        assert_eq!(
            step([OLD, NEW, NEW], [OLD, OLD, OLD]),
            RolloutStep::TransferLeader { group_id: 0, leader: 0, to: 2 },
            "to the most caught-up updated voter (node 2 matched 48, node 3 matched 47)"
        );
        assert_eq!(step([NEW, NEW, NEW], [OLD, OLD, OLD]), restart(1, 2, OLD), "data group 1's leader is pod 1");
        assert_eq!(step([NEW, NEW, NEW], [OLD, OLD, NEW]), restart(1, 0, OLD));
        assert!(matches!(step([NEW, NEW, NEW], [NEW, OLD, NEW]), RolloutStep::TransferLeader { leader: 1, .. }));
        assert_eq!(step([NEW, NEW, NEW], [NEW, NEW, NEW]), RolloutStep::Complete);
    }

    #[test]
    fn no_pod_while_a_rolled_pod_is_not_ready_or_not_caught_up() {
        let mut data = view(1, 0);
        data.pods[2].ready = false;
        let step = plan_rollout(&[group(&data, [OLD, OLD, NEW])], None, None, &settings());
        assert_eq!(step, RolloutStep::Wait { group_id: 1, reason: "group 1: pod 2 is not Ready".into() });

        let mut lagging = view(1, 0);
        lagging.pods[0].status.as_mut().unwrap().members[2].matched_index = None;
        let step = plan_rollout(&[group(&lagging, [OLD, OLD, NEW])], None, None, &settings());
        assert!(
            matches!(&step, RolloutStep::Wait { reason, .. } if reason.contains("node 3 is not caught up (lag unknown")),
            "{step:?}"
        );
    }

    #[test]
    fn no_pod_while_another_group_is_unhealthy() {
        let (mut meta, data) = (view(0, 0), view(1, 0));
        meta.pods[1].ready = false;
        let step =
            plan_rollout(&[group(&meta, [NEW, NEW, NEW]), group(&data, [OLD, OLD, OLD])], None, None, &settings());
        assert_eq!(step, RolloutStep::Wait { group_id: 1, reason: "group 0: pod 1 is not Ready".into() });
    }

    #[test]
    fn no_pod_while_a_pod_terminates_or_is_missing() {
        let data = view(1, 0);
        let mut terminating = group(&data, [OLD, OLD, OLD]);
        terminating.pods[0].terminating = true;
        let step = plan_rollout(&[terminating], None, None, &settings());
        assert_eq!(step, RolloutStep::Wait { group_id: 1, reason: "group 1: pod 0 is terminating".into() });
        let mut missing = group(&data, [OLD, OLD, OLD]);
        missing.pods.remove(1);
        let step = plan_rollout(&[missing], None, None, &settings());
        assert_eq!(step, RolloutStep::Wait { group_id: 1, reason: "group 1: pod 1 is missing".into() });
    }

    #[test]
    fn no_pod_while_membership_shards_or_the_shard_map_change() {
        let data = view(1, 0);
        let mut scaling = group(&data, [OLD, OLD, OLD]);
        scaling.membership_settled = false;
        assert!(matches!(plan_rollout(&[scaling], None, None, &settings()), RolloutStep::Wait { .. }));
        let mut moving = group(&data, [OLD, OLD, OLD]);
        moving.shards_moving = Some("group 1 is pulling shard 3 from group 2".into());
        assert!(
            matches!(plan_rollout(&[moving], None, None, &settings()), RolloutStep::Wait { reason, .. } if reason.contains("shard 3"))
        );
        let step = plan_rollout(&[group(&data, [OLD, OLD, OLD])], Some("group 2 is joining"), None, &settings());
        assert!(matches!(step, RolloutStep::Wait { reason, .. } if reason.contains("group 2 is joining")));
    }

    #[test]
    fn a_pod_that_is_down_goes_first_without_waiting_for_health() {
        let mut data = view(1, 0);
        data.pods[1].ready = false;
        let step = plan_rollout(&[group(&data, [OLD, OLD, OLD])], None, None, &settings());
        assert_eq!(step, RolloutStep::Restart { group_id: 1, ordinal: 1, uid: format!("uid-1-{OLD}"), down: true });
        // A node that ran its stop sequence is restarted even on the current revision.
        let mut stopped = view(1, 0);
        stopped.pods[2].status.as_mut().unwrap().stopping = true;
        let step = plan_rollout(&[group(&stopped, [NEW, NEW, NEW])], None, None, &settings());
        assert_eq!(step, RolloutStep::Restart { group_id: 1, ordinal: 2, uid: format!("uid-2-{NEW}"), down: true });
        // ...but not one the group removed: its pod goes when the StatefulSet shrinks.
        stopped.pods[0].status.as_mut().unwrap().members.truncate(2);
        assert_eq!(plan_rollout(&[group(&stopped, [NEW, NEW, NEW])], None, None, &settings()), RolloutStep::Complete);
    }

    #[test]
    fn a_pod_not_back_in_time_halts_until_the_target_changes() {
        let mut data = view(1, 0);
        data.pods[2].ready = false;
        let mut late = group(&data, [OLD, OLD, NEW]);
        late.pods[2].age = Duration::from_secs(301);
        assert!(matches!(
            plan_rollout(&[late.clone()], None, None, &settings()),
            RolloutStep::Halted { group_id: 1, .. }
        ));
        late.pods[2].age = Duration::from_secs(299);
        assert!(matches!(plan_rollout(&[late.clone()], None, None, &settings()), RolloutStep::Wait { .. }));
        // The spec went back to the old image: the pod is outdated and down, so it goes first.
        late.pods[2].age = Duration::from_secs(301);
        late.update_revision = Some(OLD.into());
        assert!(matches!(
            plan_rollout(&[late], None, None, &settings()),
            RolloutStep::Restart { ordinal: 2, down: true, .. }
        ));
    }

    #[test]
    fn a_recorded_halt_holds_only_for_its_target_and_pause_stops_between_pods() {
        let data = view(1, 0);
        let halt =
            Halt { group_id: 1, uid: "uid-2-old".into(), revision: NEW.into(), reason: "stop report not clean".into() };
        let step = plan_rollout(&[group(&data, [OLD, OLD, OLD])], None, Some(&halt), &settings());
        assert_eq!(step, RolloutStep::Halted { group_id: 1, reason: "stop report not clean".into() });
        let moved_on = Halt { revision: "rev-older".into(), ..halt };
        assert_eq!(
            plan_rollout(&[group(&data, [OLD, OLD, OLD])], None, Some(&moved_on), &settings()),
            restart(1, 2, OLD)
        );

        let paused = RolloutSettings { paused: true, ..settings() };
        assert_eq!(
            plan_rollout(&[group(&data, [OLD, OLD, NEW])], None, None, &paused),
            RolloutStep::Paused { group_id: 1 }
        );
        assert_eq!(plan_rollout(&[group(&data, [NEW, NEW, NEW])], None, None, &paused), RolloutStep::Complete);
    }

    #[test]
    fn progress_counts_pods_on_their_update_revision() {
        let (meta, data) = (view(0, 0), view(1, 0));
        assert_eq!(progress(&[group(&meta, [NEW, NEW, NEW]), group(&data, [OLD, NEW, OLD])]), (4, 6));
        // A pod on its way out, or not recreated yet, is not updated; the total is what the
        // StatefulSet wants.
        let mut replaced = group(&data, [NEW, NEW, NEW]);
        replaced.pods[0].terminating = true;
        assert_eq!(progress(&[group(&meta, [NEW, NEW, NEW]), replaced.clone()]), (5, 6));
        replaced.pods.remove(0);
        assert_eq!(progress(&[group(&meta, [NEW, NEW, NEW]), replaced]), (5, 6));
    }

    #[test]
    fn a_rollout_completes_only_once_its_last_pod_is_back() {
        let (meta, mut data) = (view(0, 0), view(1, 0));
        let step = |data: &GroupView, pods: Vec<PodRevision>, settings: &RolloutSettings| {
            let mut last = group(data, [NEW, NEW, NEW]);
            last.pods = pods;
            plan_rollout(&[group(&meta, [NEW, NEW, NEW]), last], None, None, settings)
        };
        // The leader, restarted last, is terminating on the old revision.
        let mut pods = super::tests::pods([OLD, NEW, NEW]);
        pods[0].terminating = true;
        let wait = |reason: &str| RolloutStep::Wait { group_id: 1, reason: reason.to_string() };
        let rolling = RolloutSettings { rolling: true, ..settings() };
        assert_eq!(step(&data, pods.clone(), &rolling), wait("group 1: pod 0 is terminating"));
        // Outside a rollout, a pod going away is not the rollout's business.
        assert_eq!(step(&data, pods.clone(), &settings()), RolloutStep::Complete);
        pods.remove(0);
        assert_eq!(step(&data, pods.clone(), &rolling), wait("group 1: pod 0 is missing"));
        // Recreated on the new revision, not Ready yet; then not back in time.
        let mut pods = super::tests::pods([NEW, NEW, NEW]);
        data.pods[0].ready = false;
        assert_eq!(step(&data, pods.clone(), &rolling), wait("group 1: pod 0 is not Ready"));
        pods[0].age = Duration::from_secs(301);
        assert!(matches!(step(&data, pods.clone(), &rolling), RolloutStep::Halted { group_id: 1, .. }));
        data.pods[0].ready = true;
        assert_eq!(step(&data, pods, &rolling), RolloutStep::Complete);
    }

    #[test]
    fn a_stop_report_allows_deletion_only_when_clean_handed_over_and_covered() {
        use shardkv_proto::v1::GroupStopReport;
        let group = GroupStopReport {
            group_id: 1,
            was_leader: true,
            new_leader: Some(2),
            applied_index: 90,
            snapshot_index: Some(90),
            ..Default::default()
        };
        let report =
            |g: GroupStopReport, clean: bool| StopReport { node_id: 1, groups: vec![g], clean, ..Default::default() };
        assert_eq!(stop_report_problem(&report(group.clone(), true), 3), None);
        let kept = GroupStopReport { new_leader: None, ..group.clone() };
        assert_eq!(stop_report_problem(&report(kept.clone(), true), 3), Some(StopProblem::KeptLeadership));
        assert_eq!(stop_report_problem(&report(kept, true), 1), None, "a single voter has nobody to hand over to");
        let behind = GroupStopReport { snapshot_index: Some(89), ..group.clone() };
        let problem = stop_report_problem(&report(behind, true), 3).unwrap();
        assert_eq!(problem, StopProblem::SnapshotBehind { snapshot: Some(89), applied: 90 });
        assert_eq!(problem.to_string(), "its snapshot (89) does not cover the applied index 90");
        let none = GroupStopReport { snapshot_index: None, ..group.clone() };
        let problem = stop_report_problem(&report(none, true), 3).unwrap();
        assert_eq!(problem.to_string(), "its snapshot (none) does not cover the applied index 90");
        let failed = GroupStopReport { snapshot_error: "disk full".into(), ..group.clone() };
        let problem = stop_report_problem(&report(failed, false), 3).unwrap();
        assert_eq!(problem.to_string(), "snapshot failed: disk full", "the first problem is named");
        let transfer = GroupStopReport { transfer_error: "no voter caught up".into(), ..group.clone() };
        assert_eq!(
            stop_report_problem(&report(transfer, true), 3),
            Some(StopProblem::TransferFailed("no voter caught up".into()))
        );
        assert_eq!(stop_report_problem(&report(group, false), 3), Some(StopProblem::NotClean));
        let empty = StopReport { node_id: 1, clean: true, ..Default::default() };
        assert_eq!(stop_report_problem(&empty, 3), Some(StopProblem::NoGroup));
    }

    #[test]
    fn version_skew_allows_one_minor_up_and_patch_downgrades_only() {
        let running = ["0.3.2".to_string(), "0.3.1".to_string()];
        assert_eq!(version_skew(&running, (0, 4, 0)), None);
        assert_eq!(version_skew(&running, (0, 3, 0)), None, "a patch downgrade");
        assert!(version_skew(&running, (0, 5, 0)).unwrap().contains("one minor version at a time"));
        assert!(version_skew(&running, (0, 2, 9)).unwrap().contains("may not cross a minor version"));
        assert!(version_skew(&running, (1, 0, 0)).unwrap().contains("major"));
        assert_eq!(image_version("registry:5000/shardkv/shardkv:v0.4.0-rc.1"), Some((0, 4, 0)));
        assert_eq!(image_version("registry:5000/shardkv/shardkv"), None, "a port is not a tag");
        assert_eq!(image_version("shardkv/shardkv:dev"), None);
    }
}
