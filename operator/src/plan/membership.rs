//! The membership plan of one group (bootstrap, replica scale up and down): given its pods and
//! what each node's Admin API reported, the next step.

use std::collections::BTreeSet;

use shardkv_proto::v1::Member;
use shardkv_proto::v1::StatusResponse;

use crate::resources::node_id;

/// Raft state string of a leader in the Admin Status answer.
const LEADER_STATE: &str = "Leader";
/// Raft role string of a voter in the Admin Status answer.
const VOTER_ROLE: &str = "voter";

/// What the operator saw of one pod of a group.
#[derive(Debug, Clone, PartialEq)]
pub struct PodView {
    pub ordinal: u32,
    /// The node's stable gRPC address, as peers know it.
    pub peer_addr: String,
    /// The pod's Kubernetes Ready condition.
    pub ready: bool,
    /// The node's Admin Status, when it answered.
    pub status: Option<StatusResponse>,
}

impl PodView {
    pub fn node_id(&self) -> u64 {
        node_id(self.ordinal)
    }
}

/// What the operator saw of one group.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupView {
    pub group_id: u64,
    /// Voters the spec asks for.
    pub desired_replicas: u32,
    /// Status records that this group was initialised.
    pub recorded_initialized: bool,
    /// Replicas of the group's StatefulSet now, if it exists.
    pub statefulset_replicas: Option<u32>,
    pub pods: Vec<PodView>,
}

/// The group's Raft leader as seen through its Status.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaderView<'a> {
    pub ordinal: u32,
    pub status: &'a StatusResponse,
}

impl LeaderView<'_> {
    pub fn voters(&self) -> BTreeSet<u64> {
        self.status.members.iter().filter(|m| m.role == VOTER_ROLE).map(|m| m.node_id).collect()
    }

    /// Voters and learners.
    pub fn members(&self) -> BTreeSet<u64> {
        self.status.members.iter().map(|m| m.node_id).collect()
    }

    pub fn learners(&self) -> BTreeSet<u64> {
        self.status.members.iter().filter(|m| m.role != VOTER_ROLE).map(|m| m.node_id).collect()
    }

    /// Log entries a member is behind the leader; None when the leader has not matched it yet.
    pub fn lag(&self, node_id: u64) -> Option<u64> {
        let member = self.status.members.iter().find(|m| m.node_id == node_id)?;
        member.matched_index.map(|m| self.status.last_log_index.saturating_sub(m))
    }

    /// A member counts as caught up when the leader has matched its log to within `max_lag`
    /// entries of the leader's last log index.
    pub fn caught_up(&self, node_id: u64, max_lag: u64) -> bool {
        self.lag(node_id).is_some_and(|lag| lag <= max_lag)
    }
}

impl GroupView {
    /// The leader with the highest term among the pods that answered (a deposed leader that has
    /// not heard of the new term yet loses to the real one).
    pub fn leader(&self) -> Option<LeaderView<'_>> {
        self.pods
            .iter()
            .filter_map(|p| p.status.as_ref().map(|s| (p.ordinal, s)))
            .filter(|(_, s)| s.state == LEADER_STATE)
            .max_by_key(|(_, s)| s.term)
            .map(|(ordinal, status)| LeaderView { ordinal, status })
    }

    pub(crate) fn pod(&self, ordinal: u32) -> Option<&PodView> {
        self.pods.iter().find(|p| p.ordinal == ordinal)
    }

    fn any_initialized(&self) -> bool {
        self.pods.iter().any(|p| p.status.as_ref().is_some_and(|s| s.initialized))
    }

    fn desired_ids(&self) -> BTreeSet<u64> {
        (0..self.desired_replicas).map(node_id).collect()
    }
}

/// Which operation a step belongs to (reported in status and Events).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Bootstrap,
    ScaleUp,
    ScaleDown,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Bootstrap => "Bootstrap",
            Operation::ScaleUp => "ScaleUp",
            Operation::ScaleDown => "ScaleDown",
        }
    }
}

