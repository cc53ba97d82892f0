#!/usr/bin/env bash
# The project's checks: formatting, lints, every test (unit, storage suite, process-level
# cluster tests with real nodes on loopback, operator), the Helm chart, then end to end on a
# local Kubernetes control plane.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo fmt --all -- --check
# One build of every target, which e2e/run repeats as a no-op: the same package selection and
# targets give the same features, so the tests and the e2e pods run the very same binaries.
cargo build --release --locked --workspace --all-targets
cargo clippy --release --locked --workspace --all-targets -- -D warnings
cargo test --release --locked --workspace
# The container image: the Dockerfile's `packaged` target of the binaries just tested, built with
# buildah and smoke-tested with podman (no Docker engine, no registry); e2e/run's operator and
# node pods run it.
scripts/image.sh
# The operator's Helm chart: lint, render, and the values schema refuses an unsafe setting.
# helm is the one e2e/run uses, built once from its Go module (e2e/build-binaries.sh).
HELM="$(e2e/build-binaries.sh helm | tail -n1)/helm"
"$HELM" lint --strict charts/shardkv-operator
"$HELM" template shardkv charts/shardkv-operator --namespace shardkv-system >/dev/null
if "$HELM" template shardkv charts/shardkv-operator --set replicaCount=2 --set leaderElection=false >/dev/null 2>&1; then
  echo "values.schema.json accepted two replicas without leader election" >&2
  exit 1
fi
# End to end on a real Kubernetes control plane: etcd, kube-apiserver and kube-controller-manager
# built from their Go modules (cached by version), the operator installed with helm, the pod
# runner standing in for the kubelet; every client history checked by porcupine. Every scenario
# must run (CI=true makes a skip fail).
(cd e2e/checker && go test ./...)
e2e/run
