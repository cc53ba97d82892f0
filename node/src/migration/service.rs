//! The side of a move a previous owner serves: streaming a frozen shard to its new owner, and
//! telling a previous owner whether this group has installed a shard.

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

use crate::api::observed;
use crate::context::NodeContext;
use crate::storage::CF_DATA;
use crate::storage::CF_SESSIONS;
use crate::storage::cf;
use crate::storage::keys::SHARD_PREFIX_LEN;
use crate::storage::keys::shard_range;

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
        let group = self.ctx.sharding().group;
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
        tracing::info!(shard = req.shard, config = req.config_num, "streaming a shard to its new owner");
        let (tx, rx) = mpsc::channel(2);
        let db = self.ctx.db.clone();
        tokio::task::spawn_blocking(move || stream_shard(&db, req.shard, &tx));
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
            Ok(ShardInstalledResponse { installed: group.installed(req.config_num, req.shard) })
        })
        .await
    }
}

/// Sends the shard's data, then its sessions, from one consistent view. Stops early when the
/// receiver has gone away.
fn stream_shard(db: &rocksdb::DB, shard: u32, tx: &mpsc::Sender<Result<ShardChunk, Status>>) {
    let view = db.snapshot();
    let (start, end) = shard_range(shard);
    let mut chunk = ShardChunk::default();
    let mut size = 0;
    for (name, is_session) in [(CF_DATA, false), (CF_SESSIONS, true)] {
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(end);
        let iter = view.iterator_cf_opt(cf(db, name), opts, IteratorMode::From(&start, rocksdb::Direction::Forward));
        for item in iter {
            let (key, value) = match item {
                Ok(kv) => kv,
                Err(e) => {
                    let _ = tx.blocking_send(Err(Status::internal(format!("reading shard {shard}: {e}"))));
                    return;
                }
            };
            size += key.len() + value.len();
            let record = ShardRecord { key: key[SHARD_PREFIX_LEN..].to_vec(), value: value.to_vec() };
            if is_session {
                chunk.sessions.push(record)
            } else {
                chunk.data.push(record)
            }
            if size >= CHUNK_BYTES {
                if tx.blocking_send(Ok(std::mem::take(&mut chunk))).is_err() {
                    return;
                }
                size = 0;
            }
        }
    }
    if !chunk.data.is_empty() || !chunk.sessions.is_empty() {
        let _ = tx.blocking_send(Ok(chunk));
    }
}
