//! Desired Kubernetes objects of a ShardCluster, as pure functions of its spec: per group (meta
//! included) a StatefulSet, a headless Service and a PodDisruptionBudget, plus one client
//! Service. Names, labels and node addresses are defined here and nowhere else.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::apps::v1::StatefulSetPersistentVolumeClaimRetentionPolicy;
use k8s_openapi::api::apps::v1::StatefulSetSpec;
use k8s_openapi::api::apps::v1::StatefulSetUpdateStrategy;
use k8s_openapi::api::core::v1::Affinity;
use k8s_openapi::api::core::v1::Capabilities;
use k8s_openapi::api::core::v1::Container;
use k8s_openapi::api::core::v1::ContainerPort;
use k8s_openapi::api::core::v1::EmptyDirVolumeSource;
use k8s_openapi::api::core::v1::EnvVar;
use k8s_openapi::api::core::v1::EnvVarSource;
use k8s_openapi::api::core::v1::ExecAction;
use k8s_openapi::api::core::v1::HTTPGetAction;
use k8s_openapi::api::core::v1::Lifecycle;
use k8s_openapi::api::core::v1::LifecycleHandler;
use k8s_openapi::api::core::v1::ObjectFieldSelector;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::core::v1::PersistentVolumeClaimSpec;
use k8s_openapi::api::core::v1::PodAffinityTerm;
use k8s_openapi::api::core::v1::PodAntiAffinity;
use k8s_openapi::api::core::v1::PodSecurityContext;
use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::api::core::v1::Probe;
use k8s_openapi::api::core::v1::SeccompProfile;
use k8s_openapi::api::core::v1::SecretVolumeSource;
use k8s_openapi::api::core::v1::SecurityContext;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::core::v1::ServicePort;
use k8s_openapi::api::core::v1::ServiceSpec;
use k8s_openapi::api::core::v1::Volume;
use k8s_openapi::api::core::v1::VolumeMount;
use k8s_openapi::api::core::v1::VolumeResourceRequirements;
use k8s_openapi::api::core::v1::WeightedPodAffinityTerm;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::networking::v1::NetworkPolicyIngressRule;
use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
use k8s_openapi::api::networking::v1::NetworkPolicyPort;
use k8s_openapi::api::networking::v1::NetworkPolicySpec;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::policy::v1::PodDisruptionBudgetSpec;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use kube::ResourceExt;

use crate::crd::PeerSelector;
use crate::crd::ShardCluster;

/// gRPC port of every node (Kv, Admin, Raft, Meta).
pub const GRPC_PORT: u16 = 7100;
/// Admin HTTP port of every node (/healthz, /readyz, /metrics, /lifecycle/prestop).
pub const ADMIN_PORT: u16 = 7180;
/// Where the node's volume is mounted.
pub const DATA_DIR: &str = "/var/lib/shardkv";
/// Seconds a pod gets between preStop and SIGKILL: leader transfer plus a snapshot of every
/// local replica must fit.
pub const TERMINATION_GRACE_SECONDS: i64 = 180;
/// User and group the node runs as.
pub const NODE_UID: i64 = 10001;
/// Where a node pod mounts the cluster's node certificate Secret (read-only). The node reloads
/// the files when the Secret's content changes, so renewals need no restart.
pub const TLS_DIR: &str = "/etc/shardkv/tls";
/// Keys of a certificate Secret (those of `kubernetes.io/tls`, plus the CA).
pub const CA_CERT_KEY: &str = "ca.crt";
pub const CA_KEY_KEY: &str = "ca.key";
pub const TLS_CERT_KEY: &str = "tls.crt";
pub const TLS_KEY_KEY: &str = "tls.key";

pub const LABEL_NAME: &str = "app.kubernetes.io/name";
pub const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Group id of a pod (0 = meta).
pub const LABEL_GROUP: &str = "shardkv.dev/group";
/// The cluster a pod, Service or StatefulSet belongs to.
pub const LABEL_CLUSTER: &str = "shardkv.dev/cluster";
/// The pod-template revision the StatefulSet controller stamps on each pod.
pub const LABEL_REVISION: &str = "controller-revision-hash";

pub const NODE_APP: &str = "shardkv-node";
pub const MANAGER: &str = "shardkv-operator";

/// The meta group's id; data groups have ids from 1 up, never reused (see `plan::wanted_groups`).
pub const META_GROUP: u64 = 0;

