//! Errors of loading TLS material and making certificates.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("give all three of the CA, certificate and key files or none (missing: {missing})")]
    Incomplete { missing: String },
    #[error("reading {what} {path}: {source}")]
    Read { what: &'static str, path: PathBuf, source: rustls_pki_types::pem::Error },
    #[error("{what} {path} holds no PEM certificate")]
    Empty { what: &'static str, path: PathBuf },
    #[error("the CA file {path} holds a certificate rustls refuses: {source}")]
    BadCa { path: PathBuf, source: rustls::Error },
    #[error("reading the {what} PEM: {source}")]
    Pem { what: &'static str, source: rustls_pki_types::pem::Error },
    #[error("the {what} PEM holds no certificate")]
    NoPem { what: &'static str },
    #[error("the CA PEM holds a certificate rustls refuses: {0}")]
    BadCaPem(rustls::Error),
    #[error("the certificate does not parse: {0}")]
    Unparsable(String),
    #[error("the certificate and key do not make a usable identity: {0}")]
    BadKeyPair(rustls::Error),
    #[error("building the TLS configuration: {0}")]
    Config(String),
    #[error("the certificate {path} names no shardkv identity: {reason}")]
    NoIdentity { path: PathBuf, reason: String },
    #[error("making a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}
