//! What the configured endpoints are, and the cached shard map a sharded cluster's requests
//! are routed with.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use shardkv_proto::v1::QueryRequest;
use shardkv_proto::v1::ShardConfig;
use shardkv_proto::v1::meta_client::MetaClient;
use tonic::transport::Channel;

use crate::error::Error;
use crate::error::Result;
use crate::retry::Deadline;
use crate::shard_map::ShardMap;

use super::Client;
use super::Topology;
use super::config_of;
use super::lock;
use super::request;
use super::routing::Attempts;
use super::routing::GroupError;

/// A refresh asked for within this long after the previous one reuses its answer.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_millis(20);

impl Client {
    /// What the endpoints are, asking them on first use.
    pub async fn topology(&self) -> Result<Topology> {
        self.topology_by(Deadline::after(self.request_timeout())).await
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

    /// The topology, detected by the first caller (within its deadline) and then fixed.
    pub(super) async fn topology_by(&self, deadline: Deadline) -> Result<Topology> {
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
    pub(super) async fn detect_topology(&self, deadline: Deadline) -> Result<Topology> {
        let answer = self
            .call_meta(deadline, |channel, timeout| async move {
                match MetaClient::new(channel).query(request(QueryRequest { num: 0, wait_ms: 0 }, timeout)).await {
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

    pub(super) async fn require_sharded(&self, deadline: Deadline) -> Result<()> {
        match self.topology_by(deadline).await? {
            Topology::Sharded => Ok(()),
            Topology::Standalone => Err(Error::FailedPrecondition(format!(
                "{} is a standalone group, not a meta group: it has no shard map",
                self.shared.endpoints.join(",")
            ))),
        }
    }

    pub(super) fn meta_error(&self, error: GroupError) -> Error {
        match error {
            GroupError::Failed(error) => error,
            GroupError::WrongGroup(status) => Error::from_status(status),
        }
    }

    /// Shard map `num` (0: the latest) from the meta group's leader.
    pub(super) async fn query_meta(&self, num: u64, deadline: Deadline) -> Result<ShardConfig> {
        let reply = self
            .call_meta(deadline, |channel, timeout| async move {
                Ok(MetaClient::new(channel)
                    .query(request(QueryRequest { num, wait_ms: 0 }, timeout))
                    .await?
                    .into_inner())
            })
            .await?;
        config_of(reply)
    }

    /// A read of the configured endpoints' group (the meta group, or a standalone group during
    /// detection), with the KV limits.
    pub(super) async fn call_meta<T, F, Fut>(&self, deadline: Deadline, attempt: F) -> Result<T>
    where
        F: FnMut(Channel, Duration) -> Fut,
        Fut: Future<Output = std::result::Result<T, tonic::Status>>,
    {
        let mut attempt = attempt;
        self.call_group(&self.shared.seeds, 0, deadline, self.kv_limits(), &Attempts::default(), |conn, t| {
            attempt(conn.channel, t)
        })
        .await
        .map_err(|e| self.meta_error(e))
    }

    /// Records `config` if it is newer than the cached map (maps never go back) and updates
    /// each group's member list; returns the map now cached.
    pub(super) fn install(&self, config: ShardConfig) -> Arc<ShardMap> {
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
    pub(super) async fn shard_map(&self, deadline: Deadline) -> Result<Arc<ShardMap>> {
        if let Some((map, _)) = lock(&self.shared.shard_map).as_ref() {
            return Ok(Arc::clone(map));
        }
        self.refresh_after(0, deadline).await
    }

    /// A shard map newer than `stale` if the meta group has one: concurrent callers share one
    /// query, and a map fetched in the last few milliseconds is reused.
    pub(super) async fn refresh_after(&self, stale: u64, deadline: Deadline) -> Result<Arc<ShardMap>> {
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
}