/// Naming and addressing of one cluster's objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNames {
    pub name: String,
    pub namespace: String,
    /// DNS suffix of the cluster, e.g. `cluster.local`.
    pub cluster_domain: String,
}

impl ClusterNames {
    pub fn of(cluster: &ShardCluster, cluster_domain: &str) -> Self {
        ClusterNames {
            name: cluster.name_any(),
            namespace: cluster.namespace().unwrap_or_default(),
            cluster_domain: cluster_domain.to_string(),
        }
    }

    /// The node-persisted cluster id: stable across re-creation of the resource, so a cluster
    /// recreated over retained volumes finds its own data.
    pub fn cluster_id(&self) -> String {
        format!("{}.{}", self.namespace, self.name)
    }

    /// StatefulSet, headless Service and PDB name of a group.
    pub fn group(&self, group_id: u64) -> String {
        if group_id == META_GROUP { format!("{}-meta", self.name) } else { format!("{}-g{group_id}", self.name) }
    }

    /// The client Service: routes to the meta group, where clients fetch the shard map.
    pub fn client_service(&self) -> String {
        self.name.clone()
    }

    pub fn pod(&self, group_id: u64, ordinal: u32) -> String {
        format!("{}-{ordinal}", self.group(group_id))
    }

    /// The stable gRPC address peers and clients use for a node: its StatefulSet DNS name.
    pub fn peer_addr(&self, group_id: u64, ordinal: u32) -> String {
        format!("{}:{GRPC_PORT}", self.pod_dns_name(group_id, ordinal))
    }

    fn selector(&self, group_id: u64) -> BTreeMap<String, String> {
        BTreeMap::from([
            (LABEL_NAME.to_string(), NODE_APP.to_string()),
            (LABEL_INSTANCE.to_string(), self.name.clone()),
            (LABEL_GROUP.to_string(), group_id.to_string()),
        ])
    }

    fn labels(&self, group_id: u64) -> BTreeMap<String, String> {
        let mut labels = self.selector(group_id);
        labels.insert(LABEL_CLUSTER.to_string(), self.name.clone());
        labels.insert(LABEL_COMPONENT.to_string(), role(group_id).to_string());
        labels.insert(LABEL_MANAGED_BY.to_string(), MANAGER.to_string());
        labels
    }

    /// Label selector of every pod and owned object of the cluster.
    pub fn cluster_selector(&self) -> String {
        format!("{LABEL_CLUSTER}={}", self.name)
    }

    /// Labels of the cluster's objects that belong to no group (Secrets, the NetworkPolicy).
    pub fn cluster_labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (LABEL_NAME.to_string(), NODE_APP.to_string()),
            (LABEL_INSTANCE.to_string(), self.name.clone()),
            (LABEL_CLUSTER.to_string(), self.name.clone()),
            (LABEL_MANAGED_BY.to_string(), MANAGER.to_string()),
        ])
    }

    /// Labels every node pod of the cluster carries (and only they).
    pub fn pod_selector(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (LABEL_NAME.to_string(), NODE_APP.to_string()),
            (LABEL_INSTANCE.to_string(), self.name.clone()),
        ])
    }

    /// The CA's Secret: `ca.crt`, `ca.key`.
    pub fn ca_secret(&self) -> String {
        format!("{}-ca", self.name)
    }

    /// The Secret every node pod mounts: `ca.crt`, `tls.crt`, `tls.key`.
    pub fn node_tls_secret(&self) -> String {
        format!("{}-node-tls", self.name)
    }

    /// The data client certificate users mount.
    pub fn client_tls_secret(&self) -> String {
        format!("{}-client-tls", self.name)
    }

    /// The operator's own client certificate for this cluster.
    pub fn operator_tls_secret(&self) -> String {
        format!("{}-operator-tls", self.name)
    }

    pub fn network_policy(&self) -> String {
        self.name.clone()
    }

    /// The DNS name a node's certificate is checked against (its pod's name under the group's
    /// headless Service), without the port.
    pub fn pod_dns_name(&self, group_id: u64, ordinal: u32) -> String {
        format!(
            "{}.{}.{}.svc.{}",
            self.pod(group_id, ordinal),
            self.group(group_id),
            self.namespace,
            self.cluster_domain
        )
    }
}

/// The node's `--role`.
pub fn role(group_id: u64) -> &'static str {
    if group_id == META_GROUP { "meta" } else { "data" }
}

/// Node id of the pod with this StatefulSet ordinal (the node derives the same from its pod name).
pub fn node_id(ordinal: u32) -> u64 {
    u64::from(ordinal) + 1
}

