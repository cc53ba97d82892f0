//! The meta group's shard maps: the numbered sequence of configs that says which data group
//! owns each shard. For now only the pure, deterministic assignment logic lives here; the
//! replicated service that stores configs and serves Join/Leave/Move/Query comes later.

pub mod assignment;

pub use assignment::AssignmentError;
pub use assignment::Config;
pub use assignment::moves;
pub use assignment::rebalance;

/// Identifies a data group (a Raft group serving some of the shards).
pub type GroupId = u64;
