//! Process-level tests: real `shardkv-node` processes talking gRPC over loopback.

mod bad_input;
mod batch;
mod counters;
mod durability;
mod exactly_once;
mod harness;
mod lifecycle;
mod proxy;
mod replication;
mod routing;
mod scan;
mod sessions;
mod sharded;
mod sharding;
mod tls;
