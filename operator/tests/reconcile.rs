//! Reconcile against a mocked Kubernetes API server (tower-test) and a fake set of nodes:
//! create, bootstrap, scale up, scale down, pause and delete, asserting the requests made.

use std::collections::BTreeSet;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;

use http::Request;
use http::Response;
use kube::Client;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::events::Reporter;
use serde_json::Value;
use serde_json::json;
use shardkv_operator::certificates;
use shardkv_operator::controller::Context;
use shardkv_operator::controller::Settings;
use shardkv_operator::controller::reconcile;
use shardkv_operator::crd::ShardCluster;
use shardkv_operator::metrics::Metrics;
use shardkv_operator::nodes::NodeApi;
use shardkv_operator::nodes::NodeEndpoint;
use shardkv_operator::resources::ClusterNames;
use shardkv_proto::v1::GroupMembers;
use shardkv_proto::v1::Member;
use shardkv_proto::v1::ReplicaStatus;
use shardkv_proto::v1::ShardConfig;
use shardkv_proto::v1::StatusResponse;
use shardkv_proto::v1::StopReport;
use tonic::Status;

/// Everything the operator did, API requests and node calls in one sequence.
type Log = Arc<Mutex<Vec<Call>>>;

#[derive(Debug, Clone)]
enum Call {
    Api { method: String, path: String, query: String, body: Value },
    Node { endpoint: String, call: String },
}

/// The cluster as the fake apiserver and fake nodes present it.
#[derive(Clone, Default)]
struct World {
    cluster: Value,
    pods: Vec<Value>,
    statefulsets: Vec<Value>,
    statuses: HashMap<String, StatusResponse>,
    config: Option<ShardConfig>,
    /// What PrepareStop answers, by endpoint; a clean report when absent.
    stop_reports: HashMap<String, StopReport>,
    /// The status the apiserver holds when the watch cache (`cluster`) is behind it.
    newer_status: Option<Value>,
    /// The cluster's Secrets; valid certificates unless `without_certificates`.
    secrets: Vec<Value>,
    /// No certificate Secrets exist yet (a new cluster).
    without_certificates: bool,
}

/// The Secrets the operator would have made for `cluster`: its CA and valid certificates.
fn certificates(world: &World) -> Vec<Value> {
    let cluster: ShardCluster = serde_json::from_value(world.cluster.clone()).unwrap();
    let names = ClusterNames::of(&cluster, "cluster.local");
    let existing =
        world.statefulsets.iter().filter_map(|s| s["metadata"]["labels"]["shardkv.dev/group"].as_str()?.parse().ok());
    let group_ids: BTreeSet<u64> = (0..=u64::from(cluster.spec.groups)).chain(existing).collect();
    let ca = certificates::generate_ca(&names).unwrap();
    let ca_secret = certificates::ca_secret(&cluster, &names, &ca);
    let (ca, ca_info) = certificates::ca_of(&ca_secret, &names.cluster_id()).unwrap();
    let mut secrets = vec![serde_json::to_value(&ca_secret).unwrap()];
    for leaf in certificates::leaves(&names, &group_ids).unwrap() {
        let issued = certificates::issue(&ca, &ca_info, &leaf, 90).unwrap();
        let secret = certificates::leaf_secret(&cluster, &names, &leaf, &ca.pem().cert_pem, &issued);
        secrets.push(serde_json::to_value(secret).unwrap());
    }
    secrets
}

struct FakeNodes {
    statuses: HashMap<String, StatusResponse>,
    config: Option<ShardConfig>,
    stop_reports: HashMap<String, StopReport>,
    log: Log,
}

impl FakeNodes {
    fn record(&self, endpoint: &NodeEndpoint, call: String) {
        self.log.lock().unwrap().push(Call::Node { endpoint: endpoint.addr.clone(), call });
    }
}

impl NodeApi for FakeNodes {
    async fn status(&self, endpoint: &NodeEndpoint) -> Result<StatusResponse, Status> {
        self.statuses.get(&endpoint.addr).cloned().ok_or_else(|| Status::unavailable("connection refused"))
    }

    async fn initialize(&self, endpoint: &NodeEndpoint, members: Vec<Member>) -> Result<(), Status> {
        let members: Vec<String> = members.iter().map(|m| format!("{}={}", m.node_id, m.addr)).collect();
        self.record(endpoint, format!("initialize {}", members.join(",")));
        Ok(())
    }

    async fn add_learner(&self, endpoint: &NodeEndpoint, member: Member) -> Result<(), Status> {
        self.record(endpoint, format!("add_learner {}={}", member.node_id, member.addr));
        Ok(())
    }

    async fn change_membership(&self, endpoint: &NodeEndpoint, voters: BTreeSet<u64>) -> Result<(), Status> {
        self.record(endpoint, format!("change_membership {voters:?}"));
        Ok(())
    }

    async fn remove_learners(&self, endpoint: &NodeEndpoint, learners: BTreeSet<u64>) -> Result<(), Status> {
        self.record(endpoint, format!("remove_learners {learners:?}"));
        Ok(())
    }

