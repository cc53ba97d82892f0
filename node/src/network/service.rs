//! Incoming Raft RPCs: checks the caller's cluster and group, then hands the message to Raft.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::PoisonError;

use futures::Stream;

use openraft::raft::AppendEntriesRequest;
use openraft::vote::RaftLeaderId;
use shardkv_proto::v1::CopyFileChunk;
use shardkv_proto::v1::CopyFileRequest;
use shardkv_proto::v1::RaftReply;
use shardkv_proto::v1::RaftRequest;
use shardkv_proto::v1::SnapshotChunk;
use shardkv_proto::v1::raft_server::Raft as RaftRpc;
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Request;
use tonic::Response;
use tonic::Status;
use tonic::Streaming;

use super::GroupScope;
use super::append_stream::StreamReply;
use super::channels::Channels;
use super::copy_fetch::CopyFetcher;
use crate::state_machine::SnapshotDir;
use crate::state_machine::SnapshotStore;
use crate::state_machine::copy_files::CopyFiles;
use crate::state_machine::snapshot_archive;
use crate::types::Raft;
use crate::types::Snapshot;
use crate::types::SnapshotMeta;
use crate::types::TypeConfig;
use crate::types::Vote;
use crate::types::decode;
use crate::types::encode;

pub struct RaftService {
    raft: Raft,
    scope: GroupScope,
    snapshots: SnapshotStore,
    copies: CopyFetcher,
    /// Turns true when the node stops: append streams end then, as a draining server takes no
    /// new calls (otherwise a stopping follower's log would keep growing until the drain's
    /// timeout, and its restart replay all of it).
    stopping: watch::Receiver<bool>,
}

impl RaftService {
    pub fn new(
        raft: Raft,
        scope: GroupScope,
        snapshots: SnapshotStore,
        files: CopyFiles,
        channels: Channels,
        stopping: watch::Receiver<bool>,
    ) -> Self {
        let copies = CopyFetcher::new(files, channels, scope.clone());
        Self { raft, scope, snapshots, copies, stopping }
    }

    fn decode_request<T: for<'de> serde::Deserialize<'de>>(&self, request: Request<RaftRequest>) -> Result<T, Status> {
        admit_and_decode(&self.scope, request.into_inner())
    }
}

/// Refuses a message of another cluster or group, then decodes it.
fn admit_and_decode<T: for<'de> serde::Deserialize<'de>>(
    scope: &GroupScope,
    message: RaftRequest,
) -> Result<T, Status> {
    scope.admit("Raft RPC", &message.cluster_id, message.group_id)?;
    decode(&message.payload).map_err(|e| Status::invalid_argument(format!("malformed Raft message: {e}")))
}

/// Raft's answer travels as `Result<T, String>`; a node that has stopped answers with the error.
fn reply<T: serde::Serialize, E: std::fmt::Display>(result: Result<T, E>) -> Result<Response<RaftReply>, Status> {
    Ok(Response::new(RaftReply { payload: encode(&result.map_err(|e| e.to_string())) }))
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = self.decode_request(request)?;
        self.copies.fetch_missing(&self.raft, *rpc.vote.leader_id().node_id(), &rpc.entries).await?;
        reply(self.raft.append_entries(rpc).await)
    }

    type StreamAppendStream = Pin<Box<dyn Stream<Item = Result<RaftReply, Status>> + Send + 'static>>;

    /// Hands the appends to Raft as they arrive and answers each in order. A message that is
    /// refused (another cluster, malformed, a copy file no peer has) or a broken stream ends
    /// the appends; after the answers to those before it, the stream ends with its status. It
    /// also ends when the node stops; the leader's next stream is refused like any new call to
    /// a stopping node.
    async fn stream_append(
        &self,
        request: Request<Streaming<RaftRequest>>,
    ) -> Result<Response<Self::StreamAppendStream>, Status> {
        let failed: Arc<Mutex<Option<Status>>> = Arc::default();
        let stopped = |mut stopping: watch::Receiver<bool>| async move {
            let _ = stopping.wait_for(|stop| *stop).await;
        };
        let appends = admitted_appends(
            request.into_inner(),
            self.scope.clone(),
            self.copies.clone(),
            self.raft.clone(),
            failed.clone(),
        );
        // The appends end too, which drops the request stream and so resets it: the leader
        // stops sending on it, and it does not hold the draining server open.
        let appends = futures::StreamExt::take_until(appends, stopped(self.stopping.clone()));
        let answers = self.raft.stream_append(appends).map(|answer| {
            let answer: StreamReply = answer.map_err(|fatal| fatal.to_string());
            Ok(RaftReply { payload: encode(&answer) })
        });
        let refusal = futures::stream::iter(std::iter::from_fn(move || {
            failed.lock().unwrap_or_else(PoisonError::into_inner).take().map(Err)
        }));
        let answers = futures::StreamExt::take_until(answers.chain(refusal), stopped(self.stopping.clone()));
        Ok(Response::new(Box::pin(answers)))
    }

    type FetchCopyFileStream = ReceiverStream<Result<CopyFileChunk, Status>>;

    async fn fetch_copy_file(
        &self,
        request: Request<CopyFileRequest>,
    ) -> Result<Response<Self::FetchCopyFileStream>, Status> {
        let request = request.into_inner();
        self.scope.admit("copy file request", &request.cluster_id, request.group_id)?;
        Ok(Response::new(self.copies.send(&request.name)?))
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
        let dir = self.snapshots.temp_path();
        let size = match receive_and_check(first.data, &mut chunks, dir.clone(), meta.clone()).await {
            Ok(size) => size,
            Err(status) => {
                // Best effort: the directory's temp files are also swept at the next start.
                let _ = std::fs::remove_dir_all(&dir);
                return Err(status);
            }
        };
        tracing::info!(last_log_id = ?meta.last_log_id, bytes = size, "snapshot received");
        let snapshot = Snapshot { meta, snapshot: SnapshotDir { path: dir, size } };
        reply(self.raft.install_full_snapshot(vote, snapshot).await)
    }
}

