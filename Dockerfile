# The shardkv container image: shardkv-node (the entrypoint), the shardkv CLI and
# shardkv-operator in one image, on Debian bookworm-slim, running as uid 10001.
#
#   docker build -t shardkv/shardkv:0.1.0 .        compile (stage build) and package (stage runtime)
#   docker run --rm shardkv/shardkv:0.1.0          prints shardkv-node's help
#   docker run --rm --entrypoint shardkv-operator shardkv/shardkv:0.1.0 --help
#
# CI packages the binaries it has already built and tested instead of compiling
# twice (scripts/image.sh): the build context is a directory holding only
# shardkv-node, shardkv and shardkv-operator (debug info stripped), and the
# target is `packaged`:
#
#   buildah bud --isolation chroot --target packaged -f Dockerfile DIR_WITH_THE_3_BINARIES
#
# `runtime` and `packaged` differ only in where the binaries come from: every
# other line of the image is in `runtime-base`, which both start from.
# BuildKit (docker build's default builder), buildah and podman build only the
# stages the target needs; the legacy `DOCKER_BUILDKIT=0` builder would try
# `packaged` too and fail.

# Base images: the build image must not have a newer glibc than the runtime
# image (both bookworm: glibc 2.36).
ARG RUST_IMAGE=docker.io/library/rust:1.95-bookworm
ARG BASE_IMAGE=docker.io/library/debian:bookworm-slim

# --- build: the release binaries, exactly as scripts/test.sh builds them ----------
FROM ${RUST_IMAGE} AS build
# libclang: RocksDB's bindings are generated at build time; protoc: the CLI's
# etcd client (bench --target etcd) compiles etcd's protos.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libclang-dev protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The caches keep the registry and the ~30 CPU-minute RocksDB build between
# builds. The binaries leave the cached target dir without their debug info
# (RocksDB's C++ is compiled with -g: 480 MB of it in shardkv-node); symbols
# stay, so backtraces still name functions. scripts/image.sh does the same.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin shardkv-node --bin shardkv --bin shardkv-operator \
 && mkdir -p /out \
 && for b in shardkv-node shardkv shardkv-operator; do objcopy --strip-debug "target/release/$b" "/out/$b"; done

# --- runtime-base: everything of the runtime image but the binaries ---------------
FROM ${BASE_IMAGE} AS runtime-base
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="shardkv" \
      org.opencontainers.image.description="shardkv: a sharded, Raft-replicated key-value store for Kubernetes (shardkv-node, the shardkv CLI, shardkv-operator)" \
      org.opencontainers.image.source="https://github.com/shardkv/shardkv" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"
# The user the pods run as (the operator's StatefulSets and the chart set
# runAsUser/runAsGroup/fsGroup 10001), and the data directory a volume is
# mounted on. Plain appends, so the layer is the same on every build.
RUN echo 'shardkv:x:10001:10001:shardkv:/var/lib/shardkv:/usr/sbin/nologin' >>/etc/passwd \
 && echo 'shardkv:x:10001:' >>/etc/group \
 && mkdir -p /var/lib/shardkv \
 && chown 10001:10001 /var/lib/shardkv \
 && chmod 0750 /var/lib/shardkv
USER 10001:10001
WORKDIR /var/lib/shardkv
# gRPC (KV, Admin, Raft) and admin HTTP (/healthz, /readyz, /metrics,
# /lifecycle/prestop) of a node in a pod; the operator's /metrics is on 8080.
EXPOSE 7100 7180 8080
# No shell at run time: exec form. Without arguments (or SHARDKV_* variables)
# the node prints its help; the operator's pods set `command: [shardkv-operator]`.
ENTRYPOINT ["/usr/local/bin/shardkv-node"]

# --- packaged: runtime-base + binaries built outside (the build context) ----------
FROM runtime-base AS packaged
COPY shardkv-node shardkv shardkv-operator /usr/local/bin/

# --- runtime (the default target): runtime-base + the build stage's binaries -----
FROM runtime-base AS runtime
COPY --from=build /out/ /usr/local/bin/
