//! etcd v3 as a benchmark target, for side-by-side comparisons on the same generator.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use etcd_client::{Channel, ConnectOptions, KvClient};
use shardkv_tls::ClientTls;
use tonic::transport::Endpoint;

use super::KvTarget;
use crate::endpoints::endpoint_uri;

/// An etcd cluster reached over its v3 gRPC API.
///
/// The members are reached as shardkv's nodes are: one lazily connected channel per member
/// (`shardkv_tls::lazy_channel`, mutual TLS or plaintext), shared by all workers, just as
/// shardkv workers share one connection pool. Requests go to the members in turn. etcd has no
/// client sessions for plain puts, so a worker handle is a clone of the target.
#[derive(Clone)]
pub struct EtcdTarget {
    members: Arc<[KvClient]>,
    next: Arc<AtomicUsize>,
}

impl EtcdTarget {
    /// Connects to `endpoints` ("host:port"), with mutual TLS if `tls` is given (the same CA,
    /// certificate and key options as for shardkv); `request_timeout` bounds each request as
    /// `--timeout-ms` does for shardkv.
    pub async fn connect(
        endpoints: &[String],
        request_timeout: Duration,
        connect_timeout: Duration,
        tls: Option<&ClientTls>,
    ) -> Result<Self, etcd_client::Error> {
        if endpoints.is_empty() {
            return Err(etcd_client::Error::InvalidArgs("no etcd endpoints".into()));
        }
        let mut members = Vec::with_capacity(endpoints.len());
        for endpoint in endpoints {
            let config = Endpoint::from_shared(endpoint_uri(endpoint))
                .map_err(|e| etcd_client::Error::InvalidArgs(format!("bad endpoint {endpoint:?}: {e}")))?
                .timeout(request_timeout)
                .connect_timeout(connect_timeout)
                .tcp_nodelay(true);
            let channel = Channel::Tonic(shardkv_tls::lazy_channel(config, tls));
            let client = etcd_client::Client::from_channel(channel, Some(ConnectOptions::new())).await?;
            members.push(client.kv_client());
        }
        Ok(Self { members: members.into(), next: Arc::new(AtomicUsize::new(0)) })
    }

    /// The client of the member the next request goes to (clones share the channel; the
    /// generated client's methods need `&mut self`).
    fn member(&self) -> KvClient {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.members.len();
        self.members[index].clone()
    }
}

impl KvTarget for EtcdTarget {
    type Error = etcd_client::Error;

    fn worker(&self) -> Self {
        self.clone()
    }

    async fn put(&self, key: Vec<u8>, value: Vec<u8>) -> Result<(), etcd_client::Error> {
        self.member().put(key, value, None).await.map(drop)
    }

    /// A linearizable read: etcd's default (`serializable = false`) goes through the leader's
    /// ReadIndex, as shardkv's default read does.
    async fn get(&self, key: Vec<u8>) -> Result<bool, etcd_client::Error> {
        Ok(!self.member().get(key, None).await?.kvs().is_empty())
    }
}
