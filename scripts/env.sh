# Sourced by the other scripts: installs what the build needs and sets shared paths.
#
# RocksDB's bindings are generated with libclang at build time; the bench's etcd client
# compiles etcd's protos with protoc; e2e's pod runner and its held-move scenarios use `ip` and
# `tc` (iproute2), its scripts jq. The cargo target dir lives
# outside the clone so the ~30 CPU-minute RocksDB build is done once per machine.
set -euo pipefail

need_pkgs=()
for pkg in libclang-dev protobuf-compiler jq iproute2; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_pkgs+=("$pkg")
done
if ((${#need_pkgs[@]})); then
  echo "installing system packages: ${need_pkgs[*]}" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/shardkv/target}"
mkdir -p "$CARGO_TARGET_DIR"
SHARDKV_BIN="$CARGO_TARGET_DIR/release"
export SHARDKV_BIN
