//! The Kubernetes objects a reconcile reads and writes: pods and their endpoints, owned
//! objects applied and deleted, status written.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Api;
use kube::Resource;
use kube::ResourceExt;
use kube::api::DeleteParams;
use kube::api::Patch;
use kube::api::PatchParams;
use kube::api::Preconditions;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::context::Context;
use super::error::Error;
use crate::crd::ShardCluster;
use crate::crd::ShardClusterStatus;
use crate::nodes::NodeApi;
use crate::nodes::NodeEndpoint;
use crate::plan::GroupView;
use crate::resources::ClusterNames;
use crate::resources::GRPC_PORT;
use crate::resources::LABEL_GROUP;
use crate::resources::MANAGER;

/// A pod incarnation as an Event's related object: each pod restarted gets Events of its own.
pub(super) fn pod_reference(namespace: &str, name: &str, uid: Option<String>) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some(name.to_string()),
        namespace: Some(namespace.to_string()),
        uid,
        ..Default::default()
    }
}

pub(super) fn ordinal_of(pod: &Pod, statefulset: &str) -> Option<u32> {
    pod.name_any().strip_prefix(statefulset)?.strip_prefix('-')?.parse().ok()
}

pub(super) fn group_of<K: Resource>(object: &K) -> Option<u64> {
    object.meta().labels.as_ref()?.get(LABEL_GROUP)?.parse().ok()
}

pub(super) fn pod_ready(pod: &Pod) -> bool {
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions.is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// How the operator reaches a node pod: its IP, checked (with TLS) against its DNS name.
pub(super) fn pod_endpoint(pod: &Pod, names: &ClusterNames) -> Option<NodeEndpoint> {
    let ip = pod.status.as_ref()?.pod_ip.as_ref()?;
    let group = group_of(pod)?;
    let ordinal = ordinal_of(pod, &names.group(group))?;
    (pod.meta().deletion_timestamp.is_none()).then(|| NodeEndpoint {
        addr: format!("{ip}:{GRPC_PORT}"),
        server_name: names.pod_dns_name(group, ordinal),
        cluster_id: names.cluster_id(),
    })
}

pub(super) async fn apply_object<K>(ctx: &Context<impl NodeApi>, namespace: &str, object: &K) -> Result<K, Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope> + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), namespace);
    let params = PatchParams::apply(MANAGER).force();
    Ok(api.patch(&object.name_any(), &params, &Patch::Apply(object)).await?)
}

pub(super) async fn delete_object<K>(ctx: &Context<impl NodeApi>, namespace: &str, name: &str) -> Result<(), Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope> + Clone + DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), namespace);
    match api.delete(name, &DeleteParams::foreground()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Deletes a group's PDB, Service and StatefulSet, the StatefulSet last: once it is being
/// deleted, the rest is gone (a reconcile does not delete again what is on its way out).
pub(super) async fn delete_group(
    ctx: &Context<impl NodeApi>,
    names: &ClusterNames,
    group_id: u64,
) -> Result<(), Error> {
    let name = names.group(group_id);
    delete_object::<PodDisruptionBudget>(ctx, &names.namespace, &name).await?;
    delete_object::<Service>(ctx, &names.namespace, &name).await?;
    delete_object::<StatefulSet>(ctx, &names.namespace, &name).await
}

pub(super) fn endpoint_of(view: &GroupView, pods: &[Pod], names: &ClusterNames, ordinal: u32) -> Option<NodeEndpoint> {
    let name = names.pod(view.group_id, ordinal);
    pods.iter().find(|p| p.name_any() == name).and_then(|p| pod_endpoint(p, names))
}

/// Writes the whole status by server-side apply, so a field that became empty is removed
/// instead of keeping its last value.
pub(super) async fn write_status(
    ctx: &Context<impl NodeApi>,
    names: &ClusterNames,
    status: &ShardClusterStatus,
) -> Result<(), Error> {
    let api: Api<ShardCluster> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let body = StatusApply { api_version: ShardCluster::api_version(&()), kind: ShardCluster::kind(&()), status };
    api.patch_status(&names.name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(body)).await?;
    Ok(())
}

/// The body of a status apply: the object's type and its status, no spec (a typed
/// `ShardCluster` would carry its spec, whose fields this manager would then claim).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusApply<'a> {
    api_version: std::borrow::Cow<'a, str>,
    kind: std::borrow::Cow<'a, str>,
    status: &'a ShardClusterStatus,
}

/// Deletes a pod only if it is still the incarnation `uid`; a replacement (another UID) or a
/// pod already gone counts as done.
pub(super) async fn delete_pod(
    ctx: &Context<impl NodeApi>,
    namespace: &str,
    name: &str,
    uid: &str,
) -> Result<(), Error> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let params = DeleteParams {
        preconditions: Some(Preconditions { uid: Some(uid.to_string()), resource_version: None }),
        ..Default::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}
