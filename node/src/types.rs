//! The Raft type configuration and the replicated command/response types.

use bincode::Options;
use serde::Deserialize;
use serde::Serialize;

use crate::meta::AssignmentError;
use crate::meta::Config;
use crate::meta::MetaChange;
use crate::migration::ConfigRefusal;
use crate::state_machine::SnapshotDir;
use crate::state_machine::StateMachine;
use crate::state_machine::records::RecordError;

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
    /// The leader's wall-clock time, the only time apply uses: sessions idle for `expiry_ms` of
    /// log time are deleted, the same on every replica. The expiry travels with the entry so
    /// that replicas configured differently still agree.
    SessionClock { now_ms: u64, expiry_ms: u64 },
    /// Data group that has applied no config: start right after `baseline`, the config before
    /// the one it joined in, owning nothing (see `GroupShards::start_after`).
    StartAfter { baseline: Config },
    // New variants go last: stored logs and snapshots encode a variant by its position.
    /// Data group, previous owner: its new owner at `config_num` is copying `Command::shard`
    /// while this group still serves it, so every key written to it from now on is recorded,
    /// for the new owner to pull once the shard is frozen.
    TrackChanges { config_num: u64 },
    /// Data group, new owner: start (or start over) a copy of `Command::shard` ahead of the move
    /// at `config_num`, deleting what this replica holds of it.
    BeginCopy { config_num: u64 },
    /// A slice of the data of the copy begun at log index `begun_at`. Copies now travel as
    /// `IngestCopy` files; this is still applied from logs that earlier versions wrote.
    CopyChunk { config_num: u64, begun_at: u64, data: Vec<Record> },
    /// The copy begun at log index `begun_at` is whole.
    FinishCopy { config_num: u64, begun_at: u64 },
    /// Data group, new owner: what the previous owner changed in `Command::shard` since the copy
    /// (current values, and `deleted` user keys), with the shard's sessions; `last` marks the
    /// end, after which the shard serves.
    InstallChanges {
        config_num: u64,
        data: Vec<Record>,
        deleted: Vec<serde_bytes::ByteBuf>,
        sessions: Vec<Record>,
        last: bool,
    },
    /// Data group, new owner: the previous owner recorded no changes since the copy of
    /// `Command::shard`, so the copy is deleted and the shard is pulled whole.
    DiscardCopy { config_num: u64 },
    /// A slice of the data of the copy begun at log index `begun_at`, as a table file that each
    /// replica ingests (see `state_machine::copy_files`); `items` and `bytes` count its records.
    IngestCopy { config_num: u64, begun_at: u64, file: CopyFile, items: u64, bytes: u64 },
}

/// A table file of a shard copy, as a log entry names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyFile {
    pub name: String,
    pub size: u64,
    pub crc32: u32,
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

    /// The table file this entry ingests, if it is one of a shard copy's.
    pub fn copy_file(&self) -> Option<&CopyFile> {
        match self {
            Op::IngestCopy { file, .. } => Some(file),
            _ => None,
        }
    }
}

/// The table file that a log entry ingests, if it is one of a shard copy's.
pub fn copy_file_of(entry: &Entry) -> Option<&CopyFile> {
    match &entry.payload {
        openraft::EntryPayload::Normal(cmd) => cmd.op.copy_file(),
        _ => None,
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
    /// An entry applied as a no-op, and why (every replica decides the same way).
    Refused(Refusal),
    /// A retry of a write older than every result its session still caches: it may have been
    /// applied, so it is neither applied again nor answered.
    ResponseEvicted,
}

/// Why an entry was applied as a no-op. Decided from the replicated state alone, so the same
/// on every replica; the driver retries or gives up on the step, the meta service returns it to
/// the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    Assignment(#[from] AssignmentError),
    #[error(transparent)]
    Config(#[from] ConfigRefusal),
    #[error("shard {shard} is not served here ahead of config {config_num}")]
    NotServedAhead { shard: ShardId, config_num: u64 },
    #[error("shard {shard} cannot be copied for config {config_num}")]
    CannotCopy { shard: ShardId, config_num: u64 },
    #[error("shard {shard} takes no copy for config {config_num}")]
    TakesNoCopy { shard: ShardId, config_num: u64 },
    #[error("shard {shard} has no copy for config {config_num}")]
    NoCopy { shard: ShardId, config_num: u64 },
    #[error("shard {shard} copy for config {config_num}: {reason}")]
    BadCopy { shard: ShardId, config_num: u64, reason: RecordError },
    #[error("shard {shard} takes no chunk for config {config_num}")]
    TakesNoChunk { shard: ShardId, config_num: u64 },
    #[error("shard {shard} chunk for config {config_num}: {reason}")]
    BadChunk { shard: ShardId, config_num: u64, reason: RecordError },
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
            Op::SessionClock { now_ms, expiry_ms } => write!(f, "session clock now_ms={now_ms} expiry_ms={expiry_ms}")?,
            Op::StartAfter { baseline } => write!(f, "start after config={}", baseline.num)?,
            Op::TrackChanges { config_num } => write!(f, "track changes shard={} config={config_num}", self.shard)?,
            Op::BeginCopy { config_num } => write!(f, "begin copy shard={} config={config_num}", self.shard)?,
            Op::CopyChunk { config_num, begun_at, data } => {
                write!(f, "copy shard={} config={config_num} begun_at={begun_at} items={}", self.shard, data.len())?
            }
            Op::FinishCopy { config_num, begun_at } => {
                write!(f, "finish copy shard={} config={config_num} begun_at={begun_at}", self.shard)?
            }
            Op::DiscardCopy { config_num } => write!(f, "discard copy shard={} config={config_num}", self.shard)?,
            Op::IngestCopy { config_num, begun_at, file, items, .. } => write!(
                f,
                "ingest copy shard={} config={config_num} begun_at={begun_at} file={} items={items}",
                self.shard, file.name
            )?,
            Op::InstallChanges { config_num, data, deleted, sessions, last } => write!(
                f,
                "install changes shard={} config={config_num} items={} deleted={} sessions={} last={last}",
                self.shard,
                data.len(),
                deleted.len(),
                sessions.len()
            )?,
        }
        if let Some(s) = &self.session {
            write!(f, " client={} seq={}", s.client_id, s.seq)?;
        }
        Ok(())
    }
}

