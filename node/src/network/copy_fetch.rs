//! Copy files between replicas of a group: a follower fetches every file that the entries of
//! an append name and it lacks, before it appends them (so that a replica whose log names a
//! file holds it; see `state_machine::copy_files`), and serves its own files to the others.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::sync::PoisonError;

use openraft::BasicNode;
use openraft::EntryPayload;
use openraft::async_runtime::WatchReceiver;
use shardkv_proto::v1::CopyFileChunk;
use shardkv_proto::v1::CopyFileRequest;
use shardkv_proto::v1::raft_client::RaftClient;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::GroupScope;
use super::SNAPSHOT_CHUNK_BYTES;
use super::channels::Channels;
use crate::state_machine::copy_files::CopyFiles;
use crate::types::CopyFile;
use crate::types::Entry;
use crate::types::NodeId;
use crate::types::Raft;
use crate::types::copy_file_of;

/// What a follower needs to fetch copy files from its peers.
#[derive(Clone)]
pub struct CopyFetcher {
    files: CopyFiles,
    channels: Channels,
    scope: GroupScope,
    /// The newest membership named by an append this node was sent.
    sent_membership: Arc<Mutex<SentMembership>>,
}

impl CopyFetcher {
    pub fn new(files: CopyFiles, channels: Channels, scope: GroupScope) -> Self {
        Self { files, channels, scope, sent_membership: Arc::default() }
    }

    fn sent_membership(&self) -> MutexGuard<'_, SentMembership> {
        self.sent_membership.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Fetches each file that `entries` name and this node lacks, from `leader` (the sender of
    /// the append) first, then from the group's other members. UNAVAILABLE when no peer has
    /// it: the leader's next append tries again.
    pub async fn fetch_missing(&self, raft: &Raft, leader: NodeId, entries: &[Entry]) -> Result<(), Status> {
        self.sent_membership().learn(entries);
        let missing: Vec<&CopyFile> =
            entries.iter().filter_map(copy_file_of).filter(|file| !self.files.holds(file)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        // Raft's own state, not its metrics: those lag behind a start, an install or an append.
        let (known, holds_log) = raft
            .with_raft_state(|state| {
                let nodes = state.membership_state.effective().membership().nodes();
                let known: Vec<(NodeId, BasicNode)> = nodes.map(|(id, node)| (*id, node.clone())).collect();
                (known, state.log_ids.last().is_some())
            })
            .await
            .map_err(|e| Status::unavailable(format!("raft stopped: {e}")))?;
        let own_id = raft.metrics().borrow_watched().id;
        let peers = self.sent_membership().peers_to_ask(own_id, leader, known.iter().map(|(id, node)| (id, node)));
        if peers.is_empty() && !holds_log {
            // A new member probed with an append that starts past its empty log: Raft refuses
            // it for the entry before it, and the leader goes back to the start, whose first
            // entry is the group's first membership, naming whom to fetch from. Refused here
            // instead, it would be sent again as it is, forever.
            tracing::debug!(files = missing.len(), "an append to an empty log names copy files; Raft refuses it");
            return Ok(());
        }
        // Each in a task of its own: if the leader gives up on this append (its deadline), the
        // fetch still completes, and the append sent again finds the file here.
        let fetches = missing.into_iter().cloned().map(|file| {
            let (fetcher, peers) = (self.clone(), peers.clone());
            tokio::spawn(async move { fetcher.fetch_from_any(&peers, &file).await })
        });
        for fetched in futures::future::join_all(fetches).await {
            fetched.map_err(|e| Status::internal(e.to_string()))??;
        }
        Ok(())
    }

    /// Streams the file `name` in chunks (read on a blocking thread); NOT_FOUND if this node does
    /// not hold it.
    pub fn send(&self, name: &str) -> Result<ReceiverStream<Result<CopyFileChunk, Status>>, Status> {
        let mut file = self.files.open_file(name).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Status::not_found(format!("copy file {name} is not here")),
            std::io::ErrorKind::InvalidInput => Status::invalid_argument(e.to_string()),
            _ => Status::internal(format!("copy file {name}: {e}")),
        })?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            loop {
                let mut data = vec![0u8; SNAPSHOT_CHUNK_BYTES];
                let chunk = match file.read(&mut data) {
                    Ok(0) => return,
                    Ok(n) => {
                        data.truncate(n);
                        Ok(CopyFileChunk { data })
                    }
                    Err(e) => Err(Status::internal(format!("reading a copy file: {e}"))),
                };
                let failed = chunk.is_err();
                if tx.blocking_send(chunk).is_err() || failed {
                    return;
                }
            }
        });
        Ok(ReceiverStream::new(rx))
    }

    async fn fetch_from_any(&self, peers: &[String], file: &CopyFile) -> Result<(), Status> {
        let mut failures = Vec::new();
        for addr in peers {
            match self.fetch(addr, file).await {
                Ok(()) => return Ok(()),
                Err(e) => failures.push(format!("{addr}: {e}")),
            }
        }
        tracing::warn!(file = file.name, failures = ?failures, "no peer could send a copy file");
        Err(Status::unavailable(format!(
            "copy file {} is not here and no peer sent it ({})",
            file.name,
            failures.join("; ")
        )))
    }

    async fn fetch(&self, addr: &str, file: &CopyFile) -> Result<(), FetchError> {
        let channel = self.channels.get(addr)?;
        let request = CopyFileRequest {
            cluster_id: self.scope.cluster_id.clone(),
            group_id: self.scope.group_id,
            name: file.name.clone(),
        };
        let mut stream = RaftClient::new(channel).fetch_copy_file(request).await?.into_inner();
        let mut receiving = self.files.receive(file)?;
        while let Some(chunk) = stream.next().await {
            receiving.write(&chunk?.data)?;
        }
        tokio::task::spawn_blocking(move || receiving.finish()).await??;
        tracing::debug!(file = file.name, bytes = file.size, "fetched a copy file");
        Ok(())
    }
}

