//! Outgoing Raft RPCs (openraft `RaftNetworkFactory` / `RaftNetworkV2`).

use std::future::Future;
use std::time::Duration;

use futures::Stream;
use futures::StreamExt;
use openraft::BasicNode;
use openraft::OptionalSend;
use openraft::base::BoxFuture;
use openraft::base::BoxStream;
use openraft::error::NetworkError;
use openraft::error::RPCError;
use openraft::error::ReplicationClosed;
use openraft::error::StreamingError;
use openraft::error::Unreachable;
use openraft::network::RPCOption;
use openraft::network::RaftNetworkFactory;
use openraft::network::stream_append_sequential;
use openraft::network::v2::RaftNetworkV2;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::SnapshotResponse;
use openraft::raft::StreamAppendResult;
use openraft::raft::TransferLeaderRequest;
use openraft::raft::TransferLeaderResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use shardkv_proto::v1::RaftRequest;
use shardkv_proto::v1::SnapshotChunk;
use shardkv_proto::v1::raft_client::RaftClient;
use tonic::transport::Channel;

use super::GroupScope;
use super::MAX_MESSAGE_BYTES;
use super::SNAPSHOT_CHUNK_BYTES;
use super::append_batch::APPEND_BYTES;
use super::append_batch::split;
use super::append_stream;
use super::channels::Channels;
use crate::state_machine::SnapshotDir;
use crate::state_machine::snapshot_archive;
use crate::types::NodeId;
use crate::types::Snapshot;
use crate::types::TypeConfig;
use crate::types::Vote;
use crate::types::copy_file_of;
use crate::types::decode;
use crate::types::encode;
use crate::types::encoded_len;

type RpcError = RPCError<TypeConfig>;

/// Creates peer clients over channels shared with the node's other outgoing traffic.
#[derive(Clone)]
pub struct PeerNetwork {
    scope: GroupScope,
    channels: Channels,
}

/// The slowest rate at which a peer is still expected to take in and persist a large request.
const SLOWEST_PEER_BYTES_PER_SEC: f64 = 8.0 * 1024.0 * 1024.0;

/// Raft's deadline (a heartbeat interval) suits small requests. An append batch of shard
/// chunks (up to 64 entries of 1 MiB) needs longer on a busy machine, and cut off at Raft's
/// deadline it would be sent again, and cut off again, for as long as the machine stays busy.
fn deadline_for(raft_ttl: Duration, payload_bytes: usize) -> Duration {
    raft_ttl + Duration::from_secs_f64(payload_bytes as f64 / SLOWEST_PEER_BYTES_PER_SEC)
}

impl PeerNetwork {
    pub fn new(scope: GroupScope, channels: Channels) -> Self {
        Self { scope, channels }
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        let client = self.channels.get(&node.addr).map(|channel| {
            RaftClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES)
        });
        PeerClient {
            target,
            addr: node.addr.clone(),
            scope: self.scope.clone(),
            client: client.map_err(|e| e.to_string()),
            streams: true,
        }
    }
}

pub struct PeerClient {
    target: NodeId,
    addr: String,
    scope: GroupScope,
    /// An invalid peer address is reported on every call rather than panicking the factory.
    client: Result<RaftClient<Channel>, String>,
    /// Whether the peer takes `StreamAppend` (a node of an earlier version does not; replication
    /// to it then sends one append at a time).
    streams: bool,
}

impl PeerClient {
    fn request(&self, payload: Vec<u8>) -> RaftRequest {
        RaftRequest { cluster_id: self.scope.cluster_id.clone(), group_id: self.scope.group_id, payload }
    }

    fn client(&self) -> Result<RaftClient<Channel>, RpcError> {
        self.client.clone().map_err(|e| {
            RPCError::Unreachable(Unreachable::new(&std::io::Error::other(format!(
                "invalid address {:?} of node {}: {e}",
                self.addr, self.target
            ))))
        })
    }