impl std::fmt::Display for OpResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpResult::Refused(refusal) => write!(f, "refused: {refusal}"),
            other => std::fmt::Debug::fmt(other, f),
        }
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
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotDir>;
pub type RaftMetrics = openraft::RaftMetrics<TypeConfig>;

/// The index of a log id, 0 for "none yet" (Raft indexes start at 0 for the initial
/// membership, so callers that must tell the two apart keep the Option).
pub fn index_of(id: &Option<LogId>) -> u64 {
    id.as_ref().map_or(0, |l| l.index())
}

/// The one binary codec for everything we persist or send that is not protobuf (Raft entries,
/// votes, RPC messages, snapshot headers, sessions, shard state): bincode 1 with fixed-width
/// little-endian integers, the encoding `bincode::serialize` has always produced, so stored
/// data and peers running older builds still decode.
fn codec() -> impl bincode::Options {
    bincode::options().with_fixint_encoding().reject_trailing_bytes()
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    codec().serialize(value).expect("serializing an in-memory value cannot fail")
}

/// How many bytes `encode` gives for `value`, without encoding it.
pub fn encoded_len<T: Serialize>(value: &T) -> usize {
    codec().serialized_size(value).expect("sizing an in-memory value cannot fail") as usize
}

/// Decodes bytes that may have come from the network or a damaged file. Decoding is bounded by
/// `bytes` itself: a length prefix larger than what is left is an error, never an allocation,
/// and so are truncated input, unknown variants and trailing garbage.
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> std::io::Result<T> {
    codec()
        .with_limit(bytes.len() as u64)
        .deserialize(bytes)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("malformed record: {e}")))
}

/// Hostile-input checks shared by the tests of every decoder of bytes that arrive over the
/// network (Raft messages, snapshot headers, sessions and shard state in pulled chunks).
#[cfg(test)]
pub(crate) mod hostile_input {
    use rand::Rng;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    /// Length prefixes a hostile peer may send: 2^45 is what aborted a node
    /// (`memory allocation of 35184372088832 bytes failed`).
    pub const HUGE_LENGTHS: [u64; 3] = [1 << 31, 1 << 45, u64::MAX];