/// The next membership step of a group. Steps that act name the pod (by ordinal) to call.
#[derive(Debug, Clone, PartialEq)]
pub enum GroupStep {
    /// The group has exactly the voters the spec asks for.
    Settled,
    /// Something has to happen first that the operator does not do itself (a pod starting, an
    /// election, a learner catching up).
    Wait {
        operation: Operation,
        reason: String,
    },
    /// The group cannot make progress safely without a human; reported as Degraded.
    Blocked {
        reason: String,
    },
    /// Initialise the group on pod 0 with itself as the only voter (the others join as learners).
    Initialize {
        ordinal: u32,
        member: Member,
    },
    AddLearner {
        leader: u32,
        member: Member,
    },
    /// Make caught-up learners voters: the complete new voter set.
    Promote {
        leader: u32,
        voters: BTreeSet<u64>,
    },
    /// Move leadership off a node that is about to be removed.
    TransferLeader {
        leader: u32,
        to: u64,
    },
    /// Scale-in by membership change: the complete new voter set (removed voters leave the group).
    RemoveVoters {
        leader: u32,
        voters: BTreeSet<u64>,
    },
    /// Learners beyond the desired size (added, then the spec shrank before they were promoted).
    RemoveLearners {
        leader: u32,
        learners: BTreeSet<u64>,
    },
}

impl GroupStep {
    pub fn operation(&self) -> Option<Operation> {
        match self {
            GroupStep::Settled | GroupStep::Blocked { .. } => None,
            GroupStep::Wait { operation, .. } => Some(*operation),
            GroupStep::Initialize { .. } => Some(Operation::Bootstrap),
            GroupStep::AddLearner { .. } | GroupStep::Promote { .. } => Some(Operation::ScaleUp),
            GroupStep::TransferLeader { .. } | GroupStep::RemoveVoters { .. } | GroupStep::RemoveLearners { .. } => {
                Some(Operation::ScaleDown)
            }
        }
    }

    /// Short name of the step (status and Events).
    pub fn name(&self) -> &'static str {
        match self {
            GroupStep::Settled => "Settled",
            GroupStep::Wait { .. } => "Wait",
            GroupStep::Blocked { .. } => "Blocked",
            GroupStep::Initialize { .. } => "Initialize",
            GroupStep::AddLearner { .. } => "AddLearner",
            GroupStep::Promote { .. } => "Promote",
            GroupStep::TransferLeader { .. } => "TransferLeader",
            GroupStep::RemoveVoters { .. } => "RemoveVoters",
            GroupStep::RemoveLearners { .. } => "RemoveLearners",
        }
    }

    /// What the step does or waits for, in words.
    pub fn describe(&self) -> String {
        match self {
            GroupStep::Settled => "all voters in place".to_string(),
            GroupStep::Wait { reason, .. } | GroupStep::Blocked { reason } => reason.clone(),
            GroupStep::Initialize { member, .. } => format!("initialising the group on node {}", member.node_id),
            GroupStep::AddLearner { member, .. } => format!("adding node {} as a learner", member.node_id),
            GroupStep::Promote { voters, .. } => format!("promoting caught-up learners: voters become {voters:?}"),
            GroupStep::TransferLeader { to, .. } => format!("moving leadership to node {to} before scale-in"),
            GroupStep::RemoveVoters { voters, .. } => format!("removing voters: voters become {voters:?}"),
            GroupStep::RemoveLearners { learners, .. } => format!("removing learners {learners:?} beyond the size"),
        }
    }
}

/// The plan for one group: its next step and how many pods its StatefulSet should have now.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupPlan {
    pub step: GroupStep,
    /// Never fewer than the highest member's ordinal + 1: pods leave the Raft group before the
    /// StatefulSet drops them.
    pub statefulset_replicas: u32,
}

fn wait(operation: Operation, reason: impl Into<String>) -> GroupStep {
    GroupStep::Wait { operation, reason: reason.into() }
}

/// Plans the next bootstrap or membership step of a group. `max_lag` is how many log entries a
/// learner may be behind the leader and still be promoted.
pub fn plan_group(view: &GroupView, max_lag: u64) -> GroupPlan {
    let desired = view.desired_replicas;
    let Some(leader) = view.leader() else {
        let keep = view.statefulset_replicas.unwrap_or(desired).max(desired);
        let step = if view.any_initialized() {
            wait(Operation::Bootstrap, "no leader elected yet")
        } else if view.recorded_initialized {
            GroupStep::Blocked {
                reason: "the group was initialised but no node reports it (volumes lost?); it is not initialised again"
                    .to_string(),
            }
        } else {
            // Before initialisation there are no members to protect: the StatefulSet has its
            // desired size.
            return GroupPlan { step: initialize_step(view), statefulset_replicas: desired };
        };
        return GroupPlan { step, statefulset_replicas: keep };
    };
    let voters = leader.voters();
    let members = leader.members();
    let highest_voter = u32::try_from(voters.iter().max().copied().unwrap_or(0)).unwrap_or(u32::MAX);
    let statefulset_replicas = desired.max(highest_voter);
    GroupPlan { step: membership_step(view, &leader, &voters, &members, max_lag), statefulset_replicas }
}

