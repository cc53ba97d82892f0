//! The admin API of a group's nodes and the meta group's shard-map changes.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use shardkv_proto::v1::AddLearnerRequest;
use shardkv_proto::v1::ChangeMembershipRequest;
use shardkv_proto::v1::ConfigResponse;
use shardkv_proto::v1::GroupMembers;
use shardkv_proto::v1::InitializeRequest;
use shardkv_proto::v1::JoinRequest;
use shardkv_proto::v1::LeaveRequest;
use shardkv_proto::v1::Member;
use shardkv_proto::v1::MoveRequest;
use shardkv_proto::v1::ShardConfig;
use shardkv_proto::v1::StatusRequest;
use shardkv_proto::v1::StatusResponse;
use shardkv_proto::v1::TransferLeaderRequest;
use shardkv_proto::v1::TriggerSnapshotRequest;
use shardkv_proto::v1::TriggerSnapshotResponse;
use shardkv_proto::v1::admin_client::AdminClient;
use shardkv_proto::v1::meta_client::MetaClient;
use tonic::transport::Channel;

use crate::cluster::ClusterStatus;
use crate::cluster::GroupStatus;
use crate::error::Result;
use crate::retry::Deadline;

use super::Client;
use super::Connection;
use super::config_of;
use super::request;
use super::routing::Attempts;
use super::routing::Limits;

impl Client {
    /// Adds data group `group_id` with its replicas (node id, address) to the shard map, or
    /// updates the members of a group already in it. Returns the resulting shard map.
    pub async fn join(&self, group_id: u64, members: Vec<(u64, String)>) -> Result<ShardConfig> {
        let group = GroupMembers {
            group_id,
            members: members.into_iter().map(|(node_id, addr)| Member { node_id, addr }).collect(),
        };
        let message = JoinRequest { group: Some(group) };
        self.meta_change(|channel, timeout| {
            let message = message.clone();
            async move { MetaClient::new(channel).join(request(message, timeout)).await }
        })
        .await
    }

    /// Removes data group `group_id` from the shard map; its shards move to the other groups.
    pub async fn leave(&self, group_id: u64) -> Result<ShardConfig> {
        self.meta_change(|channel, timeout| async move {
            MetaClient::new(channel).leave(request(LeaveRequest { group_id }, timeout)).await
        })
        .await
    }

    /// Pins `shard` to group `group_id`, moving it there.
    pub async fn move_shard(&self, shard: u32, group_id: u64) -> Result<ShardConfig> {
        self.meta_change(|channel, timeout| async move {
            MetaClient::new(channel).r#move(request(MoveRequest { shard, group_id }, timeout)).await
        })
        .await
    }

    pub(super) async fn meta_change<F, Fut>(&self, mut attempt: F) -> Result<ShardConfig>
    where
        F: FnMut(Channel, Duration) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<ConfigResponse>, tonic::Status>>,
    {
        let deadline = Deadline::after(self.admin_timeout());
        self.require_sharded(deadline).await?;
        let reply = self
            .call_group(
                &self.shared.seeds,
                0,
                deadline,
                Limits::whole(self.admin_timeout()),
                &Attempts::default(),
                |Connection { channel, .. }, timeout| {
                    let call = attempt(channel, timeout);
                    async move { Ok(call.await?.into_inner()) }
                },
            )
            .await
            .map_err(|e| self.meta_error(e))?;
        let config = config_of(reply)?;
        self.install(config.clone());
        Ok(config)
    }

    /// Status of a sharded cluster: the latest shard map and every node of the meta group
    /// (the configured endpoints) and of each data group, queried concurrently.
    pub async fn cluster_status(&self) -> Result<ClusterStatus> {
        let config = self.query_config(0).await?;
        // Groups that left in the latest change may still hold shards for their new owners.
        let previous = match config.num {
            0 | 1 => None,
            num => Some(self.query_config(num - 1).await?),
        };
        let mut members: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for group in previous.iter().chain([&config]).flat_map(|c| &c.groups) {
            members.insert(group.group_id, group.members.iter().map(|m| m.addr.clone()).collect());
        }
        let meta = async { GroupStatus { group_id: 0, nodes: self.status_all().await } };
        let groups = futures::future::join_all(members.iter().map(|(&group_id, endpoints)| async move {
            GroupStatus { group_id, nodes: self.status_of(endpoints).await }
        }));
        let (meta, groups) = futures::join!(meta, groups);
        Ok(ClusterStatus { config, meta, groups })
    }

