//! Copy files between replicas of a group: a follower fetches every file that the entries of
//! an append name and it lacks, before it appends them (so that a replica whose log names a
//! file holds it; see `state_machine::copy_files`), and serves its own files to the others.

use std::collections::BTreeMap;
use std::io::Read;

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
    pub files: CopyFiles,
    pub channels: Channels,
    pub scope: GroupScope,
}

impl CopyFetcher {
    /// Fetches each file that `entries` name and this node lacks, from `leader` (the sender of
    /// the append) first, then from the group's other members. UNAVAILABLE when no peer has
    /// it: the leader's next append tries again.
    pub async fn fetch_missing(&self, raft: &Raft, leader: NodeId, entries: &[Entry]) -> Result<(), Status> {
        let missing: Vec<&CopyFile> =
            entries.iter().filter_map(copy_file_of).filter(|file| !self.files.holds(file)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        let peers = {
            let metrics = raft.metrics();
            let metrics = metrics.borrow_watched();
            peers_to_ask(metrics.id, leader, metrics.membership_config.nodes(), entries)
        };
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

    async fn fetch(&self, addr: &str, file: &CopyFile) -> Result<(), String> {
        let channel = self.channels.get(addr).map_err(|e| format!("bad address: {e}"))?;
        let request = CopyFileRequest {
            cluster_id: self.scope.cluster_id.clone(),
            group_id: self.scope.group_id,
            name: file.name.clone(),
        };
        let mut stream =
            RaftClient::new(channel).fetch_copy_file(request).await.map_err(|s| s.message().to_string())?.into_inner();
        let mut receiving = self.files.receive(file).map_err(|e| e.to_string())?;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|s| s.message().to_string())?;
            receiving.write(&chunk.data).map_err(|e| e.to_string())?;
        }
        tokio::task::spawn_blocking(move || receiving.finish())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        tracing::debug!(file = file.name, bytes = file.size, "fetched a copy file");
        Ok(())
    }
}

/// The addresses to fetch a copy file from, the leader's first: the members this node knows, and
/// those of any membership in the append itself. A new member's first append holds the group's
/// first membership along with the entries naming files, before it knows any member: with only
/// its own view it had no one to ask, refused the append, and was sent the same one again.
fn peers_to_ask<'a>(
    own_id: NodeId,
    leader: NodeId,
    known: impl Iterator<Item = (&'a NodeId, &'a BasicNode)>,
    entries: &'a [Entry],
) -> Vec<String> {
    let in_append = entries.iter().filter_map(|entry| match &entry.payload {
        EntryPayload::Membership(membership) => Some(membership.nodes()),
        _ => None,
    });
    let mut peers: BTreeMap<NodeId, &BasicNode> = BTreeMap::new();
    for (id, node) in known.chain(in_append.flatten()) {
        if *id != own_id {
            peers.insert(*id, node);
        }
    }
    let mut peers: Vec<(NodeId, &BasicNode)> = peers.into_iter().collect();
    peers.sort_by_key(|(id, _)| *id != leader);
    peers.into_iter().map(|(_, node)| node.addr.clone()).collect()
}

/// Streams the file `name` in chunks (read on a blocking thread); NOT_FOUND if this node does
/// not hold it.
pub fn send_file(files: &CopyFiles, name: &str) -> Result<ReceiverStream<Result<CopyFileChunk, Status>>, Status> {
    let mut file = files.open_file(name).map_err(|e| match e.kind() {
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
    fn a_member_that_knows_no_one_asks_the_members_its_append_names() {
        let append = [membership_entry(1, &[1, 2, 3])];
        let peers = peers_to_ask(3, 2, std::iter::empty(), &append);
        assert_eq!(peers, ["127.0.0.2:7100", "127.0.0.1:7100"], "the leader first, never itself");
    }

    #[test]
    fn known_members_and_the_appends_are_asked_once_each() {
        let known = [(1, node(1)), (2, node(2))];
        let append = [membership_entry(9, &[1, 2, 4])];
        let peers = peers_to_ask(2, 1, known.iter().map(|(id, node)| (id, node)), &append);
        assert_eq!(peers, ["127.0.0.1:7100", "127.0.0.4:7100"]);
        assert_eq!(peers_to_ask(2, 1, known.iter().map(|(id, node)| (id, node)), &[]), ["127.0.0.1:7100"]);
    }
}
