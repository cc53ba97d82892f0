//! The one task per data group that moves its shards, run by the group's leader: fetch the
//! next config once every shard has settled and propose it; pull shards that moved in; delete
//! shards that moved out once their new owner has them. Every step is proposed through Raft
//! and fenced by config number, so a new leader simply picks up where the state says.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use futures::TryStreamExt;
use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use shardkv_proto::v1::PullShardRequest;
use shardkv_proto::v1::QueryRequest;
use shardkv_proto::v1::ShardChunk;
use shardkv_proto::v1::ShardInstalledRequest;
use shardkv_proto::v1::meta_client::MetaClient;
use shardkv_proto::v1::migration_client::MigrationClient;
use tokio::sync::watch;
use tonic::transport::Channel;

use super::GroupShards;
use super::ShardState;
use crate::context::NodeContext;
use crate::meta::Config;
use crate::meta::Member;
use crate::meta::service::config_from_wire;
use crate::network::MAX_MESSAGE_BYTES;
use crate::network::channels::Channels;
use crate::state_machine::records::check_chunk;
use crate::types::Command;
use crate::types::Op;
use crate::types::OpResult;
use crate::types::Record;
use crate::types::ShardId;

/// How often a settled group asks the meta group for the next config.
const POLL: Duration = Duration::from_millis(100);
/// How soon a step of a move in progress is retried (a peer not ready yet, a shard not yet
/// installed): writes to a moving shard wait for it, so this is kept short.
const MOVE_RETRY: Duration = Duration::from_millis(20);
/// Chunks of one pull proposed to Raft at the same time.
const CHUNKS_IN_FLIGHT: usize = 4;

/// What the group's leader does next, decided from the replicated shard state alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Every shard has settled: look for config `num` in the meta group.
    FetchConfig { num: u64 },
    /// Shards are moving at `config_num`: pull these in, hand those off.
    Move { config_num: u64, pulls: Vec<Transfer>, handoffs: Vec<Transfer> },
}

/// One shard moving between this group and the group whose replicas are `members`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    pub shard: ShardId,
    pub members: Vec<Member>,
}

pub fn plan(group: &GroupShards) -> Plan {
    if group.settled() {
        return Plan::FetchConfig { num: group.config_num() + 1 };
    }
    let (mut pulls, mut handoffs) = (Vec::new(), Vec::new());
    for (&shard, state) in &group.shards {
        match state {
            ShardState::Serving => {}
            ShardState::Pulling { members, .. } => pulls.push(Transfer { shard, members: members.clone() }),
            ShardState::BePulled { members, .. } => handoffs.push(Transfer { shard, members: members.clone() }),
        }
    }
    Plan::Move { config_num: group.config_num(), pulls, handoffs }
}

/// Items and bytes received so far by the pulls this replica leads, by shard.
#[derive(Clone, Default)]
pub struct MoveProgress(Arc<Mutex<BTreeMap<ShardId, Progress>>>);

#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    pub items: u64,
    pub bytes: u64,
}

impl MoveProgress {
    pub fn snapshot(&self) -> BTreeMap<ShardId, Progress> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<ShardId, Progress>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn add(&self, shard: ShardId, items: u64, bytes: u64) {
        let mut map = self.lock();
        let entry = map.entry(shard).or_default();
        entry.items += items;
        entry.bytes += bytes;
    }

    fn clear(&self, shard: ShardId) {
        self.lock().remove(&shard);
    }
}

pub struct Driver {
    ctx: Arc<NodeContext>,
    meta_endpoints: Vec<String>,
    channels: Channels,
}

