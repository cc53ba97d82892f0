//! Incoming Raft RPCs: checks the caller's cluster and group, then hands the message to Raft.

use std::io::Write;

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
use crate::state_machine::SnapshotFile;
use crate::state_machine::SnapshotStore;
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
        let path = self.snapshots.temp_path();
        let received = receive_into(&path, first.data, &mut chunks).await;
        let size = match received {
            Ok(size) => size,
            Err(status) => {
                // Best effort: the directory's temp files are also swept at the next start.
                let _ = std::fs::remove_file(&path);
                return Err(status);
            }
        };
        tracing::info!(last_log_id = ?meta.last_log_id, bytes = size, "snapshot received");
        let snapshot = Snapshot { meta, snapshot: SnapshotFile { path, size } };
        reply(self.raft.install_full_snapshot(vote, snapshot).await)
    }
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
