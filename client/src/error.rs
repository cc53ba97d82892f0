//! Errors returned by the client library.

use std::error::Error as _;

/// Result of a client operation.
pub type Result<T> = std::result::Result<T, Error>;

/// What went wrong with a request, in terms a caller can act on.
///
/// A write (put, delete, compare-and-swap) that fails with [`Error::OutcomeUnknown`] may or
/// may not have taken effect; any other error of a write means it was not applied.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A write failed after an attempt that may have been applied, or may still be: its entry
    /// reached a leader's log and then its fate was lost (a leader change, a connection cut, the
    /// deadline passing mid-attempt). Read the key to find out before writing again.
    #[error("outcome unknown: the write may or may not have been applied: {0}")]
    OutcomeUnknown(String),
    /// The request itself is wrong (empty key, value too large, bad endpoint, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// No leader could serve the request before the deadline.
    #[error("cluster unavailable: {0}")]
    Unavailable(String),
    /// The request's deadline passed before it completed (for a write: between attempts that
    /// each certainly applied nothing; otherwise the error is `OutcomeUnknown`).
    #[error("deadline exceeded before the request completed")]
    DeadlineExceeded,
    /// The cluster refused the request in its current state (other cluster, expired session, ...).
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// No endpoint could be reached.
    #[error("transport error: {0}")]
    Transport(String),
    /// The TLS connection was refused: a certificate of another CA, an expired one, a
    /// plaintext client at a TLS node, ... Retrying does not help; nothing was sent.
    #[error("TLS: {0}")]
    Tls(String),
    /// The node refused the call for the identity of the client certificate (the message
    /// names the identity and the RPC).
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// Any other gRPC status. Boxed because a `tonic::Status` is large and would bloat every
    /// `Result` the library returns.
    #[error("server error: {}: {}", .0.code(), .0.message())]
    Other(Box<tonic::Status>),
}

impl Error {
    /// Maps a final (not retried) gRPC status to an error.
    pub fn from_status(status: tonic::Status) -> Self {
        use tonic::Code;
        if let Some(problem) = shardkv_tls::problem_of(&status) {
            return Error::Tls(problem.to_string());
        }
        match status.code() {
            Code::PermissionDenied => Error::PermissionDenied(status.message().to_string()),
            Code::InvalidArgument => Error::InvalidArgument(status.message().to_string()),
            Code::FailedPrecondition => Error::FailedPrecondition(status.message().to_string()),
            Code::DeadlineExceeded => Error::DeadlineExceeded,
            Code::Unavailable if is_transport_failure(&status) => Error::Transport(describe_transport_failure(&status)),
            Code::Unavailable => Error::Unavailable(status.message().to_string()),
            _ => Error::Other(Box::new(status)),
        }
    }
}

impl Error {
    /// True when a write may have been applied despite the error.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, Error::OutcomeUnknown(_))
    }
}

/// True when the status says the connection could not be opened, so the request was never sent
/// (a refused TLS handshake included: no request passes before it completes).
pub(crate) fn is_connect_failure(status: &tonic::Status) -> bool {
    if shardkv_tls::problem_of(status).is_some() {
        return true;
    }
    let mut source = status.source();
    while let Some(err) = source {
        if err.is::<tonic::ConnectError>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// True when the status was produced locally because the connection failed, as opposed to
/// an answer from a node.
pub(crate) fn is_transport_failure(status: &tonic::Status) -> bool {
    let mut source = status.source();
    while let Some(err) = source {
        if err.is::<tonic::transport::Error>() || err.is::<std::io::Error>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// The status message followed by its underlying causes ("tcp connect error: Connection refused").
fn describe_transport_failure(status: &tonic::Status) -> String {
    let mut text = status.message().to_string();
    let mut source = status.source();
    while let Some(err) = source {
        let cause = err.to_string();
        // tonic wraps the I/O error in a cause that only says "transport error".
        if cause != "transport error" && !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
        source = err.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_status_codes_to_variants() {
        assert!(matches!(
            Error::from_status(tonic::Status::invalid_argument("empty key")),
            Error::InvalidArgument(m) if m == "empty key"
        ));
        assert!(matches!(
            Error::from_status(tonic::Status::failed_precondition("session expired")),
            Error::FailedPrecondition(_)
        ));
        assert!(matches!(Error::from_status(tonic::Status::deadline_exceeded("late")), Error::DeadlineExceeded));
        assert!(matches!(Error::from_status(tonic::Status::unavailable("no leader")), Error::Unavailable(_)));
        assert!(matches!(Error::from_status(tonic::Status::internal("boom")), Error::Other(_)));
        assert!(matches!(
            Error::from_status(tonic::Status::permission_denied("Kv/Put refused for x")),
            Error::PermissionDenied(m) if m == "Kv/Put refused for x"
        ));
    }

    #[test]
    fn io_source_marks_a_transport_failure() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let status = tonic::Status::from_error(Box::new(io));
        assert!(is_transport_failure(&status));
        assert!(!is_transport_failure(&tonic::Status::unavailable("not leader")));
    }

    #[test]
    fn only_a_failed_connect_means_the_request_was_never_sent() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let connect = tonic::Status::from_error(Box::new(tonic::ConnectError(Box::new(refused))));
        assert_eq!(connect.code(), tonic::Code::Unavailable);
        assert!(is_connect_failure(&connect));
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert!(!is_connect_failure(&tonic::Status::from_error(Box::new(reset))));
        assert!(!is_connect_failure(&tonic::Status::unavailable("not leader")));
    }
}
