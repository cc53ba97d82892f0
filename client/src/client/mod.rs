//! The shardkv client: topology detection, shard routing, per-group leader tracking,
//! deadline-bounded retries, and the KV, admin and meta API.
//!
//! The configured endpoints are either the replicas of one standalone group (which serves
//! every shard) or the meta group of a sharded cluster. The client finds out which on first
//! use by asking them for the shard map (`Meta.Query`): a standalone node answers that it is
//! not a meta replica. In a sharded cluster every key goes to the leader of the group owning
//! its shard in the cached shard map; a WrongGroup answer refreshes the map from the meta
//! group and retries at the new owner with the same (client_id, seq), all within the
//! request's deadline.
//!
//! Routing and retries are in `routing`, coalescing concurrent requests to a node into batch
//! calls in `batching`, the shard map and topology in `topology`, scans in `scan`, and the admin
//! and meta API in `admin`.

mod admin;
mod batching;
mod routing;
mod scan;
mod topology;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::time::Duration;
use std::time::Instant;

use shardkv_proto::v1::CompareAndSwapRequest;
use shardkv_proto::v1::ConfigResponse;
use shardkv_proto::v1::DeleteRequest;
use shardkv_proto::v1::GetRequest;
use shardkv_proto::v1::PutRequest;
use shardkv_proto::v1::RequestHeader;
use shardkv_proto::v1::batch_item::Request;
use shardkv_proto::v1::batch_result::Response;
use shardkv_proto::v1::kv_client::KvClient;
pub use shardkv_proto::v1::{ReadConsistency, ShardConfig, StatusResponse, TriggerSnapshotResponse};
use shardkv_tls::ClientTls;
use tonic::transport::Channel;
use tonic::transport::Endpoint;

use crate::endpoints::endpoint_uri;
use crate::error::Error;
use crate::error::Result;
use crate::session::Session;
use crate::session::WriteTicket;
use crate::shard_map::ShardMap;

use batching::Batches;
use batching::kv_call;
use batching::mismatched;
use routing::Attempts;
use routing::Leader;
use routing::Limits;

/// What the configured endpoints are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// The replicas of one group serving every shard (a node without --meta-endpoints).
    Standalone,
    /// The meta group of a sharded cluster; data groups are found through its shard map.
    Sharded,
}

/// Tunables of a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Deadline of one KV request, all retries (redirects, shard map refreshes) included.
    pub request_timeout: Duration,
    /// Deadline of one admin request; membership changes can wait for a learner to catch up.
    pub admin_timeout: Duration,
    /// Time allowed to open a connection to one endpoint.
    pub connect_timeout: Duration,
    /// Longest wait for one node's answer to a KV request or shard-map query before the
    /// client tries another replica (within `request_timeout`). A leader that is paused or cut
    /// off from its peers never answers; without this bound it would hold every request until
    /// its deadline. A write retried this way keeps its sequence number, so it applies once.
    pub attempt_timeout: Duration,
    /// What the endpoints are; `None` detects it on first use.
    pub topology: Option<Topology>,
    /// Mutual TLS with this CA, certificate and key; `None` connects in plaintext.
    pub tls: Option<ClientTls>,
    /// With `tls`: the name every node's certificate must carry, instead of the host dialled
    /// (dialling a pod's IP, its DNS name). `None` checks the host dialled.
    pub tls_server_name: Option<String>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(5),
            admin_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(1),
            attempt_timeout: Duration::from_secs(2),
            topology: None,
            tls: None,
            tls_server_name: None,
        }
    }
}

/// Result of a compare-and-swap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CasOutcome {
    pub succeeded: bool,
    /// The key's value before the operation; `None` if it was absent.
    pub previous: Option<Vec<u8>>,
}

/// Range and size of a scan. Empty `start`/`end`/`prefix` mean unbounded.
#[derive(Debug, Clone, Default)]
pub struct ScanOptions {
    /// Inclusive start key.
    pub start: Vec<u8>,
    /// Exclusive end key.
    pub end: Vec<u8>,
    /// Only keys with this prefix.
    pub prefix: Vec<u8>,
    /// Stop after this many items; `None` scans to the end.
    pub limit: Option<usize>,
}

/// A client of one shardkv cluster. Clones share connections, the shard map and the write
/// session; use [`Client::new_session`] for an independent session over the same connections.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
    session: Arc<Session>,
}