    async fn transfer_leader(&self, endpoint: &NodeEndpoint, to: u64) -> Result<(), Status> {
        self.record(endpoint, format!("transfer_leader {to}"));
        Ok(())
    }

    async fn prepare_stop(&self, endpoint: &NodeEndpoint) -> Result<StopReport, Status> {
        self.record(endpoint, "prepare_stop".to_string());
        Ok(self.stop_reports.get(&endpoint.addr).cloned().unwrap_or_else(|| clean_stop(false)))
    }

    async fn query_config(&self, endpoint: &NodeEndpoint) -> Result<ShardConfig, Status> {
        let _ = endpoint;
        self.config.clone().ok_or_else(|| Status::unavailable("no meta"))
    }

    async fn join(&self, endpoint: &NodeEndpoint, group: GroupMembers) -> Result<(), Status> {
        let ids: Vec<u64> = group.members.iter().map(|m| m.node_id).collect();
        self.record(endpoint, format!("join {} {ids:?}", group.group_id));
        Ok(())
    }

    async fn leave(&self, endpoint: &NodeEndpoint, group_id: u64) -> Result<(), Status> {
        self.record(endpoint, format!("leave {group_id}"));
        Ok(())
    }
}

/// Answers the operator's requests like an apiserver holding `world`, recording each one.
async fn serve(mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>, world: World, log: Log) {
    while let Some((request, respond)) = handle.next_request().await {
        let method = request.method().to_string();
        let path = request.uri().path().to_string();
        let query = request.uri().query().unwrap_or_default().to_string();
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body: Value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
        log.lock().unwrap().push(Call::Api { method: method.clone(), path: path.clone(), query, body: body.clone() });
        let mut code = 200;
        let answer = match (method.as_str(), path.as_str()) {
            ("GET", p) if p.ends_with("/secrets") => {
                json!({"apiVersion": "v1", "kind": "SecretList", "metadata": {}, "items": world.secrets})
            }
            ("GET", p) if p.contains("/secrets/") => {
                let name = p.rsplit('/').next().unwrap();
                match world.secrets.iter().find(|s| s["metadata"]["name"] == name) {
                    Some(secret) => secret.clone(),
                    None => {
                        code = 404;
                        json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404, "metadata": {}, "message": "not found"})
                    }
                }
            }
            ("GET", p) if p.ends_with("/pods") => {
                json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": world.pods})
            }
            ("GET", p) if p.ends_with("/shardclusters/demo/status") => {
                let mut cluster = world.cluster.clone();
                if let Some(status) = &world.newer_status {
                    cluster["status"] = status.clone();
                }
                cluster
            }
            ("GET", p) if p.ends_with("/statefulsets") => {
                json!({"apiVersion": "apps/v1", "kind": "StatefulSetList", "metadata": {}, "items": world.statefulsets})
            }
            ("PATCH", p) if p.ends_with("/shardclusters/demo/status") => {
                let mut cluster = world.cluster.clone();
                cluster["status"] = body["status"].clone();
                cluster
            }
            ("PATCH", p) if p.ends_with("/shardclusters/demo") => world.cluster.clone(),
            ("DELETE", _) => json!({"apiVersion": "v1", "kind": "Status", "status": "Success", "metadata": {}}),
            // Server-side apply and Event creation answer with the object sent.
            ("PATCH" | "POST", _) => body,
            other => panic!("unexpected request {other:?}"),
        };
        respond.send_response(
            Response::builder().status(code).body(Body::from(serde_json::to_vec(&answer).unwrap())).unwrap(),
        );
    }
}

struct Outcome {
    action: Result<Action, String>,
    calls: Vec<Call>,
}

impl Outcome {
    fn api(&self, method: &str) -> Vec<(String, Value)> {
        self.calls
            .iter()
            .filter_map(|c| match c {
                Call::Api { method: m, path, body, .. } if m == method => Some((path.clone(), body.clone())),
                _ => None,
            })
            .collect()
    }

    fn applied(&self, kind: &str, name: &str) -> Option<Value> {
        let suffix = format!("/{kind}/{name}");
        self.api("PATCH").into_iter().find(|(p, _)| p.ends_with(&suffix)).map(|(_, body)| body)
    }

    fn status(&self) -> Value {
        self.api("PATCH").into_iter().find(|(p, _)| p.ends_with("/status")).expect("status was written").1["status"]
            .clone()
    }

    fn node_calls(&self) -> Vec<(String, String)> {
        self.calls
            .iter()
            .filter_map(|c| match c {
                Call::Node { endpoint, call } => Some((endpoint.clone(), call.clone())),
                Call::Api { .. } => None,
            })
            .collect()
    }

    fn event_reasons(&self) -> Vec<String> {
        self.api("POST")
            .into_iter()
            .filter(|(p, _)| p.ends_with("/events"))
            .map(|(_, body)| body["reason"].as_str().unwrap().to_string())
            .collect()
    }

    /// The Events created, with their reason.
    fn events(&self, reason: &str) -> Vec<Value> {
        self.api("POST")
            .into_iter()
            .filter(|(p, body)| p.ends_with("/events") && body["reason"] == reason)
            .map(|(_, body)| body)
            .collect()
    }

