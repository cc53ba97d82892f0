//! shardkv-operator: reconciles `ShardCluster` resources into replica groups of shardkv nodes
//! and drives their bootstrap and membership through the nodes' Admin and Meta gRPC APIs.

pub mod certificates;
pub mod controller;
pub mod crd;
pub mod leader;
pub mod metrics;
pub mod nodes;
pub mod plan;
pub mod resources;
pub mod status;
pub mod telemetry;
