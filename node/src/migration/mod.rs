//! Moving shards between data groups: the per-shard state machine (`shard_state`, pure), who
//! can confirm a hand-off (`confirm`, pure), the leader's serialized task that advances it
//! (`driver`), and the gRPC side a previous owner serves (`service`).

mod confirm;
pub mod driver;
pub mod progress;
pub mod service;
mod shard_state;

pub use shard_state::Admission;
pub use shard_state::ConfigRefusal;
pub use shard_state::GroupShards;
pub use shard_state::ShardState;
pub use shard_state::Transfer;
