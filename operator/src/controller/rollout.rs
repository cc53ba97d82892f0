//! The rolling restart: plan the step, take it (a leadership transfer, or a pod stopped and
//! deleted), report it.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Resource;
use kube::ResourceExt;
use kube::runtime::events::EventType;

use super::context::Context;
use super::error::FailedStep;
use super::error::StepError;
use super::objects::delete_pod;
use super::objects::endpoint_of;
use super::objects::group_of;
use super::objects::ordinal_of;
use super::objects::pod_reference;
use crate::crd::PodRestart;
use crate::crd::RolloutHalt;
use crate::crd::ShardCluster;
use crate::crd::ShardClusterStatus;
use crate::nodes::NodeApi;
use crate::plan::DataGroupView;
use crate::plan::GroupStep;
use crate::plan::Halt;
use crate::plan::MetaPlan;
use crate::plan::PodRevision;
use crate::plan::RolloutGroup;
use crate::plan::RolloutSettings;
use crate::plan::RolloutStep;
use crate::plan::StopProblem;
use crate::plan::image_version;
use crate::plan::plan_rollout;
use crate::plan::progress;
use crate::plan::stop_report_problem;
use crate::plan::version_skew;
use crate::resources::ClusterNames;
use crate::resources::LABEL_REVISION;
use crate::resources::META_GROUP;
use crate::status;
use crate::status::ObservedGroup;
use crate::status::RolloutObserved;

