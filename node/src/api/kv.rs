//! The client KV service: validation, then writes through Raft and reads after ReadIndex.

use openraft::async_runtime::WatchReceiver;
use std::sync::Arc;

use openraft::ReadPolicy;
use shardkv_proto::MAX_BATCH_ITEMS;
use shardkv_proto::shard_for_key;
use shardkv_proto::v1::BatchItem;
use shardkv_proto::v1::BatchRequest;
use shardkv_proto::v1::BatchResponse;
use shardkv_proto::v1::BatchResult;
use shardkv_proto::v1::CompareAndSwapRequest;
use shardkv_proto::v1::CompareAndSwapResponse;
use shardkv_proto::v1::DeleteRequest;
use shardkv_proto::v1::DeleteResponse;
use shardkv_proto::v1::GetRequest;
use shardkv_proto::v1::GetResponse;
use shardkv_proto::v1::ItemError;
use shardkv_proto::v1::PutRequest;
use shardkv_proto::v1::PutResponse;
use shardkv_proto::v1::ReadConsistency;
use shardkv_proto::v1::RequestHeader;
use shardkv_proto::v1::ScanRequest;
use shardkv_proto::v1::ScanResponse;
use shardkv_proto::v1::batch_item;
use shardkv_proto::v1::batch_result;
use shardkv_proto::v1::kv_server::Kv;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use super::errors::Answering;
use super::errors::admit;
use super::errors::raft_error;
use super::errors::refused_at_apply;
use super::errors::response_evicted;
use super::errors::write_error;
use super::observed;
use super::proposals::Proposals;
use super::scan;
use crate::context::NodeContext;
use crate::storage::CF_DATA;
use crate::storage::cf;
use crate::storage::keys::data_key;
use crate::types::Command;
use crate::types::NodeId;
use crate::types::Op;
use crate::types::OpResult;
use crate::types::SessionTag;
use crate::types::ShardId;
use crate::types::index_of;

const DEFAULT_SCAN_LIMIT: usize = 1000;
const MAX_SCAN_LIMIT: usize = 10_000;
/// A scan page ends once its keys and values reach this many bytes (plus at most one item),
/// well below the 4 MiB a gRPC client accepts by default.
const SCAN_PAGE_BYTES: usize = 1 << 20;

pub struct KvService {
    ctx: Arc<NodeContext>,
    proposals: Proposals,
}

impl KvService {
    /// Needs a tokio runtime: it starts the task that proposes writes to Raft.
    pub fn new(ctx: Arc<NodeContext>) -> Self {
        let proposals = Proposals::start(ctx.raft.clone());
        Self { ctx, proposals }
    }

    fn check_key(&self, key: &[u8]) -> Result<(), Status> {
        if key.is_empty() {
            return Err(Status::invalid_argument("key must not be empty"));
        }
        let max = self.ctx.limits.max_key_bytes;
        if key.len() > max {
            return Err(Status::invalid_argument(format!("key is {} bytes; the limit is {max} bytes", key.len())));
        }
        Ok(())
    }

    fn check_value(&self, value: &[u8]) -> Result<(), Status> {
        let max = self.ctx.limits.max_value_bytes;
        if value.len() > max {
            return Err(Status::invalid_argument(format!("value is {} bytes; the limit is {max} bytes", value.len())));
        }
        Ok(())
    }

