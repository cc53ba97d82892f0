//! Configs and their wire form: what the meta group sends and what a data group accepts from
//! it. Kept apart from the Meta service so that data groups use it without depending on it.

use std::collections::BTreeMap;

use shardkv_proto::v1::GroupMembers;
use shardkv_proto::v1::ShardConfig;

use super::Config;
use super::GroupId;
use super::Member;

/// Why a config or member list from the wire was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error(
        "group {group} member {{node_id: {node_id}, addr: {addr:?}}} needs a node id of 1 or more and a host:port address"
    )]
    BadMember { group: GroupId, node_id: u64, addr: String },
    #[error("config {num} gives shards to group {group}, which it does not list")]
    UnlistedOwner { num: u64, group: GroupId },
}

pub fn config_to_wire(config: &Config) -> ShardConfig {
    ShardConfig {
        num: config.num,
        shard_groups: config.shards.iter().map(|owner| owner.unwrap_or(0)).collect(),
        groups: config
            .groups
            .iter()
            .map(|(&group_id, members)| GroupMembers {
                group_id,
                members: members
                    .iter()
                    .map(|m| shardkv_proto::v1::Member { node_id: m.node_id, addr: m.addr.clone() })
                    .collect(),
            })
            .collect(),
        pinned: config.pinned.keys().copied().collect(),
    }
}

/// A config as a meta replica sent it; refused when it is not self-consistent.
pub fn config_from_wire(wire: &ShardConfig) -> Result<Config, WireError> {
    let mut groups = BTreeMap::new();
    for group in &wire.groups {
        groups.insert(group.group_id, members_from_wire(group)?);
    }
    let shards: Vec<Option<u64>> = wire.shard_groups.iter().map(|&g| (g != 0).then_some(g)).collect();
    if let Some(&group) = shards.iter().flatten().find(|g| !groups.contains_key(g)) {
        return Err(WireError::UnlistedOwner { num: wire.num, group });
    }
    let pinned = wire
        .pinned
        .iter()
        .filter_map(|&shard| shards.get(shard as usize).copied().flatten().map(|group| (shard, group)))
        .collect();
    Ok(Config { num: wire.num, shards, groups, pinned })
}

pub fn members_from_wire(group: &GroupMembers) -> Result<Vec<Member>, WireError> {
    group
        .members
        .iter()
        .map(|m| {
            if m.node_id == 0 || !m.addr.contains(':') {
                return Err(WireError::BadMember { group: group.group_id, node_id: m.node_id, addr: m.addr.clone() });
            }
            Ok(Member { node_id: m.node_id, addr: m.addr.clone() })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_survive_the_wire() {
        let members = vec![Member { node_id: 1, addr: "127.0.0.1:7100".into() }];
        let config = Config::initial(6).join(1, members.clone()).unwrap().join(2, members).unwrap();
        let config = config.move_shard(5, 1).unwrap();
        assert_eq!(config_from_wire(&config_to_wire(&config)).unwrap(), config);
    }

    #[test]
    fn a_config_naming_an_unlisted_group_is_refused() {
        let wire = ShardConfig { num: 3, shard_groups: vec![4], groups: vec![], pinned: vec![] };
        assert_eq!(config_from_wire(&wire), Err(WireError::UnlistedOwner { num: 3, group: 4 }));
    }
}
