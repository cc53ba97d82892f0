# Scenarios of e2e/run, sourced by it. Each scenario_NAME (a dash in the
# scenario's name is an underscore here) runs as its own `bash -euo pipefail`
# process with inherit_errexit, KUBECONFIG pointing at the cluster,
# kubectl/helm and the history checker on PATH, SHARDKV_BIN (the workspace's
# release binaries), SCENARIO_DIR for its files and NOTE_FILE for lines of its
# table row. It passes by returning 0, fails with `fail MSG` or any failing
# command, and is skipped with `skip REASON` (a failure under CI=true).
# shellcheck shell=bash
# e2e/run defines these before sourcing this file.
: "${e2e:?}" "${root:?}" "${work:?}"

# The scenario's own stderr (its log), kept for fail: a predicate polled by wait_until runs
# with its output discarded, and may fail the scenario all the same.
exec {SCENARIO_LOG_FD}>&2
fail() { echo "FAIL: $*" >&"$SCENARIO_LOG_FD"; exit 1; }
skip() { echo "$*" >"$SKIP_FILE"; echo "SKIP: $*" >&2; exit 77; }
step() { echo "[$(date +%T)] $*" >&2; }

# on_exit CMD: run CMD when the scenario ends, however it ends (after the
# commands registered before it).
ON_EXIT=()
on_exit() { ON_EXIT+=("$1"); trap run_on_exit EXIT; }
run_on_exit() { local c; for c in "${ON_EXIT[@]}"; do eval "$c" || true; done; }

# wait_until TIMEOUT_SECONDS DESCRIPTION CMD...: poll CMD every 0.25 s until it
# succeeds; fail with DESCRIPTION when the deadline passes (and what CMD last said was
# missing, if it set WHY).
WHY=""
wait_until() {
  local timeout="$1" what="$2"; shift 2
  local deadline=$((SECONDS + timeout)) t0=$SECONDS
  WHY=""
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || fail "timed out after ${timeout}s waiting for: $what${WHY:+ (last seen: $WHY)}"
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
SHARDS=16
LOAD_KEYS=16
# What every disruptive scenario asserts from its history's timestamps (besides
# linearizability and no lost write): the load ran before, during and after
# each fault; no key went longer than MAX_GAP without a successful operation
# (every group keeps a quorum in these scenarios); at least MIN_SUCCESS of the
# operations succeeded.
MAX_GAP=10s
MIN_SUCCESS=0.9
# A node stopped through preStop replays at most this many log entries at its
# next start: what the load appended between the preStop snapshot and the exit.
MAX_REPLAY_AFTER_PRESTOP=500
# How long the paused leader stays stopped once the others elected a new one.
PAUSE_HOLD=8

need_cluster_prereqs() {
  [[ "${E2E_USE_EXISTING_CLUSTER:-0}" != 1 ]] || skip "on an existing cluster: needs registry images of the operator, node and load generator (not supported yet)"
  [[ "${E2E_PODRUNNER:-0}" == 1 ]] || skip "no pod runner"
  if ! helm status shardkv-operator -n shardkv-system >/dev/null 2>&1; then
    step "the operator is not installed yet: installing it"
    install_operator
  fi
}

need_cluster() {
  need_cluster_prereqs
  kubectl get shardcluster -n "$CLUSTER_NS" "$CLUSTER" >/dev/null 2>&1 || skip "no ShardCluster $CLUSTER_NS/$CLUSTER (the cluster scenario creates it)"
  wait_until 120 "ShardCluster $CLUSTER Available" cluster_available
  use_client_tls
}

# The Secret of the cluster's client certificate, which the operator makes (TLS is on by
# default); load pods mount it.
CLIENT_TLS_SECRET="$CLUSTER-client-tls"

# secret_key SECRET KEY: one key of a Secret in the cluster's namespace, decoded.
secret_key() {
  kubectl get secret -n "$CLUSTER_NS" "$1" -o jsonpath="{.data.${2//./\\.}}" | base64 -d
}

# use_client_tls: the host's shardkv CLI (node_status, cli, direct) connects with the
# cluster's client certificate, copied from its Secret into this scenario's directory.
use_client_tls() {
  local dir="$SCENARIO_DIR/client-tls" k
  mkdir -p "$dir"
  for k in ca.crt tls.crt tls.key; do
    secret_key "$CLIENT_TLS_SECRET" "$k" >"$dir/$k" || fail "no key $k in Secret $CLIENT_TLS_SECRET"
    [[ -s "$dir/$k" ]] || fail "key $k of Secret $CLIENT_TLS_SECRET is empty"
  done
  chmod 600 "$dir/tls.key"
  export SHARDKV_CA="$dir/ca.crt" SHARDKV_CERT="$dir/tls.crt" SHARDKV_KEY="$dir/tls.key"
}

cluster_available() {
  [[ "$(kubectl get shardcluster -n "$CLUSTER_NS" "$CLUSTER" -o jsonpath='{.status.conditions[?(@.type=="Available")].status}')" == True ]]
}

# A line for this scenario's row in e2e/run's table.
note() { echo "$*" >>"$NOTE_FILE"; }
epoch_ns() { date +%s%N; }

# The meta group's pods by their DNS names, as host:port,...: where clients fetch the shard
# map. (The client Service has a cluster IP, which nothing routes here; its pods' names are
# what the node certificate names, so TLS clients check them.)
client_endpoints() {
  kubectl get pods -n "$CLUSTER_NS" -l "shardkv.dev/cluster=$CLUSTER,shardkv.dev/group=0" \
    -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}' | while read -r p; do echo "$(pod_dns "$p"):7100"; done | paste -sd,
}

# pod_dns POD: the DNS name of a node pod (POD.GROUP.NAMESPACE.svc, its StatefulSet's headless
# Service being named like the group), which its certificate carries.
pod_dns() { echo "$1.${1%-*}.$CLUSTER_NS.svc"; }

# load_pod NAME ARGS...: the load generator as a pod named load-NAME (so it
# resolves the pods' DNS names like any in-cluster client), SCENARIO_DIR
# mounted at /history, the client certificate Secret (LOAD_TLS_SECRET, the
# cluster's by default) at /tls.
load_pod() {
  local name="$1" eps arg args="" secret="${LOAD_TLS_SECRET:-$CLIENT_TLS_SECRET}"; shift
  eps="$(client_endpoints)"
  [[ -n "$eps" ]] || fail "the meta group of $CLUSTER has no pods"
  for arg in --endpoints "$eps" --ca /tls/ca.crt --cert /tls/tls.crt --key /tls/tls.key "$@"; do
    args+="\"$arg\", "
  done
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
    args: [${args%, }]
    volumeMounts: [{name: history, mountPath: /history}, {name: tls, mountPath: /tls, readOnly: true}]
  volumes:
  - name: history
    hostPath: {path: "$SCENARIO_DIR", type: Directory}
  - name: tls
    secret: {secretName: $secret}
YAML
}

# start_load NAME MAX_SECONDS [KEYS]: load on its own key prefix (KEYS keys,
# LOAD_KEYS by default) until finish_load stops it (MAX_SECONDS bounds it should
# the scenario die), its history in SCENARIO_DIR/NAME.jsonl. The durability
# scenario reads every prefix back.
start_load() {
  local name="$1" seconds="$2" keys="${3:-$LOAD_KEYS}"
  step "load '$name' on $keys keys (at most ${seconds}s)"
  echo "$keys" >"$SCENARIO_DIR/$name.keys"
  load_pod "$name" --duration "$seconds" --stop-file "/history/$name.stop" --clients 8 --keys "$keys" \
    --prefix "$name" --history "/history/$name.jsonl"
  # A scenario that fails does not leave its load running into the next one.
  on_exit "touch '$SCENARIO_DIR/$name.stop'"
}

load_done() {
  local phase; phase="$(kubectl get pod -n "$CLUSTER_NS" "load-$1" -o jsonpath='{.status.phase}')"
  [[ "$phase" == Succeeded ]] && return 0
  [[ "$phase" == Failed ]] && { cat "$E2E_PODRUNNER_DIR/logs/${CLUSTER_NS}_load-$1_load.log" >&2; fail "load '$1' failed"; }
  return 1
}

history_has() { [[ -f "$1" && "$(wc -l <"$1")" -ge "$2" ]]; }

# wait_load_progress NAME EVENTS: the load recorded EVENTS more events from now on.
wait_load_progress() {
  local file="$SCENARIO_DIR/$1.jsonl" have=0
  [[ -f "$file" ]] && have="$(wc -l <"$file")"
  wait_until 90 "load '$1' recorded $2 more events" history_has "$file" $((have + $2))
}

# run_checker LABEL CHECKER_ARGS...: check a history (linearizable, nothing
# lost, and what the flags ask); fail with the checker's finding. Sets SUMMARY.
run_checker() {
  local label="$1" out rc=0; shift
  step "checking the history of '$label'"
  out="$(checker -timeout 120s -visualize "$SCENARIO_DIR/$label.html" "$@")" || rc=$?
  echo "$out" >&2
  SUMMARY="$(sed -n 's/^summary: //p' <<<"$out" | tail -n1)"
  ((rc == 0)) || fail "history '$label': $(grep -E '^[A-Z][A-Z ]+[A-Z0-9]' <<<"$out" | head -n1 | cut -c1-160) (see $SCENARIO_DIR/$label.html)"
}

# finish_load NAME CHECKER_FLAGS...: stop the load, wait for its pod, check its
# history; the checker's summary goes into the table.
finish_load() {
  local name="$1"; shift
  touch "$SCENARIO_DIR/$name.stop"
  wait_until 90 "load '$name' finished" load_done "$name"
  cat "$E2E_PODRUNNER_DIR/logs/${CLUSTER_NS}_load-${name}_load.log" >&2
  kubectl delete pod -n "$CLUSTER_NS" "load-$name" --wait=false >&2
  run_checker "$name" "$@" "$SCENARIO_DIR/$name.jsonl"
  note "$name: $SUMMARY"
  # Checked and complete: the durability scenario reads its keys back.
  echo "$name $SCENARIO_DIR/$name.jsonl $(cat "$SCENARIO_DIR/$name.keys")" >>"$work/loads"
}

