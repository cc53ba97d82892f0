//! Whether a Removed notice is true. Anyone who knows the cluster and group id can send one,
//! and acting on it (recording that the node left, for good) must not depend on trusting the
//! sender. The node's own log cannot settle it either: openraft stops replicating to a node as
//! soon as the membership without it is appended, so a removed node never applies that
//! membership. The node therefore asks the members of its own membership (addresses that came
//! through its Raft log, not from the sender) and believes the removal only when their leader
//! has committed a membership that no longer lists it.

use crate::types::NodeId;

/// One member's answer about the group (from its Admin Status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerView {
    pub node_id: NodeId,
    /// The member says it is the group's leader.
    pub leader: bool,
    /// Node ids of the membership it holds, and that membership's log index.
    pub members: Vec<NodeId>,
    pub membership_index: u64,
    pub committed_index: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The leader committed a membership at `membership_index` without this node.
    Removed { leader: NodeId, membership_index: u64 },
    /// The leader's committed membership still lists this node: the notice is false.
    StillMember { leader: NodeId },
    /// No leader answered, or its latest membership is not committed yet: ask again later.
    Unknown,
}

pub fn verdict(me: NodeId, views: &[PeerView]) -> Verdict {
    let Some(leader) = views.iter().find(|v| v.leader && v.node_id != me) else {
        return Verdict::Unknown;
    };
    if leader.committed_index < leader.membership_index {
        return Verdict::Unknown;
    }
    if leader.members.contains(&me) {
        Verdict::StillMember { leader: leader.node_id }
    } else {
        Verdict::Removed { leader: leader.node_id, membership_index: leader.membership_index }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(node_id: NodeId, leader: bool, members: &[NodeId], membership_index: u64, committed: u64) -> PeerView {
        PeerView { node_id, leader, members: members.to_vec(), membership_index, committed_index: committed }
    }

    #[test]
    fn a_leader_that_committed_a_membership_without_me_confirms_the_removal() {
        let views = [view(1, false, &[1, 2, 3], 5, 5), view(2, true, &[1, 2], 9, 10)];
        assert_eq!(verdict(3, &views), Verdict::Removed { leader: 2, membership_index: 9 });
    }

    #[test]
    fn a_leader_that_still_lists_me_refutes_the_notice() {
        let views = [view(2, true, &[1, 2, 3], 9, 12)];
        assert_eq!(verdict(3, &views), Verdict::StillMember { leader: 2 });
    }

    #[test]
    fn followers_alone_an_uncommitted_membership_or_myself_decide_nothing() {
        assert_eq!(verdict(3, &[view(1, false, &[1, 2], 9, 9), view(2, false, &[1, 2], 9, 9)]), Verdict::Unknown);
        assert_eq!(verdict(3, &[view(2, true, &[1, 2], 9, 8)]), Verdict::Unknown, "not committed yet");
        assert_eq!(verdict(3, &[view(3, true, &[1, 2], 9, 9)]), Verdict::Unknown, "my own word does not count");
        assert_eq!(verdict(3, &[]), Verdict::Unknown);
    }
}