/// The appends of a stream, admitted one by one as `RaftService::append_entries` admits one;
/// the first refusal or transport error ends them and is left in `failed`.
fn admitted_appends(
    messages: Streaming<RaftRequest>,
    scope: GroupScope,
    copies: CopyFetcher,
    raft: Raft,
    failed: Arc<Mutex<Option<Status>>>,
) -> impl futures::Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + 'static {
    futures::stream::unfold(Some(messages), move |messages| {
        let (scope, copies, raft, failed) = (scope.clone(), copies.clone(), raft.clone(), failed.clone());
        async move {
            let mut messages = messages?;
            let admitted = async {
                let Some(message) = messages.next().await.transpose()? else { return Ok(None) };
                let rpc: AppendEntriesRequest<TypeConfig> = admit_and_decode(&scope, message)?;
                copies.fetch_missing(&raft, *rpc.vote.leader_id().node_id(), &rpc.entries).await?;
                Ok(Some(rpc))
            };
            match admitted.await {
                Ok(Some(rpc)) => Some((rpc, Some(messages))),
                Ok(None) => None,
                Err(status) => {
                    *failed.lock().unwrap_or_else(PoisonError::into_inner) = Some(status);
                    None
                }
            }
        }
    })
}

/// Unpacks the archive into a checkpoint directory as its chunks arrive (on a blocking
/// thread, through a channel), then reads the directory through before Raft sees it: a
/// malformed one is refused here, as the sender's error, instead of failing the install, which
/// would stop this node's Raft. Returns the bytes of the snapshot's files.
async fn receive_and_check(
    first_data: Vec<u8>,
    chunks: &mut Streaming<SnapshotChunk>,
    dir: PathBuf,
    meta: SnapshotMeta,
) -> Result<u64, Status> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let unpacking = tokio::task::spawn_blocking(move || -> std::io::Result<u64> {
        let size = snapshot_archive::unpack(ChunkReader { rx, chunk: Vec::new(), read: 0 }, &dir)?;
        crate::state_machine::check_snapshot(&dir, &meta)?;
        Ok(size)
    });
    let mut stream_broken = None;
    let mut next = Some(first_data);
    while let Some(data) = next.take() {
        if tx.send(data).await.is_err() {
            // The unpacker stopped; its error says why.
            break;
        }
        next = match chunks.next().await {
            Some(Ok(chunk)) => Some(chunk.data),
            Some(Err(status)) => {
                stream_broken = Some(status);
                None
            }
            None => None,
        };
    }
    drop(tx);
    let unpacked = unpacking.await.map_err(|e| Status::internal(e.to_string()))?;
    // A broken stream is reported as itself, not as the truncation it leaves.
    if let Some(status) = stream_broken {
        return Err(status);
    }
    unpacked.map_err(|e| Status::invalid_argument(format!("malformed snapshot: {e}")))
}

/// Reads the chunks a channel delivers as one byte stream; the channel's close is its end.
struct ChunkReader {
    rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    read: usize,
}

impl std::io::Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.read == self.chunk.len() {
            match self.rx.blocking_recv() {
                Some(chunk) => (self.chunk, self.read) = (chunk, 0),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.read);
        buf[..n].copy_from_slice(&self.chunk[self.read..self.read + n]);
        self.read += n;
        Ok(n)
    }
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
