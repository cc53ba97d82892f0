//! Mapping Raft outcomes to gRPC status codes, with the leader hint clients follow.

use openraft::TryAsRef;
use openraft::error::ClientWriteError;
use openraft::error::ForwardToLeader;
use openraft::error::RaftError;
use shardkv_proto::CONFIG_NUM_HEADER;
use shardkv_proto::LEADER_ADDR_HEADER;
use shardkv_proto::LEADER_ID_HEADER;
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

/// Ok when this group serves `shard` now; otherwise WrongGroup (FAILED_PRECONDITION with the
/// group's config number, so the client refreshes its shard map) or, while the shard is moving
/// in, UNAVAILABLE naming the leader, so the client waits there instead of trying other
/// replicas. `leader` is only asked for in that case.
pub fn admit(
    admission: Admission,
    shard: ShardId,
    leader: impl FnOnce() -> Option<(NodeId, String)>,
) -> Result<(), Status> {
    match admission {
        Admission::Serve => Ok(()),
        Admission::MovingIn => {
            let mut status = Status::unavailable(format!("shard {shard} is moving into this group; retry shortly"));
            if let Some((id, addr)) = leader() {
                add_leader_hint(&mut status, id, &addr);
            }
            Err(status)
        }
        Admission::WrongGroup { config_num } => {
            let mut status = Status::failed_precondition(format!(
                "wrong group: shard {shard} is not served by this group in config {config_num}; refresh the shard map"
            ));
            status.metadata_mut().insert(CONFIG_NUM_HEADER, MetadataValue::from(config_num));
            Err(status)
        }
    }
}

/// The admission an applied data operation reported, if it was refused.
pub fn refused_at_apply(
    result: &OpResult,
    shard: ShardId,
    leader: impl FnOnce() -> Option<(NodeId, String)>,
) -> Result<(), Status> {
    match result {
        OpResult::WrongGroup { config_num } => admit(Admission::WrongGroup { config_num: *config_num }, shard, leader),
        OpResult::MovingIn => admit(Admission::MovingIn, shard, leader),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(status: &Status) -> Option<&str> {
        status.metadata().get(OUTCOME_HEADER).map(|v| v.to_str().unwrap())
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
