//! Mapping Raft outcomes to gRPC status codes, with the leader hint clients follow.

use openraft::TryAsRef;
use openraft::error::ClientWriteError;
use openraft::error::ForwardToLeader;
use openraft::error::RaftError;
use shardkv_proto::CONFIG_NUM_HEADER;
use shardkv_proto::LEADER_ADDR_HEADER;
use shardkv_proto::LEADER_ID_HEADER;
use shardkv_proto::MOVING_IN_HEADER;
use shardkv_proto::OUTCOME_HEADER;
use shardkv_proto::OUTCOME_UNKNOWN;
use tonic::Status;
use tonic::metadata::MetadataValue;

use crate::migration::Admission;
use crate::types::NodeId;
use crate::types::OpResult;
use crate::types::ShardId;
use crate::types::TypeConfig;

/// UNAVAILABLE telling the client where the leader is, when known.
pub fn not_leader(forward: &ForwardToLeader<TypeConfig>) -> Status {
    let leader_addr = forward.leader_node.as_ref().map(|n| n.addr.clone());
    let message = match (forward.leader_id, &leader_addr) {
        (Some(id), Some(addr)) => format!("not the leader; the leader is node {id} at {addr}"),
        _ => "not the leader and no leader is known yet; retry shortly".to_string(),
    };
    let mut status = Status::unavailable(message);
    if let (Some(id), Some(addr)) = (forward.leader_id, leader_addr) {
        add_leader_hint(&mut status, id, &addr);
    }
    status
}

fn add_leader_hint(status: &mut Status, id: NodeId, addr: &str) {
    let md = status.metadata_mut();
    md.insert(LEADER_ID_HEADER, MetadataValue::from(id));
    if let Ok(v) = addr.parse() {
        md.insert(LEADER_ADDR_HEADER, v);
    }
}

/// Any Raft API error: forwarding becomes UNAVAILABLE with a hint, the rest keeps its text.
pub fn raft_error<E>(err: RaftError<TypeConfig, E>) -> Status
where
    E: std::error::Error + TryAsRef<ForwardToLeader<TypeConfig>>,
{
    if let Some(forward) = err.forward_to_leader() {
        return not_leader(forward);
    }
    match err {
        RaftError::Fatal(fatal) => Status::unavailable(format!("raft has stopped on this node: {fatal}")),
        RaftError::APIError(e) => Status::unavailable(e.to_string()),
    }
}

/// A failed client write. Refused before its entry was appended (not the leader): UNAVAILABLE
/// with the leader hint, and nothing was applied. Its entry discarded on a leader change, or
/// Raft stopped while it was in flight: the same codes, marked outcome-unknown, because the
/// entry may have committed through another leader (a retry with the same session sequence
/// number is still safe).
pub fn write_error(err: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> Status {
    let mut status = match &err {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => return not_leader(forward),
        RaftError::APIError(ClientWriteError::LogEntryDiscarded(forward)) => {
            let mut status = Status::unavailable(err.to_string());
            if let (Some(id), Some(node)) = (forward.leader_id, &forward.leader_node) {
                add_leader_hint(&mut status, id, &node.addr);
            }
            status
        }
        _ => raft_error(err),
    };
    status.metadata_mut().insert(OUTCOME_HEADER, MetadataValue::from_static(OUTCOME_UNKNOWN));
    status
}

/// A retry older than every result its session caches: FAILED_PRECONDITION, marked
/// outcome-unknown, because the write may have been applied before its result was evicted.
pub fn response_evicted(seq: u64, client_id: u64) -> Status {
    let mut status = Status::failed_precondition(format!(
        "session window exceeded: sequence {seq} of client {client_id} is older than the {} results the session \
         caches; it may have been applied, read the key before writing again",
        crate::state_machine::session::MAX_CACHED_RESPONSES
    ));
    status.metadata_mut().insert(OUTCOME_HEADER, MetadataValue::from_static(OUTCOME_UNKNOWN));
    status
}

/// The replica answering a request, as far as deciding WrongGroup goes.
pub struct Answering<L> {
    /// This replica leads its group: its applied config is the group's view.
    pub leads: bool,
    /// The shard map number the client routed the request with (0: it did not say).
    pub routed_with: u64,
    /// The leader as this replica knows it; asked for only when a refusal names it.
    pub leader: L,
}

/// How an admission check answers the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Serve,
    MovingIn,
    /// The group does not serve the shard in `config_num`: the client's map is stale.
    WrongGroup {
        config_num: u64,
    },
    /// This replica's view cannot say the client's map is stale: it applied a config older than
    /// the map the request was routed with, or it is not the leader. Another replica (the
    /// leader) is asked instead.
    NotThisReplica {
        config_num: u64,
        behind: bool,
    },
}

/// WrongGroup sends the client to refresh its map, so only a view at least as new as the
/// client's map may give it, and only the leader's: a lagging follower answering WrongGroup
/// would send the client back to the same group, and the same replica, until its deadline.
fn answer(admission: Admission, leads: bool, routed_with: u64) -> Answer {
    match admission {
        Admission::Serve => Answer::Serve,
        Admission::MovingIn => Answer::MovingIn,
        Admission::WrongGroup { config_num } if config_num < routed_with => {
            Answer::NotThisReplica { config_num, behind: true }
        }
        Admission::WrongGroup { config_num } if !leads => Answer::NotThisReplica { config_num, behind: false },
        Admission::WrongGroup { config_num } => Answer::WrongGroup { config_num },
    }
}

