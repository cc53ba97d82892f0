//! The ShardCluster controller: observe (pods, StatefulSets, node Status, the shard map), plan
//! (pure, in `plan`), act (server-side apply of owned objects, at most one membership step per
//! group), report (status, Events). Level-triggered: every reconcile starts from what is there.

use std::collections::BTreeSet;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;
use std::time::SystemTime;

use futures::StreamExt;
use futures::future::join_all;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::Client;
use kube::Resource;
use kube::ResourceExt;
use kube::api::DeleteParams;
use kube::api::ListParams;
use kube::api::Patch;
use kube::api::PatchParams;
use kube::api::Preconditions;
use kube::runtime::Controller;
use kube::runtime::Predicate;
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::Action;
use kube::runtime::events::Event;
use kube::runtime::events::EventType;
use kube::runtime::events::Recorder;
use kube::runtime::events::Reporter;
use kube::runtime::finalizer;
use kube::runtime::finalizer::Event as Finalized;
use kube::runtime::predicates;
use kube::runtime::reflector;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use shardkv_proto::v1::Member;
use shardkv_proto::v1::ShardConfig;

use crate::certificates;
use crate::certificates::CertificateError;
use crate::certificates::RENEW_ANNOTATION;
use crate::crd::CertificateStatus;
use crate::crd::FINALIZER;
use crate::crd::PodRestart;
use crate::crd::RolloutHalt;
use crate::crd::ShardCluster;
use crate::crd::ShardClusterStatus;
use crate::crd::TlsStatus;
use crate::metrics::Metrics;
use crate::nodes::NodeApi;
use crate::nodes::NodeEndpoint;
use crate::plan::DataGroupView;
use crate::plan::DataLeader;
use crate::plan::GroupStep;
use crate::plan::GroupView;
use crate::plan::Halt;
use crate::plan::HeldShard;
use crate::plan::MetaPlan;
use crate::plan::MetaStep;
use crate::plan::PodRevision;
use crate::plan::PodView;
use crate::plan::Removal;
use crate::plan::RemovalPhase;
use crate::plan::RolloutGroup;
use crate::plan::RolloutSettings;
use crate::plan::RolloutStep;
use crate::plan::image_version;
use crate::plan::plan_group;
use crate::plan::plan_meta;
use crate::plan::plan_rollout;
use crate::plan::progress;
use crate::plan::stop_report_problem;
use crate::plan::version_skew;
use crate::plan::wanted_groups;
use crate::resources;
use crate::resources::ClusterNames;
use crate::resources::GRPC_PORT;
use crate::resources::LABEL_CLUSTER;
use crate::resources::LABEL_GROUP;
use crate::resources::LABEL_REVISION;
use crate::resources::MANAGER;
use crate::resources::META_GROUP;
use crate::resources::OperatorPods;
use crate::status;
use crate::status::ObservedGroup;
use crate::status::RolloutObserved;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
    #[error("{0} has no namespace")]
    NoNamespace(String),
    #[error("{}", steps_failed(.0))]
    Steps(Vec<FailedStep>),
    #[error("certificates: {0}")]
    Certificates(#[from] CertificateError),
    /// Deleting a cluster: the meta group goes only after every data group is gone.
    #[error("deleting {}: the meta group waits until they are gone", .0.join(", "))]
    DataGroupsRemain(Vec<String>),
}

fn steps_failed(steps: &[FailedStep]) -> String {
    steps.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

/// A step the reconcile took that failed: what it was, and why. Each is also a Warning Event;
/// the reconcile then fails with all of them and is retried with backoff.
#[derive(Debug, thiserror::Error)]
#[error("{step} failed: {cause}")]
pub struct FailedStep {
    step: String,
    #[source]
    cause: StepError,
}

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("pod {pod} has no IP")]
    NoPodIp { pod: String },
    #[error("the meta group has no leader")]
    NoMetaLeader,
    /// A node refused the call, or could not be reached.
    #[error("{}", .0.message())]
    Node(tonic::Status),
    #[error("stopping {pod}: {}", .status.message())]
    Stop { pod: String, status: tonic::Status },
    #[error("deleting {what}: {source}")]
    Delete { what: String, source: Box<Error> },
    /// The node's stop report does not allow deleting its pod: the rollout halts.
    #[error("pod {pod} was not deleted: {problem}")]
    StopRefused { pod: String, problem: String },
}

