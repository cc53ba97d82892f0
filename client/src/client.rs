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

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use shardkv_proto::v1::admin_client::AdminClient;
use shardkv_proto::v1::kv_client::KvClient;
use shardkv_proto::v1::meta_client::MetaClient;
use shardkv_proto::v1::{
    AddLearnerRequest, ChangeMembershipRequest, CompareAndSwapRequest, ConfigResponse, DeleteRequest, GetRequest,
    GroupMembers, InitializeRequest, JoinRequest, LeaveRequest, Member, MoveRequest, PutRequest, QueryRequest,
    RequestHeader, ScanRequest, StatusRequest, TransferLeaderRequest, TriggerSnapshotRequest,
};
pub use shardkv_proto::v1::{ReadConsistency, ShardConfig, StatusResponse, TriggerSnapshotResponse};
use tonic::transport::{Channel, Endpoint};

use crate::cluster::{ClusterStatus, GroupStatus};
use crate::endpoints::endpoint_uri;
use crate::error::{Error, Result};
use crate::retry::{AttemptEffect, Backoff, Deadline, NextStep, attempt_effect, next_step};
use crate::session::{Session, WriteTicket};
use crate::shard_map::{Item, ScanMerge, ShardMap, Unroutable, successor};

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
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(5),
            admin_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(1),
            attempt_timeout: Duration::from_secs(2),
            topology: None,
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
    /// One lazily connected HTTP/2 channel per address, multiplexing all requests to it.
    channels: Mutex<HashMap<String, Channel>>,
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

/// A refresh asked for within this long after the previous one reuses its answer.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_millis(20);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a single update, so a poisoned lock still holds valid data.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Where the next request to one Raft group goes: the last known leader, or the member to
/// try next.
struct Leader {
    state: Mutex<LeaderState>,
}

struct LeaderState {
    endpoints: Vec<String>,
    target: String,
}

impl Leader {
    fn new(endpoints: Vec<String>) -> Self {
        let target = endpoints.first().cloned().unwrap_or_default();
        Self { state: Mutex::new(LeaderState { endpoints, target }) }
    }

    fn target(&self) -> String {
        lock(&self.state).target.clone()
    }

    fn redirect(&self, leader: String) {
        lock(&self.state).target = leader;
    }

    /// Moves to the endpoint after `failed`, unless a concurrent request already moved on.
    fn rotate_from(&self, failed: &str) {
        let mut state = lock(&self.state);
        if state.target != failed || state.endpoints.is_empty() {
            return;
        }
        // A leader address outside the member list restarts the rotation at its start.
        let next = state.endpoints.iter().position(|e| e == failed).map_or(0, |i| (i + 1) % state.endpoints.len());
        state.target = state.endpoints[next].clone();
    }

    /// Adopts a group's member list from a newer shard map. The current target stays unless
    /// it is no longer a member.
    fn set_endpoints(&self, endpoints: &[String]) {
        let mut state = lock(&self.state);
        if state.endpoints == endpoints {
            return;
        }
        state.endpoints = endpoints.to_vec();
        if !state.endpoints.contains(&state.target)
            && let Some(first) = state.endpoints.first()
        {
            state.target = first.clone();
        }
    }
}

/// What the failed attempts of one request may have done (see [`attempt_effect`]).
#[derive(Default)]
struct Attempts {
    /// Why an attempt may have been applied, once one may have been (the first reason).
    uncertain: Mutex<Option<String>>,
}

impl Attempts {
    fn failed(&self, target: &str, status: &tonic::Status) {
        if attempt_effect(status) == AttemptEffect::Unknown {
            self.mark(format!("an attempt at {target} ended with {:?}: {}", status.code(), status.message()));
        }
    }

    fn cut_off(&self, target: &str) {
        self.mark(format!("an attempt at {target} was still running when its time ran out"));
    }

    fn mark(&self, reason: String) {
        lock(&self.uncertain).get_or_insert(reason);
    }

    /// The error a write returns: `OutcomeUnknown` once any attempt may have been applied.
    fn settle(&self, error: Error) -> Error {
        match lock(&self.uncertain).take() {
            Some(reason) => Error::OutcomeUnknown(format!("{error}; {reason}")),
            None => error,
        }
    }
}

fn request<M>(message: M, timeout: Duration) -> tonic::Request<M> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

