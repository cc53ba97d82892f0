//! The connecting side: gRPC channels whose connections open with the current client
//! certificate (files reloaded when they change, for every new connection).

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::transport::{Channel, Endpoint};

use crate::error::TlsError;
use crate::files::{Material, TlsFiles};
use crate::reload::Reloading;

/// A client's TLS configuration: from files (reloaded when they change) or from PEM text held
/// in memory (fixed; make a new one to rotate).
#[derive(Clone)]
pub struct ClientTls {
    source: Source,
}

#[derive(Clone)]
enum Source {
    Files { files: TlsFiles, config: Arc<Reloading<ClientConfig>> },
    Memory(Arc<ClientConfig>),
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Source::Files { files, .. } => f.debug_struct("ClientTls").field("files", files).finish(),
            Source::Memory(_) => f.debug_struct("ClientTls").field("files", &"(in memory)").finish(),
        }
    }
}

fn build(material: Material) -> Result<ClientConfig, TlsError> {
    let mut config = ClientConfig::builder_with_provider(crate::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(material.roots)
        .with_client_auth_cert(material.chain, material.key)
        .map_err(TlsError::BadKeyPair)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

impl ClientTls {
    pub fn new(files: TlsFiles) -> Result<Self, TlsError> {
        let config = Arc::new(Reloading::new(files.clone(), build)?);
        Ok(ClientTls { source: Source::Files { files, config } })
    }

    /// From the PEM text of the CA, the certificate (chain, leaf first) and its key.
    pub fn from_pem(ca: &str, cert: &str, key: &str) -> Result<Self, TlsError> {
        Ok(ClientTls { source: Source::Memory(Arc::new(build(Material::from_pem(ca, cert, key)?)?)) })
    }

    /// The files it reloads from; none when made from PEM text.
    pub fn files(&self) -> Option<&TlsFiles> {
        match &self.source {
            Source::Files { files, .. } => Some(files),
            Source::Memory(_) => None,
        }
    }

    fn config(&self) -> Arc<ClientConfig> {
        match &self.source {
            Source::Files { config, .. } => config.current(),
            Source::Memory(config) => config.clone(),
        }
    }

    /// TCP, then a TLS handshake verifying the server's certificate names the host connected to
    /// (or `server_name` when given), then the server's first bytes: with TLS 1.3 the server
    /// checks our certificate only after our side of the handshake is done, so its refusal (an
    /// alert) or its acceptance (its HTTP/2 SETTINGS) comes then. Waiting for it makes a refusal a connection error that says
    /// why, before any request is sent.
    async fn connect(self, uri: Uri, server_name: Option<String>) -> io::Result<TokioIo<Accepted>> {
        let invalid = |message: String| io::Error::new(io::ErrorKind::InvalidInput, message);
        let host = uri.host().ok_or_else(|| invalid(format!("{uri} names no host")))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        let port = uri.port_u16().ok_or_else(|| invalid(format!("{uri} names no port")))?;
        let expected = server_name.unwrap_or_else(|| host.clone());
        let name = ServerName::try_from(expected.clone()).map_err(|e| invalid(format!("{expected}: {e}")))?;
        let tcp = TcpStream::connect((host.as_str(), port)).await?;
        tcp.set_nodelay(true)?;
        let mut stream = TlsConnector::from(self.config()).connect(name, tcp).await?;
        let mut head = vec![0u8; FIRST_READ];
        let read = stream.read(&mut head).await?;
        if read == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection after the TLS handshake",
            ));
        }
        head.truncate(read);
        Ok(TokioIo::new(Accepted { head, pos: 0, stream }))
    }
}

/// Room for the server's first bytes (its SETTINGS frame is a few dozen).
const FIRST_READ: usize = 16 * 1024;

/// A connection the server accepted, with the bytes read to learn that still to be delivered.
pub struct Accepted {
    head: Vec<u8>,
    pos: usize,
    stream: TlsStream<TcpStream>,
}