fn initialize_step(view: &GroupView) -> GroupStep {
    match view.pod(0) {
        Some(pod) if pod.status.is_some() => {
            GroupStep::Initialize { ordinal: 0, member: Member { node_id: pod.node_id(), addr: pod.peer_addr.clone() } }
        }
        _ => wait(Operation::Bootstrap, "waiting for pod 0 to answer on its Admin API"),
    }
}

fn membership_step(
    view: &GroupView,
    leader: &LeaderView<'_>,
    voters: &BTreeSet<u64>,
    members: &BTreeSet<u64>,
    max_lag: u64,
) -> GroupStep {
    let desired = view.desired_ids();
    let leader_id = node_id(leader.ordinal);

    // Scale-in first: membership change, then (by statefulset_replicas) the StatefulSet shrinks.
    let remaining: BTreeSet<u64> = voters.intersection(&desired).copied().collect();
    if remaining.len() < voters.len() {
        if remaining.is_empty() {
            return GroupStep::Blocked {
                reason: format!("none of the voters {voters:?} is among the desired nodes {desired:?}"),
            };
        }
        if !desired.contains(&leader_id) {
            let to = remaining
                .iter()
                .copied()
                .max_by_key(|id| leader.status.members.iter().find(|m| m.node_id == *id).and_then(|m| m.matched_index))
                .expect("remaining is not empty");
            return GroupStep::TransferLeader { leader: leader.ordinal, to };
        }
        return GroupStep::RemoveVoters { leader: leader.ordinal, voters: remaining };
    }
    let stray: BTreeSet<u64> = members.difference(voters).filter(|id| !desired.contains(id)).copied().collect();
    if !stray.is_empty() {
        return GroupStep::RemoveLearners { leader: leader.ordinal, learners: stray };
    }

    // Scale-out: caught-up learners become voters; missing nodes join as learners.
    let caught_up: Vec<u64> = members
        .difference(voters)
        .filter(|id| desired.contains(id) && leader.caught_up(**id, max_lag))
        .copied()
        .collect();
    if !caught_up.is_empty() {
        return GroupStep::Promote {
            leader: leader.ordinal,
            voters: voters.iter().chain(&caught_up).copied().collect(),
        };
    }
    if let Some(missing) = desired.difference(members).next() {
        let ordinal = u32::try_from(missing - 1).expect("node ids come from u32 ordinals");
        return match view.pod(ordinal) {
            Some(pod) if pod.status.is_some() => GroupStep::AddLearner {
                leader: leader.ordinal,
                member: Member { node_id: *missing, addr: pod.peer_addr.clone() },
            },
            _ => wait(Operation::ScaleUp, format!("waiting for pod {ordinal} to answer on its Admin API")),
        };
    }
    if let Some(lagging) = members.difference(voters).find(|id| desired.contains(id)) {
        let lag = leader.lag(*lagging).map_or("unknown".to_string(), |l| l.to_string());
        return wait(Operation::ScaleUp, format!("learner {lagging} catching up (lag {lag}, promoted at {max_lag})"));
    }
    GroupStep::Settled
}

#[cfg(test)]
mod tests {
    use shardkv_proto::v1::ReplicaStatus;

    use super::*;

    fn addr(ordinal: u32) -> String {
        format!("demo-g1-{ordinal}.demo-g1.prod.svc.cluster.local:7100")
    }

    fn pod(ordinal: u32, status: Option<StatusResponse>) -> PodView {
        PodView { ordinal, peer_addr: addr(ordinal), ready: status.is_some(), status }
    }

    fn fresh() -> StatusResponse {
        StatusResponse { state: "Learner".into(), ..Default::default() }
    }

