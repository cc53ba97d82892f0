//! The `ShardCluster` custom resource (shardkv.dev/v1alpha1): what a user asks for (spec) and
//! what the operator reports (status).
//!
//! Admission-time validation is expressed as CEL rules (`x-kubernetes-validations`) so the
//! apiserver rejects a bad spec with a readable message before the operator ever sees it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Affinity;
use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::api::core::v1::Toleration;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::Deserialize;
use serde::Serialize;

/// Finalizer that lets the operator delete a cluster's groups in order (data groups, then meta).
pub const FINALIZER: &str = "shardkv.dev/cleanup";

/// Desired state of a shardkv cluster.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "shardkv.dev",
    version = "v1alpha1",
    kind = "ShardCluster",
    namespaced,
    status = "ShardClusterStatus",
    shortname = "skv",
    doc = "A sharded, Raft-replicated shardkv key-value cluster",
    printcolumn = r#"{"name":"Groups","type":"integer","description":"Data groups","jsonPath":".spec.groups"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","description":"Ready node pods","jsonPath":".status.readyReplicas"}"#,
    printcolumn = r#"{"name":"Config","type":"integer","description":"Current shard-map config number","jsonPath":".status.configNum"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Updated","type":"string","description":"Node pods on their StatefulSet's update revision / all","jsonPath":".status.rollout.progress"}"#,
    printcolumn = r#"{"name":"Operation","type":"string","description":"What the operator is doing now","jsonPath":".status.operation"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.tls) && has(self.tls.enabled) ? self.tls.enabled : true) == (has(oldSelf.tls) && has(oldSelf.tls.enabled) ? oldSelf.tls.enabled : true)")
    .message("tls.enabled cannot change on an existing cluster: its nodes all speak TLS or all speak plaintext, and a node restarted with the other setting could not talk to the rest; create a new cluster to switch"))]
pub struct ShardClusterSpec {
    /// Container image of `shardkv-node`.
    #[x_kube(validation = Rule::new("self.size() > 0").message("image is required"))]
    pub image: String,
    /// Image pull policy of the node containers (Always, IfNotPresent, Never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,
    /// Number of shards keys hash into. Fixed when the cluster is created.
    #[serde(default = "default_shards")]
    #[x_kube(
        validation = Rule::new("self == oldSelf").message("shards is immutable: it is fixed when the cluster is created"),
        validation = Rule::new("self >= 1 && self <= 65536").message("shards must be between 1 and 65536")
    )]
    pub shards: u32,
    /// Number of data replica groups the shards are spread over.
    #[x_kube(validation = Rule::new("self >= 1").message("groups must be at least 1"))]
    pub groups: u32,
    /// Replicas (Raft voters) of each data group.
    #[serde(default = "default_replicas")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 7 && self % 2 == 1")
        .message("replicasPerGroup must be odd and between 1 and 7 (an even count adds no fault tolerance)"))]
    pub replicas_per_group: u32,
    /// The meta group (shard controller).
    #[serde(default)]
    pub meta: MetaSpec,
    /// Persistent volume of every node.
    #[serde(default)]
    pub storage: StorageSpec,
    /// Compute resources of the node container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Where node pods may be scheduled.
    #[serde(default)]
    pub scheduling: SchedulingSpec,
    /// While true, the operator changes nothing (it still reports status).
    #[serde(default)]
    pub paused: bool,
    /// What happens to node volumes when a group shrinks or the cluster is deleted.
    #[serde(default)]
    pub pvc_retention: PvcRetentionSpec,
    /// How a change of the pod template (image, resources, scheduling) reaches the pods.
    #[serde(default)]
    pub rollout: RolloutSpec,
    /// Mutual TLS on every gRPC connection, with certificates the operator issues and renews.
    /// On unless turned off explicitly; fixed when the cluster is created.
    #[serde(default)]
    pub tls: TlsSpec,
    /// The NetworkPolicy the operator creates for the cluster's pods.
    #[serde(default)]
    pub network_policy: NetworkPolicySpec,
}

/// Mutual TLS: the operator keeps a CA per cluster (Secret `<cluster>-ca`) and issues from it
/// the nodes' certificate (`<cluster>-node-tls`), its own (`<cluster>-operator-tls`) and one
/// for data clients to mount (`<cluster>-client-tls`), each renewed in place with a third of
/// its lifetime left or when the annotation `shardkv.dev/renew-certificates` takes a new value.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// false runs the cluster in plaintext: anyone who can reach the pods may read, write and
    /// reconfigure it. Cannot change once the cluster exists.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Validity of the certificates the operator issues (not the CA's: ten years), in days;
    /// each is renewed when a third of it is left.
    #[serde(default = "default_certificate_days")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 365").message("tls.certificateDays must be between 1 and 365"))]
    pub certificate_days: u32,
}

