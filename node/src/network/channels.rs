//! Lazily connected gRPC channels to other nodes, one per address, shared by every caller.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use tonic::transport::Channel;
use tonic::transport::Endpoint;

#[derive(Clone, Default)]
pub struct Channels(Arc<Mutex<HashMap<String, Channel>>>);

impl Channels {
    pub fn get(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut channels = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let channel = Endpoint::from_shared(format!("http://{addr}"))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(2))
            .connect_lazy();
        channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }
}
