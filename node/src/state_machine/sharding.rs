//! The replicated sharding state of a replica: the meta group's configs, or a data group's
//! shard states. Applied entries change it; request handlers and the migration driver read
//! the shared copy, which is replaced only after the batch that changed it is written.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::sync::RwLock;

use rocksdb::DB;
use rocksdb::Direction;
use rocksdb::IteratorMode;
use rocksdb::WriteBatch;

use super::session::CLOCK_KEY;
use super::session::SessionClock;
use crate::meta::Config;
use crate::meta::GroupId;
use crate::migration::GroupShards;
use crate::storage::CF_SHARDS;
use crate::storage::cf;
use crate::storage::io_err;
use crate::storage::keys::CHANGE_PREFIX;
use crate::storage::keys::SHARD_PREFIX_LEN;
use crate::types::ShardId;
use crate::types::decode;
use crate::types::encode;

const GROUP_KEY: &[u8] = b"group";
const COPIED_OUT_KEY: &[u8] = b"copied_out";
const CONFIG_PREFIX: &[u8] = b"config/";

/// What a node is, fixed by its flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A replica of the meta group.
    Meta,
    /// A replica of data group `group`, which learns its shards from the meta group.
    Sharded { group: GroupId },
    /// A single group serving every shard, with no meta group.
    Standalone { group: GroupId },
}