impl Error {
    /// Label of the failures metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "Kube",
            Error::Finalizer(_) => "Finalizer",
            Error::NoNamespace(_) => "NoNamespace",
            Error::Steps(_) => "NodeStep",
            Error::Certificates(_) => "Certificates",
            Error::DataGroupsRemain(_) => "DataGroupsRemain",
        }
    }
}

/// Tunables of the controller.
#[derive(Debug, Clone)]
pub struct Settings {
    /// DNS suffix of the Kubernetes cluster (peer addresses).
    pub cluster_domain: String,
    /// Log entries a learner may lag and still be promoted.
    pub max_learner_lag: u64,
    /// Requeue interval while an operation is in flight.
    pub progress_interval: Duration,
    /// Requeue interval of a settled cluster: how often status is refreshed when nothing changes
    /// (spec changes and pod or StatefulSet changes trigger reconciles of their own).
    pub settled_interval: Duration,
    /// First retry delay after an error; doubles per consecutive error of the same object.
    pub error_backoff: Duration,
    pub max_error_backoff: Duration,
    /// The operator's own pods, which each cluster's NetworkPolicy lets reach the nodes.
    pub operator_pods: OperatorPods,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            cluster_domain: "cluster.local".into(),
            max_learner_lag: 1_000,
            progress_interval: Duration::from_secs(2),
            settled_interval: Duration::from_secs(30),
            error_backoff: Duration::from_secs(1),
            max_error_backoff: Duration::from_secs(300),
            operator_pods: OperatorPods {
                namespace: None,
                labels: std::collections::BTreeMap::from([(resources::LABEL_NAME.to_string(), MANAGER.to_string())]),
            },
        }
    }
}

/// Shared by every reconcile.
pub struct Context<N> {
    pub client: Client,
    pub nodes: N,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub settings: Settings,
    /// Consecutive failures per object, for per-object exponential backoff.
    failures: Mutex<HashMap<ObjectRef<ShardCluster>, u32>>,
}

impl<N: NodeApi> Context<N> {
    pub fn new(client: Client, nodes: N, metrics: Arc<Metrics>, settings: Settings, reporter: Reporter) -> Self {
        let recorder = Recorder::new(client.clone(), reporter);
        Context { client, nodes, recorder, metrics, settings, failures: Mutex::default() }
    }

    /// Publishes an Event on the cluster, about one of its groups when `group` names one (the
    /// group's StatefulSet is then the related object, so Events of different groups are not
    /// folded into one series).
    async fn publish(
        &self,
        cluster: &ShardCluster,
        group: Option<String>,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let related = group.map(|name| ObjectReference {
            api_version: Some("apps/v1".into()),
            kind: Some("StatefulSet".into()),
            name: Some(name),
            namespace: cluster.namespace(),
            ..Default::default()
        });
        self.publish_related(cluster, related, type_, reason, action, note).await;
    }

    /// Publishes an Event on the cluster with `related` as its related object. The recorder
    /// folds Events of the same reason, action and objects into one series (a count, the first
    /// note kept), whatever their notes say: an Event that must keep its own note (one per pod
    /// restarted, one per rollout phase) needs a related object of its own.
    async fn publish_related(
        &self,
        cluster: &ShardCluster,
        related: Option<ObjectReference>,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let event = Event { type_, reason: reason.into(), note: Some(note), action: action.into(), secondary: related };
        if let Err(e) = self.recorder.publish(&event, &cluster.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "publishing an Event failed");
        }
    }
}