    fn condition(&self, type_: &str) -> Value {
        let status = self.status();
        status["conditions"].as_array().unwrap().iter().find(|c| c["type"] == type_).cloned().unwrap()
    }
}

async fn run(mut world: World) -> Outcome {
    if world.secrets.is_empty() && !world.without_certificates && tls_enabled(&world.cluster) {
        world.secrets = certificates(&world);
    }
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let log: Log = Arc::default();
    let server = tokio::spawn(serve(handle, world.clone(), log.clone()));
    let nodes = FakeNodes {
        statuses: world.statuses.clone(),
        config: world.config.clone(),
        stop_reports: world.stop_reports.clone(),
        log: log.clone(),
    };
    let ctx = Arc::new(Context::new(
        Client::new(service, "default"),
        nodes,
        Arc::new(Metrics::default()),
        Settings::default(),
        Reporter { controller: "shardkv-operator".into(), instance: None },
    ));
    let cluster: ShardCluster = serde_json::from_value(world.cluster.clone()).unwrap();
    let action = reconcile(Arc::new(cluster), ctx).await.map_err(|e| e.to_string());
    // The context (and with it every client handle) is gone: the fake apiserver's stream ends.
    server.await.unwrap();
    let calls = log.lock().unwrap().clone();
    Outcome { action, calls }
}

fn tls_enabled(cluster: &Value) -> bool {
    cluster["spec"]["tls"]["enabled"].as_bool().unwrap_or(true)
}

fn cluster(groups: u32, replicas: u32, meta_replicas: u32) -> Value {
    json!({
        "apiVersion": "shardkv.dev/v1alpha1",
        "kind": "ShardCluster",
        "metadata": {
            "name": "demo", "namespace": "prod", "uid": "uid-1", "generation": 7, "resourceVersion": "41",
            "finalizers": ["shardkv.dev/cleanup"],
        },
        "spec": {
            "image": "shardkv/node:test", "shards": 8, "groups": groups,
            "replicasPerGroup": replicas, "meta": {"replicas": meta_replicas},
        },
    })
}

fn group_name(group: u64) -> String {
    if group == 0 { "demo-meta".to_string() } else { format!("demo-g{group}") }
}

fn peer(group: u64, ordinal: u32) -> String {
    let g = group_name(group);
    format!("{g}-{ordinal}.{g}.prod.svc.cluster.local:7100")
}

fn endpoint(group: u64, ordinal: u32) -> String {
    format!("10.0.{group}.{ordinal}:7100")
}

fn pod(group: u64, ordinal: u32) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": format!("{}-{ordinal}", group_name(group)), "namespace": "prod",
            "uid": format!("uid-{group}-{ordinal}"),
            "labels": {"shardkv.dev/cluster": "demo", "shardkv.dev/group": group.to_string(), "controller-revision-hash": "rev-1"},
        },
        "status": {"podIP": format!("10.0.{group}.{ordinal}"), "conditions": [{"type": "Ready", "status": "True"}]},
    })
}

fn statefulset(group: u64, replicas: u32) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": group_name(group), "namespace": "prod", "labels": {"shardkv.dev/cluster": "demo", "shardkv.dev/group": group.to_string()}},
        "spec": {"replicas": replicas, "selector": {}, "template": {}, "serviceName": group_name(group)},
    })
}

fn fresh() -> StatusResponse {
    StatusResponse { state: "Learner".into(), ..Default::default() }
}

fn follower() -> StatusResponse {
    StatusResponse { state: "Follower".into(), initialized: true, term: 1, ..Default::default() }
}

/// The config number of the shard map in `running` worlds; every leader has applied it.
const CONFIG_NUM: u64 = 2;

/// Leader of `group` on pod 0 with these voters (node ids), all caught up.
fn leader(group: u64, voters: &[u64]) -> StatusResponse {
    StatusResponse {
        state: "Leader".into(),
        initialized: true,
        term: 1,
        group_id: group,
        last_log_index: 40,
        config_num: CONFIG_NUM,
        members: voters
            .iter()
            .map(|id| ReplicaStatus {
                node_id: *id,
                addr: peer(group, u32::try_from(id - 1).unwrap()),
                role: "voter".into(),
                matched_index: Some(40),
            })
            .collect(),
        ..Default::default()
    }
}

fn members(group: u64, ids: &[u64]) -> GroupMembers {
    GroupMembers {
        group_id: group,
        members: ids
            .iter()
            .map(|id| Member { node_id: *id, addr: peer(group, u32::try_from(id - 1).unwrap()) })
            .collect(),
    }
}