/// Votes needed for a majority of `voters`.
pub fn quorum(voters: u32) -> u32 {
    voters / 2 + 1
}

/// Voters the spec asks for in a group.
pub fn desired_replicas(cluster: &ShardCluster, group_id: u64) -> u32 {
    if group_id == META_GROUP { cluster.spec.meta.replicas } else { cluster.spec.replicas_per_group }
}

fn owner(cluster: &ShardCluster) -> OwnerReference {
    cluster.controller_owner_ref(&()).expect("a ShardCluster read from the apiserver has a name and uid")
}

/// The StatefulSet of a group, with `replicas` pods (the membership planner decides the count
/// while a group shrinks: pods leave the Raft group before the StatefulSet drops them).
pub fn statefulset(cluster: &ShardCluster, names: &ClusterNames, group_id: u64, replicas: u32) -> StatefulSet {
    let spec = &cluster.spec;
    let group = names.group(group_id);
    let labels = names.labels(group_id);
    let mut env = vec![
        env_from_field("POD_IP", "status.podIP"),
        env_from_field("SHARDKV_POD_NAME", "metadata.name"),
        env_value("SHARDKV_CLUSTER_ID", names.cluster_id()),
        env_value("SHARDKV_ROLE", role(group_id)),
        env_value("SHARDKV_GROUP_ID", group_id.to_string()),
        env_value("SHARDKV_SHARDS", spec.shards.to_string()),
        env_value("SHARDKV_DATA_DIR", DATA_DIR),
        env_value("SHARDKV_LISTEN", format!("$(POD_IP):{GRPC_PORT}")),
        // Every address: the kubelet probes the pod IP, the preStop hook calls loopback.
        env_value("SHARDKV_ADMIN_LISTEN", format!("0.0.0.0:{ADMIN_PORT}")),
        env_value("SHARDKV_LOG_FORMAT", "json"),
        // A pod that comes back onto the retained volume of a member the operator removed starts
        // over as a new, empty member (it confirmed its removal before recording it).
        env_value("SHARDKV_REJOIN_AFTER_REMOVAL", "true"),
    ];
    if group_id != META_GROUP {
        let meta: Vec<String> = (0..spec.meta.replicas).map(|i| names.peer_addr(META_GROUP, i)).collect();
        env.push(env_value("SHARDKV_META_ENDPOINTS", meta.join(",")));
    }
    let mut mounts = vec![mount("data", DATA_DIR), mount("tmp", "/tmp")];
    let mut volumes = vec![Volume {
        name: "tmp".to_string(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    }];
    if spec.tls.enabled {
        for (var, key) in
            [("SHARDKV_TLS_CA", CA_CERT_KEY), ("SHARDKV_TLS_CERT", TLS_CERT_KEY), ("SHARDKV_TLS_KEY", TLS_KEY_KEY)]
        {
            env.push(env_value(var, format!("{TLS_DIR}/{key}")));
        }
        mounts.push(VolumeMount { read_only: Some(true), ..mount("tls", TLS_DIR) });
        // No hash of the content anywhere in the template: a renewal rewrites the Secret, the
        // kubelet updates the files and the node reloads them, with no pod restarted.
        volumes.push(Volume {
            name: "tls".to_string(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(names.node_tls_secret()),
                default_mode: Some(0o440),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    let container = Container {
        name: "node".to_string(),
        image: Some(spec.image.clone()),
        image_pull_policy: spec.image_pull_policy.clone(),
        env: Some(env),
        ports: Some(vec![container_port("grpc", GRPC_PORT), container_port("admin", ADMIN_PORT)]),
        startup_probe: Some(admin_probe("/healthz", 2, 150)),
        liveness_probe: Some(admin_probe("/healthz", 10, 6)),
        readiness_probe: Some(admin_probe("/readyz", 2, 2)),
        // The node answers /lifecycle/prestop on loopback only: the hook runs inside the
        // container.
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                exec: Some(ExecAction { command: Some(prestop_command()) }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        resources: spec.resources.clone(),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".to_string()]), ..Default::default() }),
            ..Default::default()
        }),
        volume_mounts: Some(mounts),
        ..Default::default()
    };
    let pod = PodSpec {
        termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(NODE_UID),
            run_as_group: Some(NODE_UID),
            fs_group: Some(NODE_UID),
            seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".to_string(), ..Default::default() }),
            ..Default::default()
        }),
        affinity: Some(spec.scheduling.affinity.clone().unwrap_or_else(|| spread_over_nodes(names, group_id))),
        tolerations: Some(spec.scheduling.tolerations.clone()),
        node_selector: Some(spec.scheduling.node_selector.clone()),
        containers: vec![container],
        volumes: Some(volumes),
        ..Default::default()
    };
    let claim = PersistentVolumeClaim {
        metadata: ObjectMeta { name: Some("data".to_string()), labels: Some(labels.clone()), ..Default::default() },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_string()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_string(), Quantity(spec.storage.size.clone()))])),
                ..Default::default()
            }),
            storage_class_name: spec.storage.storage_class_name.clone(),
            ..Default::default()
        }),
        status: None,
    };
    StatefulSet {
        metadata: owned_metadata(cluster, names, &group, labels.clone()),
        spec: Some(StatefulSetSpec {
            replicas: Some(i32::try_from(replicas).unwrap_or(i32::MAX)),
            service_name: Some(group),
            // All pods start at once; the operator, not pod order, sequences membership.
            pod_management_policy: Some("Parallel".to_string()),
            // The operator decides which pod restarts next.
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("OnDelete".to_string()),
                rolling_update: None,
            }),
            persistent_volume_claim_retention_policy: Some(StatefulSetPersistentVolumeClaimRetentionPolicy {
                when_scaled: Some(spec.pvc_retention.when_scaled.as_str().to_string()),
                when_deleted: Some(spec.pvc_retention.when_deleted.as_str().to_string()),
            }),
            selector: LabelSelector { match_labels: Some(names.selector(group_id)), ..Default::default() },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels), ..Default::default() }),
                spec: Some(pod),
            },
            volume_claim_templates: Some(vec![claim]),
            ..Default::default()
        }),
        status: None,
    }
}