# finish_disruptive_load NAME FAULT_START_NS FAULT_END_NS...: finish_load with
# the overlap, gap and success-share checks for each fault window.
finish_disruptive_load() {
  local name="$1" flags=(-max-gap "$MAX_GAP" -min-success "$MIN_SUCCESS"); shift
  while (($#)); do flags+=(-fault "$1:$2"); shift 2; done
  finish_load "$name" "${flags[@]}"
}

# --- what the nodes say about themselves -----------------------------------

pod_ip() { pod_field "$CLUSTER_NS" "$1" '{.status.podIP}'; }

# node_status POD: the node's own Admin Status (JSON), asked at its address. (Given a meta
# node, the CLI shows the whole cluster, with that node's Status as the meta group's one node.)
node_status() {
  local ip; ip="$(pod_ip "$1")"
  [[ -n "$ip" ]] || return 1
  "$SHARDKV_BIN/shardkv" --endpoints "$ip:7100" --tls-server-name "$(pod_dns "$1")" --timeout-ms 2000 status --json \
    | jq -ce 'if type == "array" then .[0].status else .meta.nodes[0].status end // empty'
}

# status_field POD JQ: one field of the node's own status.
status_field() { local s; s="$(node_status "$1")" && jq -r "$2" <<<"$s"; }

group_pods() {
  kubectl get pods -n "$CLUSTER_NS" -l "shardkv.dev/group=$1" -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}'
}

# pod_of GROUP NODE_ID: node ids are pod ordinals + 1.
pod_of() { echo "$CLUSTER-g$1-$(($2 - 1))"; }

# node_leader GROUP: the pod whose node says it leads the group.
node_leader() {
  local p
  for p in $(group_pods "$1"); do
    [[ "$(status_field "$p" .state 2>/dev/null)" == Leader ]] && { echo "$p"; return 0; }
  done
  return 1
}

# led_after_kill GROUP OLD_POD OLD_TERM: the group is led again after its leader
# was killed. Every other member answers and names one leader: either in a
# term after OLD_TERM (leadership moved), or, in OLD_TERM itself, the killed
# node's new process, which says it leads (openraft resumes a leader whose
# vote and log were durable when it restarts within the followers' election
# timeout; the killed process itself can answer nothing). Prints "moved" or
# "resumed".
led_after_kill() {
  local g="$1" old="$2" term="$3" p s leader="" t=""
  for p in $(group_pods "$g"); do
    [[ "$p" == "$old" ]] && continue
    s="$(node_status "$p")" || return 1
    jq -e '.leader_id != null' <<<"$s" >/dev/null || return 1
    [[ -z "$leader" || ("$leader" == "$(jq .leader_id <<<"$s")" && "$t" == "$(jq .term <<<"$s")") ]] || return 1
    leader="$(jq .leader_id <<<"$s")" t="$(jq .term <<<"$s")"
  done
  [[ -n "$leader" ]] || return 1
  if ((t > term)); then echo moved; return 0; fi
  [[ "$(pod_of "$g" "$leader")" == "$old" && "$(status_field "$old" .state 2>/dev/null)" == Leader ]] && echo resumed
}

# wait_led_after_kill GROUP OLD_POD OLD_TERM: wait for led_after_kill, note the outcome.
wait_led_after_kill() {
  wait_until 60 "group $1 led again after $2 was killed (term $3)" led_after_kill "$@"
  note "group $1: $(led_after_kill "$@") after $2 was killed"
}

# new_leader_elected GROUP OLD_POD: every other member of the group answers and
# names one leader, not OLD_POD's node.
new_leader_elected() {
  local g="$1" old="$2" p leader seen=""
  for p in $(group_pods "$g"); do
    [[ "$p" == "$old" ]] && continue
    leader="$(status_field "$p" '.leader_id // empty')" || return 1
    [[ -n "$leader" && "$(pod_of "$g" "$leader")" != "$old" ]] || return 1
    [[ -z "$seen" || "$seen" == "$leader" ]] || return 1
    seen="$leader"
  done
  [[ -n "$seen" ]]
}

# group_converged GROUP: every member answers, Ready, and names the same leader.
group_converged() {
  local g="$1" p leader seen=""
  for p in $(group_pods "$g"); do
    pod_of_group_ready "$p" || return 1
    leader="$(status_field "$p" '.leader_id // empty')" || return 1
    [[ -n "$leader" && (-z "$seen" || "$seen" == "$leader") ]] || return 1
    seen="$leader"
  done
  [[ -n "$seen" ]]
}

# members_of GROUP: the node ids in the group's membership (voters and
# learners), by its leader's own account, as "1,2,3".
members_of() {
  local leader; leader="$(node_leader "$1")" || return 1
  status_field "$leader" '[.members[].node_id] | sort | map(tostring) | join(",")'
}
# members_are GROUP LIST: every member of the group is a voter, and they are
# exactly LIST ("1,2,3"), by one look at its leader's Status.
members_are() {
  local leader; leader="$(node_leader "$1")" || return 1
  [[ "$(status_field "$leader" '[.members[] | select(.role == "voter") | .node_id] as $v
    | if ($v | length) == (.members | length) then $v | sort | map(tostring) | join(",") else "learners" end')" == "$2" ]]
}

pod_of_group_ready() { kubectl wait -n "$CLUSTER_NS" --for=condition=Ready "pod/$1" --timeout=1s; }
restart_count_above() { (("$(pod_field "$1" "$2" '{.status.containerStatuses[0].restartCount}')" > "$3")); }

# container_pid POD: the pid of the pod's container process (the pod runner's containerID).
container_pid() {
  local pid; pid="$(pod_field "$CLUSTER_NS" "$1" '{.status.containerStatuses[0].containerID}')"
  pid="${pid#podrunner://}"
  [[ "$pid" =~ ^[0-9]+$ ]] || fail "$1 has no process id ('$pid')"
  echo "$pid"
}

# --- scenarios on the shared ShardCluster -----------------------------------

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
  shards: $SHARDS
  groups: 2
  replicasPerGroup: 3
  meta: {replicas: 3}
  storage: {size: 64Mi}
  pvcRetention: {whenScaled: Delete, whenDeleted: Delete}
YAML
  wait_until 240 "ShardCluster $CLUSTER Available" cluster_available
  kubectl get shardcluster,statefulsets,pods -n "$CLUSTER_NS" -o wide >&2
  use_client_tls
  start_load steady 120
  wait_load_progress steady 3000
  finish_load steady
}

# --- tls ----------------------------------------------------------------------

# served_serial POD: the serial of the certificate POD's node presents to a new connection.
served_serial() {
  local ip; ip="$(pod_ip "$1")"
  openssl s_client -connect "$ip:7100" -CAfile "$SHARDKV_CA" -cert "$SHARDKV_CERT" -key "$SHARDKV_KEY" </dev/null 2>/dev/null \
    | openssl x509 -noout -serial | sed 's/^serial=//'
}

# cluster_id_of CERT: the cluster id in a shardkv certificate's identity (spiffe://shardkv/ID/ROLE/NAME).
cluster_id_of() {
  openssl x509 -in "$1" -noout -ext subjectAltName | grep -o 'URI:spiffe://shardkv/[^ ,]*' | cut -d/ -f4
}

node_pods() { kubectl get pods -n "$CLUSTER_NS" -l shardkv.dev/cluster="$CLUSTER" -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}'; }

# The shared cluster's spec names no TLS, so it runs with TLS: every connection (load,
# CLI, node to node, operator to node) is mutual TLS with the operator's certificates.
scenario_tls() {
  need_cluster
  local enabled; enabled="$(kubectl get shardcluster -n "$CLUSTER_NS" "$CLUSTER" -o jsonpath='{.spec.tls.enabled}')"
  [[ "$enabled" == true ]] || fail "spec.tls.enabled defaults to '$enabled', want true"
  local ca_expiry; ca_expiry="$(kubectl get shardcluster -n "$CLUSTER_NS" "$CLUSTER" -o jsonpath='{.status.tls.caNotAfter}')"
  [[ -n "$ca_expiry" ]] || fail "status.tls.caNotAfter is empty"
  note "CA valid until $ca_expiry"
  local cert_env; cert_env="$(kubectl get statefulset -n "$CLUSTER_NS" "$CLUSTER-g1" \
    -o jsonpath='{.spec.template.spec.containers[0].env[?(@.name=="SHARDKV_TLS_CERT")].value}')"
  [[ -n "$cert_env" ]] || fail "group 1's pods run without SHARDKV_TLS_CERT"
  kubectl get networkpolicy -n "$CLUSTER_NS" -l shardkv.dev/cluster="$CLUSTER" -o name | grep -q . \
    || fail "no NetworkPolicy for $CLUSTER"

  local pod="$CLUSTER-g1-0" ip out
  ip="$(pod_ip "$pod")"
  step "a plaintext client is refused"
  if out="$(env -u SHARDKV_CA -u SHARDKV_CERT -u SHARDKV_KEY "$SHARDKV_BIN/shardkv" --endpoints "$ip:7100" --timeout-ms 3000 get tls-probe 2>&1)"; then
    fail "a plaintext client read from $pod: $out"
  fi
  [[ "$out" == *"server requires TLS"* ]] || fail "the plaintext client's error does not say TLS is required: $out"

  step "/lifecycle/prestop from outside the pod is refused; /readyz answers"
  out="$(curl -s -o /dev/null -w '%{http_code}' "http://$ip:7180/lifecycle/prestop")"
  [[ "$out" == 403 ]] || fail "GET /lifecycle/prestop from the host answered HTTP $out, want 403"
  [[ "$(curl -s -o /dev/null -w '%{http_code}' "http://$ip:7180/readyz")" == 200 ]] || fail "$pod is no longer ready"

  step "a pod with a client certificate of another CA is refused"
  local foreign="$SCENARIO_DIR/foreign" id
  id="$(cluster_id_of "$SHARDKV_CERT")"
  [[ -n "$id" ]] || fail "no cluster id in the client certificate's identity"
  "$SHARDKV_BIN/shardkv" certs init --dir "$foreign" --cluster "$id" >&2
  kubectl create secret generic -n "$CLUSTER_NS" foreign-client-tls --from-file=ca.crt="$SHARDKV_CA" \
    --from-file=tls.crt="$foreign/client.pem" --from-file=tls.key="$foreign/client-key.pem" >&2
  on_exit "kubectl delete secret -n '$CLUSTER_NS' foreign-client-tls --ignore-not-found >&2"
  LOAD_TLS_SECRET=foreign-client-tls load_pod foreign --read-back --keys 2 --prefix tls-foreign --history /history/foreign.jsonl
  wait_until 90 "the foreign-certificate pod finished" pod_phase_is "$CLUSTER_NS" load-foreign Failed
  kubectl delete pod -n "$CLUSTER_NS" load-foreign --wait=false >&2
  grep -q "the server refused our certificate: certificate not signed by this cluster's CA" "$SCENARIO_DIR/foreign.jsonl" \
    || fail "the foreign pod's errors do not name the wrong CA: $(head -c 400 "$SCENARIO_DIR/foreign.jsonl")"
  local logs=() p
  for p in $(node_pods); do logs+=("$E2E_PODRUNNER_DIR/logs/${CLUSTER_NS}_${p}_node.log"); done
  grep -qs "the peer's certificate is not signed by this cluster's CA" "${logs[@]}" \
    || fail "no node logged the refusal of the foreign certificate"

  start_load tls 60
  wait_load_progress tls 2000
  finish_load tls -min-success 1
}

pod_phase_is() { [[ "$(pod_field "$1" "$2" '{.status.phase}')" == "$3" ]]; }

# Every node certificate is renewed under load (the annotation asks for it now): the
# Secrets change in place, every node serves the new certificate to new connections without
# a restart, and no request fails.
scenario_tls_rotate() {
  need_cluster
  local p before=() restarts_before
  for p in $(node_pods); do before+=("$p=$(served_serial "$p")"); done
  step "serials served before: ${before[*]}"
  restarts_before="$(node_pod_incarnations)"
  start_load rotate 180
  wait_load_progress rotate 1000
  local token; token="rotate-$(date +%s)"
  local t0; t0="$(epoch_ns)"
  step "annotate shardkv.dev/renew-certificates=$token"
  kubectl annotate shardcluster -n "$CLUSTER_NS" "$CLUSTER" --overwrite "shardkv.dev/renew-certificates=$token" >&2
  wait_until 60 "status.tls.renewalToken is $token" renewal_token_is "$token"
  local entry pod serial
  for entry in "${before[@]}"; do
    pod="${entry%%=*}" serial="${entry#*=}"
    wait_until 60 "$pod serves a certificate other than serial $serial" serves_another_serial "$pod" "$serial"
  done
  wait_load_progress rotate 1000
  local t1; t1="$(epoch_ns)"
  # Rotation is not a fault the load may see: no request fails (-min-success 1).
  finish_load rotate -fault "$t0:$t1" -max-gap "$MAX_GAP" -min-success 1
  local restarts_after
  restarts_after="$(node_pod_incarnations)"
  [[ "$restarts_after" == "$restarts_before" ]] || fail "pods were restarted or replaced by the rotation: before '$restarts_before', after '$restarts_after'"
  # Published before the status that named the token; listed through events.k8s.io (a core/v1
  # list with a reason field selector once came back empty here seconds after the Events were
  # written).
  wait_until 30 "a CertificateRenewed Event for $CLUSTER-node-tls since the annotation" \
    renewed_since "$((t0 / 1000))" "$CLUSTER-node-tls"
  note "renewed ${#before[@]} nodes' certificates in $(( (t1 - t0) / 1000000 )) ms under load"
}

# renewed_since SINCE_US SECRET: a CertificateRenewed Event for SECRET emitted after SINCE_US.
renewed_since() { events_since CertificateRenewed "$1" | grep -q "in Secret $2:"; }

renewal_token_is() {
  [[ "$(kubectl get shardcluster -n "$CLUSTER_NS" "$CLUSTER" -o jsonpath='{.status.tls.renewalToken}')" == "$1" ]]
}

serves_another_serial() { local s; s="$(served_serial "$1")" && [[ -n "$s" && "$s" != "$2" ]]; }

scenario_kill() {
  need_cluster
  start_load kill 300
  wait_load_progress kill 2000
  local pod pid restarts term t_fault t_healed
  pod="$(node_leader 1)" || fail "no node of group 1 says it leads"
  term="$(status_field "$pod" .term)"
  step "group 1's leader, by its own Status: $pod (term $term)"
  restarts="$(pod_field "$CLUSTER_NS" "$pod" '{.status.containerStatuses[0].restartCount}')"
  pid="$(container_pid "$pod")"
  t_fault="$(epoch_ns)"
  step "SIGKILL $pod (pid $pid)"
  kill -KILL "$pid"
  wait_led_after_kill 1 "$pod" "$term"
  wait_until 60 "$pod restarted" restart_count_above "$CLUSTER_NS" "$pod" "$restarts"
  wait_until 120 "$pod Ready again (rejoined, caught up)" pod_of_group_ready "$pod"
  # A crash that takes the pod object along: a forced deletion (the pod runner
  # SIGKILLs at once); the StatefulSet recreates the pod on the same volume.
  local pod2 uid2 term2
  pod2="$(node_leader 2)" || fail "no node of group 2 says it leads"
  term2="$(status_field "$pod2" .term)"
  uid2="$(pod_field "$CLUSTER_NS" "$pod2" '{.metadata.uid}')"
  step "force-delete group 2's leader $pod2 (SIGKILL, no preStop; term $term2)"
  kubectl delete pod -n "$CLUSTER_NS" "$pod2" --grace-period=0 --force >&2
  wait_led_after_kill 2 "$pod2" "$term2"
  wait_until 120 "$pod2 recreated by its StatefulSet and Ready" ready_pod_uid_is_not "$CLUSTER_NS" "$pod2" "$uid2"
  t_healed="$(epoch_ns)"
  wait_load_progress kill 2000
  finish_disruptive_load kill "$t_fault" "$t_healed"
  wait_until 120 "ShardCluster $CLUSTER Available" cluster_available
}

# prestop_report LOG FROM_LINE: the first preStop report the node logged after that line.
prestop_report() {
  tail -n "+$2" "$1" | grep -m1 'preStop finished' | jq -ce '.fields.report | fromjson'
}

scenario_graceful() {
  need_cluster
  start_load graceful 300
  wait_load_progress graceful 2000
  local pod uid before log from report
  pod="$(node_leader 2)" || fail "no node of group 2 says it leads"
  step "group 2's leader, by its own Status: $pod"
  uid="$(pod_field "$CLUSTER_NS" "$pod" '{.metadata.uid}')"
  before="$(node_status "$pod")" || fail "no status from $pod"
  log="$E2E_PODRUNNER_DIR/logs/${CLUSTER_NS}_${pod}_node.log"
  from=$(($(wc -l <"$log") + 1))
  local t_fault t_healed; t_fault="$(epoch_ns)"
  step "delete $pod (preStop, SIGTERM)"
  kubectl delete pod -n "$CLUSTER_NS" "$pod" --timeout=120s >&2
  wait_until 120 "$pod recreated and Ready" ready_pod_uid_is_not "$CLUSTER_NS" "$pod" "$uid"
  t_healed="$(epoch_ns)"
  report="$(prestop_report "$log" "$from")" || fail "no preStop report in $log after line $from (this incarnation)"
  step "preStop report of that incarnation: $report"
  local applied_before; applied_before="$(jq .applied_index <<<"$before")"
  jq -e '.clean == true' <<<"$report" >/dev/null || fail "the preStop report is not clean: $report"
  jq -e '.groups[0] | .was_leader and .new_leader != null and .transfer_error == null' <<<"$report" >/dev/null \
    || fail "the preStop report does not show leadership handed over: $report"
  jq -e --argjson a "$applied_before" '.groups[0] | .snapshot_error == null and .snapshot_index >= $a and .purged_index == .snapshot_index' \
    <<<"$report" >/dev/null || fail "the preStop snapshot does not cover the log applied before the deletion (index $applied_before): $report"
  # The restart replays only the log suffix written after the preStop snapshot.
  local on_disk replayed
  on_disk=$(jq '.last_log_index - .purged_index' <<<"$before")
  replayed="$(status_field "$pod" .startup_log_entries)" || fail "no status from the new $pod"
  step "$pod replayed $replayed log entries at start-up; $on_disk were on disk before the preStop"
  note "replayed $replayed of $on_disk entries"
  ((replayed <= MAX_REPLAY_AFTER_PRESTOP)) \
    || fail "$pod replayed $replayed entries after a clean preStop (bound $MAX_REPLAY_AFTER_PRESTOP; $on_disk were on disk before)"
  wait_load_progress graceful 2000
  finish_disruptive_load graceful "$t_fault" "$t_healed"
  wait_until 120 "ShardCluster $CLUSTER Available" cluster_available
}

# --- partitions and pauses --------------------------------------------------

# pod_netns POD: the network namespace the pod runner made for the pod.
pod_netns() { local uid; uid="$(pod_field "$CLUSTER_NS" "$1" '{.metadata.uid}')"; echo "skv-${uid:0:12}"; }

# isolate POD / heal POD: take every route out of the pod's namespace, and put
# them back. Isolated, the pod keeps its address and loopback, but no packet
# of its leaves: no peer, client or probe hears from it.
isolate() {
  local netns; netns="$(pod_netns "$1")"
  ip -n "$netns" -o route show >"$SCENARIO_DIR/routes-$1"
  grep -q '^default' "$SCENARIO_DIR/routes-$1" || fail "no default route in $netns"
  echo "$1" >>"$SCENARIO_DIR/isolated"
  ip -n "$netns" route flush table main
}
heal() {
  local netns r; netns="$(pod_netns "$1")"
  # The link route first: the default route's gateway must be reachable.
  while read -r r; do
    # shellcheck disable=SC2086 # a route is a list of words
    ip -n "$netns" route replace $r
  done < <(grep -v '^default' "$SCENARIO_DIR/routes-$1"; grep '^default' "$SCENARIO_DIR/routes-$1")
  sed -i "/^$1\$/d" "$SCENARIO_DIR/isolated"
}
# heal_all: heal every pod still isolated (the partition scenario's exit trap).
heal_all() {
  local p
  [[ -f "$SCENARIO_DIR/isolated" ]] || return 0
  for p in $(cat "$SCENARIO_DIR/isolated"); do heal "$p" || true; done
}

# in_pod POD CMD...: CMD on the host, inside the pod's network namespace (and its /etc/hosts).
in_pod() { local netns; netns="$(pod_netns "$1")"; shift; ip netns exec "$netns" "$@"; }

# key_served_by POD: a key whose shard the pod's group serves now.
key_served_by() {
  local shards i key
  shards=" $(status_field "$1" '[.shards[] | select(.state == "serving") | .shard] | map(tostring) | join(" ")') "
  for i in $(seq 0 99); do
    key="probe-$i"
    [[ "$shards" == *" $(shard_of "$key") "* ]] && { echo "$key"; return 0; }
  done
  fail "no probe key falls in a shard $1 serves ($shards)"
}

# A key's shard, FNV-1a 64 modulo the shard count, as proto/src/lib.rs: the start of every
# Python program below that needs it.
SHARD_PY='import json, sys
def shard(key, shards):
    h = 0xcbf29ce484222325
    for b in key.encode(): h = ((h ^ b) * 0x100000001b3) % 2**64
    return h % shards
'

# shard_of KEY: the key's shard.
shard_of() { python3 -c "$SHARD_PY"'print(shard(sys.argv[1], int(sys.argv[2])))' "$1" "$SHARDS"; }

# direct POD CMD...: the shardkv CLI run inside POD's network namespace against
# POD's own address only (a standalone client: no routing elsewhere).
direct() {
  local pod="$1" ip; shift
  ip="$(pod_ip "$pod")"
  in_pod "$pod" "$SHARDKV_BIN/shardkv" --endpoints "$ip:7100" --tls-server-name "$(pod_dns "$pod")" --timeout-ms 3000 "$@"
}

# isolated_serves_nothing POD KEY: linearizable reads and writes at the isolated
# node fail (it cannot reach a quorum, so it must not answer).
isolated_serves_nothing() {
  local pod="$1" key="$2" out
  if out="$(direct "$pod" get "$key" 2>&1)"; then fail "isolated $pod answered a linearizable read of $key: $out"; fi
  step "isolated $pod refused a linearizable read: $out"
  if out="$(direct "$pod" put "$key" "written-while-isolated" 2>&1)"; then fail "isolated $pod acknowledged a write of $key: $out"; fi
  step "isolated $pod refused a write: $out"
}

# partition_one GROUP POD: isolate POD past the election timeout, assert what
# must hold while it is cut off, heal it, and wait for the group to converge.
partition_one() {
  local g="$1" pod="$2" key was_leader=0
  [[ "$(status_field "$pod" .state)" == Leader ]] && was_leader=1
  key="$(key_served_by "$pod")"
  # The probe works before the partition: what fails later fails because of it.
  direct "$pod" put "$key" "before-partition" >&2 || fail "$pod did not serve $key before the partition"
  direct "$pod" get "$key" >&2 || fail "$pod did not read $key before the partition"
  step "isolate $pod (group $g, $( ((was_leader)) && echo leader || echo follower))"
  isolate "$pod"
  if ((was_leader)); then
    wait_until 30 "the majority of group $g elected a leader other than $pod" new_leader_elected "$g" "$pod"
  else
    sleep_past_election_timeout
  fi
  isolated_serves_nothing "$pod" "$key"
  step "heal $pod"
  heal "$pod"
  wait_until 120 "group $g converged (every member Ready, one leader)" group_converged "$g"
  direct "$pod" get "$key" >&2 || fail "$pod does not serve linearizable reads after healing"
}

# Waiting out the election timeout is the point of the step (an isolated
# follower must outlast it), not a stand-in for a condition.
sleep_past_election_timeout() { sleep 3; }

scenario_partition() {
  need_cluster
  # Never leave a pod cut off, whatever fails.
  on_exit heal_all
  start_load partition 300
  wait_load_progress partition 2000
  local leader follower p t1 t2 t3 t4
  leader="$(node_leader 1)" || fail "no node of group 1 says it leads"
  t1="$(epoch_ns)"
  partition_one 1 "$leader"
  t2="$(epoch_ns)"
  wait_load_progress partition 1000
  leader="$(node_leader 1)" || fail "no node of group 1 says it leads after healing"
  for p in $(group_pods 1); do [[ "$p" != "$leader" ]] && { follower="$p"; break; }; done
  t3="$(epoch_ns)"
  partition_one 1 "$follower"
  t4="$(epoch_ns)"
  wait_load_progress partition 2000
  finish_disruptive_load partition "$t1" "$t2" "$t3" "$t4"
  wait_until 120 "ShardCluster $CLUSTER Available" cluster_available
}

scenario_pause() {
  need_cluster
  start_load pause 300
  wait_load_progress pause 2000
  local pod pid t_fault t_healed
  pod="$(node_leader 2)" || fail "no node of group 2 says it leads"
  pid="$(container_pid "$pod")"
  # Never leave the node stopped, whatever fails.
  on_exit "kill -CONT $pid 2>/dev/null"
  t_fault="$(epoch_ns)"
  step "SIGSTOP $pod (pid $pid), group 2's leader"
  kill -STOP "$pid"
  wait_until 30 "group 2 elected a leader other than the paused $pod" new_leader_elected 2 "$pod"
  # Held well past the election: a client still waiting on the paused node for
  # its whole request deadline would leave its keys without a successful
  # operation for longer than MAX_GAP.
  sleep "$PAUSE_HOLD"
  step "SIGCONT $pod"
  kill -CONT "$pid"
  wait_until 60 "$pod stepped down and follows the new leader" follows_other "$pod" 2
  wait_until 120 "group 2 converged (every member Ready, one leader)" group_converged 2
  t_healed="$(epoch_ns)"
  wait_load_progress pause 2000
  finish_disruptive_load pause "$t_fault" "$t_healed"
  wait_until 120 "ShardCluster $CLUSTER Available" cluster_available
}

# follows_other POD GROUP: the node is not the leader and names a leader other than itself.
follows_other() {
  local s; s="$(node_status "$1")" || return 1
  jq -e --arg me "$(jq .node_id <<<"$s")" '.state != "Leader" and .leader_id != null and (.leader_id | tostring) != $me' <<<"$s" >/dev/null
}

# --- membership changes ------------------------------------------------------

all_voters() {
  local roles
  roles="$(kubectl get shardcluster -n "$CLUSTER_NS" "$CLUSTER" -o jsonpath='{.status.groups[*].members[*].role}')" || return 1
  [[ -n "$roles" ]] && ! tr ' ' '\n' <<<"$roles" | grep -v '^$' | grep -qvx voter
}

cluster_ready_replicas_is() {
  [[ "$(kubectl get shardcluster -n "$CLUSTER_NS" "$CLUSTER" -o jsonpath='{.status.readyReplicas}')" == "$1" ]] && cluster_available
}

set_replicas() {
  step "replicasPerGroup -> $1"
  kubectl patch shardcluster -n "$CLUSTER_NS" "$CLUSTER" --type merge -p "{\"spec\":{\"replicasPerGroup\":$1}}" >&2
}

# expect_members N: both data groups' memberships are exactly voters 1..N, by their leaders.
expect_members() {
  local want g; want="$(seq -s, 1 "$1")"
  for g in 1 2; do
    wait_until 60 "group $g's members are exactly voters $want" members_are "$g" "$want"
  done
}

# removals_ordered GROUPS ORDINALS: true once the pods of ORDINALS are gone from
# every group of GROUPS; fails the scenario if such a pod was seen terminating or
# gone while its group's leader still had its node as a member: a member must
# leave the membership before its pod goes. (The pod is looked at first, so a
# membership that still lists it afterwards is a real violation.)
removals_ordered() {
  local groups="$1" ordinals="$2" g o pod state members gone=0 total=0
  for g in $groups; do
    for o in $ordinals; do
      pod="$CLUSTER-g$g-$o"; total=$((total + 1))
      state="$(kubectl get pod -n "$CLUSTER_NS" "$pod" --ignore-not-found -o jsonpath='{.metadata.name}/{.metadata.deletionTimestamp}')"
      [[ -n "$state" && "$state" == */ ]] && continue # still running, not being deleted
      members="$(members_of "$g")" || return 1
      [[ ",$members," == *",$((o + 1)),"* ]] \
        && fail "$pod was ${state:+terminating}${state:-gone} while node $((o + 1)) was still a member of group $g ($members)"
      [[ -z "$state" ]] && gone=$((gone + 1))
    done
  done
  ((gone == total))
}

# left_recorded POD: the removed node logged that it was told it left.
left_recorded() {
  grep -q 'removed from the group; will not rejoin by itself' "$E2E_PODRUNNER_DIR/logs/${CLUSTER_NS}_$1_node.log" \
    || fail "$1 never logged that it was removed from its group (Admin Removed)"
}

scenario_scale() {
  need_cluster
  start_load scale 400
  wait_load_progress scale 1000
  local t_fault t_healed g o
  t_fault="$(epoch_ns)"
  set_replicas 5
  wait_until 180 "13 ready node pods (meta 3 + 2 x 5) and Available" cluster_ready_replicas_is 13
  wait_until 60 "every group member a voter" all_voters
  expect_members 5
  set_replicas 3
  wait_until 180 "pods 3 and 4 of both groups gone, each after its node left the membership" removals_ordered "1 2" "3 4"
  wait_until 180 "9 node pods and Available" cluster_ready_replicas_is 9
  expect_members 3
  for g in 1 2; do for o in 3 4; do left_recorded "$CLUSTER-g$g-$o"; done; done
  t_healed="$(epoch_ns)"
  wait_load_progress scale 1000
  finish_disruptive_load scale "$t_fault" "$t_healed"
}

operator_pod() {
  kubectl get pods -n shardkv-system -l app.kubernetes.io/name=shardkv-operator \
    --field-selector=status.phase=Running -o jsonpath='{.items[0].metadata.name}'
}
lease_holder() { kubectl get lease -n shardkv-system shardkv-operator -o jsonpath='{.spec.holderIdentity}'; }
lease_held_by_other() { local h; h="$(lease_holder)" && [[ -n "$h" && "$h" != "$1" ]] && [[ "$(operator_pod)" == "$h" ]]; }
pod_exists() { kubectl get pod -n "$CLUSTER_NS" "$1" >/dev/null 2>&1; }

# node_pod_incarnations: every node pod as name=uid/restarts, sorted.
node_pod_incarnations() {
  kubectl get pods -n "$CLUSTER_NS" -l shardkv.dev/cluster="$CLUSTER" \
    -o jsonpath='{range .items[*]}{.metadata.name}={.metadata.uid}/{.status.containerStatuses[0].restartCount}{"\n"}{end}' | sort
}

# The operator dies in the middle of a scale-up; the next one (a new pod that
# takes the Lease, or the same pod's restarted container) finishes it from
# what it observes, adding no extra member and touching no other pod.
# (replicasPerGroup must be odd: 3 -> 5 each time, and back to 3.)
scenario_operator_crash() {
  need_cluster
  start_load opcrash 600
  wait_load_progress opcrash 1000
  local before op pid restarts t_fault t_healed
  before="$(node_pod_incarnations)"
  t_fault="$(epoch_ns)"

  set_replicas 5
  wait_until 60 "the scale-up has begun ($CLUSTER-g1-3 exists)" pod_exists "$CLUSTER-g1-3"
  op="$(operator_pod)"; [[ -n "$op" && "$(lease_holder)" == "$op" ]] || fail "operator pod '$op' does not hold the Lease"
  step "delete the operator pod $op mid scale-up"
  kubectl delete pod -n shardkv-system "$op" --wait=false >&2
  wait_until 120 "a new operator pod holds the Lease" lease_held_by_other "$op"
  wait_until 240 "13 ready node pods (meta 3 + 2 x 5) and Available" cluster_ready_replicas_is 13
  expect_members 5
  set_replicas 3
  wait_until 240 "9 node pods and Available" cluster_ready_replicas_is 9
  expect_members 3

  set_replicas 5
  wait_until 60 "the scale-up has begun ($CLUSTER-g1-3 exists)" pod_exists "$CLUSTER-g1-3"
  op="$(operator_pod)"
  restarts="$(pod_field shardkv-system "$op" '{.status.containerStatuses[0].restartCount}')"
  pid="$(pod_field shardkv-system "$op" '{.status.containerStatuses[0].containerID}')"; pid="${pid#podrunner://}"
  [[ "$pid" =~ ^[0-9]+$ ]] || fail "operator pod $op has no process id"
  step "SIGKILL the operator ($op, pid $pid) mid scale-up"
  kill -KILL "$pid"
  wait_until 60 "the operator's container restarted" restart_count_above shardkv-system "$op" "$restarts"
  wait_until 240 "13 ready node pods (meta 3 + 2 x 5) and Available" cluster_ready_replicas_is 13
  expect_members 5
  set_replicas 3
  wait_until 240 "9 node pods and Available" cluster_ready_replicas_is 9
  wait_until 60 "group 1 back to 3 pods" count_is 3 kubectl get pods -n "$CLUSTER_NS" -l shardkv.dev/group=1 -o name
  expect_members 3
  t_healed="$(epoch_ns)"

  local after; after="$(node_pod_incarnations)"
  [[ "$after" == "$before" ]] || fail "node pods were restarted or replaced during the scaling: before $before; after $after"
  wait_load_progress opcrash 1000
  finish_disruptive_load opcrash "$t_fault" "$t_healed"
}

# --- data groups: scale-out and scale-in ---------------------------------------

# How long one step of spec.groups may take: the new group's pods start and join, or the
# leaving group's shards move and its objects go (seconds; a step takes about 5 s here).
GROUP_STEP_TIMEOUT=120
# groups-flap: once nothing holds the moves back, every shard is served by exactly one of the
# remaining groups within this many seconds.
FLAP_BOUND=120
# Bulk data under every shard, so that moves carry real bytes: BULK_KEYS values of BULK_VALUE
# bytes (8 MiB, 512 KiB a shard), written with `shardkv bench put --prefill`.
BULK_KEYS=2048
BULK_VALUE=4096
# A held move: what the sending pods send to the receiving group's pods is cut to HOLD_RATE
# (tc htb in the senders' network namespaces, a short queue), so a leaving group's 2.5 MiB
# takes minutes instead of a second, until the scenario releases it.
HOLD_RATE=128kbit
# Keys of the shards a scenario holds back on purpose go without a successful operation for
# the hold (about 20 s): the gap bound of those scenarios' loads.
HELD_MAX_GAP=60s
# The window over which the operator's reconcile rate is measured (seconds).
RATE_WINDOW=30

skv_status() { kubectl get shardcluster -n "$CLUSTER_NS" "$CLUSTER" -o json | jq -c '.status // {}'; }

set_groups() {
  step "groups -> $1"
  kubectl patch shardcluster -n "$CLUSTER_NS" "$CLUSTER" --type merge -p "{\"spec\":{\"groups\":$1}}" >&2
}

# cli ARGS...: the shardkv CLI against the meta group, run inside a meta pod's network
# namespace: the shard map names the data groups' nodes by DNS names only pods resolve.
cli() {
  local eps; eps="$(client_endpoints)"
  in_pod "$CLUSTER-meta-0" "$SHARDKV_BIN/shardkv" --endpoints "$eps" --timeout-ms 5000 "$@"
}
# shard_map [NUM]: the shard map (config) NUM, the latest by default, as JSON.
shard_map() { cli admin config --num "${1:-0}" --json; }

fill_bulk() {
  step "bulk data: $BULK_KEYS values of $BULK_VALUE bytes over every shard"
  cli bench put --prefill --keys "$BULK_KEYS" --value-size "$BULK_VALUE" --total 1 --clients 8 >&2 \
    || fail "writing the bulk data failed"
}

# keys_covering_shards PREFIX: how many load keys (PREFIX-k0, PREFIX-k1, ...) it takes to put
# a key in every shard (at least LOAD_KEYS).
keys_covering_shards() {
  python3 -c "$SHARD_PY"'
prefix, shards, least = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
seen, n = set(), 0
while len(seen) < shards:
    seen.add(shard(f"{prefix}-k{n}", shards)); n += 1
print(max(n, least))' "$1" "$SHARDS" "$LOAD_KEYS"
}

# data_group_ids: the data groups that have a StatefulSet, ascending, on one line.
data_group_ids() {
  kubectl get statefulsets -n "$CLUSTER_NS" -l shardkv.dev/cluster="$CLUSTER" \
    -o jsonpath='{range .items[*]}{.metadata.labels.shardkv\.dev/group}{"\n"}{end}' | grep -vx 0 | sort -n | paste -sd' '
}

# leader_status GROUP: the Status of the group's node that says it leads.
leader_status() {
  local p s
  for p in $(group_pods "$1"); do
    s="$(node_status "$p" 2>/dev/null)" || continue
    [[ "$(jq -r .state <<<"$s")" == Leader ]] && { echo "$s"; return 0; }
  done
  return 1
}

# group_ips "G ...": the pod addresses of these groups, one a line.
group_ips() {
  kubectl get pods -n "$CLUSTER_NS" -l "shardkv.dev/cluster=$CLUSTER,shardkv.dev/group in (${1// /,})" \
    -o jsonpath='{range .items[*]}{.status.podIP}{"\n"}{end}' | grep .
}

# shards_served_by "G ...": the latest shard map lists exactly these data groups and assigns
# every shard to one of them, and each of their leaders has applied it and serves exactly the
# shards it assigns, all of them serving (nothing pulling in or held for another group).
shards_served_by() {
  local want="$1" map g s
  map="$(shard_map)" || { WHY="no shard map from the meta group"; return 1; }
  WHY="shard map $(jq -c '{num, shard_groups}' <<<"$map")"
  jq -e --arg want "$want" '([.groups[].group_id] | sort | map(tostring) | join(" ")) == $want
    and all(.shard_groups[]; . != 0)' <<<"$map" >/dev/null || return 1
  for g in $want; do
    s="$(leader_status "$g")" || { WHY="no leader in group $g"; return 1; }
    WHY="group $g's leader at config $(jq -c '[.config_num, (.shards | group_by(.state) | map({(.[0].state): map(.shard)}) | add)]' <<<"$s"), the map at $(jq .num <<<"$map")"
    jq -e --argjson m "$map" --argjson g "$g" '.config_num == $m.num and all(.shards[]; .state == "serving")
      and ([.shards[].shard] | sort) == [$m.shard_groups | to_entries[] | select(.value == $g) | .key]' \
      <<<"$s" >/dev/null || return 1
  done
}

# operator_settled: the operator has seen the latest spec and reports nothing in flight
# (Progressing False; no status.operation, no status.groupRemovals).
operator_settled() {
  local skv; skv="$(kubectl get shardcluster -n "$CLUSTER_NS" "$CLUSTER" -o json)" || return 1
  WHY="operator: $(jq -c '.status | {phase, operation, groupRemovals,
    conditions: [.conditions[]? | select(.status == "True" and .type != "Available") | "\(.type): \(.message)"]}' <<<"$skv")"
  jq -e '.metadata.generation == .status.observedGeneration
    and any(.status.conditions[]; .type == "Progressing" and .status == "False")
    and (.status.operation // "") == "" and (.status.groupRemovals // [] | length) == 0' <<<"$skv" >/dev/null
}

group_ready() {
  [[ "$(kubectl get pods -n "$CLUSTER_NS" -l "shardkv.dev/cluster=$CLUSTER,shardkv.dev/group=$1" \
    -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -cx True)" \
    == "$(kubectl get shardcluster -n "$CLUSTER_NS" "$CLUSTER" -o jsonpath='{.spec.replicasPerGroup}')" ]]
}

# groups_settled "G ...": a finished step of spec.groups: these groups serve every shard (and
# no other group has a StatefulSet), each has all its pods Ready, the operator is settled.
groups_settled() {
  local g ids why=""
  ids="$(data_group_ids)"
  if [[ "$ids" != "$1" ]]; then
    why="data groups with a StatefulSet: $ids"
  elif ! shards_served_by "$1"; then
    why="$WHY"
  else
    for g in $1; do group_ready "$g" || { why="group $g: not every pod Ready"; break; }; done
  fi
  if [[ -z "$why" ]]; then operator_settled; return; fi
  operator_settled
  WHY="$why; $WHY"
  return 1
}

last_group_id() {
  local id; id="$(skv_status | jq '.lastGroupId // 0')"
  ((id >= 2)) || fail "status.lastGroupId is $id: the operator does not record the data group ids it issued"
  echo "$id"
}

# wait_new_group LAST: after a scale-out, the new group is LAST+1 (status.lastGroupId; ids are
# never reused) and its StatefulSet exists; prints its id.
wait_new_group() {
  local g=$(($1 + 1))
  wait_until 60 "a new data group $g (status.lastGroupId $1 -> $g) with its StatefulSet" new_group_is "$g"
  echo "$g"
}
new_group_is() {
  [[ "$(skv_status | jq '.lastGroupId // 0')" == "$1" ]] && kubectl get statefulset -n "$CLUSTER_NS" "$CLUSTER-g$1"
}

# group_objects_gone G: the group's StatefulSet, headless Service, PodDisruptionBudget and pods
# are gone, and its volumes (they stay under pvcRetention.whenDeleted: Retain).
group_objects_gone() {
  local name="$CLUSTER-g$1" kind pvcs want=0
  for kind in statefulset service poddisruptionbudget; do
    WHY="$kind $name still there"
    absent kubectl get "$kind" -n "$CLUSTER_NS" "$name" || return 1
  done
  WHY="pods of group $1 still there"
  count_is 0 kubectl get pods -n "$CLUSTER_NS" -l "shardkv.dev/cluster=$CLUSTER,shardkv.dev/group=$1" -o name || return 1
  [[ "$(kubectl get shardcluster -n "$CLUSTER_NS" "$CLUSTER" -o jsonpath='{.spec.pvcRetention.whenDeleted}')" == Retain ]] \
    && want="$(kubectl get shardcluster -n "$CLUSTER_NS" "$CLUSTER" -o jsonpath='{.spec.replicasPerGroup}')"
  pvcs="$(kubectl get pvc -n "$CLUSTER_NS" -o name | grep -c "^persistentvolumeclaim/data-$name-" || true)"
  WHY="$pvcs of its volumes left, want $want"
  ((pvcs == want))
}

# removal_phase_is G PHASE: status.groupRemovals has G in PHASE.
removal_phase_is() {
  skv_status | jq -e --argjson g "$1" --arg p "$2" 'any(.groupRemovals[]?; .groupId == $g and .phase == $p)' >/dev/null
}

# pulled_bytes FROM TO SINCE_NS: what the data groups' leaders logged copying (ahead of a move)
# and pulling for shard maps FROM+1..TO from SINCE_NS on: "STREAMS BYTES SECONDS", SECONDS from
# the first stream's start to the last one's end.
pulled_bytes() {
  cat "$E2E_PODRUNNER_DIR/logs/${CLUSTER_NS}_$CLUSTER"-g*_node.log | python3 -c 'import json, sys
from datetime import datetime
lo, hi, since = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]) / 1e9
# What the receiving leader logs for a copy, a pull of the changes since it, and a whole pull.
STREAMS = ("copied a shard while its owner serves it", "pulled a shard\x27s changes since its copy", "pulled a shard")
n = size = 0
start = end = None
for line in sys.stdin:
    try:
        e = json.loads(line)
        f = e["fields"]
        if f.get("message") not in STREAMS or not lo < f["config"] <= hi:
            continue
        t = datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp()
    except (ValueError, KeyError, TypeError):
        continue
    if t < since:
        continue
    n += 1
    size += f["bytes"]
    start = min(start if start is not None else t, t - f["ms"] / 1000)
    end = max(end if end is not None else t, t)
print(n, size, round(end - start, 3) if n else 0)' "$1" "$2" "$3"
}

# note_step LABEL T0_NS T1_NS FROM TO: the step's time and what moved (from the nodes' logs).
note_step() {
  local moved
  moved="$(pulled_bytes "$4" "$5" "$2")"
  note "$(awk -v l="$1" -v a="$2" -v b="$3" -v m="$moved" 'BEGIN { split(m, x, " "); s = (b - a) / 1e9
    printf "%s: %.1fs, %d shard copies and pulls, %.2f MB in %.1fs (%.1f MB/s)", l, s, x[1], x[2] / 1e6, x[3], (x[3] > 0 ? x[2] / 1e6 / x[3] : 0) }')"
}

# unmoved_shards FROM TO: the shards whose owner is the same in every shard map FROM..TO.
unmoved_shards() {
  local n maps=""
  for ((n = $1; n <= $2; n++)); do maps+="$(shard_map "$n")"$'\n'; done
  jq -rs '[.[].shard_groups] | transpose | to_entries[] | select(.value | unique | length == 1) | .key' <<<"$maps" | paste -sd' '
}

# failed_on_shards HISTORY "S ...": the history's operations on keys of these shards that did
# not succeed (failed, timed out or never completed), one "key kind error" line each.
failed_on_shards() {
  python3 -c "$SHARD_PY"'
path, shards, wanted = sys.argv[1], int(sys.argv[2]), {int(s) for s in sys.argv[3].split()}
pending = {}
for line in open(path):
    e = json.loads(line)
    if e["kind"] == "invoke":
        pending[e["client"]] = e
        continue
    invoked = pending.pop(e["client"], None)
    if invoked and e["kind"] != "ok" and shard(invoked["key"], shards) in wanted:
        print(invoked["key"], e["kind"], e.get("error", ""))
for invoked in pending.values():
    if shard(invoked["key"], shards) in wanted:
        print(invoked["key"], "unfinished", "")' "$1" "$SHARDS" "$2"
}

# event_count REASON GROUP: how often the operator published REASON about the data group, on
# this ShardCluster (Events name the group's StatefulSet, or their note starts "group G:";
# repeats are one Event's series).
event_count() {
  local uid; uid="$(kubectl get shardcluster -n "$CLUSTER_NS" "$CLUSTER" -o jsonpath='{.metadata.uid}')"
  kubectl get events.events.k8s.io -n "$CLUSTER_NS" -o json \
    | jq --arg r "$1" --arg s "$CLUSTER-g$2" --arg n "group $2:" --arg uid "$uid" \
    '[.items[] | select(.regarding.uid == $uid and .reason == $r
      and (.related.name == $s or (.note // "" | startswith($n)))) | .series.count // 1] | add // 0'
}

# operator_log_count STEP GROUP SINCE: the operator's log lines (every operator pod's) of STEP
# taken for the group at or after SINCE (RFC 3339, UTC).
operator_log_count() {
  cat "$E2E_PODRUNNER_DIR"/logs/shardkv-system_*_operator.log | jq -nR --arg s "$1" --argjson g "$2" --arg t "$3" \
    '[inputs | fromjson? | select(.step == $s and .group_id == $g and .timestamp >= $t)] | length'
}

# operator_metrics [POD]: the operator's Prometheus metrics (the chart's `http` port, /metrics).
operator_metrics() {
  local pod="${1:-}" ip port
  [[ -n "$pod" ]] || pod="$(operator_pod)"
  ip="$(pod_field shardkv-system "$pod" '{.status.podIP}')"
  port="$(pod_field shardkv-system "$pod" '{.spec.containers[0].ports[?(@.name=="http")].containerPort}')"
  curl -sf --max-time 5 "http://$ip:$port/metrics"
}
# metric NAME: the sum of the samples of NAME (any labels) in metrics read on stdin (0 when
# its family has none yet); fails when the metrics do not have NAME at all.
metric() {
  awk -v m="$1" '$1 == "#" && $3 == m { found = 1 }
    $1 !~ /^#/ { n = $1; sub(/\{.*/, "", n); if (n == m) { s += $2; found = 1 } }
    END { if (!found) exit 1; print s + 0 }'
}
reconciles_at_least() {
  local m; m="$(operator_metrics "$1")" && (($(metric shardkv_operator_reconciles_total <<<"$m") >= $2))
}

# note_reconcile_rate: the operator's reconciles of a settled cluster under load, from its
# reconcile counter read RATE_WINDOW seconds apart.
note_reconcile_rate() {
  local op m0 m1 t0 t1 rate
  wait_until 60 "the operator settled (nothing in flight)" operator_settled
  op="$(operator_pod)"
  m0="$(operator_metrics "$op")" || fail "no metrics from the operator pod $op"
  t0="$(epoch_ns)"
  # The measurement window itself, not a stand-in for a condition.
  sleep "$RATE_WINDOW"
  m1="$(operator_metrics "$op")" || fail "no metrics from the operator pod $op"
  t1="$(epoch_ns)"
  operator_settled || fail "the cluster did not stay settled during the reconcile-rate window"
  rate="$(awk -v a="$(metric shardkv_operator_reconciles_total <<<"$m0")" -v b="$(metric shardkv_operator_reconciles_total <<<"$m1")" \
    -v s="$(((t1 - t0) / 1000000))" 'BEGIN { printf "%.2f", (b - a) * 10000 / s }')"
  step "the operator reconciled $rate times per 10 s (settled cluster under load)"
  note "operator: $rate reconciles/10s settled under load (target <= 1)"
  awk -v r="$rate" 'BEGIN { exit !(r <= 1) }' \
    || fail "the operator reconciled $rate times per 10 s on a settled cluster under load (target: at most 1)"
  if metric shardkv_operator_shards_in_flight <<<"$m1" >/dev/null; then
    [[ "$(metric shardkv_operator_shards_in_flight <<<"$m1")" == 0 ]] \
      || fail "shardkv_operator_shards_in_flight is not 0 on a settled cluster"
  fi
}

# hold_traffic "POD ..." "IP ..." [except]: what each pod sends to these addresses (with
# `except`: to any address but these and the pod network's gateway, so also to pods that do not
# exist yet) is cut to HOLD_RATE (tc htb in the pod's network namespace, a short queue so that
# TCP backs off little; all its other traffic goes as before), so shard moves between them
# crawl. release_traffic undoes it (also when the scenario ends).
hold_traffic() {
  # Class 1:1 is free, 1:2 held; the filters send the listed addresses to the other class.
  local p netns ip ips="$2" default=1 listed=2
  [[ "${3:-}" == except ]] && default=2 listed=1
  for p in $1; do
    netns="$(pod_netns "$p")"
    echo "$netns" >>"$SCENARIO_DIR/held"
    [[ "${3:-}" == except ]] && ips="$2 $(ip -n "$netns" route show default | awk '{print $3}')"
    tc -n "$netns" qdisc replace dev eth0 root handle 1: htb default "$default"
    tc -n "$netns" class add dev eth0 parent 1: classid 1:1 htb rate 10gbit quantum 60000
    tc -n "$netns" class add dev eth0 parent 1: classid 1:2 htb rate "$HOLD_RATE" ceil "$HOLD_RATE" quantum 1514
    tc -n "$netns" qdisc add dev eth0 parent 1:2 pfifo limit 8
    for ip in $ips; do
      tc -n "$netns" filter add dev eth0 parent 1: protocol ip prio 1 u32 match ip dst "$ip/32" flowid "1:$listed"
    done
  done
}
release_traffic() {
  local netns
  [[ -f "$SCENARIO_DIR/held" ]] || return 0
  while read -r netns; do tc -n "$netns" qdisc del dev eth0 root 2>/dev/null || true; done <"$SCENARIO_DIR/held"
  rm -f "$SCENARIO_DIR/held"
}

# A shard moving into the reporting group: copied while its owner still serves it, or pulled.
MOVING_IN='.state == "copying" or .state == "copied" or .state == "pulling" or .state == "catching_up"'
# pulling_into G: the group's leader is copying or pulling at least one shard in.
pulling_into() { leader_status "$1" | jq -e "any(.shards[]; $MOVING_IN)" >/dev/null; }

# scale_out_group LAST: spec.groups 2 -> 3, and wait until the new group serves its share.
# Sets NEW_GROUP (its id), STEP_T0 and STEP_T1 (ns) and STEP_C0 and STEP_C1 (the shard maps
# before and after).
scale_out_group() {
  STEP_C0="$(shard_map | jq .num)"
  STEP_T0="$(epoch_ns)"
  set_groups 3
  NEW_GROUP="$(wait_new_group "$1")"
  wait_until "$GROUP_STEP_TIMEOUT" "group $NEW_GROUP joined: groups 1, 2 and $NEW_GROUP serve every shard, all pods Ready, the operator settled" \
    groups_settled "1 2 $NEW_GROUP"
  STEP_T1="$(epoch_ns)"
  STEP_C1="$(shard_map | jq .num)"
}

# every_shard_answers TAG: a write and a linearizable read of a key in every shard (TAG-N,
# the first N in each shard) succeed.
every_shard_answers() {
  local eps s key
  eps="$(client_endpoints)"
  while read -r s key; do
    in_pod "$CLUSTER-meta-0" "$SHARDKV_BIN/shardkv" --endpoints "$eps" --timeout-ms 5000 put "$key" "served-$s" >/dev/null \
      || { echo "shard $s: the write of $key failed" >&2; return 1; }
    [[ "$(in_pod "$CLUSTER-meta-0" "$SHARDKV_BIN/shardkv" --endpoints "$eps" --timeout-ms 5000 get "$key")" == "served-$s" ]] \
      || { echo "shard $s: the read of $key failed" >&2; return 1; }
  done < <(python3 -c "$SHARD_PY"'
tag, shards = sys.argv[1], int(sys.argv[2])
first, n = {}, 0
while len(first) < shards:
    first.setdefault(shard(f"{tag}-{n}", shards), f"{tag}-{n}"); n += 1
for s in sorted(first): print(s, first[s])' "$1" "$SHARDS")
  step "every shard took a write and a read ($1-*)"
}

# groups 2 -> 3 -> 2 under load, data in every shard: the new group takes its share of the
# shards and gives them back; the history stays linearizable with nothing acknowledged lost;
# operations on shards that never moved all succeed; the removed group's objects are gone.
scenario_groups() {
  need_cluster
  local keys g last t_fault t_healed c0 c1 c2 moved_in unmoved failed
  keys="$(keys_covering_shards groups)"
  start_load groups 400 "$keys"
  wait_load_progress groups 1000
  fill_bulk
  note_reconcile_rate
  last="$(last_group_id)"
  t_fault="$(epoch_ns)"

  scale_out_group "$last"
  g="$NEW_GROUP" c0="$STEP_C0" c1="$STEP_C1"
  note_step "2->3" "$STEP_T0" "$STEP_T1" "$c0" "$c1"
  moved_in="$(jq -rn --argjson a "$(shard_map "$c0")" --argjson b "$(shard_map "$c1")" --argjson g "$g" \
    '[range($a.shard_groups | length) | select($a.shard_groups[.] != $b.shard_groups[.])] as $m
     | if ($m | length) > 0 and all($m[]; $b.shard_groups[.] == $g) then $m | map(tostring) | join(" ") else "none" end')"
  [[ "$moved_in" != none ]] || fail "2 -> 3: no shard moved, or not all of those that moved went to group $g"
  step "shards $moved_in moved to group $g"

  local t0; t0="$(epoch_ns)"
  set_groups 2
  wait_until "$GROUP_STEP_TIMEOUT" "group $g removed: groups 1 and 2 serve every shard, all pods Ready, the operator settled" \
    groups_settled "1 2"
  wait_until 60 "group $g's StatefulSet, Service, PDB, pods and volumes gone" group_objects_gone "$g"
  t_healed="$(epoch_ns)"
  c2="$(shard_map | jq .num)"
  note_step "3->2" "$t0" "$t_healed" "$c1" "$c2"
  (($(event_count Leave "$g") == 1)) || fail "group $g: $(event_count Leave "$g") Leave Events, want exactly 1"
  (($(event_count RemovalDone "$g") >= 1)) || fail "group $g: no RemovalDone Event"

  wait_load_progress groups 1000
  finish_disruptive_load groups "$t_fault" "$t_healed"
  unmoved="$(unmoved_shards "$c0" "$c2")"
  [[ -n "$unmoved" ]] || fail "every shard moved between maps $c0 and $c2: nothing to check unmoved shards with"
  failed="$(failed_on_shards "$SCENARIO_DIR/groups.jsonl" "$unmoved")"
  [[ -z "$failed" ]] || fail "operations on shards that never moved ($unmoved) failed: $(head -n 3 <<<"$failed" | paste -sd';')"
  note "shards $moved_in to g$g and back, 0 failed ops on the $(wc -w <<<"$unmoved") unmoved shards"
}

# watch_removal G FILE: until killed, every ~0.3 s a line "TIME_NS STS SHARDS PHASE BYTES":
# whether the group's StatefulSet is present, deleting or gone (error: no answer), the shards
# its leader holds (- when no node says it leads), and the removal's phase and bytesMoved in
# status.groupRemovals (- when not listed).
watch_removal() {
  local g="$1" file="$2" t sts shards removal s
  while :; do
    t="$(epoch_ns)"
    if sts="$(kubectl get statefulset -n "$CLUSTER_NS" "$CLUSTER-g$g" --ignore-not-found \
      -o jsonpath='{.metadata.name}/{.metadata.deletionTimestamp}' 2>/dev/null)"; then
      case "$sts" in "") sts=gone ;; */) sts=present ;; *) sts=deleting ;; esac
    else
      sts=error
    fi
    if s="$(leader_status "$g" 2>/dev/null)"; then shards="$(jq '.shards | length' <<<"$s")"; else shards=-; fi
    removal="$(skv_status 2>/dev/null | jq -r --argjson g "$g" \
      '[.groupRemovals[]? | select(.groupId == $g) | "\(.phase) \(.bytesMoved // 0)"][0] // "- -"' 2>/dev/null)" \
      || removal="- -"
    echo "$t $sts $shards $removal" >>"$file"
    sleep 0.3
  done
}

# The scale-in of groups-scale-out, with the operator pod deleted while the removal is
# Draining (the leaving group's shards held back on their way out): the next operator finishes
# it without a second Leave, and deletes the group only once it holds no shard.
scenario_groups_crash() {
  need_cluster
  local keys g last since t_fault t_release t_healed watch_pid op file early
  keys="$(keys_covering_shards gcrash)"
  start_load gcrash 400 "$keys"
  wait_load_progress gcrash 1000
  fill_bulk
  last="$(last_group_id)"
  t_fault="$(epoch_ns)"
  scale_out_group "$last"
  g="$NEW_GROUP"
  note_step "2->3" "$STEP_T0" "$STEP_T1" "$STEP_C0" "$STEP_C1"

  # What the leaving group sends to groups 1 and 2 crawls until release_traffic: its shards
  # stay on their way out (Draining) for as long as the scenario needs.
  on_exit release_traffic
  hold_traffic "$(group_pods "$g")" "$(group_ips "1 2")"
  file="$SCENARIO_DIR/removal-g$g"
  watch_removal "$g" "$file" &
  watch_pid=$!
  on_exit "kill $watch_pid 2>/dev/null"
  since="$(date -u +%FT%T)"
  local t0; t0="$(epoch_ns)"
  set_groups 2
  wait_until 60 "status.groupRemovals: group $g Draining" removal_phase_is "$g" Draining
  (($(event_count Leave "$g") == 1)) || fail "group $g: $(event_count Leave "$g") Leave Events before the crash, want 1"

  op="$(operator_pod)"; [[ -n "$op" && "$(lease_holder)" == "$op" ]] || fail "operator pod '$op' does not hold the Lease"
  step "delete the operator pod $op while group $g is Draining"
  kubectl delete pod -n shardkv-system "$op" --wait=false >&2
  wait_until 120 "a new operator pod holds the Lease" lease_held_by_other "$op"
  op="$(operator_pod)"
  wait_until 60 "the new operator ($op) reconciled twice" reconciles_at_least "$op" 2
  # Still held back: the new operator has seen the removal mid-drain.
  removal_phase_is "$g" Draining || fail "after the new operator's reconciles, group $g's removal is not Draining: $(skv_status | jq -c .groupRemovals)"
  [[ "$(kubectl get statefulset -n "$CLUSTER_NS" "$CLUSTER-g$g" -o jsonpath='{.metadata.deletionTimestamp}')" == "" ]] \
    || fail "the new operator deleted group $g's StatefulSet while its shards were held back"
  (($(leader_status "$g" | jq '.shards | length') > 0)) || fail "group $g's shards were not held back (its leader holds none)"
  local m; m="$(operator_metrics "$op")"
  if metric shardkv_operator_shards_in_flight <<<"$m" >/dev/null; then
    (($(metric shardkv_operator_shards_in_flight <<<"$m") > 0)) || fail "shardkv_operator_shards_in_flight is 0 while group $g drains"
  fi
  t_release="$(epoch_ns)"
  step "release group $g's traffic"
  release_traffic

  wait_until "$GROUP_STEP_TIMEOUT" "group $g removed: groups 1 and 2 serve every shard, all pods Ready, the operator settled" \
    groups_settled "1 2"
  wait_until 60 "group $g's StatefulSet, Service, PDB, pods and volumes gone" group_objects_gone "$g"
  t_healed="$(epoch_ns)"
  kill "$watch_pid"
  note_step "3->2 (drain held at $HOLD_RATE, operator deleted)" "$t0" "$t_healed" "$STEP_C1" "$(shard_map | jq .num)"
  note "held $(((t_release - t0) / 1000000000))s, done $(((t_healed - t_release) / 1000000000))s after release, removal phases seen: $(awk '$4 != "-" {print $4}' "$file" | uniq | paste -sd' ')"

  (($(event_count Leave "$g") == 1)) || fail "group $g: $(event_count Leave "$g") Leave Events, want exactly 1 (a second Leave after the crash)"
  (($(operator_log_count Leave "$g" "$since") == 1)) || fail "group $g: the operators logged $(operator_log_count Leave "$g" "$since") Leave steps, want 1"
  early="$(awk '$2 != "present" && $2 != "error" && $3 != "-" && $3 > 0' "$file")"
  [[ -z "$early" ]] || fail "group $g's StatefulSet was deleted while its leader still held shards: $(head -n1 <<<"$early")"
  grep -q ' present [1-9][0-9]* Draining ' "$file" || fail "the watch never saw group $g Draining with shards held"
  grep -Eq ' (deleting|gone) ' "$file" || fail "the watch never saw group $g's StatefulSet deleted"

  wait_load_progress gcrash 1000
  local MAX_GAP="$HELD_MAX_GAP" # the held shards' keys waited for the whole hold
  finish_disruptive_load gcrash "$t_fault" "$t_healed"
}

# groups 2 -> 3 -> 2, the scale-in issued while the new group is still pulling its shards in
# (their moves held back until the operator has recorded the removal): nothing is left frozen,
# and within FLAP_BOUND of the hold's end groups 1 and 2 serve every shard, each exactly once.
# Then the same with the scale-in issued as soon as the new group's StatefulSet exists.
scenario_groups_flap() {
  need_cluster
  local keys g last t_fault t_in t_release t_healed pulling
  keys="$(keys_covering_shards gflap)"
  start_load gflap 400 "$keys"
  wait_load_progress gflap 1000
  fill_bulk # the new group's shards take more than a moment to pull while held
  last="$(last_group_id)"
  t_fault="$(epoch_ns)"
  # Groups 1 and 2 send anything but the pods there are now (the new group's, that is) at a
  # crawl: the new group's join cannot settle.
  on_exit release_traffic
  hold_traffic "$(group_pods 1) $(group_pods 2)" "$(kubectl get pods -A -o jsonpath='{.items[*].status.podIP}')" except
  set_groups 3
  g="$(wait_new_group "$last")"
  wait_until 60 "group $g in the shard map and copying or pulling shards in" pulling_into "$g"
  t_in="$(epoch_ns)"
  set_groups 2
  pulling="$(leader_status "$g" | jq "[.shards[] | select($MOVING_IN)] | length")"
  ((pulling > 0)) || fail "group $g was no longer moving shards in when groups went back to 2"
  step "groups -> 2 while group $g moves $pulling shards in"
  wait_until 60 "status.groupRemovals lists group $g" skv_is_removing "$g"
  t_release="$(epoch_ns)"
  release_traffic
  wait_until "$FLAP_BOUND" "every shard served by exactly one of groups 1 and 2 (bound ${FLAP_BOUND}s)" shards_served_by "1 2"
  local served; served="$(epoch_ns)"
  every_shard_answers flap-probe || fail "not every shard answers after the flap"
  wait_until "$GROUP_STEP_TIMEOUT" "group $g removed: groups 1 and 2 serve every shard, all pods Ready, the operator settled" \
    groups_settled "1 2"
  wait_until 60 "group $g's StatefulSet, Service, PDB, pods and volumes gone" group_objects_gone "$g"
  note "2->3->2 with $pulling shards pulling into g$g: every shard served $(((served - t_release) / 1000000000))s after the hold (bound ${FLAP_BOUND}s), g$g gone $((($(epoch_ns) - t_release) / 1000000000))s after it"

  # Scale-in before the new group exists anywhere but in Kubernetes.
  last="$(last_group_id)"
  set_groups 3
  g="$(wait_new_group "$last")"
  t_in="$(epoch_ns)"
  set_groups 2
  wait_until "$GROUP_STEP_TIMEOUT" "the scale-out to group $g undone: groups 1 and 2 serve every shard, all pods Ready, the operator settled" \
    groups_settled "1 2"
  wait_until 60 "group $g's StatefulSet, Service, PDB, pods and volumes gone" group_objects_gone "$g"
  t_healed="$(epoch_ns)"
  note "2->3->2 right after g$g's StatefulSet appeared: undone in $(((t_healed - t_in) / 1000000000))s"

  wait_load_progress gflap 1000
  local MAX_GAP="$HELD_MAX_GAP" # the held shards' keys waited for the whole hold
  finish_disruptive_load gflap "$t_fault" "$t_healed"
}

skv_is_removing() { skv_status | jq -e --argjson g "$1" 'any(.groupRemovals[]?; .groupId == $g)' >/dev/null; }

# pvc_uids GROUPS ORDINALS: "claim=uid" of those pods' volumes, sorted.
pvc_uids() {
  local g o
  for g in $1; do for o in $2; do
    echo "data-$CLUSTER-g$g-$o=$(kubectl get pvc -n "$CLUSTER_NS" "data-$CLUSTER-g$g-$o" -o jsonpath='{.metadata.uid}' 2>/dev/null)"
  done; done | sort
}

set_when_scaled() {
  step "pvcRetention.whenScaled -> $1"
  kubectl patch shardcluster -n "$CLUSTER_NS" "$CLUSTER" --type merge -p "{\"spec\":{\"pvcRetention\":{\"whenScaled\":\"$1\"}}}" >&2
}
statefulsets_when_scaled() {
  local g
  for g in 1 2; do
    [[ "$(kubectl get statefulset -n "$CLUSTER_NS" "$CLUSTER-g$g" -o jsonpath='{.spec.persistentVolumeClaimRetentionPolicy.whenScaled}')" == "$1" ]] \
      || return 1
  done
}

# back_ready_or_crashing: 13 node pods Ready and Available; fails the scenario as soon as a pod
# that came back onto its retained volume restarts (a node refusing its old data dir exits).
back_ready_or_crashing() {
  local g o pod restarts
  for g in 1 2; do for o in 3 4; do
    pod="$CLUSTER-g$g-$o"
    restarts="$(kubectl get pod -n "$CLUSTER_NS" "$pod" --ignore-not-found -o jsonpath='{.status.containerStatuses[0].restartCount}')"
    ((${restarts:-0} == 0)) || fail "$pod, back on its retained volume, restarted $restarts times: $(tail -n 1 "$E2E_PODRUNNER_DIR/logs/${CLUSTER_NS}_${pod}_node.log" | cut -c1-300)"
  done; done
  cluster_ready_replicas_is 13
}

# replicasPerGroup 3 -> 5 -> 3 -> 5 -> 3 under load with pvcRetention.whenScaled Retain (the
# default): the pods that come back find the volumes of the members removed before, and
# rejoin as new members (no old log); every pod Ready, memberships exact, nothing lost.
scenario_retain() {
  need_cluster
  local before t_fault t_healed t0 vols g o entries
  start_load retain 600
  wait_load_progress retain 1000
  before="$(kubectl get shardcluster -n "$CLUSTER_NS" "$CLUSTER" -o jsonpath='{.spec.pvcRetention.whenScaled}')"
  # However it ends, the cluster is left with 3 replicas and its retention as it was.
  on_exit "kubectl patch shardcluster -n '$CLUSTER_NS' '$CLUSTER' --type merge \
    -p '{\"spec\":{\"replicasPerGroup\":3,\"pvcRetention\":{\"whenScaled\":\"${before:-Retain}\"}}}' >&2"
  set_when_scaled Retain
  wait_until 60 "the StatefulSets keep scaled-in volumes (whenScaled Retain)" statefulsets_when_scaled Retain
  t_fault="$(epoch_ns)"

  t0="$(epoch_ns)"
  set_replicas 5
  wait_until 180 "13 ready node pods (meta 3 + 2 x 5) and Available" cluster_ready_replicas_is 13
  expect_members 5
  note "3->5 $((($(epoch_ns) - t0) / 1000000000))s"
  vols="$(pvc_uids "1 2" "3 4")"
  t0="$(epoch_ns)"
  set_replicas 3
  wait_until 180 "pods 3 and 4 of both groups gone, each after its node left the membership" removals_ordered "1 2" "3 4"
  wait_until 180 "9 node pods and Available" cluster_ready_replicas_is 9
  expect_members 3
  for g in 1 2; do for o in 3 4; do left_recorded "$CLUSTER-g$g-$o"; done; done
  [[ "$(pvc_uids "1 2" "3 4")" == "$vols" ]] || fail "the volumes of pods 3 and 4 were not retained: before $vols; after $(pvc_uids "1 2" "3 4")"
  note "5->3 $((($(epoch_ns) - t0) / 1000000000))s"

  t0="$(epoch_ns)"
  set_replicas 5
  wait_until 180 "13 ready node pods and Available, pods 3 and 4 back on their retained volumes" back_ready_or_crashing
  expect_members 5
  [[ "$(pvc_uids "1 2" "3 4")" == "$vols" ]] || fail "pods 3 and 4 did not come back on their retained volumes: before $vols; now $(pvc_uids "1 2" "3 4")"
  for g in 1 2; do for o in 3 4; do
    entries="$(status_field "$CLUSTER-g$g-$o" .startup_log_entries)" || fail "no status from $CLUSTER-g$g-$o"
    ((entries == 0)) || fail "$CLUSTER-g$g-$o came back with $entries log entries of its removed member on disk (must rejoin fresh)"
  done; done
  note "3->5 onto retained volumes $((($(epoch_ns) - t0) / 1000000000))s"

  # Back to 3 with the volumes deleted, so later scenarios find the cluster as it was.
  set_when_scaled "${before:-Retain}"
  wait_until 60 "the StatefulSets' whenScaled is ${before:-Retain} again" statefulsets_when_scaled "${before:-Retain}"
  set_replicas 3
  wait_until 180 "pods 3 and 4 of both groups gone, each after its node left the membership" removals_ordered "1 2" "3 4"
  wait_until 180 "9 node pods and Available" cluster_ready_replicas_is 9
  expect_members 3
  t_healed="$(epoch_ns)"
  wait_load_progress retain 1000
  finish_disruptive_load retain "$t_fault" "$t_healed"
}

# --- rolling upgrades ----------------------------------------------------------

# The node images: A and B are two names of the one image e2e/run built (a changed image string
# is a new StatefulSet revision, which is what a rollout acts on; both report the same node
# version), BROKEN is mapped to nothing by the pod runner: its pods never start, like an image
# that cannot be pulled, so they never become Ready. The four scenarios alternate between A and
# B (each rolls from the image the cluster runs to the other one) instead of extra rollouts.
IMAGE_A="${E2E_NODE_IMAGE:-shardkv-node:e2e}"
IMAGE_B="${E2E_NODE_IMAGE_NEXT:-shardkv-node:e2e-next}"
IMAGE_BROKEN="${E2E_NODE_IMAGE_BROKEN:-shardkv-node:e2e-missing}"
# How long a rollout of the whole cluster may take, and how long rollout-paused watches that
# nothing moves while paused (a stated observation window, not a stand-in for a condition).
ROLLOUT_TIMEOUT=420
PAUSE_OBSERVE=20
# rollout-halt: spec.rollout.podReadyTimeout while the broken image is rolled out, so that the
# rollout halts quickly; and how long it then watches that no second pod is touched.
HALT_READY_TIMEOUT=20s
HALT_OBSERVE=10

skv() { kubectl get shardcluster -n "$CLUSTER_NS" "$CLUSTER" "$@"; }
current_image() { skv -o jsonpath='{.spec.image}'; }
other_image() { if [[ "$(current_image)" == "$IMAGE_B" ]]; then echo "$IMAGE_A"; else echo "$IMAGE_B"; fi; }
now_us() { echo "${EPOCHREALTIME/./}"; }

# patch_spec JSON: a merge patch of the ShardCluster's spec; prints the generation it made.
patch_spec() {
  step "spec <- $1"
  kubectl patch shardcluster -n "$CLUSTER_NS" "$CLUSTER" --type merge -p "{\"spec\":$1}" -o jsonpath='{.metadata.generation}'
}

# rollout_phase_is PHASE [GENERATION]: status.rollout.phase, of a status that saw GENERATION.
rollout_phase_is() {
  local s; s="$(skv -o json)" || return 1
  jq -e --arg phase "$1" --argjson gen "${2:-0}" \
    '.status.observedGeneration >= $gen and .status.rollout.phase == $phase' <<<"$s" >/dev/null
}
no_rollout_in_flight() { rollout_phase_is Complete && cluster_available; }

# rolled_to IMAGE GENERATION: the rollout onto IMAGE is over. Every node pod runs IMAGE, carries
# its StatefulSet's update revision (controller-revision-hash) and is Ready; every group reports
# updatedReplicas == readyReplicas == its replicas; status.rollout is Complete, in a status that
# saw GENERATION; the cluster is Available.
rolled_to() {
  local image="$1" gen="$2" cluster sts pods
  cluster="$(skv -o json)" || return 1
  jq -e --argjson gen "$gen" '. as $c | .status.observedGeneration >= $gen and .status.rollout.phase == "Complete"
    and (.status.groups | length) == .spec.groups + 1
    and all(.status.groups[]; (if .groupId == 0 then $c.spec.meta.replicas else $c.spec.replicasPerGroup end) as $n
      | .updatedReplicas == $n and .readyReplicas == $n)' <<<"$cluster" >/dev/null || return 1
  sts="$(kubectl get statefulsets -n "$CLUSTER_NS" -l shardkv.dev/cluster="$CLUSTER" -o json)" || return 1
  pods="$(kubectl get pods -n "$CLUSTER_NS" -l shardkv.dev/cluster="$CLUSTER" -o json)" || return 1
  jq -es --arg image "$image" '.[0] as $sts | .[1] as $pods
    | ($sts.items | map({(.metadata.labels["shardkv.dev/group"]): .status.updateRevision}) | add) as $rev
    | all($sts.items[]; .status.observedGeneration == .metadata.generation)
      and ($pods.items | length) == ([$sts.items[].spec.replicas] | add)
      and all($pods.items[]; .spec.containers[0].image == $image
        and .metadata.labels["controller-revision-hash"] == $rev[.metadata.labels["shardkv.dev/group"]]
        and .metadata.deletionTimestamp == null
        and any(.status.conditions[]?; .type == "Ready" and .status == "True"))' <<<"$sts$pods" >/dev/null || return 1
  cluster_available
}

# wait_rolled_to IMAGE GENERATION SINCE_US: rolled_to within ROLLOUT_TIMEOUT. On a timeout the
# failure says where status.rollout stands and what the pod watch shows went wrong, if anything.
wait_rolled_to() {
  local image="$1" gen="$2" since="$3" deadline=$((SECONDS + ROLLOUT_TIMEOUT)) t0=$SECONDS found=""
  until rolled_to "$image" "$gen"; do
    if ((SECONDS >= deadline)); then
      found="$(python3 "$e2e/rollout-check.py" --cluster "$CLUSTER" --watch "$SCENARIO_DIR/pods.watch" \
        --since "$since" --until "$(now_us)" --restarts any)" && found=""
      fail "timed out after ${ROLLOUT_TIMEOUT}s waiting for every node pod on $image and Ready, status.rollout Complete (status.rollout: $(skv -o jsonpath='{.status.rollout.phase} {.status.rollout.progress}: {.status.rollout.message}'))${found:+, and the pod watch shows: $found}"
    fi
    sleep 0.25
  done
  step "ok after $((SECONDS - t0))s: every node pod on $image (its StatefulSet's update revision) and Ready, status.rollout Complete"
}

# watch_node_pods: record every change of the cluster's node pods until the scenario ends, one
# line per event (see e2e/rollout-check.py), stamped with this machine's clock on arrival.
watch_node_pods() {
  local file="$SCENARIO_DIR/pods.watch" pid
  kubectl get pods -n "$CLUSTER_NS" -l shardkv.dev/cluster="$CLUSTER" --watch --output-watch-events -o jsonpath='{.type} {.object.metadata.name} {.object.metadata.uid} ready={.object.status.conditions[?(@.type=="Ready")].status} del={.object.metadata.deletionTimestamp} rev={.object.metadata.labels.controller-revision-hash} image={.object.spec.containers[0].image}{"\n"}' \
    2>"$SCENARIO_DIR/pods.watch.err" > >(while IFS= read -r l; do echo "${EPOCHREALTIME/./} $l"; done >"$file") &
  pid=$!
  on_exit "kill $pid 2>/dev/null"
  local n; n="$(skv -o json | jq '.spec.meta.replicas + .spec.groups * .spec.replicasPerGroup')"
  wait_until 30 "the pod watch listed the $n node pods" history_has "$file" "$n"
}

# restarted_pods SINCE_US: the node pods the pod watch saw deleted after SINCE_US, in order, one
# per line; restarts_begun N SINCE_US: at least N of them.
restarted_pods() {
  awk -v since="$1" '$1 >= since && ($6 != "del=" || $2 == "DELETED") && !seen[$3]++ { print $3 }' "$SCENARIO_DIR/pods.watch"
}
restarts_begun() { (($(restarted_pods "$2" | wc -l) >= $1)); }
# replaced_and_ready POD SINCE_US: the pod watch saw POD deleted after SINCE_US, and a new
# incarnation of it Ready.
replaced_and_ready() {
  awk -v since="$2" -v pod="$1" '$1 >= since && $3 == pod && ($6 != "del=" || $2 == "DELETED") && !old { old = $4 }
    $1 >= since && $3 == pod && old && $4 != old && $5 == "ready=True" { found = 1 } END { exit !found }' "$SCENARIO_DIR/pods.watch"
}

# begin_rollout LOAD: starts load LOAD and waits for it to make progress, then takes what a
# rollout is checked against later: a watch of the node pods, and each group's leader by its
# nodes' own Status (the pod that must be restarted last).
begin_rollout() {
  start_load "$1" 600
  wait_load_progress "$1" 1000
  wait_until 120 "no rollout in flight (status.rollout Complete) and Available" no_rollout_in_flight
  watch_node_pods
  local g leader
  : >"$SCENARIO_DIR/leaders"
  for g in $(skv -o jsonpath='{.status.groups[*].groupId}'); do
    leader="$(node_leader "$g")" || fail "no node of group $g says it leads"
    echo "$g $leader" >>"$SCENARIO_DIR/leaders"
  done
  step "leaders before the rollout: $(paste -sd, "$SCENARIO_DIR/leaders")"
}

# check_rollout SINCE_US UNTIL_US ARGS...: e2e/rollout-check.py over the pod watch, the final
# status and the Events; fails with what it found wrong, else sets ROLLOUT (its JSON summary).
check_rollout() {
  local since="$1" until="$2" out; shift 2
  skv -o json >"$SCENARIO_DIR/cluster.json"
  kubectl get events.events.k8s.io -n "$CLUSTER_NS" -o json >"$SCENARIO_DIR/events.json"
  out="$(python3 "$e2e/rollout-check.py" --cluster "$CLUSTER" --watch "$SCENARIO_DIR/pods.watch" \
    --since "$since" --until "$until" --status "$SCENARIO_DIR/cluster.json" --events "$SCENARIO_DIR/events.json" \
    --leaders "$SCENARIO_DIR/leaders" "$@")" || fail "$out"
  ROLLOUT="$out"
  jq -c 'del(.steps)' <<<"$out" >&2
  jq -r '.steps[] | "  \(.pod): prestop \(.prestop_ms) ms, terminate \(.terminate_s) s, start \(.start_s) s, catch-up \(.catch_up_s) s"' <<<"$out" >&2
}

# events_since REASON SINCE_US: the notes of the Events with REASON emitted after SINCE_US (one
# line per occurrence of an Event series).
events_since() {
  kubectl get events.events.k8s.io -n "$CLUSTER_NS" -o json \
    | jq -r --arg r "$1" --argjson since "$2" '.items[] | select(.reason == $r)
        | select(((.series.lastObservedTime // .eventTime // .deprecatedLastTimestamp) | sub("\\.[0-9]+"; "") | fromdateiso8601) * 1000000 >= ($since - 1000000))
        | range(.series.count // 1) as $_ | .note'
}

# finish_rollout_load NAME FAULT_START_NS FAULT_END_NS: once load NAME made progress after the
# rollout, a rollout fails no request: the checker requires every operation to succeed
# (-min-success 1), besides what every fault asks.
finish_rollout_load() {
  wait_load_progress "$1" 1000
  MIN_SUCCESS=1 finish_disruptive_load "$@"
}

# rollout_note: the figures of the rollout for the table.
rollout_note() {
  jq -r '"\(.restarts | length) pods in \(.total_s)s\(if .still_s > 0 then " (\(.still_s)s of it held still)" else "" end): first stop at +\(.first_stop_s)s, last Ready at +\(.last_ready_s)s, per pod mean/max: prestop \(.prestop_ms[0])/\(.prestop_ms[1]) ms, terminate \(.terminate_s[0])/\(.terminate_s[1]) s, start \(.start_s[0])/\(.start_s[1]) s, catch-up \(.catch_up_s[0])/\(.catch_up_s[1]) s"' <<<"$ROLLOUT"
}

# spec.image to the other image under load: every pod restarted once, one at a time, meta first,
# in each group the followers from the highest ordinal and the leader last after handing over;
# every stop report clean; no client request failed.
scenario_rollout() {
  need_cluster
  local to gen since until t_fault t_healed
  to="$(other_image)"
  begin_rollout rollout
  t_fault="$(epoch_ns)"; since="$(now_us)"
  gen="$(patch_spec "{\"image\":\"$to\"}")"
  wait_rolled_to "$to" "$gen" "$since"
  until="$(now_us)"; t_healed="$(epoch_ns)"
  check_rollout "$since" "$until" --restarts all=1 --order --clean
  # Complete only once the last pod restarted is back: the Event says every pod was updated.
  local complete n
  complete="$(events_since RolloutComplete "$since")"
  n="$(jq '.status.rollout.total' "$SCENARIO_DIR/cluster.json")"
  step "RolloutComplete: $complete"
  [[ "$complete" == *"($n/$n)" ]] || fail "the rollout said Complete before every pod was back on its update revision: RolloutComplete Events '$complete'"
  note "$(rollout_note)"
  note "status.rollout: $(jq -r '.status.rollout | "\(.progress) from \(.startedAt) to \(.finishedAt)"' "$SCENARIO_DIR/cluster.json")"
  finish_rollout_load rollout "$t_fault" "$t_healed"
}

# Paused right after the first pod: Paused, and no pod deleted or created for PAUSE_OBSERVE
# seconds; unpaused, the rollout finishes with every pod restarted once.
scenario_rollout_paused() {
  need_cluster
  local to gen since until t_fault t_healed first still_from still_to i
  to="$(other_image)"
  begin_rollout rpaused
  t_fault="$(epoch_ns)"; since="$(now_us)"
  gen="$(patch_spec "{\"image\":\"$to\"}")"
  wait_until 120 "the first pod is being restarted" restarts_begun 1 "$since"
  gen="$(patch_spec '{"rollout":{"paused":true}}')"
  # Whatever fails, the next scenario does not find the rollout paused.
  on_exit "patch_spec '{\"rollout\":{\"paused\":false}}' >/dev/null"
  first="$(restarted_pods "$since")"
  [[ "$(grep -c . <<<"$first")" == 1 ]] || fail "more than one pod restarted before the pause: $first"
  wait_until 60 "status.rollout.phase Paused" rollout_phase_is Paused "$gen"
  wait_until 120 "$first back and Ready" replaced_and_ready "$first" "$since"
  still_from="$(now_us)"
  step "paused: watching for ${PAUSE_OBSERVE}s that nothing moves"
  local uids; uids="$(node_pod_incarnations)"
  for ((i = 0; i < PAUSE_OBSERVE; i += 2)); do
    sleep 2
    rollout_phase_is Paused "$gen" || fail "status.rollout.phase left Paused while spec.rollout.paused was true: $(skv -o jsonpath='{.status.rollout}')"
  done
  [[ "$(node_pod_incarnations)" == "$uids" ]] || fail "node pods changed while the rollout was paused: before $uids; after $(node_pod_incarnations)"
  [[ "$(restarted_pods "$since")" == "$first" ]] || fail "pods restarted while paused: $(restarted_pods "$since" | paste -sd' ')"
  [[ -n "$(events_since RolloutPaused "$since")" ]] || fail "no RolloutPaused Event"
  still_to="$(now_us)"
  note "paused after $first: $(skv -o jsonpath='{.status.rollout.progress}') for ${PAUSE_OBSERVE}s, nothing moved"
  gen="$(patch_spec '{"rollout":{"paused":false}}')"
  wait_rolled_to "$to" "$gen" "$since"
  until="$(now_us)"; t_healed="$(epoch_ns)"
  check_rollout "$since" "$until" --restarts all=1 --order --clean --still "$still_from:$still_to"
  note "$(rollout_note)"
  finish_rollout_load rpaused "$t_fault" "$t_healed"
}

# The operator pod force-deleted (SIGKILL, no graceful stop) right after the rollout restarted
# its fifth pod: the next operator takes the Lease and finishes from what it observes, no pod is
# restarted twice (pod UIDs; RolloutRestart Events), the same end state.
scenario_rollout_crash() {
  need_cluster
  local to gen since until t_fault t_healed op crash_after=5
  to="$(other_image)"
  begin_rollout rcrash
  t_fault="$(epoch_ns)"; since="$(now_us)"
  gen="$(patch_spec "{\"image\":\"$to\"}")"
  wait_until 240 "the rollout is restarting its pod number $crash_after" restarts_begun "$crash_after" "$since"
  op="$(operator_pod)"; [[ -n "$op" && "$(lease_holder)" == "$op" ]] || fail "operator pod '$op' does not hold the Lease"
  step "force-delete the operator pod $op mid-rollout (after $(restarted_pods "$since" | paste -sd' '))"
  kubectl delete pod -n shardkv-system "$op" --grace-period=0 --force >&2
  local crashed_at; crashed_at="$(restarted_pods "$since" | wc -l)"
  wait_until 120 "a new operator pod holds the Lease" lease_held_by_other "$op"
  wait_rolled_to "$to" "$gen" "$since"
  until="$(now_us)"; t_healed="$(epoch_ns)"
  check_rollout "$since" "$until" --restarts all=1 --order
  # The operators' own account: at most one RolloutRestart Event per pod (an operator killed
  # between a deletion and its Event leaves none for that pod).
  local twice
  twice="$(events_since RolloutRestart "$since" | sed -n 's/^group \([0-9]*\): [a-z]* pod \([0-9]*\).*/\1 \2/p' | sort | uniq -d)"
  [[ -z "$twice" ]] || fail "RolloutRestart Events name pods twice (group ordinal): $twice"
  note "operator $op force-deleted after $crashed_at restarts, the next one finished, every pod restarted once"
  note "$(rollout_note)"
  finish_rollout_load rcrash "$t_fault" "$t_healed"
}

# An image that never becomes Ready, with a short podReadyTimeout: the rollout halts after its
# first pod (Halted, Degraded with the reason, a RolloutHalted Event), the cluster stays Available
# and serving, no second pod is touched; the image set back (and the default timeout), the pod
# is restarted once more and everything converges.
scenario_rollout_halt() {
  need_cluster
  local image gen since until t_fault t_healed first halted_from halted_to msg
  image="$(current_image)"
  begin_rollout rhalt
  t_fault="$(epoch_ns)"; since="$(now_us)"
  gen="$(patch_spec "{\"image\":\"$IMAGE_BROKEN\",\"rollout\":{\"podReadyTimeout\":\"$HALT_READY_TIMEOUT\"}}")"
  # Whatever fails, the next scenario does not find the broken image or the short timeout.
  on_exit "patch_spec '{\"image\":\"$image\",\"rollout\":{\"podReadyTimeout\":null}}' >/dev/null"
  wait_until 180 "status.rollout.phase Halted" rollout_phase_is Halted "$gen"
  first="$(restarted_pods "$since")"
  [[ "$(grep -c . <<<"$first")" == 1 ]] || fail "the rollout restarted more than one pod before it halted: $first"
  msg="$(skv -o jsonpath='{.status.conditions[?(@.type=="Degraded")].status} {.status.conditions[?(@.type=="Degraded")].message}')"
  step "Degraded: $msg"
  [[ "$msg" == "True "*"rollout halted: "*"pod ${first##*-} on the new revision is not Ready"* ]] \
    || fail "the Degraded condition does not give the halt's reason: $msg"
  local event; event="$(events_since RolloutHalted "$since")"
  [[ -n "$event" ]] || fail "no RolloutHalted Event"
  step "RolloutHalted: $event"
  cluster_available || fail "the cluster is not Available while the rollout is halted"
  halted_from="$(now_us)"
  wait_load_progress rhalt 1000
  # A stated window: still halted, and nothing but the broken pod touched.
  local left=$((HALT_OBSERVE - ($(now_us) - halted_from) / 1000000))
  ((left <= 0)) || sleep "$left"
  rollout_phase_is Halted "$gen" || fail "status.rollout left Halted: $(skv -o jsonpath='{.status.rollout}')"
  [[ "$(restarted_pods "$since")" == "$first" ]] || fail "a second pod was touched while halted: $(restarted_pods "$since" | paste -sd' ')"
  halted_to="$(now_us)"
  note "halted after $first ($((($(now_us) - since) / 1000000))s after the change): ${msg#True }"
  gen="$(patch_spec "{\"image\":\"$image\",\"rollout\":{\"podReadyTimeout\":null}}")"
  [[ "$(skv -o jsonpath='{.spec.rollout.podReadyTimeout}')" == 5m ]] || fail "spec.rollout.podReadyTimeout is not back to its default 5m"
  wait_rolled_to "$image" "$gen" "$since"
  until="$(now_us)"; t_healed="$(epoch_ns)"
  check_rollout "$since" "$until" --restarts "$first=2" --still "$halted_from:$halted_to"
  note "converged $((($(now_us) - halted_to) / 1000000))s after the image was set back"
  finish_rollout_load rhalt "$t_fault" "$t_healed"
}

# --- durability and deletion ---------------------------------------------------

# Every key every earlier load wrote, read back after all the faults: each
# history, with its read-back appended, must still be linearizable with no
# acknowledged write lost.
scenario_durability() {
  need_cluster
  [[ -s "$work/loads" ]] || fail "no earlier load to read back: run the load scenarios first"
  local name hist keys n=0 total=0
  while read -r name hist keys; do
    [[ -f "$hist" ]] || fail "the history of load '$name' ($hist) is gone"
    cp "$hist" "$SCENARIO_DIR/$name.jsonl"
    load_pod "readback-$name" --read-back --keys "$keys" --prefix "$name" --history "/history/readback-$name.jsonl"
    wait_until 120 "read-back of '$name' finished" load_done "readback-$name"
    kubectl delete pod -n "$CLUSTER_NS" "load-readback-$name" --wait=false >&2
    run_checker "readback-$name" "$SCENARIO_DIR/$name.jsonl" "$SCENARIO_DIR/readback-$name.jsonl"
    n=$((n + 1)) total=$((total + keys))
  done <"$work/loads"
  note "read back $total keys of $n loads"
}

scenario_delete() {
  need_cluster
  # A watch delivers events in the order etcd committed them: it shows the
  # order in which the finalizer deleted the groups.
  local watch_pid
  kubectl get statefulsets -n "$CLUSTER_NS" -l shardkv.dev/cluster="$CLUSTER" --watch-only --output-watch-events \
    -o jsonpath='{.type} {.object.metadata.name}{"\n"}' >"$SCENARIO_DIR/statefulset-events" 2>&1 &
  watch_pid=$!
  on_exit "kill $watch_pid 2>/dev/null"
  step "delete ShardCluster $CLUSTER (finalizer: data groups, then meta; pvcRetention Delete)"
  kubectl delete shardcluster -n "$CLUSTER_NS" "$CLUSTER" --timeout=180s >&2 || fail "ShardCluster not deleted within 180s"
  wait_until 120 "StatefulSets deleted" count_is 0 kubectl get statefulsets -n "$CLUSTER_NS" -o name
  wait_until 30 "the watch saw the meta group's StatefulSet deleted" grep -q "^DELETED $CLUSTER-meta\$" "$SCENARIO_DIR/statefulset-events"
  local order; order="$(sed -n 's/^DELETED //p' "$SCENARIO_DIR/statefulset-events" | tr '\n' ' ')"
  step "StatefulSets deleted in this order: $order"
  [[ "$order" =~ ^($CLUSTER-g[0-9]+\ )+$CLUSTER-meta\ $ ]] \
    || fail "the finalizer did not delete every data group before the meta group: $order"
  kubectl get events -n "$CLUSTER_NS" --field-selector reason=Deleted -o jsonpath='{.items[*].message}' | grep -q "deleted the groups of $CLUSTER" \
    || fail "no 'Deleted' Event from the finalizer's cleanup"
  wait_until 120 "node pods gone" count_is 0 kubectl get pods -n "$CLUSTER_NS" -l shardkv.dev/cluster="$CLUSTER" -o name
  wait_until 120 "PVCs deleted (pvcRetention whenDeleted: Delete)" count_is 0 kubectl get pvc -n "$CLUSTER_NS" -o name
  delete_namespace "$CLUSTER_NS"
}

# --- the runner's self-test ---------------------------------------------------

# e2e/run runs this first and expects it to fail at the kubectl call: were a
# failing command ignored, every scenario could pass while proving nothing.
selftest_step() {
  kubectl get namespace e2e-selftest-does-not-exist -o name >&2
}
scenario_selftest() {
  selftest_step
  touch "$SCENARIO_DIR/reached"
}