impl AsyncRead for Accepted {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.head.len() {
            let n = buf.remaining().min(this.head.len() - this.pos);
            buf.put_slice(&this.head[this.pos..this.pos + n]);
            this.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

crate::stream::delegate_async_write!(Accepted);

/// A channel to `endpoint` that connects on first use: over TLS with `tls`, else plaintext.
pub fn lazy_channel(endpoint: Endpoint, tls: Option<&ClientTls>) -> Channel {
    match tls {
        None => endpoint.connect_lazy(),
        Some(tls) => named_channel(endpoint, tls, None),
    }
}

/// A TLS channel to `endpoint` (an address, typically) that connects on first use and checks the
/// server's certificate names `server_name` rather than the host dialled: the operator dials a
/// pod's IP and expects the pod's DNS name, which the node certificate carries.
pub fn lazy_channel_named(endpoint: Endpoint, tls: &ClientTls, server_name: &str) -> Channel {
    named_channel(endpoint, tls, Some(server_name.to_string()))
}

fn named_channel(endpoint: Endpoint, tls: &ClientTls, server_name: Option<String>) -> Channel {
    let tls = tls.clone();
    endpoint
        .connect_with_connector_lazy(tower::service_fn(move |uri: Uri| tls.clone().connect(uri, server_name.clone())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::{Ca, Validity};
    use crate::identity::{PeerIdentity, Role};

    /// Moves what `from` has to send to `to`.
    fn pump(from: &mut rustls::Connection, to: &mut rustls::Connection) -> Result<(), rustls::Error> {
        let mut buf = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            to.read_tls(&mut buf.as_slice()).unwrap();
            to.process_new_packets()?;
        }
        Ok(())
    }

    /// A handshake in memory: the first error, if any.
    fn handshake(client: ClientConfig, server: rustls::ServerConfig, name: &str) -> Result<(), rustls::Error> {
        let name = ServerName::try_from(name.to_string()).unwrap();
        let mut c = rustls::Connection::Client(rustls::ClientConnection::new(Arc::new(client), name)?);
        let mut s = rustls::Connection::Server(rustls::ServerConnection::new(Arc::new(server))?);
        for _ in 0..10 {
            pump(&mut c, &mut s)?;
            pump(&mut s, &mut c)?;
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok(());
            }
        }
        Err(rustls::Error::General("the handshake did not finish".into()))
    }

    #[test]
    fn a_wildcard_node_certificate_serves_a_pod_name_and_in_memory_pem_makes_a_client() {
        let ca = Ca::generate("prod.demo", Validity::days_from_now(1)).unwrap();
        let node = PeerIdentity::new("prod.demo", Role::Node, "node").unwrap();
        let hosts = ["*.demo-g1.prod.svc.cluster.local".to_string(), "demo.prod.svc".to_string()];
        let server = ca.issue(&node, &hosts, Validity::days_from_now(1)).unwrap();
        let operator = PeerIdentity::new("prod.demo", Role::Operator, "op").unwrap();
        let client = ca.issue(&operator, &[], Validity::days_from_now(1)).unwrap();
        let ca_pem = &ca.pem().cert_pem;
        let server_config =
            || crate::server::build(Material::from_pem(ca_pem, &server.cert_pem, &server.key_pem).unwrap()).unwrap();
        let tls = ClientTls::from_pem(ca_pem, &client.cert_pem, &client.key_pem).unwrap();
        assert!(tls.files().is_none());
        let config = || (*tls.config()).clone();
        handshake(config(), server_config(), "demo-g1-2.demo-g1.prod.svc.cluster.local").unwrap();
        handshake(config(), server_config(), "demo.prod.svc").unwrap();
        let wrong = handshake(config(), server_config(), "demo-g2-0.demo-g2.prod.svc.cluster.local").unwrap_err();
        assert!(matches!(wrong, rustls::Error::InvalidCertificate(_)), "{wrong:?}");
        assert!(ClientTls::from_pem("junk", &client.cert_pem, &client.key_pem).is_err());
    }
}