impl Role {
    pub fn name(&self) -> &'static str {
        match self {
            Role::Meta => "meta",
            Role::Sharded { .. } | Role::Standalone { .. } => "data",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Sharding {
    pub role: Role,
    /// Data groups: their shards. A meta replica serves no shard.
    pub group: GroupShards,
    /// Meta group: the latest config (older ones are read from the store by number).
    pub latest: Config,
    /// Data groups: shards this group serves (or holds frozen) that their next owner copied
    /// while they were served, with the config they move in. Every key written to them since is
    /// recorded under `keys::change_key`, until the shard is dropped.
    pub copied_out: BTreeMap<ShardId, u64>,
}

pub type SharedSharding = Arc<RwLock<Sharding>>;

impl Sharding {
    /// The state as last written, or the initial one for a fresh replica.
    pub fn load(db: &DB, role: Role, shards: u32) -> io::Result<Sharding> {
        let initial = Self::initial(role, shards);
        let shards_cf = cf(db, CF_SHARDS);
        let group = match db.get_cf(shards_cf, GROUP_KEY).map_err(io_err)? {
            Some(bytes) => GroupShards::from_bytes(&bytes)?,
            None => initial.group,
        };
        let latest = latest_config(db)?.unwrap_or(initial.latest);
        let copied_out = match db.get_cf(shards_cf, COPIED_OUT_KEY).map_err(io_err)? {
            Some(bytes) => decode(&bytes)?,
            None => BTreeMap::new(),
        };
        Ok(Sharding { role, group, latest, copied_out })
    }

    fn initial(role: Role, shards: u32) -> Sharding {
        let group = match role {
            Role::Meta => GroupShards::new(crate::meta::META_GROUP, shards),
            Role::Sharded { group } => GroupShards::new(group, shards),
            Role::Standalone { group } => GroupShards::standalone(group, shards),
        };
        Sharding { role, group, latest: Config::initial(shards), copied_out: BTreeMap::new() }
    }

    /// The config number clients and peers are told about.
    pub fn config_num(&self) -> u64 {
        match self.role {
            Role::Meta => self.latest.num,
            _ => self.group.config_num(),
        }
    }

    pub fn write_group(&self, db: &DB, batch: &mut WriteBatch) {
        batch.put_cf(cf(db, CF_SHARDS), GROUP_KEY, encode(&self.group));
        // Absent when empty, as it is on nodes that predate copies, so their snapshots stay
        // readable by such nodes as long as no copy is under way.
        if self.copied_out.is_empty() {
            batch.delete_cf(cf(db, CF_SHARDS), COPIED_OUT_KEY);
        } else {
            batch.put_cf(cf(db, CF_SHARDS), COPIED_OUT_KEY, encode(&self.copied_out));
        }
    }
}

pub fn write_config(db: &DB, batch: &mut WriteBatch, config: &Config) {
    batch.put_cf(cf(db, CF_SHARDS), config_key(config.num), encode(config));
}

fn config_key(num: u64) -> Vec<u8> {
    [CONFIG_PREFIX, &num.to_be_bytes()].concat()
}

/// Why a sharding-state record cannot be installed. Keys are shown lossily as UTF-8 (they
/// are ASCII names and numbers when sound); the error travels in entry results, so it holds
/// text rather than the decoder's error.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, thiserror::Error)]
pub enum ShardsRecordError {
    #[error("record {key:?}: {reason}")]
    Undecodable { key: String, reason: String },
    #[error("a change record has a {0}-byte value, where it has none")]
    ChangeValue(usize),
    #[error("unknown record {0:?}")]
    Unknown(String),
}

/// Checks that a sharding-state record (as stored, and as a snapshot carries it) decodes.
pub fn check_record(key: &[u8], value: &[u8]) -> Result<(), ShardsRecordError> {
    let decoded = if key == GROUP_KEY {
        GroupShards::from_bytes(value).map(drop)
    } else if key.len() == CONFIG_PREFIX.len() + 8 && key.starts_with(CONFIG_PREFIX) {
        decode::<Config>(value).map(drop)
    } else if key == CLOCK_KEY {
        decode::<SessionClock>(value).map(drop)
    } else if key == COPIED_OUT_KEY {
        decode::<BTreeMap<ShardId, u64>>(value).map(drop)
    } else if key.len() >= CHANGE_PREFIX.len() + SHARD_PREFIX_LEN && key.starts_with(CHANGE_PREFIX) {
        return if value.is_empty() { Ok(()) } else { Err(ShardsRecordError::ChangeValue(value.len())) };
    } else {
        return Err(ShardsRecordError::Unknown(String::from_utf8_lossy(key).into_owned()));
    };
    decoded.map_err(|e| ShardsRecordError::Undecodable {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: e.to_string(),
    })
}

/// The meta group's config `num`, if it exists.
pub fn config_at(db: &DB, num: u64) -> io::Result<Option<Config>> {
    db.get_cf(cf(db, CF_SHARDS), config_key(num)).map_err(io_err)?.map(|bytes| decode(&bytes)).transpose()
}

fn latest_config(db: &DB) -> io::Result<Option<Config>> {
    let upper = config_key(u64::MAX);
    let mut iter = db.iterator_cf(cf(db, CF_SHARDS), IteratorMode::From(&upper, Direction::Reverse));
    match iter.next().transpose().map_err(io_err)? {
        Some((key, value)) if key.starts_with(CONFIG_PREFIX) => Ok(Some(decode(&value)?)),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::Member;
    use crate::migration::ShardState;
    use crate::storage::keys::change_key;
    use crate::types::hostile_input;

    fn group() -> GroupShards {
        let mut group = GroupShards::new(2, 4);
        group.config.num = 3;
        group.config.groups.insert(1, vec![Member { node_id: 1, addr: "127.0.0.1:7100".into() }]);
        group.config.shards = vec![Some(1), Some(2), Some(2), None];
        let members = vec![Member { node_id: 1, addr: "127.0.0.9:7100".into() }];
        group.shards.insert(1, ShardState::Pulling { from: 1, members: members.clone() });
        group.shards.insert(2, ShardState::BePulled { to: 1, members });
        group.shards.insert(3, ShardState::Serving);
        group
    }

    #[test]
    fn shard_state_and_configs_survive_hostile_bytes() {
        hostile_input::check::<GroupShards>(&encode(&group()));
        hostile_input::check::<Config>(&encode(&group().config));
    }

    #[test]
    fn records_are_checked_by_key() {
        assert_eq!(check_record(GROUP_KEY, &encode(&group())), Ok(()));
        assert_eq!(check_record(&config_key(3), &encode(&group().config)), Ok(()));
        assert!(check_record(GROUP_KEY, b"garbage").is_err());
        assert!(check_record(&config_key(3), b"\x01").is_err());
        assert!(check_record(b"config/1", &encode(&group().config)).is_err());
        assert_eq!(check_record(CLOCK_KEY, &encode(&SessionClock::default())), Ok(()));
        assert!(check_record(CLOCK_KEY, b"\x01").is_err());
        assert_eq!(check_record(COPIED_OUT_KEY, &encode(&BTreeMap::from([(3u32, 7u64)]))), Ok(()));
        assert!(check_record(COPIED_OUT_KEY, b"\x01").is_err());
        assert_eq!(check_record(&change_key(3, b"k"), b""), Ok(()));
        assert_eq!(check_record(&change_key(3, b"k"), b"v"), Err(ShardsRecordError::ChangeValue(1)));
        assert_eq!(check_record(b"changed/", b""), Err(ShardsRecordError::Unknown("changed/".into())));
    }
}
