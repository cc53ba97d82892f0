#!/usr/bin/env bash
# Builds shardkv and starts a local sharded playground cluster (no Kubernetes needed): a meta
# group and 2 data groups of 3 replicas, 64 shards. Extra arguments go to `shardkv playground`
# (e.g. --groups 3 --replicas 1 --shards 16); Ctrl-C stops it cleanly (preStop on every node).
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo build --release --bins
data_dir="${SHARDKV_PLAYGROUND_DIR:-$PWD/playground-data}"
exec "$SHARDKV_BIN/shardkv" playground --data-dir "$data_dir" "$@"
