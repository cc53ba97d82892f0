//! One reconcile of a live cluster (observe, plan, act, report) and the ordered cleanup of a
//! deleted one.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::Resource;
use kube::ResourceExt;
use kube::api::ListParams;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use shardkv_proto::v1::ShardConfig;

use super::context::Context;
use super::error::Error;
use super::membership::observe_group;
use super::membership::settled_voters;
use super::membership::take_group_step;
use super::membership::take_meta_step;
use super::objects::apply_object;
use super::objects::delete_group;
use super::objects::delete_object;
use super::objects::endpoint_of;
use super::objects::group_of;
use super::objects::write_status;
use super::removals::publish_removal_changes;
use super::removals::recorded_removals;
use super::rollout::publish_rollout_changes;
use super::rollout::roll;
use super::tls::ensure_tls;
use crate::crd::ShardCluster;
use crate::nodes::NodeApi;
use crate::plan::DataGroupView;
use crate::plan::DataLeader;
use crate::plan::GroupStep;
use crate::plan::HeldShard;
use crate::plan::MetaStep;
use crate::plan::RemovalPhase;
use crate::plan::plan_group;
use crate::plan::plan_meta;
use crate::plan::wanted_groups;
use crate::resources;
use crate::resources::ClusterNames;
use crate::resources::META_GROUP;
use crate::status;
use crate::status::ObservedGroup;

pub(super) async fn apply<N: NodeApi>(cached: &ShardCluster, ctx: &Context<N>) -> Result<Action, Error> {
    let names = ClusterNames::of(cached, &ctx.settings.cluster_domain);
    let namespace = names.namespace.clone();
    // A reconcile can start (on a pod event) before the watch delivered this operator's own
    // last status write, and status carries what cannot be observed again (issued group ids,
    // removals, the rollout's restarts and halt): it is read fresh, never from the cache.
    let fresh = Api::<ShardCluster>::namespaced(ctx.client.clone(), &namespace).get_status(&names.name).await?;
    let cluster = &fresh;
    let by_cluster = ListParams::default().labels(&names.cluster_selector());
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), &namespace).list(&by_cluster).await?.items;
    let statefulsets = Api::<StatefulSet>::namespaced(ctx.client.clone(), &namespace).list(&by_cluster).await?.items;

    let previous = cluster.status.as_ref();
    let recorded_removals = recorded_removals(previous);
    // Groups whose StatefulSet is being deleted, and groups recorded as being deleted (their
    // delete may not have gone through yet) are not live: they are never wanted again.
    let terminating: BTreeSet<u64> =
        statefulsets.iter().filter(|s| s.meta().deletion_timestamp.is_some()).filter_map(group_of).collect();
    let live: BTreeSet<u64> = statefulsets
        .iter()
        .filter_map(group_of)
        .filter(|g| *g != META_GROUP && !terminating.contains(g))
        .filter(|g| !recorded_removals.iter().any(|r| r.group_id == *g && r.phase == RemovalPhase::Deleting))
        .collect();
    let recorded_last_id = previous.map_or(0, |s| s.last_group_id);
    let wanted = wanted_groups(cluster.spec.groups, &live, recorded_last_id);
    // Wanted groups, plus every data group that still has a StatefulSet (being removed).
    let group_ids: BTreeSet<u64> = std::iter::once(META_GROUP)
        .chain(wanted.iter().copied())
        .chain(statefulsets.iter().filter_map(group_of))
        .collect();
    let last_group_id = group_ids.iter().copied().max().unwrap_or(0).max(recorded_last_id);

    // Certificates before anything that uses them: the pods mount the node Secret, and the
    // node calls below go over TLS as the operator.
    let tls = ensure_tls(ctx, cluster, &names, &group_ids).await?;

    let mut observed = Vec::new();
    for group_id in &group_ids {
        let statefulset = statefulsets.iter().find(|s| group_of(*s) == Some(*group_id));
        let replicas = statefulset.and_then(|s| s.spec.as_ref()?.replicas).and_then(|r| u32::try_from(r).ok());
        let update_revision = statefulset.and_then(|s| s.status.as_ref()?.update_revision.clone());
        let (view, revisions) = observe_group(ctx, cluster, &names, *group_id, &pods, replicas).await;
        let plan = plan_group(&view, ctx.settings.max_learner_lag);
        let initialized =
            view.recorded_initialized || view.pods.iter().any(|p| p.status.as_ref().is_some_and(|s| s.initialized));
        observed.push(ObservedGroup {
            statefulset: names.group(*group_id),
            view,
            plan,
            revisions,
            update_revision,
            initialized,
        });
    }

    let meta_leader = observed
        .iter()
        .find(|g| g.view.group_id == META_GROUP)
        .and_then(|g| g.view.leader().map(|l| l.ordinal).and_then(|o| endpoint_of(&g.view, &pods, &names, o)));
    let config: Option<ShardConfig> = match &meta_leader {
        Some(leader) => {
            ctx.nodes.query_config(leader).await.inspect_err(|e| tracing::debug!(error = %e, "no shard map")).ok()
        }
        None => None,
    };
    let data_views: Vec<DataGroupView> = observed
        .iter()
        .filter(|g| g.view.group_id != META_GROUP)
        .map(|g| DataGroupView {
            group_id: g.view.group_id,
            settled_voters: settled_voters(&g.view, &g.plan.step),
            leader: g.view.leader().map(|l| DataLeader {
                applied_config: l.status.config_num,
                shards: l.status.shards.iter().map(HeldShard::from).collect(),
            }),
            initialized: g.initialized,
            being_deleted: terminating.contains(&g.view.group_id),
        })
        .collect();
    let meta_plan = plan_meta(&wanted, &data_views, config.as_ref(), &recorded_removals);
    let deleting: BTreeSet<u64> = meta_plan
        .removals
        .iter()
        .filter(|r| r.phase == RemovalPhase::Deleting)
        .map(|r| r.group_id)
        .chain(terminating.iter().copied())
        .collect();

    let mut failures = Vec::new();
    if !cluster.spec.paused {
        // A group on its way out keeps what it has: nothing of it is applied again, and its
        // membership is left alone.
        for group in observed.iter().filter(|g| !deleting.contains(&g.view.group_id)) {
            let group_id = group.view.group_id;
            apply_object(
                ctx,
                &namespace,
                &resources::statefulset(cluster, &names, group_id, group.plan.statefulset_replicas),
            )
            .await?;
            apply_object(ctx, &namespace, &resources::headless_service(cluster, &names, group_id)).await?;
            let voters = group.view.leader().map(|l| l.voters().len());
            apply_object(ctx, &namespace, &resources::pod_disruption_budget(cluster, &names, group_id, voters)).await?;
        }
        apply_object(ctx, &namespace, &resources::client_service(cluster, &names)).await?;
        if cluster.spec.network_policy.enabled {
            let policy = resources::network_policy(cluster, &names, &ctx.settings.operator_pods);
            apply_object(ctx, &namespace, &policy).await?;
        } else {
            delete_object::<NetworkPolicy>(ctx, &namespace, &names.network_policy()).await?;
        }

        for group in observed.iter_mut().filter(|g| !deleting.contains(&g.view.group_id)) {
            match take_group_step(ctx, cluster, &names, &group.view, &group.plan.step, &pods).await {
                Ok(()) => group.initialized |= matches!(group.plan.step, GroupStep::Initialize { .. }),
                Err(e) => failures.push(e),
            }
        }
        for step in &meta_plan.steps {
            // Deleted already: its StatefulSet is on its way out, the rest is gone.
            if matches!(step, MetaStep::DeleteGroup { group_id } if terminating.contains(group_id)) {
                continue;
            }
            if let Err(e) = take_meta_step(ctx, cluster, &names, meta_leader.as_ref(), step).await {
                failures.push(e);
            }
        }
    }

    let (rollout, rolled) =
        roll(ctx, cluster, &names, &pods, &observed, &wanted, &deleting, &data_views, &meta_plan).await;
    if let Err(failure) = rolled {
        failures.push(failure);
    }

    let mut status = status::build(&status::Observed {
        generation: cluster.metadata.generation,
        paused: cluster.spec.paused,
        wanted: &wanted,
        groups: &observed,
        config: config.as_ref(),
        meta_steps: &meta_plan.steps,
        removals: &meta_plan.removals,
        last_group_id,
        rollout: &rollout,
        previous,
        now: Timestamp::now(),
    });
    let next_renewal = tls.as_ref().and_then(|t| t.next_renewal);
    status.tls = tls.map(|t| t.status);
    publish_rollout_changes(ctx, cluster, previous, &status).await;
    publish_removal_changes(ctx, cluster, &names, previous, &status, &group_ids).await;
    ctx.metrics.shards_in_flight(&names.namespace, &names.name, status.shards_in_flight);
    let in_flight = !status.operations.is_empty();
    write_status(ctx, &names, &status).await?;

    if !failures.is_empty() {
        return Err(Error::Steps(failures));
    }
    let interval =
        if in_flight && !cluster.spec.paused { ctx.settings.progress_interval } else { ctx.settings.settled_interval };
    // Renewal happens on time even if nothing else brings a reconcile.
    Ok(Action::requeue(next_renewal.map_or(interval, |next| interval.min(next))))
}

