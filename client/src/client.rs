//! The shardkv client: leader tracking, deadline-bounded retries, and the KV and admin API.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use shardkv_proto::v1::admin_client::AdminClient;
use shardkv_proto::v1::kv_client::KvClient;
use shardkv_proto::v1::{
    AddLearnerRequest, ChangeMembershipRequest, CompareAndSwapRequest, DeleteRequest, GetRequest, InitializeRequest,
    Member, PutRequest, RequestHeader, ScanRequest, StatusRequest, TransferLeaderRequest, TriggerSnapshotRequest,
};
pub use shardkv_proto::v1::{ReadConsistency, StatusResponse, TriggerSnapshotResponse};
use tonic::transport::{Channel, Endpoint};

use crate::endpoints::endpoint_uri;
use crate::error::{Error, Result};
use crate::retry::{Backoff, Deadline, NextStep, next_step};
use crate::session::{Session, WriteTicket};

/// Tunables of a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Deadline of one KV request, all retries included.
    pub request_timeout: Duration,
    /// Deadline of one admin request; membership changes can wait for a learner to catch up.
    pub admin_timeout: Duration,
    /// Time allowed to open a connection to one endpoint.
    pub connect_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(5),
            admin_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(1),
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

/// A client of one shardkv cluster. Clones share connections and the write session; use
/// [`Client::new_session`] for an independent session over the same connections.
#[derive(Clone)]
pub struct Client {
    routing: Arc<Routing>,
    session: Arc<Session>,
}

/// Connections and leader knowledge shared by every session of a client.
struct Routing {
    endpoints: Vec<String>,
    options: ClientOptions,
    /// One lazily connected HTTP/2 channel per address, multiplexing all requests to it.
    channels: Mutex<HashMap<String, Channel>>,
    /// Where the next request that needs the leader goes: the last known leader, or the
    /// endpoint to try next.
    target: Mutex<String>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a single assignment, so a poisoned lock still holds valid data.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Routing {
    fn channel(&self, endpoint: &str) -> Result<Channel> {
        let mut channels = lock(&self.channels);
        if let Some(channel) = channels.get(endpoint) {
            return Ok(channel.clone());
        }
        let channel = Endpoint::from_shared(endpoint_uri(endpoint))
            .map_err(|e| Error::InvalidArgument(format!("bad endpoint {endpoint:?}: {e}")))?
            .connect_timeout(self.options.connect_timeout)
            .tcp_nodelay(true)
            .connect_lazy();
        channels.insert(endpoint.to_string(), channel.clone());
        Ok(channel)
    }

    fn target(&self) -> String {
        lock(&self.target).clone()
    }

    fn redirect(&self, leader: String) {
        *lock(&self.target) = leader;
    }

    /// Moves to the endpoint after `failed`, unless a concurrent request already moved on.
    fn rotate_from(&self, failed: &str) {
        let mut target = lock(&self.target);
        if *target != failed {
            return;
        }
        // A leader address outside the configured list restarts the rotation at its start.
        let next = self.endpoints.iter().position(|e| e == failed).map_or(0, |i| (i + 1) % self.endpoints.len());
        *target = self.endpoints[next].clone();
    }
}

fn request<M>(message: M, timeout: Duration) -> tonic::Request<M> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

/// Reads carry no session (client_id 0): they change nothing, so need no deduplication.
fn read_header() -> Option<RequestHeader> {
    Some(RequestHeader::default())
}

fn give_up(last: tonic::Status, timeout: Duration) -> Error {
    match Error::from_status(last) {
        Error::Unavailable(msg) => {
            Error::Unavailable(format!("no leader answered within {timeout:?}; last answer: {msg}"))
        }
        Error::Transport(msg) => {
            Error::Transport(format!("no endpoint reachable within {timeout:?}; last error: {msg}"))
        }
        other => other,
    }
}

impl Client {
    /// A client of the cluster reachable at `endpoints` ("host:port"), with default options.
    /// Connections open on first use.
    pub fn connect(endpoints: Vec<String>) -> Result<Client> {
        Self::with_options(endpoints, ClientOptions::default())
    }

