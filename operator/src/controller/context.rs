//! What every reconcile shares: the Kubernetes client, the node API, Events and metrics.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::Resource;
use kube::ResourceExt;
use kube::runtime::events::Event;
use kube::runtime::events::EventType;
use kube::runtime::events::Recorder;
use kube::runtime::events::Reporter;
use kube::runtime::reflector::ObjectRef;

use super::Settings;
use crate::crd::ShardCluster;
use crate::metrics::Metrics;
use crate::nodes::NodeApi;

/// Shared by every reconcile.
pub struct Context<N> {
    pub client: Client,
    pub nodes: N,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub settings: Settings,
    /// Consecutive failures per object, for per-object exponential backoff.
    pub(super) failures: Mutex<HashMap<ObjectRef<ShardCluster>, u32>>,
}

impl<N: NodeApi> Context<N> {
    pub fn new(client: Client, nodes: N, metrics: Arc<Metrics>, settings: Settings, reporter: Reporter) -> Self {
        let recorder = Recorder::new(client.clone(), reporter);
        Context { client, nodes, recorder, metrics, settings, failures: Mutex::default() }
    }

    /// Publishes an Event on the cluster, about one of its groups when `group` names one (the
    /// group's StatefulSet is then the related object, so Events of different groups are not
    /// folded into one series).
    pub(super) async fn publish(
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
    pub(super) async fn publish_related(
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