/// Reads carry no session (client_id 0): they change nothing, so need no deduplication.
fn read_header(config_num: u64) -> Option<RequestHeader> {
    Some(RequestHeader { config_num, ..RequestHeader::default() })
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

/// How long a call to a group may take in all, and how long one attempt at one node may take.
#[derive(Debug, Clone, Copy)]
struct Limits {
    total: Duration,
    per_attempt: Duration,
}

impl Limits {
    /// No bound per attempt but the call's own: for admin calls that may legitimately wait
    /// (a membership change waits for a learner to catch up).
    fn whole(total: Duration) -> Self {
        Self { total, per_attempt: total }
    }
}

/// How one attempt against a group ended, when it did not succeed.
enum GroupError {
    /// The group does not serve the shard in its config: route again with a fresh map.
    WrongGroup(tonic::Status),
    Failed(Error),
}

impl From<Error> for GroupError {
    fn from(error: Error) -> Self {
        GroupError::Failed(error)
    }
}

/// Why a routed request is still being retried (turned into the error if time runs out).
enum RouteFailure {
    Unroutable(Unroutable, u64),
    WrongGroup(tonic::Status),
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
                channels: Mutex::new(HashMap::new()),
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

    /// What the endpoints are, asking them on first use.
    pub async fn topology(&self) -> Result<Topology> {
        self.topology_by(Deadline::after(self.request_timeout())).await
    }

    /// Writes `value` under `key`; returns the log index the write was applied at (in the
    /// owning group's log).
    pub async fn put(&self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Result<u64> {
        let ticket = self.session.begin_write();
        let base = PutRequest { header: None, key: key.into(), value: value.into() };
        self.write_routed(&base.key, |channel, timeout, config_num| {
            let mut message = base.clone();
            message.header = Some(self.write_header(&ticket, config_num));
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
        let base = GetRequest { header: None, key: key.into(), consistency: consistency.into() };
        self.call_routed(&base.key, self.request_timeout(), &Attempts::default(), |channel, timeout, config_num| {
            let mut message = base.clone();
            message.header = read_header(config_num);
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
        self.write_routed(&base.key, |channel, timeout, config_num| {
            let mut message = base.clone();
            message.header = Some(self.write_header(&ticket, config_num));
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
        self.write_routed(&base.key, |channel, timeout, config_num| {
            let mut message = base.clone();
            message.header = Some(self.write_header(&ticket, config_num));
            async move {
                let reply = KvClient::new(channel).compare_and_swap(request(message, timeout)).await?.into_inner();
                Ok(CasOutcome { succeeded: reply.succeeded, previous: reply.found.then_some(reply.current) })
            }
        })
        .await
    }

    /// Linearizable scan in key order, following continuation tokens until `limit` items or
    /// the end of the range. Each page has its own request deadline.
    ///
    /// In a sharded cluster every group owning shards is asked for the shards it owns, and
    /// the groups' pages are merged in key order. Each page is linearizable within its
    /// group, but the whole scan is not a point-in-time snapshot across shards: a write
    /// acknowledged while the scan runs may or may not be in it, depending on its key.
    pub async fn scan(&self, options: ScanOptions) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let topology = self.topology_by(Deadline::after(self.request_timeout())).await?;
        let mut merge = ScanMerge::new(0, options.limit);
        // Re-planning after the shard map changed is bounded by one request timeout without
        // progress (pages themselves have their own deadlines).
        let mut replan_deadline = Deadline::after(self.request_timeout());
        let mut backoff = Backoff::default();
        loop {
            let (sources, config_num) = match topology {
                Topology::Standalone => (vec![(Arc::clone(&self.shared.seeds), Vec::new())], 0),
                Topology::Sharded => {
                    let map = self.shard_map(replan_deadline).await?;
                    match map.scan_plan() {
                        Ok(plan) => {
                            let sources = plan
                                .into_iter()
                                .map(|(group, shards)| (self.group_leader(&map, group), shards))
                                .collect::<Vec<_>>();
                            (sources, map.num())
                        }
                        Err(unroutable) => {
                            let error = || {
                                Error::Unavailable(format!("cannot scan with shard map {}: {unroutable}", map.num()))
                            };
                            pause(&mut backoff, replan_deadline, error).await?;
                            self.refresh_after(map.num(), replan_deadline).await?;
                            continue;
                        }
                    }
                }
            };
            merge.restart(sources.len());
            // Everything up to the last key emitted is done; a re-planned scan resumes after it.
            let start = match merge.last_key() {
                Some(last) => successor(last).max(options.start.clone()),
                None => options.start.clone(),
            };
            let emitted = merge.emitted();
            let outcome = self.run_scan(&mut merge, &sources, &options, &start, config_num).await;
            if merge.emitted() > emitted {
                replan_deadline = Deadline::after(self.request_timeout());
                backoff = Backoff::default();
            }
            match outcome {
                Ok(()) => return Ok(merge.into_items()),
                Err(GroupError::Failed(error)) => return Err(error),
                Err(GroupError::WrongGroup(status)) if topology == Topology::Standalone => {
                    return Err(standalone_wrong_group(status));
                }
                Err(GroupError::WrongGroup(status)) => {
                    if self.refresh_after(config_num, replan_deadline).await?.num() <= config_num {
                        // The owners have not caught up with this map yet: give them time.
                        let error = || unrouted(RouteFailure::WrongGroup(status), self.request_timeout());
                        pause(&mut backoff, replan_deadline, error).await?;
                    }
                }
            }
        }
    }

    /// Runs the merge over `sources` until it completes or a source fails.
    async fn run_scan(
        &self,
        merge: &mut ScanMerge,
        sources: &[(Arc<Leader>, Vec<u32>)],
        options: &ScanOptions,
        start: &[u8],
        config_num: u64,
    ) -> std::result::Result<(), GroupError> {
        while !merge.drain() {
            let wanted = merge.wanted();
            let pages = merge.pending().into_iter().map(|i| {
                let (leader, shards) = &sources[i];
                let message = ScanRequest {
                    header: read_header(config_num),
                    start: start.to_vec(),
                    end: options.end.clone(),
                    prefix: options.prefix.clone(),
                    limit: wanted.map_or(0, |w| u32::try_from(w).unwrap_or(u32::MAX)),
                    continuation: merge.continuation(i).to_vec(),
                    consistency: ReadConsistency::Linearizable.into(),
                    shards: shards.clone(),
                };
                async move {
                    let deadline = Deadline::after(self.request_timeout());
                    let page =
                            self.call_group(
                                leader,
                                config_num,
                                deadline,
                                self.kv_limits(),
                                &Attempts::default(),
                                |channel, timeout| {
                                    let message = message.clone();
                                    async move {
                                        Ok(KvClient::new(channel).scan(request(message, timeout)).await?.into_inner())
                                    }
                                },
                            )
                            .await?;
                    Ok::<_, GroupError>((i, page))
                }
            });
            for page in futures::future::join_all(pages).await {
                let (i, page) = page?;
                let items: Vec<Item> = page.items.into_iter().map(|kv| (kv.key, kv.value)).collect();
                merge.supply(i, items, page.continuation);
            }
        }
        Ok(())
    }

    /// The shard map the client routes with, fetched from the meta group on first use.
    /// Fails with FailedPrecondition for a standalone group.
    pub async fn config(&self) -> Result<ShardConfig> {
        let deadline = Deadline::after(self.request_timeout());
        self.require_sharded(deadline).await?;
        Ok(self.shard_map(deadline).await?.config().clone())
    }

    /// Fetches the latest shard map from the meta group and routes with it from now on.
    pub async fn refresh_config(&self) -> Result<ShardConfig> {
        let deadline = Deadline::after(self.request_timeout());
        self.require_sharded(deadline).await?;
        let config = self.query_meta(0, deadline).await?;
        Ok(self.install(config).config().clone())
    }

    /// Shard map number `num` from the meta group (0: the latest).
    pub async fn query_config(&self, num: u64) -> Result<ShardConfig> {
        let deadline = Deadline::after(self.request_timeout());
        self.require_sharded(deadline).await?;
        let config = self.query_meta(num, deadline).await?;
        if num == 0 {
            self.install(config.clone());
        }
        Ok(config)
    }

    /// Adds data group `group_id` with its replicas (node id, address) to the shard map, or
    /// updates the members of a group already in it. Returns the resulting shard map.
    pub async fn join(&self, group_id: u64, members: Vec<(u64, String)>) -> Result<ShardConfig> {
        let group = GroupMembers {
            group_id,
            members: members.into_iter().map(|(node_id, addr)| Member { node_id, addr }).collect(),
        };
        let message = JoinRequest { group: Some(group) };
        self.meta_change(|channel, timeout| {
            let message = message.clone();
            async move { MetaClient::new(channel).join(request(message, timeout)).await }
        })
        .await
    }

    /// Removes data group `group_id` from the shard map; its shards move to the other groups.
    pub async fn leave(&self, group_id: u64) -> Result<ShardConfig> {
        self.meta_change(|channel, timeout| async move {
            MetaClient::new(channel).leave(request(LeaveRequest { group_id }, timeout)).await
        })
        .await
    }

    /// Pins `shard` to group `group_id`, moving it there.
    pub async fn move_shard(&self, shard: u32, group_id: u64) -> Result<ShardConfig> {
        self.meta_change(|channel, timeout| async move {
            MetaClient::new(channel).r#move(request(MoveRequest { shard, group_id }, timeout)).await
        })
        .await
    }

    async fn meta_change<F, Fut>(&self, mut attempt: F) -> Result<ShardConfig>
    where
        F: FnMut(Channel, Duration) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<ConfigResponse>, tonic::Status>>,
    {
        let deadline = Deadline::after(self.admin_timeout());
        self.require_sharded(deadline).await?;
        let reply = self
            .call_group(
                &self.shared.seeds,
                0,
                deadline,
                Limits::whole(self.admin_timeout()),
                &Attempts::default(),
                |channel, timeout| {
                    let call = attempt(channel, timeout);
                    async move { Ok(call.await?.into_inner()) }
                },
            )
            .await
            .map_err(|e| self.meta_error(e))?;
        let config = config_of(reply)?;
        self.install(config.clone());
        Ok(config)
    }

    /// Status of a sharded cluster: the latest shard map and every node of the meta group
    /// (the configured endpoints) and of each data group, queried concurrently.
    pub async fn cluster_status(&self) -> Result<ClusterStatus> {
        let config = self.query_config(0).await?;
        // Groups that left in the latest change may still hold shards for their new owners.
        let previous = match config.num {
            0 | 1 => None,
            num => Some(self.query_config(num - 1).await?),
        };
        let mut members: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for group in previous.iter().chain([&config]).flat_map(|c| &c.groups) {
            members.insert(group.group_id, group.members.iter().map(|m| m.addr.clone()).collect());
        }
        let meta = async { GroupStatus { group_id: 0, nodes: self.status_all().await } };
        let groups = futures::future::join_all(members.iter().map(|(&group_id, endpoints)| async move {
            GroupStatus { group_id, nodes: self.status_of(endpoints).await }
        }));
        let (meta, groups) = futures::join!(meta, groups);
        Ok(ClusterStatus { config, meta, groups })
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
        self.status_of(&self.shared.endpoints).await
    }

    /// Status of each of `endpoints`, queried concurrently, in order.
    pub async fn status_of(&self, endpoints: &[String]) -> Vec<(String, Result<StatusResponse>)> {
        let queries = endpoints.iter().map(|endpoint| async move { (endpoint.clone(), self.status(endpoint).await) });
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

    /// Asks the leader of the configured endpoints' group to hand leadership to voter `to`
    /// (0: the most caught-up voter); returns the new leader's id.
    pub async fn transfer_leader(&self, to: u64) -> Result<u64> {
        self.call_seeds(self.admin_timeout(), |channel, timeout| async move {
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

    /// Adds a learner to the configured endpoints' group; with `blocking`, waits until it has
    /// caught up. Returns the log index of the membership entry.
    pub async fn add_learner(&self, node_id: u64, addr: String, blocking: bool) -> Result<u64> {
        let message = AddLearnerRequest { member: Some(Member { node_id, addr }), blocking };
        self.call_seeds(self.admin_timeout(), |channel, timeout| {
            let message = message.clone();
            async move {
                let reply = AdminClient::new(channel).add_learner(request(message, timeout)).await?;
                Ok(reply.into_inner().log_index)
            }
        })
        .await
    }

    /// Replaces the voter set of the configured endpoints' group; with `retain`, removed
    /// voters stay as learners. Returns the log index of the membership entry.
    pub async fn change_membership(&self, voters: Vec<u64>, retain: bool) -> Result<u64> {
        let message = ChangeMembershipRequest { voters, retain };
        self.call_seeds(self.admin_timeout(), |channel, timeout| {
            let message = message.clone();
            async move {
                let reply = AdminClient::new(channel).change_membership(request(message, timeout)).await?;
                Ok(reply.into_inner().log_index)
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

    fn channel(&self, endpoint: &str) -> Result<Channel> {
        let mut channels = lock(&self.shared.channels);
        if let Some(channel) = channels.get(endpoint) {
            return Ok(channel.clone());
        }
        let channel = Endpoint::from_shared(endpoint_uri(endpoint))
            .map_err(|e| Error::InvalidArgument(format!("bad endpoint {endpoint:?}: {e}")))?
            .connect_timeout(self.shared.options.connect_timeout)
            .tcp_nodelay(true)
            .connect_lazy();
        channels.insert(endpoint.to_string(), channel.clone());
        Ok(channel)
    }

    /// The topology, detected by the first caller (within its deadline) and then fixed.
    async fn topology_by(&self, deadline: Deadline) -> Result<Topology> {
        if let Some(topology) = self.shared.topology.get() {
            return Ok(*topology);
        }
        // A concurrent first caller may be detecting it; waiting counts against our deadline.
        let remaining = deadline.remaining().ok_or(Error::DeadlineExceeded)?;
        let detection = self.shared.topology.get_or_try_init(|| self.detect_topology(deadline));
        tokio::time::timeout(remaining, detection).await.map_err(|_elapsed| Error::DeadlineExceeded)?.copied()
    }

    /// Asks the configured endpoints for the latest shard map. A meta group answers with it;
    /// a data node answers that it is not a meta replica (FAILED_PRECONDITION), and a node
    /// without the Meta service (UNIMPLEMENTED) can only be a standalone group.
    async fn detect_topology(&self, deadline: Deadline) -> Result<Topology> {
        let answer = self
            .call_meta(deadline, |channel, timeout| async move {
                match MetaClient::new(channel).query(request(QueryRequest { num: 0 }, timeout)).await {
                    Ok(reply) => Ok(Some(reply.into_inner())),
                    Err(status)
                        if matches!(status.code(), tonic::Code::FailedPrecondition | tonic::Code::Unimplemented) =>
                    {
                        Ok(None)
                    }
                    Err(status) => Err(status),
                }
            })
            .await?;
        match answer {
            Some(reply) => {
                self.install(config_of(reply)?);
                Ok(Topology::Sharded)
            }
            None => Ok(Topology::Standalone),
        }
    }

    async fn require_sharded(&self, deadline: Deadline) -> Result<()> {
        match self.topology_by(deadline).await? {
            Topology::Sharded => Ok(()),
            Topology::Standalone => Err(Error::FailedPrecondition(format!(
                "{} is a standalone group, not a meta group: it has no shard map",
                self.shared.endpoints.join(",")
            ))),
        }
    }

    fn meta_error(&self, error: GroupError) -> Error {
        match error {
            GroupError::Failed(error) => error,
            GroupError::WrongGroup(status) => Error::from_status(status),
        }
    }

    /// Shard map `num` (0: the latest) from the meta group's leader.
    async fn query_meta(&self, num: u64, deadline: Deadline) -> Result<ShardConfig> {
        let reply = self
            .call_meta(deadline, |channel, timeout| async move {
                Ok(MetaClient::new(channel).query(request(QueryRequest { num }, timeout)).await?.into_inner())
            })
            .await?;
        config_of(reply)
    }

    /// A read of the configured endpoints' group (the meta group, or a standalone group during
    /// detection), with the KV limits.
    async fn call_meta<T, F, Fut>(&self, deadline: Deadline, attempt: F) -> Result<T>
    where
        F: FnMut(Channel, Duration) -> Fut,
        Fut: Future<Output = std::result::Result<T, tonic::Status>>,
    {
        self.call_group(&self.shared.seeds, 0, deadline, self.kv_limits(), &Attempts::default(), attempt)
            .await
            .map_err(|e| self.meta_error(e))
    }

    /// Records `config` if it is newer than the cached map (maps never go back) and updates
    /// each group's member list; returns the map now cached.
    fn install(&self, config: ShardConfig) -> Arc<ShardMap> {
        let map = {
            let mut cached = lock(&self.shared.shard_map);
            match cached.as_mut() {
                Some((current, fetched)) if current.num() > config.num => {
                    *fetched = Instant::now();
                    Arc::clone(current)
                }
                _ => {
                    let map = Arc::new(ShardMap::new(config));
                    *cached = Some((Arc::clone(&map), Instant::now()));
                    map
                }
            }
        };
        let groups = lock(&self.shared.groups);
        for (group, members) in map.groups() {
            if let Some(leader) = groups.get(&group) {
                leader.set_endpoints(members);
            }
        }
        map
    }

    /// The cached shard map, fetched from the meta group if there is none yet.
    async fn shard_map(&self, deadline: Deadline) -> Result<Arc<ShardMap>> {
        if let Some((map, _)) = lock(&self.shared.shard_map).as_ref() {
            return Ok(Arc::clone(map));
        }
        self.refresh_after(0, deadline).await
    }

    /// A shard map newer than `stale` if the meta group has one: concurrent callers share one
    /// query, and a map fetched in the last few milliseconds is reused.
    async fn refresh_after(&self, stale: u64, deadline: Deadline) -> Result<Arc<ShardMap>> {
        // Waiting for another caller's refresh counts against this caller's deadline too.
        let remaining = deadline.remaining().ok_or(Error::DeadlineExceeded)?;
        let _single_flight = tokio::time::timeout(remaining, self.shared.refreshing.lock())
            .await
            .map_err(|_elapsed| Error::DeadlineExceeded)?;
        if let Some((map, fetched)) = lock(&self.shared.shard_map).as_ref()
            && (map.num() > stale || fetched.elapsed() < MIN_REFRESH_INTERVAL)
        {
            return Ok(Arc::clone(map));
        }
        let config = self.query_meta(0, deadline).await?;
        Ok(self.install(config))
    }

    /// Leader tracking of `group`, created with its members from `map` on first use.
    fn group_leader(&self, map: &ShardMap, group: u64) -> Arc<Leader> {
        let mut groups = lock(&self.shared.groups);
        Arc::clone(groups.entry(group).or_insert_with(|| Arc::new(Leader::new(map.members(group).to_vec()))))
    }

    /// `call_routed` for a write: if it fails after an attempt that may have been applied, the
    /// error is `OutcomeUnknown`.
    async fn write_routed<T, F, Fut>(&self, key: &[u8], attempt: F) -> Result<T>
    where
        F: FnMut(Channel, Duration, u64) -> Fut,
        Fut: Future<Output = std::result::Result<T, tonic::Status>>,
    {
        let attempts = Attempts::default();
        self.call_routed(key, self.request_timeout(), &attempts, attempt).await.map_err(|error| attempts.settle(error))
    }

    /// Runs `attempt` at the leader of the group serving `key`'s shard until it succeeds,
    /// fails for good, or `timeout` runs out. The attempt gets the remaining time as its gRPC
    /// deadline and the number of the shard map it was routed with. After a WrongGroup answer
    /// the map is refreshed and the attempt repeated at the (new) owner. Failed attempts are
    /// recorded in `attempts`.
    async fn call_routed<T, F, Fut>(
        &self,
        key: &[u8],
        timeout: Duration,
        attempts: &Attempts,
        mut attempt: F,
    ) -> Result<T>
    where
        F: FnMut(Channel, Duration, u64) -> Fut,
        Fut: Future<Output = std::result::Result<T, tonic::Status>>,
    {
        let deadline = Deadline::after(timeout);
        let limits = Limits { total: timeout, ..self.kv_limits() };
        let topology = self.topology_by(deadline).await?;
        if topology == Topology::Standalone {
            return match self
                .call_group(&self.shared.seeds, 0, deadline, limits, attempts, |ch, t| attempt(ch, t, 0))
                .await
            {
                Ok(reply) => Ok(reply),
                Err(GroupError::Failed(error)) => Err(error),
                Err(GroupError::WrongGroup(status)) => Err(standalone_wrong_group(status)),
            };
        }
        let mut backoff = Backoff::default();
        // A newer map is used at once, but only once between two sleeps, so that groups
        // disagreeing with each other cannot make the client spin.
        let mut rerouted_since_sleep = false;
        let mut map = self.shard_map(deadline).await?;
        loop {
            let failure = match map.route(key) {
                Err(unroutable) => RouteFailure::Unroutable(unroutable, map.num()),
                Ok((_shard, group)) => {
                    let leader = self.group_leader(&map, group);
                    let num = map.num();
                    match self.call_group(&leader, num, deadline, limits, attempts, |ch, t| attempt(ch, t, num)).await {
                        Ok(reply) => return Ok(reply),
                        Err(GroupError::Failed(error)) => return Err(error),
                        Err(GroupError::WrongGroup(status)) => RouteFailure::WrongGroup(status),
                    }
                }
            };
            let used = map.num();
            map = self.refresh_after(used, deadline).await?;
            if map.num() > used && !rerouted_since_sleep {
                rerouted_since_sleep = true;
                continue;
            }
            pause(&mut backoff, deadline, || unrouted(failure, timeout)).await?;
            rerouted_since_sleep = false;
            map = self.refresh_after(map.num(), deadline).await?;
        }
    }

    /// Runs `attempt` against the leader of the configured endpoints' group.
    async fn call_seeds<T, F, Fut>(&self, timeout: Duration, attempt: F) -> Result<T>
    where
        F: FnMut(Channel, Duration) -> Fut,
        Fut: Future<Output = std::result::Result<T, tonic::Status>>,
    {
        self.call_group(
            &self.shared.seeds,
            0,
            Deadline::after(timeout),
            Limits::whole(timeout),
            &Attempts::default(),
            attempt,
        )
        .await
        .map_err(|e| self.meta_error(e))
    }

    /// Runs `attempt` against the leader of one group until it succeeds, fails for good, is
    /// refused with WrongGroup, or `deadline` passes (`limits.total` is its length, for
    /// messages). `routed_with` is the number of the shard map that chose this group (0 if
    /// none): a replica refusing from an older config is behind, and another one is tried. Each attempt gets at most `limits.per_attempt` of the remaining time as its
    /// gRPC deadline; a node that does not answer within it is passed over for the next replica.
    /// Failed attempts are recorded in `attempts`.
    async fn call_group<T, F, Fut>(
        &self,
        leader: &Leader,
        routed_with: u64,
        deadline: Deadline,
        limits: Limits,
        attempts: &Attempts,
        mut attempt: F,
    ) -> std::result::Result<T, GroupError>
    where
        F: FnMut(Channel, Duration) -> Fut,
        Fut: Future<Output = std::result::Result<T, tonic::Status>>,
    {
        let mut backoff = Backoff::default();
        // A fresh leader hint is followed at once, but only once between two sleeps so that
        // stale hints pointing at each other cannot spin.
        let mut redirected_since_sleep = false;
        loop {
            let Some(remaining) = deadline.remaining() else {
                return Err(Error::DeadlineExceeded.into());
            };
            let target = leader.target();
            let channel = self.channel(&target)?;
            let limit = remaining.min(limits.per_attempt);
            let mut status = match tokio::time::timeout(limit, attempt(channel, limit)).await {
                Ok(Ok(reply)) => return Ok(reply),
                Ok(Err(status)) => status,
                Err(_elapsed) => {
                    // Cut off, it may still be applied where it was sent.
                    attempts.cut_off(&target);
                    tonic::Status::deadline_exceeded(format!("{target} did not answer within {limit:?}"))
                }
            };
            attempts.failed(&target, &status);
            let step = match status.code() {
                // Only this attempt ran out of time (its own bound, or the node gave up on it):
                // another replica may answer before the request's deadline.
                tonic::Code::DeadlineExceeded if deadline.remaining().is_some() => NextStep::Rotate,
                tonic::Code::DeadlineExceeded => return Err(Error::DeadlineExceeded.into()),
                _ => next_step(&status, routed_with),
            };
            match step {
                NextStep::Fail => return Err(Error::from_status(status).into()),
                NextStep::WrongGroup(_) => return Err(GroupError::WrongGroup(status)),
                NextStep::Redirect(addr) if addr != target && !redirected_since_sleep => {
                    leader.redirect(addr);
                    redirected_since_sleep = true;
                    continue;
                }
                NextStep::Redirect(addr) => leader.redirect(addr),
                NextStep::Rotate => leader.rotate_from(&target),
                NextStep::Behind(config_num) => {
                    leader.rotate_from(&target);
                    status = tonic::Status::unavailable(format!(
                        "{target} is behind: it answered from config {config_num}, the shard map is \
                         {routed_with}: {}",
                        status.message()
                    ));
                }
            }
            let delay = backoff.next_delay(rand::random::<f64>());
            match deadline.sleep_before_retry(Instant::now(), delay) {
                Some(pause) => {
                    tokio::time::sleep(pause).await;
                    redirected_since_sleep = false;
                }
                None => return Err(give_up(status, limits.total).into()),
            }
        }
    }

    /// Runs `attempt` once against one specific node.
    async fn call_endpoint<T, F, Fut>(&self, endpoint: &str, timeout: Duration, attempt: F) -> Result<T>
    where
        F: FnOnce(Channel, Duration) -> Fut,
        Fut: Future<Output = std::result::Result<T, tonic::Status>>,
    {
        let channel = self.channel(endpoint)?;
        match tokio::time::timeout(timeout, attempt(channel, timeout)).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(status)) => Err(Error::from_status(status)),
            Err(_elapsed) => Err(Error::DeadlineExceeded),
        }
    }
}

/// Sleeps one backoff step, or fails with `error()` when `deadline` leaves no time for
/// another attempt after it.
async fn pause(backoff: &mut Backoff, deadline: Deadline, error: impl FnOnce() -> Error) -> Result<()> {
    let delay = backoff.next_delay(rand::random::<f64>());
    match deadline.sleep_before_retry(Instant::now(), delay) {
        Some(pause) => {
            tokio::time::sleep(pause).await;
            Ok(())
        }
        None => Err(error()),
    }
}

fn config_of(reply: ConfigResponse) -> Result<ShardConfig> {
    reply.config.ok_or_else(|| Error::Unavailable("the meta group answered without a shard map".into()))
}

/// A data group of a sharded cluster reached as if it were standalone refuses other groups'
/// shards; say what to do instead.
fn standalone_wrong_group(status: tonic::Status) -> Error {
    Error::FailedPrecondition(format!(
        "{} (these endpoints are one data group of a sharded cluster: connect to the meta group's endpoints \
         so that requests are routed by shard)",
        status.message()
    ))
}

/// The error for a routed request that ran out of time while its shard had no reachable owner.
fn unrouted(failure: RouteFailure, timeout: Duration) -> Error {
    match failure {
        RouteFailure::Unroutable(reason, num) => {
            Error::Unavailable(format!("no group served the request within {timeout:?}: shard map {num}: {reason}"))
        }
        RouteFailure::WrongGroup(status) => Error::Unavailable(format!(
            "no group served the request within {timeout:?}: the owner in the newest shard map still refuses it: {}",
            status.message()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leader(endpoints: &[&str]) -> Leader {
        Leader::new(endpoints.iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn rotation_walks_the_list_and_wraps() {
        let leader = leader(&["a:1", "b:2", "c:3"]);
        leader.rotate_from("a:1");
        assert_eq!(leader.target(), "b:2");
        leader.rotate_from("b:2");
        leader.rotate_from("c:3");
        assert_eq!(leader.target(), "a:1");
    }

    #[test]
    fn a_stale_failure_does_not_move_the_target() {
        let leader = leader(&["a:1", "b:2", "c:3"]);
        leader.redirect("c:3".into());
        leader.rotate_from("a:1");
        assert_eq!(leader.target(), "c:3");
    }

    #[test]
    fn a_failed_leader_outside_the_list_restarts_rotation() {
        let leader = leader(&["a:1", "b:2"]);
        leader.redirect("leader:9".into());
        leader.rotate_from("leader:9");
        assert_eq!(leader.target(), "a:1");
    }

    #[test]
    fn new_members_keep_a_target_that_is_still_a_member() {
        let leader = leader(&["a:1", "b:2"]);
        leader.redirect("b:2".into());
        leader.set_endpoints(&["b:2".to_string(), "c:3".to_string()]);
        assert_eq!(leader.target(), "b:2");
        leader.set_endpoints(&["d:4".to_string()]);
        assert_eq!(leader.target(), "d:4", "a removed member is no longer tried");
        leader.rotate_from("d:4");
        assert_eq!(leader.target(), "d:4");
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