/// Ok when this group serves `shard` now. Otherwise, from the leader's view at least as new as
/// the client's map, WrongGroup (FAILED_PRECONDITION with the group's config number, so the
/// client refreshes its map); while the shard is moving in, UNAVAILABLE naming the leader, so
/// the client waits there; from any other view, UNAVAILABLE naming the leader, so the client
/// asks it (or, with no leader known, another replica).
pub fn admit(
    admission: Admission,
    shard: ShardId,
    replica: Answering<impl FnOnce() -> Option<(NodeId, String)>>,
) -> Result<(), Status> {
    let mut status = match answer(admission, replica.leads, replica.routed_with) {
        Answer::Serve => return Ok(()),
        Answer::MovingIn => {
            let mut status = Status::unavailable(format!("shard {shard} is moving into this group; retry shortly"));
            status.metadata_mut().insert(MOVING_IN_HEADER, MetadataValue::from_static("1"));
            status
        }
        Answer::WrongGroup { config_num } => {
            let mut status = Status::failed_precondition(format!(
                "wrong group: shard {shard} is not served by this group in config {config_num}; refresh the shard map"
            ));
            status.metadata_mut().insert(CONFIG_NUM_HEADER, MetadataValue::from(config_num));
            return Err(status);
        }
        Answer::NotThisReplica { config_num, behind: true } => Status::unavailable(format!(
            "this replica has applied config {config_num}, older than the shard map ({}) the request was routed \
             with; retry at the leader",
            replica.routed_with
        )),
        Answer::NotThisReplica { config_num, behind: false } => Status::unavailable(format!(
            "shard {shard} is not served here in config {config_num}, but this replica is not the leader, whose \
             view decides; retry at the leader"
        )),
    };
    if let Some((id, addr)) = (replica.leader)() {
        add_leader_hint(&mut status, id, &addr);
    }
    Err(status)
}

/// The admission an applied data operation reported, if it was refused. Only a leader
/// proposes, so the refusal is the leader's view as of the entry's place in the log.
pub fn refused_at_apply(
    result: &OpResult,
    shard: ShardId,
    routed_with: u64,
    leader: impl FnOnce() -> Option<(NodeId, String)>,
) -> Result<(), Status> {
    let admission = match result {
        OpResult::WrongGroup { config_num } => Admission::WrongGroup { config_num: *config_num },
        OpResult::MovingIn => Admission::MovingIn,
        _ => return Ok(()),
    };
    admit(admission, shard, Answering { leads: true, routed_with, leader })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(status: &Status) -> Option<&str> {
        status.metadata().get(OUTCOME_HEADER).map(|v| v.to_str().unwrap())
    }

    #[test]
    fn wrong_group_is_answered_only_from_the_leaders_view_as_new_as_the_clients_map() {
        let wrong = Admission::WrongGroup { config_num: 5 };
        assert_eq!(answer(wrong, true, 5), Answer::WrongGroup { config_num: 5 });
        assert_eq!(answer(wrong, true, 0), Answer::WrongGroup { config_num: 5 }, "a client that did not say");
        assert_eq!(answer(wrong, true, 6), Answer::NotThisReplica { config_num: 5, behind: true });
        assert_eq!(answer(wrong, false, 6), Answer::NotThisReplica { config_num: 5, behind: true });
        assert_eq!(answer(wrong, false, 5), Answer::NotThisReplica { config_num: 5, behind: false });
        assert_eq!(answer(Admission::Serve, false, 9), Answer::Serve, "a follower serves what it has");
        assert_eq!(answer(Admission::MovingIn, false, 9), Answer::MovingIn);
    }

    #[test]
    fn a_shard_moving_in_says_so_to_the_client() {
        let leader = || Some((3, "127.0.0.3:7000".to_string()));
        let status = admit(Admission::MovingIn, 1, Answering { leads: true, routed_with: 5, leader }).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.metadata().get(MOVING_IN_HEADER).is_some());
        assert_eq!(status.metadata().get(LEADER_ADDR_HEADER).unwrap(), "127.0.0.3:7000");
    }

    #[test]
    fn a_replica_that_cannot_decide_names_the_leader() {
        let wrong = Admission::WrongGroup { config_num: 5 };
        let leader = || Some((3, "127.0.0.3:7000".to_string()));
        let status = admit(wrong, 1, Answering { leads: false, routed_with: 7, leader }).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.message().contains("older than the shard map (7)"), "{}", status.message());
        assert_eq!(status.metadata().get(LEADER_ADDR_HEADER).unwrap(), "127.0.0.3:7000");
        assert!(status.metadata().get(CONFIG_NUM_HEADER).is_none(), "not a WrongGroup answer");
        let status = admit(wrong, 1, Answering { leads: true, routed_with: 5, leader }).unwrap_err();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert_eq!(status.metadata().get(CONFIG_NUM_HEADER).unwrap(), "5");
    }

    #[test]
    fn a_write_refused_before_its_entry_was_appended_is_definite() {
        let status = write_error(RaftError::APIError(ClientWriteError::ForwardToLeader(ForwardToLeader::empty())));
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(outcome(&status), None);
    }

    #[test]
    fn a_write_whose_entry_was_discarded_or_whose_raft_stopped_is_marked_unknown() {
        let discarded = ClientWriteError::LogEntryDiscarded(ForwardToLeader::empty());
        let status = write_error(RaftError::APIError(discarded));
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.message().contains("commit status unknown"), "{}", status.message());
        assert_eq!(outcome(&status), Some(OUTCOME_UNKNOWN));
        let stopped = write_error(RaftError::Fatal(openraft::error::Fatal::Stopped));
        assert_eq!(outcome(&stopped), Some(OUTCOME_UNKNOWN));
        let evicted = response_evicted(3, 9);
        assert_eq!((evicted.code(), outcome(&evicted)), (tonic::Code::FailedPrecondition, Some(OUTCOME_UNKNOWN)));
    }
}
