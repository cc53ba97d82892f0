//! Incoming Raft RPCs: checks the caller's cluster and group, then hands the message to Raft.

use std::io::Write;
use std::path::PathBuf;

use shardkv_proto::v1::RaftReply;
use shardkv_proto::v1::RaftRequest;
use shardkv_proto::v1::SnapshotChunk;
use shardkv_proto::v1::raft_server::Raft as RaftRpc;
use tokio_stream::StreamExt;
use tonic::Request;
use tonic::Response;
use tonic::Status;
use tonic::Streaming;

use super::GroupScope;
use crate::state_machine::SnapshotDir;
use crate::state_machine::SnapshotStore;
use crate::state_machine::snapshot_archive;
use crate::types::Raft;
use crate::types::Snapshot;
use crate::types::SnapshotMeta;
use crate::types::Vote;
use crate::types::decode;
use crate::types::encode;

pub struct RaftService {
    raft: Raft,
    scope: GroupScope,
    snapshots: SnapshotStore,
}

impl RaftService {
    pub fn new(raft: Raft, scope: GroupScope, snapshots: SnapshotStore) -> Self {
        Self { raft, scope, snapshots }
    }

    fn decode_request<T: for<'de> serde::Deserialize<'de>>(&self, request: Request<RaftRequest>) -> Result<T, Status> {
        let request = request.into_inner();
        self.scope.admit("Raft RPC", &request.cluster_id, request.group_id)?;
        decode(&request.payload).map_err(|e| Status::invalid_argument(format!("malformed Raft message: {e}")))
    }
}