    /// One unary RPC with a deadline (see `deadline_for`) that counts the payload and the
    /// bytes the peer fetches before it answers. The reply carries Raft's own `Result`; an error there
    /// (the peer's Raft has stopped) counts as the peer being unreachable.
    async fn unary<Resp, F, Fut>(
        &self,
        payload: Vec<u8>,
        fetched_bytes: usize,
        option: &RPCOption,
        call: F,
    ) -> Result<Resp, RpcError>
    where
        Resp: for<'de> serde::Deserialize<'de>,
        F: FnOnce(RaftClient<Channel>, tonic::Request<RaftRequest>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<shardkv_proto::v1::RaftReply>, tonic::Status>>,
    {
        let deadline = deadline_for(option.hard_ttl(), payload.len() + fetched_bytes);
        let mut request = tonic::Request::new(self.request(payload));
        request.set_timeout(deadline);
        let reply = call(self.client()?, request).await.map_err(|status| self.status_error(status))?;
        let reply: Result<Resp, String> =
            decode(&reply.into_inner().payload).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        reply.map_err(|e| self.status_error(tonic::Status::unavailable(e)))
    }

    fn status_error(&self, status: tonic::Status) -> RpcError {
        status_error(self.target, &self.addr, status)
    }
}

/// A failed call to node `target` at `addr`: a timeout is a network error, anything else makes
/// the node unreachable (Raft backs off before calling it again).
fn status_error(target: NodeId, addr: &str, status: tonic::Status) -> RpcError {
    let err = std::io::Error::other(format!("node {target} at {addr}: {}", status.message()));
    match status.code() {
        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => RPCError::Network(NetworkError::new(&err)),
        _ => RPCError::Unreachable(Unreachable::new(&err)),
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = SnapshotDir;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RpcError> {
        let mut pieces = split(rpc, APPEND_BYTES).into_iter();
        let rpc = pieces.next().expect("a split request has at least one piece");
        // Only the first piece goes; Raft sends the rest next, after what this reports.
        let sent_up_to = (pieces.len() > 0).then(|| rpc.entries.last().map(|e| e.log_id)).flatten();
        let payload = encode(&rpc);
        // The follower fetches the copy files these entries name before it answers.
        let copy_bytes: u64 = rpc.entries.iter().filter_map(copy_file_of).map(|f| f.size).sum();
        let reply = self
            .unary(payload, copy_bytes as usize, &option, |mut c, r| async move { c.append_entries(r).await })
            .await?;
        Ok(match (reply, sent_up_to) {
            (AppendEntriesResponse::Success, Some(last)) => AppendEntriesResponse::PartialSuccess(Some(last)),
            (reply, _) => reply,
        })
    }

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<'s, Result<BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RpcError>>, RpcError>>
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        // A heartbeat is a stream of exactly one append: one unary call costs less than a stream.
        if !self.streams || input.size_hint() == (1, Some(1)) {
            return stream_append_sequential(self, input, option);
        }
        Box::pin(async move {
            // The stream opens with its first append: Raft waits out its backoff before it
            // yields one, so a peer that is down is not called again at once. The open gets
            // that append's time, as a catching-up follower may be sent tens of MiB at once.
            let mut input = input;
            let Some(first) = input.next().await else {
                return Ok(Box::pin(futures::stream::empty()) as BoxStream<'s, _>);
            };
            let ttl = option.hard_ttl();
            let open_within = deadline_for(ttl, encoded_len(&first));
            let input = futures::stream::iter([first]).chain(input);
            let (messages, answers) =
                append_stream::outgoing(input, self.scope.clone(), move |bytes| deadline_for(ttl, bytes));
            // No gRPC deadline: the stream lives as long as Raft replicates through it; each
            // append's answer is timed instead (`append_stream::Answers`).
            let request = tonic::Request::new(messages);
            let opened = tokio::time::timeout(open_within, self.client()?.stream_append(request)).await;
            let replies = match opened {
                Ok(Ok(response)) => response.into_inner(),
                Ok(Err(status)) => {
                    if status.code() == tonic::Code::Unimplemented {
                        tracing::info!(
                            target_node = self.target,
                            "the peer has no StreamAppend; replicating to it one append at a time"
                        );
                        self.streams = false;
                    }
                    return Err(self.status_error(status));
                }
                Err(_) => return Err(self.status_error(tonic::Status::deadline_exceeded("opening the append stream"))),
            };
            let (target, addr) = (self.target, self.addr.clone());
            let stream = answers.stream(replies, ttl, move |status| status_error(target, &addr, status));
            Ok(Box::pin(stream) as BoxStream<'s, _>)
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RpcError> {
        self.unary(encode(&rpc), 0, &option, |mut c, r| async move { c.vote(r).await }).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RpcError> {
        self.unary(encode(&rpc), 0, &option, |mut c, r| async move { c.pre_vote(r).await }).await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RpcError> {
        self.unary(encode(&req), 0, &option, |mut c, r| async move { c.transfer_leader(r).await }).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let to_streaming = |e: RpcError| match e {
            RPCError::Unreachable(u) => StreamingError::Unreachable(u),
            other => StreamingError::Network(NetworkError::new(&other)),
        };
        let mut client = self.client().map_err(to_streaming)?;
        let packed = pack_in_chunks(snapshot.snapshot.path.clone());
        let header = encode(&(vote, snapshot.meta.clone()));
        let scope = self.scope.clone();
        let chunks = packed.enumerate().map(move |(i, data)| SnapshotChunk {
            cluster_id: scope.cluster_id.clone(),
            group_id: scope.group_id,
            header: if i == 0 { header.clone() } else { Vec::new() },
            data,
        });
        let mut request = tonic::Request::new(chunks);
        request.set_timeout(option.hard_ttl());
        let started = std::time::Instant::now();
        let reply = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            reply = client.install_snapshot(request) => reply.map_err(|s| to_streaming(self.status_error(s)))?,
        };
        tracing::info!(
            target_node = self.target,
            bytes = snapshot.snapshot.size,
            ms = started.elapsed().as_millis() as u64,
            "snapshot sent"
        );
        let reply: Result<SnapshotResponse<TypeConfig>, String> =
            decode(&reply.into_inner().payload).map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        reply.map_err(|e| StreamingError::Unreachable(Unreachable::new(&std::io::Error::other(e))))
    }
}

/// Packs a snapshot directory on a blocking thread into chunks of the archive format. If
/// packing fails (a newer snapshot removed this one, say), the stream ends short and the
/// receiver refuses it as truncated; Raft sends the current snapshot again.
fn pack_in_chunks(dir: std::path::PathBuf) -> impl futures::Stream<Item = Vec<u8>> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        let sink = ChunkSender { tx, chunk: Vec::with_capacity(SNAPSHOT_CHUNK_BYTES) };
        if let Err(e) = snapshot_archive::pack(&dir, sink) {
            tracing::warn!(snapshot = %dir.display(), error = %e, "packing a snapshot for a follower stopped");
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Cuts what is written into chunks and sends each, waiting while the channel is full.
struct ChunkSender {
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
    chunk: Vec<u8>,
}

impl ChunkSender {
    fn send(&mut self) -> std::io::Result<()> {
        let chunk = std::mem::replace(&mut self.chunk, Vec::with_capacity(SNAPSHOT_CHUNK_BYTES));
        self.tx
            .blocking_send(chunk)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the snapshot stream was closed"))
    }
}

impl std::io::Write for ChunkSender {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len().min(SNAPSHOT_CHUNK_BYTES - self.chunk.len());
        self.chunk.extend_from_slice(&buf[..n]);
        if self.chunk.len() == SNAPSHOT_CHUNK_BYTES {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.chunk.is_empty() { Ok(()) } else { self.send() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_requests_get_time_to_arrive() {
        let ttl = Duration::from_millis(100);
        assert!(deadline_for(ttl, 200) < Duration::from_millis(101), "a heartbeat keeps Raft's deadline");
        assert_eq!(deadline_for(ttl, 32 << 20), Duration::from_millis(4100), "32 MiB at 8 MiB/s");
    }
}