fn env_value(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar { name: name.to_string(), value: Some(value.into()), value_from: None }
}

/// A variable the kubelet fills from the pod's own object (downward API).
fn env_from_field(name: &str, field_path: &str) -> EnvVar {
    let field_ref = ObjectFieldSelector { field_path: field_path.to_string(), api_version: None };
    EnvVar {
        name: name.to_string(),
        value: None,
        value_from: Some(EnvVarSource { field_ref: Some(field_ref), ..Default::default() }),
    }
}

fn mount(volume: &str, path: &str) -> VolumeMount {
    VolumeMount { name: volume.to_string(), mount_path: path.to_string(), ..Default::default() }
}

fn container_port(name: &str, port: u16) -> ContainerPort {
    ContainerPort { name: Some(name.to_string()), container_port: i32::from(port), ..Default::default() }
}

/// A probe of the node's admin HTTP port.
fn admin_probe(path: &str, period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::String("admin".to_string()),
            ..Default::default()
        }),
        period_seconds: Some(period_seconds),
        timeout_seconds: Some(2),
        failure_threshold: Some(failure_threshold),
        ..Default::default()
    }
}

/// The affinity when the user gives none: a group's replicas spread over nodes where possible.
fn spread_over_nodes(names: &ClusterNames, group_id: u64) -> Affinity {
    let term = PodAffinityTerm {
        topology_key: "kubernetes.io/hostname".to_string(),
        label_selector: Some(LabelSelector { match_labels: Some(names.selector(group_id)), ..Default::default() }),
        ..Default::default()
    };
    Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![WeightedPodAffinityTerm {
                weight: 100,
                pod_affinity_term: term,
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The preStop hook: the `shardkv` CLI in the image asks the node's admin port on loopback to
/// run its stop sequence.
fn prestop_command() -> Vec<String> {
    let mut command = vec!["shardkv".to_string(), "prestop".to_string()];
    if ADMIN_PORT != DEFAULT_ADMIN_PORT {
        command.extend(["--admin-addr".to_string(), format!("127.0.0.1:{ADMIN_PORT}")]);
    }
    command
}

/// The admin port `shardkv prestop` calls when not told otherwise.
const DEFAULT_ADMIN_PORT: u16 = 7180;

/// Metadata of an object the ShardCluster owns (garbage collected with it).
fn owned_metadata(
    cluster: &ShardCluster,
    names: &ClusterNames,
    name: &str,
    labels: BTreeMap<String, String>,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(names.namespace.clone()),
        labels: Some(labels),
        owner_references: Some(vec![owner(cluster)]),
        ..Default::default()
    }
}

/// A Service port that targets the container port of the same name.
fn service_port(name: &str, port: u16) -> ServicePort {
    ServicePort {
        name: Some(name.to_string()),
        port: i32::from(port),
        target_port: Some(IntOrString::String(name.to_string())),
        ..Default::default()
    }
}

/// The headless Service giving each pod of a group its stable DNS name. Not-ready pods are
/// published too: peers must resolve each other before they can become ready.
pub fn headless_service(cluster: &ShardCluster, names: &ClusterNames, group_id: u64) -> Service {
    Service {
        metadata: owned_metadata(cluster, names, &names.group(group_id), names.labels(group_id)),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_string()),
            publish_not_ready_addresses: Some(true),
            selector: Some(names.selector(group_id)),
            ports: Some(vec![service_port("grpc", GRPC_PORT), service_port("admin", ADMIN_PORT)]),
            ..Default::default()
        }),
        status: None,
    }
}

