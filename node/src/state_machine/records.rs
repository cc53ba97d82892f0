//! Content checks of records that reach the state machine from other nodes: the records of a
//! received snapshot file, checked by the Raft service before it hands the snapshot to Raft
//! (a snapshot that fails to install stops Raft on that node).

use super::session::Session;
use super::sharding;
use super::snapshot_file::RecordKind;
use crate::storage::keys::SHARD_PREFIX_LEN;
use crate::types::decode;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("the session of client {client_id} does not decode: {reason}")]
    Session { client_id: u64, reason: String },
    #[error("a {kind} record's key is {len} bytes, which does not fit the {kind} key layout")]
    KeyLength { kind: &'static str, len: usize },
    #[error("sharding state: {0}")]
    Shards(String),
}

/// Checks one record of a snapshot file (keys as stored, shard prefix included).
pub fn check_snapshot_record(kind: RecordKind, key: &[u8], value: &[u8]) -> Result<(), RecordError> {
    match kind {
        RecordKind::Data if key.len() <= SHARD_PREFIX_LEN => {
            Err(RecordError::KeyLength { kind: "data", len: key.len() })
        }
        RecordKind::Data => Ok(()),
        RecordKind::Session => match key.get(SHARD_PREFIX_LEN..).and_then(|id| <[u8; 8]>::try_from(id).ok()) {
            Some(client_id) => decode_session(u64::from_be_bytes(client_id), value).map(drop),
            None => Err(RecordError::KeyLength { kind: "session", len: key.len() }),
        },
        RecordKind::Shards => sharding::check_record(key, value).map_err(RecordError::Shards),
    }
}

fn decode_session(client_id: u64, value: &[u8]) -> Result<Session, RecordError> {
    decode(value).map_err(|e| RecordError::Session { client_id, reason: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::keys::data_key;
    use crate::storage::keys::session_key;
    use crate::types::OpResult;
    use crate::types::encode;
    use crate::types::hostile_input;

    fn session_bytes() -> Vec<u8> {
        let mut session = Session::default();
        session.record(3, 1, OpResult::CompareAndSwap { succeeded: false, previous: Some(b"MARKER-PREV".to_vec()) });
        encode(&session)
    }

    #[test]
    fn sessions_survive_hostile_bytes() {
        hostile_input::check::<Session>(&session_bytes());
    }

    #[test]
    fn snapshot_records_are_checked_by_kind() {
        assert_eq!(check_snapshot_record(RecordKind::Data, &data_key(1, b"k"), b"anything"), Ok(()));
        assert!(check_snapshot_record(RecordKind::Data, &[0, 0, 1], b"v").is_err());
        assert_eq!(check_snapshot_record(RecordKind::Session, &session_key(2, 7), &session_bytes()), Ok(()));
        assert!(check_snapshot_record(RecordKind::Session, &session_key(2, 7), b"garbage").is_err());
        assert!(check_snapshot_record(RecordKind::Session, b"short", &session_bytes()).is_err());
        assert!(check_snapshot_record(RecordKind::Shards, b"unknown", b"").is_err());
    }
}
