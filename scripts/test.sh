#!/usr/bin/env bash
# The project's checks: formatting, lints, every test (unit, storage suite, process-level
# cluster tests with real nodes on loopback, operator), the Helm chart, then end to end on a
# local Kubernetes control plane.
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings
cargo test --release --workspace
# The operator's Helm chart: lint, render, and the values schema refuses an unsafe setting.
"$HELM" lint --strict charts/shardkv-operator
"$HELM" template shardkv charts/shardkv-operator --namespace shardkv-system >/dev/null
if "$HELM" template shardkv charts/shardkv-operator --set replicaCount=2 --set leaderElection=false >/dev/null 2>&1; then
  echo "values.schema.json accepted two replicas without leader election" >&2
  exit 1
fi
# End to end on a real Kubernetes control plane: etcd, kube-apiserver and kube-controller-manager
# built from their Go modules (cached by version), the operator installed with helm, the pod
# runner standing in for the kubelet; every client history checked by porcupine.
(cd e2e/checker && go test ./...)
E2E_CARGO_TARGET_DIR="$CARGO_TARGET_DIR" E2E_CARGO_PROFILE=release e2e/run