/// The PodDisruptionBudget of a group: voluntary disruptions never take it below quorum. While
/// the group changes size, quorum of the larger of its current voters (as its leader reports
/// them) and the desired count: 5 -> 3 still needs 3 up until the two have left.
pub fn pod_disruption_budget(
    cluster: &ShardCluster,
    names: &ClusterNames,
    group_id: u64,
    current_voters: Option<usize>,
) -> PodDisruptionBudget {
    let current = current_voters.map_or(0, |v| u32::try_from(v).unwrap_or(u32::MAX));
    let voters = current.max(desired_replicas(cluster, group_id));
    PodDisruptionBudget {
        metadata: owned_metadata(cluster, names, &names.group(group_id), names.labels(group_id)),
        spec: Some(PodDisruptionBudgetSpec {
            min_available: Some(IntOrString::Int(i32::try_from(quorum(voters)).unwrap_or(i32::MAX))),
            selector: Some(LabelSelector { match_labels: Some(names.selector(group_id)), ..Default::default() }),
            ..Default::default()
        }),
        status: None,
    }
}

/// The Service clients start from: the meta group's ready pods (clients read the shard map
/// there, then talk to each data group directly by the addresses in it).
pub fn client_service(cluster: &ShardCluster, names: &ClusterNames) -> Service {
    let mut labels = names.labels(META_GROUP);
    labels.remove(LABEL_GROUP);
    Service {
        metadata: owned_metadata(cluster, names, &names.client_service(), labels),
        spec: Some(ServiceSpec {
            selector: Some(names.selector(META_GROUP)),
            ports: Some(vec![service_port("grpc", GRPC_PORT)]),
            ..Default::default()
        }),
        status: None,
    }
}

/// The operator's pods, as the NetworkPolicy lets them in: by labels, in its namespace (any
/// namespace when it is not known).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorPods {
    pub namespace: Option<String>,
    pub labels: BTreeMap<String, String>,
}

/// The label Kubernetes puts on every namespace, naming it.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

fn peer(pods: Option<LabelSelector>, namespaces: Option<LabelSelector>) -> NetworkPolicyPeer {
    NetworkPolicyPeer { pod_selector: pods, namespace_selector: namespaces, ..Default::default() }
}

fn port(port: u16) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(i32::from(port))),
        protocol: Some("TCP".to_string()),
        ..Default::default()
    }
}

fn selected(peer_selector: &PeerSelector) -> NetworkPolicyPeer {
    match (&peer_selector.pod_selector, &peer_selector.namespace_selector) {
        // Neither: every pod of the cluster's namespace.
        (None, None) => peer(Some(LabelSelector::default()), None),
        (pods, namespaces) => peer(pods.clone(), namespaces.clone()),
    }
}