/// Why one peer did not send a copy file.
#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("bad address: {0}")]
    Address(#[from] tonic::transport::Error),
    #[error("{}", .0.message())]
    Peer(#[from] Status),
    #[error("storing the file: {0}")]
    Store(#[from] std::io::Error),
    #[error("the task storing the file failed: {0}")]
    Stopped(#[from] tokio::task::JoinError),
}

/// The newest membership the appends sent to this node named. A new member knows no member
/// until Raft has stored its first append, which holds the group's first membership along
/// with the first entries naming files; the appends after it name no membership, and are
/// streamed, so they reach the fetch before Raft has stored the first (or it never does: a
/// refused append ends the stream, and the leader sends the same ones again).
#[derive(Debug, Default)]
struct SentMembership {
    index: u64,
    nodes: BTreeMap<NodeId, BasicNode>,
}

impl SentMembership {
    fn learn(&mut self, entries: &[Entry]) {
        for entry in entries {
            if let EntryPayload::Membership(membership) = &entry.payload
                && (self.nodes.is_empty() || entry.log_id.index > self.index)
            {
                self.index = entry.log_id.index;
                self.nodes = membership.nodes().map(|(id, node)| (*id, node.clone())).collect();
            }
        }
    }

    /// The addresses to fetch a copy file from, the leader's first: the members this node
    /// knows (`known`, from Raft) and those of the membership sent to it, each once, never
    /// itself.
    fn peers_to_ask<'a>(
        &'a self,
        own_id: NodeId,
        leader: NodeId,
        known: impl Iterator<Item = (&'a NodeId, &'a BasicNode)>,
    ) -> Vec<String> {
        let mut peers: BTreeMap<NodeId, &BasicNode> = BTreeMap::new();
        for (id, node) in known.chain(&self.nodes) {
            if *id != own_id {
                peers.insert(*id, node);
            }
        }
        let mut peers: Vec<(NodeId, &BasicNode)> = peers.into_iter().collect();
        peers.sort_by_key(|(id, _)| *id != leader);
        peers.into_iter().map(|(_, node)| node.addr.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use openraft::Membership;

    use super::*;
    use crate::types::hostile_input::log_id;

    fn node(id: NodeId) -> BasicNode {
        BasicNode::new(format!("127.0.0.{id}:7100"))
    }

    fn membership_entry(index: u64, ids: &[NodeId]) -> Entry {
        let nodes: BTreeMap<NodeId, BasicNode> = ids.iter().map(|&id| (id, node(id))).collect();
        let membership = Membership::new(vec![ids.iter().copied().collect::<BTreeSet<_>>()], nodes).unwrap();
        Entry { log_id: log_id(1, index), payload: EntryPayload::Membership(membership) }
    }

    #[test]
    fn a_member_that_knows_no_one_asks_the_members_an_earlier_append_named() {
        let mut sent = SentMembership::default();
        sent.learn(&[membership_entry(1, &[1, 2, 3])]);
        sent.learn(&[]);
        let peers = sent.peers_to_ask(3, 2, std::iter::empty());
        assert_eq!(peers, ["127.0.0.2:7100", "127.0.0.1:7100"], "the leader first, never itself");
    }

    #[test]
    fn the_newest_membership_sent_counts_whatever_order_appends_arrive_in() {
        let mut sent = SentMembership::default();
        sent.learn(&[membership_entry(9, &[1, 2, 4])]);
        sent.learn(&[membership_entry(1, &[1, 2, 3])]);
        assert_eq!(sent.peers_to_ask(2, 1, std::iter::empty()), ["127.0.0.1:7100", "127.0.0.4:7100"]);
    }

    #[test]
    fn known_members_and_the_sent_ones_are_asked_once_each() {
        let known = [(1, node(1)), (2, node(2))];
        let mut sent = SentMembership::default();
        assert_eq!(sent.peers_to_ask(2, 1, known.iter().map(|(id, node)| (id, node))), ["127.0.0.1:7100"]);
        sent.learn(&[membership_entry(9, &[1, 2, 4])]);
        let peers = sent.peers_to_ask(2, 1, known.iter().map(|(id, node)| (id, node)));
        assert_eq!(peers, ["127.0.0.1:7100", "127.0.0.4:7100"]);
    }
}
