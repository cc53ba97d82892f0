//! The checked-in CRD YAML is what `crdgen` prints, the chart ships the same file, and the CEL
//! rules in it reject each bad spec with a readable message (evaluated with kube-cel, the
//! client-side implementation of the apiserver's CEL libraries).

use std::path::PathBuf;

use kube_cel::CompiledSchema;
use kube_cel::Validator;
use kube_cel::compile_schema;
use serde_json::Value;
use serde_json::json;
use shardkv_operator::crd::crd_yaml;

/// Read at run time, not baked in at build: a test binary reused from the shared target dir
/// may have been built in another clone of the repository.
fn repo_file(relative: &str) -> PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR (run through cargo test)");
    PathBuf::from(manifest_dir).join("..").join(relative)
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(repo_file(relative)).unwrap_or_else(|e| panic!("reading {relative}: {e}"))
}

const CRD_FILE: &str = "crds/shardclusters.shardkv.dev.yaml";
const CHART_CRD_FILE: &str = "charts/shardkv-operator/crds/shardclusters.shardkv.dev.yaml";

#[test]
fn checked_in_crd_matches_crdgen() {
    let generated = crd_yaml().unwrap();
    assert!(
        read(CRD_FILE) == generated,
        "{CRD_FILE} is stale: regenerate it with `cargo run -p shardkv-operator --bin crdgen > {CRD_FILE}`"
    );
}

#[test]
fn chart_ships_the_same_crd() {
    assert!(read(CHART_CRD_FILE) == read(CRD_FILE), "{CHART_CRD_FILE} differs from {CRD_FILE}: copy it over");
}

/// The openAPIV3Schema of the checked-in CRD, as the apiserver would load it.
fn schema() -> Value {
    let crd: Value = serde_yaml::from_str(&read(CRD_FILE)).unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

fn valid_cluster() -> Value {
    json!({
        "apiVersion": "shardkv.dev/v1alpha1",
        "kind": "ShardCluster",
        "metadata": {"name": "demo", "namespace": "default"},
        "spec": {
            "image": "shardkv/node:0.1.0",
            "shards": 64,
            "groups": 2,
            "replicasPerGroup": 3,
            "meta": {"replicas": 3},
            "storage": {"size": "1Gi"},
            "rollout": {}
        }
    })
}

fn with(mut object: Value, pointer: &str, value: Value) -> Value {
    *object.pointer_mut(pointer).unwrap_or_else(|| panic!("{pointer} not in the object")) = value;
    object
}

/// Messages of every rule the object (or the transition from `old`) breaks.
fn violations(object: &Value, old: Option<&Value>) -> Vec<String> {
    match Validator::new().validate(&schema(), object, old) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.iter().map(|e| e.message.clone()).collect(),
    }
}

#[test]
fn every_cel_rule_compiles() {
    let compiled: CompiledSchema = compile_schema(&schema());
    assert!(!compiled.has_errors(), "{:?}", compiled.compilation_errors());
}

#[test]
fn valid_spec_and_valid_update_pass() {
    let cluster = valid_cluster();
    assert_eq!(violations(&cluster, None), Vec::<String>::new());
    let scaled = with(with(cluster.clone(), "/spec/groups", json!(5)), "/spec/replicasPerGroup", json!(5));
    assert_eq!(violations(&scaled, Some(&cluster)), Vec::<String>::new());
}

#[test]
fn changing_shards_is_rejected() {
    let cluster = valid_cluster();
    let changed = with(cluster.clone(), "/spec/shards", json!(128));
    assert_eq!(violations(&changed, Some(&cluster)), ["shards is immutable: it is fixed when the cluster is created"]);
}

#[test]
fn even_or_out_of_range_replicas_are_rejected() {
    let message = "replicasPerGroup must be odd and between 1 and 7 (an even count adds no fault tolerance)";
    for replicas in [0, 2, 4, 9] {
        let cluster = with(valid_cluster(), "/spec/replicasPerGroup", json!(replicas));
        assert_eq!(violations(&cluster, None), [message], "replicasPerGroup {replicas}");
    }
    let meta = with(valid_cluster(), "/spec/meta/replicas", json!(2));
    assert_eq!(violations(&meta, None), ["meta.replicas must be odd and between 1 and 7"]);
}

#[test]
fn zero_groups_are_rejected() {
    let cluster = with(valid_cluster(), "/spec/groups", json!(0));
    assert_eq!(violations(&cluster, None), ["groups must be at least 1"]);
}