    pub fn with_options(endpoints: Vec<String>, options: ClientOptions) -> Result<Client> {
        let Some(first) = endpoints.first().cloned() else {
            return Err(Error::InvalidArgument("no endpoints given".into()));
        };
        for endpoint in &endpoints {
            Endpoint::from_shared(endpoint_uri(endpoint))
                .map_err(|e| Error::InvalidArgument(format!("bad endpoint {endpoint:?}: {e}")))?;
        }
        Ok(Client {
            routing: Arc::new(Routing {
                endpoints,
                options,
                channels: Mutex::new(HashMap::new()),
                target: Mutex::new(first),
            }),
            session: Arc::new(Session::random()),
        })
    }

    /// A client over the same connections with a fresh write session.
    pub fn new_session(&self) -> Client {
        Client { routing: Arc::clone(&self.routing), session: Arc::new(Session::random()) }
    }

    pub fn endpoints(&self) -> &[String] {
        &self.routing.endpoints
    }

    pub fn options(&self) -> &ClientOptions {
        &self.routing.options
    }

    pub fn client_id(&self) -> u64 {
        self.session.client_id()
    }

    /// Writes `value` under `key`; returns the log index the write was applied at.
    pub async fn put(&self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Result<u64> {
        let ticket = self.session.begin_write();
        let base = PutRequest { header: None, key: key.into(), value: value.into() };
        self.call_leader(self.request_timeout(), |channel, timeout| {
            let mut message = base.clone();
            message.header = Some(self.write_header(&ticket));
            async move {
                let reply = KvClient::new(channel).put(request(message, timeout)).await?;
                Ok(reply.into_inner().index)
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
        let message = GetRequest { header: read_header(), key: key.into(), consistency: consistency.into() };
        self.call_leader(self.request_timeout(), |channel, timeout| {
            let message = message.clone();
            async move {
                let reply = KvClient::new(channel).get(request(message, timeout)).await?.into_inner();
                Ok(reply.found.then_some(reply.value))
            }
        })
        .await
    }

    /// Deletes `key`; returns whether it existed.
    pub async fn delete(&self, key: impl Into<Vec<u8>>) -> Result<bool> {
        let ticket = self.session.begin_write();
        let base = DeleteRequest { header: None, key: key.into() };
        self.call_leader(self.request_timeout(), |channel, timeout| {
            let mut message = base.clone();
            message.header = Some(self.write_header(&ticket));
            async move {
                let reply = KvClient::new(channel).delete(request(message, timeout)).await?;
                Ok(reply.into_inner().existed)
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
        self.call_leader(self.request_timeout(), |channel, timeout| {
            let mut message = base.clone();
            message.header = Some(self.write_header(&ticket));
            async move {
                let reply = KvClient::new(channel).compare_and_swap(request(message, timeout)).await?.into_inner();
                Ok(CasOutcome { succeeded: reply.succeeded, previous: reply.found.then_some(reply.current) })
            }
        })
        .await
    }

    /// Linearizable scan in key order, following continuation tokens until `limit` items or
    /// the end of the range. Each page has its own request deadline.
    pub async fn scan(&self, options: ScanOptions) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut items = Vec::new();
        let mut continuation = Vec::new();
        loop {
            let wanted = options.limit.map(|limit| limit.saturating_sub(items.len()));
            if wanted == Some(0) {
                break;
            }
            let message = ScanRequest {
                header: read_header(),
                start: options.start.clone(),
                end: options.end.clone(),
                prefix: options.prefix.clone(),
                limit: wanted.map_or(0, |w| u32::try_from(w).unwrap_or(u32::MAX)),
                continuation: std::mem::take(&mut continuation),
                consistency: ReadConsistency::Linearizable.into(),
                shards: Vec::new(),
            };
            let page = self
                .call_leader(self.request_timeout(), |channel, timeout| {
                    let message = message.clone();
                    async move {
                        let reply = KvClient::new(channel).scan(request(message, timeout)).await?;
                        Ok(reply.into_inner())
                    }
                })
                .await?;
            items.extend(page.items.into_iter().map(|kv| (kv.key, kv.value)));
            if page.continuation.is_empty() {
                break;
            }
            continuation = page.continuation;
        }
        if let Some(limit) = options.limit {
            items.truncate(limit);
        }
        Ok(items)
    }

    /// Status of the node at `endpoint` (one attempt, no redirection).
    pub async fn status(&self, endpoint: &str) -> Result<StatusResponse> {
        self.call_endpoint(endpoint, self.request_timeout(), |channel, timeout| async move {
            let reply = AdminClient::new(channel).status(request(StatusRequest {}, timeout)).await?;
            Ok(reply.into_inner())
        })
        .await
    }

    /// Status of every configured endpoint, queried concurrently, in endpoint order.
    pub async fn status_all(&self) -> Vec<(String, Result<StatusResponse>)> {
        let queries = self
            .routing
            .endpoints
            .iter()
            .map(|endpoint| async move { (endpoint.clone(), self.status(endpoint).await) });
        futures::future::join_all(queries).await
    }

    /// Initialises a new group on the node at `endpoint` with `members` (node id, address)
    /// as its voters. Fails with FailedPrecondition when the group is already initialised.
    pub async fn initialize(&self, endpoint: &str, members: Vec<(u64, String)>) -> Result<()> {
        let message = InitializeRequest {
            members: members.into_iter().map(|(node_id, addr)| Member { node_id, addr }).collect(),
        };
        self.call_endpoint(endpoint, self.admin_timeout(), |channel, timeout| async move {
            AdminClient::new(channel).initialize(request(message, timeout)).await?;
            Ok(())
        })
        .await
    }

    /// Asks the leader to hand leadership to voter `to` (0: the most caught-up voter);
    /// returns the new leader's id.
    pub async fn transfer_leader(&self, to: u64) -> Result<u64> {
        self.call_leader(self.admin_timeout(), |channel, timeout| async move {
            let reply =
                AdminClient::new(channel).transfer_leader(request(TransferLeaderRequest { to }, timeout)).await?;
            Ok(reply.into_inner().new_leader)
        })
        .await
    }

    /// Makes the node at `endpoint` snapshot its replica and purge the covered log.
    pub async fn trigger_snapshot(&self, endpoint: &str) -> Result<TriggerSnapshotResponse> {
        self.call_endpoint(endpoint, self.admin_timeout(), |channel, timeout| async move {
            let reply = AdminClient::new(channel).trigger_snapshot(request(TriggerSnapshotRequest {}, timeout)).await?;
            Ok(reply.into_inner())
        })
        .await
    }

    /// Adds a learner; with `blocking`, waits until it has caught up. Returns the log index
    /// of the membership entry.
    pub async fn add_learner(&self, node_id: u64, addr: String, blocking: bool) -> Result<u64> {
        let message = AddLearnerRequest { member: Some(Member { node_id, addr }), blocking };
        self.call_leader(self.admin_timeout(), |channel, timeout| {
            let message = message.clone();
            async move {
                let reply = AdminClient::new(channel).add_learner(request(message, timeout)).await?;
                Ok(reply.into_inner().log_index)
            }
        })
        .await
    }

    /// Replaces the voter set; with `retain`, removed voters stay as learners. Returns the log
    /// index of the membership entry.
    pub async fn change_membership(&self, voters: Vec<u64>, retain: bool) -> Result<u64> {
        let message = ChangeMembershipRequest { voters, retain };
        self.call_leader(self.admin_timeout(), |channel, timeout| {
            let message = message.clone();
            async move {
                let reply = AdminClient::new(channel).change_membership(request(message, timeout)).await?;
                Ok(reply.into_inner().log_index)
            }
        })
        .await
    }

    fn request_timeout(&self) -> Duration {
        self.routing.options.request_timeout
    }

    fn admin_timeout(&self) -> Duration {
        self.routing.options.admin_timeout
    }

    fn write_header(&self, ticket: &WriteTicket) -> RequestHeader {
        RequestHeader {
            client_id: self.session.client_id(),
            seq: ticket.seq(),
            first_unacked_seq: self.session.first_unacked_seq(),
            config_num: 0,
        }
    }

    /// Runs `attempt` against the leader until it succeeds, fails for good, or `timeout`
    /// runs out. Each attempt gets the remaining time as its gRPC deadline.
    async fn call_leader<T, F, Fut>(&self, timeout: Duration, mut attempt: F) -> Result<T>
    where
        F: FnMut(Channel, Duration) -> Fut,
        Fut: Future<Output = std::result::Result<T, tonic::Status>>,
    {
        let deadline = Deadline::after(timeout);
        let mut backoff = Backoff::default();
        // A fresh leader hint is followed at once, but only once between two sleeps so that
        // stale hints pointing at each other cannot spin.
        let mut redirected_since_sleep = false;
        loop {
            let Some(remaining) = deadline.remaining() else {
                return Err(Error::DeadlineExceeded);
            };
            let target = self.routing.target();
            let channel = self.routing.channel(&target)?;
            let status = match tokio::time::timeout(remaining, attempt(channel, remaining)).await {
                Ok(Ok(reply)) => return Ok(reply),
                Ok(Err(status)) => status,
                Err(_elapsed) => return Err(Error::DeadlineExceeded),
            };
            match next_step(&status) {
                NextStep::Fail => return Err(Error::from_status(status)),
                NextStep::Redirect(leader) if leader != target && !redirected_since_sleep => {
                    self.routing.redirect(leader);
                    redirected_since_sleep = true;
                    continue;
                }
                NextStep::Redirect(leader) => self.routing.redirect(leader),
                NextStep::Rotate => self.routing.rotate_from(&target),
            }
            let delay = backoff.next_delay(rand::random::<f64>());
            match deadline.sleep_before_retry(Instant::now(), delay) {
                Some(pause) => {
                    tokio::time::sleep(pause).await;
                    redirected_since_sleep = false;
                }
                None => return Err(give_up(status, timeout)),
            }
        }
    }

    /// Runs `attempt` once against one specific node.
    async fn call_endpoint<T, F, Fut>(&self, endpoint: &str, timeout: Duration, attempt: F) -> Result<T>
    where
        F: FnOnce(Channel, Duration) -> Fut,
        Fut: Future<Output = std::result::Result<T, tonic::Status>>,
    {
        let channel = self.routing.channel(endpoint)?;
        match tokio::time::timeout(timeout, attempt(channel, timeout)).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(status)) => Err(Error::from_status(status)),
            Err(_elapsed) => Err(Error::DeadlineExceeded),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routing(endpoints: &[&str]) -> Routing {
        Routing {
            endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
            options: ClientOptions::default(),
            channels: Mutex::new(HashMap::new()),
            target: Mutex::new(endpoints[0].to_string()),
        }
    }

    #[test]
    fn rotation_walks_the_list_and_wraps() {
        let routing = routing(&["a:1", "b:2", "c:3"]);
        routing.rotate_from("a:1");
        assert_eq!(routing.target(), "b:2");
        routing.rotate_from("b:2");
        routing.rotate_from("c:3");
        assert_eq!(routing.target(), "a:1");
    }

    #[test]
    fn a_stale_failure_does_not_move_the_target() {
        let routing = routing(&["a:1", "b:2", "c:3"]);
        routing.redirect("c:3".into());
        routing.rotate_from("a:1");
        assert_eq!(routing.target(), "c:3");
    }

    #[test]
    fn a_failed_leader_outside_the_list_restarts_rotation() {
        let routing = routing(&["a:1", "b:2"]);
        routing.redirect("leader:9".into());
        routing.rotate_from("leader:9");
        assert_eq!(routing.target(), "a:1");
    }

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
