//! Client library of shardkv: a shard-routing, leader-tracking, retrying client with
//! exactly-once writes, plus the load generator behind `shardkv bench`.

pub mod admin_http;
pub mod bench;
mod client;
pub mod cluster;
mod endpoints;
mod error;
pub mod retry;
pub mod session;
pub mod shard_map;

pub use client::{
    CasOutcome, Client, ClientOptions, ReadConsistency, ScanOptions, ShardConfig, StatusResponse, Topology,
    TriggerSnapshotResponse,
};
pub use cluster::ClusterStatus;
pub use endpoints::parse_endpoint_list;
pub use error::{Error, Result};
pub use shardkv_tls::{ClientTls, TlsFiles};