#[test]
fn missing_image_is_rejected() {
    let empty = with(valid_cluster(), "/spec/image", json!(""));
    assert_eq!(violations(&empty, None), ["image is required"]);
    // An absent image is rejected by the schema itself (a required property).
    let required = schema()["properties"]["spec"]["required"].clone();
    assert!(required.as_array().unwrap().contains(&json!("image")), "spec.required: {required}");
}

#[test]
fn out_of_range_shards_are_rejected() {
    let cluster = with(valid_cluster(), "/spec/shards", json!(0));
    assert_eq!(violations(&cluster, None), ["shards must be between 1 and 65536"]);
}

#[test]
fn empty_storage_size_is_rejected() {
    let cluster = with(valid_cluster(), "/spec/storage/size", json!(""));
    assert_eq!(violations(&cluster, None), ["storage.size is required"]);
}

#[test]
fn chart_example_cluster_is_valid_and_deserializes() {
    let example: Value = serde_yaml::from_str(&read("charts/shardkv-operator/examples/shardcluster.yaml")).unwrap();
    assert_eq!(violations(&example, None), Vec::<String>::new());
    let cluster: shardkv_operator::crd::ShardCluster = serde_json::from_value(example).unwrap();
    assert_eq!((cluster.spec.groups, cluster.spec.replicas_per_group, cluster.spec.meta.replicas), (2, 3, 3));
}

#[test]
fn changing_storage_is_rejected_with_what_to_do_instead() {
    let cluster = valid_cluster();
    let bigger = with(cluster.clone(), "/spec/storage/size", json!("2Gi"));
    let [message] = &violations(&bigger, Some(&cluster))[..] else { panic!("one violation expected") };
    assert!(message.starts_with("storage.size is immutable") && message.contains("resize"), "{message}");

    let class_message = "storage.storageClassName is immutable: StatefulSet volumeClaimTemplates cannot change; create a new cluster to move to another storage class";
    let fast = with(cluster.clone(), "/spec/storage", json!({"size": "1Gi", "storageClassName": "fast"}));
    assert_eq!(violations(&fast, Some(&cluster)), [class_message], "a class added");
    let slow = with(cluster.clone(), "/spec/storage", json!({"size": "1Gi", "storageClassName": "slow"}));
    assert_eq!(violations(&slow, Some(&fast)), [class_message], "a class changed");
    assert_eq!(violations(&cluster, Some(&fast)), [class_message], "a class removed");
    assert_eq!(violations(&fast, Some(&fast)), Vec::<String>::new(), "unchanged");
}

#[test]
fn a_pod_ready_timeout_that_is_not_a_duration_is_rejected() {
    let ok = with(valid_cluster(), "/spec/rollout", json!({"podReadyTimeout": "1h30m"}));
    assert_eq!(violations(&ok, None), Vec::<String>::new());
    let bad = with(valid_cluster(), "/spec/rollout", json!({"podReadyTimeout": "5 minutes"}));
    assert_eq!(violations(&bad, None), ["rollout.podReadyTimeout must be a duration such as 90s, 5m or 1h30m"]);
}

#[test]
fn switching_tls_on_a_cluster_is_rejected_and_the_default_is_on() {
    let message = "tls.enabled cannot change on an existing cluster: its nodes all speak TLS or all speak plaintext, and a node restarted with the other setting could not talk to the rest; create a new cluster to switch";
    let cluster = valid_cluster();
    let mut off = cluster.clone();
    off["spec"]["tls"] = json!({"enabled": false});
    assert_eq!(violations(&off, None), Vec::<String>::new(), "off at creation is allowed");
    assert_eq!(violations(&off, Some(&cluster)), [message], "default (on) -> off");
    assert_eq!(violations(&cluster, Some(&off)), [message], "off -> default (on)");
    let mut on = cluster.clone();
    on["spec"]["tls"] = json!({"enabled": true, "certificateDays": 30});
    assert_eq!(violations(&on, Some(&cluster)), Vec::<String>::new(), "explicitly on, as before");
    let spec: shardkv_operator::crd::ShardClusterSpec = serde_json::from_value(cluster["spec"].clone()).unwrap();
    assert!(spec.tls.enabled && spec.network_policy.enabled, "TLS and the NetworkPolicy are on by default");
    assert_eq!(spec.tls.certificate_days, 90);
}

#[test]
fn certificate_days_out_of_range_are_rejected() {
    for days in [0, 366] {
        let mut cluster = valid_cluster();
        cluster["spec"]["tls"] = json!({"certificateDays": days});
        assert_eq!(violations(&cluster, None), ["tls.certificateDays must be between 1 and 365"], "{days} days");
    }
}