/// A pod incarnation as an Event's related object: each pod restarted gets Events of its own.
fn pod_reference(namespace: &str, name: &str, uid: Option<String>) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some(name.to_string()),
        namespace: Some(namespace.to_string()),
        uid,
        ..Default::default()
    }
}

/// Runs the controller until the stream ends (the process is told to stop).
///
/// A ShardCluster triggers a reconcile when its spec (generation) or finalizers change, not when
/// its status does: the operator's own status writes (member lag changes with every write under
/// load) would otherwise start the next reconcile at once. Pods and StatefulSets trigger on any
/// change; between changes, the requeue interval refreshes status.
pub async fn run<N: NodeApi>(ctx: Arc<Context<N>>) {
    let (reader, writer) = reflector::store();
    let clusters = watcher(Api::<ShardCluster>::all(ctx.client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(
            predicates::generation.combine(predicates::finalizers).combine(renewal_requested),
            Default::default(),
        );
    let selector = watcher::Config::default().labels(LABEL_CLUSTER);
    Controller::for_stream(clusters, reader)
        .owns(Api::<StatefulSet>::all(ctx.client.clone()), selector.clone())
        // A deleted or edited certificate Secret is repaired at once.
        .owns(Api::<Secret>::all(ctx.client.clone()), selector.clone())
        .watches(Api::<Pod>::all(ctx.client.clone()), selector, |pod| {
            let cluster = pod.labels().get(LABEL_CLUSTER)?;
            Some(ObjectRef::new(cluster).within(&pod.namespace()?))
        })
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(%object, "reconciled"),
                Err(e) => tracing::warn!(error = %e, "reconcile failed"),
            }
        })
        .await;
}

/// The renewal annotation's value, so that setting it triggers a reconcile (annotations do not
/// change the generation).
fn renewal_requested(cluster: &ShardCluster) -> Option<u64> {
    use std::hash::Hash;
    use std::hash::Hasher;
    let value = cluster.annotations().get(RENEW_ANNOTATION)?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut hasher);
    Some(hasher.finish())
}

