#!/usr/bin/env bash
# A real Kubernetes control plane on loopback: etcd, kube-apiserver and
# kube-controller-manager, built by e2e/build-binaries.sh.
#
#   e2e/controlplane.sh up DIR        start (DIR is created; etcd data, certs,
#                                     logs and kubeconfigs live there), wait
#                                     until healthy, print KUBECONFIG=... and
#                                     return, leaving the processes running
#   e2e/controlplane.sh down DIR      stop the processes `up DIR` started (only
#                                     those: their PIDs are in DIR/pids)
#   e2e/controlplane.sh run DIR -- CMD ARGS...
#                                     up, run CMD with KUBECONFIG set, then down
#                                     (also on failure or Ctrl-C); exits with
#                                     CMD's status
#   e2e/controlplane.sh kubeconfig DIR USER [GROUP...]
#                                     issue a client certificate from DIR's CA
#                                     and print the path of a kubeconfig for it
#                                     (e.g. system:node:NAME system:nodes)
#
# Environment: E2E_BIN (directory with the binaries; default: build/lookup via
# build-binaries.sh), E2E_READY_TIMEOUT (seconds, default 120),
# E2E_ETCD_UNSAFE_NO_FSYNC=1 (etcd skips fsync: faster, not crash-safe).
#
# Everything listens on 127.0.0.1 only, on ports picked free at start-up, from
# outside the kernel's ephemeral port range (see free_port). The
# service cluster IP range (10.96.0.0/16) exists only as API data: nothing here
# routes or dials it (there is no kube-proxy).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

die() { echo "controlplane: $*" >&2; exit 1; }
log() { echo "controlplane: $*" >&2; }

SERVICE_CIDR=10.96.0.0/16
SERVICE_FIRST_IP=10.96.0.1
# The pod runner's node address (its pod bridge), from which pods reach the
# API server through its forwarder: the serving certificate names it.
POD_GATEWAY="${E2E_POD_GATEWAY:-10.213.0.1}"

bin_dir() {
  if [[ -n "${E2E_BIN:-}" ]]; then echo "$E2E_BIN"; return; fi
  "$here/build-binaries.sh" | tail -n1
}

# --- ports -------------------------------------------------------------------

# Ports come from outside the kernel's ephemeral range
# (/proc/sys/net/ipv4/ip_local_port_range), where it picks the local port of
# every outgoing connection: a port found free in there can be taken by some
# client's connection before the component binds it (kube-apiserver once
# failed so). Outside it only an explicit bind takes a port; should one do so
# all the same, `up` starts again with other ports (up_with_retry).
declare -A taken_ports=()
port_lo=0 port_hi=0
# port_range: port_lo..port_hi = 20000 up to the ephemeral range, or, if that
# leaves fewer than 1000 ports, above the range.
port_range() {
  local eph_lo=32768 eph_hi=60999
  read -r eph_lo eph_hi </proc/sys/net/ipv4/ip_local_port_range || true
  if ((eph_lo - 20000 >= 1000)); then
    port_lo=20000 port_hi=$((eph_lo - 1))
  elif ((65535 - eph_hi >= 1000)); then
    port_lo=$((eph_hi + 1)) port_hi=65535
  else
    die "fewer than 1000 ports outside the ephemeral range $eph_lo-$eph_hi (net.ipv4.ip_local_port_range)"
  fi
}

# free_port VAR: set VAR to a TCP port outside the ephemeral range that no
# socket uses (and not handed out by this run: hence no command substitution,
# which would lose taken_ports).
free_port() {
  local var="$1" used p i
  ((port_lo)) || port_range
  used=" $(ss -Htan 2>/dev/null | awk '{n=split($4,a,":"); print a[n]}' | tr '\n' ' ') "
  for ((i = 0; i < 200; i++)); do
    p=$((port_lo + (RANDOM * 32768 + RANDOM) % (port_hi - port_lo + 1)))
    [[ "$used" == *" $p "* || -n "${taken_ports[$p]:-}" ]] && continue
    taken_ports[$p]=1
    printf -v "$var" '%s' "$p"
    return
  done
  die "no free port found in $port_lo-$port_hi"
}

# --- certificates ------------------------------------------------------------

