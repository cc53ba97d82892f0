#!/usr/bin/env bash
# Builds etcd, kube-apiserver, kube-controller-manager, kubectl and helm from
# their Go modules, once, into a cache directory keyed by version. Prints that
# directory on stdout as its last line. A binary already present is not rebuilt.
#
#   e2e/build-binaries.sh            # build what is missing, print the bin dir
#   e2e/build-binaries.sh helm       # only these binaries (scripts/env.sh needs only helm)
#   E2E_BIN_CACHE=/some/dir e2e/build-binaries.sh
#
# GOCACHE and GOMODCACHE stay at Go's persistent defaults, so a rebuild after a
# version bump reuses every unchanged package. Builds run one at a time with
# -p 2 (2-core machines): the first full build takes tens of CPU-minutes.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"

cache_root="${E2E_BIN_CACHE:-$HOME/.cache/shardkv/e2e-bin}"
bin="$cache_root/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-helm-$HELM_VERSION"
mkdir -p "$bin"

# The go.mod pins must agree with versions.env, or the cache key would lie.
modfile="$here/controlplane/go.mod"
grep -q "k8s.io/kubernetes $K8S_VERSION" "$modfile" \
  || { echo "build-binaries: $modfile does not pin k8s.io/kubernetes $K8S_VERSION (versions.env)" >&2; exit 1; }
grep -q "go.etcd.io/etcd/server/v3 $ETCD_VERSION" "$modfile" \
  || { echo "build-binaries: $modfile does not pin go.etcd.io/etcd/server/v3 $ETCD_VERSION (versions.env)" >&2; exit 1; }

export CGO_ENABLED=0
jobs="${E2E_BUILD_JOBS:-2}"
minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
# What kubernetes' hack/lib/version.sh stamps, so /version reports the real
# release (helm and kubectl compare against it).
ver_pkgs=(k8s.io/component-base/version k8s.io/client-go/pkg/version)
k8s_ldflags="-s -w"
for p in "${ver_pkgs[@]}"; do
  k8s_ldflags+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
  k8s_ldflags+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
done

wanted=("$@")
# build NAME CMD...: runs CMD (which writes $bin/NAME.tmp) unless NAME exists or
# was not asked for.
build() {
  local name="$1"; shift
  if ((${#wanted[@]})) && [[ " ${wanted[*]} " != *" $name "* ]]; then
    return
  fi
  if [[ -x "$bin/$name" ]]; then
    echo "build-binaries: $name cached" >&2
    return
  fi
  echo "build-binaries: building $name ..." >&2
  local t0=$SECONDS
  rm -f "$bin/$name.tmp"
  "$@"
  mv "$bin/$name.tmp" "$bin/$name"
  echo "build-binaries: built $name in $((SECONDS - t0))s" >&2
}

cd "$here/controlplane"
build etcd go build -p "$jobs" -trimpath -ldflags "-s -w" -o "$bin/etcd.tmp" ./cmd/etcd
for c in kube-apiserver kube-controller-manager kubectl; do
  build "$c" go build -p "$jobs" -trimpath -ldflags "$k8s_ldflags" -o "$bin/$c.tmp" "k8s.io/kubernetes/cmd/$c"
done

# helm has its own go.mod (no replace directives): build it from its module at
# the pinned version, outside our module, so its dependency graph is its own.
build_helm() {
  local gobin; gobin="$(mktemp -d)"
  (cd "$gobin" && GOBIN="$gobin" GOFLAGS=-mod=mod go install -p "$jobs" -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION")
  mv "$gobin/helm" "$bin/helm.tmp"
  rmdir "$gobin"
}
build helm build_helm

echo "$bin"
