//! The Raft type configuration and the replicated command/response types.

use std::io::Cursor;

use serde::Deserialize;
use serde::Serialize;

use crate::meta::Config;
use crate::meta::MetaChange;
use crate::state_machine::SnapshotFile;
use crate::state_machine::StateMachine;

pub type NodeId = u64;
pub type ShardId = u32;

/// Identifies a write for exactly-once execution (Raft thesis §6.3 client sessions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionTag {
    pub client_id: u64,
    pub seq: u64,
    /// Lowest sequence number the client still waits for; responses below it are forgotten.
    pub first_unacked: u64,
}

/// One write, replicated through the Raft log and applied by every replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub session: Option<SessionTag>,
    pub shard: ShardId,
    pub op: Op,
}

/// Byte fields are encoded with `serde_bytes` (one length and a memcpy) rather than serde's
/// default element-by-element sequence, which dominated the CPU profile of the write path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Put {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    Delete {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    CompareAndSwap {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        expected: Option<Vec<u8>>,
        #[serde(with = "serde_bytes")]
        new_value: Vec<u8>,
    },
    /// Meta group: Join, Leave or Move.
    Meta(MetaChange),
    /// Data group: move to the next shard map.
    ApplyConfig { config: Config },
    /// Data group: a slice of `Command::shard` pulled from its previous owner in `config_num`;
    /// `last` marks the end, after which the shard serves.
    InstallChunk { config_num: u64, data: Vec<Record>, sessions: Vec<Record>, last: bool },
    /// Data group: the new owner has installed `Command::shard`; delete this group's copy.
    DropShard { config_num: u64 },
}

/// A key and value moved with a shard (data item, or a session keyed by client id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

impl Op {
    /// The user key of a data operation.
    pub fn key(&self) -> Option<&[u8]> {
        match self {
            Op::Put { key, .. } | Op::Delete { key } | Op::CompareAndSwap { key, .. } => Some(key),
            _ => None,
        }
    }
}

/// What applying a log entry produced; cached in the session table for duplicates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResult {
    /// Blank and membership entries.
    Applied,
    Put,
    Delete {
        existed: bool,
    },
    CompareAndSwap {
        succeeded: bool,
        #[serde(with = "serde_bytes")]
        previous: Option<Vec<u8>>,
    },
    /// The request's sequence number is below what the client already acknowledged.
    SessionExpired,
    /// The group does not serve the shard in its current config.
    WrongGroup {
        config_num: u64,
    },
    /// The shard is being pulled into this group; the request may be retried shortly.
    MovingIn,
    /// A meta operation produced (or already had) this config.
    Config {
        num: u64,
    },
    /// A meta operation that cannot apply, with the reason.
    Refused(String),
}

/// Log lines name the operation, key length and session, never the value bytes.
impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.op {
            Op::Put { key, .. } => write!(f, "put shard={} key_len={}", self.shard, key.len())?,
            Op::Delete { key } => write!(f, "delete shard={} key_len={}", self.shard, key.len())?,
            Op::CompareAndSwap { key, .. } => write!(f, "cas shard={} key_len={}", self.shard, key.len())?,
            Op::Meta(MetaChange::Join { group, members }) => write!(f, "join group={group} members={}", members.len())?,
            Op::Meta(MetaChange::Leave { group }) => write!(f, "leave group={group}")?,
            Op::Meta(MetaChange::Move { shard, group }) => write!(f, "move shard={shard} group={group}")?,
            Op::ApplyConfig { config } => write!(f, "apply config={}", config.num)?,
            Op::InstallChunk { config_num, data, sessions, last } => write!(
                f,
                "install shard={} config={config_num} items={} sessions={} last={last}",
                self.shard,
                data.len(),
                sessions.len()
            )?,
            Op::DropShard { config_num } => write!(f, "drop shard={} config={config_num}", self.shard)?,
        }
        if let Some(s) = &self.session {
            write!(f, " client={} seq={}", s.client_id, s.seq)?;
        }
        Ok(())
    }
}

impl std::fmt::Display for OpResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Command,
        R = OpResult,
        NodeId = NodeId,
        Node = openraft::BasicNode,
);

pub type Raft = openraft::Raft<TypeConfig, StateMachine>;
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotFile>;
pub type RaftMetrics = openraft::RaftMetrics<TypeConfig>;

/// The index of a log id, 0 for "none yet" (Raft indexes start at 0 for the initial
/// membership, so callers that must tell the two apart keep the Option).
pub fn index_of(id: &Option<LogId>) -> u64 {
    id.as_ref().map_or(0, |l| l.index())
}

/// Binary encoding of everything we persist or send that openraft defines (entries, votes,
/// RPC messages). One codec for all, so a format change happens in one place.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serialize(value).expect("serializing an in-memory value cannot fail")
}

pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> std::io::Result<T> {
    bincode::deserialize_from(Cursor::new(bytes))
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("corrupt record: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_put_encodes_its_bytes_compactly_and_round_trips() {
        let cmd = Command {
            session: Some(SessionTag { client_id: 1, seq: 2, first_unacked: 2 }),
            shard: 3,
            op: Op::Put { key: b"key".to_vec(), value: vec![7; 256] },
        };
        let bytes = encode(&cmd);
        assert!(bytes.len() < 256 + 3 + 64, "{} bytes for a 256-byte value", bytes.len());
        assert_eq!(decode::<Command>(&bytes).unwrap(), cmd);
        let cas = OpResult::CompareAndSwap { succeeded: false, previous: Some(b"old".to_vec()) };
        assert_eq!(decode::<OpResult>(&encode(&cas)).unwrap(), cas);
    }
}
