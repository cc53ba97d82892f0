//! Status of a whole sharded cluster: the latest shard map, every node of the meta group and
//! of each data group, and per shard who owns it and whether it is serving or moving.

use std::collections::BTreeMap;

use shardkv_proto::v1::{ShardConfig, ShardStatus, StatusResponse};

use crate::error::Result;

/// The nodes of one Raft group and what each answered.
#[derive(Debug)]
pub struct GroupStatus {
    /// 0 for the meta group.
    pub group_id: u64,
    pub nodes: Vec<(String, Result<StatusResponse>)>,
}

impl GroupStatus {
    /// The status of the node that reports itself leader (the highest term wins if a deposed
    /// leader has not noticed yet).
    pub fn leader(&self) -> Option<&StatusResponse> {
        self.nodes
            .iter()
            .filter_map(|(_, status)| status.as_ref().ok())
            .filter(|s| s.leader_id == Some(s.node_id))
            .max_by_key(|s| s.term)
    }

    pub fn leader_endpoint(&self) -> Option<&str> {
        let leader = self.leader()?;
        self.nodes
            .iter()
            .find(|(_, s)| s.as_ref().is_ok_and(|s| std::ptr::eq(s, leader)))
            .map(|(endpoint, _)| endpoint.as_str())
    }
}

/// Status of a sharded cluster as the client saw it.
#[derive(Debug)]
pub struct ClusterStatus {
    /// The latest shard map.
    pub config: ShardConfig,
    pub meta: GroupStatus,
    /// The groups of the latest map, plus those of the previous map that left (they may still
    /// hold shards for their new owners), ascending by id.
    pub groups: Vec<GroupStatus>,
}

/// Where one shard stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardView {
    pub shard: u32,
    /// Owner in the latest map (0: unassigned).
    pub owner: u64,
    /// "serving", "pulling" or "catching_up" (moving in, whole or the changes since a copy),
    /// "unassigned", "no leader" (the owner's leader did not answer), or "awaiting config" (the
    /// owner has not applied the latest map yet, and may be copying the shard ahead of it).
    pub state: String,
    /// For a shard moving in: the group it comes from.
    pub peer_group: u64,
    pub moved_items: u64,
    pub moved_bytes: u64,
}

/// A shard some group holds in a state other than serving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoveView {
    pub shard: u32,
    /// The group reporting it.
    pub group: u64,
    /// "copying" (the group copies it from `peer_group`, which still serves it, ahead of the
    /// move), "copied", "catching_up" or "pulling" (the group is receiving it from `peer_group`:
    /// the changes since its copy, or all of it), or "be_pulled" (the group keeps it frozen until
    /// `peer_group` confirms it installed it).
    pub state: String,
    pub peer_group: u64,
    pub moved_items: u64,
    pub moved_bytes: u64,
}

pub const SERVING: &str = "serving";

impl ClusterStatus {
    fn leaders(&self) -> BTreeMap<u64, &StatusResponse> {
        self.groups.iter().filter_map(|g| g.leader().map(|leader| (g.group_id, leader))).collect()
    }

    /// One entry per shard of the latest map.
    pub fn shards(&self) -> Vec<ShardView> {
        let leaders = self.leaders();
        self.config
            .shard_groups
            .iter()
            .enumerate()
            .map(|(shard, &owner)| {
                let shard = shard as u32;
                let view = |state: &str, entry: Option<&ShardStatus>| ShardView {
                    shard,
                    owner,
                    state: state.to_string(),
                    peer_group: entry.map_or(0, |e| e.peer_group),
                    moved_items: entry.map_or(0, |e| e.moved_items),
                    moved_bytes: entry.map_or(0, |e| e.moved_bytes),
                };
                if owner == 0 {
                    return view("unassigned", None);
                }
                let Some(leader) = leaders.get(&owner) else {
                    return view("no leader", None);
                };
                match leader.shards.iter().find(|entry| entry.shard == shard) {
                    _ if leader.config_num < self.config.num => view("awaiting config", None),
                    Some(entry) => view(&entry.state, Some(entry)),
                    None => view("not held", None),
                }
            })
            .collect()
    }

    /// Every shard a group's leader reports in a state other than serving.
    pub fn moves(&self) -> Vec<MoveView> {
        let mut moves: Vec<MoveView> = self
            .leaders()
            .into_iter()
            .flat_map(|(group, leader)| {
                leader.shards.iter().filter(|entry| entry.state != SERVING).map(move |entry| MoveView {
                    shard: entry.shard,
                    group,
                    state: entry.state.clone(),
                    peer_group: entry.peer_group,
                    moved_items: entry.moved_items,
                    moved_bytes: entry.moved_bytes,
                })
            })
            .collect();
        moves.sort_by_key(|m| (m.shard, m.group));
        moves
    }

