//! The operator's client of the nodes' gRPC APIs: Admin (status, bootstrap, membership) on any
//! node and Meta (the shard map) on the meta group's leader. Behind a trait so the reconcile
//! tests can stand in a fake cluster.

use std::collections::BTreeSet;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::PoisonError;
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
use shardkv_tls::ClientTls;
use tonic::Status;
use tonic::transport::Channel;
use tonic::transport::Endpoint;

/// Where the operator reaches one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEndpoint {
    /// The `ip:port` dialled (pods' DNS names may not resolve yet when they start).
    pub addr: String,
    /// The name the node's certificate must carry: its pod's DNS name.
    pub server_name: String,
    /// The cluster it belongs to (`ClusterNames::cluster_id`): whose TLS settings apply.
    pub cluster_id: String,
}

impl fmt::Display for NodeEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.addr)
    }
}

/// Calls the operator makes on nodes.
pub trait NodeApi: Send + Sync + 'static {
    /// How to connect to the nodes of `cluster_id` from now on: mutual TLS as `tls` (the
    /// operator's identity for that cluster), or plaintext when None.
    fn use_tls(&self, cluster_id: &str, tls: Option<ClientTls>) {
        let _ = (cluster_id, tls);
    }

    fn status(&self, endpoint: &NodeEndpoint) -> impl Future<Output = Result<StatusResponse, Status>> + Send;
    fn initialize(
        &self,
        endpoint: &NodeEndpoint,
        members: Vec<Member>,
    ) -> impl Future<Output = Result<(), Status>> + Send;
    /// Adds a learner without waiting for it to catch up (the planner watches its lag).
    fn add_learner(&self, endpoint: &NodeEndpoint, member: Member) -> impl Future<Output = Result<(), Status>> + Send;
    /// Sets the complete voter set; removed voters leave the group.
    fn change_membership(
        &self,
        endpoint: &NodeEndpoint,
        voters: BTreeSet<u64>,
    ) -> impl Future<Output = Result<(), Status>> + Send;
    /// Removes learners; removed nodes are told so and never rejoin by themselves.
    fn remove_learners(
        &self,
        endpoint: &NodeEndpoint,
        learners: BTreeSet<u64>,
    ) -> impl Future<Output = Result<(), Status>> + Send;
    fn transfer_leader(&self, endpoint: &NodeEndpoint, to: u64) -> impl Future<Output = Result<(), Status>> + Send;
    /// Runs the node's stop sequence (leadership handed over, snapshot) and returns its report.
    fn prepare_stop(&self, endpoint: &NodeEndpoint) -> impl Future<Output = Result<StopReport, Status>> + Send;
    /// The latest shard map.
    fn query_config(&self, endpoint: &NodeEndpoint) -> impl Future<Output = Result<ShardConfig, Status>> + Send;
    fn join(&self, endpoint: &NodeEndpoint, group: GroupMembers) -> impl Future<Output = Result<(), Status>> + Send;
    fn leave(&self, endpoint: &NodeEndpoint, group_id: u64) -> impl Future<Output = Result<(), Status>> + Send;
}

/// NodeApi over gRPC, one short-lived connection per call (pods come and go with new IPs),
/// over mutual TLS for the clusters that run it.
#[derive(Debug, Clone)]
pub struct GrpcNodes {
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// The operator's client TLS per cluster id; absent: plaintext.
    tls: Arc<Mutex<HashMap<String, ClientTls>>>,
}

/// A node's stop sequence is bounded by its own timeouts (leadership transfer, snapshot);
/// PrepareStop waits for it.
const STOP_TIMEOUT: Duration = Duration::from_secs(120);

impl GrpcNodes {
    pub fn new(connect_timeout: Duration, request_timeout: Duration) -> Self {
        GrpcNodes { connect_timeout, request_timeout, tls: Arc::default() }
    }

