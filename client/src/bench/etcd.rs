//! etcd v3 as a benchmark target, for side-by-side comparisons on the same generator.

use std::time::Duration;

use etcd_client::{ConnectOptions, KvClient};

use super::KvTarget;
use crate::endpoints::endpoint_uri;

/// An etcd cluster reached over its v3 gRPC API.
///
/// All workers share one etcd client, i.e. one balanced gRPC channel over the endpoints, just as
/// shardkv workers share one connection pool (`Client::new_session` keeps the connections).
/// etcd has no client sessions for plain puts, so a worker handle is a clone of that client.
#[derive(Clone)]
pub struct EtcdTarget {
    kv: KvClient,
}

impl EtcdTarget {
    /// Connects to `endpoints` ("host:port"); `request_timeout` bounds each request as
    /// `--timeout-ms` does for shardkv.
    pub async fn connect(
        endpoints: &[String],
        request_timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<Self, etcd_client::Error> {
        let uris: Vec<String> = endpoints.iter().map(|e| endpoint_uri(e)).collect();
        let options = ConnectOptions::new().with_timeout(request_timeout).with_connect_timeout(connect_timeout);
        let client = etcd_client::Client::connect(uris, Some(options)).await?;
        Ok(Self { kv: client.kv_client() })
    }
}

impl KvTarget for EtcdTarget {
    type Error = etcd_client::Error;

    fn worker(&self) -> Self {
        self.clone()
    }

    async fn put(&self, key: Vec<u8>, value: Vec<u8>) -> Result<(), etcd_client::Error> {
        // Clones share the channel; the generated client's methods need `&mut self`.
        self.kv.clone().put(key, value, None).await.map(drop)
    }

    /// A linearizable read: etcd's default (`serializable = false`) goes through the leader's
    /// ReadIndex, as shardkv's default read does.
    async fn get(&self, key: Vec<u8>) -> Result<bool, etcd_client::Error> {
        Ok(!self.kv.clone().get(key, None).await?.kvs().is_empty())
    }
}