/// Plans the rollout and takes its step (one pod of the cluster at a time), unless the cluster
/// is paused. Returns what status reports, and the step's failure.
#[allow(clippy::too_many_arguments)]
pub(super) async fn roll(
    ctx: &Context<impl NodeApi>,
    cluster: &ShardCluster,
    names: &ClusterNames,
    pods: &[Pod],
    observed: &[ObservedGroup],
    wanted: &BTreeSet<u64>,
    deleting: &BTreeSet<u64>,
    data_views: &[DataGroupView],
    meta_plan: &MetaPlan,
) -> (RolloutObserved, Result<(), FailedStep>) {
    let now = Timestamp::now();
    // Meta first: the meta group's API is what data nodes of either version read.
    let groups: Vec<RolloutGroup<'_>> = observed
        .iter()
        .filter(|g| g.view.group_id == META_GROUP || wanted.contains(&g.view.group_id))
        .filter(|g| !deleting.contains(&g.view.group_id))
        .map(|g| RolloutGroup {
            view: &g.view,
            update_revision: g.update_revision.clone(),
            pods: pod_revisions(pods, &g.statefulset, g.view.group_id, now),
            membership_settled: g.plan.step == GroupStep::Settled,
            shards_moving: data_views.iter().find(|d| d.group_id == g.view.group_id).and_then(|d| d.shards_moving()),
        })
        .collect();
    let (updated, total) = progress(&groups);
    let recorded = cluster.status.as_ref().and_then(|s| s.rollout.as_ref());
    let recorded_halt = recorded.and_then(|r| r.halt.clone());
    let halt = recorded_halt.as_ref().map(|h| Halt {
        group_id: h.group_id,
        uid: h.pod_uid.clone(),
        revision: h.revision.clone(),
        reason: h.reason.clone(),
    });
    let rollout_spec = &cluster.spec.rollout;
    let settings = RolloutSettings {
        max_lag: ctx.settings.max_learner_lag,
        pod_ready_timeout: rollout_spec.pod_ready_timeout(),
        paused: rollout_spec.paused,
        rolling: recorded.is_some_and(|r| r.phase != status::ROLLOUT_COMPLETE),
    };
    let mut step = plan_rollout(&groups, meta_plan.in_flight.as_deref(), halt.as_ref(), &settings);
    if let Some(reason) = skew(cluster, observed, &step) {
        step = RolloutStep::Halted { group_id: step.group_id().unwrap_or_default(), reason };
    }
    let group = step.group_id().and_then(|id| groups.iter().find(|g| g.view.group_id == id));
    let to_revision = group.and_then(|g| g.update_revision.clone());
    let from_revision = group
        .and_then(|g| g.pods.iter().filter_map(|p| p.revision.clone()).find(|r| Some(r) != g.update_revision.as_ref()));
    let mut outcome = RolloutObserved {
        step: step.clone(),
        updated,
        total,
        from_revision,
        to_revision,
        restart: None,
        // A halt holds while the plan says so; a changed spec releases it.
        halt: recorded_halt.filter(|_| matches!(step, RolloutStep::Halted { .. })),
    };
    if cluster.spec.paused {
        return (outcome, Ok(()));
    }
    let result = match &step {
        RolloutStep::TransferLeader { group_id, leader, to } => {
            let group = group.expect("the step names an observed group");
            match endpoint_of(group.view, pods, names, *leader) {
                Some(endpoint) => ctx.nodes.transfer_leader(&endpoint, *to).await.map_err(StepError::Node),
                None => Err(StepError::NoPodIp { pod: names.pod(*group_id, *leader) }),
            }
            .map(|()| {
                let note = step.describe();
                tracing::info!(cluster = %names.name, group_id, "{note}");
                note
            })
        }
        RolloutStep::Restart { group_id, ordinal, uid, down } => {
            let group = group.expect("the step names an observed group");
            let voters = group.view.leader().map_or(0, |l| l.voters().len());
            restart_pod(ctx, names, pods, group, *ordinal, uid, *down, voters).await.and_then(|restart| match restart {
                Ok(restart) => {
                    ctx.metrics.pod_rolled();
                    let note = format!("{} ({})", step.describe(), restart_note(&restart));
                    outcome.restart = Some(restart);
                    tracing::info!(cluster = %names.name, group_id, "{note}");
                    Ok(note)
                }
                Err(problem) => {
                    let refused = StepError::StopRefused { pod: names.pod(*group_id, *ordinal), problem };
                    let reason = refused.to_string();
                    outcome.halt = Some(RolloutHalt {
                        group_id: *group_id,
                        pod: names.pod(*group_id, *ordinal),
                        pod_uid: uid.clone(),
                        revision: outcome.to_revision.clone().unwrap_or_default(),
                        reason: reason.clone(),
                    });
                    outcome.step = RolloutStep::Halted { group_id: *group_id, reason };
                    Err(refused)
                }
            })
        }
        RolloutStep::Complete | RolloutStep::Halted { .. } | RolloutStep::Paused { .. } | RolloutStep::Wait { .. } => {
            return (outcome, Ok(()));
        }
    };
    // The pod the step acted on (this incarnation) is the Events' related object.
    let related = match &step {
        RolloutStep::TransferLeader { group_id, leader: ordinal, .. }
        | RolloutStep::Restart { group_id, ordinal, .. } => {
            let uid = group.and_then(|g| g.pods.iter().find(|p| p.ordinal == *ordinal)).map(|p| p.uid.clone());
            Some(pod_reference(&names.namespace, &names.pod(*group_id, *ordinal), uid))
        }
        _ => None,
    };
    match result {
        Ok(note) => {
            let reason = format!("Rollout{}", step.name());
            ctx.publish_related(cluster, related, EventType::Normal, &reason, "Rollout", note).await;
            (outcome, Ok(()))
        }
        Err(cause) => {
            let failure = FailedStep { step: step.describe(), cause };
            let note = failure.to_string();
            ctx.publish_related(cluster, related, EventType::Warning, "RolloutStepFailed", "Rollout", note).await;
            // A refused stop report is a halt, not a failure to retry.
            let failed = if matches!(failure.cause, StepError::StopRefused { .. }) { Ok(()) } else { Err(failure) };
            (outcome, failed)
        }
    }
}

/// The rollout view of a group's pods.
fn pod_revisions(pods: &[Pod], statefulset: &str, group_id: u64, now: Timestamp) -> Vec<PodRevision> {
    pods.iter()
        .filter(|p| group_of(*p) == Some(group_id))
        .filter_map(|p| {
            let created = p.meta().creation_timestamp.as_ref().map(|t| t.0).unwrap_or(now);
            Some(PodRevision {
                ordinal: ordinal_of(p, statefulset)?,
                uid: p.uid()?,
                revision: p.labels().get(LABEL_REVISION).cloned(),
                terminating: p.meta().deletion_timestamp.is_some(),
                age: now.duration_since(created).try_into().unwrap_or_default(),
            })
        })
        .collect()
}

/// Why the new image may not be rolled out, when its tag names a version too far from what
/// the nodes run (and spec.rollout.allowVersionSkew is not set).
fn skew(cluster: &ShardCluster, observed: &[ObservedGroup], step: &RolloutStep) -> Option<String> {
    if cluster.spec.rollout.allow_version_skew || *step == RolloutStep::Complete {
        return None;
    }
    let target = image_version(&cluster.spec.image)?;
    let running: Vec<String> = observed
        .iter()
        .flat_map(|g| g.view.pods.iter().filter_map(|p| p.status.as_ref().map(|s| s.version.clone())))
        .collect();
    version_skew(&running, target)
        .map(|reason| format!("version skew: {reason} (spec.rollout.allowVersionSkew overrides)"))
}

