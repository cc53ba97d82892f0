//! Each group's membership step and the shard map's step: observe a group, take the planned
//! step (at most one node call), report it as an Event.

use futures::future::join_all;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::runtime::events::EventType;
use shardkv_proto::v1::Member;

use super::context::Context;
use super::error::FailedStep;
use super::error::StepError;
use super::objects::delete_group;
use super::objects::endpoint_of;
use super::objects::group_of;
use super::objects::ordinal_of;
use super::objects::pod_endpoint;
use super::objects::pod_ready;
use crate::crd::ShardCluster;
use crate::nodes::NodeApi;
use crate::nodes::NodeEndpoint;
use crate::plan::GroupStep;
use crate::plan::GroupView;
use crate::plan::MetaStep;
use crate::plan::PodView;
use crate::resources;
use crate::resources::ClusterNames;
use crate::resources::LABEL_REVISION;

/// The pods and node Status of one group.
pub(super) async fn observe_group(
    ctx: &Context<impl NodeApi>,
    cluster: &ShardCluster,
    names: &ClusterNames,
    group_id: u64,
    pods: &[Pod],
    statefulset_replicas: Option<u32>,
) -> (GroupView, Vec<(u32, String)>) {
    let statefulset = names.group(group_id);
    let mut members: Vec<(u32, &Pod)> = pods
        .iter()
        .filter(|p| group_of(*p) == Some(group_id))
        .filter_map(|p| ordinal_of(p, &statefulset).map(|o| (o, p)))
        .collect();
    members.sort_by_key(|(o, _)| *o);
    let statuses = join_all(members.iter().map(|(_, pod)| async {
        let endpoint = pod_endpoint(pod, names)?;
        ctx.nodes.status(&endpoint).await.inspect_err(|e| tracing::debug!(%endpoint, error = %e, "no status")).ok()
    }))
    .await;
    let revisions = members.iter().filter_map(|(o, p)| Some((*o, p.labels().get(LABEL_REVISION)?.clone()))).collect();
    let pods = members
        .iter()
        .zip(statuses)
        .map(|((ordinal, pod), status)| PodView {
            ordinal: *ordinal,
            peer_addr: names.peer_addr(group_id, *ordinal),
            ready: pod_ready(pod),
            status,
        })
        .collect();
    let recorded_initialized =
        cluster.status.as_ref().is_some_and(|s| s.groups.iter().any(|g| g.group_id == group_id && g.initialized));
    let view = GroupView {
        group_id,
        desired_replicas: resources::desired_replicas(cluster, group_id),
        recorded_initialized,
        statefulset_replicas,
        pods,
    };
    (view, revisions)
}

/// Takes a group's step (at most one node call) and publishes an Event saying what it did.
pub(super) async fn take_group_step(
    ctx: &Context<impl NodeApi>,
    cluster: &ShardCluster,
    names: &ClusterNames,
    view: &GroupView,
    step: &GroupStep,
    pods: &[Pod],
) -> Result<(), FailedStep> {
    let (ordinal, call) = match step {
        GroupStep::Settled | GroupStep::Wait { .. } | GroupStep::Blocked { .. } => return Ok(()),
        GroupStep::Initialize { ordinal, .. }
        | GroupStep::AddLearner { leader: ordinal, .. }
        | GroupStep::Promote { leader: ordinal, .. }
        | GroupStep::TransferLeader { leader: ordinal, .. }
        | GroupStep::RemoveVoters { leader: ordinal, .. }
        | GroupStep::RemoveLearners { leader: ordinal, .. } => (*ordinal, step.name()),
    };
    let group_id = view.group_id;
    let described = format!("group {group_id}: {}", step.describe());
    let Some(endpoint) = endpoint_of(view, pods, names, ordinal) else {
        return Err(FailedStep { step: described, cause: StepError::NoPodIp { pod: names.pod(group_id, ordinal) } });
    };
    let result = match step {
        GroupStep::Initialize { member, .. } => ctx.nodes.initialize(&endpoint, vec![member.clone()]).await,
        GroupStep::AddLearner { member, .. } => ctx.nodes.add_learner(&endpoint, member.clone()).await,
        GroupStep::Promote { voters, .. } | GroupStep::RemoveVoters { voters, .. } => {
            ctx.nodes.change_membership(&endpoint, voters.clone()).await
        }
        GroupStep::TransferLeader { to, .. } => ctx.nodes.transfer_leader(&endpoint, *to).await,
        GroupStep::RemoveLearners { learners, .. } => ctx.nodes.remove_learners(&endpoint, learners.clone()).await,
        GroupStep::Settled | GroupStep::Wait { .. } | GroupStep::Blocked { .. } => unreachable!("returned above"),
    };
    let operation = step.operation().map_or("Membership", |o| o.as_str());
    ctx.metrics.step(operation, call);
    report_step(ctx, cluster, names, group_id, (call, operation), described, result.map_err(StepError::Node)).await
}

/// Takes a shard-map step (a Meta call on the meta leader, or deleting a drained group).
pub(super) async fn take_meta_step(
    ctx: &Context<impl NodeApi>,
    cluster: &ShardCluster,
    names: &ClusterNames,
    meta_leader: Option<&NodeEndpoint>,
    step: &MetaStep,
) -> Result<(), FailedStep> {
    let result = match (step, meta_leader) {
        (MetaStep::Wait { .. }, _) => return Ok(()),
        (MetaStep::Join(group), Some(leader)) => ctx.nodes.join(leader, group.clone()).await.map_err(StepError::Node),
        (MetaStep::Leave { group_id }, Some(leader)) => {
            ctx.nodes.leave(leader, *group_id).await.map_err(StepError::Node)
        }
        (MetaStep::DeleteGroup { group_id }, _) => delete_group(ctx, names, *group_id)
            .await
            .map_err(|e| StepError::Delete { what: format!("group {group_id}"), source: Box::new(e) }),
        (MetaStep::Join(_) | MetaStep::Leave { .. }, None) => Err(StepError::NoMetaLeader),
    };
    ctx.metrics.step(step.operation(), step.name());
    let group_id = step.group_id();
    let described = format!("group {group_id}: {}", step.describe());
    report_step(ctx, cluster, names, group_id, (step.name(), step.operation()), described, result).await
}

/// Publishes what a group's step did (a Normal Event named `reason`) or why it failed (a
/// Warning `StepFailed`), and returns the failure.
async fn report_step(
    ctx: &Context<impl NodeApi>,
    cluster: &ShardCluster,
    names: &ClusterNames,
    group_id: u64,
    (reason, operation): (&str, &str),
    described: String,
    result: Result<(), StepError>,
) -> Result<(), FailedStep> {
    let group = Some(names.group(group_id));
    match result {
        Ok(()) => {
            tracing::info!(cluster = %names.name, group_id, step = reason, "{described}");
            ctx.publish(cluster, group, EventType::Normal, reason, operation, described).await;
            Ok(())
        }
        Err(cause) => {
            let failure = FailedStep { step: described, cause };
            ctx.publish(cluster, group, EventType::Warning, "StepFailed", operation, failure.to_string()).await;
            Err(failure)
        }
    }
}

pub(super) fn settled_voters(view: &GroupView, step: &GroupStep) -> Option<Vec<Member>> {
    if *step != GroupStep::Settled {
        return None;
    }
    let leader = view.leader()?;
    let voters = leader.voters();
    Some(
        leader
            .status
            .members
            .iter()
            .filter(|m| voters.contains(&m.node_id))
            .map(|m| Member { node_id: m.node_id, addr: m.addr.clone() })
            .collect(),
    )
}
