# Scenarios of e2e/run, sourced by it. Each scenario_NAME runs in a subshell
# with `set -euo pipefail`, KUBECONFIG pointing at the cluster, kubectl/helm and
# the history checker on PATH, and SCENARIO_DIR for its files. It passes by
# returning 0, fails with `fail MSG` (or any failing command), and is skipped
# with `skip REASON`.
# shellcheck shell=bash
# e2e/run defines these before sourcing this file.
: "${e2e:?}" "${root:?}"

fail() { echo "FAIL: $*" >&2; exit 1; }
skip() { echo "$*" >"$SKIP_FILE"; echo "SKIP: $*" >&2; exit 77; }
step() { echo "[$(date +%T)] $*" >&2; }

# wait_until TIMEOUT_SECONDS DESCRIPTION CMD...: poll CMD every 0.25 s until it
# succeeds; fail with DESCRIPTION when the deadline passes.
wait_until() {
  local timeout="$1" what="$2"; shift 2
  local deadline=$((SECONDS + timeout)) t0=$SECONDS
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || fail "timed out after ${timeout}s waiting for: $what"
    sleep 0.25
  done
  step "ok after $((SECONDS - t0))s: $what"
}

# count_is N CMD...: CMD succeeds and prints exactly N non-empty lines.
count_is() {
  local want="$1" out; shift
  out="$("$@")" || return 1
  [[ "$(grep -c . <<<"$out")" == "$want" ]]
}
absent() { ! "$@"; }

# A fresh namespace for a scenario, deleted (and waited for) by the caller.
new_namespace() {
  local ns
  ns="e2e-$SCENARIO-$(date +%s)-$RANDOM"
  kubectl create namespace "$ns" >&2
  echo "$ns" >>"$SCENARIO_DIR/namespaces" # e2e/run deletes leftovers of a failed scenario
  echo "$ns"
}

delete_namespace() {
  local ns="$1"
  kubectl delete namespace "$ns" --wait=false >&2
  wait_until 120 "namespace $ns deleted (namespace controller, PVC protection)" \
    absent kubectl get namespace "$ns"
}

# --- smoke -------------------------------------------------------------------

scenario_smoke() {
  step "apiserver /readyz"
  [[ "$(kubectl get --raw /readyz)" == ok ]] || fail "/readyz did not answer ok"
  kubectl version -o json >"$SCENARIO_DIR/version.json"

  local ns; ns="$(new_namespace)"
  step "StatefulSet smoke (3 replicas, parallel, a PVC template) in $ns"
  kubectl apply -n "$ns" -f - >&2 <<'EOF'
apiVersion: v1
kind: Service
metadata:
  name: smoke
spec:
  clusterIP: None
  selector: {app: smoke}
  ports: [{name: grpc, port: 7100}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: smoke
spec:
  serviceName: smoke
  replicas: 3
  podManagementPolicy: Parallel
  selector:
    matchLabels: {app: smoke}
  template:
    metadata:
      labels: {app: smoke}
    spec:
      terminationGracePeriodSeconds: 5
      containers:
      - name: node
        image: shardkv-e2e.invalid/smoke:none
        volumeMounts: [{name: data, mountPath: /data}]
  volumeClaimTemplates:
  - metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: 1Mi}}
EOF
  wait_until 60 "the StatefulSet controller created pods smoke-0..2" \
    count_is 3 kubectl get pods -n "$ns" -l app=smoke -o name
  wait_until 60 "the StatefulSet controller created PVCs data-smoke-0..2" \
    count_is 3 kubectl get pvc -n "$ns" -o name
  local p owner sa_vol
  for p in smoke-0 smoke-1 smoke-2; do
    owner="$(kubectl get pod -n "$ns" "$p" -o jsonpath='{.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name}')"
    [[ "$owner" == StatefulSet/smoke ]] || fail "pod $p is owned by '$owner', not StatefulSet/smoke"
    # ServiceAccount admission mounted the projected token volume.
    sa_vol="$(kubectl get pod -n "$ns" "$p" -o jsonpath='{.spec.volumes[*].name}')"
    [[ "$sa_vol" == *kube-api-access-* ]] || fail "pod $p has no kube-api-access volume (ServiceAccount admission): $sa_vol"
  done
  kubectl get pods,pvc -n "$ns" -o wide >&2

  step "delete the StatefulSet: the garbage collector deletes its pods, PVCs stay (Retain)"
  kubectl delete statefulset -n "$ns" smoke --cascade=background --wait=false >&2
  wait_until 60 "garbage collector deleted the StatefulSet's pods" \
    count_is 0 kubectl get pods -n "$ns" -l app=smoke -o name
  count_is 3 kubectl get pvc -n "$ns" -o name || fail "PVCs should outlive the StatefulSet (retention policy Retain)"

  delete_namespace "$ns"
}