fn default_true() -> bool {
    true
}

fn default_certificate_days() -> u32 {
    90
}

impl Default for TlsSpec {
    fn default() -> Self {
        TlsSpec { enabled: true, certificate_days: default_certificate_days() }
    }
}

/// Ingress rules of the cluster's pods. The gRPC port (7100) carries client calls, Raft,
/// shard migration and the operator's Admin calls alike (each authorized by its certificate's
/// role when TLS is on): it is open to the cluster's own pods, the operator's pods and the
/// `clients` below. The admin HTTP port (7180: /healthz, /readyz, /metrics) is open to the
/// `metrics` pods only; probes come from the kubelet on the pod's node, which most network
/// plugins do not subject to NetworkPolicy.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// false: no NetworkPolicy (an existing one is deleted); the pods take whatever the
    /// namespace's other policies allow.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Who may call the gRPC port as a client. Unset: every pod in the cluster's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clients: Option<PeerSelector>,
    /// Who may scrape /metrics on the admin port. Unset: no pod (the kubelet's probes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<PeerSelector>,
}

impl Default for NetworkPolicySpec {
    fn default() -> Self {
        NetworkPolicySpec { enabled: true, clients: None, metrics: None }
    }
}

/// Pods, by labels and namespace, as in a NetworkPolicy peer.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeerSelector {
    /// Pods with these labels. Unset: every pod of the selected namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// Namespaces with these labels (`{}`: every namespace). Unset: the cluster's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
}

/// Rolling restarts: one pod of the cluster at a time, each group's leader last.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    /// Stop restarting pods (the one in progress finishes); false resumes.
    #[serde(default)]
    pub paused: bool,
    /// A restarted pod that is not Ready and caught up this long after it started halts the
    /// rollout (a Go duration: 90s, 5m, 1h).
    #[serde(default = "default_pod_ready_timeout")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(h|m|s))+$')")
        .message("rollout.podReadyTimeout must be a duration such as 90s, 5m or 1h30m"))]
    pub pod_ready_timeout: String,
    /// Allow a rollout that skips a minor version or downgrades across one (nodes guarantee to
    /// interoperate with adjacent minor versions only).
    #[serde(default)]
    pub allow_version_skew: bool,
}

fn default_pod_ready_timeout() -> String {
    "5m".to_string()
}

impl Default for RolloutSpec {
    fn default() -> Self {
        RolloutSpec { paused: false, pod_ready_timeout: default_pod_ready_timeout(), allow_version_skew: false }
    }
}

impl RolloutSpec {
    /// `pod_ready_timeout` as a Duration (the admission rule guarantees its form; anything else
    /// falls back to the default).
    pub fn pod_ready_timeout(&self) -> std::time::Duration {
        parse_duration(&self.pod_ready_timeout).unwrap_or(std::time::Duration::from_secs(300))
    }
}

/// Parses `1h30m`, `90s`, `5m` (hours, minutes, seconds).
fn parse_duration(text: &str) -> Option<std::time::Duration> {
    let mut seconds = 0u64;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            'h' => 3_600,
            'm' => 60,
            's' => 1,
            _ => return None,
        };
        seconds = seconds.checked_add(number.parse::<u64>().ok()?.checked_mul(unit)?)?;
        number.clear();
    }
    (number.is_empty() && !text.is_empty()).then(|| std::time::Duration::from_secs(seconds))
}

fn default_shards() -> u32 {
    64
}

fn default_replicas() -> u32 {
    3
}

/// The meta group: holds the sequence of shard maps; the operator is its only writer.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MetaSpec {
    /// Replicas (Raft voters) of the meta group.
    #[serde(default = "default_replicas")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 7 && self % 2 == 1")
        .message("meta.replicas must be odd and between 1 and 7"))]
    pub replicas: u32,
}

impl Default for MetaSpec {
    fn default() -> Self {
        MetaSpec { replicas: default_replicas() }
    }
}