    /// This replica, answering a request routed with shard map `routed_with`.
    fn answering(&self, routed_with: u64) -> Answering<impl FnOnce() -> Option<(NodeId, String)> + '_> {
        Answering { leads: self.ctx.leads(), routed_with, leader: || self.ctx.leader() }
    }

    /// Proposes a write and waits until it is applied; returns its result and log index.
    async fn write(&self, header: Option<RequestHeader>, op: Op) -> Result<(OpResult, u64), Status> {
        let key = op.key().unwrap_or_default();
        self.check_key(key)?;
        let header = header.unwrap_or_default();
        if header.client_id == 0 || header.seq == 0 {
            return Err(Status::invalid_argument(
                "writes need a session: set header.client_id and header.seq (both non-zero) so retries apply once",
            ));
        }
        let session =
            SessionTag { client_id: header.client_id, seq: header.seq, first_unacked: header.first_unacked_seq };
        let shard = shard_for_key(key, self.ctx.shards);
        // Refuse early what this group cannot serve; the apply path checks again, at the entry's
        // position in the log, which is what decides.
        admit(self.ctx.admission(shard), shard, self.answering(header.config_num))?;
        let cmd = Command { session: Some(session), shard, op };
        let response = self.proposals.write(cmd).await.map_err(write_error)?;
        refused_at_apply(&response.data, shard, header.config_num, || self.ctx.leader())?;
        match response.data {
            OpResult::SessionExpired => {
                return Err(Status::failed_precondition(format!(
                    "session expired: sequence {} of client {} is below what the client already acknowledged",
                    header.seq, header.client_id
                )));
            }
            // Outcome unknown: the write may have been applied before its result was evicted.
            OpResult::ResponseEvicted => return Err(response_evicted(header.seq, header.client_id)),
            _ => {}
        }
        Ok((response.data, response.log_id.index()))
    }

    /// The shards a scan covers: those requested, each of which must be served here, or else
    /// every shard served here.
    fn scan_shards(&self, requested: &[u32], routed_with: u64) -> Result<Vec<ShardId>, Status> {
        let sharding = self.ctx.sharding.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        if requested.is_empty() {
            return Ok(sharding.group.serving().collect());
        }
        for &shard in requested {
            if shard >= self.ctx.shards {
                return Err(Status::invalid_argument(format!(
                    "shard {shard} does not exist; this cluster has shards 0..{}",
                    self.ctx.shards
                )));
            }
            admit(sharding.group.admission(shard), shard, self.answering(routed_with))?;
        }
        let mut shards = requested.to_vec();
        shards.sort_unstable();
        shards.dedup();
        Ok(shards)
    }

    /// For linearizable reads: confirms leadership (ReadIndex) and waits until it is applied.
    async fn read_barrier(&self, consistency: ReadConsistency) -> Result<(), Status> {
        if consistency == ReadConsistency::Linearizable {
            self.ctx.raft.ensure_linearizable(ReadPolicy::ReadIndex).await.map_err(raft_error)?;
        } else if !self.ctx.is_recovered() {
            return Err(Status::unavailable("this replica is still re-applying its log after a restart"));
        }
        Ok(())
    }
}

/// The handlers, without the metrics: `Kv` runs each as its own RPC, `batch` several at once.
impl KvService {
    /// `linearizable_confirmed`: a ReadIndex barrier taken after this request arrived has
    /// passed, so a linearizable get needs none of its own.
    async fn get_op(&self, req: GetRequest, linearizable_confirmed: bool) -> Result<GetResponse, Status> {
        self.check_key(&req.key)?;
        if !(linearizable_confirmed && req.consistency() == ReadConsistency::Linearizable) {
            self.read_barrier(req.consistency()).await?;
        }
        let applied = index_of(&self.ctx.raft.metrics().borrow_watched().last_applied);
        let shard = shard_for_key(&req.key, self.ctx.shards);
        let routed_with = req.header.map_or(0, |h| h.config_num);
        admit(self.ctx.admission(shard), shard, self.answering(routed_with))?;
        let key = data_key(shard, &req.key);
        let value = self
            .ctx
            .db
            .get_cf(cf(&self.ctx.db, CF_DATA), key)
            .map_err(|e| Status::internal(format!("reading the store failed: {e}")))?;
        Ok(GetResponse { found: value.is_some(), value: value.unwrap_or_default(), applied_index: applied })
    }

    async fn put_op(&self, req: PutRequest) -> Result<PutResponse, Status> {
        self.check_value(&req.value)?;
        let (_, index) = self.write(req.header, Op::Put { key: req.key, value: req.value }).await?;
        Ok(PutResponse { index })
    }

    async fn delete_op(&self, req: DeleteRequest) -> Result<DeleteResponse, Status> {
        let (result, index) = self.write(req.header, Op::Delete { key: req.key }).await?;
        let OpResult::Delete { existed } = result else {
            return Err(Status::internal(format!("delete applied as {result:?}")));
        };
        Ok(DeleteResponse { existed, index })
    }

    async fn compare_and_swap_op(&self, req: CompareAndSwapRequest) -> Result<CompareAndSwapResponse, Status> {
        self.check_value(&req.new_value)?;
        self.check_value(&req.expected)?;
        let expected = (!req.expect_absent).then_some(req.expected);
        let op = Op::CompareAndSwap { key: req.key, expected, new_value: req.new_value };
        let (result, index) = self.write(req.header, op).await?;
        let OpResult::CompareAndSwap { succeeded, previous } = result else {
            return Err(Status::internal(format!("compare-and-swap applied as {result:?}")));
        };
        Ok(CompareAndSwapResponse {
            succeeded,
            found: previous.is_some(),
            current: previous.unwrap_or_default(),
            index,
        })
    }