/// The cluster's NetworkPolicy (ingress only; egress is left alone): the gRPC port from the
/// cluster's own node pods (Raft, migration and their other calls share it with clients),
/// from the operator's pods and from `spec.networkPolicy.clients` (default: every pod of the
/// namespace); the admin HTTP port from `spec.networkPolicy.metrics` only (default: no pod).
pub fn network_policy(cluster: &ShardCluster, names: &ClusterNames, operator: &OperatorPods) -> NetworkPolicy {
    let spec = &cluster.spec.network_policy;
    let nodes = peer(Some(LabelSelector { match_labels: Some(names.pod_selector()), ..Default::default() }), None);
    let operator_namespace = LabelSelector {
        match_labels: operator
            .namespace
            .as_ref()
            .map(|ns| BTreeMap::from([(NAMESPACE_NAME_LABEL.to_string(), ns.clone())])),
        ..Default::default()
    };
    let operator_pods = peer(
        Some(LabelSelector { match_labels: Some(operator.labels.clone()), ..Default::default() }),
        Some(operator_namespace),
    );
    let clients = selected(spec.clients.as_ref().unwrap_or(&PeerSelector::default()));
    let mut ingress = vec![NetworkPolicyIngressRule {
        from: Some(vec![nodes, operator_pods, clients]),
        ports: Some(vec![port(GRPC_PORT)]),
    }];
    if let Some(metrics) = &spec.metrics {
        ingress.push(NetworkPolicyIngressRule {
            from: Some(vec![selected(metrics)]),
            ports: Some(vec![port(ADMIN_PORT)]),
        });
    }
    NetworkPolicy {
        metadata: owned_metadata(cluster, names, &names.network_policy(), names.cluster_labels()),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector { match_labels: Some(names.pod_selector()), ..Default::default() }),
            policy_types: Some(vec!["Ingress".to_string()]),
            ingress: Some(ingress),
            egress: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::crd::PvcRetention;
    use crate::crd::ShardClusterSpec;

    fn cluster(groups: u32, replicas: u32) -> ShardCluster {
        let spec: ShardClusterSpec = serde_json::from_value(json!({
            "image": "shardkv/node:test",
            "groups": groups,
            "replicasPerGroup": replicas,
        }))
        .unwrap();
        ShardCluster {
            metadata: ObjectMeta {
                name: Some("demo".into()),
                namespace: Some("prod".into()),
                uid: Some("uid-1".into()),
                ..Default::default()
            },
            spec,
            status: None,
        }
    }

    fn names() -> ClusterNames {
        ClusterNames { name: "demo".into(), namespace: "prod".into(), cluster_domain: "cluster.local".into() }
    }

    fn container(sts: &StatefulSet) -> Container {
        sts.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0].clone()
    }

    fn env(c: &Container, name: &str) -> Option<String> {
        c.env.as_ref().unwrap().iter().find(|e| e.name == name).and_then(|e| e.value.clone())
    }

    #[test]
    fn names_and_addresses_are_stable() {
        let n = names();
        assert_eq!(n.group(0), "demo-meta");
        assert_eq!(n.group(3), "demo-g3");
        assert_eq!(n.pod(3, 2), "demo-g3-2");
        assert_eq!(n.peer_addr(3, 2), "demo-g3-2.demo-g3.prod.svc.cluster.local:7100");
        assert_eq!(n.cluster_id(), "prod.demo");
        assert_eq!(node_id(0), 1);
    }

    #[test]
    fn pdb_min_available_is_quorum_of_the_group() {
        let c = cluster(2, 5);
        assert_eq!(quorum(1), 1);
        assert_eq!(quorum(3), 2);
        assert_eq!(quorum(5), 3);
        assert_eq!(quorum(7), 4);
        let data = pod_disruption_budget(&c, &names(), 1, Some(5));
        assert_eq!(data.spec.as_ref().unwrap().min_available, Some(IntOrString::Int(3)));
        let min_available = |voters| pod_disruption_budget(&c, &names(), 1, voters).spec.unwrap().min_available;
        assert_eq!(min_available(Some(7)), Some(IntOrString::Int(4)), "shrinking 7 -> 5: quorum of 7");
        assert_eq!(min_available(Some(3)), Some(IntOrString::Int(3)), "growing 3 -> 5: quorum of 5");
        assert_eq!(min_available(None), Some(IntOrString::Int(3)), "no leader: the desired size");
        let meta = pod_disruption_budget(&c, &names(), META_GROUP, None);
        assert_eq!(meta.spec.as_ref().unwrap().min_available, Some(IntOrString::Int(2)), "meta has 3 replicas");
        assert_eq!(data.metadata.owner_references.as_ref().unwrap()[0].uid, "uid-1");
    }

    #[test]
    fn statefulset_is_on_delete_with_probes_prestop_and_grace() {
        let sts = statefulset(&cluster(2, 3), &names(), 2, 4);
        let spec = sts.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(4));
        assert_eq!(spec.service_name.as_deref(), Some("demo-g2"));
        assert_eq!(spec.update_strategy.as_ref().unwrap().type_.as_deref(), Some("OnDelete"));
        let pod = spec.template.spec.as_ref().unwrap();
        assert_eq!(pod.termination_grace_period_seconds, Some(TERMINATION_GRACE_SECONDS));
        let c = container(&sts);
        let http_path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
            p.as_ref().unwrap().http_get.as_ref().unwrap().path.clone().unwrap()
        };
        assert_eq!(http_path(&c.readiness_probe), "/readyz");
        assert_eq!(http_path(&c.liveness_probe), "/healthz");
        let pre_stop = c.lifecycle.as_ref().unwrap().pre_stop.as_ref().unwrap();
        assert!(pre_stop.http_get.is_none(), "the node answers /lifecycle/prestop on loopback only");
        let command = pre_stop.exec.as_ref().unwrap().command.clone().unwrap();
        assert_eq!(command, ["shardkv", "prestop"], "the admin port is the CLI's default, 7180");
        assert_eq!(ADMIN_PORT, DEFAULT_ADMIN_PORT);
        assert_eq!(env(&c, "SHARDKV_ADMIN_LISTEN").as_deref(), Some("0.0.0.0:7180"), "loopback reaches it too");
    }

    fn tls_cluster(enabled: bool) -> ShardCluster {
        let mut c = cluster(1, 3);
        c.spec.tls.enabled = enabled;
        c
    }

    #[test]
    fn with_tls_the_pod_mounts_the_node_secret_and_names_its_files() {
        let sts = statefulset(&tls_cluster(true), &names(), 1, 3);
        let c = container(&sts);
        assert_eq!(env(&c, "SHARDKV_TLS_CA").as_deref(), Some("/etc/shardkv/tls/ca.crt"));
        assert_eq!(env(&c, "SHARDKV_TLS_CERT").as_deref(), Some("/etc/shardkv/tls/tls.crt"));
        assert_eq!(env(&c, "SHARDKV_TLS_KEY").as_deref(), Some("/etc/shardkv/tls/tls.key"));
        let mount = c.volume_mounts.unwrap().into_iter().find(|m| m.name == "tls").unwrap();
        assert_eq!((mount.mount_path.as_str(), mount.read_only), (TLS_DIR, Some(true)));
        let pod = sts.spec.unwrap().template;
        let volume = pod.spec.unwrap().volumes.unwrap().into_iter().find(|v| v.name == "tls").unwrap();
        assert_eq!(volume.secret.unwrap().secret_name.as_deref(), Some("demo-node-tls"));
        assert!(pod.metadata.unwrap().annotations.is_none(), "no checksum of the certificates: renewals roll no pod");
        let probe = c.readiness_probe.unwrap().http_get.unwrap();
        assert_eq!(probe.scheme, None, "probes stay plain HTTP on the admin port");
    }

    #[test]
    fn without_tls_the_pod_has_no_certificates() {
        let c = container(&statefulset(&tls_cluster(false), &names(), 1, 3));
        assert_eq!(env(&c, "SHARDKV_TLS_CA"), None);
        assert!(!c.volume_mounts.unwrap().iter().any(|m| m.name == "tls"));
    }

    fn operator_pods() -> OperatorPods {
        OperatorPods {
            namespace: Some("shardkv-system".into()),
            labels: BTreeMap::from([(LABEL_NAME.to_string(), MANAGER.to_string())]),
        }
    }

    #[test]
    fn network_policy_admits_the_cluster_the_operator_and_the_namespace_to_grpc_only() {
        let policy = network_policy(&cluster(1, 3), &names(), &operator_pods());
        assert_eq!(policy.metadata.name.as_deref(), Some("demo"));
        let spec = policy.spec.unwrap();
        assert_eq!(spec.pod_selector.unwrap().match_labels, Some(names().pod_selector()));
        assert_eq!(spec.policy_types.as_deref(), Some(&["Ingress".to_string()][..]));
        assert!(spec.egress.is_none());
        let ingress = spec.ingress.unwrap();
        assert_eq!(ingress.len(), 1, "no metrics selector: the admin port is open to no pod");
        assert_eq!(ingress[0].ports.as_ref().unwrap()[0].port, Some(IntOrString::Int(7100)));
        let from = ingress[0].from.as_ref().unwrap();
        assert_eq!(from[0].pod_selector.as_ref().unwrap().match_labels, Some(names().pod_selector()));
        assert_eq!(from[0].namespace_selector, None, "the cluster's own pods, in its namespace");
        let operator_ns = from[1].namespace_selector.as_ref().unwrap().match_labels.clone().unwrap();
        assert_eq!(operator_ns.get("kubernetes.io/metadata.name").map(String::as_str), Some("shardkv-system"));
        assert_eq!(from[1].pod_selector.as_ref().unwrap().match_labels, Some(operator_pods().labels));
        assert_eq!(from[2].pod_selector, Some(LabelSelector::default()), "default clients: every pod of the namespace");
        assert_eq!(from[2].namespace_selector, None);
    }

    #[test]
    fn network_policy_takes_the_configured_clients_and_scrapers() {
        let mut c = cluster(1, 3);
        let app = LabelSelector {
            match_labels: Some(BTreeMap::from([("app".to_string(), "web".to_string())])),
            ..Default::default()
        };
        c.spec.network_policy.clients =
            Some(PeerSelector { pod_selector: Some(app.clone()), namespace_selector: None });
        c.spec.network_policy.metrics =
            Some(PeerSelector { pod_selector: None, namespace_selector: Some(LabelSelector::default()) });
        let mut unknown_namespace = operator_pods();
        unknown_namespace.namespace = None;
        let ingress = network_policy(&c, &names(), &unknown_namespace).spec.unwrap().ingress.unwrap();
        let from = ingress[0].from.as_ref().unwrap();
        assert_eq!(from[1].namespace_selector, Some(LabelSelector::default()), "operator namespace unknown: any");
        assert_eq!(from[2].pod_selector, Some(app));
        assert_eq!(ingress[1].ports.as_ref().unwrap()[0].port, Some(IntOrString::Int(7180)));
        let scrapers = &ingress[1].from.as_ref().unwrap()[0];
        assert_eq!(
            (scrapers.pod_selector.clone(), scrapers.namespace_selector.clone()),
            (None, Some(LabelSelector::default()))
        );
    }

    #[test]
    fn pod_runs_non_root_with_read_only_root_and_a_data_volume() {
        let sts = statefulset(&cluster(1, 3), &names(), 1, 3);
        let spec = sts.spec.as_ref().unwrap();
        let pod_security = spec.template.spec.as_ref().unwrap().security_context.clone().unwrap();
        assert_eq!(pod_security.run_as_non_root, Some(true));
        let c = container(&sts);
        let security = c.security_context.unwrap();
        assert_eq!(security.read_only_root_filesystem, Some(true));
        assert_eq!(security.allow_privilege_escalation, Some(false));
        let claims = spec.volume_claim_templates.as_ref().unwrap();
        assert_eq!(claims[0].metadata.name.as_deref(), Some("data"));
        assert!(c.volume_mounts.unwrap().iter().any(|m| m.name == "data" && m.mount_path == DATA_DIR));
        let retention = spec.persistent_volume_claim_retention_policy.as_ref().unwrap();
        assert_eq!(retention.when_scaled.as_deref(), Some(PvcRetention::Retain.as_str()));
    }

    #[test]
    fn node_identity_comes_from_the_pod_and_data_nodes_know_meta() {
        let c = cluster(2, 3);
        let data = container(&statefulset(&c, &names(), 2, 3));
        assert_eq!(env(&data, "SHARDKV_GROUP_ID").as_deref(), Some("2"));
        assert_eq!(env(&data, "SHARDKV_ROLE").as_deref(), Some("data"));
        assert_eq!(env(&data, "SHARDKV_NODE_ID"), None, "the node derives its id from SHARDKV_POD_NAME");
        let pod_name = data.env.as_ref().unwrap().iter().find(|e| e.name == "SHARDKV_POD_NAME").unwrap();
        assert_eq!(pod_name.value_from.as_ref().unwrap().field_ref.as_ref().unwrap().field_path, "metadata.name");
        assert_eq!(env(&data, "SHARDKV_LISTEN").as_deref(), Some("$(POD_IP):7100"));
        assert_eq!(
            env(&data, "SHARDKV_META_ENDPOINTS").as_deref(),
            Some(
                "demo-meta-0.demo-meta.prod.svc.cluster.local:7100,demo-meta-1.demo-meta.prod.svc.cluster.local:7100,\
                 demo-meta-2.demo-meta.prod.svc.cluster.local:7100"
            )
        );
        let meta = container(&statefulset(&c, &names(), META_GROUP, 3));
        assert_eq!(env(&meta, "SHARDKV_ROLE").as_deref(), Some("meta"));
        assert_eq!(env(&meta, "SHARDKV_META_ENDPOINTS"), None);
    }

    #[test]
    fn headless_service_publishes_not_ready_pods() {
        let svc = headless_service(&cluster(1, 3), &names(), 1);
        let spec = svc.spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.publish_not_ready_addresses, Some(true));
        let client = client_service(&cluster(1, 3), &names());
        assert_eq!(client.spec.unwrap().selector.unwrap().get(LABEL_GROUP).map(String::as_str), Some("0"));
    }
}