/// The PersistentVolumeClaim template of every node. Fixed when the cluster is created: a
/// StatefulSet's volumeClaimTemplates cannot change.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.storageClassName) == has(oldSelf.storageClassName) && (!has(self.storageClassName) || self.storageClassName == oldSelf.storageClassName)")
    .message("storage.storageClassName is immutable: StatefulSet volumeClaimTemplates cannot change; create a new cluster to move to another storage class"))]
pub struct StorageSpec {
    /// Requested volume size (a Kubernetes quantity, e.g. 10Gi).
    #[serde(default = "default_storage_size")]
    #[x_kube(
        validation = Rule::new("self.size() > 0").message("storage.size is required"),
        validation = Rule::new("self == oldSelf").message("storage.size is immutable: StatefulSet volumeClaimTemplates cannot change; resize the PersistentVolumeClaims themselves where the storage class allows it")
    )]
    pub size: String,
    /// Storage class of the volumes; the cluster default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

fn default_storage_size() -> String {
    "10Gi".to_string()
}

impl Default for StorageSpec {
    fn default() -> Self {
        StorageSpec { size: default_storage_size(), storage_class_name: None }
    }
}

/// Scheduling constraints copied into every node pod.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SchedulingSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
}

/// Whether volumes are kept or deleted.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PvcRetention {
    #[default]
    Retain,
    Delete,
}

impl PvcRetention {
    pub fn as_str(self) -> &'static str {
        match self {
            PvcRetention::Retain => "Retain",
            PvcRetention::Delete => "Delete",
        }
    }
}

/// Volume retention, applied through the StatefulSets' persistentVolumeClaimRetentionPolicy.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PvcRetentionSpec {
    /// Volumes of pods removed by scale-in.
    #[serde(default)]
    pub when_scaled: PvcRetention,
    /// Volumes of a deleted cluster (or of a data group removed by scale-in of groups).
    #[serde(default)]
    pub when_deleted: PvcRetention,
}

/// What the operator observed and is doing.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShardClusterStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// One word summary: Creating, Bootstrapping, Running, Scaling, Degraded or Paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Available, Progressing, Degraded (and Paused while spec.paused).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Latest shard-map config number held by the meta group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_num: Option<u64>,
    /// Ready node pods over all groups.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Every group, meta first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<GroupStatus>,
    /// The step each group's operation is at, when one is in flight.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub operations: Vec<OperationStatus>,
    /// What the operator is doing now, in one line (empty when settled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// Shards being pulled into a group right now, over all groups.
    #[serde(default)]
    pub shards_in_flight: u32,
    /// Data groups being removed, highest id first, and where each removal is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group_removals: Vec<GroupRemovalStatus>,
    /// The highest data group id ever created: ids are never reused, so a group's retained
    /// volumes are never mistaken for a new group's.
    #[serde(default)]
    pub last_group_id: u64,
    /// Where the rolling restart onto the StatefulSets' update revisions is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
    /// The cluster's CA and the certificates issued from it (expiry and serial; no key
    /// material), while TLS is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsStatus>,
}

/// The certificates the operator manages for a cluster.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsStatus {
    /// Secret of the CA (`ca.crt`, `ca.key`).
    pub ca_secret: String,
    /// When the CA expires. The operator does not rotate the CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_not_after: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_serial: Option<String>,
    /// The value of the `shardkv.dev/renew-certificates` annotation last honoured: every
    /// certificate below was issued after it was set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_token: Option<String>,
    /// Each certificate issued from the CA, one Secret each (`ca.crt`, `tls.crt`, `tls.key`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<CertificateStatus>,
}

/// One certificate the operator issued, as its Secret holds it now.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateStatus {
    pub secret: String,
    /// The identity it carries: spiffe://shardkv/<namespace>.<cluster>/<role>/<name>.
    pub identity: String,
    /// Serial number, lowercase hex.
    pub serial: String,
    pub not_after: Time,
    /// When the operator renews it (two thirds into its lifetime).
    pub renew_after: Time,
}

/// The rolling restart of node pods onto their StatefulSets' update revisions.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// Rolling, Paused, Halted or Complete.
    pub phase: String,
    /// Pods on their update revision / all pods, e.g. 7/9.
    pub progress: String,
    pub updated: u32,
    pub total: u32,
    /// The group being rolled, and what the rollout does or waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The revision that group's pods are leaving, and the one they move to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_revision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_revision: Option<String>,
    /// Why the rollout stopped, until the spec changes; a stop report that was not clean.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub halt: Option<RolloutHalt>,
    /// The last pods restarted, newest last, with what their stop sequence reported.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restarts: Vec<PodRestart>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
}