    /// Status of the node at `endpoint` (one attempt, no redirection).
    pub async fn status(&self, endpoint: &str) -> Result<StatusResponse> {
        self.call_endpoint(endpoint, self.request_timeout(), |channel, timeout| async move {
            let reply = AdminClient::new(channel).status(request(StatusRequest {}, timeout)).await?;
            Ok(reply.into_inner())
        })
        .await
    }

    /// Status of every configured endpoint, queried concurrently, in endpoint order.
    pub async fn status_all(&self) -> Vec<(String, Result<StatusResponse>)> {
        self.status_of(&self.shared.endpoints).await
    }

    /// Status of each of `endpoints`, queried concurrently, in order.
    pub async fn status_of(&self, endpoints: &[String]) -> Vec<(String, Result<StatusResponse>)> {
        let queries = endpoints.iter().map(|endpoint| async move { (endpoint.clone(), self.status(endpoint).await) });
        futures::future::join_all(queries).await
    }

    /// Initialises a new group on the node at `endpoint` with `members` (node id, address)
    /// as its voters. Fails with FailedPrecondition when the group is already initialised.
    pub async fn initialize(&self, endpoint: &str, members: Vec<(u64, String)>) -> Result<()> {
        let message = InitializeRequest {
            members: members.into_iter().map(|(node_id, addr)| Member { node_id, addr }).collect(),
        };
        self.call_endpoint(endpoint, self.admin_timeout(), |channel, timeout| async move {
            AdminClient::new(channel).initialize(request(message, timeout)).await?;
            Ok(())
        })
        .await
    }

    /// Asks the leader of the configured endpoints' group to hand leadership to voter `to`
    /// (0: the most caught-up voter); returns the new leader's id.
    pub async fn transfer_leader(&self, to: u64) -> Result<u64> {
        self.call_seeds(self.admin_timeout(), |channel, timeout| async move {
            let reply =
                AdminClient::new(channel).transfer_leader(request(TransferLeaderRequest { to }, timeout)).await?;
            Ok(reply.into_inner().new_leader)
        })
        .await
    }

    /// Makes the node at `endpoint` snapshot its replica and purge the covered log.
    pub async fn trigger_snapshot(&self, endpoint: &str) -> Result<TriggerSnapshotResponse> {
        self.call_endpoint(endpoint, self.admin_timeout(), |channel, timeout| async move {
            let reply = AdminClient::new(channel).trigger_snapshot(request(TriggerSnapshotRequest {}, timeout)).await?;
            Ok(reply.into_inner())
        })
        .await
    }

    /// Adds a learner to the configured endpoints' group; with `blocking`, waits until it has
    /// caught up. Returns the log index of the membership entry.
    pub async fn add_learner(&self, node_id: u64, addr: String, blocking: bool) -> Result<u64> {
        let message = AddLearnerRequest { member: Some(Member { node_id, addr }), blocking };
        self.call_seeds(self.admin_timeout(), |channel, timeout| {
            let message = message.clone();
            async move {
                let reply = AdminClient::new(channel).add_learner(request(message, timeout)).await?;
                Ok(reply.into_inner().log_index)
            }
        })
        .await
    }

    /// Replaces the voter set of the configured endpoints' group; with `retain`, removed
    /// voters stay as learners. Returns the log index of the membership entry.
    pub async fn change_membership(&self, voters: Vec<u64>, retain: bool) -> Result<u64> {
        let message = ChangeMembershipRequest { voters, retain };
        self.call_seeds(self.admin_timeout(), |channel, timeout| {
            let message = message.clone();
            async move {
                let reply = AdminClient::new(channel).change_membership(request(message, timeout)).await?;
                Ok(reply.into_inner().log_index)
            }
        })
        .await
    }
}
