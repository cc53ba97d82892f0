//! The side of a move a previous owner serves: a copy of a shard it still serves, then the
//! frozen shard (whole, or its changes since the copy) to its new owner; and telling a
//! previous owner whether this group has installed (or copied) a shard.

use std::sync::Arc;

use rocksdb::IteratorMode;
use rocksdb::ReadOptions;
use shardkv_proto::v1::PullShardRequest;
use shardkv_proto::v1::ShardChunk;
use shardkv_proto::v1::ShardInstalledRequest;
use shardkv_proto::v1::ShardInstalledResponse;
use shardkv_proto::v1::ShardRecord;
use shardkv_proto::v1::migration_server::Migration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use super::Admission;
use crate::api::observed;
use crate::context::NodeContext;
use crate::storage::CF_DATA;
use crate::storage::CF_SESSIONS;
use crate::storage::CF_SHARDS;
use crate::storage::cf;
use crate::storage::keys::CHANGE_PREFIX;
use crate::storage::keys::SHARD_PREFIX_LEN;
use crate::storage::keys::change_range;
use crate::storage::keys::data_key;
use crate::storage::keys::shard_range;
use crate::types::Command;
use crate::types::Op;
use crate::types::OpResult;

/// A pulled shard travels in chunks of about this many bytes; each becomes one Raft entry at
/// the new owner.
pub const CHUNK_BYTES: usize = 1 << 20;

pub struct MigrationService {
    ctx: Arc<NodeContext>,
}

impl MigrationService {
    pub fn new(ctx: Arc<NodeContext>) -> Self {
        Self { ctx }
    }

