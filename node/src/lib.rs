//! shardkv-node: one process hosting a Raft replica of a shardkv group.
//!
//! - `storage`: RocksDB column families, the Raft log store and its group-commit flusher
//! - `state_machine`: applying commands, client sessions, snapshot files
//! - `network`: node-to-node Raft transport over gRPC
//! - `api`: the client KV service and the admin service
//! - `lifecycle`: leadership transfer, snapshot-then-purge, preStop, probes and metrics HTTP
//! - `meta`: the meta group's shard maps (for now the pure shard-assignment logic)

pub mod api;
pub mod config;
pub mod context;
pub mod identity;
pub mod lifecycle;
pub mod meta;
pub mod metrics;
pub mod network;
pub mod node;
pub mod state_machine;
pub mod storage;
pub mod types;
