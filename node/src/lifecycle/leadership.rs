//! Moving leadership off this node to the most caught-up voter.

use openraft::async_runtime::WatchReceiver;
use std::collections::BTreeMap;
use std::time::Duration;

use crate::types::LogId;
use crate::types::NodeId;
use crate::types::Raft;

/// The voter (other than `me`) whose replicated log reaches furthest; ties go to the lowest id
/// so the choice is deterministic.
pub fn most_caught_up_voter(
    me: NodeId,
    voters: impl IntoIterator<Item = NodeId>,
    matched: &BTreeMap<NodeId, Option<LogId>>,
) -> Option<NodeId> {
    let matched_index = |id: NodeId| matched.get(&id).cloned().flatten().map(|l| l.index());
    voters.into_iter().filter(|id| *id != me).max_by(|a, b| matched_index(*a).cmp(&matched_index(*b)).then(b.cmp(a)))
}

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("this node is not the leader")]
    NotLeader,
    #[error("there is no other voter to take over leadership")]
    NoOtherVoter,
    #[error("node {0} is not a voter of this group")]
    NotAVoter(NodeId),
    #[error("leadership did not move within {0:?}")]
    Timeout(Duration),
    #[error("raft has stopped: {0}")]
    Stopped(String),
}

/// Transfers leadership to `to` (or the most caught-up voter) and waits until another node
/// leads; returns the new leader.
pub async fn transfer_leadership(raft: &Raft, to: Option<NodeId>, timeout: Duration) -> Result<NodeId, TransferError> {
    let metrics = raft.metrics().borrow_watched().clone();
    let me = metrics.id;
    if metrics.current_leader != Some(me) {
        return Err(TransferError::NotLeader);
    }
    let voters: Vec<NodeId> = metrics.membership_config.membership().voter_ids().collect();
    let target = match to {
        Some(id) if !voters.contains(&id) || id == me => return Err(TransferError::NotAVoter(id)),
        Some(id) => id,
        None => {
            let matched = metrics.replication.clone().unwrap_or_default();
            most_caught_up_voter(me, voters, &matched).ok_or(TransferError::NoOtherVoter)?
        }
    };
    raft.trigger().transfer_leader(target).await.map_err(|e| TransferError::Stopped(e.to_string()))?;
    let moved = raft
        .wait(Some(timeout))
        .metrics(|m| m.current_leader.is_some_and(|l| l != me), "leadership moved off this node")
        .await
        .map_err(|_| TransferError::Timeout(timeout))?;
    Ok(moved.current_leader.unwrap_or(target))
}

#[cfg(test)]
mod tests {
    use openraft::vote::RaftLeaderId;

    use super::*;

    fn log_id(index: u64) -> Option<LogId> {
        let leader = openraft::impls::leader_id_adv::LeaderId::<u64, NodeId>::new(1, 1);
        Some(LogId::new(leader.to_committed(), index))
    }

    #[test]
    fn picks_the_voter_with_the_longest_replicated_log() {
        let matched = BTreeMap::from([(2, log_id(10)), (3, log_id(12)), (4, log_id(11))]);
        assert_eq!(most_caught_up_voter(1, [1, 2, 3, 4], &matched), Some(3));
    }

    #[test]
    fn never_picks_itself_and_breaks_ties_by_lowest_id() {
        let matched = BTreeMap::from([(1, log_id(99)), (2, log_id(5)), (3, log_id(5))]);
        assert_eq!(most_caught_up_voter(1, [1, 2, 3], &matched), Some(2));
    }

    #[test]
    fn an_unknown_progress_ranks_last_and_a_lone_voter_has_no_successor() {
        let matched = BTreeMap::from([(2, None), (3, log_id(1))]);
        assert_eq!(most_caught_up_voter(1, [1, 2, 3], &matched), Some(3));
        assert_eq!(most_caught_up_voter(1, [1], &BTreeMap::new()), None);
    }
}
