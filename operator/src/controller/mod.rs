//! The ShardCluster controller: observe (pods, StatefulSets, node Status, the shard map), plan
//! (pure, in `plan`), act (server-side apply of owned objects, at most one membership step per
//! group), report (status, Events). Level-triggered: every reconcile starts from what is there.

mod apply;
mod context;
mod error;
mod membership;
mod objects;
mod removals;
mod rollout;
mod tls;

use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::ResourceExt;
use kube::runtime::Controller;
use kube::runtime::Predicate;
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::Action;
use kube::runtime::finalizer;
use kube::runtime::finalizer::Event as Finalized;
use kube::runtime::predicates;
use kube::runtime::reflector;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;

use crate::certificates::RENEW_ANNOTATION;
use crate::crd::FINALIZER;
use crate::crd::ShardCluster;
use crate::nodes::NodeApi;
use crate::resources;
use crate::resources::LABEL_CLUSTER;
use crate::resources::MANAGER;
use crate::resources::OperatorPods;
use apply::apply;
use apply::cleanup;

pub use context::Context;
pub use error::Error;
pub use error::FailedStep;
pub use error::StepError;

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
