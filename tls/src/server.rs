//! The accepting side of a node: TLS handshakes run off the accept loop, a plaintext client is
//! told TLS is required, and each connection carries the identity its client certificate names.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use crate::error::TlsError;
use crate::explain::{TlsProblem, problem_of};
use crate::files::{Material, TlsFiles};
use crate::identity::{IdentityError, PeerIdentity};
use crate::plaintext;
use crate::reload::Reloading;

/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed accept (out of file descriptors, say) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// The first byte of every TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
/// Accepted connections waiting for the gRPC server to take them.
const ACCEPTED_QUEUE: usize = 64;

/// A node's server configuration, rebuilt when its files change.
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<Reloading<ServerConfig>>,
}

/// Who is at the other end of an accepted connection: the request extension the node's
/// authorization reads.
#[derive(Debug)]
pub struct Peer {
    pub remote: SocketAddr,
    /// The identity the verified client certificate names, or why it names none.
    pub identity: Result<PeerIdentity, IdentityError>,
}

/// Why a connection was refused before any request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The client spoke plaintext HTTP/2 (it was answered "requires TLS").
    Plaintext,
    /// The handshake failed: a certificate of another CA, expired, missing, ...
    Handshake(TlsProblem),
    Timeout,
    Io(String),
}

impl Refusal {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::Plaintext => "plaintext",
            Refusal::Handshake(problem) => problem.label(),
            Refusal::Timeout => "timeout",
            Refusal::Io(_) => "io",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Plaintext => f.write_str("a plaintext client: this node requires TLS"),
            // Seen from the node, "ours" is the node's certificate and the peer a client.
            Refusal::Handshake(TlsProblem::OursNotSignedByCa) => {
                f.write_str("the client does not trust this node's certificate (not signed by the CA it was given)")
            }
            Refusal::Handshake(TlsProblem::OursExpired) => {
                f.write_str("the client refused this node's certificate as expired")
            }
            Refusal::Handshake(problem) => write!(f, "{problem}"),
            Refusal::Timeout => write!(f, "no TLS handshake within {HANDSHAKE_TIMEOUT:?}"),
            Refusal::Io(e) => write!(f, "I/O error during the handshake: {e}"),
        }
    }
}

pub(crate) fn build(material: Material) -> Result<ServerConfig, TlsError> {
    let provider = crate::provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(material.roots, provider.clone())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(material.chain, material.key)
        .map_err(TlsError::BadKeyPair)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

impl ServerTls {
    pub fn new(files: TlsFiles) -> Result<Self, TlsError> {
        Ok(ServerTls { config: Arc::new(Reloading::new(files, build)?) })
    }

    /// Accepts on `listener` and yields the connections whose handshake succeeded; every
    /// refused one is passed to `refused`. Accepting stops when the stream is dropped.
    pub fn incoming(
        &self,
        listener: TcpListener,
        refused: impl Fn(SocketAddr, &Refusal) + Send + Sync + 'static,
    ) -> ReceiverStream<io::Result<TlsConn>> {
        let (tx, rx) = mpsc::channel(ACCEPTED_QUEUE);
        let config = self.config.clone();
        let refused = Arc::new(refused);
        tokio::spawn(async move {
            loop {
                let (tcp, remote) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(e) => {
                            tracing::warn!(error = %e, "accepting a connection failed");
                            tokio::time::sleep(ACCEPT_BACKOFF).await;
                            continue;
                        }
                    },
                    () = tx.closed() => return,
                };
                let (config, tx, refused) = (config.current(), tx.clone(), refused.clone());
                tokio::spawn(async move {
                    let outcome = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(tcp, remote, config))
                        .await
                        .unwrap_or(Err(Refusal::Timeout));
                    match outcome {
                        Ok(Some(conn)) => {
                            let _ = tx.send(Ok(conn)).await;
                        }
                        // Closed before a byte: a TCP probe.
                        Ok(None) => {}
                        Err(refusal) => refused(remote, &refusal),
                    }
                });
            }
        });
        ReceiverStream::new(rx)
    }
}

async fn handshake(tcp: TcpStream, remote: SocketAddr, config: Arc<ServerConfig>) -> Result<Option<TlsConn>, Refusal> {
    let _ = tcp.set_nodelay(true);
    let mut first = [0u8; 1];
    if tcp.peek(&mut first).await.map_err(|e| Refusal::Io(e.to_string()))? == 0 {
        return Ok(None);
    }
    if first[0] != TLS_HANDSHAKE_RECORD {
        plaintext::refuse(tcp).await;
        return Err(Refusal::Plaintext);
    }
    let stream = TlsAcceptor::from(config).accept(tcp).await.map_err(|e| match problem_of(&e) {
        Some(problem) => Refusal::Handshake(problem),
        None => Refusal::Io(e.to_string()),
    })?;
    let identity = match stream.get_ref().1.peer_certificates().and_then(|certs| certs.first()) {
        Some(leaf) => PeerIdentity::from_cert_der(leaf),
        None => Err(IdentityError::Missing),
    };
    Ok(Some(TlsConn { stream, peer: Arc::new(Peer { remote, identity }) }))
}

/// An accepted TLS connection and who is at its other end.
pub struct TlsConn {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    peer: Arc<Peer>,
}

impl Connected for TlsConn {
    type ConnectInfo = Arc<Peer>;

    fn connect_info(&self) -> Arc<Peer> {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

crate::stream::delegate_async_write!(TlsConn);