    async fn channel(&self, endpoint: &NodeEndpoint, timeout: Duration) -> Result<Channel, Status> {
        let tls = self.tls.lock().unwrap_or_else(PoisonError::into_inner).get(&endpoint.cluster_id).cloned();
        let target = Endpoint::from_shared(format!("http://{endpoint}"))
            .map_err(|e| Status::invalid_argument(format!("bad node endpoint {endpoint}: {e}")))?
            .connect_timeout(self.connect_timeout)
            .timeout(timeout);
        match tls {
            // Connects at the first call; a refused handshake fails that call, saying why.
            Some(tls) => Ok(shardkv_tls::lazy_channel_named(target, &tls, &endpoint.server_name)),
            None => target.connect().await.map_err(|e| Status::unavailable(format!("connecting to {endpoint}: {e}"))),
        }
    }

    async fn admin(&self, endpoint: &NodeEndpoint) -> Result<AdminClient<Channel>, Status> {
        Ok(AdminClient::new(self.channel(endpoint, self.request_timeout).await?))
    }

    async fn meta(&self, endpoint: &NodeEndpoint) -> Result<MetaClient<Channel>, Status> {
        Ok(MetaClient::new(self.channel(endpoint, self.request_timeout).await?))
    }
}

impl NodeApi for GrpcNodes {
    fn use_tls(&self, cluster_id: &str, tls: Option<ClientTls>) {
        let mut all = self.tls.lock().unwrap_or_else(PoisonError::into_inner);
        match tls {
            Some(tls) => all.insert(cluster_id.to_string(), tls),
            None => all.remove(cluster_id),
        };
    }

    async fn status(&self, endpoint: &NodeEndpoint) -> Result<StatusResponse, Status> {
        Ok(self.admin(endpoint).await?.status(StatusRequest {}).await?.into_inner())
    }

    async fn initialize(&self, endpoint: &NodeEndpoint, members: Vec<Member>) -> Result<(), Status> {
        self.admin(endpoint).await?.initialize(InitializeRequest { members }).await?;
        Ok(())
    }

    async fn add_learner(&self, endpoint: &NodeEndpoint, member: Member) -> Result<(), Status> {
        let request = AddLearnerRequest { member: Some(member), blocking: false };
        self.admin(endpoint).await?.add_learner(request).await?;
        Ok(())
    }

    async fn change_membership(&self, endpoint: &NodeEndpoint, voters: BTreeSet<u64>) -> Result<(), Status> {
        let request = ChangeMembershipRequest { voters: voters.into_iter().collect(), retain: false };
        self.admin(endpoint).await?.change_membership(request).await?;
        Ok(())
    }

    async fn remove_learners(&self, endpoint: &NodeEndpoint, learners: BTreeSet<u64>) -> Result<(), Status> {
        let request = RemoveLearnersRequest { node_ids: learners.into_iter().collect() };
        self.admin(endpoint).await?.remove_learners(request).await?;
        Ok(())
    }

    async fn transfer_leader(&self, endpoint: &NodeEndpoint, to: u64) -> Result<(), Status> {
        self.admin(endpoint).await?.transfer_leader(TransferLeaderRequest { to }).await?;
        Ok(())
    }

    async fn prepare_stop(&self, endpoint: &NodeEndpoint) -> Result<StopReport, Status> {
        let mut admin = AdminClient::new(self.channel(endpoint, STOP_TIMEOUT).await?);
        Ok(admin.prepare_stop(PrepareStopRequest {}).await?.into_inner())
    }

    async fn query_config(&self, endpoint: &NodeEndpoint) -> Result<ShardConfig, Status> {
        let response = self.meta(endpoint).await?.query(QueryRequest { num: 0, wait_ms: 0 }).await?.into_inner();
        response.config.ok_or_else(|| Status::internal("meta answered without a config"))
    }

    async fn join(&self, endpoint: &NodeEndpoint, group: GroupMembers) -> Result<(), Status> {
        self.meta(endpoint).await?.join(JoinRequest { group: Some(group) }).await?;
        Ok(())
    }

    async fn leave(&self, endpoint: &NodeEndpoint, group_id: u64) -> Result<(), Status> {
        self.meta(endpoint).await?.leave(LeaveRequest { group_id }).await?;
        Ok(())
    }
}
