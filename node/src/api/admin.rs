//! The admin service the operator (and the CLI) drives: status, bootstrap, membership,
//! leadership and snapshots.

use openraft::async_runtime::WatchReceiver;
use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use openraft::BasicNode;
use openraft::ChangeMembers;
use openraft::error::ForwardToLeader;
use openraft::error::InitializeError;
use shardkv_proto::v1::AddLearnerRequest;
use shardkv_proto::v1::ChangeMembershipRequest;
use shardkv_proto::v1::InitializeRequest;
use shardkv_proto::v1::InitializeResponse;
use shardkv_proto::v1::MembershipResponse;
use shardkv_proto::v1::PrepareStopRequest;
use shardkv_proto::v1::RemoveLearnersRequest;
use shardkv_proto::v1::RemovedRequest;
use shardkv_proto::v1::RemovedResponse;
use shardkv_proto::v1::ReplicaStatus;
use shardkv_proto::v1::ShardStatus;
use shardkv_proto::v1::StatusRequest;
use shardkv_proto::v1::StatusResponse;
use shardkv_proto::v1::StopReport;
use shardkv_proto::v1::TransferLeaderRequest;
use shardkv_proto::v1::TransferLeaderResponse;
use shardkv_proto::v1::TriggerSnapshotRequest;
use shardkv_proto::v1::TriggerSnapshotResponse;
use shardkv_proto::v1::admin_client::AdminClient;
use shardkv_proto::v1::admin_server::Admin;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use super::errors::not_leader;
use super::errors::raft_error;
use super::observed;
use crate::context::NodeContext;
use crate::identity;
use crate::lifecycle::leadership::TransferError;
use crate::lifecycle::leadership::transfer_leadership;
use crate::lifecycle::prestop::Prestop;
use crate::lifecycle::removal;
use crate::lifecycle::removal::PeerView;
use crate::lifecycle::removal::Verdict;
use crate::lifecycle::snapshot::snapshot_and_purge;
use crate::migration::ShardState;
use crate::network::channels::Channels;
use crate::session_clock::count_sessions;
use crate::types::index_of;

const TRANSFER_TIMEOUT: Duration = Duration::from_secs(10);
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(120);
/// A removed node confirms the notice with the group before it answers (see `removal`).
const REMOVED_NOTICE_TIMEOUT: Duration = Duration::from_secs(10);
const REMOVAL_CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);
const REMOVAL_RETRY: Duration = Duration::from_millis(200);

pub struct AdminService {
    ctx: Arc<NodeContext>,
    channels: Channels,
    prestop: Arc<Prestop>,
}

impl AdminService {
    pub fn new(ctx: Arc<NodeContext>, channels: Channels, prestop: Arc<Prestop>) -> Self {
        Self { ctx, channels, prestop }
    }

    fn status(&self, initialized: bool, sessions: u64) -> StatusResponse {
        let m = self.ctx.raft.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<_> = membership.voter_ids().collect();
        let matched = m.replication.clone().unwrap_or_default();
        let members = membership
            .nodes()
            .map(|(id, node)| ReplicaStatus {
                node_id: *id,
                addr: node.addr.clone(),
                role: if voters.contains(id) { "voter" } else { "learner" }.to_string(),
                matched_index: matched.get(id).map(index_of),
            })
            .collect();
        let leader_addr = self.ctx.leader().map(|(_, addr)| addr).unwrap_or_default();
        let sharding = self.ctx.sharding();
        let moves = self.ctx.moves.snapshot();
        let shards = sharding
            .group
            .shards
            .iter()
            .map(|(&shard, state)| {
                let progress = moves.get(&shard).copied().unwrap_or_default();
                ShardStatus {
                    shard,
                    state: state.name().to_string(),
                    peer_group: match state {
                        ShardState::Serving => 0,
                        ShardState::Pulling { from, .. }
                        | ShardState::CatchingUp { from, .. }
                        | ShardState::Copying { from, .. }
                        | ShardState::Copied { from, .. } => *from,
                        ShardState::BePulled { to, .. } => *to,
                    },
                    moved_items: progress.items,
                    moved_bytes: progress.bytes,
                }
            })
            .collect();
        StatusResponse {
            cluster_id: self.ctx.scope.cluster_id.clone(),
            group_id: self.ctx.scope.group_id,
            node_id: self.ctx.node_id,
            state: format!("{:?}", m.state),
            term: m.current_term,
            leader_id: m.current_leader,
            leader_addr,
            last_log_index: m.last_log_index.unwrap_or(0),
            committed_index: index_of(&m.local_committed),
            applied_index: index_of(&m.last_applied),
            snapshot_index: index_of(&m.snapshot),
            purged_index: index_of(&m.purged),
            members,
            initialized,
            startup_log_entries: self.ctx.metrics.startup_log_entries.get() as u64,
            snapshots_installed: self.ctx.metrics.snapshots_installed.get(),
            stopping: self.ctx.is_stopping(),
            role: sharding.role.name().to_string(),
            config_num: sharding.config_num(),
            shards,
            membership_index: index_of(m.membership_config.log_id()),
            version: env!("CARGO_PKG_VERSION").to_string(),
            sessions,
            decodes_session_clock: true,
        }
    }
}

