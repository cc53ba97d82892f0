//! Lazily connected gRPC channels to other nodes, one per address, shared by every caller;
//! mutual TLS with this node's certificate when TLS is on.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use shardkv_tls::ClientTls;
use tonic::transport::Channel;
use tonic::transport::Endpoint;

#[derive(Clone)]
pub struct Channels {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    tls: Option<ClientTls>,
}

impl Channels {
    pub fn new(tls: Option<ClientTls>) -> Self {
        Channels { channels: Arc::default(), tls }
    }

    pub fn get(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut channels = self.channels.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(2))
            .initial_stream_window_size(16 << 20)
            .initial_connection_window_size(32 << 20);
        let channel = shardkv_tls::lazy_channel(endpoint, self.tls.as_ref());
        channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }
}
