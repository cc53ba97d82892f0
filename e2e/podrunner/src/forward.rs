//! Pods reach the API server through the gateway: kube-apiserver listens on
//! loopback only, so the runner forwards GATEWAY:PORT to it (TLS passes
//! through; the serving certificate names the gateway address).

use std::net::SocketAddr;

use anyhow::{Context, Result};
use tokio::net::{TcpListener, TcpStream};

pub async fn serve(listen: SocketAddr, upstream: String) -> Result<()> {
    let listener = TcpListener::bind(listen).await.with_context(|| format!("binding the API forwarder on {listen}"))?;
    tracing::info!(%listen, %upstream, "forwarding pods' API server traffic");
    loop {
        let (mut inbound, _) = listener.accept().await?;
        let upstream = upstream.clone();
        tokio::spawn(async move {
            match TcpStream::connect(&upstream).await {
                Ok(mut out) => {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
                Err(e) => tracing::warn!(%upstream, error = %e, "API forwarder cannot reach the API server"),
            }
        });
    }
}