impl AdminService {
    /// Changes the membership, then tells every node no longer in it that it was removed.
    async fn change_and_tell(&self, change: ChangeMembers<u64, BasicNode>, retain: bool) -> Result<u64, Status> {
        let before = self.ctx.raft.metrics().borrow_watched().membership_config.membership().clone();
        let resp = self.ctx.raft.change_membership(change, retain).await.map_err(raft_error)?;
        let log_index = resp.log_id.index();
        if let Some(after) = &resp.membership {
            let removed = before.nodes().filter(|(id, _)| after.get_node(id).is_none());
            for (id, node) in removed {
                self.tell_removed(*id, &node.addr, log_index).await;
            }
        }
        Ok(log_index)
    }

    /// Tells a node it was removed, so it records that it left. Best effort: a node that cannot
    /// be reached is down, and a removed node gets no more log entries either way.
    async fn tell_removed(&self, node_id: u64, addr: &str, membership_index: u64) {
        let request = RemovedRequest {
            cluster_id: self.ctx.scope.cluster_id.clone(),
            group_id: self.ctx.scope.group_id,
            membership_index,
        };
        let told = async {
            let channel = self.channels.get(addr).map_err(|e| e.to_string())?;
            let mut admin = AdminClient::new(channel);
            let mut request = Request::new(request);
            request.set_timeout(REMOVED_NOTICE_TIMEOUT);
            admin.removed(request).await.map_err(|s| s.message().to_string())
        }
        .await;
        match told {
            Ok(_) => tracing::info!(node = node_id, addr, "told the removed node it left"),
            Err(e) => tracing::warn!(node = node_id, addr, error = %e, "could not tell a removed node it left"),
        }
    }
}

impl AdminService {
    /// Asks the members of this node's own membership until their leader confirms or refutes
    /// that it was removed, or `REMOVAL_CONFIRM_TIMEOUT` passes (a leader may be removing
    /// itself and a successor not elected yet).
    async fn confirm_removal(&self) -> Verdict {
        let deadline = tokio::time::Instant::now() + REMOVAL_CONFIRM_TIMEOUT;
        loop {
            let membership = self.ctx.raft.metrics().borrow_watched().membership_config.clone();
            let peers: Vec<(u64, String)> = membership
                .membership()
                .nodes()
                .filter(|(id, _)| **id != self.ctx.node_id)
                .map(|(id, node)| (*id, node.addr.clone()))
                .collect();
            let views = futures::future::join_all(peers.iter().map(|(id, addr)| self.peer_view(*id, addr))).await;
            let verdict = removal::verdict(self.ctx.node_id, &views.into_iter().flatten().collect::<Vec<_>>());
            if verdict != Verdict::Unknown || tokio::time::Instant::now() >= deadline {
                return verdict;
            }
            tokio::time::sleep(REMOVAL_RETRY).await;
        }
    }