# issue_cert DIR NAME SUBJECT EXTENSIONS: pki/NAME.{crt,key} (P-256) signed by
# the CA pki/$CA (default: ca).
issue_cert() {
  local dir="$1" name="$2" subj="$3" ext="$4"
  openssl ecparam -name prime256v1 -genkey -noout -out "$dir/pki/$name.key" 2>/dev/null
  openssl req -new -key "$dir/pki/$name.key" -subj "$subj" -out "$dir/pki/$name.csr" 2>/dev/null
  printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n%s\n' "$ext" >"$dir/pki/$name.ext"
  local ca="${CA:-ca}"
  openssl x509 -req -in "$dir/pki/$name.csr" -CA "$dir/pki/$ca.crt" -CAkey "$dir/pki/$ca.key" \
    -CAcreateserial -days 30 -sha256 -extfile "$dir/pki/$name.ext" -out "$dir/pki/$name.crt" 2>/dev/null \
    || die "openssl could not issue the $name certificate"
  rm -f "$dir/pki/$name.csr" "$dir/pki/$name.ext"
}

# issue_client_cert DIR NAME CN [O...]: a client certificate (user CN, groups O).
issue_client_cert() {
  local dir="$1" name="$2" cn="$3"; shift 3
  local subj="" o
  for o in "$@"; do subj+="/O=$o"; done
  issue_cert "$dir" "$name" "$subj/CN=$cn" "extendedKeyUsage=clientAuth"
}

# issue_serving_cert DIR NAME CN SANS: a serving certificate.
issue_serving_cert() {
  issue_cert "$1" "$2" "/CN=$3" "extendedKeyUsage=serverAuth
subjectAltName=$4"
}

# write_kubeconfig DIR NAME: DIR/NAME.kubeconfig for client cert pki/NAME.
write_kubeconfig() {
  local dir="$1" name="$2" server
  server="$(cat "$dir/apiserver-url")"
  cat >"$dir/$name.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: shardkv-e2e
  cluster:
    server: $server
    certificate-authority-data: $(base64 -w0 <"$dir/pki/ca.crt")
users:
- name: $name
  user:
    client-certificate-data: $(base64 -w0 <"$dir/pki/$name.crt")
    client-key-data: $(base64 -w0 <"$dir/pki/$name.key")
contexts:
- name: shardkv-e2e
  context:
    cluster: shardkv-e2e
    user: $name
current-context: shardkv-e2e
EOF
}

gen_pki() {
  local dir="$1"
  mkdir -p "$dir/pki"
  openssl ecparam -name prime256v1 -genkey -noout -out "$dir/pki/ca.key" 2>/dev/null
  openssl req -x509 -new -key "$dir/pki/ca.key" -subj "/CN=shardkv-e2e-ca" -days 30 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    -out "$dir/pki/ca.crt" 2>/dev/null
  issue_serving_cert "$dir" apiserver kube-apiserver \
    "IP:127.0.0.1,IP:$SERVICE_FIRST_IP,IP:$POD_GATEWAY,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  issue_serving_cert "$dir" controller-manager-serving kube-controller-manager "IP:127.0.0.1,DNS:localhost"
  # Service-account token signing key pair.
  openssl ecparam -name prime256v1 -genkey -noout -out "$dir/pki/sa.key" 2>/dev/null
  openssl ec -in "$dir/pki/sa.key" -pubout -out "$dir/pki/sa.pub" 2>/dev/null
  # The aggregation layer's front proxy: its own CA, so that no other client
  # certificate can pass for it.
  openssl ecparam -name prime256v1 -genkey -noout -out "$dir/pki/front-proxy-ca.key" 2>/dev/null
  openssl req -x509 -new -key "$dir/pki/front-proxy-ca.key" -subj "/CN=shardkv-e2e-front-proxy-ca" -days 30 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    -out "$dir/pki/front-proxy-ca.crt" 2>/dev/null
  CA=front-proxy-ca issue_client_cert "$dir" front-proxy-client front-proxy-client
  issue_client_cert "$dir" admin admin system:masters
  issue_client_cert "$dir" controller-manager system:kube-controller-manager
}

# --- processes ---------------------------------------------------------------

# start DIR NAME CMD...: run CMD in the background, logging to DIR/logs/NAME.log,
# and record "NAME PID" in DIR/pids.
start() {
  local dir="$1" name="$2"; shift 2
  nohup "$@" >"$dir/logs/$name.log" 2>&1 </dev/null &
  echo "$name $!" >>"$dir/pids"
  log "started $name (pid $!), log: $dir/logs/$name.log"
}

