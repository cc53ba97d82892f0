#!/usr/bin/env bash
# The container image, packaged from the release binaries scripts/test.sh built and tested
# (the Dockerfile's `packaged` target), then smoke-tested with podman.
#
#   scripts/image.sh             build (skipped when nothing changed), smoke-test, print the digest
#   scripts/image.sh --no-smoke  build only (e2e/run: a no-op when the image is current)
#   scripts/image.sh --force     build even when nothing changed
#   scripts/image.sh --new-base  make the Debian base image again (new security updates)
#
# No Docker engine is needed: buildah builds the Dockerfile (--isolation chroot), podman runs
# the image with runc, and the Debian bookworm base image is made from Debian's archive with
# mmdebstrap (once, cached: no container registry is needed). Installs buildah, podman, runc,
# umoci, mmdebstrap, binutils and curl with apt-get when missing. Needs root.
#
# Environment:
#   CARGO_TARGET_DIR   the release binaries are in $CARGO_TARGET_DIR/release
#                      (default ~/.cache/shardkv/target, as scripts/test.sh)
#   SHARDKV_IMAGE_DIR  cache and output directory (default ~/.cache/shardkv/image)
#   SHARDKV_IMAGE      name in the local container storage (default localhost/shardkv:dev)
#
# Output, in $SHARDKV_IMAGE_DIR:
#   oci/       the image as an OCI layout, ref "dev" (umoci/skopeo: oci:$SHARDKV_IMAGE_DIR/oci:dev;
#              the e2e pod runner: --oci-image NAME=$SHARDKV_IMAGE_DIR/oci:dev)
#   digest     its manifest digest (sha256:...), also the last line printed
#   base/      the cached base image (an OCI archive) and the versions its libraries define
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

smoke=1 force=0 new_base=0
for a in "$@"; do
  case "$a" in
    --no-smoke) smoke=0 ;;
    --force) force=1 ;;
    --new-base) new_base=1 force=1 ;;
    -h | --help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "image.sh: unknown argument $a (see --help)" >&2; exit 2 ;;
  esac
done

t_start=$(date +%s.%N)
say() { printf 'image.sh: %s\n' "$*"; }
die() { printf 'image.sh: FAIL: %s\n' "$*" >&2; exit 1; }
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1fs", b - a }'; }

[[ "$(id -u)" == 0 ]] || die "needs root (buildah --isolation chroot, podman with runc, the e2e pod runner)"

target_dir="${CARGO_TARGET_DIR:-$HOME/.cache/shardkv/target}"
bin="$target_dir/release"
dir="${SHARDKV_IMAGE_DIR:-$HOME/.cache/shardkv/image}"
image="${SHARDKV_IMAGE:-localhost/shardkv:dev}"
ref=dev
base_image=localhost/debian:bookworm-slim
suite=bookworm
binaries=(shardkv-node shardkv shardkv-operator)
# runc: crun fails on hybrid cgroup hosts. Explicit rlimits: podman's defaults (nofile
# 1048576) are refused where the hard limits are lower; nofile is this shell's hard limit (at
# most 65536), nproc a modest 4096 (the node's threads are far fewer).
podman=(podman --runtime runc)
nofile="$(ulimit -Hn)"
if [[ "$nofile" == unlimited ]] || ((nofile > 65536)); then nofile=65536; fi
ulimits=(--ulimit "nofile=$nofile:$nofile" --ulimit nproc=4096:4096)
mkdir -p "$dir/base"

