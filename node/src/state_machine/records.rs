//! Content checks of records that reach the state machine from other nodes: the data and
//! sessions of a pulled shard chunk, and the records of a received snapshot. The driver
//! checks a chunk before proposing it and the Raft service checks a snapshot before handing it
//! to Raft; apply checks a chunk again, so that bad content is refused as that entry's result
//! on every replica alike, and never fails apply (which would stop Raft on every replica, at
//! the same index after every restart).

use serde::Deserialize;
use serde::Serialize;

use super::checkpoint::RecordKind;
use super::session::Session;
use super::sharding;
use crate::storage::keys::SHARD_PREFIX_LEN;
use crate::types::Record;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RecordError {
    #[error("a data record has an empty key")]
    EmptyKey,
    #[error("a session record's key is {0} bytes, not an 8-byte client id")]
    SessionKey(usize),
    #[error("the session of client {client_id} does not decode: {reason}")]
    Session { client_id: u64, reason: String },
    #[error("a {kind} record's key is {len} bytes, which does not fit the {kind} key layout")]
    KeyLength { kind: RecordKind, len: usize },
    #[error("sharding state: {0}")]
    Shards(#[from] sharding::ShardsRecordError),
}

/// Checks the records of a pulled chunk (keys without their shard prefix); returns its
/// sessions, decoded, by client id.
pub fn check_chunk(data: &[Record], sessions: &[Record]) -> Result<Vec<(u64, Session)>, RecordError> {
    if data.iter().any(|r| r.key.is_empty()) {
        return Err(RecordError::EmptyKey);
    }
    sessions
        .iter()
        .map(|record| {
            let client_id: [u8; 8] =
                record.key.as_slice().try_into().map_err(|_| RecordError::SessionKey(record.key.len()))?;
            let client_id = u64::from_be_bytes(client_id);
            Ok((client_id, decode_session(client_id, &record.value)?))
        })
        .collect()
}

/// Checks the user keys a pull of changes says were deleted.
pub fn check_deleted(keys: &[serde_bytes::ByteBuf]) -> Result<(), RecordError> {
    if keys.iter().any(|k| k.is_empty()) { Err(RecordError::EmptyKey) } else { Ok(()) }
}

/// Checks one record of a snapshot (keys as stored, shard prefix included).
pub fn check_snapshot_record(kind: RecordKind, key: &[u8], value: &[u8]) -> Result<(), RecordError> {
    match kind {
        RecordKind::Data if key.len() <= SHARD_PREFIX_LEN => {
            Err(RecordError::KeyLength { kind: RecordKind::Data, len: key.len() })
        }
        RecordKind::Data => Ok(()),
        RecordKind::Session => match key.get(SHARD_PREFIX_LEN..).and_then(|id| <[u8; 8]>::try_from(id).ok()) {
            Some(client_id) => decode_session(u64::from_be_bytes(client_id), value).map(drop),
            None => Err(RecordError::KeyLength { kind: RecordKind::Session, len: key.len() }),
        },
        RecordKind::Shards => Ok(sharding::check_record(key, value)?),
    }
}

fn decode_session(client_id: u64, value: &[u8]) -> Result<Session, RecordError> {
    Session::from_bytes(value).map_err(|e| RecordError::Session { client_id, reason: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::keys::data_key;
    use crate::storage::keys::session_key;
    use crate::types::OpResult;

    fn record(key: &[u8], value: &[u8]) -> Record {
        Record { key: key.to_vec(), value: value.to_vec() }
    }

    fn session_bytes() -> Vec<u8> {
        let mut session = Session::default();
        session.record(3, 1, &OpResult::Put, 9);
        session.to_bytes()
    }

    #[test]
    fn a_good_chunk_passes() {
        let sessions = [record(&7u64.to_be_bytes(), &session_bytes())];
        let decoded = check_chunk(&[record(b"k", b"v")], &sessions).unwrap();
        assert_eq!(decoded, [(7, Session::from_bytes(&session_bytes()).unwrap())]);
        assert_eq!(check_chunk(&[], &[]), Ok(Vec::new()));
    }

    #[test]
    fn bad_chunks_say_what_is_wrong() {
        assert_eq!(check_chunk(&[record(b"", b"v")], &[]), Err(RecordError::EmptyKey));
        let short = [record(b"1234", &session_bytes())];
        assert_eq!(check_chunk(&[], &short), Err(RecordError::SessionKey(4)));
        let garbage = [record(&7u64.to_be_bytes(), b"not a session")];
        let err = check_chunk(&[], &garbage).unwrap_err();
        assert!(matches!(err, RecordError::Session { client_id: 7, .. }), "{err}");
        // The length of the cached results: after the format word and three u64 fields.
        let mut huge = session_bytes();
        huge[32..40].copy_from_slice(&(1u64 << 45).to_le_bytes());
        assert!(check_chunk(&[], &[record(&7u64.to_be_bytes(), &huge)]).is_err());
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