/// Connections, leader knowledge and the shard map, shared by every session of a client.
struct Shared {
    endpoints: Vec<String>,
    options: ClientOptions,
    /// One connection per address: a lazily connected HTTP/2 channel multiplexing all requests
    /// to it, and the queues batching its KV requests.
    connections: Mutex<HashMap<String, Connection>>,
    /// The configured endpoints: the standalone group, or the meta group.
    seeds: Arc<Leader>,
    topology: tokio::sync::OnceCell<Topology>,
    /// The newest shard map seen (sharded clusters only) and when it was fetched.
    shard_map: Mutex<Option<(Arc<ShardMap>, Instant)>>,
    /// Serialises shard map refreshes, so that many requests hitting WrongGroup at once
    /// cause one query to the meta group.
    refreshing: tokio::sync::Mutex<()>,
    /// Leader tracking of each data group, by group id.
    groups: Mutex<HashMap<u64, Arc<Leader>>>,
}

/// A node's channel and the queues that batch KV requests to it.
#[derive(Clone)]
struct Connection {
    channel: Channel,
    batches: Arc<Batches>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a single update, so a poisoned lock still holds valid data.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn request<M>(message: M, timeout: Duration) -> tonic::Request<M> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

/// A KV client that accepts replies as large as a node may send (a value read back can exceed
/// gRPC's default 4 MiB when nodes allow large values).
fn kv_client(channel: Channel) -> KvClient<Channel> {
    KvClient::new(channel).max_decoding_message_size(shardkv_proto::MAX_MESSAGE_BYTES)
}

/// Reads carry no session (client_id 0): they change nothing, so need no deduplication.
fn read_header(config_num: u64) -> Option<RequestHeader> {
    Some(RequestHeader { config_num, ..RequestHeader::default() })
}

impl Client {
    /// A client of the cluster reachable at `endpoints` ("host:port"), with default options:
    /// the replicas of a standalone group or the meta group of a sharded cluster (detected on
    /// first use). Connections open on first use.
    pub fn connect(endpoints: Vec<String>) -> Result<Client> {
        Self::with_options(endpoints, ClientOptions::default())
    }

    pub fn with_options(endpoints: Vec<String>, options: ClientOptions) -> Result<Client> {
        if endpoints.is_empty() {
            return Err(Error::InvalidArgument("no endpoints given".into()));
        }
        for endpoint in &endpoints {
            Endpoint::from_shared(endpoint_uri(endpoint))
                .map_err(|e| Error::InvalidArgument(format!("bad endpoint {endpoint:?}: {e}")))?;
        }
        let topology = match options.topology {
            Some(known) => tokio::sync::OnceCell::new_with(Some(known)),
            None => tokio::sync::OnceCell::new(),
        };
        Ok(Client {
            shared: Arc::new(Shared {
                seeds: Arc::new(Leader::new(endpoints.clone())),
                endpoints,
                options,
                connections: Mutex::new(HashMap::new()),
                topology,
                shard_map: Mutex::new(None),
                refreshing: tokio::sync::Mutex::new(()),
                groups: Mutex::new(HashMap::new()),
            }),
            session: Arc::new(Session::random()),
        })
    }

    /// A client over the same connections and shard map with a fresh write session.
    pub fn new_session(&self) -> Client {
        Client { shared: Arc::clone(&self.shared), session: Arc::new(Session::random()) }
    }

    /// The configured endpoints (a standalone group's replicas, or the meta group's).
    pub fn endpoints(&self) -> &[String] {
        &self.shared.endpoints
    }

    pub fn options(&self) -> &ClientOptions {
        &self.shared.options
    }

    pub fn client_id(&self) -> u64 {
        self.session.client_id()
    }