    fn follower(term: u64) -> StatusResponse {
        StatusResponse { state: "Follower".into(), initialized: true, term, ..Default::default() }
    }

    /// A leader at `last_log_index` with members (node id, voter?, matched index).
    fn leader(term: u64, last_log_index: u64, members: &[(u64, bool, Option<u64>)]) -> StatusResponse {
        StatusResponse {
            state: "Leader".into(),
            initialized: true,
            term,
            last_log_index,
            members: members
                .iter()
                .map(|(id, voter, matched)| ReplicaStatus {
                    node_id: *id,
                    addr: addr(u32::try_from(id - 1).unwrap()),
                    role: if *voter { "voter" } else { "learner" }.into(),
                    matched_index: *matched,
                })
                .collect(),
            ..Default::default()
        }
    }

    fn group(desired: u32, pods: Vec<PodView>) -> GroupView {
        GroupView {
            group_id: 1,
            desired_replicas: desired,
            recorded_initialized: false,
            statefulset_replicas: Some(desired),
            pods,
        }
    }

    fn member(id: u64) -> Member {
        Member { node_id: id, addr: addr(u32::try_from(id - 1).unwrap()) }
    }

    #[test]
    fn fresh_group_is_initialised_on_pod_zero_only_once_it_answers() {
        let waiting = group(3, vec![pod(0, None), pod(1, Some(fresh()))]);
        assert!(matches!(plan_group(&waiting, 100).step, GroupStep::Wait { operation: Operation::Bootstrap, .. }));
        let ready = group(3, vec![pod(0, Some(fresh())), pod(1, Some(fresh())), pod(2, None)]);
        let plan = plan_group(&ready, 100);
        assert_eq!(plan.step, GroupStep::Initialize { ordinal: 0, member: member(1) });
        assert_eq!(plan.statefulset_replicas, 3);
    }

    #[test]
    fn a_recorded_group_is_never_initialised_again() {
        let mut lost = group(3, vec![pod(0, Some(fresh())), pod(1, Some(fresh())), pod(2, Some(fresh()))]);
        lost.recorded_initialized = true;
        assert!(matches!(plan_group(&lost, 100).step, GroupStep::Blocked { .. }));
        // Initialised nodes without a leader are waited on, not initialised.
        let electing = group(3, vec![pod(0, Some(follower(2))), pod(1, Some(fresh()))]);
        assert_eq!(plan_group(&electing, 100).step, wait(Operation::Bootstrap, "no leader elected yet"));
    }

    #[test]
    fn bootstrap_adds_learners_then_promotes_the_caught_up() {
        let solo = leader(1, 10, &[(1, true, Some(10))]);
        let view = group(3, vec![pod(0, Some(solo)), pod(1, Some(fresh())), pod(2, Some(fresh()))]);
        assert_eq!(plan_group(&view, 100).step, GroupStep::AddLearner { leader: 0, member: member(2) });

        let one_learner = leader(1, 12, &[(1, true, Some(12)), (2, false, Some(12))]);
        let view = group(3, vec![pod(0, Some(one_learner)), pod(1, Some(fresh())), pod(2, Some(fresh()))]);
        assert_eq!(plan_group(&view, 100).step, GroupStep::Promote { leader: 0, voters: BTreeSet::from([1, 2]) });

        let both = leader(1, 14, &[(1, true, Some(14)), (2, true, Some(14)), (3, false, Some(13))]);
        let view = group(3, vec![pod(0, Some(both)), pod(1, Some(follower(1))), pod(2, Some(fresh()))]);
        assert_eq!(plan_group(&view, 100).step, GroupStep::Promote { leader: 0, voters: BTreeSet::from([1, 2, 3]) });

        let done = leader(1, 15, &[(1, true, Some(15)), (2, true, Some(15)), (3, true, Some(15))]);
        let view = group(3, vec![pod(0, Some(done)), pod(1, Some(follower(1))), pod(2, Some(follower(1)))]);
        assert_eq!(plan_group(&view, 100), GroupPlan { step: GroupStep::Settled, statefulset_replicas: 3 });
    }

