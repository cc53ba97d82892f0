//! The operator's client of the nodes' gRPC APIs: Admin (status, bootstrap, membership) on any
//! node and Meta (the shard map) on the meta group's leader. Behind a trait so the reconcile
//! tests can stand in a fake cluster.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use shardkv_proto::v1::AddLearnerRequest;
use shardkv_proto::v1::ChangeMembershipRequest;
use shardkv_proto::v1::GroupMembers;
use shardkv_proto::v1::InitializeRequest;
use shardkv_proto::v1::JoinRequest;
use shardkv_proto::v1::LeaveRequest;
use shardkv_proto::v1::Member;
use shardkv_proto::v1::PrepareStopRequest;
use shardkv_proto::v1::QueryRequest;
use shardkv_proto::v1::RemoveLearnersRequest;
use shardkv_proto::v1::ShardConfig;
use shardkv_proto::v1::StatusRequest;
use shardkv_proto::v1::StatusResponse;
use shardkv_proto::v1::StopReport;
use shardkv_proto::v1::TransferLeaderRequest;
use shardkv_proto::v1::admin_client::AdminClient;
use shardkv_proto::v1::meta_client::MetaClient;
use tonic::Status;
use tonic::transport::Channel;
use tonic::transport::Endpoint;

/// Calls the operator makes on nodes. `endpoint` is a node's `ip:port`.
pub trait NodeApi: Send + Sync + 'static {
    fn status(&self, endpoint: &str) -> impl Future<Output = Result<StatusResponse, Status>> + Send;
    fn initialize(&self, endpoint: &str, members: Vec<Member>) -> impl Future<Output = Result<(), Status>> + Send;
    /// Adds a learner without waiting for it to catch up (the planner watches its lag).
    fn add_learner(&self, endpoint: &str, member: Member) -> impl Future<Output = Result<(), Status>> + Send;
    /// Sets the complete voter set; removed voters leave the group.
    fn change_membership(
        &self,
        endpoint: &str,
        voters: BTreeSet<u64>,
    ) -> impl Future<Output = Result<(), Status>> + Send;
    /// Removes learners; removed nodes are told so and never rejoin by themselves.
    fn remove_learners(
        &self,
        endpoint: &str,
        learners: BTreeSet<u64>,
    ) -> impl Future<Output = Result<(), Status>> + Send;
    fn transfer_leader(&self, endpoint: &str, to: u64) -> impl Future<Output = Result<(), Status>> + Send;
    /// Runs the node's stop sequence (leadership handed over, snapshot) and returns its report.
    fn prepare_stop(&self, endpoint: &str) -> impl Future<Output = Result<StopReport, Status>> + Send;
    /// The latest shard map.
    fn query_config(&self, endpoint: &str) -> impl Future<Output = Result<ShardConfig, Status>> + Send;
    fn join(&self, endpoint: &str, group: GroupMembers) -> impl Future<Output = Result<(), Status>> + Send;
    fn leave(&self, endpoint: &str, group_id: u64) -> impl Future<Output = Result<(), Status>> + Send;
}

/// NodeApi over gRPC, one short-lived connection per call (pods come and go with new IPs).
#[derive(Debug, Clone)]
pub struct GrpcNodes {
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
}

/// A node's stop sequence is bounded by its own timeouts (leadership transfer, snapshot);
/// PrepareStop waits for it.
const STOP_TIMEOUT: Duration = Duration::from_secs(120);

impl GrpcNodes {
    async fn channel(&self, endpoint: &str, timeout: Duration) -> Result<Channel, Status> {
        Endpoint::from_shared(format!("http://{endpoint}"))
            .map_err(|e| Status::invalid_argument(format!("bad node endpoint {endpoint}: {e}")))?
            .connect_timeout(self.connect_timeout)
            .timeout(timeout)
            .connect()
            .await
            .map_err(|e| Status::unavailable(format!("connecting to {endpoint}: {e}")))
    }

    async fn admin(&self, endpoint: &str) -> Result<AdminClient<Channel>, Status> {
        Ok(AdminClient::new(self.channel(endpoint, self.request_timeout).await?))
    }

    async fn meta(&self, endpoint: &str) -> Result<MetaClient<Channel>, Status> {
        Ok(MetaClient::new(self.channel(endpoint, self.request_timeout).await?))
    }
}

impl NodeApi for GrpcNodes {
    async fn status(&self, endpoint: &str) -> Result<StatusResponse, Status> {
        Ok(self.admin(endpoint).await?.status(StatusRequest {}).await?.into_inner())
    }

    async fn initialize(&self, endpoint: &str, members: Vec<Member>) -> Result<(), Status> {
        self.admin(endpoint).await?.initialize(InitializeRequest { members }).await?;
        Ok(())
    }

    async fn add_learner(&self, endpoint: &str, member: Member) -> Result<(), Status> {
        let request = AddLearnerRequest { member: Some(member), blocking: false };
        self.admin(endpoint).await?.add_learner(request).await?;
        Ok(())
    }

    async fn change_membership(&self, endpoint: &str, voters: BTreeSet<u64>) -> Result<(), Status> {
        let request = ChangeMembershipRequest { voters: voters.into_iter().collect(), retain: false };
        self.admin(endpoint).await?.change_membership(request).await?;
        Ok(())
    }

    async fn remove_learners(&self, endpoint: &str, learners: BTreeSet<u64>) -> Result<(), Status> {
        let request = RemoveLearnersRequest { node_ids: learners.into_iter().collect() };
        self.admin(endpoint).await?.remove_learners(request).await?;
        Ok(())
    }

    async fn transfer_leader(&self, endpoint: &str, to: u64) -> Result<(), Status> {
        self.admin(endpoint).await?.transfer_leader(TransferLeaderRequest { to }).await?;
        Ok(())
    }

    async fn prepare_stop(&self, endpoint: &str) -> Result<StopReport, Status> {
        let mut admin = AdminClient::new(self.channel(endpoint, STOP_TIMEOUT).await?);
        Ok(admin.prepare_stop(PrepareStopRequest {}).await?.into_inner())
    }

    async fn query_config(&self, endpoint: &str) -> Result<ShardConfig, Status> {
        let response = self.meta(endpoint).await?.query(QueryRequest { num: 0 }).await?.into_inner();
        response.config.ok_or_else(|| Status::internal("meta answered without a config"))
    }

    async fn join(&self, endpoint: &str, group: GroupMembers) -> Result<(), Status> {
        self.meta(endpoint).await?.join(JoinRequest { group: Some(group) }).await?;
        Ok(())
    }

    async fn leave(&self, endpoint: &str, group_id: u64) -> Result<(), Status> {
        self.meta(endpoint).await?.leave(LeaveRequest { group_id }).await?;
        Ok(())
    }
}