/// Raft's answer travels as `Result<T, String>`; a node that has stopped answers with the error.
fn reply<T: serde::Serialize, E: std::fmt::Display>(result: Result<T, E>) -> Result<Response<RaftReply>, Status> {
    Ok(Response::new(RaftReply { payload: encode(&result.map_err(|e| e.to_string())) }))
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let rpc = self.decode_request(request)?;
        reply(self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let rpc = self.decode_request(request)?;
        reply(self.raft.vote(rpc).await)
    }

    async fn pre_vote(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let rpc = self.decode_request(request)?;
        reply(self.raft.pre_vote(rpc).await)
    }

    async fn transfer_leader(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let rpc = self.decode_request(request)?;
        reply(self.raft.handle_transfer_leader(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftReply>, Status> {
        let mut chunks = request.into_inner();
        let first = chunks.next().await.ok_or_else(|| Status::invalid_argument("empty snapshot stream"))??;
        self.scope.admit("Raft RPC", &first.cluster_id, first.group_id)?;
        let (vote, meta): (Vote, SnapshotMeta) =
            decode(&first.header).map_err(|e| Status::invalid_argument(format!("malformed snapshot header: {e}")))?;
        let archive = self.snapshots.temp_path();
        let dir = self.snapshots.temp_path();
        let received = match receive_into(&archive, first.data, &mut chunks).await {
            Ok(_) => unpack_and_check(archive.clone(), dir.clone(), meta.clone()).await,
            Err(status) => Err(status),
        };
        // Best effort: the directory's temp files are also swept at the next start.
        let _ = std::fs::remove_file(&archive);
        let size = match received {
            Ok(size) => size,
            Err(status) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(status);
            }
        };
        tracing::info!(last_log_id = ?meta.last_log_id, bytes = size, "snapshot received");
        let snapshot = Snapshot { meta, snapshot: SnapshotDir { path: dir, size } };
        reply(self.raft.install_full_snapshot(vote, snapshot).await)
    }
}

/// Unpacks a received archive into a checkpoint directory and reads it through before Raft
/// sees it: a malformed one is refused here, as the sender's error, instead of failing the
/// install, which would stop this node's Raft. Returns the bytes of the snapshot's files.
async fn unpack_and_check(archive: PathBuf, dir: PathBuf, meta: SnapshotMeta) -> Result<u64, Status> {
    tokio::task::spawn_blocking(move || -> std::io::Result<u64> {
        let input = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(&archive)?);
        let size = snapshot_archive::unpack(input, &dir)?;
        crate::state_machine::check_snapshot(&dir, &meta)?;
        Ok(size)
    })
    .await
    .map_err(|e| Status::internal(e.to_string()))?
    .map_err(|e| Status::invalid_argument(format!("malformed snapshot: {e}")))
}

async fn receive_into(
    path: &std::path::Path,
    first_data: Vec<u8>,
    chunks: &mut Streaming<SnapshotChunk>,
) -> Result<u64, Status> {
    let io = |e: std::io::Error| Status::internal(format!("writing received snapshot: {e}"));
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    file.write_all(&first_data).map_err(io)?;
    let mut size = first_data.len() as u64;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        file.write_all(&chunk.data).map_err(io)?;
        size += chunk.data.len() as u64;
    }
    let file = file.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    Ok(size)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::collections::BTreeSet;

    use openraft::BasicNode;
    use openraft::EntryPayload;
    use openraft::Membership;
    use openraft::raft::AppendEntriesRequest;
    use openraft::raft::AppendEntriesResponse;
    use openraft::raft::SnapshotResponse;
    use openraft::raft::TransferLeaderRequest;
    use openraft::raft::VoteRequest;
    use openraft::raft::VoteResponse;

    use super::*;
    use crate::types::Entry;
    use crate::types::StoredMembership;
    use crate::types::TypeConfig;
    use crate::types::hostile_input;
    use crate::types::hostile_input::log_id;

    fn membership() -> StoredMembership {
        let nodes: BTreeMap<u64, BasicNode> =
            (1..=3).map(|id| (id, BasicNode::new(format!("127.0.0.{id}:7100")))).collect();
        StoredMembership::new(Some(log_id(1, 1)), Membership::new(vec![BTreeSet::from([1, 2, 3])], nodes).unwrap())
    }

    fn append_entries(key: &[u8]) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new(2, 1),
            prev_log_id: Some(log_id(1, 4)),
            entries: vec![
                Entry { log_id: log_id(2, 5), payload: EntryPayload::Normal(hostile_input::put(key, b"value")) },
                Entry { log_id: log_id(2, 6), payload: EntryPayload::Membership(membership().membership().clone()) },
                Entry { log_id: log_id(2, 7), payload: EntryPayload::Blank },
            ],
            leader_commit: Some(log_id(2, 5)),
        }
    }

    #[test]
    fn raft_requests_survive_hostile_bytes() {
        hostile_input::check::<AppendEntriesRequest<TypeConfig>>(&encode(&append_entries(b"key")));
        let vote = VoteRequest::<TypeConfig>::new(Vote::new(3, 2), Some(log_id(2, 9)));
        hostile_input::check::<VoteRequest<TypeConfig>>(&encode(&vote));
        let transfer = TransferLeaderRequest::<TypeConfig>::new(Vote::new(3, 1), 2, Some(log_id(3, 10)));
        hostile_input::check::<TransferLeaderRequest<TypeConfig>>(&encode(&transfer));
        let meta = SnapshotMeta { last_log_id: Some(log_id(2, 40)), last_membership: membership() };
        hostile_input::check::<(Vote, SnapshotMeta)>(&encode(&(Vote::new(2, 1), meta)));
    }

    #[test]
    fn raft_replies_survive_hostile_bytes() {
        let ok: Result<AppendEntriesResponse<TypeConfig>, String> = Ok(AppendEntriesResponse::Success);
        hostile_input::check::<Result<AppendEntriesResponse<TypeConfig>, String>>(&encode(&ok));
        let vote: Result<VoteResponse<TypeConfig>, String> = Ok(VoteResponse::new(Vote::new(3, 2), None, true));
        hostile_input::check::<Result<VoteResponse<TypeConfig>, String>>(&encode(&vote));
        let snapshot: Result<SnapshotResponse<TypeConfig>, String> = Ok(SnapshotResponse::new(Vote::new(3, 2)));
        hostile_input::check::<Result<SnapshotResponse<TypeConfig>, String>>(&encode(&snapshot));
        let stopped: Result<(), String> = Err("raft has stopped".into());
        hostile_input::check::<Result<(), String>>(&encode(&stopped));
    }

    #[test]
    fn an_append_with_a_huge_key_length_is_refused() {
        let bytes = encode(&append_entries(b"MARKER-KEY"));
        for huge in hostile_input::HUGE_LENGTHS {
            let hostile = hostile_input::with_length_before(&bytes, b"MARKER-KEY", huge);
            assert!(decode::<AppendEntriesRequest<TypeConfig>>(&hostile).is_err());
        }
    }
}