    /// Writes `value` under `key`; returns the log index the write was applied at (in the
    /// owning group's log).
    pub async fn put(&self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Result<u64> {
        let ticket = self.session.begin_write();
        let base = PutRequest { header: None, key: key.into(), value: value.into() };
        self.write_routed(&base.key, |connection, timeout, config_num| {
            let mut message = base.clone();
            message.header = Some(self.write_header(&ticket, config_num));
            async move {
                match kv_call(connection, Request::Put(message), timeout).await? {
                    Response::Put(reply) => Ok(reply.index),
                    other => Err(mismatched("put", &other)),
                }
            }
        })
        .await
    }

    /// Linearizable read: observes every write acknowledged before it started.
    pub async fn get(&self, key: impl Into<Vec<u8>>) -> Result<Option<Vec<u8>>> {
        self.get_with(key, ReadConsistency::Linearizable).await
    }

    /// Read of one replica's applied state; may be stale.
    pub async fn get_serializable(&self, key: impl Into<Vec<u8>>) -> Result<Option<Vec<u8>>> {
        self.get_with(key, ReadConsistency::Serializable).await
    }

    pub async fn get_with(&self, key: impl Into<Vec<u8>>, consistency: ReadConsistency) -> Result<Option<Vec<u8>>> {
        let base = GetRequest { header: None, key: key.into(), consistency: consistency.into() };
        self.call_routed(&base.key, self.request_timeout(), &Attempts::default(), |connection, timeout, config_num| {
            let mut message = base.clone();
            message.header = read_header(config_num);
            async move {
                match kv_call(connection, Request::Get(message), timeout).await? {
                    Response::Get(reply) => Ok(reply.found.then_some(reply.value)),
                    other => Err(mismatched("get", &other)),
                }
            }
        })
        .await
    }

    /// Deletes `key`; returns whether it existed.
    pub async fn delete(&self, key: impl Into<Vec<u8>>) -> Result<bool> {
        let ticket = self.session.begin_write();
        let base = DeleteRequest { header: None, key: key.into() };
        self.write_routed(&base.key, |connection, timeout, config_num| {
            let mut message = base.clone();
            message.header = Some(self.write_header(&ticket, config_num));
            async move {
                match kv_call(connection, Request::Delete(message), timeout).await? {
                    Response::Delete(reply) => Ok(reply.existed),
                    other => Err(mismatched("delete", &other)),
                }
            }
        })
        .await
    }

    /// Sets `key` to `new_value` if its current value is `expected` (`None`: the key must be
    /// absent).
    pub async fn compare_and_swap(
        &self,
        key: impl Into<Vec<u8>>,
        expected: Option<Vec<u8>>,
        new_value: impl Into<Vec<u8>>,
    ) -> Result<CasOutcome> {
        let ticket = self.session.begin_write();
        let base = CompareAndSwapRequest {
            header: None,
            key: key.into(),
            expect_absent: expected.is_none(),
            expected: expected.unwrap_or_default(),
            new_value: new_value.into(),
        };
        self.write_routed(&base.key, |connection, timeout, config_num| {
            let mut message = base.clone();
            message.header = Some(self.write_header(&ticket, config_num));
            async move {
                match kv_call(connection, Request::CompareAndSwap(message), timeout).await? {
                    Response::CompareAndSwap(reply) => {
                        Ok(CasOutcome { succeeded: reply.succeeded, previous: reply.found.then_some(reply.current) })
                    }
                    other => Err(mismatched("compare-and-swap", &other)),
                }
            }
        })
        .await
    }

    fn request_timeout(&self) -> Duration {
        self.shared.options.request_timeout
    }

    fn admin_timeout(&self) -> Duration {
        self.shared.options.admin_timeout
    }

    /// A KV request or shard-map query: `request_timeout` in all, `attempt_timeout` per node.
    fn kv_limits(&self) -> Limits {
        Limits { total: self.request_timeout(), per_attempt: self.shared.options.attempt_timeout }
    }

    fn write_header(&self, ticket: &WriteTicket, config_num: u64) -> RequestHeader {
        RequestHeader {
            client_id: self.session.client_id(),
            seq: ticket.seq(),
            first_unacked_seq: self.session.first_unacked_seq(),
            config_num,
        }
    }

    /// The connection to `endpoint`, made on first use (needs a tokio runtime: it starts the
    /// batching tasks).
    fn connection(&self, endpoint: &str) -> Result<Connection> {
        let mut connections = lock(&self.shared.connections);
        if let Some(connection) = connections.get(endpoint) {
            return Ok(connection.clone());
        }
        let endpoint_config = Endpoint::from_shared(endpoint_uri(endpoint))
            .map_err(|e| Error::InvalidArgument(format!("bad endpoint {endpoint:?}: {e}")))?
            .connect_timeout(self.shared.options.connect_timeout)
            .tcp_nodelay(true);
        let options = &self.shared.options;
        let channel = match (&options.tls, &options.tls_server_name) {
            (Some(tls), Some(name)) => shardkv_tls::lazy_channel_named(endpoint_config, tls, name),
            (tls, _) => shardkv_tls::lazy_channel(endpoint_config, tls.as_ref()),
        };
        let connection = Connection { batches: Arc::new(Batches::start(&channel)), channel };
        connections.insert(endpoint.to_string(), connection.clone());
        Ok(connection)
    }
}

fn config_of(reply: ConfigResponse) -> Result<ShardConfig> {
    reply.config.ok_or_else(|| Error::Unavailable("the meta group answered without a shard map".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_can_be_shared_across_tasks() {
        fn shareable<T: Clone + Send + Sync + 'static>() {}
        shareable::<Client>();
    }

    #[test]
    fn connect_rejects_an_empty_endpoint_list() {
        assert!(matches!(Client::connect(Vec::new()), Err(Error::InvalidArgument(_))));
    }
}