# --- crd ---------------------------------------------------------------------

# Cases live in e2e/cases/crd/*.yaml. A file with one document must be rejected
# at admission (server-side dry-run create); a file with two documents creates
# the first (which must be accepted) and applies the second as an update, which
# must be rejected. `# expect: TEXT` lines give substrings the rejection must
# contain; a file named valid-*.yaml must be accepted instead.
scenario_crd() {
  local crds="$root/crds"
  compgen -G "$crds/*.yaml" >/dev/null || skip "no crds/*.yaml yet (the operator, issue 4, generates them)"

  step "kubectl apply -f crds/"
  local names; names="$(kubectl apply -f "$crds/" -o name)"
  local n
  for n in $names; do
    [[ "$n" == customresourcedefinition* ]] || continue
    kubectl wait --for condition=Established --timeout=60s "$n" >&2 \
      || fail "$n did not become Established"
  done
  wait_until 60 "the shardclusters resource is served" kubectl get shardclusters -A

  local ns; ns="$(new_namespace)"
  local f expect out rc ndocs checked=0
  for f in "$e2e"/cases/crd/*.yaml; do
    local name; name="$(basename "$f" .yaml)"
    mapfile -t expect < <(sed -n 's/^# expect: //p' "$f")
    ndocs="$(grep -c '^---$' "$f" || true)"
    if [[ "$name" == valid-* ]]; then
      step "$name: must be accepted"
      kubectl create --dry-run=server -n "$ns" -f "$f" >&2 || fail "$name: a valid spec was rejected"
    elif ((ndocs == 0)); then
      step "$name: must be rejected"
      rc=0; out="$(kubectl create --dry-run=server -n "$ns" -f "$f" 2>&1)" || rc=$?
      ((rc != 0)) || fail "$name: an invalid spec was accepted"
      check_rejection "$name" "$out" "${expect[@]}"
    else
      step "$name: create, then an update that must be rejected"
      csplit -s -z -f "$SCENARIO_DIR/$name." "$f" '/^---$/' '{*}'
      kubectl create -n "$ns" -f "$SCENARIO_DIR/$name.00" >&2 || fail "$name: the initial object was rejected"
      rc=0; out="$(kubectl replace -n "$ns" -f <(grep -v '^---$' "$SCENARIO_DIR/$name.01") 2>&1)" || rc=$?
      ((rc != 0)) || fail "$name: the update was accepted"
      check_rejection "$name" "$out" "${expect[@]}"
      kubectl delete -n "$ns" -f "$SCENARIO_DIR/$name.00" --wait=false >&2
    fi
    checked=$((checked + 1))
  done
  ((checked > 0)) || fail "no cases in $e2e/cases/crd"
  delete_namespace "$ns"
}

check_rejection() {
  local name="$1" out="$2"; shift 2
  echo "$out" >&2
  [[ "$out" == *"is invalid"* || "$out" == *"Forbidden"* || "$out" == *"denied"* ]] \
    || fail "$name: rejected, but not by validation: $out"
  local e
  for e in "$@"; do
    [[ "$out" == *"$e"* ]] || fail "$name: the rejection lacks the message '$e': $out"
  done
}

# --- podrunner ---------------------------------------------------------------

# pod_field NS POD JSONPATH
pod_field() { kubectl get pod -n "$1" "$2" -o jsonpath="$3"; }
ready_pod_uid_is_not() {
  [[ "$(pod_field "$1" "$2" '{.metadata.uid} {.status.containerStatuses[0].ready}')" == *" true" \
    && "$(pod_field "$1" "$2" '{.metadata.uid}')" != "$3" ]]
}
restarted_and_ready() {
  [[ "$(pod_field "$1" "$2" '{.status.containerStatuses[0].restartCount} {.status.containerStatuses[0].ready}')" == "1 true" ]]
}
# slice_has NS SERVICE IP...: the service's EndpointSlices list every IP.
slice_has() {
  local ns="$1" svc="$2" ip addrs; shift 2
  addrs=" $(kubectl get endpointslices -n "$ns" -l kubernetes.io/service-name="$svc" -o jsonpath='{.items[*].endpoints[*].addresses[*]}') "
  for ip in "$@"; do [[ "$addrs" == *" $ip "* ]] || return 1; done
}

# The kubelet stand-in itself: a StatefulSet of the test image gets real pod
# addresses in EndpointSlices, the downward API, StatefulSet DNS names, a
# service-account token the API server accepts, a volume that outlives the
# pod, preStop then SIGTERM on deletion, a restart after SIGKILL, and claim
# cleanup.
scenario_podrunner() {
  [[ "${E2E_PODRUNNER:-0}" == 1 ]] || skip "no pod runner (it needs root, ip netns and the local control plane)"
  local ns; ns="$(new_namespace)"
  step "StatefulSet of the test image (2 replicas) in $ns"
  kubectl apply -n "$ns" -f - >&2 <<YAML
apiVersion: v1
kind: Service
metadata: {name: t}
spec:
  clusterIP: None
  selector: {app: t}
  ports: [{name: http, port: 8080}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: t}
spec:
  serviceName: t
  replicas: 2
  selector: {matchLabels: {app: t}}
  template:
    metadata: {labels: {app: t}}
    spec:
      terminationGracePeriodSeconds: 10
      containers:
      - name: t
        image: e2e-test:latest
        command: [python3, "$e2e/testimage/server.py"]
        env:
        - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
        - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
        - {name: POD_NAMESPACE, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
        - {name: DATA, value: /data}
        ports: [{name: http, containerPort: 8080}]
        readinessProbe: {httpGet: {path: /readyz, port: http}, periodSeconds: 1}
        livenessProbe: {httpGet: {path: /healthz, port: http}, periodSeconds: 2}
        lifecycle: {preStop: {httpGet: {path: /lifecycle/prestop, port: http}}}
        volumeMounts: [{name: data, mountPath: /data}]
  volumeClaimTemplates:
  - metadata: {name: data}
    spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Mi}}}
YAML
  wait_until 60 "t-0 created" kubectl get pod -n "$ns" t-0
  kubectl wait -n "$ns" --for=condition=Ready pod/t-0 --timeout=60s >&2 || fail "t-0 not Ready"
  wait_until 60 "t-1 created" kubectl get pod -n "$ns" t-1
  kubectl wait -n "$ns" --for=condition=Ready pod/t-1 --timeout=60s >&2 || fail "t-1 not Ready"
  local ip0 ip1
  ip0="$(pod_field "$ns" t-0 '{.status.podIP}')"; ip1="$(pod_field "$ns" t-1 '{.status.podIP}')"
  [[ -n "$ip0" && -n "$ip1" && "$ip0" != "$ip1" ]] || fail "pods have addresses '$ip0' and '$ip1'"
  wait_until 30 "EndpointSlice of service t lists $ip0 and $ip1" slice_has "$ns" t "$ip0" "$ip1"

  step "downward API, DNS, service-account token"
  local who; who="$(curl -sf "http://$ip0:8080/whoami")"
  [[ "$who" == "t-0 $ns $ip0" ]] || fail "t-0 /whoami answered '$who'"
  local resolved; resolved="$(curl -sf "http://$ip0:8080/resolve?name=t-1.t.$ns.svc.cluster.local")"
  [[ "$resolved" == "$ip1" ]] || fail "t-1.t.$ns.svc.cluster.local resolves to '$resolved' in t-0, not $ip1"
  local api; api="$(curl -sf "http://$ip0:8080/api")"
  # Authenticated as the pod's service account, which RBAC grants nothing: 403.
  [[ "$api" == 403* && "$api" == *"system:serviceaccount:$ns:default"* ]] \
    || fail "the API server did not authenticate t-0's token as system:serviceaccount:$ns:default: $api"

  step "graceful deletion: preStop, then SIGTERM; the volume stays"
  local uid0; uid0="$(pod_field "$ns" t-0 '{.metadata.uid}')"
  kubectl delete pod -n "$ns" t-0 --timeout=60s >&2
  wait_until 60 "t-0 recreated and Ready" ready_pod_uid_is_not "$ns" t-0 "$uid0"
  ip0="$(pod_field "$ns" t-0 '{.status.podIP}')"
  local events; events="$(curl -sf "http://$ip0:8080/data" | tr '\n' ',')"
  [[ "$events" == "t-0 start,t-0 prestop,t-0 sigterm,t-0 start," ]] \
    || fail "t-0's volume shows '$events', want start, prestop, sigterm, start"

  step "SIGKILL: restartPolicy Always restarts the container"
  local pid; pid="$(pod_field "$ns" t-1 '{.status.containerStatuses[0].containerID}')"
  pid="${pid#podrunner://}"
  [[ "$pid" =~ ^[0-9]+$ ]] || fail "t-1 has no process id ('$pid')"
  kill -KILL "$pid"
  wait_until 30 "t-1 restarted once and Ready again" restarted_and_ready "$ns" t-1
  [[ "$(pod_field "$ns" t-1 '{.status.containerStatuses[0].lastState.terminated.exitCode}')" == 137 ]] \
    || fail "t-1's last state is not 'terminated by SIGKILL (137)'"

  step "claims deleted: volumes and their directories go"
  kubectl delete statefulset -n "$ns" t --timeout=60s >&2
  wait_until 60 "t's pods gone" count_is 0 kubectl get pods -n "$ns" -o name
  kubectl delete pvc -n "$ns" --all --timeout=60s >&2
  wait_until 60 "the volumes were deleted" count_is 0 kubectl get pv -o name
  local left; left="$(find "$E2E_PODRUNNER_DIR/volumes" -mindepth 1 -maxdepth 1 | wc -l)"
  ((left == 0)) || fail "$left volume directories left in $E2E_PODRUNNER_DIR/volumes"
  delete_namespace "$ns"
}

# --- install -----------------------------------------------------------------

lease_held_by() {
  [[ "$(kubectl get lease -n "$1" "$2" -o jsonpath='{.spec.holderIdentity}')" == "$3" ]]
}

# Install the way users do: the CRDs with kubectl, the operator with helm (its
# pod runs through the pod runner under the chart's RBAC). The operator stays
# installed for the scenarios after this one.
scenario_install() {
  [[ "${E2E_USE_EXISTING_CLUSTER:-0}" != 1 ]] || skip "on an existing cluster: needs registry images of the operator, node and load generator (not supported yet)"
  [[ "${E2E_PODRUNNER:-0}" == 1 ]] || skip "no pod runner to run the operator's pod"
  install_operator
}

install_operator() {
  [[ -f "$root/charts/shardkv-operator/Chart.yaml" ]] || skip "no charts/shardkv-operator yet"
  step "kubectl apply -f crds/"
  kubectl apply -f "$root/crds/" >&2
  kubectl wait --for condition=Established --timeout=60s crd/shardclusters.shardkv.dev >&2
  step "helm install shardkv-operator"
  helm lint "$root/charts/shardkv-operator" >&2
  helm install shardkv-operator "$root/charts/shardkv-operator" -n shardkv-system --create-namespace \
    --set image.repository=shardkv-operator --set image.tag=e2e --wait --timeout 120s >&2 \
    || fail "helm install did not become ready within 120s (see the pod runner log)"
  local pod
  pod="$(kubectl get pods -n shardkv-system -l app.kubernetes.io/name=shardkv-operator -o jsonpath='{.items[0].metadata.name}')"
  [[ -n "$pod" ]] || fail "no operator pod"
  kubectl wait -n shardkv-system --for=condition=Ready "pod/$pod" --timeout=60s >&2 || fail "operator pod $pod not Ready"
  step "the operator (as its service account) holds its Lease"
  wait_until 60 "Lease shardkv-system/shardkv-operator held by $pod" lease_held_by shardkv-system shardkv-operator "$pod"
  kubectl get pods,lease -n shardkv-system >&2
}

# --- a ShardCluster under load ---------------------------------------------

CLUSTER_NS=e2e-cluster
CLUSTER=demo

need_cluster_prereqs() {
  [[ "${E2E_USE_EXISTING_CLUSTER:-0}" != 1 ]] || skip "on an existing cluster: needs registry images of the operator, node and load generator (not supported yet)"
  [[ "${E2E_PODRUNNER:-0}" == 1 ]] || skip "no pod runner"
  [[ -n "${E2E_NODE_IMAGE:-}" ]] || skip "no shardkv-node binary (cargo build --release -p shardkv-node; or E2E_NODE_BIN)"
  if ! helm status shardkv-operator -n shardkv-system >/dev/null 2>&1; then
    step "the operator is not installed yet: installing it"
    install_operator
  fi
}

need_cluster() {
  need_cluster_prereqs
  kubectl get shardcluster -n "$CLUSTER_NS" "$CLUSTER" >/dev/null 2>&1 || skip "no ShardCluster $CLUSTER_NS/$CLUSTER (the cluster scenario creates it)"
  wait_until 120 "ShardCluster $CLUSTER Available" cluster_available
}

cluster_available() {
  [[ "$(kubectl get shardcluster -n "$CLUSTER_NS" "$CLUSTER" -o jsonpath='{.status.conditions[?(@.type=="Available")].status}')" == True ]]
}

# The client Service's endpoints (its EndpointSlices), as host:port,...
client_endpoints() {
  kubectl get endpointslices -n "$CLUSTER_NS" -l kubernetes.io/service-name="$CLUSTER" \
    -o jsonpath='{range .items[*].endpoints[*]}{.addresses[0]}:7100,{end}' | sed 's/,$//'
}

# start_load NAME SECONDS: the load generator as a pod (so it resolves the
# pods' DNS names like any in-cluster client), its history in SCENARIO_DIR.
start_load() {
  local name="$1" seconds="$2" eps
  eps="$(client_endpoints)"
  [[ -n "$eps" ]] || fail "the client Service $CLUSTER has no endpoints"
  step "load '$name' for ${seconds}s through $eps"
  kubectl apply -n "$CLUSTER_NS" -f - >&2 <<YAML
apiVersion: v1
kind: Pod
metadata: {name: load-$name, labels: {app: e2e-load}}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 30
  containers:
  - name: load
    image: e2e-load:latest
    args: [--endpoints, "$eps", --duration, "$seconds", --clients, "8", --keys, "16",
           --prefix, "$name", --history, /history/$name.jsonl]
    volumeMounts: [{name: history, mountPath: /history}]
  volumes:
  - name: history
    hostPath: {path: "$SCENARIO_DIR", type: Directory}
YAML
}

load_done() {
  local phase; phase="$(kubectl get pod -n "$CLUSTER_NS" "load-$1" -o jsonpath='{.status.phase}')"
  [[ "$phase" == Succeeded ]] && return 0
  [[ "$phase" == Failed ]] && { cat "$E2E_PODRUNNER_DIR/logs/${CLUSTER_NS}_load-$1_load.log" >&2; fail "load '$1' failed"; }
  return 1
}

# finish_load NAME SECONDS: wait for the load pod, then check its history.
finish_load() {
  local name="$1" seconds="$2"
  wait_until $((seconds + 90)) "load '$name' finished" load_done "$name"
  cat "$E2E_PODRUNNER_DIR/logs/${CLUSTER_NS}_load-${name}_load.log" >&2
  kubectl delete pod -n "$CLUSTER_NS" "load-$name" --wait=false >&2
  step "checking the history of '$name'"
  checker -timeout 120s -visualize "$SCENARIO_DIR/$name.html" "$SCENARIO_DIR/$name.jsonl" >&2 \
    || fail "history '$name': not linearizable or a lost acknowledged write (see $SCENARIO_DIR/$name.html)"
}

scenario_cluster() {
  need_cluster_prereqs
  kubectl get namespace "$CLUSTER_NS" >/dev/null 2>&1 || kubectl create namespace "$CLUSTER_NS" >&2
  step "ShardCluster $CLUSTER: meta 3, 2 groups x 3"
  kubectl apply -n "$CLUSTER_NS" -f - >&2 <<YAML
apiVersion: shardkv.dev/v1alpha1
kind: ShardCluster
metadata: {name: $CLUSTER}
spec:
  image: $E2E_NODE_IMAGE
  shards: 16
  groups: 2
  replicasPerGroup: 3
  meta: {replicas: 3}
  storage: {size: 64Mi}
  pvcRetention: {whenScaled: Delete, whenDeleted: Delete}
YAML
  wait_until 240 "ShardCluster $CLUSTER Available" cluster_available
  kubectl get shardcluster,statefulsets,pods -n "$CLUSTER_NS" -o wide >&2
  start_load steady 15
  finish_load steady 15
}

history_has() { [[ -f "$1" && "$(wc -l <"$1")" -ge "$2" ]]; }
restart_count_above() { (("$(pod_field "$1" "$2" '{.status.containerStatuses[0].restartCount}')" > "$3")); }

pod_of_group_ready() { kubectl wait -n "$CLUSTER_NS" --for=condition=Ready "pod/$1" --timeout=1s; }

# leader_pod GROUP_ID: the pod of the group's leader, from the ShardCluster status.
leader_pod() {
  local id
  id="$(kubectl get shardcluster -n "$CLUSTER_NS" "$CLUSTER" -o jsonpath="{.status.groups[?(@.groupId==$1)].leader}")"
  [[ -n "$id" ]] || return 1
  kubectl get shardcluster -n "$CLUSTER_NS" "$CLUSTER" -o jsonpath="{.status.groups[?(@.groupId==$1)].members[?(@.nodeId==$id)].pod}"
}

scenario_kill() {
  need_cluster
  local pod pid restarts
  pod="$(leader_pod 1)" || fail "group 1 reports no leader"
  [[ -n "$pod" ]] || fail "group 1's leader has no pod in the status"
  step "group 1's leader is $pod"
  restarts="$(pod_field "$CLUSTER_NS" "$pod" '{.status.containerStatuses[0].restartCount}')"
  start_load kill 25
  wait_until 30 "load 'kill' has recorded 2000 events" history_has "$SCENARIO_DIR/kill.jsonl" 2000
  pid="$(pod_field "$CLUSTER_NS" "$pod" '{.status.containerStatuses[0].containerID}')"; pid="${pid#podrunner://}"
  [[ "$pid" =~ ^[0-9]+$ ]] || fail "$pod has no process id"
  step "SIGKILL $pod (pid $pid)"
  kill -KILL "$pid"
  wait_until 60 "$pod restarted" restart_count_above "$CLUSTER_NS" "$pod" "$restarts"
  wait_until 120 "$pod Ready again (rejoined, caught up)" pod_of_group_ready "$pod"
  # A crash that takes the pod object along: a forced deletion (the pod runner
  # SIGKILLs at once); the StatefulSet recreates the pod on the same volume.
  local pod2 uid2
  pod2="$(leader_pod 2)" || fail "group 2 reports no leader"
  uid2="$(pod_field "$CLUSTER_NS" "$pod2" '{.metadata.uid}')"
  step "force-delete group 2's leader $pod2 (SIGKILL, no preStop)"
  kubectl delete pod -n "$CLUSTER_NS" "$pod2" --grace-period=0 --force >&2
  wait_until 120 "$pod2 recreated by its StatefulSet and Ready" ready_pod_uid_is_not "$CLUSTER_NS" "$pod2" "$uid2"
  finish_load kill 25
  wait_until 120 "ShardCluster $CLUSTER Available" cluster_available
}

scenario_graceful() {
  need_cluster
  local pod uid
  pod="$(leader_pod 2)" || fail "group 2 reports no leader"
  [[ -n "$pod" ]] || fail "group 2's leader has no pod in the status"
  step "group 2's leader is $pod"
  uid="$(pod_field "$CLUSTER_NS" "$pod" '{.metadata.uid}')"
  start_load graceful 25
  wait_until 30 "load 'graceful' has recorded 2000 events" history_has "$SCENARIO_DIR/graceful.jsonl" 2000
  step "delete $pod (preStop, SIGTERM)"
  kubectl delete pod -n "$CLUSTER_NS" "$pod" --timeout=120s >&2
  wait_until 120 "$pod recreated and Ready" ready_pod_uid_is_not "$CLUSTER_NS" "$pod" "$uid"
  local log="$E2E_PODRUNNER_DIR/logs/${CLUSTER_NS}_${pod}_node.log"
  grep -qi prestop "$log" || fail "no preStop report in $log"
  grep -i prestop "$log" | tail -n 3 >&2
  grep -q '\\"was_leader\\":true,\\"new_leader\\":[0-9]' "$log" || fail "the preStop report does not show leadership handed over"
  # The restart replays only the log suffix after the preStop snapshot.
  local ip entries
  ip="$(pod_field "$CLUSTER_NS" "$pod" '{.status.podIP}')"
  entries="$(curl -sf "http://$ip:7180/metrics" | awk '/^shardkv_startup_log_entries /{print $2}')"
  [[ -n "$entries" ]] || fail "no shardkv_startup_log_entries metric on $pod"
  step "$pod replayed $entries log entries at start-up"
  ((entries < 2000)) || fail "$pod replayed $entries entries: not a short suffix"
  finish_load graceful 25
  wait_until 120 "ShardCluster $CLUSTER Available" cluster_available
}

all_voters() {
  local roles
  roles="$(kubectl get shardcluster -n "$CLUSTER_NS" "$CLUSTER" -o jsonpath='{.status.groups[*].members[*].role}')" || return 1
  [[ -n "$roles" ]] && ! tr ' ' '\n' <<<"$roles" | grep -v '^$' | grep -qvx voter
}

cluster_ready_replicas_is() {
  [[ "$(kubectl get shardcluster -n "$CLUSTER_NS" "$CLUSTER" -o jsonpath='{.status.readyReplicas}')" == "$1" ]] && cluster_available
}

scenario_scale() {
  need_cluster
  start_load scale 60
  step "replicasPerGroup 3 -> 5"
  kubectl patch shardcluster -n "$CLUSTER_NS" "$CLUSTER" --type merge -p '{"spec":{"replicasPerGroup":5}}' >&2
  wait_until 180 "13 ready node pods (meta 3 + 2 x 5) and Available" cluster_ready_replicas_is 13
  wait_until 60 "every group member a voter" all_voters
  kubectl get shardcluster -n "$CLUSTER_NS" "$CLUSTER" -o jsonpath='{range .status.groups[*]}{.groupId}: {range .members[*]}{.pod}={.role} {end}{"\n"}{end}' >&2
  step "replicasPerGroup 5 -> 3"
  kubectl patch shardcluster -n "$CLUSTER_NS" "$CLUSTER" --type merge -p '{"spec":{"replicasPerGroup":3}}' >&2
  wait_until 180 "9 node pods and Available" cluster_ready_replicas_is 9
  wait_until 60 "group 1 back to 3 pods" count_is 3 kubectl get pods -n "$CLUSTER_NS" -l shardkv.dev/group=1 -o name
  finish_load scale 60
}

scenario_delete() {
  need_cluster
  step "delete ShardCluster $CLUSTER (finalizer, garbage collection, pvcRetention Delete)"
  kubectl delete shardcluster -n "$CLUSTER_NS" "$CLUSTER" --timeout=180s >&2 || fail "ShardCluster not deleted within 180s"
  wait_until 120 "StatefulSets garbage collected" count_is 0 kubectl get statefulsets -n "$CLUSTER_NS" -o name
  wait_until 120 "node pods gone" count_is 0 kubectl get pods -n "$CLUSTER_NS" -l shardkv.dev/cluster="$CLUSTER" -o name
  wait_until 120 "PVCs deleted (pvcRetention whenDeleted: Delete)" count_is 0 kubectl get pvc -n "$CLUSTER_NS" -o name
  delete_namespace "$CLUSTER_NS"
}