impl Driver {
    pub fn new(ctx: Arc<NodeContext>, meta_endpoints: Vec<String>, channels: Channels) -> Self {
        Self { ctx, meta_endpoints, channels }
    }

    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut pause = POLL;
        let mut last_error = String::new();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            pause = POLL;
            if self.ctx.raft.metrics().borrow_watched().state != ServerState::Leader {
                continue;
            }
            let before = self.ctx.sharding().group;
            let outcome = match plan(&before) {
                Plan::FetchConfig { num } => self.next_config(num).await,
                Plan::Move { config_num, pulls, handoffs } => {
                    pause = MOVE_RETRY;
                    self.move_shards(config_num, &pulls, &handoffs).await
                }
            };
            // A step that changed the shard state is followed at once by the next one.
            if self.ctx.sharding().group != before {
                pause = Duration::ZERO;
            }
            // Log a failure once until it changes.
            match outcome {
                Err(e) if e != last_error => {
                    tracing::info!(error = %e, "shard move step will be retried");
                    last_error = e;
                }
                Err(_) => {}
                Ok(()) => last_error.clear(),
            }
        }
    }

    async fn next_config(&self, num: u64) -> Result<(), String> {
        let Some(config) = self.fetch_config(num).await? else { return Ok(()) };
        if config.shards.len() != self.ctx.shards as usize {
            return Err(format!(
                "the meta group's config {num} has {} shards but this node was started with --shards {}",
                config.shards.len(),
                self.ctx.shards
            ));
        }
        match self.propose(0, Op::ApplyConfig { config }).await? {
            OpResult::Config { .. } => Ok(()),
            other => Err(format!("config {num} was not applied: {other}")),
        }
    }

    /// Config `num` from any meta replica that has it; None while it does not exist yet.
    async fn fetch_config(&self, num: u64) -> Result<Option<Config>, String> {
        let wire = first_answer(&self.channels, self.meta_endpoints.iter().map(String::as_str), |channel| async move {
            let response =
                MetaClient::new(channel).query(QueryRequest { num }).await.map_err(|s| s.message().to_string())?;
            response.into_inner().config.ok_or_else(|| "empty answer".to_string())
        })
        .await
        .map_err(|e| format!("no meta replica answered for config {num}: {e}"))?;
        if wire.num == num { config_from_wire(&wire).map(Some) } else { Ok(None) }
    }

    async fn move_shards(&self, config_num: u64, pulls: &[Transfer], handoffs: &[Transfer]) -> Result<(), String> {
        let pulls = futures::future::join_all(pulls.iter().map(|t| self.pull(config_num, t)));
        let handoffs = futures::future::join_all(handoffs.iter().map(|t| self.hand_off(config_num, t)));
        let (pulled, handed) = futures::join!(pulls, handoffs);
        let errors: Vec<String> = pulled.into_iter().chain(handed).filter_map(Result::err).collect();
        if errors.is_empty() { Ok(()) } else { Err(errors.join("; ")) }
    }

    /// Pulls one shard from a replica of its previous owner and proposes it chunk by chunk;
    /// the final entry makes it serve. Restarting a pull rewrites the same data, so a pull cut
    /// short by a failure or a leader change is simply done again.
    async fn pull(&self, config_num: u64, transfer: &Transfer) -> Result<(), String> {
        let shard = transfer.shard;
        let request = PullShardRequest { cluster_id: self.ctx.scope.cluster_id.clone(), config_num, shard };
        let stream = first_answer(&self.channels, member_addrs(transfer), |channel| {
            let request = request.clone();
            async move {
                let mut client = MigrationClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
                client.pull_shard(request).await.map(|r| r.into_inner()).map_err(|s| s.message().to_string())
            }
        })
        .await
        .map_err(|e| format!("pulling shard {shard} (config {config_num}): {e}"))?;
        let started = std::time::Instant::now();
        self.ctx.moves.clear(shard);
        stream
            .map_err(|s| format!("pulling shard {shard}: {}", s.message()))
            .map_ok(|chunk| self.install(config_num, shard, chunk))
            .try_buffer_unordered(CHUNKS_IN_FLIGHT)
            .try_collect::<()>()
            .await?;
        let done = Op::InstallChunk { config_num, data: Vec::new(), sessions: Vec::new(), last: true };
        self.expect_applied(shard, done).await?;
        let moved = self.ctx.moves.snapshot().get(&shard).copied().unwrap_or_default();
        self.ctx.moves.clear(shard);
        self.ctx.metrics.shard_moved_bytes.inc_by(moved.bytes);
        self.ctx.metrics.shards_pulled.inc();
        tracing::info!(
            shard,
            config = config_num,
            items = moved.items,
            bytes = moved.bytes,
            ms = started.elapsed().as_millis() as u64,
            "pulled a shard"
        );
        Ok(())
    }

    async fn install(&self, config_num: u64, shard: ShardId, chunk: ShardChunk) -> Result<(), String> {
        let records = |list: Vec<shardkv_proto::v1::ShardRecord>| -> Vec<Record> {
            list.into_iter().map(|r| Record { key: r.key, value: r.value }).collect()
        };
        let items = (chunk.data.len() + chunk.sessions.len()) as u64;
        let bytes: usize = chunk.data.iter().chain(&chunk.sessions).map(|r| r.key.len() + r.value.len()).sum();
        let (data, sessions) = (records(chunk.data), records(chunk.sessions));
        // A chunk apply would refuse is not proposed at all.
        check_chunk(&data, &sessions)
            .map_err(|e| format!("pulling shard {shard}: the previous owner sent a chunk that cannot install: {e}"))?;
        self.expect_applied(shard, Op::InstallChunk { config_num, data, sessions, last: false }).await?;
        self.ctx.moves.add(shard, items, bytes as u64);
        Ok(())
    }

    /// Once the new owner reports the shard installed, deletes this group's copy.
    async fn hand_off(&self, config_num: u64, transfer: &Transfer) -> Result<(), String> {
        let shard = transfer.shard;
        let request = ShardInstalledRequest { cluster_id: self.ctx.scope.cluster_id.clone(), config_num, shard };
        first_answer(&self.channels, member_addrs(transfer), |channel| {
            let request = request.clone();
            async move {
                let response = MigrationClient::new(channel)
                    .shard_installed(request)
                    .await
                    .map_err(|s| s.message().to_string())?;
                // A replica that says no may lag; another may already have applied the install.
                if response.into_inner().installed { Ok(()) } else { Err("not installed yet".to_string()) }
            }
        })
        .await
        .map_err(|e| format!("handing off shard {shard} (config {config_num}): {e}"))?;
        self.expect_applied(shard, Op::DropShard { config_num }).await
    }

    async fn expect_applied(&self, shard: ShardId, op: Op) -> Result<(), String> {
        match self.propose(shard, op).await? {
            OpResult::Applied => Ok(()),
            other => Err(format!("shard {shard}: {other}")),
        }
    }

    async fn propose(&self, shard: ShardId, op: Op) -> Result<OpResult, String> {
        let cmd = Command { session: None, shard, op };
        self.ctx.raft.client_write(cmd).await.map(|r| r.data).map_err(|e| format!("proposing: {e}"))
    }
}