/// Ordered cleanup on delete: data groups first, then the meta group, then the client Service.
/// Volumes follow spec.pvcRetention.whenDeleted through the StatefulSets' retention policy.
pub(super) async fn cleanup<N: NodeApi>(cluster: &ShardCluster, ctx: &Context<N>) -> Result<Action, Error> {
    let names = ClusterNames::of(cluster, &ctx.settings.cluster_domain);
    // Its Secrets and NetworkPolicy go with it (owner references).
    ctx.nodes.use_tls(&names.cluster_id(), None);
    let by_cluster = ListParams::default().labels(&names.cluster_selector());
    let statefulsets =
        Api::<StatefulSet>::namespaced(ctx.client.clone(), &names.namespace).list(&by_cluster).await?.items;
    let data_groups: Vec<&StatefulSet> =
        statefulsets.iter().filter(|s| group_of(*s).is_some_and(|g| g != META_GROUP)).collect();
    if !data_groups.is_empty() {
        for statefulset in &data_groups {
            if statefulset.metadata.deletion_timestamp.is_none()
                && let Some(group_id) = group_of(*statefulset)
            {
                delete_group(ctx, &names, group_id).await?;
            }
        }
        // The meta group holds the shard map the data groups' nodes consult while they stop;
        // it goes last, once they are gone. Failing keeps the finalizer, and retries.
        return Err(Error::DataGroupsRemain(data_groups.iter().map(|s| s.name_any()).collect()));
    }
    delete_group(ctx, &names, META_GROUP).await?;
    delete_object::<Service>(ctx, &names.namespace, &names.client_service()).await?;
    let note =
        format!("deleted the groups of {} (volumes: {})", names.name, cluster.spec.pvc_retention.when_deleted.as_str());
    ctx.publish(cluster, None, EventType::Normal, "Deleted", "Cleanup", note).await;
    Ok(Action::await_change())
}
