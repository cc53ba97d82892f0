//! shardkv-node: one process hosting a Raft replica of a shardkv group.
//!
//! - `storage`: RocksDB column families, the Raft log store and its group-commit flusher
//! - `state_machine`: applying commands, client sessions, snapshot files
//! - `network`: node-to-node Raft transport over gRPC
//! - `api`: the client KV service and the admin service
//! - `auth`: who may call which RPC when TLS is on (the policy, pure, and the layer applying it)
//! - `lifecycle`: leadership transfer, snapshot-then-purge, preStop, probes and metrics HTTP
//! - `meta`: the meta group's shard maps: assignment (pure) and the Join/Leave/Move/Query service
//! - `migration`: moving shards between data groups (per-shard states, the leader's driver, the
//!   pull/confirm service)

pub mod api;
pub mod auth;
pub mod config;
pub mod context;
pub mod identity;
pub mod lifecycle;
pub mod meta;
pub mod metrics;
pub mod migration;
pub mod network;
pub mod node;
pub mod session_clock;
pub mod state_machine;
pub mod storage;
pub mod types;