/// Stops a pod's node (unless it is down already), checks its report, and deletes the pod with
/// its UID as a precondition, so a retry can never delete its replacement. The inner `Err` is a
/// report that does not allow the deletion.
#[allow(clippy::too_many_arguments)]
async fn restart_pod(
    ctx: &Context<impl NodeApi>,
    names: &ClusterNames,
    pods: &[Pod],
    group: &RolloutGroup<'_>,
    ordinal: u32,
    uid: &str,
    down: bool,
    voters: usize,
) -> Result<Result<PodRestart, StopProblem>, StepError> {
    let group_id = group.view.group_id;
    let pod = names.pod(group_id, ordinal);
    let from_revision = group.pods.iter().find(|p| p.ordinal == ordinal).and_then(|p| p.revision.clone());
    let mut restart =
        PodRestart { pod: pod.clone(), pod_uid: uid.to_string(), from_revision, was_down: down, ..Default::default() };
    if !down {
        let endpoint =
            endpoint_of(group.view, pods, names, ordinal).ok_or_else(|| StepError::NoPodIp { pod: pod.clone() })?;
        let report =
            ctx.nodes.prepare_stop(&endpoint).await.map_err(|status| StepError::Stop { pod: pod.clone(), status })?;
        if let Some(problem) = stop_report_problem(&report, voters) {
            return Ok(Err(problem));
        }
        let g = report.groups.first().expect("checked: the report names a group");
        restart.was_leader = g.was_leader;
        restart.new_leader = g.new_leader;
        restart.applied_index = g.applied_index;
        restart.snapshot_index = g.snapshot_index;
        restart.stop_ms = report.total_ms;
        restart.clean = true;
    }
    delete_pod(ctx, &names.namespace, &pod, uid)
        .await
        .map_err(|e| StepError::Delete { what: format!("pod {pod}"), source: Box::new(e) })?;
    restart.deleted_at = Some(Time(Timestamp::now()));
    Ok(Ok(restart))
}

fn restart_note(r: &PodRestart) -> String {
    if r.was_down {
        return "it was down: deleted without a stop sequence".to_string();
    }
    let leader = match (r.was_leader, r.new_leader) {
        (true, Some(to)) => format!("leadership handed to node {to}, "),
        (true, None) => "the only voter, ".to_string(),
        (false, _) => String::new(),
    };
    let snapshot = r.snapshot_index.map_or("none".to_string(), |s| s.to_string());
    format!("{leader}snapshot at {snapshot} covering applied {}, stopped in {} ms", r.applied_index, r.stop_ms)
}

/// Events when a rollout starts, halts, or completes.
pub(super) async fn publish_rollout_changes(
    ctx: &Context<impl NodeApi>,
    cluster: &ShardCluster,
    previous: Option<&ShardClusterStatus>,
    status: &ShardClusterStatus,
) {
    let Some(now) = &status.rollout else { return };
    let before = previous.and_then(|p| p.rollout.as_ref());
    if before.is_some_and(|b| b.phase == now.phase) {
        return;
    }
    let (type_, reason, note) = match now.phase.as_str() {
        status::ROLLOUT_COMPLETE if before.is_none() => return,
        status::ROLLOUT_COMPLETE => {
            if let (Some(start), Some(end)) = (&now.started_at, &now.finished_at) {
                let took = end.0.duration_since(start.0).as_secs_f64();
                ctx.metrics.rollout_finished(took);
            }
            (EventType::Normal, "RolloutComplete", format!("every pod is on its update revision ({})", now.progress))
        }
        status::ROLLOUT_HALTED => {
            (EventType::Warning, "RolloutHalted", now.message.clone().unwrap_or_else(|| "halted".to_string()))
        }
        status::ROLLOUT_PAUSED => {
            (EventType::Normal, "RolloutPaused", format!("spec.rollout.paused is true ({})", now.progress))
        }
        _ => {
            (EventType::Normal, "RolloutStarted", format!("rolling pods onto their update revision ({})", now.progress))
        }
    };
    // One Event per phase change, never folded into the series of an earlier rollout's (which
    // would keep that one's note): related to the cluster at the version this change follows.
    let related = ObjectReference { resource_version: cluster.resource_version(), ..cluster.object_ref(&()) };
    ctx.publish_related(cluster, Some(related), type_, reason, "Rollout", note).await;
}