    /// Member `node_id`'s view of the group, if it answers as a node of this group.
    async fn peer_view(&self, node_id: u64, addr: &str) -> Option<PeerView> {
        let channel = self.channels.get(addr).ok()?;
        let mut request = Request::new(StatusRequest {});
        request.set_timeout(REMOVAL_RETRY * 5);
        let status = AdminClient::new(channel).status(request).await.ok()?.into_inner();
        if status.cluster_id != self.ctx.scope.cluster_id
            || status.group_id != self.ctx.scope.group_id
            || status.node_id != node_id
        {
            return None;
        }
        Some(PeerView {
            node_id,
            leader: status.state == "Leader" && status.leader_id == Some(node_id),
            members: status.members.iter().map(|m| m.node_id).collect(),
            membership_index: status.membership_index,
            committed_index: status.committed_index,
        })
    }
}

fn node_of(addr: &str) -> Result<BasicNode, Status> {
    if addr.is_empty() || !addr.contains(':') {
        return Err(Status::invalid_argument(format!("member address {addr:?} is not host:port")));
    }
    Ok(BasicNode::new(addr))
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        observed(&self.ctx.metrics, "Status", async {
            let initialized = self.ctx.raft.is_initialized().await.map_err(|e| Status::unavailable(e.to_string()))?;
            let ctx = self.ctx.clone();
            let sessions = tokio::task::spawn_blocking(move || count_sessions(&ctx))
                .await
                .map_err(|e| Status::internal(format!("counting sessions failed: {e}")))?
                .map_err(|e| Status::internal(format!("reading the session table failed: {e}")))?;
            Ok(self.status(initialized, sessions))
        })
        .await
    }

    async fn initialize(&self, request: Request<InitializeRequest>) -> Result<Response<InitializeResponse>, Status> {
        let req = request.into_inner();
        observed(&self.ctx.metrics, "Initialize", async {
            if req.members.is_empty() {
                return Err(Status::invalid_argument("initialize needs at least one member"));
            }
            let mut members = BTreeMap::new();
            for m in &req.members {
                if m.node_id == 0 {
                    return Err(Status::invalid_argument("node id 0 is reserved"));
                }
                members.insert(m.node_id, node_of(&m.addr)?);
            }
            match self.ctx.raft.initialize(members).await {
                Ok(()) => {
                    tracing::info!(members = ?req.members, "group initialised");
                    Ok(InitializeResponse {})
                }
                Err(e) => match e.api_error() {
                    Some(InitializeError::NotAllowed(_)) => Err(Status::failed_precondition(
                        "this node is already initialised; a group is initialised exactly once",
                    )),
                    Some(InitializeError::NotInMembers(_)) => Err(Status::invalid_argument(format!(
                        "node {} must be one of the initial members",
                        self.ctx.node_id
                    ))),
                    None => Err(Status::unavailable(e.to_string())),
                },
            }
        })
        .await
    }

    async fn add_learner(&self, request: Request<AddLearnerRequest>) -> Result<Response<MembershipResponse>, Status> {
        let req = request.into_inner();
        observed(&self.ctx.metrics, "AddLearner", async {
            let member = req.member.ok_or_else(|| Status::invalid_argument("member is required"))?;
            let node = node_of(&member.addr)?;
            let resp = self.ctx.raft.add_learner(member.node_id, node, req.blocking).await.map_err(raft_error)?;
            Ok(MembershipResponse { log_index: resp.log_id.index() })
        })
        .await
    }

    async fn change_membership(
        &self,
        request: Request<ChangeMembershipRequest>,
    ) -> Result<Response<MembershipResponse>, Status> {
        let req = request.into_inner();
        observed(&self.ctx.metrics, "ChangeMembership", async {
            if req.voters.is_empty() {
                return Err(Status::invalid_argument("a group needs at least one voter"));
            }
            let voters: BTreeSet<u64> = req.voters.iter().copied().collect();
            let log_index = self.change_and_tell(ChangeMembers::ReplaceAllVoters(voters), req.retain).await?;
            Ok(MembershipResponse { log_index })
        })
        .await
    }

    async fn remove_learners(
        &self,
        request: Request<RemoveLearnersRequest>,
    ) -> Result<Response<MembershipResponse>, Status> {
        let req = request.into_inner();
        observed(&self.ctx.metrics, "RemoveLearners", async {
            let learners: BTreeSet<u64> = req.node_ids.iter().copied().collect();
            if learners.is_empty() {
                return Err(Status::invalid_argument("name at least one learner to remove"));
            }
            let metrics = self.ctx.raft.metrics().borrow_watched().clone();
            let membership = metrics.membership_config.membership();
            if let Some(voter) = membership.voter_ids().find(|id| learners.contains(id)) {
                return Err(Status::invalid_argument(format!(
                    "node {voter} is a voter; remove voters with ChangeMembership"
                )));
            }
            let log_index = self.change_and_tell(ChangeMembers::RemoveNodes(learners), false).await?;
            Ok(MembershipResponse { log_index })
        })
        .await
    }

    async fn removed(&self, request: Request<RemovedRequest>) -> Result<Response<RemovedResponse>, Status> {
        let req = request.into_inner();
        observed(&self.ctx.metrics, "Removed", async {
            self.ctx.scope.admit("a Removed notice", &req.cluster_id, req.group_id)?;
            let (leader, membership_index) = match self.confirm_removal().await {
                Verdict::Removed { leader, membership_index } => (leader, membership_index),
                refuted => {
                    tracing::warn!(
                        notice_index = req.membership_index,
                        ?refuted,
                        "ignored a Removed notice the group's leader does not confirm"
                    );
                    return Err(Status::failed_precondition(format!(
                        "not removed: the leader among this node's members does not confirm it ({refuted:?})"
                    )));
                }
            };
            tracing::warn!(leader, membership_index, "removed from the group; will not rejoin by itself");
            self.ctx.set_stopping();
            identity::record_left(&self.ctx.data_dir, &identity::Left { membership_index })
                .map_err(|e| Status::internal(format!("recording that this node left: {e}")))?;
            // The same stop as preStop and SIGTERM (not ready, snapshot); its report is what a
            // later preStop hook gets.
            let (prestop, ctx) = (self.prestop.clone(), self.ctx.clone());
            tokio::spawn(async move { prestop.run(&ctx).await });
            Ok(RemovedResponse {})
        })
        .await
    }

    async fn transfer_leader(
        &self,
        request: Request<TransferLeaderRequest>,
    ) -> Result<Response<TransferLeaderResponse>, Status> {
        let req = request.into_inner();
        observed(&self.ctx.metrics, "TransferLeader", async {
            let to = (req.to != 0).then_some(req.to);
            match transfer_leadership(&self.ctx.raft, to, TRANSFER_TIMEOUT).await {
                Ok(new_leader) => Ok(TransferLeaderResponse { new_leader }),
                Err(TransferError::NotLeader) => {
                    let forward = match self.ctx.leader() {
                        Some((id, addr)) => ForwardToLeader::new(id, BasicNode::new(addr)),
                        None => ForwardToLeader::empty(),
                    };
                    Err(not_leader(&forward))
                }
                Err(e @ (TransferError::NotAVoter(_) | TransferError::NoOtherVoter)) => {
                    Err(Status::failed_precondition(e.to_string()))
                }
                Err(e) => Err(Status::unavailable(e.to_string())),
            }
        })
        .await
    }

    async fn trigger_snapshot(
        &self,
        _: Request<TriggerSnapshotRequest>,
    ) -> Result<Response<TriggerSnapshotResponse>, Status> {
        observed(&self.ctx.metrics, "TriggerSnapshot", async {
            let outcome = snapshot_and_purge(&self.ctx.raft, SNAPSHOT_TIMEOUT)
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            Ok(TriggerSnapshotResponse { snapshot_index: outcome.snapshot_index, purged_index: outcome.purged_index })
        })
        .await
    }

    async fn prepare_stop(&self, _: Request<PrepareStopRequest>) -> Result<Response<StopReport>, Status> {
        // On its own task: a caller that gives up does not cancel the sequence half-way.
        let (prestop, ctx) = (self.prestop.clone(), self.ctx.clone());
        let run = tokio::spawn(async move { prestop.run(&ctx).await });
        observed(&self.ctx.metrics, "PrepareStop", async {
            let report = run.await.map_err(|e| Status::internal(format!("the stop sequence failed: {e}")))?;
            Ok(report.into())
        })
        .await
    }
}
