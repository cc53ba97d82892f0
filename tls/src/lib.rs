//! Mutual TLS for shardkv: who a certificate names (`identity`), loading and reloading PEM files
//! (`files`, `reload`), reading the URI names of a certificate (`san`), the node's accepting side
//! (`server`, `plaintext`), connecting channels (`client`), clear words for TLS failures
//! (`explain`) and making certificates (`certs`).
//!
//! rustls with the ring provider only.

pub mod certs;
pub mod client;
pub mod error;
pub mod explain;
pub mod files;
pub mod identity;
mod plaintext;
mod reload;
mod san;
pub mod server;
mod stream;

pub use client::{ClientTls, lazy_channel, lazy_channel_named};
pub use error::TlsError;
pub use explain::{TlsProblem, problem_of};
pub use files::TlsFiles;
pub use identity::{PeerIdentity, Role};
pub use server::{Peer, Refusal, ServerTls};

/// The crypto provider every config is built with.
fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}
