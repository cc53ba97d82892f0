# shellcheck shell=bash disable=SC2154 # $shardkv and $workdir are the sourcing script's
# Starting and stopping the one playground a benchmark script runs at a time, and the CPU time
# of server processes; sourced by the scripts in bench/. The caller defines log(), PORTS (every
# port the playground will use), BASE_PORT, STARTUP_DEADLINE_SECS, STOP_DEADLINE_SECS, $shardkv
# and $workdir, and sets playground_pid="" before the first start.

# Stops the playground this script started (SIGINT runs its preStop and stops its nodes),
# SIGKILL only if it has not exited within STOP_DEADLINE_SECS.
stop_playground() {
  [[ -n "$playground_pid" ]] || return 0
  local pid="$playground_pid"
  playground_pid=""
  if kill -0 "$pid" 2>/dev/null; then
    kill -INT "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + STOP_DEADLINE_SECS))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
      log "playground $pid did not exit within ${STOP_DEADLINE_SECS}s of SIGINT; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  wait "$pid" 2>/dev/null || true
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Exits if any of the ports given (default: PORTS) is in use on 127.0.0.1.
ensure_ports_free() {
  local port
  (($#)) || set -- "${PORTS[@]}"
  for port in "$@"; do
    if port_busy "$port"; then
      log "port $port on 127.0.0.1 is in use (another playground or benchmark?); stop it first"
      exit 1
    fi
  done
}

# CPU time (user + system, clock ticks) the processes PIDs have used so far; one that has exited
# counts 0. The fields are read after the command name, which ends at the last ") " of
# /proc/PID/stat (the name itself may hold spaces and parentheses).
cpu_ticks() {
  local pid stat total=0
  local -a fields
  for pid in "$@"; do
    { stat="$(<"/proc/$pid/stat")"; } 2>/dev/null || continue
    read -ra fields <<<"${stat##*) }"
    total=$((total + fields[11] + fields[12]))
  done
  echo "$total"
}

# The host's CPU model: figures differ by a factor of two between the host CPU models this VM
# has run on, so every benchmark result names it.
cpu_model() {
  local model
  model="$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2-)"
  model="${model# }"
  echo "${model:-?}"
}

# Starts a playground of `groups` data groups x 3 replicas in $workdir/NAME and waits (up to
# STARTUP_DEADLINE_SECS) for its endpoints file, which it writes once every shard is served.
# Plaintext (--insecure), or with a third argument `tls` mutual TLS, the playground's default:
# its CA and certificates in $workdir/NAME/tls, and tls.json beside the endpoints file.
start_playground() {
  local name="$1" groups="$2" security=(--insecure) what="$1"
  if [[ "${3:-}" == tls ]]; then security=(); what="$name, mutual TLS"; fi
  ensure_ports_free
  log "starting a playground of $groups data group(s) x 3 replicas ($what)"
  "$shardkv" playground "${security[@]}" --groups "$groups" --replicas 3 --data-dir "$workdir/$name" \
    --base-port "$BASE_PORT" >"$workdir/$name.log" 2>&1 &
  playground_pid=$!
  local deadline=$((SECONDS + STARTUP_DEADLINE_SECS))
  until [[ -s "$workdir/$name/endpoints" ]]; do
    if ! kill -0 "$playground_pid" 2>/dev/null; then
      log "the playground exited:"
      tail -n 20 "$workdir/$name.log" >&2
      exit 1
    fi
    if ((SECONDS >= deadline)); then
      log "the playground did not serve every shard within ${STARTUP_DEADLINE_SECS}s"
      exit 1
    fi
    sleep 0.2
  done
}

