//! Client library of shardkv: a leader-tracking, retrying client with exactly-once writes,
//! plus the load generator behind `shardkv bench`.

pub mod admin_http;
pub mod bench;
mod client;
mod endpoints;
mod error;
pub mod retry;
pub mod session;

pub use client::{
    CasOutcome, Client, ClientOptions, ReadConsistency, ScanOptions, StatusResponse, TriggerSnapshotResponse,
};
pub use endpoints::parse_endpoint_list;
pub use error::{Error, Result};