    /// Feeds `decode::<T>` every strict prefix of `valid` (each must fail), `valid` with each
    /// 8-byte window replaced by a huge length, `valid` with one trailing byte (must fail),
    /// random mutations of `valid` and random buffers. Nothing may panic, and nothing may try
    /// to allocate a length it read: that aborts the test binary.
    pub fn check<T: for<'de> Deserialize<'de> + std::fmt::Debug>(valid: &[u8]) {
        decode::<T>(valid).expect("the sample decodes");
        for len in 0..valid.len() {
            assert!(decode::<T>(&valid[..len]).is_err(), "a {len}-byte prefix of {} decoded", valid.len());
        }
        for huge in HUGE_LENGTHS {
            for at in 0..valid.len().saturating_sub(7) {
                let mut bytes = valid.to_vec();
                bytes[at..at + 8].copy_from_slice(&huge.to_le_bytes());
                let _ = decode::<T>(&bytes);
            }
        }
        let mut trailing = valid.to_vec();
        trailing.push(0);
        assert!(decode::<T>(&trailing).is_err(), "trailing garbage was accepted");
        let mut rng = StdRng::seed_from_u64(valid.len() as u64);
        for _ in 0..2000 {
            let mut bytes = valid.to_vec();
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(0..bytes.len());
                bytes[at] = rng.random();
            }
            let _ = decode::<T>(&bytes);
            let mut random = vec![0u8; rng.random_range(0..512)];
            rng.fill(&mut random[..]);
            let _ = decode::<T>(&random);
        }
    }

    /// A log id of `term` (leader node 1) at `index`.
    pub fn log_id(term: u64, index: u64) -> LogId {
        use openraft::vote::RaftLeaderId;
        let leader = openraft::impls::leader_id_adv::LeaderId::<u64, NodeId>::new(term, 1);
        LogId::new(leader.to_committed(), index)
    }

    pub fn put(key: &[u8], value: &[u8]) -> Command {
        Command {
            session: Some(SessionTag { client_id: 9, seq: 2, first_unacked: 1 }),
            shard: 3,
            op: Op::Put { key: key.to_vec(), value: value.to_vec() },
        }
    }

    /// `bytes` with the 8-byte length prefix written just before the first `marker` replaced.
    pub fn with_length_before(bytes: &[u8], marker: &[u8], length: u64) -> Vec<u8> {
        let at = bytes.windows(marker.len()).position(|w| w == marker).expect("marker present");
        assert_eq!(bytes[at - 8..at], (marker.len() as u64).to_le_bytes(), "a length prefix precedes the marker");
        let mut out = bytes.to_vec();
        out[at - 8..at].copy_from_slice(&length.to_le_bytes());
        out
    }
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

    #[test]
    fn a_refusal_keeps_its_cause_through_encoding_and_reads_as_a_sentence() {
        let refusals = [
            Refusal::Config(ConfigRefusal::OutOfOrder { current: 3, offered: 5 }),
            Refusal::BadChunk { shard: 2, config_num: 7, reason: RecordError::SessionKey(5) },
            Refusal::Assignment(AssignmentError::UnknownGroup(4)),
        ];
        for refusal in refusals {
            let result = OpResult::Refused(refusal.clone());
            assert_eq!(decode::<OpResult>(&encode(&result)).unwrap(), result);
            assert!(!result.to_string().contains('{'), "{result}");
        }
        let out_of_order = Refusal::Config(ConfigRefusal::OutOfOrder { current: 3, offered: 5 });
        assert_eq!(
            OpResult::Refused(out_of_order).to_string(),
            "refused: the group is at config 3; config 5 is not the next one"
        );
    }

    fn samples() -> Vec<Command> {
        let record = |k: &[u8], v: &[u8]| Record { key: k.to_vec(), value: v.to_vec() };
        vec![
            hostile_input::put(b"key", &[7; 40]),
            Command { session: None, shard: 1, op: Op::Delete { key: b"gone".to_vec() } },
            Command {
                session: None,
                shard: 2,
                op: Op::CompareAndSwap {
                    key: b"k".to_vec(),
                    expected: Some(b"old".to_vec()),
                    new_value: b"new".to_vec(),
                },
            },
            Command {
                session: None,
                shard: 5,
                op: Op::InstallChunk {
                    config_num: 4,
                    data: vec![record(b"a", b"1"), record(b"b", b"2")],
                    sessions: vec![record(&7u64.to_be_bytes(), b"session")],
                    last: false,
                },
            },
            Command { session: None, shard: 0, op: Op::SessionClock { now_ms: 1_700_000_000_000, expiry_ms: 600_000 } },
        ]
    }

    /// Stored logs and running peers encode with `bincode::serialize`; the bounded codec must
    /// produce and read exactly those bytes.
    #[test]
    fn the_bounded_codec_keeps_the_bincode_1_encoding() {
        for cmd in samples() {
            let legacy = bincode::serialize(&cmd).unwrap();
            assert_eq!(encode(&cmd), legacy);
            assert_eq!(decode::<Command>(&legacy).unwrap(), cmd);
            let entry = Entry { log_id: hostile_input::log_id(3, 17), payload: openraft::EntryPayload::Normal(cmd) };
            let legacy = bincode::serialize(&entry).unwrap();
            assert_eq!(encode(&entry), legacy);
            assert_eq!(decode::<Entry>(&legacy).unwrap(), entry);
        }
        let applied = Some(hostile_input::log_id(2, 9));
        assert_eq!(decode::<Option<LogId>>(&bincode::serialize(&applied).unwrap()).unwrap(), applied);
    }

    #[test]
    fn a_huge_length_prefix_is_an_error_not_an_allocation() {
        let bytes = encode(&hostile_input::put(b"MARKER-KEY", b"v"));
        for huge in hostile_input::HUGE_LENGTHS {
            let hostile = hostile_input::with_length_before(&bytes, b"MARKER-KEY", huge);
            let err = decode::<Command>(&hostile).unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
        }
    }

    #[test]
    fn commands_and_entries_survive_hostile_bytes() {
        for cmd in samples() {
            hostile_input::check::<Command>(&encode(&cmd));
            let entry = Entry { log_id: hostile_input::log_id(1, 5), payload: openraft::EntryPayload::Normal(cmd) };
            hostile_input::check::<Entry>(&encode(&entry));
        }
        let cas = OpResult::CompareAndSwap { succeeded: true, previous: Some(vec![1; 30]) };
        hostile_input::check::<OpResult>(&encode(&cas));
    }
}