/// One reconcile of one ShardCluster.
pub async fn reconcile<N: NodeApi>(cluster: Arc<ShardCluster>, ctx: Arc<Context<N>>) -> Result<Action, Error> {
    let started = Instant::now();
    let namespace = cluster.namespace().ok_or_else(|| Error::NoNamespace(cluster.name_any()))?;
    let api: Api<ShardCluster> = Api::namespaced(ctx.client.clone(), &namespace);
    let result = finalizer::finalizer(&api, FINALIZER, cluster.clone(), |event| async {
        match event {
            Finalized::Apply(cluster) => apply(&cluster, &ctx).await,
            Finalized::Cleanup(cluster) => cleanup(&cluster, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics.reconciled(started.elapsed());
    if result.is_ok() {
        ctx.failures.lock().expect("failures lock").remove(&ObjectRef::from_obj(&*cluster));
    }
    result
}

/// Retries a failed object with exponential backoff of its own.
pub fn error_policy<N: NodeApi>(cluster: Arc<ShardCluster>, error: &Error, ctx: Arc<Context<N>>) -> Action {
    ctx.metrics.failed(error.reason());
    let failures = {
        let mut all = ctx.failures.lock().expect("failures lock");
        let n = all.entry(ObjectRef::from_obj(&*cluster)).or_default();
        *n = n.saturating_add(1);
        *n
    };
    let delay = backoff(&ctx.settings, failures);
    tracing::warn!(cluster = %cluster.name_any(), error = %error, failures, ?delay, "reconcile failed; retrying");
    Action::requeue(delay)
}

fn backoff(settings: &Settings, failures: u32) -> Duration {
    let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(16));
    settings.error_backoff.saturating_mul(factor).min(settings.max_error_backoff)
}

fn ordinal_of(pod: &Pod, statefulset: &str) -> Option<u32> {
    pod.name_any().strip_prefix(statefulset)?.strip_prefix('-')?.parse().ok()
}

fn group_of<K: Resource>(object: &K) -> Option<u64> {
    object.meta().labels.as_ref()?.get(LABEL_GROUP)?.parse().ok()
}

fn pod_ready(pod: &Pod) -> bool {
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions.is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// How the operator reaches a node pod: its IP, checked (with TLS) against its DNS name.
fn pod_endpoint(pod: &Pod, names: &ClusterNames) -> Option<NodeEndpoint> {
    let ip = pod.status.as_ref()?.pod_ip.as_ref()?;
    let group = group_of(pod)?;
    let ordinal = ordinal_of(pod, &names.group(group))?;
    (pod.meta().deletion_timestamp.is_none()).then(|| NodeEndpoint {
        addr: format!("{ip}:{GRPC_PORT}"),
        server_name: names.pod_dns_name(group, ordinal),
        cluster_id: names.cluster_id(),
    })
}

async fn apply_object<K>(ctx: &Context<impl NodeApi>, namespace: &str, object: &K) -> Result<K, Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope> + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), namespace);
    let params = PatchParams::apply(MANAGER).force();
    Ok(api.patch(&object.name_any(), &params, &Patch::Apply(object)).await?)
}

async fn delete_object<K>(ctx: &Context<impl NodeApi>, namespace: &str, name: &str) -> Result<(), Error>
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
async fn delete_group(ctx: &Context<impl NodeApi>, names: &ClusterNames, group_id: u64) -> Result<(), Error> {
    let name = names.group(group_id);
    delete_object::<PodDisruptionBudget>(ctx, &names.namespace, &name).await?;
    delete_object::<Service>(ctx, &names.namespace, &name).await?;
    delete_object::<StatefulSet>(ctx, &names.namespace, &name).await
}

/// The pods and node Status of one group.
async fn observe_group(
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

fn endpoint_of(view: &GroupView, pods: &[Pod], names: &ClusterNames, ordinal: u32) -> Option<NodeEndpoint> {
    let name = names.pod(view.group_id, ordinal);
    pods.iter().find(|p| p.name_any() == name).and_then(|p| pod_endpoint(p, names))
}

/// Takes a group's step (at most one node call) and publishes an Event saying what it did.
async fn take_group_step(
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
async fn take_meta_step(
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

fn settled_voters(view: &GroupView, step: &GroupStep) -> Option<Vec<Member>> {
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

async fn apply<N: NodeApi>(cached: &ShardCluster, ctx: &Context<N>) -> Result<Action, Error> {
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

/// What the certificate step found or did: status, and when the next renewal is due.
struct TlsOutcome {
    status: TlsStatus,
    next_renewal: Option<Duration>,
}

fn time(at: SystemTime) -> Time {
    Time(Timestamp::try_from(at).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// Keeps the cluster's CA and certificates (see `certificates`): creates what is missing,
/// renews what is due, and tells the node client which identity to use for this cluster. A
/// paused cluster gets nothing written (status still reports what is there). With TLS off,
/// nothing: the nodes are called in plaintext.
async fn ensure_tls(
    ctx: &Context<impl NodeApi>,
    cluster: &ShardCluster,
    names: &ClusterNames,
    group_ids: &BTreeSet<u64>,
) -> Result<Option<TlsOutcome>, Error> {
    let cluster_id = names.cluster_id();
    if !cluster.spec.tls.enabled {
        ctx.nodes.use_tls(&cluster_id, None);
        return Ok(None);
    }
    let writable = !cluster.spec.paused;
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let secrets = api.list(&ListParams::default().labels(&names.cluster_selector())).await?.items;
    let find = |name: &str| secrets.iter().find(|s| s.name_any() == name);
    // By name too: a CA Secret the user made beforehand (without the operator's labels) is used,
    // never overwritten.
    let ca_secret = match find(&names.ca_secret()) {
        Some(secret) => Some(secret.clone()),
        None => api.get_opt(&names.ca_secret()).await?,
    };
    let (ca, ca_info) = match ca_secret {
        Some(secret) => certificates::ca_of(&secret, &cluster_id)?,
        None if !writable => return Ok(None),
        None => {
            let ca = certificates::generate_ca(names)?;
            apply_object(ctx, &names.namespace, &certificates::ca_secret(cluster, names, &ca)).await?;
            let info = certificates::info_of(&names.ca_secret(), &ca.pem().cert_pem)?;
            let note = format!(
                "created the cluster's CA in Secret {} (serial {}, valid until {})",
                names.ca_secret(),
                info.serial,
                time(info.not_after).0
            );
            publish_certificate(ctx, cluster, &names.ca_secret(), "CertificateIssued", note).await;
            (ca, info)
        }
    };
    let ca_pem = ca.pem().cert_pem.clone();
    let honoured = cluster.status.as_ref().and_then(|s| s.tls.as_ref()).and_then(|t| t.renewal_token.clone());
    let requested = certificates::requested_token(cluster, honoured.as_deref());
    let now = SystemTime::now();
    let mut entries = Vec::new();
    let mut renew_times = Vec::new();
    let mut all_current = true;
    for leaf in certificates::leaves(names, group_ids)? {
        let existing = find(&leaf.secret);
        let held = existing.and_then(certificates::held);
        let reason = certificates::renewal(held.as_ref(), &leaf, &ca_pem, now, requested.is_some());
        let (info, issued) = match (reason, held) {
            (Some(reason), _) if writable => {
                let issued = certificates::issue(&ca, &ca_info, &leaf, cluster.spec.tls.certificate_days)?;
                let secret = certificates::leaf_secret(cluster, names, &leaf, &ca_pem, &issued);
                apply_object(ctx, &names.namespace, &secret).await?;
                let info = certificates::info_of(&leaf.secret, &issued.cert_pem)?;
                let (event, verb) =
                    if reason.is_first() { ("CertificateIssued", "issued") } else { ("CertificateRenewed", "renewed") };
                let note = format!(
                    "{verb} {} in Secret {}: serial {}, valid until {} ({})",
                    leaf.identity,
                    leaf.secret,
                    info.serial,
                    time(info.not_after).0,
                    reason.describe()
                );
                tracing::info!(cluster = %names.name, secret = %leaf.secret, serial = %info.serial, "{note}");
                publish_certificate(ctx, cluster, &leaf.secret, event, note).await;
                (info, Some(issued))
            }
            (reason, Some(held)) => {
                all_current &= reason.is_none();
                (held.info, None)
            }
            (_, None) => {
                all_current = false;
                continue;
            }
        };
        if leaf.secret == names.operator_tls_secret() {
            let issued = match (issued, existing) {
                (Some(issued), _) => issued,
                (None, Some(secret)) => certificates::issued_of(secret)?,
                (None, None) => unreachable!("a certificate that was neither issued nor held is skipped"),
            };
            ctx.nodes.use_tls(&cluster_id, Some(certificates::operator_tls(&leaf.secret, &ca_pem, &issued)?));
        }
        let renew_after = certificates::renew_after(&info);
        renew_times.push(renew_after);
        entries.push(CertificateStatus {
            secret: leaf.secret.clone(),
            identity: leaf.identity.uri(),
            serial: info.serial,
            not_after: time(info.not_after),
            renew_after: time(renew_after),
        });
    }
    let renewal_token = if all_current { requested.map(str::to_string).or(honoured) } else { honoured };
    let status = TlsStatus {
        ca_secret: names.ca_secret(),
        ca_not_after: Some(time(ca_info.not_after)),
        ca_serial: Some(ca_info.serial.clone()),
        renewal_token,
        certificates: entries,
    };
    Ok(Some(TlsOutcome { status, next_renewal: certificates::until_earliest(renew_times, now) }))
}

/// An Event about a certificate, related to its Secret (so each Secret's Events form their own
/// series).
async fn publish_certificate(
    ctx: &Context<impl NodeApi>,
    cluster: &ShardCluster,
    secret: &str,
    reason: &str,
    note: String,
) {
    let related = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Secret".into()),
        name: Some(secret.to_string()),
        namespace: cluster.namespace(),
        ..Default::default()
    };
    ctx.publish_related(cluster, Some(related), EventType::Normal, reason, "Certificates", note).await;
}

/// The removals recorded in status (an entry whose phase this operator does not know is
/// dropped: it is planned again from what is observed).
fn recorded_removals(status: Option<&ShardClusterStatus>) -> Vec<Removal> {
    status
        .map(|s| s.group_removals.as_slice())
        .unwrap_or_default()
        .iter()
        .filter_map(|r| {
            Some(Removal { group_id: r.group_id, leave_config: r.leave_config, phase: RemovalPhase::parse(&r.phase)? })
        })
        .collect()
}

/// Writes the whole status by server-side apply, so a field that became empty is removed
/// instead of keeping its last value.
async fn write_status(
    ctx: &Context<impl NodeApi>,
    names: &ClusterNames,
    status: &ShardClusterStatus,
) -> Result<(), Error> {
    let api: Api<ShardCluster> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let body = json!({
        "apiVersion": ShardCluster::api_version(&()),
        "kind": ShardCluster::kind(&()),
        "status": status,
    });
    api.patch_status(&names.name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(body)).await?;
    Ok(())
}

/// An Event for each removal that started, changed phase, finished or was called off.
async fn publish_removal_changes(
    ctx: &Context<impl NodeApi>,
    cluster: &ShardCluster,
    names: &ClusterNames,
    previous: Option<&ShardClusterStatus>,
    status: &ShardClusterStatus,
    observed_groups: &BTreeSet<u64>,
) {
    let before = previous.map(|p| p.group_removals.as_slice()).unwrap_or_default();
    for removal in &status.group_removals {
        let id = removal.group_id;
        if before.iter().any(|b| b.group_id == id && b.phase == removal.phase) {
            continue;
        }
        let held = removal.shards_held.map_or("unknown".to_string(), |n| n.to_string());
        let note = match removal.leave_config {
            Some(c) => format!(
                "group {id}: {} (left in config {c}; {held} shards held, {} bytes moved)",
                removal.phase, removal.bytes_moved
            ),
            None => format!("group {id}: {} ({held} shards held)", removal.phase),
        };
        let reason = format!("Removal{}", removal.phase);
        ctx.publish(cluster, Some(names.group(id)), EventType::Normal, &reason, "GroupScaleIn", note).await;
    }
    for gone in before.iter().filter(|b| !status.group_removals.iter().any(|r| r.group_id == b.group_id)) {
        let id = gone.group_id;
        let (reason, note) = if observed_groups.contains(&id) && gone.phase != RemovalPhase::Deleting.as_str() {
            ("RemovalCancelled", format!("group {id} is wanted again: its removal is called off"))
        } else {
            ("RemovalDone", format!("group {id} is deleted ({} bytes moved out)", gone.bytes_moved))
        };
        ctx.publish(cluster, Some(names.group(id)), EventType::Normal, reason, "GroupScaleIn", note).await;
    }
}

/// Plans the rollout and takes its step (one pod of the cluster at a time), unless the cluster
/// is paused. Returns what status reports, and the step's failure.
#[allow(clippy::too_many_arguments)]
async fn roll(
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
) -> Result<Result<PodRestart, String>, StepError> {
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

/// Deletes a pod only if it is still the incarnation `uid`; a replacement (another UID) or a
/// pod already gone counts as done.
async fn delete_pod(ctx: &Context<impl NodeApi>, namespace: &str, name: &str, uid: &str) -> Result<(), Error> {
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

/// Events when a rollout starts, halts, or completes.
async fn publish_rollout_changes(
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

/// Ordered cleanup on delete: data groups first, then the meta group, then the client Service.
/// Volumes follow spec.pvcRetention.whenDeleted through the StatefulSets' retention policy.
async fn cleanup<N: NodeApi>(cluster: &ShardCluster, ctx: &Context<N>) -> Result<Action, Error> {
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
