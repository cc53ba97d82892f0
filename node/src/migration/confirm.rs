//! Who can confirm that a shard a group handed off was installed by its receiver, so the
//! sender may delete its copy. Pure: the driver fetches the configs and asks the groups.
//!
//! The receiver itself can, as long as it exists. When it has left and been deleted, a later
//! owner can: a shard changes owner only by the new owner pulling it from the previous one,
//! which serves the pull only once it has applied that later config, which it applies only
//! once every shard of its earlier configs has settled, its pull of this shard included. So a
//! later owner that installed the shard proves every owner before it did, back to the
//! receiver. Only the chain of owners right after the hand-off counts, and it ends where a
//! shard had no owner (a group given a shard from nobody starts it empty, which proves
//! nothing).

use crate::meta::Config;
use crate::meta::GroupId;
use crate::meta::Member;
use crate::types::ShardId;

/// A group whose answer to "have you installed `shard` at `config_num`?" settles a hand-off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Witness {
    pub config_num: u64,
    pub group: GroupId,
    pub members: Vec<Member>,
}

/// Who, besides `receiver` at the addresses the sender knows (`known`), can confirm that
/// `receiver` installed `shard` at `config_num`: the receiver at other addresses, if the newest
/// config gives it new ones, then each later owner at the config where it took the shard over.
/// `later` are configs after `config_num`; only the run of consecutive numbers right after it
/// is used, since a gap could hide a change of owner. A group is asked at its addresses in the
/// newest config that lists it, since addresses may have changed since.
pub fn witnesses<'a>(
    shard: ShardId,
    receiver: GroupId,
    known: &[Member],
    config_num: u64,
    later: impl IntoIterator<Item = &'a Config>,
) -> Vec<Witness> {
    let mut newest = None;
    let mut takers = Vec::new();
    let mut owner = receiver;
    for (config, expected) in later.into_iter().zip(config_num + 1..) {
        if config.num != expected {
            break;
        }
        newest = Some(config);
        match config.shards.get(shard as usize).copied().flatten() {
            Some(next) if next != owner => {
                let members = config.groups.get(&next).cloned().unwrap_or_default();
                takers.push(Witness { config_num: config.num, group: next, members });
                owner = next;
            }
            Some(_) => {}
            None => break,
        }
    }
    let Some(newest) = newest else { return Vec::new() };
    let moved_receiver = newest
        .groups
        .get(&receiver)
        .filter(|members| members.as_slice() != known)
        .map(|members| Witness { config_num, group: receiver, members: members.clone() });
    moved_receiver
        .into_iter()
        .chain(takers.into_iter().map(|taker| match newest.groups.get(&taker.group) {
            Some(members) => Witness { members: members.clone(), ..taker },
            None => taker,
        }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(group: GroupId, port: u16) -> Vec<Member> {
        vec![Member { node_id: 1, addr: format!("127.0.0.{group}:{port}") }]
    }

    /// Config `num` with these owners of shards 0 and 1 (0: none) and these groups at these ports.
    fn config(num: u64, owners: [GroupId; 2], groups: &[(GroupId, u16)]) -> Config {
        Config {
            num,
            shards: owners.iter().map(|&g| (g != 0).then_some(g)).collect(),
            groups: groups.iter().map(|&(g, port)| (g, members(g, port))).collect(),
            pinned: Default::default(),
        }
    }

    fn ask(later: &[Config]) -> Vec<Witness> {
        // Shard 0 was handed to group 2 at config 2.
        witnesses(0, 2, &members(2, 7100), 2, later)
    }

    #[test]
    fn while_the_shard_stays_only_the_receiver_can_tell() {
        assert_eq!(ask(&[]), vec![]);
        let stays = [config(3, [2, 1], &[(1, 7100), (2, 7100)]), config(4, [2, 3], &[(1, 7100), (2, 7100), (3, 7100)])];
        assert_eq!(ask(&stays), vec![]);
    }

    #[test]
    fn every_later_owner_along_the_chain_is_a_witness() {
        let later = [
            config(3, [2, 1], &[(1, 7100), (2, 7100), (3, 7100)]),
            config(4, [3, 1], &[(1, 7100), (3, 7100)]),
            config(5, [3, 3], &[(1, 7100), (3, 7100)]),
            config(6, [1, 3], &[(1, 7100), (3, 7100)]),
        ];
        assert_eq!(
            ask(&later),
            vec![
                Witness { config_num: 4, group: 3, members: members(3, 7100) },
                Witness { config_num: 6, group: 1, members: members(1, 7100) },
            ]
        );
    }

    #[test]
    fn a_gap_in_the_configs_ends_the_chain() {
        let c3 = config(3, [1, 1], &[(1, 7100)]);
        let c4 = config(4, [3, 1], &[(1, 7100), (3, 7100)]);
        assert_eq!(ask(std::slice::from_ref(&c4)), vec![], "config 3 is missing");
        assert_eq!(ask(&[c3.clone(), config(5, [3, 1], &[(1, 7100), (3, 7100)])]).len(), 1, "config 4 is missing");
        assert_eq!(ask(&[c3, c4]).len(), 2);
    }

    #[test]
    fn a_shard_without_owner_ends_the_chain() {
        let later = [config(3, [0, 1], &[(1, 7100)]), config(4, [1, 1], &[(1, 7100)])];
        assert_eq!(ask(&later), vec![], "an owner given the shard by nobody started it empty");
    }

    #[test]
    fn groups_are_asked_at_their_newest_addresses() {
        let later = [
            config(3, [2, 1], &[(1, 7100), (2, 7300)]),
            config(4, [1, 1], &[(1, 7100), (2, 7300)]),
            config(5, [1, 1], &[(1, 7200), (2, 7300)]),
        ];
        let found = ask(&later);
        assert_eq!(
            found,
            vec![
                Witness { config_num: 2, group: 2, members: members(2, 7300) },
                Witness { config_num: 4, group: 1, members: members(1, 7200) },
            ]
        );
        let at_known = witnesses(0, 2, &members(2, 7300), 2, &later);
        assert_eq!(at_known, found[1..], "the receiver is not asked twice at the same addresses");
    }

    #[test]
    fn a_later_owner_gone_from_the_newest_config_keeps_the_addresses_it_had() {
        let later = [config(3, [3, 1], &[(1, 7100), (3, 7400)]), config(4, [1, 1], &[(1, 7100)])];
        assert_eq!(
            ask(&later),
            vec![
                Witness { config_num: 3, group: 3, members: members(3, 7400) },
                Witness { config_num: 4, group: 1, members: members(1, 7100) },
            ]
        );
    }
}