fn member_addrs(transfer: &Transfer) -> impl Iterator<Item = &str> {
    transfer.members.iter().map(|m| m.addr.as_str())
}

/// The first answer `ask` accepts, trying the replicas at `addrs` in order (any replica of a
/// group can answer these questions); otherwise every replica's refusal, "addr: reason; ...".
async fn first_answer<'a, T, F, Fut>(
    channels: &Channels,
    addrs: impl IntoIterator<Item = &'a str>,
    ask: F,
) -> Result<T, String>
where
    F: Fn(Channel) -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let mut errors = Vec::new();
    for addr in addrs {
        let answer = match channels.get(addr) {
            Ok(channel) => ask(channel).await,
            Err(e) => Err(format!("bad address: {e}")),
        };
        match answer {
            Ok(value) => return Ok(value),
            Err(e) => errors.push(format!("{addr}: {e}")),
        }
    }
    Err(errors.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(group: u64) -> Vec<Member> {
        vec![Member { node_id: 1, addr: format!("127.0.0.{group}:7100") }]
    }

    #[test]
    fn a_settled_group_looks_for_the_next_config() {
        let group = GroupShards::standalone(1, 4);
        assert_eq!(plan(&group), Plan::FetchConfig { num: 1 });
    }

    #[test]
    fn an_unsettled_group_pulls_and_hands_off_at_its_config() {
        let mut group = GroupShards::new(1, 4);
        group.config.num = 3;
        group.shards.insert(0, ShardState::Serving);
        group.shards.insert(1, ShardState::Pulling { from: 2, members: members(2) });
        group.shards.insert(2, ShardState::BePulled { to: 3, members: members(3) });
        assert_eq!(
            plan(&group),
            Plan::Move {
                config_num: 3,
                pulls: vec![Transfer { shard: 1, members: members(2) }],
                handoffs: vec![Transfer { shard: 2, members: members(3) }],
            }
        );
    }
}
