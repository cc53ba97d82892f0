//! The limits of a `Kv/Batch` call and its per-item errors as gRPC statuses.

use tonic::metadata::{KeyAndValueRef, MetadataKey, MetadataValue};

use crate::v1::ItemError;

/// Most items a `BatchRequest` may carry.
pub const MAX_BATCH_ITEMS: usize = 1024;
/// Largest `BatchRequest` a node accepts (encoded), whatever its own key and value limits.
pub const MAX_BATCH_REQUEST_BYTES: usize = 4 << 20;

impl From<&tonic::Status> for ItemError {
    /// The status's code, message and ASCII metadata (binary entries are not used by shardkv).
    fn from(status: &tonic::Status) -> Self {
        let metadata = status
            .metadata()
            .iter()
            .filter_map(|entry| match entry {
                KeyAndValueRef::Ascii(key, value) => Some((key.to_string(), value.to_str().ok()?.to_string())),
                KeyAndValueRef::Binary(..) => None,
            })
            .collect();
        ItemError { code: status.code() as i32, message: status.message().to_string(), metadata }
    }
}

impl ItemError {
    /// The status this error stands for; metadata entries that are not valid gRPC metadata
    /// are dropped.
    pub fn into_status(self) -> tonic::Status {
        let mut status = tonic::Status::new(tonic::Code::from_i32(self.code), self.message);
        for (key, value) in self.metadata {
            if let (Ok(key), Ok(value)) = (MetadataKey::from_bytes(key.as_bytes()), MetadataValue::try_from(value)) {
                status.metadata_mut().insert(key, value);
            }
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_item_error_keeps_code_message_and_metadata() {
        let mut status = tonic::Status::unavailable("not the leader");
        status.metadata_mut().insert(crate::LEADER_ADDR_HEADER, MetadataValue::from_static("127.0.0.3:7000"));
        status.metadata_mut().insert(crate::OUTCOME_HEADER, MetadataValue::from_static(crate::OUTCOME_UNKNOWN));
        let back = ItemError::from(&status).into_status();
        assert_eq!(back.code(), tonic::Code::Unavailable);
        assert_eq!(back.message(), "not the leader");
        assert_eq!(back.metadata().get(crate::LEADER_ADDR_HEADER).unwrap(), "127.0.0.3:7000");
        assert_eq!(back.metadata().get(crate::OUTCOME_HEADER).unwrap(), crate::OUTCOME_UNKNOWN);
    }

    #[test]
    fn an_unknown_code_becomes_unknown() {
        let error = ItemError { code: 99, message: "odd".into(), metadata: Default::default() };
        assert_eq!(error.into_status().code(), tonic::Code::Unknown);
    }
}