/// A running cluster: a 1-replica meta group, data group 1 settled with `voters` and joined.
fn running(spec_replicas: u32, statefulset_replicas: u32, voters: &[u64]) -> World {
    let mut world = World { cluster: cluster(1, spec_replicas, 1), ..Default::default() };
    world.pods.push(pod(0, 0));
    world.statefulsets = vec![statefulset(0, 1), statefulset(1, statefulset_replicas)];
    world.statuses.insert(endpoint(0, 0), leader(0, &[1]));
    for ordinal in 0..statefulset_replicas {
        world.pods.push(pod(1, ordinal));
        let status = if ordinal == 0 { leader(1, voters) } else { follower() };
        world.statuses.insert(endpoint(1, ordinal), status);
    }
    world.config = Some(ShardConfig {
        num: CONFIG_NUM,
        shard_groups: vec![1; 8],
        groups: vec![members(1, voters)],
        pinned: vec![],
    });
    world
}

#[tokio::test]
async fn create_applies_every_group_object_and_reports_bootstrapping() {
    let out = run(World { cluster: cluster(2, 3, 3), without_certificates: true, ..Default::default() }).await;
    assert_eq!(out.action, Ok(Action::requeue(Settings::default().progress_interval)));
    for group in ["demo-meta", "demo-g1", "demo-g2"] {
        let sts = out.applied("statefulsets", group).unwrap_or_else(|| panic!("no StatefulSet {group}"));
        assert_eq!(sts["spec"]["replicas"], 3);
        assert_eq!(sts["spec"]["updateStrategy"]["type"], "OnDelete");
        assert_eq!(sts["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        assert!(out.applied("services", group).is_some(), "headless Service {group}");
        assert_eq!(out.applied("poddisruptionbudgets", group).unwrap()["spec"]["minAvailable"], 2);
    }
    assert!(out.applied("services", "demo").is_some(), "client Service");
    assert!(out.applied("networkpolicies", "demo").is_some(), "NetworkPolicy");
    for secret in ["demo-ca", "demo-node-tls", "demo-operator-tls", "demo-client-tls"] {
        assert!(out.applied("secrets", secret).is_some(), "Secret {secret}");
    }
    assert_eq!(out.event_reasons(), ["CertificateIssued"; 4]);
    let applies: Vec<&Call> = out
        .calls
        .iter()
        .filter(|c| matches!(c, Call::Api { method, path, .. } if method == "PATCH" && !path.contains("shardclusters")))
        .collect();
    assert_eq!(applies.len(), 15, "3 x (StatefulSet, Service, PDB), client Service, NetworkPolicy, 4 Secrets");
    assert!(
        applies.iter().all(|c| matches!(c, Call::Api { query, .. } if query.contains("fieldManager=shardkv-operator") && query.contains("force=true"))),
        "every owned object is server-side applied: {applies:?}"
    );
    assert_eq!(out.node_calls(), Vec::<(String, String)>::new(), "no pods yet, no node calls");
    let status = out.status();
    assert_eq!(status["observedGeneration"], 7);
    assert_eq!(status["phase"], "Bootstrapping");
    assert_eq!(out.condition("Progressing")["status"], "True");
    assert_eq!(out.condition("Available")["status"], "False");
}

#[tokio::test]
async fn bootstrap_initialises_each_group_once_on_pod_zero() {
    let mut world = World { cluster: cluster(1, 3, 1), ..Default::default() };
    world.statefulsets = vec![statefulset(0, 1), statefulset(1, 3)];
    for (group, count) in [(0, 1), (1, 3)] {
        for ordinal in 0..count {
            world.pods.push(pod(group, ordinal));
            world.statuses.insert(endpoint(group, ordinal), fresh());
        }
    }
    let out = run(world.clone()).await;
    assert_eq!(
        out.node_calls(),
        [
            (endpoint(0, 0), format!("initialize 1={}", peer(0, 0))),
            (endpoint(1, 0), format!("initialize 1={}", peer(1, 0))),
        ]
    );
    assert_eq!(out.event_reasons(), ["Initialize", "Initialize"]);
    let groups = out.status()["groups"].clone();
    assert_eq!((groups[0]["initialized"].clone(), groups[1]["initialized"].clone()), (json!(true), json!(true)));

    // The next reconcile reads status saying so; if the nodes then report nothing initialised
    // (volumes lost), the operator does not initialise again and reports Degraded.
    world.cluster["status"] = out.status();
    let again = run(world).await;
    assert_eq!(again.node_calls(), Vec::<(String, String)>::new());
    assert_eq!(again.condition("Degraded")["status"], "True");
}

#[tokio::test]
async fn bootstrap_continues_with_learners_once_a_leader_is_elected() {
    let mut world = running(3, 3, &[1]);
    world.statuses.insert(endpoint(1, 1), fresh());
    world.statuses.insert(endpoint(1, 2), fresh());
    let out = run(world).await;
    assert_eq!(out.node_calls(), [(endpoint(1, 0), format!("add_learner 2={}", peer(1, 1)))]);
    assert_eq!(out.event_reasons(), ["AddLearner"]);
    assert_eq!(out.status()["operations"][0]["operation"], "ScaleUp");
}

#[tokio::test]
async fn scale_up_grows_the_statefulset_then_adds_learners() {
    let out = run(running(5, 3, &[1, 2, 3])).await;
    assert_eq!(out.applied("statefulsets", "demo-g1").unwrap()["spec"]["replicas"], 5);
    assert_eq!(out.applied("poddisruptionbudgets", "demo-g1").unwrap()["spec"]["minAvailable"], 3);
    assert_eq!(out.node_calls(), Vec::<(String, String)>::new(), "pods 3 and 4 do not exist yet");
    assert_eq!(out.status()["operations"][0]["message"], "waiting for pod 3 to answer on its Admin API");

    let mut started = running(5, 3, &[1, 2, 3]);
    for ordinal in [3, 4] {
        started.pods.push(pod(1, ordinal));
        started.statuses.insert(endpoint(1, ordinal), fresh());
    }
    let out = run(started).await;
    assert_eq!(out.node_calls(), [(endpoint(1, 0), format!("add_learner 4={}", peer(1, 3)))]);
}

#[tokio::test]
async fn scale_down_changes_membership_before_the_statefulset_shrinks() {
    let out = run(running(3, 5, &[1, 2, 3, 4, 5])).await;
    assert_eq!(out.node_calls(), [(endpoint(1, 0), "change_membership {1, 2, 3}".to_string())]);
    assert_eq!(out.applied("statefulsets", "demo-g1").unwrap()["spec"]["replicas"], 5, "not before the change");
    assert_eq!(out.event_reasons(), ["RemoveVoters"]);

    // Once the leader reports three voters, the StatefulSet shrinks and meta learns the members.
    let mut shrunk = running(3, 5, &[1, 2, 3]);
    shrunk.config.as_mut().unwrap().groups = vec![members(1, &[1, 2, 3, 4, 5])];
    let out = run(shrunk).await;
    assert_eq!(out.applied("statefulsets", "demo-g1").unwrap()["spec"]["replicas"], 3);
    assert_eq!(out.node_calls(), [(endpoint(0, 0), "join 1 [1, 2, 3]".to_string())]);
    assert_eq!(out.event_reasons(), ["Join"]);
}

#[tokio::test]
async fn settled_cluster_is_available_and_changes_nothing() {
    let out = run(running(3, 3, &[1, 2, 3])).await;
    assert_eq!(out.action, Ok(Action::requeue(Settings::default().settled_interval)));
    assert_eq!(out.node_calls(), Vec::<(String, String)>::new());
    assert_eq!(out.event_reasons(), Vec::<String>::new());
    assert_eq!(out.condition("Available")["status"], "True");
    let status = out.status();
    assert_eq!((status["phase"].clone(), status["configNum"].clone()), (json!("Running"), json!(2)));
}

#[tokio::test]
async fn paused_cluster_changes_nothing_and_says_so() {
    let mut world = running(5, 3, &[1, 2, 3]);
    world.cluster["spec"]["paused"] = json!(true);
    let out = run(world).await;
    assert!(out.applied("statefulsets", "demo-g1").is_none(), "no StatefulSet change while paused");
    assert_eq!(out.node_calls(), Vec::<(String, String)>::new());
    assert_eq!(out.condition("Paused")["status"], "True");
    assert_eq!(out.status()["phase"], "Paused");
}

#[tokio::test]
async fn delete_removes_data_groups_then_meta_once_they_are_gone_then_the_finalizer() {
    let deleting = || {
        let mut world = World { cluster: cluster(2, 3, 3), ..Default::default() };
        world.cluster["metadata"]["deletionTimestamp"] = json!("2026-11-23T16:00:00Z");
        world
    };
    let deleted = |out: &Outcome| -> Vec<String> {
        out.api("DELETE").into_iter().map(|(p, _)| p.rsplit_once("/prod/").unwrap().1.to_string()).collect()
    };
    let finalizer_removed = |out: &Outcome| {
        out.calls.iter().any(|c| matches!(c, Call::Api { method, path, body, .. } if method == "PATCH" && path.ends_with("/shardclusters/demo") && body.to_string().contains("/metadata/finalizers")))
    };

    // Data groups first; the meta group and the finalizer wait for them to be gone.
    let mut world = deleting();
    world.statefulsets = vec![statefulset(0, 3), statefulset(1, 3), statefulset(2, 3)];
    let out = run(world).await;
    assert_eq!(
        deleted(&out),
        [
            "poddisruptionbudgets/demo-g1",
            "services/demo-g1",
            "statefulsets/demo-g1",
            "poddisruptionbudgets/demo-g2",
            "services/demo-g2",
            "statefulsets/demo-g2",
        ]
    );
    let error = out.action.as_ref().unwrap_err();
    assert!(error.contains("deleting demo-g1, demo-g2: the meta group waits until they are gone"), "{error}");
    assert!(!finalizer_removed(&out));
    assert!(out.event_reasons().is_empty());

    // Still on their way out: nothing is deleted again, and still the meta group waits.
    let mut world = deleting();
    world.statefulsets = vec![statefulset(0, 3), statefulset(2, 3)];
    world.statefulsets[1]["metadata"]["deletionTimestamp"] = json!("2026-11-23T16:00:01Z");
    let out = run(world).await;
    assert_eq!(deleted(&out), Vec::<String>::new());
    assert!(out.action.as_ref().unwrap_err().contains("deleting demo-g2"));

    // Gone: the meta group, the client Service, the Event, and last the finalizer.
    let mut world = deleting();
    world.statefulsets = vec![statefulset(0, 3)];
    let out = run(world).await;
    assert_eq!(
        deleted(&out),
        ["poddisruptionbudgets/demo-meta", "services/demo-meta", "statefulsets/demo-meta", "services/demo"]
    );
    let last = out.calls.last().unwrap();
    assert!(
        matches!(last, Call::Api { method, path, body, .. } if method == "PATCH" && path.ends_with("/shardclusters/demo") && body.to_string().contains("/metadata/finalizers")),
        "the finalizer goes last: {last:?}"
    );
    assert_eq!(out.event_reasons(), ["Deleted"]);
    assert_eq!(out.node_calls(), Vec::<(String, String)>::new());
}

/// Group 2 running beyond spec.groups = 1, settled with one voter.
/// Data group 2 beyond `groups: 1`: in the map or not (`config_groups`), holding `held` shards
/// in `state`, with the removal status recorded so far.
fn retiring(config_groups: &[u64], held: usize, state: &str, removals: Value) -> World {
    let mut world = running(1, 1, &[1]);
    world.statefulsets.push(statefulset(2, 1));
    world.pods.push(pod(2, 0));
    let mut status = leader(2, &[1]);
    status.shards = (0..held)
        .map(|shard| shardkv_proto::v1::ShardStatus {
            shard: shard as u32,
            state: state.into(),
            peer_group: if state == "serving" { 0 } else { 1 },
            ..Default::default()
        })
        .collect();
    world.statuses.insert(endpoint(2, 0), status);
    let config = world.config.as_mut().unwrap();
    config.groups = config_groups.iter().map(|g| members(*g, &[1])).collect();
    world.cluster["status"] = json!({"groupRemovals": removals, "lastGroupId": 2});
    world
}

#[tokio::test]
async fn removing_a_group_leaves_meta_then_deletes_it_once_drained() {
    let out = run(retiring(&[1, 2], 4, "serving", json!([]))).await;
    assert_eq!(out.node_calls(), [(endpoint(0, 0), "leave 2".to_string())]);
    assert!(out.applied("statefulsets", "demo-g2").is_some(), "kept while it holds shards");
    assert_eq!(out.api("DELETE"), Vec::<(String, Value)>::new());
    let removal = out.status()["groupRemovals"][0].clone();
    assert_eq!((removal["groupId"].clone(), removal["phase"].clone()), (json!(2), json!("Leaving")));
    assert_eq!(out.event_reasons(), ["Leave", "RemovalLeaving"]);

    let leaving = json!([{"groupId": 2, "phase": "Leaving"}]);
    let out = run(retiring(&[1], 4, "be_pulled", leaving)).await;
    assert_eq!(out.node_calls(), Vec::<(String, String)>::new());
    assert_eq!(out.api("DELETE"), Vec::<(String, Value)>::new(), "its shards are not garbage-collected yet");
    assert_eq!(
        out.status()["operations"][0]["message"],
        "group 2 still holds 4 shards until their new owners have them"
    );
    let removal = out.status()["groupRemovals"][0].clone();
    assert_eq!(
        (removal["phase"].clone(), removal["leaveConfig"].clone(), removal["shardsHeld"].clone()),
        (json!("Draining"), json!(CONFIG_NUM), json!(4))
    );
    assert_eq!(out.status()["operation"], "removing group 2: Draining (4 shards held, 0 bytes moved)");
    assert_eq!(out.condition("Degraded")["status"], "False");
    assert_eq!(out.event_reasons(), ["RemovalDraining"]);

    let draining = json!([{"groupId": 2, "phase": "Draining", "leaveConfig": CONFIG_NUM}]);
    let out = run(retiring(&[1], 0, "serving", draining)).await;
    assert!(out.applied("statefulsets", "demo-g2").is_none(), "not applied again while being deleted");
    let deleted: Vec<String> =
        out.api("DELETE").into_iter().map(|(p, _)| p.rsplit_once("/prod/").unwrap().1.to_string()).collect();
    assert_eq!(deleted, ["poddisruptionbudgets/demo-g2", "services/demo-g2", "statefulsets/demo-g2"]);
    assert_eq!(out.event_reasons(), ["DeleteGroup", "RemovalDeleting"]);

    // Its StatefulSet on its way out: nothing is deleted or applied again, and once it is gone
    // the removal is done.
    let deleting = json!([{"groupId": 2, "phase": "Deleting", "leaveConfig": CONFIG_NUM}]);
    let mut terminating = retiring(&[1], 0, "serving", deleting.clone());
    terminating.statefulsets[2]["metadata"]["deletionTimestamp"] = json!("2026-12-01T18:00:00Z");
    let out = run(terminating).await;
    assert_eq!(out.api("DELETE"), Vec::<(String, Value)>::new());
    assert!(out.applied("services", "demo-g2").is_none() && out.applied("poddisruptionbudgets", "demo-g2").is_none());
    let mut gone = retiring(&[1], 0, "serving", deleting);
    gone.statefulsets.truncate(2);
    gone.pods.retain(|p| p["metadata"]["name"] != "demo-g2-0");
    let out = run(gone).await;
    assert_eq!(out.status()["groupRemovals"], Value::Null, "an empty list is removed from status");
    assert_eq!(out.status()["lastGroupId"], 2);
    assert_eq!(out.event_reasons(), ["RemovalDone"]);
}

#[tokio::test]
async fn a_new_group_gets_an_id_never_used_before() {
    let mut world = running(1, 1, &[1]);
    world.cluster["spec"]["groups"] = json!(2);
    world.cluster["status"] = json!({"lastGroupId": 2});
    let out = run(world).await;
    assert!(out.applied("statefulsets", "demo-g3").is_some(), "group 2 was issued before");
    assert!(out.applied("statefulsets", "demo-g2").is_none());
    assert_eq!(out.status()["lastGroupId"], 3);
}

#[tokio::test]
async fn what_status_recorded_is_read_fresh_not_from_the_watch_cache() {
    let mut world = running(1, 1, &[1]);
    world.cluster["spec"]["groups"] = json!(2);
    world.newer_status = Some(json!({"lastGroupId": 2}));
    let out = run(world).await;
    assert!(out.applied("statefulsets", "demo-g3").is_some(), "the cache has not seen that group 2 was issued");
    assert!(out.applied("statefulsets", "demo-g2").is_none());
}

#[tokio::test]
async fn status_is_written_whole_by_server_side_apply() {
    let out = run(running(3, 3, &[1, 2, 3])).await;
    let query = out
        .calls
        .iter()
        .find_map(|c| match c {
            Call::Api { method, path, query, .. } if method == "PATCH" && path.ends_with("/status") => {
                Some(query.clone())
            }
            _ => None,
        })
        .unwrap();
    assert!(query.contains("fieldManager=shardkv-operator") && query.contains("force=true"), "{query}");
}

/// A stop report: snapshot at the applied index 40, leadership handed to node 2 if it led.
fn clean_stop(was_leader: bool) -> StopReport {
    StopReport {
        node_id: 1,
        groups: vec![shardkv_proto::v1::GroupStopReport {
            group_id: 1,
            was_leader,
            new_leader: was_leader.then_some(2),
            applied_index: 40,
            snapshot_index: Some(40),
            ..Default::default()
        }],
        total_ms: 120,
        clean: true,
        ..Default::default()
    }
}

/// `running` with a changed pod template: both StatefulSets' update revision is rev-2, every
/// pod still runs rev-1.
fn template_changed() -> World {
    let mut world = running(3, 3, &[1, 2, 3]);
    for sts in &mut world.statefulsets {
        sts["status"] = json!({"replicas": 3, "updateRevision": "rev-2"});
    }
    world
}

#[tokio::test]
async fn a_rollout_stops_a_node_then_deletes_its_pod_by_uid() {
    let out = run(template_changed()).await;
    // Meta first; its only voter has nobody to hand over to.
    assert_eq!(out.node_calls(), [(endpoint(0, 0), "prepare_stop".to_string())]);
    let deletes: Vec<(String, Value)> = out.api("DELETE");
    assert_eq!(deletes.len(), 1, "{deletes:?}");
    assert!(deletes[0].0.ends_with("/pods/demo-meta-0"));
    assert_eq!(deletes[0].1["preconditions"]["uid"], "uid-0-0");
    let rollout = out.status()["rollout"].clone();
    assert_eq!((rollout["phase"].clone(), rollout["progress"].clone()), (json!("Rolling"), json!("0/4")));
    assert_eq!(rollout["restarts"][0]["pod"], "demo-meta-0");
    assert_eq!(rollout["restarts"][0]["snapshotIndex"], 40);
    // An Event of its own per pod incarnation restarted (the recorder folds Events with the same
    // related object into one series, whatever their notes), one per phase change.
    let restart = out.events("RolloutRestart");
    assert_eq!(restart.len(), 1, "{:?}", out.event_reasons());
    assert_eq!(
        restart[0]["related"],
        json!({"apiVersion": "v1", "kind": "Pod", "name": "demo-meta-0", "namespace": "prod", "uid": "uid-0-0"})
    );
    let started = out.events("RolloutStarted");
    assert_eq!(started.len(), 1, "{:?}", out.event_reasons());
    assert_eq!(started[0]["related"]["kind"], "ShardCluster");
    assert_eq!(started[0]["related"]["resourceVersion"], "41");
}

#[tokio::test]
async fn a_stop_report_that_is_not_clean_halts_instead_of_deleting() {
    let mut world = template_changed();
    let mut report = clean_stop(false);
    report.groups[0].snapshot_error = "disk full".into();
    report.clean = false;
    world.stop_reports.insert(endpoint(0, 0), report);
    let out = run(world).await;
    assert_eq!(out.api("DELETE"), Vec::<(String, Value)>::new());
    let rollout = out.status()["rollout"].clone();
    assert_eq!(rollout["phase"], "Halted");
    assert_eq!(rollout["halt"]["reason"], "pod demo-meta-0 was not deleted: snapshot failed: disk full");
    assert_eq!(rollout["halt"]["revision"], "rev-2");
    assert_eq!(out.condition("Degraded")["status"], "True");
    assert!(out.event_reasons().contains(&"RolloutHalted".to_string()), "{:?}", out.event_reasons());

    // The recorded halt holds on the next reconcile: no second stop, no delete.
    let mut again = template_changed();
    again.cluster["status"] = json!({"rollout": rollout});
    let out = run(again).await;
    assert_eq!(out.node_calls(), Vec::<(String, String)>::new());
    assert_eq!(out.api("DELETE"), Vec::<(String, Value)>::new());
    assert_eq!(out.status()["rollout"]["phase"], "Halted");
}

/// A halt recorded by the last reconcile holds even when the watch cache has not seen that
/// status write yet (a pod event starts the next reconcile at once).
#[tokio::test]
async fn a_recorded_halt_holds_when_the_watch_cache_is_behind() {
    let mut world = template_changed();
    let mut report = clean_stop(false);
    report.clean = false;
    world.stop_reports.insert(endpoint(0, 0), report);
    let halted = run(world).await.status();
    assert_eq!(halted["rollout"]["phase"], "Halted");

    let mut lagging = template_changed();
    lagging.newer_status = Some(halted);
    let out = run(lagging).await;
    assert_eq!(out.node_calls(), Vec::<(String, String)>::new());
    assert_eq!(out.api("DELETE"), Vec::<(String, Value)>::new());
    assert_eq!(out.status()["rollout"]["phase"], "Halted");
}

#[tokio::test]
async fn a_paused_rollout_touches_nothing() {
    let mut world = template_changed();
    world.cluster["spec"]["rollout"] = json!({"paused": true});
    let out = run(world).await;
    assert_eq!(out.node_calls(), Vec::<(String, String)>::new());
    assert_eq!(out.api("DELETE"), Vec::<(String, Value)>::new());
    assert_eq!(out.status()["rollout"]["phase"], "Paused");
}

#[tokio::test]
async fn a_new_renewal_token_reissues_every_certificate_in_place_and_is_recorded() {
    let mut world = running(3, 3, &[1, 2, 3]);
    world.secrets = certificates(&world);
    world.cluster["metadata"]["annotations"] = json!({"shardkv.dev/renew-certificates": "r1"});
    let out = run(world.clone()).await;
    assert_eq!(out.event_reasons(), ["CertificateRenewed"; 3], "the CA is not rotated");
    for secret in ["demo-node-tls", "demo-operator-tls", "demo-client-tls"] {
        let applied = out.applied("secrets", secret).unwrap_or_else(|| panic!("{secret} not rewritten"));
        assert_eq!(applied["type"], "kubernetes.io/tls");
        let before = world.secrets.iter().find(|s| s["metadata"]["name"] == secret).unwrap();
        assert_ne!(applied["data"]["tls.crt"], before["data"]["tls.crt"], "{secret}: a new certificate");
        assert_eq!(applied["data"]["ca.crt"], before["data"]["ca.crt"], "{secret}: the same CA");
    }
    assert!(out.applied("secrets", "demo-ca").is_none());
    let tls = out.status()["tls"].clone();
    assert_eq!(tls["renewalToken"], "r1");
    assert_eq!(tls["caSecret"], "demo-ca");
    assert!(tls["caNotAfter"].is_string());
    let certs = tls["certificates"].as_array().unwrap();
    let secrets: Vec<&str> = certs.iter().map(|c| c["secret"].as_str().unwrap()).collect();
    assert_eq!(secrets, ["demo-node-tls", "demo-operator-tls", "demo-client-tls"]);
    assert_eq!(certs[0]["identity"], "spiffe://shardkv/prod.demo/node/node");
    assert!(certs.iter().all(|c| c["notAfter"].is_string() && c["serial"].is_string() && c["renewAfter"].is_string()));
    assert!(!tls.to_string().contains("PRIVATE KEY"), "no key material in status");

    // Honoured: the same token asks for nothing more.
    world.cluster["status"] = out.status();
    let again = run(world).await;
    assert_eq!(again.event_reasons(), Vec::<String>::new());
    assert!(again.applied("secrets", "demo-node-tls").is_none());
}

#[tokio::test]
async fn with_tls_off_no_certificate_is_read_or_made() {
    let mut world = running(3, 3, &[1, 2, 3]);
    world.cluster["spec"]["tls"] = json!({"enabled": false});
    let out = run(world).await;
    assert!(out.calls.iter().all(|c| !matches!(c, Call::Api { path, .. } if path.contains("/secrets"))));
    let sts = out.applied("statefulsets", "demo-g1").unwrap();
    let env = sts["spec"]["template"]["spec"]["containers"][0]["env"].as_array().unwrap().clone();
    assert!(!env.iter().any(|e| e["name"] == "SHARDKV_TLS_CA"));
    assert!(out.status().get("tls").is_none());
    assert!(out.applied("networkpolicies", "demo").is_some(), "the NetworkPolicy does not depend on TLS");
}