/// A recorded halt: it holds while the group's update revision is still `revision`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutHalt {
    pub group_id: u64,
    pub pod: String,
    pub pod_uid: String,
    pub revision: String,
    pub reason: String,
}

/// One pod the rollout restarted.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodRestart {
    pub pod: String,
    pub pod_uid: String,
    /// The revision it left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_revision: Option<String>,
    /// The pod was down already: deleted without a stop sequence.
    #[serde(default)]
    pub was_down: bool,
    #[serde(default)]
    pub was_leader: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_leader: Option<u64>,
    #[serde(default)]
    pub applied_index: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_index: Option<u64>,
    /// How long the stop sequence took.
    #[serde(default)]
    pub stop_ms: u64,
    #[serde(default)]
    pub clean: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<Time>,
}

/// The removal of one data group: Leaving (still in the shard map), Draining (its shards are
/// moving to their new owners), Deleting (nothing needs it: its objects are being deleted).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GroupRemovalStatus {
    pub group_id: u64,
    /// Leaving, Draining or Deleting.
    pub phase: String,
    /// The shard-map config that no longer lists the group (the one its Leave produced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leave_config: Option<u64>,
    /// Shards the group still serves, or holds until their new owner has them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards_held: Option<u64>,
    /// Bytes its shards' new owners have received so far.
    #[serde(default)]
    pub bytes_moved: u64,
    /// Each shard seen moving out of the group: where to and the bytes received so far.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub moves: Vec<ShardMoveStatus>,
    /// When the removal was first recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
}

/// A shard moving out of a group being removed.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShardMoveStatus {
    pub shard: u32,
    pub to_group: u64,
    pub bytes: u64,
}

/// One replica group as observed.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GroupStatus {
    /// Group id: 0 is the meta group, data groups are 1..=groups.
    pub group_id: u64,
    /// The group's StatefulSet.
    pub statefulset: String,
    /// The group was initialised (recorded once; the operator never initialises it again).
    #[serde(default)]
    pub initialized: bool,
    /// Data groups: the meta group's shard map lists this group with its current voters.
    #[serde(default)]
    pub joined: bool,
    /// Node id of the current Raft leader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<u64>,
    #[serde(default)]
    pub ready_replicas: i32,
    /// Pods on the StatefulSet's update revision.
    #[serde(default)]
    pub updated_replicas: i32,
    /// Node versions running in the group.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberStatus>,
}

/// One node (pod) of a group.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    pub pod: String,
    pub node_id: u64,
    /// voter, learner, or none (running but not yet a member).
    pub role: String,
    pub ready: bool,
    /// Log entries this member is behind the leader (reported by the leader).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<u64>,
    /// Controller revision of the pod (which pod template it runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The node's build version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// The in-flight step of a group's operation (bootstrap, scale, join, leave).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OperationStatus {
    pub group_id: u64,
    /// Bootstrap, ScaleUp, ScaleDown, JoinMeta, GroupScaleIn.
    pub operation: String,
    /// The step being taken or waited on.
    pub step: String,
    /// Why, in words.
    pub message: String,
}

/// The CustomResourceDefinition as YAML, exactly as checked in under `crds/`.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    use kube::CustomResourceExt;
    let mut crd = serde_json::to_value(ShardCluster::crd()).expect("a CRD serializes to JSON");
    use_kubernetes_integer_formats(&mut crd);
    serde_yaml::to_string(&crd)
}

/// schemars names Rust's unsigned integers `uint32`/`uint64`, formats Kubernetes' OpenAPI does
/// not know (kubectl warns on every apply); the lower bound stays in `minimum`.
fn use_kubernetes_integer_formats(schema: &mut serde_json::Value) {
    match schema {
        serde_json::Value::Object(fields) => {
            if let Some(serde_json::Value::String(format)) = fields.get_mut("format") {
                match format.as_str() {
                    "uint32" => *format = "int32".to_string(),
                    "uint64" => *format = "int64".to_string(),
                    _ => {}
                }
            }
            fields.values_mut().for_each(use_kubernetes_integer_formats);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(use_kubernetes_integer_formats),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn pod_ready_timeouts_parse_as_go_durations() {
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("5"), None, "a unit is required");
        assert_eq!(parse_duration(""), None);
        assert_eq!(parse_duration("5d"), None);
        assert_eq!(RolloutSpec::default().pod_ready_timeout(), Duration::from_secs(300));
    }
}
