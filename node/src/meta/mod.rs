//! The meta group's shard maps: the numbered sequence of configs that says which data group
//! owns each shard. `assignment` computes the next config (pure); `service` serves
//! Join/Leave/Move/Query over gRPC; `wire` converts configs to and from their gRPC form. The
//! configs themselves are replicated state (see `state_machine::sharding`).

pub mod assignment;
pub mod service;
pub mod wire;

pub use assignment::AssignmentError;
pub use assignment::Config;
pub use assignment::moves;
pub use assignment::rebalance;
use serde::Deserialize;
use serde::Serialize;

use crate::types::NodeId;

/// Identifies a data group (a Raft group serving some of the shards). The meta group is 0.
pub type GroupId = u64;

/// The group id of the meta group; data groups are 1 and up.
pub const META_GROUP: GroupId = 0;

/// One replica of a group: its Raft node id and gRPC address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub node_id: NodeId,
    pub addr: String,
}

/// A write to the meta group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaChange {
    Join { group: GroupId, members: Vec<Member> },
    Leave { group: GroupId },
    Move { shard: crate::types::ShardId, group: GroupId },
}

/// The config a change leads to, or None when `latest` already reflects it: a repeated Join with
/// the same members, a Leave of a group that is gone, a Move to where the shard is pinned. That
/// makes every meta request safe to retry.
pub fn next_config(latest: &Config, change: &MetaChange) -> Result<Option<Config>, AssignmentError> {
    match change {
        MetaChange::Join { group, members } => match latest.groups.get(group) {
            Some(current) if current == members => Ok(None),
            Some(_) => latest.update_members(*group, members.clone()).map(Some),
            None => latest.join(*group, members.clone()).map(Some),
        },
        MetaChange::Leave { group } if !latest.groups.contains_key(group) => Ok(None),
        MetaChange::Leave { group } => latest.leave(*group).map(Some),
        MetaChange::Move { shard, group } if latest.pinned.get(shard) == Some(group) => Ok(None),
        MetaChange::Move { shard, group } => latest.move_shard(*shard, *group).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(group: GroupId, port: u16) -> Vec<Member> {
        vec![Member { node_id: 1, addr: format!("127.0.0.{group}:{port}") }]
    }

    #[test]
    fn repeated_requests_change_nothing() {
        let c1 = Config::initial(4).join(1, members(1, 7100)).unwrap();
        let join = MetaChange::Join { group: 1, members: members(1, 7100) };
        assert_eq!(next_config(&c1, &join), Ok(None));
        assert_eq!(next_config(&c1, &MetaChange::Leave { group: 9 }), Ok(None));
        let c2 = next_config(&c1, &MetaChange::Move { shard: 2, group: 1 }).unwrap().unwrap();
        assert_eq!(next_config(&c2, &MetaChange::Move { shard: 2, group: 1 }), Ok(None));
    }

    #[test]
    fn a_rejoin_with_new_members_updates_them_without_moving_shards() {
        let c1 = Config::initial(4).join(1, members(1, 7100)).unwrap();
        let c2 = next_config(&c1, &MetaChange::Join { group: 1, members: members(1, 7200) }).unwrap().unwrap();
        assert_eq!(c2.num, 2);
        assert_eq!(c2.shards, c1.shards);
        assert_eq!(c2.groups[&1], members(1, 7200));
    }

    #[test]
    fn impossible_changes_are_refused() {
        let c1 = Config::initial(4).join(1, members(1, 7100)).unwrap();
        assert_eq!(
            next_config(&c1, &MetaChange::Leave { group: 1 }),
            Err(AssignmentError::LastGroup { group: 1, shards: 4 })
        );
        assert_eq!(
            next_config(&c1, &MetaChange::Move { shard: 9, group: 1 }),
            Err(AssignmentError::UnknownShard { shard: 9, shards: 4 })
        );
    }
}