    #[test]
    fn a_learner_is_caught_up_only_within_the_lag_threshold() {
        let status = leader(3, 1_000, &[(1, true, Some(1_000)), (2, false, Some(899)), (3, false, None)]);
        let l = LeaderView { ordinal: 0, status: &status };
        assert!(!l.caught_up(2, 100), "101 behind");
        assert!(l.caught_up(2, 101));
        assert!(!l.caught_up(3, u64::MAX), "never matched");
        assert!(!l.caught_up(4, u64::MAX), "not a member");
        let view = group(3, vec![pod(0, Some(status.clone())), pod(1, Some(fresh())), pod(2, Some(fresh()))]);
        let step = plan_group(&view, 100).step;
        assert!(
            matches!(&step, GroupStep::Wait { operation: Operation::ScaleUp, reason } if reason.contains("lag 101")),
            "{step:?}"
        );
    }

    #[test]
    fn a_missing_pod_is_waited_for_before_it_is_added() {
        let status = leader(1, 5, &[(1, true, Some(5)), (2, true, Some(5)), (3, true, Some(5))]);
        let view = group(5, vec![pod(0, Some(status)), pod(1, None), pod(2, None), pod(3, None)]);
        let plan = plan_group(&view, 100);
        assert_eq!(plan.step, wait(Operation::ScaleUp, "waiting for pod 3 to answer on its Admin API"));
        assert_eq!(plan.statefulset_replicas, 5);
    }

    #[test]
    fn learners_beyond_the_size_are_removed() {
        let status =
            leader(2, 50, &[(1, true, Some(50)), (2, true, Some(50)), (3, true, Some(50)), (4, false, Some(10))]);
        let pods: Vec<PodView> =
            (0..4).map(|o| pod(o, Some(if o == 0 { status.clone() } else { follower(2) }))).collect();
        let plan = plan_group(&group(3, pods), 100);
        assert_eq!(plan.step, GroupStep::RemoveLearners { leader: 0, learners: BTreeSet::from([4]) });
        assert_eq!(plan.step.operation(), Some(Operation::ScaleDown));
    }

    #[test]
    fn scale_in_removes_voters_before_the_statefulset_shrinks() {
        let five = leader(
            2,
            50,
            &[(1, true, Some(50)), (2, true, Some(50)), (3, true, Some(50)), (4, true, Some(49)), (5, true, Some(50))],
        );
        let pods: Vec<PodView> =
            (0..5).map(|o| pod(o, Some(if o == 0 { five.clone() } else { follower(2) }))).collect();
        let mut view = group(3, pods);
        view.statefulset_replicas = Some(5);
        let plan = plan_group(&view, 100);
        assert_eq!(plan.step, GroupStep::RemoveVoters { leader: 0, voters: BTreeSet::from([1, 2, 3]) });
        assert_eq!(plan.statefulset_replicas, 5, "pods 3 and 4 stay until they left the group");

        let three = leader(2, 51, &[(1, true, Some(51)), (2, true, Some(51)), (3, true, Some(51))]);
        view.pods[0].status = Some(three);
        assert_eq!(plan_group(&view, 100), GroupPlan { step: GroupStep::Settled, statefulset_replicas: 3 });
    }

    #[test]
    fn scale_in_moves_leadership_off_a_removed_node_first() {
        let status = leader(4, 80, &[(1, true, Some(70)), (2, true, Some(79)), (3, true, Some(80))]);
        let view = group(1, vec![pod(0, Some(follower(4))), pod(1, Some(follower(4))), pod(2, Some(status))]);
        assert_eq!(plan_group(&view, 100).step, GroupStep::TransferLeader { leader: 2, to: 1 });
        let mut two = view.clone();
        two.desired_replicas = 2;
        assert_eq!(plan_group(&two, 100).step, GroupStep::TransferLeader { leader: 2, to: 2 }, "most caught up");
    }

    #[test]
    fn without_a_leader_the_statefulset_never_shrinks() {
        let mut view = group(3, vec![pod(0, Some(follower(3))), pod(3, Some(follower(3))), pod(4, Some(follower(3)))]);
        view.statefulset_replicas = Some(5);
        assert_eq!(plan_group(&view, 100).statefulset_replicas, 5);
    }

    #[test]
    fn the_highest_term_leader_wins() {
        let stale = leader(3, 10, &[(1, true, Some(10))]);
        let current = leader(4, 12, &[(2, true, Some(12))]);
        let view = group(3, vec![pod(0, Some(stale)), pod(1, Some(current))]);
        assert_eq!(view.leader().unwrap().ordinal, 1);
    }
}
