#!/usr/bin/env bash
# Builds shardkv and starts a local 3-replica playground cluster (no Kubernetes needed).
# Extra arguments go to `shardkv playground`; Ctrl-C stops it cleanly (preStop on every node).
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo build --release --bins
data_dir="${SHARDKV_PLAYGROUND_DIR:-$PWD/playground-data}"
exec "$SHARDKV_BIN/shardkv" playground --replicas 3 --data-dir "$data_dir" "$@"
