//! The pure decision logic of the operator: given what was observed (pods, what each node's
//! Admin API reported, the meta group's shard map, and the little the status records), return
//! the next step.
//!
//! Every operation (bootstrap, replica scale up/down, joining data groups into the shard map,
//! removing data groups, rolling restarts) is a step machine over observed state, so a step that was interrupted
//! (operator restart, lost response) is planned again from what the nodes say now. What cannot
//! be observed again (the group ids ever issued, the config a Leave produced, that a group is
//! being deleted) is carried in status and handed back in. The controller takes at most one
//! step per group per reconcile and comes back.

mod membership;
mod rollout;
mod shard_map;

pub use membership::GroupPlan;
pub use membership::GroupStep;
pub use membership::GroupView;
pub use membership::LeaderView;
pub use membership::Operation;
pub use membership::PodView;
pub use membership::plan_group;
pub use rollout::Halt;
pub use rollout::PodRevision;
pub use rollout::RolloutGroup;
pub use rollout::RolloutSettings;
pub use rollout::RolloutStep;
pub use rollout::StopProblem;
pub use rollout::image_version;
pub use rollout::plan_rollout;
pub use rollout::progress;
pub use rollout::stop_report_problem;
pub use rollout::version_skew;
pub use shard_map::DataGroupView;
pub use shard_map::DataLeader;
pub use shard_map::HeldShard;
pub use shard_map::MetaPlan;
pub use shard_map::MetaStep;
pub use shard_map::Removal;
pub use shard_map::RemovalPhase;
pub use shard_map::ShardState;
pub use shard_map::plan_meta;
pub use shard_map::wanted_groups;