# --- tools -----------------------------------------------------------------------------------
need=()
for pkg in buildah podman runc umoci mmdebstrap binutils curl; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if ((${#need[@]})); then
  say "installing ${need[*]}"
  timeout 300 apt-get update -qq || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq "${need[@]}" >/dev/null \
    || die "could not install ${need[*]}"
fi

# --- the release binaries ----------------------------------------------------------------------
for b in "${binaries[@]}"; do
  [[ -x "$bin/$b" ]] || die "no $bin/$b: build the release binaries first
  (cargo build --release --locked --workspace --all-targets, as scripts/test.sh does;
  CARGO_TARGET_DIR=$target_dir)"
done
version="$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$root/Cargo.toml" | head -n1)"
[[ -n "$version" ]] || die "no workspace version in Cargo.toml"
revision="$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)"
# --no-optional-locks: status must not write the index (others may be using it).
if [[ "$revision" != unknown && -n "$(git -C "$root" --no-optional-locks status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
  revision="$revision-dirty"
fi

# --- the base image: Debian bookworm, minbase (what debian:bookworm-slim holds) ----------------
base_archive="$dir/base/$suite-slim.oci.tar"
base_libs="$dir/base/$suite-slim.libs"
# Every shared library of a root file system as "SONAME -", and every symbol version it
# defines as "SONAME VERSION" (GLIBC_2.36, GLIBCXX_3.4.30, GCC_7.0.0, ...).
library_versions() {
  local f soname
  for f in "$1"/usr/lib/x86_64-linux-gnu/*.so* "$1"/usr/lib64/*.so*; do
    [[ -f "$f" && ! -L "$f" ]] || continue
    soname="$(readelf -d "$f" 2>/dev/null | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')"
    [[ -n "$soname" ]] || continue
    echo "$soname -"
    readelf -V --wide "$f" 2>/dev/null | sed -n '/Version definition section/,/Version needs section/p' \
      | sed -n "/Rev: /{/Flags: BASE/d; s/.*Name: \([^ ]*\).*/$soname \1/p}"
  done | sort -u
}
make_base() {
  local t0 tmp ctr
  t0=$(date +%s.%N)
  say "making the base image $base_image with mmdebstrap (Debian $suite, minbase; about a minute)"
  tmp="$(mktemp -d "${TMPDIR:-/tmp}/shardkv-base.XXXXXX")"
  # What debian:bookworm-slim leaves out: documentation, man pages, locales.
  if ! timeout 900 mmdebstrap --variant=minbase --mode=root --format=directory \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/lintian/*' \
    "$suite" "$tmp/rootfs" \
    "deb http://deb.debian.org/debian $suite main" \
    "deb http://deb.debian.org/debian $suite-updates main" \
    "deb http://deb.debian.org/debian-security $suite-security main" >"$tmp/mmdebstrap.log" 2>&1; then
    tail -n 20 "$tmp/mmdebstrap.log" >&2
    rm -rf "$tmp"
    die "mmdebstrap failed (is deb.debian.org reachable?)"
  fi
  # A container runtime provides /dev, /etc/hosts, /etc/resolv.conf and the host name: drop
  # the device nodes and the build machine's files (an empty /dev stays as the mount point).
  find "$tmp/rootfs/dev" -mindepth 1 -delete
  rm -f "$tmp/rootfs/etc/resolv.conf" "$tmp/rootfs/etc/hostname" "$tmp/rootfs/etc/hosts"
  library_versions "$tmp/rootfs" >"$base_libs.new"
  grep -q '^libc.so.6 GLIBC_2' "$base_libs.new" || die "no libc.so.6 symbol versions found in the base"
  tar --numeric-owner --xattrs --acls -C "$tmp/rootfs" -cf "$tmp/rootfs.tar" .
  local old; old="$(buildah inspect --type image --format '{{.FromImageID}}' "$base_image" 2>/dev/null || true)"
  ctr="$(buildah from scratch)"
  buildah add -q "$ctr" "$tmp/rootfs.tar" / >/dev/null
  buildah config --cmd '["bash"]' --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --label "org.opencontainers.image.description=Debian $suite minbase, made with mmdebstrap by scripts/image.sh" "$ctr"
  buildah commit -q --rm "$ctr" "$base_image" >/dev/null
  rm -f "$base_archive"
  buildah push -q "$base_image" "oci-archive:$base_archive" >/dev/null
  mv "$base_libs.new" "$base_libs"
  rm -rf "$tmp"
  # The base this one replaces, unless an image still uses it.
  [[ -z "$old" ]] || buildah rmi "$old" >/dev/null 2>&1 || true
  say "base image made in $(since "$t0") ($(du -m "$base_archive" | cut -f1) MB archive, cached in $dir/base)"
}
if ((new_base)) || [[ ! -s "$base_archive" || ! -s "$base_libs" ]]; then
  make_base
elif ! buildah inspect --type image "$base_image" >/dev/null 2>&1; then
  say "restoring the base image from $base_archive"
  id="$(buildah pull -q "oci-archive:$base_archive")" || die "could not load $base_archive (remove it to make a new base)"
  buildah tag "$id" "$base_image"
fi
base_id="$(buildah inspect --type image --format '{{.FromImageID}}' "$base_image")"

# --- the binaries run on that base: every library and symbol version they need is there --------
glibc="$(sed -n 's/^libc.so.6 GLIBC_\([0-9.]*\)$/\1/p' "$base_libs" | sort -V | tail -n1)"
for b in "${binaries[@]}"; do
  [[ "$(readelf -h "$bin/$b" 2>/dev/null)" == *"Machine:"*"X86-64"* ]] || die "$bin/$b is not an x86-64 ELF binary"
  missing=()
  while read -r lib; do
    grep -qxF "$lib -" "$base_libs" || missing+=("library $lib")
  done < <(readelf -d "$bin/$b" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
  while read -r lib ver; do
    grep -qxF "$lib $ver" "$base_libs" || missing+=("$ver (from $lib)")
  done < <(readelf -V --wide "$bin/$b" | awk '
    /Version needs section/ { n = 1; next }
    /^$/ { n = 0 }
    n && /File:/ { for (i = 1; i <= NF; i++) if ($i == "File:") f = $(i + 1) }
    n && /Name:/ { for (i = 1; i <= NF; i++) if ($i == "Name:") print f, $(i + 1) }' | sort -u)
  if ((${#missing[@]})); then
    die "$bin/$b cannot run on the base image (Debian $suite, glibc $glibc): it needs ${missing[*]}.
  It was built on a newer system than the image's base: build the release binaries on Debian $suite
  (glibc $glibc or older; the Dockerfile's build stage does), or use a newer base."
  fi
done

# --- build: the Dockerfile's `packaged` target, the binaries as the build context ---------------
stamp="$( {
  echo "$version $revision $base_id $image"
  sha256sum "$root/Dockerfile" "$0" "${binaries[@]/#/$bin/}" | cut -d' ' -f1
} | sha256sum | cut -d' ' -f1)"
current=0
if ((!force)) && [[ "$(cat "$dir/stamp" 2>/dev/null)" == "$stamp" && -s "$dir/digest" && -f "$dir/oci/index.json" ]] \
  && buildah inspect --type image "$image" >/dev/null 2>&1; then
  current=1
  say "image current (same binaries, Dockerfile, base and revision): $image $(cat "$dir/digest")"
else
  t0=$(date +%s.%N)
  old="$(buildah inspect --type image --format '{{.FromImageID}}' "$image" 2>/dev/null || true)"
  ctx="$dir/context"
  rm -rf "$ctx" && mkdir -p "$ctx"
  # The tested binaries without their debug info (RocksDB's C++ is built with -g: most of
  # shardkv-node's 480 MB); the symbols stay, so backtraces still name functions. The
  # Dockerfile's build stage does the same.
  for b in "${binaries[@]}"; do objcopy --strip-debug "$bin/$b" "$ctx/$b"; done
  # Files and the image get the binaries' time: the same binaries make the same image digest.
  epoch="$(stat -c %Y "${binaries[@]/#/$bin/}" | sort -n | tail -n1)"
  timeout 600 buildah bud --quiet --isolation chroot --pull-never --target packaged \
    --build-arg "BASE_IMAGE=$base_image" --build-arg "VERSION=$version" --build-arg "REVISION=$revision" \
    --timestamp "$epoch" -f "$root/Dockerfile" -t "$image" "$ctx" >"$dir/build.log" 2>&1 \
    || { tail -n 30 "$dir/build.log" >&2; die "buildah bud failed (log: $dir/build.log)"; }
  rm -rf "$ctx" "$dir/oci.new"
  timeout 600 buildah push -q --digestfile "$dir/digest.new" "$image" "oci:$dir/oci.new:$ref" >>"$dir/build.log" 2>&1 \
    || { tail -n 30 "$dir/build.log" >&2; die "buildah push to an OCI layout failed"; }
  rm -rf "$dir/oci"
  mv "$dir/oci.new" "$dir/oci"
  mv "$dir/digest.new" "$dir/digest"
  echo "$stamp" >"$dir/stamp"
  # The image this build replaced (untagged now), so rebuilds do not pile up.
  new="$(buildah inspect --type image --format '{{.FromImageID}}' "$image")"
  [[ -z "$old" || "$old" == "$new" ]] || buildah rmi "$old" >/dev/null 2>&1 || true
  say "built $image in $(since "$t0"): $(cat "$dir/digest")"
fi
digest="$(cat "$dir/digest")"
size_mb="$("${podman[@]}" image inspect --format '{{.Size}}' "$image" | awk '{ printf "%.0f", $1 / 1e6 }')"
compressed_mb="$(du -sm "$dir/oci/blobs" | cut -f1)"
say "$image: $size_mb MB ($compressed_mb MB compressed), OCI layout oci:$dir/oci:$ref"

# --- smoke test --------------------------------------------------------------------------------
if ((smoke)); then
  t0=$(date +%s.%N)
  name="shardkv-image-smoke-$$"
  data=""
  cleanup() {
    "${podman[@]}" rm -f -t 0 "$name" >/dev/null 2>&1 || true
    [[ -z "$data" ]] || rm -rf "$data"
  }
  trap cleanup EXIT
  run() { timeout 120 "${podman[@]}" run --rm --network none "${ulimits[@]}" "$@"; }
  for b in "${binaries[@]}"; do
    out="$(run --entrypoint "/usr/local/bin/$b" "$image" --version 2>&1)" || die "$b --version in the image: $out"
    [[ "$out" == "$b $version" ]] || die "$b --version in the image printed '$out', not '$b $version'"
  done
  # `docker run IMAGE` prints the node's help (and exits 2, as without required flags).
  out="$(run "$image" 2>&1)" && die "the image without arguments exited 0: $out"
  [[ "$out" == *"Usage: shardkv-node"* && "$out" == *"Options:"* && "$out" == *"--cluster-id"* ]] \
    || die "the image without arguments did not print the node's help: $out"
  # Two free loopback ports outside the ephemeral range.
  ports=()
  for p in $(shuf -i 20000-29999 -n 50); do
    [[ -z "$(ss -Htan "( sport = :$p )" 2>/dev/null)" ]] && ports+=("$p")
    ((${#ports[@]} < 2)) || break
  done
  ((${#ports[@]} == 2)) || die "no free loopback ports"
  grpc="127.0.0.1:${ports[0]}" admin="127.0.0.1:${ports[1]}"
  data="$(mktemp -d "${TMPDIR:-/tmp}/shardkv-image-smoke.XXXXXX")"
  chown 10001:10001 "$data"
  logs() { timeout 30 "${podman[@]}" logs --tail 30 "$name" 2>&1 | sed 's/^/  node: /' >&2 || true; }
  timeout 120 "${podman[@]}" run -d --name "$name" --network host "${ulimits[@]}" -v "$data:/var/lib/shardkv" "$image" \
    --cluster-id image-smoke --node-id 1 --data-dir /var/lib/shardkv --shards 8 \
    --listen "$grpc" --admin-listen "$admin" >/dev/null || die "podman run of the node failed"
  http_ok() { curl -fsS --max-time 2 -o /dev/null "http://$admin$1" 2>/dev/null; }
  wait_for() { # wait_for WHAT SECONDS CMD...: poll CMD until it succeeds while the node runs
    local what="$1" deadline=$((SECONDS + $2)); shift 2
    until "$@"; do
      [[ "$(timeout 30 "${podman[@]}" inspect -f '{{.State.Running}}' "$name" 2>/dev/null)" == true ]] \
        || { logs; die "the node exited while waiting for $what"; }
      ((SECONDS < deadline)) || { logs; die "timed out waiting for $what"; }
      sleep 0.2
    done
  }
  wait_for "/healthz on $admin" 60 http_ok /healthz
  cli=(timeout 60 "$bin/shardkv" --endpoints "$grpc" --timeout-ms 20000)
  out="$("${cli[@]}" admin init --member "1=$grpc" 2>&1)" || { logs; die "shardkv admin init: $out"; }
  wait_for "/readyz on $admin" 60 http_ok /readyz
  out="$("${cli[@]}" put image-smoke "value-$$" 2>&1)" || { logs; die "shardkv put through the node in the image: $out"; }
  out="$("${cli[@]}" get image-smoke 2>&1)" || { logs; die "shardkv get through the node in the image: $out"; }
  [[ "$out" == "value-$$" ]] || die "shardkv get returned '$out', not 'value-$$'"
  owner="$(stat -c %u "$data/identity.json" 2>/dev/null || echo none)"
  [[ "$owner" == 10001 ]] || die "the node's files belong to uid $owner, not 10001 (the image's user)"
  # A clean stop: SIGTERM (podman stop), exit code 0 well within the grace period.
  timeout 60 "${podman[@]}" stop -t 30 "$name" >/dev/null || { logs; die "podman stop failed"; }
  code="$(timeout 30 "${podman[@]}" inspect -f '{{.State.ExitCode}}' "$name")"
  [[ "$code" == 0 ]] || { logs; die "the node exited $code after SIGTERM, not 0"; }
  say "smoke test passed in $(since "$t0"): --version x3, help, /healthz, admin init, /readyz, put/get from the host, files as uid 10001, SIGTERM -> exit 0"
fi
say "done in $(since "$t_start")$( ((current)) && echo ' (image was current)')"
echo "$digest"