# ours DIR PID: PID is alive and is the binary from our bin dir we started.
ours() {
  local dir="$1" pid="$2" exe
  [[ -e "/proc/$pid" ]] || return 1
  exe="$(readlink "/proc/$pid/exe" 2>/dev/null || true)"
  [[ -n "$exe" && "$exe" == "$(cat "$dir/bin-dir")"/* ]]
}

alive_or_die() {
  local dir="$1" name="$2" pid
  pid="$(awk -v n="$name" '$1 == n {print $2}' "$dir/pids" | tail -n1)"
  if ! ours "$dir" "$pid"; then
    log "$name (pid $pid) exited; last lines of $dir/logs/$name.log:"
    tail -n 30 "$dir/logs/$name.log" >&2 || true
    return 1
  fi
}

# wait_for DIR DEADLINE_SECONDS WHAT CHECK...: poll CHECK every 0.2 s until it
# succeeds; fail when the deadline passes or a started process died.
wait_for() {
  local dir="$1" timeout="$2" what="$3"; shift 3
  local deadline=$((SECONDS + timeout)) name
  until "$@" >/dev/null 2>&1; do
    while read -r name _; do alive_or_die "$dir" "$name" || die "$name died while waiting for $what"; done <"$dir/pids"
    ((SECONDS < deadline)) || die "timed out after ${timeout}s waiting for $what"
    sleep 0.2
  done
}

kubectl_admin() { "$(cat "$1/bin-dir")/kubectl" --kubeconfig "$1/admin.kubeconfig" "${@:2}"; }

cmd_up() {
  local dir="$1"
  [[ -n "$dir" ]] || die "usage: $0 up DIR"
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  if [[ -s "$dir/pids" ]]; then
    die "$dir/pids exists: a control plane may still run there (run '$0 down $dir' first)"
  fi
  local bin t0=$SECONDS timeout="${E2E_READY_TIMEOUT:-120}"
  bin="$(bin_dir)"
  for b in etcd kube-apiserver kube-controller-manager kubectl; do
    [[ -x "$bin/$b" ]] || die "$bin/$b missing (run e2e/build-binaries.sh)"
  done
  echo "$bin" >"$dir/bin-dir"
  mkdir -p "$dir/logs"
  : >"$dir/pids"

  gen_pki "$dir"
  local etcd_client etcd_peer api_port kcm_port
  free_port etcd_client; free_port etcd_peer; free_port api_port; free_port kcm_port
  echo "https://127.0.0.1:$api_port" >"$dir/apiserver-url"
  write_kubeconfig "$dir" admin
  write_kubeconfig "$dir" controller-manager

  local etcd_extra=()
  [[ "${E2E_ETCD_UNSAFE_NO_FSYNC:-0}" == 1 ]] && etcd_extra+=(--unsafe-no-fsync)
  start "$dir" etcd "$bin/etcd" \
    --name e2e --data-dir "$dir/etcd-data" \
    --listen-client-urls "http://127.0.0.1:$etcd_client" --advertise-client-urls "http://127.0.0.1:$etcd_client" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-cluster "e2e=http://127.0.0.1:$etcd_peer" --initial-cluster-state new \
    --log-level warn "${etcd_extra[@]}"
  wait_for "$dir" "$timeout" "etcd health" curl -sf "http://127.0.0.1:$etcd_client/health"
  log "etcd healthy after $((SECONDS - t0))s"

  start "$dir" kube-apiserver "$bin/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_client" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
    --tls-cert-file "$dir/pki/apiserver.crt" --tls-private-key-file "$dir/pki/apiserver.key" \
    --client-ca-file "$dir/pki/ca.crt" \
    --requestheader-client-ca-file "$dir/pki/front-proxy-ca.crt" \
    --requestheader-allowed-names front-proxy-client \
    --requestheader-username-headers X-Remote-User \
    --requestheader-group-headers X-Remote-Group \
    --requestheader-extra-headers-prefix X-Remote-Extra- \
    --proxy-client-cert-file "$dir/pki/front-proxy-client.crt" \
    --proxy-client-key-file "$dir/pki/front-proxy-client.key" \
    --authorization-mode Node,RBAC \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$dir/pki/sa.pub" \
    --service-account-signing-key-file "$dir/pki/sa.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --endpoint-reconciler-type none \
    --allow-privileged=true \
    --profiling=false \
    --v 1
  wait_for "$dir" "$timeout" "kube-apiserver /readyz" kubectl_admin "$dir" get --raw /readyz
  log "kube-apiserver ready after $((SECONDS - t0))s"

  start "$dir" kube-controller-manager "$bin/kube-controller-manager" \
    --kubeconfig "$dir/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$dir/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$dir/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$kcm_port" \
    --tls-cert-file "$dir/pki/controller-manager-serving.crt" \
    --tls-private-key-file "$dir/pki/controller-manager-serving.key" \
    --controllers '*' \
    --use-service-account-credentials=true \
    --service-account-private-key-file "$dir/pki/sa.key" \
    --root-ca-file "$dir/pki/ca.crt" \
    --cluster-signing-cert-file "$dir/pki/ca.crt" --cluster-signing-key-file "$dir/pki/ca.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --leader-elect=false \
    --profiling=false \
    --v 1
  wait_for "$dir" "$timeout" "kube-controller-manager /healthz" \
    curl -sf --cacert "$dir/pki/ca.crt" "https://127.0.0.1:$kcm_port/healthz"
  # The controllers run once the service-account controller has made the
  # default namespace's ServiceAccount (which pods need to be admitted).
  wait_for "$dir" "$timeout" "ServiceAccount default/default (controllers running)" \
    kubectl_admin "$dir" get serviceaccount default -n default
  log "kube-controller-manager healthy and controllers running after $((SECONDS - t0))s"
  echo "$((SECONDS - t0))" >"$dir/startup-seconds"
  echo "KUBECONFIG=$dir/admin.kubeconfig"
}

# up_with_retry DIR: cmd_up; should a component fail to bind its port (its log
# says "address already in use": something bound the port after free_port
# found it free), stop what was started and start again with other ports, at
# most 3 times in all. The logs of a failed attempt stay as NAME.log.attemptN.
up_with_retry() {
  local dir="$1" attempt rc f
  for attempt in 1 2 3; do
    set +e
    (set -e; cmd_up "$dir")
    rc=$?
    set -e
    if ((rc == 0)); then return 0; fi
    if ((attempt == 3)) || ! grep -qs 'address already in use' "$dir"/logs/*.log; then return "$rc"; fi
    log "a component could not bind its port (taken after it was found free); starting again with other ports"
    cmd_down "$dir"
    for f in "$dir"/logs/*.log; do mv "$f" "$f.attempt$attempt"; done
    rm -rf "$dir/etcd-data"
  done
}

cmd_down() {
  local dir="$1"
  [[ -n "$dir" && -d "$dir" ]] || die "usage: $0 down DIR (an existing directory)"
  dir="$(cd "$dir" && pwd)"
  [[ -f "$dir/pids" ]] || { log "nothing to stop in $dir"; return 0; }
  local name pid entries=()
  # Reverse start order: controller-manager, apiserver, then etcd.
  mapfile -t entries < <(tac "$dir/pids")
  for e in "${entries[@]}"; do
    read -r name pid <<<"$e"
    if ours "$dir" "$pid"; then
      kill -TERM "$pid" 2>/dev/null || true
      local deadline=$((SECONDS + 15))
      while ours "$dir" "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
      if ours "$dir" "$pid"; then
        log "$name (pid $pid) ignored SIGTERM for 15s; SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
      fi
      log "stopped $name (pid $pid)"
    fi
  done
  : >"$dir/pids"
}

cmd_run() {
  local dir="$1"; shift
  [[ "${1:-}" == "--" ]] && shift
  [[ $# -gt 0 ]] || die "usage: $0 run DIR -- CMD ARGS..."
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  run_dir="$dir" # a global: the trap may run inside any function
  trap 'cmd_down "$run_dir"' EXIT
  trap 'exit 130' INT TERM
  up_with_retry "$dir" >/dev/null
  local rc=0
  KUBECONFIG="$dir/admin.kubeconfig" "$@" || rc=$?
  exit "$rc"
}

cmd_kubeconfig() {
  local dir="$1" user="$2"; shift 2
  [[ -f "$dir/pki/ca.key" ]] || die "$dir has no control plane PKI (run '$0 up $dir' first)"
  dir="$(cd "$dir" && pwd)"
  local name="user-${user//[^A-Za-z0-9_.-]/_}"
  issue_client_cert "$dir" "$name" "$user" "$@"
  write_kubeconfig "$dir" "$name"
  echo "$dir/$name.kubeconfig"
}

case "${1:-}" in
  up)
    # A failed (or interrupted) start-up stops whatever it had started.
    up_ok=0 up_dir="${2:-}"
    trap '((up_ok)) || { [[ -d "$up_dir" ]] && cmd_down "$up_dir"; }' EXIT
    trap 'exit 130' INT TERM
    up_with_retry "${2:-}"
    # shellcheck disable=SC2034 # read by the EXIT trap
    up_ok=1 ;;
  down) cmd_down "${2:-}" ;;
  run) [[ $# -ge 3 ]] || die "usage: $0 run DIR -- CMD ARGS..."; cmd_run "${@:2}" ;;
  kubeconfig) [[ $# -ge 3 ]] || die "usage: $0 kubeconfig DIR USER [GROUP...]"; cmd_kubeconfig "${@:2}" ;;
  *) die "usage: $0 up DIR | down DIR | run DIR -- CMD... | kubeconfig DIR USER [GROUP...]" ;;
esac
