//! The meta group's gRPC service: Join, Leave and Move go through Raft; Query reads the
//! configs.

use std::sync::Arc;
use std::time::Duration;

use openraft::RaftMetrics;
use openraft::ReadPolicy;
use shardkv_proto::v1::ConfigResponse;
use shardkv_proto::v1::JoinRequest;
use shardkv_proto::v1::LeaveRequest;
use shardkv_proto::v1::MoveRequest;
use shardkv_proto::v1::QueryRequest;
use shardkv_proto::v1::meta_server::Meta;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use super::META_GROUP;
use super::MetaChange;
use super::wire::config_to_wire;
use super::wire::members_from_wire;
use crate::api::errors::raft_error;
use crate::api::observed;
use crate::context::NodeContext;
use crate::state_machine::sharding::Role;
use crate::state_machine::sharding::config_at;
use crate::types::Command;
use crate::types::Op;
use crate::types::OpResult;
use crate::types::TypeConfig;

/// The longest a Query may wait for a config that does not exist yet.
const MAX_QUERY_WAIT_MS: u64 = 5_000;

pub struct MetaService {
    ctx: Arc<NodeContext>,
}

impl MetaService {
    /// Waits until this replica has applied config `num`, or `wait` has passed.
    async fn wait_for_config(&self, num: u64, wait: Duration) {
        let ctx = self.ctx.clone();
        // Every applied entry changes Raft's metrics, so the condition is checked after each.
        let applied = move |_: &RaftMetrics<TypeConfig>| ctx.sharding().latest.num >= num;
        let _ = self.ctx.raft.wait(Some(wait)).metrics(applied, "a later shard map").await;
    }

    pub fn new(ctx: Arc<NodeContext>) -> Self {
        Self { ctx }
    }

    fn check_role(&self) -> Result<(), Status> {
        match self.ctx.sharding().role {
            Role::Meta => Ok(()),
            _ => Err(Status::failed_precondition(format!(
                "not a meta replica: node {} serves data group {}; ask the meta group's endpoints",
                self.ctx.node_id, self.ctx.scope.group_id
            ))),
        }
    }

    async fn change(&self, change: MetaChange) -> Result<ConfigResponse, Status> {
        self.check_role()?;
        let cmd = Command { session: None, shard: 0, op: Op::Meta(change) };
        let response = self.ctx.raft.client_write(cmd).await.map_err(raft_error)?;
        match response.data {
            OpResult::Config { num } => self.config_response(num),
            OpResult::Refused(refusal) => Err(Status::invalid_argument(refusal.to_string())),
            other => Err(Status::internal(format!("meta change applied as {other:?}"))),
        }
    }

    fn config_response(&self, num: u64) -> Result<ConfigResponse, Status> {
        let latest = self.ctx.sharding().latest;
        let config = if num == 0 || num >= latest.num {
            latest
        } else {
            config_at(&self.ctx.db, num)
                .map_err(|e| Status::internal(format!("reading config {num}: {e}")))?
                .ok_or_else(|| Status::internal(format!("config {num} is missing from the store")))?
        };
        Ok(ConfigResponse { config: Some(config_to_wire(&config)) })
    }
}

fn group_of(id: u64) -> Result<u64, Status> {
    if id == META_GROUP {
        return Err(Status::invalid_argument("group 0 is the meta group; data groups are numbered from 1"));
    }
    Ok(id)
}

#[tonic::async_trait]
impl Meta for MetaService {
    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<ConfigResponse>, Status> {
        observed(&self.ctx.metrics, "Join", async {
            let group = request.into_inner().group.ok_or_else(|| Status::invalid_argument("join needs a group"))?;
            let members = members_from_wire(&group).map_err(|e| Status::invalid_argument(e.to_string()))?;
            self.change(MetaChange::Join { group: group_of(group.group_id)?, members }).await
        })
        .await
    }

    async fn leave(&self, request: Request<LeaveRequest>) -> Result<Response<ConfigResponse>, Status> {
        observed(&self.ctx.metrics, "Leave", async {
            self.change(MetaChange::Leave { group: group_of(request.into_inner().group_id)? }).await
        })
        .await
    }

    async fn r#move(&self, request: Request<MoveRequest>) -> Result<Response<ConfigResponse>, Status> {
        observed(&self.ctx.metrics, "Move", async {
            let req = request.into_inner();
            self.change(MetaChange::Move { shard: req.shard, group: group_of(req.group_id)? }).await
        })
        .await
    }

    async fn query(&self, request: Request<QueryRequest>) -> Result<Response<ConfigResponse>, Status> {
        let QueryRequest { num, wait_ms } = request.into_inner();
        if wait_ms > 0 && num > self.ctx.sharding().latest.num {
            self.wait_for_config(num, Duration::from_millis(wait_ms.min(MAX_QUERY_WAIT_MS))).await;
        }
        // The wait is not part of the request's latency.
        observed(&self.ctx.metrics, "Query", async {
            self.check_role()?;
            // A numbered config never changes once it exists, so any replica holding it may
            // answer; "the latest" must come from the leader.
            if num == 0 || num > self.ctx.sharding().latest.num {
                self.ctx.raft.ensure_linearizable(ReadPolicy::ReadIndex).await.map_err(raft_error)?;
            }
            self.config_response(num)
        })
        .await
    }
}