    async fn batch_op(&self, req: BatchRequest) -> Result<BatchResponse, Status> {
        if req.items.len() > MAX_BATCH_ITEMS {
            return Err(Status::invalid_argument(format!(
                "a batch of {} items; the limit is {MAX_BATCH_ITEMS}",
                req.items.len()
            )));
        }
        self.ctx.metrics.observe_batch(req.items.len());
        let linearizable_get = |item: &BatchItem| matches!(&item.request, Some(batch_item::Request::Get(get)) if get.consistency() == ReadConsistency::Linearizable);
        // Every item arrived before this barrier began, so one confirmation serves them all.
        let barrier = match req.items.iter().any(linearizable_get) {
            true => Some(self.read_barrier(ReadConsistency::Linearizable).await),
            false => None,
        };
        let results =
            futures::future::join_all(req.items.into_iter().map(|item| self.batch_item(item, &barrier))).await;
        Ok(BatchResponse { results })
    }

    /// One item of a batch, recorded in the metrics as its own RPC would be. `barrier` is the
    /// outcome of the batch's ReadIndex, if it has linearizable gets.
    async fn batch_item(&self, item: BatchItem, barrier: &Option<Result<(), Status>>) -> BatchResult {
        let metrics = &self.ctx.metrics;
        let response = match item.request {
            None => Err(Status::invalid_argument("a batch item without a request")),
            Some(batch_item::Request::Get(req)) => match barrier {
                Some(Err(refused)) if req.consistency() == ReadConsistency::Linearizable => {
                    observed(metrics, "Get", async { Err::<GetResponse, _>(refused.clone()) }).await
                }
                _ => observed(metrics, "Get", self.get_op(req, true)).await,
            }
            .map(|r| batch_result::Response::Get(r.into_inner())),
            Some(batch_item::Request::Put(req)) => {
                observed(metrics, "Put", self.put_op(req)).await.map(|r| batch_result::Response::Put(r.into_inner()))
            }
            Some(batch_item::Request::Delete(req)) => observed(metrics, "Delete", self.delete_op(req))
                .await
                .map(|r| batch_result::Response::Delete(r.into_inner())),
            Some(batch_item::Request::CompareAndSwap(req)) => {
                observed(metrics, "CompareAndSwap", self.compare_and_swap_op(req))
                    .await
                    .map(|r| batch_result::Response::CompareAndSwap(r.into_inner()))
            }
        };
        let response = response.unwrap_or_else(|status| batch_result::Response::Error(ItemError::from(&status)));
        BatchResult { response: Some(response) }
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        observed(&self.ctx.metrics, "Get", self.get_op(request.into_inner(), false)).await
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        observed(&self.ctx.metrics, "Put", self.put_op(request.into_inner())).await
    }

    async fn delete(&self, request: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
        observed(&self.ctx.metrics, "Delete", self.delete_op(request.into_inner())).await
    }

    async fn compare_and_swap(
        &self,
        request: Request<CompareAndSwapRequest>,
    ) -> Result<Response<CompareAndSwapResponse>, Status> {
        observed(&self.ctx.metrics, "CompareAndSwap", self.compare_and_swap_op(request.into_inner())).await
    }

    /// Recorded as a "Batch" call, and each item as a call of its own kind.
    async fn batch(&self, request: Request<BatchRequest>) -> Result<Response<BatchResponse>, Status> {
        observed(&self.ctx.metrics, "Batch", self.batch_op(request.into_inner())).await
    }

    async fn scan(&self, request: Request<ScanRequest>) -> Result<Response<ScanResponse>, Status> {
        let req = request.into_inner();
        observed(&self.ctx.metrics, "Scan", async {
            let limit = match req.limit as usize {
                0 => DEFAULT_SCAN_LIMIT,
                n => n.min(MAX_SCAN_LIMIT),
            };
            self.read_barrier(req.consistency()).await?;
            let shards = self.scan_shards(&req.shards, req.header.map_or(0, |h| h.config_num))?;
            let Some(bounds) = scan::scan_bounds(&req.start, &req.end, &req.prefix, &req.continuation) else {
                return Ok(ScanResponse::default());
            };
            let db = self.ctx.db.clone();
            let (items, more) =
                tokio::task::spawn_blocking(move || scan::scan(&db, &shards, &bounds, limit, SCAN_PAGE_BYTES))
                    .await
                    .map_err(|e| Status::internal(e.to_string()))?
                    .map_err(|e| Status::internal(format!("scanning the store failed: {e}")))?;
            let continuation =
                if more { items.last().map(|kv| kv.key.clone()).unwrap_or_default() } else { Vec::new() };
            Ok(ScanResponse { items, continuation })
        })
        .await
    }
}
