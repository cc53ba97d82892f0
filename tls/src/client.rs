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

#[derive(Clone)]
pub struct ClientTls {
    files: TlsFiles,
    config: Arc<Reloading<ClientConfig>>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls").field("files", &self.files).finish()
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
        Ok(ClientTls { config: Arc::new(Reloading::new(files.clone(), build)?), files })
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// TCP, then a TLS handshake verifying the server's certificate names the host connected to,
    /// then the server's first bytes: with TLS 1.3 the server checks our certificate only after
    /// our side of the handshake is done, so its refusal (an alert) or its acceptance (its
    /// HTTP/2 SETTINGS) comes then. Waiting for it makes a refusal a connection error that says
    /// why, before any request is sent.
    async fn connect(self, uri: Uri) -> io::Result<TokioIo<Accepted>> {
        let invalid = |message: String| io::Error::new(io::ErrorKind::InvalidInput, message);
        let host = uri.host().ok_or_else(|| invalid(format!("{uri} names no host")))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        let port = uri.port_u16().ok_or_else(|| invalid(format!("{uri} names no port")))?;
        let name = ServerName::try_from(host.clone()).map_err(|e| invalid(format!("{host}: {e}")))?;
        let tcp = TcpStream::connect((host.as_str(), port)).await?;
        tcp.set_nodelay(true)?;
        let mut stream = TlsConnector::from(self.config.current()).connect(name, tcp).await?;
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
        Some(tls) => {
            let tls = tls.clone();
            endpoint.connect_with_connector_lazy(tower::service_fn(move |uri: Uri| tls.clone().connect(uri)))
        }
    }
}