    fn check_cluster(&self, cluster_id: &str) -> Result<(), Status> {
        if cluster_id != self.ctx.scope.cluster_id {
            tracing::warn!(peer_cluster = cluster_id, "refused a migration RPC from another cluster");
            return Err(Status::failed_precondition(format!(
                "wrong cluster: this node belongs to cluster {:?}, the caller to {cluster_id:?}",
                self.ctx.scope.cluster_id
            )));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Migration for MigrationService {
    type PullShardStream = ReceiverStream<Result<ShardChunk, Status>>;

    async fn pull_shard(&self, request: Request<PullShardRequest>) -> Result<Response<Self::PullShardStream>, Status> {
        let req = request.into_inner();
        self.check_cluster(&req.cluster_id)?;
        let sharding = self.ctx.sharding();
        let group = &sharding.group;
        if !group.handing_off(req.config_num, req.shard) {
            let message = format!(
                "group {} is at config {} and does not hand off shard {} at config {}",
                group.group,
                group.config_num(),
                req.shard,
                req.config_num
            );
            // Behind: the caller retries once this group has applied the config. Otherwise the
            // request is stale or misdirected.
            return Err(if group.config_num() < req.config_num {
                Status::unavailable(message)
            } else {
                Status::failed_precondition(message)
            });
        }
        let (tx, rx) = mpsc::channel(2);
        let db = self.ctx.db.clone();
        if req.changes_only {
            if sharding.copied_out.get(&req.shard) != Some(&req.config_num) {
                return Err(Status::not_found(format!(
                    "shard {} was not copied for config {}, so no changes were recorded: pull it whole",
                    req.shard, req.config_num
                )));
            }
            tracing::info!(shard = req.shard, config = req.config_num, "streaming a shard's changes since its copy");
            tokio::task::spawn_blocking(move || stream_changes(&db, req.shard, &tx));
        } else {
            tracing::info!(shard = req.shard, config = req.config_num, "streaming a shard to its new owner");
            tokio::task::spawn_blocking(move || stream_shard(&db, req.shard, Contents::DataAndSessions, &tx));
        }
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type CopyShardStream = ReceiverStream<Result<ShardChunk, Status>>;

    async fn copy_shard(&self, request: Request<PullShardRequest>) -> Result<Response<Self::CopyShardStream>, Status> {
        let req = request.into_inner();
        self.check_cluster(&req.cluster_id)?;
        let group = self.ctx.sharding().group;
        let (shard, config_num) = (req.shard, req.config_num);
        if group.config_num() + 1 < config_num {
            return Err(Status::unavailable(format!(
                "group {} is at config {}: shard {shard} can be copied for config {config_num} once it applied {}",
                group.group,
                group.config_num(),
                config_num - 1
            )));
        }
        // Still moving in here (at the config before): it can be copied once it serves.
        if group.config_num() + 1 == config_num && group.admission(shard) == Admission::MovingIn {
            return Err(Status::unavailable(format!(
                "shard {shard} is still moving into group {}; it can be copied once it serves it",
                group.group
            )));
        }
        if group.config_num() + 1 > config_num || group.admission(shard) != Admission::Serve {
            return Err(Status::failed_precondition(format!(
                "group {} is at config {} and does not serve shard {shard} ahead of config {config_num}",
                group.group,
                group.config_num()
            )));
        }
        if !self.ctx.leads() {
            return Err(Status::unavailable("only the group's leader starts a copy"));
        }
        // Recorded changes must cover every write the copy below does not see.
        let track = Command { session: None, shard, op: Op::TrackChanges { config_num } };
        match self.ctx.raft.client_write(track).await.map(|r| r.data) {
            Ok(OpResult::Applied) => {}
            Ok(refused) => return Err(Status::failed_precondition(format!("shard {shard}: {refused}"))),
            Err(e) => return Err(Status::unavailable(format!("recording changes to shard {shard}: {e}"))),
        }
        tracing::info!(shard, config = config_num, "streaming a copy of a shard to its next owner");
        let (tx, rx) = mpsc::channel(2);
        let db = self.ctx.db.clone();
        tokio::task::spawn_blocking(move || stream_shard(&db, shard, Contents::Data, &tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn shard_installed(
        &self,
        request: Request<ShardInstalledRequest>,
    ) -> Result<Response<ShardInstalledResponse>, Status> {
        let req = request.into_inner();
        observed(&self.ctx.metrics, "ShardInstalled", async {
            self.check_cluster(&req.cluster_id)?;
            let group = self.ctx.sharding().group;
            if req.group_id != 0 && req.group_id != group.group {
                return Err(Status::failed_precondition(format!(
                    "this is group {}, not group {}: it cannot say what that group installed",
                    group.group, req.group_id
                )));
            }
            Ok(ShardInstalledResponse {
                installed: group.installed(req.config_num, req.shard),
                ready: group.ready_for(req.config_num, req.shard),
            })
        })
        .await
    }
}

/// What of a shard a stream carries.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Contents {
    /// A copy taken while the shard is served: its sessions still change, and are pulled with
    /// the changes once it is frozen.
    Data,
    DataAndSessions,
}

/// Sends the shard's data, then its sessions, from one consistent view. Stops early when the
/// receiver has gone away.
fn stream_shard(db: &rocksdb::DB, shard: u32, contents: Contents, tx: &mpsc::Sender<Result<ShardChunk, Status>>) {
    let view = db.snapshot();
    let mut out = Chunker::new(tx);
    let scanned = scan(db, &view, CF_DATA, shard_range(shard), |key, value| {
        out.push(Item::Data(ShardRecord { key: key[SHARD_PREFIX_LEN..].to_vec(), value: value.to_vec() }))
    });
    let scanned = scanned.and_then(|()| match contents {
        Contents::Data => Ok(()),
        Contents::DataAndSessions => send_sessions(db, &view, shard, &mut out),
    });
    out.finish(scanned.map_err(|e| format!("reading shard {shard}: {e}")));
}

/// Sends the current value of every key recorded as changed since the shard was copied (or
/// says it was deleted), then all its sessions, from one consistent view of the frozen shard.
fn stream_changes(db: &rocksdb::DB, shard: u32, tx: &mpsc::Sender<Result<ShardChunk, Status>>) {
    let view = db.snapshot();
    let mut out = Chunker::new(tx);
    let prefix = CHANGE_PREFIX.len() + SHARD_PREFIX_LEN;
    let (start, end) = change_range(shard);
    let scanned = scan(db, &view, CF_SHARDS, (start, end), |key, _| {
        let user_key = &key[prefix..];
        match view.get_cf(cf(db, CF_DATA), data_key(shard, user_key)) {
            Ok(Some(value)) => out.push(Item::Data(ShardRecord { key: user_key.to_vec(), value })),
            Ok(None) => out.push(Item::Deleted(user_key.to_vec())),
            Err(e) => Err(Stop::Read(e)),
        }
    });
    let scanned = scanned.and_then(|()| send_sessions(db, &view, shard, &mut out));
    out.finish(scanned.map_err(|e| format!("reading the changes of shard {shard}: {e}")));
}

fn send_sessions(
    db: &rocksdb::DB,
    view: &rocksdb::Snapshot<'_>,
    shard: u32,
    out: &mut Chunker<'_>,
) -> Result<(), Stop> {
    scan(db, view, CF_SESSIONS, shard_range(shard), |key, value| {
        out.push(Item::Session(ShardRecord { key: key[SHARD_PREFIX_LEN..].to_vec(), value: value.to_vec() }))
    })
}

/// Why a stream ended early.
enum Stop {
    /// The receiver has gone away.
    Gone,
    Read(rocksdb::Error),
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stop::Gone => f.write_str("the receiver went away"),
            Stop::Read(e) => write!(f, "{e}"),
        }
    }
}

/// Calls `each` for every key and value of `name` in `[start, end)` as of `view`.
fn scan<K: AsRef<[u8]>>(
    db: &rocksdb::DB,
    view: &rocksdb::Snapshot<'_>,
    name: &str,
    (start, end): (K, K),
    mut each: impl FnMut(&[u8], &[u8]) -> Result<(), Stop>,
) -> Result<(), Stop> {
    let mut opts = ReadOptions::default();
    opts.set_iterate_upper_bound(end.as_ref());
    let iter =
        view.iterator_cf_opt(cf(db, name), opts, IteratorMode::From(start.as_ref(), rocksdb::Direction::Forward));
    for item in iter {
        let (key, value) = item.map_err(Stop::Read)?;
        each(&key, &value)?;
    }
    Ok(())
}

enum Item {
    Data(ShardRecord),
    Deleted(Vec<u8>),
    Session(ShardRecord),
}

/// Gathers records into chunks of about `CHUNK_BYTES` and sends each when full.
struct Chunker<'a> {
    tx: &'a mpsc::Sender<Result<ShardChunk, Status>>,
    chunk: ShardChunk,
    size: usize,
}

impl<'a> Chunker<'a> {
    fn new(tx: &'a mpsc::Sender<Result<ShardChunk, Status>>) -> Self {
        Self { tx, chunk: ShardChunk::default(), size: 0 }
    }

    fn push(&mut self, item: Item) -> Result<(), Stop> {
        self.size += match &item {
            Item::Data(r) | Item::Session(r) => r.key.len() + r.value.len(),
            Item::Deleted(key) => key.len(),
        };
        match item {
            Item::Data(r) => self.chunk.data.push(r),
            Item::Deleted(key) => self.chunk.deleted.push(key),
            Item::Session(r) => self.chunk.sessions.push(r),
        }
        if self.size >= CHUNK_BYTES {
            self.size = 0;
            self.tx.blocking_send(Ok(std::mem::take(&mut self.chunk))).map_err(|_| Stop::Gone)?;
        }
        Ok(())
    }

    /// Sends what is left with the end marker, or the error that cut the stream short.
    fn finish(self, outcome: Result<(), String>) {
        let last = match outcome {
            Ok(()) => Ok(ShardChunk { end: true, ..self.chunk }),
            Err(e) => Err(Status::internal(e)),
        };
        let _ = self.tx.blocking_send(last);
    }
}