    /// Why the cluster is not settled yet (every shard assigned and served by its owner,
    /// every group at the latest map, no move in progress), or `None` when it is.
    pub fn unsettled(&self) -> Option<String> {
        let num = self.config.num;
        if self.config.shard_groups.contains(&0) {
            return Some(format!("config {num} leaves shards unassigned"));
        }
        let leaders = self.leaders();
        for group in self.config.groups.iter().map(|g| g.group_id) {
            match leaders.get(&group) {
                None => return Some(format!("group {group} has no leader")),
                Some(leader) if leader.config_num < num => {
                    return Some(format!("group {group} applied config {} of {num}", leader.config_num));
                }
                Some(_) => {}
            }
        }
        let shards = self.shards();
        let serving = shards.iter().filter(|s| s.state == SERVING).count();
        if serving < shards.len() || !self.moves().is_empty() {
            return Some(format!(
                "{serving}/{} shards serving, {} moves in progress",
                shards.len(),
                self.moves().len()
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use shardkv_proto::v1::GroupMembers;

    fn leader_status(group: u64, config_num: u64, shards: &[(u32, &str, u64)]) -> StatusResponse {
        StatusResponse {
            group_id: group,
            node_id: 1,
            leader_id: Some(1),
            term: 2,
            config_num,
            shards: shards
                .iter()
                .map(|&(shard, state, peer_group)| ShardStatus {
                    shard,
                    state: state.to_string(),
                    peer_group,
                    moved_items: if state == "pulling" { 10 } else { 0 },
                    moved_bytes: if state == "pulling" { 4096 } else { 0 },
                })
                .collect(),
            ..Default::default()
        }
    }

    fn group(id: u64, leader: Option<StatusResponse>) -> GroupStatus {
        let follower = StatusResponse { group_id: id, node_id: 2, leader_id: Some(1), ..Default::default() };
        let mut nodes = vec![(format!("g{id}:2"), Ok(follower))];
        if let Some(leader) = leader {
            nodes.push((format!("g{id}:1"), Ok(leader)));
        }
        nodes.push((format!("g{id}:3"), Err(Error::Transport("refused".into()))));
        GroupStatus { group_id: id, nodes }
    }

    fn cluster(num: u64, shard_groups: Vec<u64>, groups: Vec<GroupStatus>) -> ClusterStatus {
        let config = ShardConfig {
            num,
            shard_groups,
            groups: groups
                .iter()
                .map(|g| GroupMembers { group_id: g.group_id, members: Vec::new() })
                .filter(|g| g.group_id != 9)
                .collect(),
            pinned: Vec::new(),
        };
        ClusterStatus { config, meta: group(0, None), groups }
    }

    #[test]
    fn the_leader_is_the_node_that_says_so() {
        let g = group(1, Some(leader_status(1, 3, &[])));
        assert_eq!(g.leader().unwrap().node_id, 1);
        assert_eq!(g.leader_endpoint(), Some("g1:1"));
        assert!(group(1, None).leader().is_none());
    }

    #[test]
    fn a_settled_cluster_serves_every_shard_at_the_latest_config() {
        let status = cluster(
            4,
            vec![1, 1, 2, 2],
            vec![
                group(1, Some(leader_status(1, 4, &[(0, "serving", 0), (1, "serving", 0)]))),
                group(2, Some(leader_status(2, 4, &[(2, "serving", 0), (3, "serving", 0)]))),
            ],
        );
        assert_eq!(status.unsettled(), None);
        assert!(status.moves().is_empty());
        assert!(status.shards().iter().all(|s| s.state == SERVING));
    }

    #[test]
    fn a_move_in_progress_shows_both_sides_and_its_progress() {
        // Config 5 moved shard 1 from group 1 to group 2.
        let status = cluster(
            5,
            vec![1, 2, 2, 2],
            vec![
                group(1, Some(leader_status(1, 5, &[(0, "serving", 0), (1, "be_pulled", 2)]))),
                group(2, Some(leader_status(2, 5, &[(1, "pulling", 1), (2, "serving", 0), (3, "serving", 0)]))),
            ],
        );
        let shards = status.shards();
        assert_eq!(shards[1].owner, 2);
        assert_eq!((shards[1].state.as_str(), shards[1].peer_group, shards[1].moved_bytes), ("pulling", 1, 4096));
        let moves = status.moves();
        assert_eq!(moves.len(), 2);
        assert_eq!((moves[0].group, moves[0].state.as_str()), (1, "be_pulled"));
        assert_eq!((moves[1].group, moves[1].state.as_str(), moves[1].moved_items), (2, "pulling", 10));
        assert_eq!(status.unsettled().unwrap(), "3/4 shards serving, 2 moves in progress");
    }

    #[test]
    fn lagging_or_leaderless_groups_and_unassigned_shards_are_unsettled() {
        let lagging = cluster(
            6,
            vec![1, 2],
            vec![group(1, Some(leader_status(1, 6, &[(0, "serving", 0)]))), group(2, Some(leader_status(2, 5, &[])))],
        );
        assert_eq!(lagging.unsettled().unwrap(), "group 2 applied config 5 of 6");
        assert_eq!(lagging.shards()[1].state, "awaiting config");

        let leaderless = cluster(6, vec![1, 2], vec![group(1, Some(leader_status(1, 6, &[]))), group(2, None)]);
        assert_eq!(leaderless.unsettled().unwrap(), "group 2 has no leader");
        assert_eq!(leaderless.shards()[1].state, "no leader");

        let unassigned = cluster(0, vec![0, 0], vec![]);
        assert_eq!(unassigned.unsettled().unwrap(), "config 0 leaves shards unassigned");
        assert_eq!(unassigned.shards()[0].state, "unassigned");
    }
}
