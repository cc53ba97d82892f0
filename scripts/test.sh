#!/usr/bin/env bash
# The project's checks: formatting, lints, then every test (unit, storage suite, process-level
# cluster tests with real nodes on loopback).
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings
cargo test --release --workspace
