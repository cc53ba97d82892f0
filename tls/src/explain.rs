//! TLS failures in words a user can act on, found anywhere in an error's chain of causes.

use std::error::Error;
use std::fmt;

use rustls::{AlertDescription, CertificateError};

/// What went wrong with a TLS connection, from the side that sees the error: "the peer" is the
/// other end, "our certificate" the one this side presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsProblem {
    PeerNotSignedByCa,
    PeerExpired,
    PeerNotYetValid,
    /// A server certificate that does not name the address connected to.
    PeerNameMismatch,
    PeerSentNoCertificate,
    /// The peer refused our certificate as not signed by its CA.
    OursNotSignedByCa,
    OursExpired,
    /// The server requires a client certificate and got none.
    OursMissing,
    /// The peer ended the handshake with this alert.
    PeerRefused(String),
    /// A plaintext client reached a TLS node (its GOAWAY says INADEQUATE_SECURITY).
    ServerRequiresTls,
    /// The other end does not speak TLS.
    NotTls,
    Other(String),
}

impl TlsProblem {
    pub fn label(&self) -> &'static str {
        match self {
            TlsProblem::PeerNotSignedByCa => "unknown_ca",
            TlsProblem::PeerExpired => "expired",
            TlsProblem::PeerNotYetValid => "not_yet_valid",
            TlsProblem::PeerNameMismatch => "name_mismatch",
            TlsProblem::PeerSentNoCertificate => "no_certificate",
            TlsProblem::OursNotSignedByCa | TlsProblem::OursExpired | TlsProblem::OursMissing => "ours_refused",
            TlsProblem::PeerRefused(_) => "peer_refused",
            TlsProblem::ServerRequiresTls => "requires_tls",
            TlsProblem::NotTls => "not_tls",
            TlsProblem::Other(_) => "other",
        }
    }
}

impl fmt::Display for TlsProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsProblem::PeerNotSignedByCa => f.write_str("the peer's certificate is not signed by this cluster's CA"),
            TlsProblem::PeerExpired => f.write_str("the peer's certificate expired"),
            TlsProblem::PeerNotYetValid => f.write_str("the peer's certificate is not valid yet"),
            TlsProblem::PeerNameMismatch => {
                f.write_str("the server's certificate does not name the address connected to")
            }
            TlsProblem::PeerSentNoCertificate => f.write_str("the peer presented no certificate"),
            TlsProblem::OursNotSignedByCa => {
                f.write_str("the server refused our certificate: certificate not signed by this cluster's CA")
            }
            TlsProblem::OursExpired => f.write_str("the server refused our certificate: certificate expired"),
            TlsProblem::OursMissing => {
                f.write_str("the server requires a client certificate (give a CA, certificate and key)")
            }
            TlsProblem::PeerRefused(alert) => write!(f, "the peer refused the TLS handshake ({alert})"),
            TlsProblem::ServerRequiresTls => {
                f.write_str("server requires TLS: connect with a CA, certificate and key (--ca, --cert, --key)")
            }
            TlsProblem::NotTls => f.write_str("the server does not speak TLS (connect without --ca, --cert, --key)"),
            TlsProblem::Other(e) => write!(f, "TLS error: {e}"),
        }
    }
}

fn of_rustls(err: &rustls::Error) -> TlsProblem {
    match err {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => TlsProblem::PeerNotSignedByCa,
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => TlsProblem::PeerExpired,
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => TlsProblem::PeerNotYetValid,
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                TlsProblem::PeerNameMismatch
            }
            other => TlsProblem::Other(format!("invalid peer certificate: {other:?}")),
        },
        rustls::Error::NoCertificatesPresented => TlsProblem::PeerSentNoCertificate,
        rustls::Error::AlertReceived(alert) => match alert {
            AlertDescription::UnknownCA | AlertDescription::BadCertificate | AlertDescription::DecryptError => {
                TlsProblem::OursNotSignedByCa
            }
            AlertDescription::CertificateExpired => TlsProblem::OursExpired,
            AlertDescription::CertificateRequired => TlsProblem::OursMissing,
            other => TlsProblem::PeerRefused(format!("{other:?}")),
        },
        rustls::Error::InvalidMessage(_) => TlsProblem::NotTls,
        other => TlsProblem::Other(other.to_string()),
    }
}

/// The TLS problem behind `err`, if any of its causes is one.
pub fn problem_of(err: &(dyn Error + 'static)) -> Option<TlsProblem> {
    let mut next = Some(err);
    while let Some(err) = next {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(of_rustls(tls));
        }
        if let Some(h2) = err.downcast_ref::<h2::Error>()
            && h2.reason() == Some(h2::Reason::INADEQUATE_SECURITY)
        {
            return Some(TlsProblem::ServerRequiresTls);
        }
        // io::Error's source() skips the error it wraps, which is where rustls puts its own.
        if let Some(inner) = err.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref())
            && let Some(problem) = problem_of(inner)
        {
            return Some(problem);
        }
        next = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wrapped(err: rustls::Error) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, err)
    }

    #[test]
    fn finds_rustls_errors_inside_io_errors() {
        let unknown = wrapped(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer));
        assert_eq!(problem_of(&unknown), Some(TlsProblem::PeerNotSignedByCa));
        let expired = wrapped(rustls::Error::AlertReceived(AlertDescription::CertificateExpired));
        assert_eq!(problem_of(&expired), Some(TlsProblem::OursExpired));
        let status =
            tonic::Status::from_error(Box::new(wrapped(rustls::Error::AlertReceived(AlertDescription::UnknownCA))));
        assert_eq!(problem_of(&status), Some(TlsProblem::OursNotSignedByCa));
        assert_eq!(problem_of(&std::io::Error::other("connection refused")), None);
    }

    #[test]
    fn a_goaway_for_inadequate_security_means_the_server_requires_tls() {
        let goaway = h2::Error::from(h2::Reason::INADEQUATE_SECURITY);
        assert_eq!(problem_of(&goaway), Some(TlsProblem::ServerRequiresTls));
        assert_eq!(problem_of(&h2::Error::from(h2::Reason::CANCEL)), None);
    }
}
