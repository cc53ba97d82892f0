//! The one task per data group that moves its shards, run by the group's leader: start a new
//! group at the config it joined in; fetch the next config once every shard has settled; copy
//! the shards it gains while their owners still serve them, and wait for the groups it gives
//! shards to do the same; then propose the config; pull what changed in the shards that moved
//! in since their copy (or all of them, without one); delete shards that moved out once their
//! new owner (or a later one) has them. Every step is proposed through Raft and fenced by
//! config number, so a new leader simply picks up where the state says.
//!
//! Writes to a moving shard are refused only between its owner applying the config (which
//! freezes it) and its new owner installing the changes since the copy: a short time whatever
//! the shard's size.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use futures::TryStreamExt;
use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use openraft::error::ClientWriteError;
use openraft::error::RaftError;
use serde_bytes::ByteBuf;
use shardkv_proto::v1::PullShardRequest;
use shardkv_proto::v1::QueryRequest;
use shardkv_proto::v1::ShardChunk;
use shardkv_proto::v1::ShardConfig;
use shardkv_proto::v1::ShardInstalledRequest;
use shardkv_proto::v1::ShardInstalledResponse;
use shardkv_proto::v1::meta_client::MetaClient;
use shardkv_proto::v1::migration_client::MigrationClient;
use tokio::sync::watch;
use tonic::transport::Channel;

use super::GroupShards;
use super::ShardState;
use super::Transfer;
use super::confirm::witnesses;
use crate::context::NodeContext;
use crate::meta::Config;
use crate::meta::GroupId;
use crate::meta::Member;
use crate::meta::wire::WireError;
use crate::meta::wire::config_from_wire;
use crate::network::MAX_MESSAGE_BYTES;
use crate::network::channels::Channels;
use crate::state_machine::records::RecordError;
use crate::state_machine::records::check_chunk;
use crate::state_machine::records::check_deleted;
use crate::storage::keys::data_key;
use crate::types::Command;
use crate::types::Op;
use crate::types::OpResult;
use crate::types::Record;
use crate::types::ShardId;
use crate::types::TypeConfig;

/// How often a settled group asks the meta group for the next config, and a group handing a
/// shard off looks for newer configs naming later owners of it.
const POLL: Duration = Duration::from_millis(100);
/// How long a meta replica may hold the ask for the next config until it exists, so that a
/// move starts as soon as the meta group applies it rather than at the next poll.
const NEXT_CONFIG_WAIT: Duration = Duration::from_secs(1);
/// How soon a step of a move in progress is retried (a peer not ready yet, a shard not yet
/// installed): writes to a moving shard wait for it, so this is kept short.
const MOVE_RETRY: Duration = Duration::from_millis(20);
/// Chunks of one pull proposed to Raft at the same time.
const CHUNKS_IN_FLIGHT: usize = 4;
/// A copy travels as table files of about this size (see `state_machine::copy_files`).
const COPY_FILE_BYTES: usize = 8 << 20;
/// Copy files of one copy being written or proposed at the same time.
const COPY_FILES_IN_FLIGHT: usize = 4;
/// How long a group waits for the shards the next config moves in or out to be copied before
/// it applies that config anyway: the moves then pull whole shards, frozen for the whole pull.
/// Reached only when a peer is down, far behind, or runs a version without copies.
const COPY_WAIT: Duration = Duration::from_secs(120);

/// What the group's leader does next, decided from the replicated shard state alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// No config applied yet: find the config this group joined in and start right before it.
    Start,
    /// Every shard has settled: look for config `num` in the meta group.
    FetchConfig { num: u64 },
    /// Shards are moving at `config_num`: pull these in (whole, or the changes since their
    /// copy), hand those off.
    Move { config_num: u64, pulls: Vec<Transfer>, catch_ups: Vec<Transfer>, handoffs: Vec<Transfer> },
}

pub fn plan(group: &GroupShards) -> Plan {
    if group.config_num() == 0 {
        return Plan::Start;
    }
    if group.settled() {
        return Plan::FetchConfig { num: group.config_num() + 1 };
    }
    let (mut pulls, mut catch_ups, mut handoffs) = (Vec::new(), Vec::new(), Vec::new());
    for (&shard, state) in &group.shards {
        match state {
            ShardState::Serving | ShardState::Copying { .. } | ShardState::Copied { .. } => {}
            ShardState::Pulling { from, members } => {
                pulls.push(Transfer { shard, group: *from, members: members.clone() })
            }
            ShardState::CatchingUp { from, members } => {
                catch_ups.push(Transfer { shard, group: *from, members: members.clone() })
            }
            ShardState::BePulled { to, members } => {
                handoffs.push(Transfer { shard, group: *to, members: members.clone() })
            }
        }
    }
    Plan::Move { config_num: group.config_num(), pulls, catch_ups, handoffs }
}

/// Why a step of the driver did not happen; it is retried.
#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    #[error("no meta replica answered for config {num}: {refusals}")]
    MetaUnreachable { num: u64, refusals: Refusals },
    #[error("the meta group sent a malformed config {num}: {source}")]
    BadConfig { num: u64, source: WireError },
    #[error("the meta group's config {num} has {found} shards but this node was started with --shards {expected}")]
    ShardCount { num: u64, found: usize, expected: u32 },
    #[error("the meta group does not have config {num}, although it has later ones")]
    MissingConfig { num: u64 },
    #[error("config {num} was not applied: {result}")]
    ConfigRefused { num: u64, result: OpResult },
    #[error("pulling shard {shard} (config {config_num}): {refusals}")]
    PullRefused { shard: ShardId, config_num: u64, refusals: Refusals },
    #[error("pulling shard {shard}: {}", .source.message())]
    PullBroken { shard: ShardId, source: tonic::Status },
    #[error("pulling shard {shard}: the stream ended without its end marker, so it was cut short")]
    PullCutShort { shard: ShardId },
    #[error("pulling shard {shard}: the previous owner sent a chunk that cannot install: {source}")]
    BadChunk { shard: ShardId, source: RecordError },
    #[error("copying shard {shard}: writing a copy file: {source}")]
    CopyFile { shard: ShardId, source: std::io::Error },
    #[error("copying shard {shard} ahead of config {config_num}: {refusals}")]
    CopyRefused { shard: ShardId, config_num: u64, refusals: Refusals },
    #[error("waiting for group {group} to copy shard {shard} before freezing it for config {config_num}: {refusals}")]
    NotCopiedYet { shard: ShardId, group: GroupId, config_num: u64, refusals: Refusals },
    #[error(
        "handing off shard {shard} (config {config_num}): neither the new owner nor a later one confirms it installed: {refusals}"
    )]
    Unconfirmed { shard: ShardId, config_num: u64, refusals: Refusals },
    #[error("shard {shard}: {result}")]
    Refused { shard: ShardId, result: OpResult },
    #[error("proposing: {0}")]
    Propose(Box<RaftError<TypeConfig, ClientWriteError<TypeConfig>>>),
}

/// What one replica asked answered instead of what was asked for.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaRefusal {
    #[error("bad address: {0}")]
    Address(#[from] tonic::transport::Error),
    #[error("{}", .0.message())]
    Status(#[from] tonic::Status),
    #[error("empty answer")]
    EmptyAnswer,
    /// It answered, but not yet with the state asked about.
    #[error("{0}")]
    NotYet(&'static str),
}

/// What each replica asked answered instead, by address.
#[derive(Debug, Default)]
pub struct Refusals(Vec<(String, ReplicaRefusal)>);

impl fmt::Display for Refusals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("no replica to ask");
        }
        for (i, (addr, reason)) in self.0.iter().enumerate() {
            write!(f, "{}{addr}: {reason}", if i == 0 { "" } else { "; " })?;
        }
        Ok(())
    }
}

/// Configs after the one this group is at, fetched to find the later owners of shards it
/// hands off. A numbered config never changes, so each is fetched once.
#[derive(Default)]
struct LaterConfigs {
    configs: BTreeMap<u64, Config>,
    /// When the meta group was last asked for newer ones.
    asked: Option<Instant>,
}

pub struct Driver {
    ctx: Arc<NodeContext>,
    meta_endpoints: Vec<String>,
    channels: Channels,
    later: Mutex<LaterConfigs>,
    /// The copies ahead of the next config's moves, while they run.
    copy_ahead: Mutex<Option<CopyAhead>>,
}

/// The copies this leader takes ahead of `config`.
struct CopyAhead {
    config: Config,
    since: Instant,
    /// Shards whose copy has been received whole, by the log index its `BeginCopy` was
    /// applied at. `FinishCopy` waits until every incoming shard's has: a shard counts as
    /// copied only then, so that its owner does not freeze it while this group is still
    /// copying another, larger one.
    received: BTreeMap<ShardId, u64>,
}

impl Driver {
    pub fn new(ctx: Arc<NodeContext>, meta_endpoints: Vec<String>, channels: Channels) -> Self {
        Self { ctx, meta_endpoints, channels, later: Mutex::default(), copy_ahead: Mutex::default() }
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
                Plan::Start => self.start(before.group).await,
                Plan::FetchConfig { num } => {
                    let outcome = self.next_config(num).await;
                    // Waiting only for a copy to finish: freeze soon after it does.
                    if outcome.as_ref().is_err_and(|e| e.iter().all(|e| matches!(e, MoveError::NotCopiedYet { .. }))) {
                        pause = MOVE_RETRY;
                    }
                    outcome
                }
                Plan::Move { config_num, pulls, catch_ups, handoffs } => {
                    pause = MOVE_RETRY;
                    self.move_shards(config_num, &pulls, &catch_ups, &handoffs).await
                }
            };
            // A step that changed the shard state is followed at once by the next one.
            if self.ctx.sharding().group != before {
                pause = Duration::ZERO;
            }
            // Log a failure once until it changes.
            match outcome {
                Err(errors) => {
                    let error = errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
                    if error != last_error {
                        tracing::info!(%error, "shard move step will be retried");
                        last_error = error;
                    }
                }
                Ok(()) => last_error.clear(),
            }
        }
    }

    /// Starts a group that has applied no config, so it never waits on moves of an earlier
    /// membership of its id that finished long ago. Outside the latest config, it starts after
    /// it: every later config is this group's to apply, a join and leave that follow included.
    /// In the latest config, it starts right before the config it joined in, and applies that
    /// one as any next config (a start after config 0 looks like no start at all).
    async fn start(&self, group: GroupId) -> Result<(), Vec<MoveError>> {
        let latest = self.fetch_latest().await.map_err(|e| vec![e])?;
        if !latest.groups.contains_key(&group) {
            return self.propose_config(latest.num, Op::StartAfter { baseline: latest }).await.map_err(|e| vec![e]);
        }
        let mut joined = latest;
        let baseline = loop {
            let before = match joined.num - 1 {
                0 => Config::initial(self.ctx.shards),
                num => self
                    .fetch_config(num, Duration::ZERO)
                    .await
                    .and_then(|c| c.ok_or(MoveError::MissingConfig { num }))
                    .map_err(|e| vec![e])?,
            };
            if !before.groups.contains_key(&group) {
                break before;
            }
            joined = before;
        };
        tracing::info!(config = joined.num, "this group joined in this config; starting there");
        self.propose_config(baseline.num, Op::StartAfter { baseline }).await.map_err(|e| vec![e])?;
        self.apply_next(joined).await
    }

    /// Applies config `num` once it exists and its moves are copied ahead (or `COPY_WAIT` has
    /// passed).
    async fn next_config(&self, num: u64) -> Result<(), Vec<MoveError>> {
        // A numbered config never changes: while its copies run, it is not fetched again.
        let copying = self.copy_ahead_state().as_ref().filter(|c| c.config.num == num).map(|c| c.config.clone());
        match copying {
            Some(config) => self.apply_next(config).await,
            None => match self.fetch_config(num, NEXT_CONFIG_WAIT).await {
                Ok(Some(config)) => self.apply_next(config).await,
                Ok(None) => Ok(()),
                Err(e) => Err(vec![e]),
            },
        }
    }

    async fn apply_next(&self, config: Config) -> Result<(), Vec<MoveError>> {
        self.copy_ahead(&config).await?;
        let num = config.num;
        self.propose_config(num, Op::ApplyConfig { config }).await.map_err(|e| vec![e])
    }

    /// Copies the shards `next` moves into this group while their owners serve them, and checks
    /// that the groups `next` moves this group's shards to have copied them. Ok once both are
    /// done, or `COPY_WAIT` after the first try for this config.
    async fn copy_ahead(&self, next: &Config) -> Result<(), Vec<MoveError>> {
        let since = {
            let mut slot = self.copy_ahead_state();
            match &*slot {
                Some(copies) if copies.config.num == next.num => copies.since,
                _ => {
                    let fresh = CopyAhead { config: next.clone(), since: Instant::now(), received: BTreeMap::new() };
                    slot.insert(fresh).since
                }
            }
        };
        if since.elapsed() >= COPY_WAIT {
            tracing::warn!(
                config = next.num,
                "shards of this config were not copied ahead in time; applying it, moving them whole"
            );
            return Ok(());
        }
        let group = self.ctx.sharding().group;
        let incoming: Vec<Transfer> =
            group.incoming(next).into_iter().filter(|t| !group.ready_for(next.num, t.shard)).collect();
        let copies = futures::future::join_all(incoming.iter().map(|t| self.copy(next.num, t, &group))).await;
        let mut errors: Vec<MoveError> = copies.into_iter().filter_map(Result::err).collect();
        if errors.is_empty() {
            let now = self.ctx.sharding().group;
            for (shard, begun_at) in self.received_copies().into_iter().filter(|&(s, _)| !now.ready_for(next.num, s)) {
                let finish = Op::FinishCopy { config_num: next.num, begun_at };
                if let Err(e) = self.expect_applied(shard, finish).await {
                    errors.push(e);
                }
            }
        }
        let outgoing = group.outgoing(next);
        let ready = futures::future::join_all(outgoing.iter().map(|t| self.copied_there(next.num, t))).await;
        errors.extend(ready.into_iter().filter_map(Result::err));
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }

    fn copy_ahead_state(&self) -> std::sync::MutexGuard<'_, Option<CopyAhead>> {
        self.copy_ahead.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn received_copies(&self) -> Vec<(ShardId, u64)> {
        let state = self.copy_ahead_state();
        state.as_ref().map(|c| c.received.iter().map(|(&shard, &at)| (shard, at)).collect()).unwrap_or_default()
    }

    /// Copies one shard from its owner, which keeps serving it, ahead of the move at
    /// `config_num`, unless this leader already received it whole (`group` is the state it
    /// started from). Done too, with nothing copied, when the owner can no longer be copied
    /// from: the shard is then pulled whole.
    async fn copy(&self, config_num: u64, transfer: &Transfer, group: &GroupShards) -> Result<(), MoveError> {
        let shard = transfer.shard;
        // Received whole by this leader, and no other copy begun since.
        if let Some(begun_at) = group.copying(config_num, shard)
            && self.received_copies().contains(&(shard, begun_at))
        {
            return Ok(());
        }
        let cluster_id = self.ctx.scope.cluster_id.clone();
        let request = PullShardRequest { cluster_id, config_num, shard, changes_only: false };
        let stream = self
            .open_stream(request, &transfer.members, true)
            .await
            .map_err(|refusals| MoveError::CopyRefused { shard, config_num, refusals })?;
        let Some(stream) = stream else { return Ok(()) };
        let begun_at = match self.propose_logged(shard, Op::BeginCopy { config_num }).await? {
            (index, OpResult::Applied) => index,
            (_, result) => return Err(MoveError::Refused { shard, result }),
        };
        self.receive(config_num, shard, Pull::Copy { begun_at }, stream).await?;
        if let Some(copies) = self.copy_ahead_state().as_mut().filter(|c| c.config.num == config_num) {
            copies.received.insert(shard, begun_at);
        }
        Ok(())
    }

    /// Whether this group may freeze `transfer.shard` for the group `next` gives it to: that
    /// group holds a whole copy, has applied the config, or none of its replicas answers (a
    /// group that is down copies nothing; it pulls the shard whole once it is back).
    async fn copied_there(&self, config_num: u64, transfer: &Transfer) -> Result<(), MoveError> {
        let (shard, group) = (transfer.shard, transfer.group);
        let asked =
            self.ask_shard_installed(config_num, shard, group, &transfer.members, |r| r.ready, "no whole copy yet");
        match asked.await {
            (Ok(()), _) => Ok(()),
            (Err(refusals), false) => {
                tracing::info!(shard, config = config_num, group, %refusals, "the next owner does not answer; freezing the shard without a copy there");
                Ok(())
            }
            (Err(refusals), true) => Err(MoveError::NotCopiedYet { shard, group, config_num, refusals }),
        }
    }

    async fn propose_config(&self, num: u64, op: Op) -> Result<(), MoveError> {
        match self.propose(0, op).await? {
            OpResult::Config { .. } => Ok(()),
            result => Err(MoveError::ConfigRefused { num, result }),
        }
    }

    /// Config `num` from any meta replica that has it, waiting up to `wait` for it to exist;
    /// None while it does not.
    async fn fetch_config(&self, num: u64, wait: Duration) -> Result<Option<Config>, MoveError> {
        let wire = self.query_meta(num, wait).await?;
        if wire.num == num { self.checked(wire).map(Some) } else { Ok(None) }
    }

    /// The latest config, as the meta group's leader knows it.
    async fn fetch_latest(&self) -> Result<Config, MoveError> {
        let wire = self.query_meta(0, Duration::ZERO).await?;
        self.checked(wire)
    }

    async fn query_meta(&self, num: u64, wait: Duration) -> Result<ShardConfig, MoveError> {
        let wait_ms = wait.as_millis() as u64;
        first_answer(&self.channels, self.meta_endpoints.iter().map(String::as_str), |channel| async move {
            let response = MetaClient::new(channel).query(QueryRequest { num, wait_ms }).await?;
            response.into_inner().config.ok_or(ReplicaRefusal::EmptyAnswer)
        })
        .await
        .map_err(|refusals| MoveError::MetaUnreachable { num, refusals })
    }

    fn checked(&self, wire: ShardConfig) -> Result<Config, MoveError> {
        let num = wire.num;
        let config = config_from_wire(&wire).map_err(|source| MoveError::BadConfig { num, source })?;
        if config.shards.len() != self.ctx.shards as usize {
            return Err(MoveError::ShardCount { num, found: config.shards.len(), expected: self.ctx.shards });
        }
        Ok(config)
    }

    async fn move_shards(
        &self,
        config_num: u64,
        pulls: &[Transfer],
        catch_ups: &[Transfer],
        handoffs: &[Transfer],
    ) -> Result<(), Vec<MoveError>> {
        let whole = pulls.iter().map(|t| (Pull::Whole, t));
        let changes = catch_ups.iter().map(|t| (Pull::Changes, t));
        let pulls = futures::future::join_all(whole.chain(changes).map(|(kind, t)| self.pull(config_num, kind, t)));
        let handoffs = futures::future::join_all(handoffs.iter().map(|t| self.hand_off(config_num, t)));
        let (pulled, handed) = futures::join!(pulls, handoffs);
        let errors: Vec<MoveError> = pulled.into_iter().chain(handed).filter_map(Result::err).collect();
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }

    /// Pulls one shard (or its changes since a copy) from a replica of its previous owner and
    /// proposes it chunk by chunk; the final entry makes it serve. Restarting a pull rewrites
    /// the same data, so a pull cut short by a failure or a leader change is simply done again.
    async fn pull(&self, config_num: u64, kind: Pull, transfer: &Transfer) -> Result<(), MoveError> {
        let shard = transfer.shard;
        let cluster_id = self.ctx.scope.cluster_id.clone();
        let request = PullShardRequest { cluster_id, config_num, shard, changes_only: kind == Pull::Changes };
        let stream = self
            .open_stream(request, &transfer.members, false)
            .await
            .map_err(|refusals| MoveError::PullRefused { shard, config_num, refusals })?;
        match stream {
            Some(stream) => self.receive(config_num, shard, kind, stream).await,
            // The previous owner recorded no changes since the copy: the next step pulls it whole.
            None => self.expect_applied(shard, Op::DiscardCopy { config_num }).await,
        }
    }

    /// Opens a stream of `request`'s shard from the first of `members` (its owner's replicas)
    /// that starts one: a copy while the owner serves it (`copy`), or a pull once it is frozen,
    /// of it whole or of its changes since the copy. None when the owner answers that it has no
    /// such stream to send (a copy: FAILED_PRECONDITION; a pull of changes: NOT_FOUND), so the
    /// caller falls back to moving the shard whole; a whole pull has no fallback.
    async fn open_stream(
        &self,
        request: PullShardRequest,
        members: &[Member],
        copy: bool,
    ) -> Result<Option<tonic::Streaming<ShardChunk>>, Refusals> {
        let (shard, config_num) = (request.shard, request.config_num);
        let none = match (copy, request.changes_only) {
            (true, _) => Some(tonic::Code::FailedPrecondition),
            (false, true) => Some(tonic::Code::NotFound),
            (false, false) => None,
        };
        first_answer(&self.channels, addrs(members), |channel| {
            let request = request.clone();
            async move {
                let mut client = MigrationClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
                let opened = if copy { client.copy_shard(request).await } else { client.pull_shard(request).await };
                match opened {
                    Ok(response) => Ok(Some(response.into_inner())),
                    Err(status) if Some(status.code()) == none => {
                        tracing::info!(shard, config = config_num, reason = status.message(), "moving the shard whole");
                        Ok(None)
                    }
                    Err(status) => Err(status.into()),
                }
            }
        })
        .await
    }

    /// Proposes every chunk of `stream` in order of arrival, a few at a time, then the entry
    /// that ends the stream, and counts what was received.
    async fn receive(
        &self,
        config_num: u64,
        shard: ShardId,
        kind: Pull,
        stream: tonic::Streaming<ShardChunk>,
    ) -> Result<(), MoveError> {
        let started = Instant::now();
        self.ctx.moves.clear(shard);
        let ended = AtomicBool::new(false);
        let chunks = stream.map_err(|source| MoveError::PullBroken { shard, source }).inspect_ok(|chunk| {
            if chunk.end {
                ended.store(true, Ordering::Relaxed);
            }
        });
        match kind {
            Pull::Copy { begun_at } => self.ingest_copy(config_num, shard, begun_at, chunks).await?,
            _ => {
                chunks
                    .map_ok(|chunk| self.install(config_num, shard, kind, chunk))
                    .try_buffer_unordered(CHUNKS_IN_FLIGHT)
                    .try_collect::<()>()
                    .await?
            }
        }
        // A sender that fails mid-stream may close it without an error: only the end marker
        // says it is whole. (Whole pulls from nodes older than the marker end without one.)
        if !ended.load(Ordering::Relaxed) && kind != Pull::Whole {
            return Err(MoveError::PullCutShort { shard });
        }
        if let Some(last) = kind.last(config_num) {
            self.expect_applied(shard, last).await?;
        }
        let received = self.ctx.moves.snapshot().get(&shard).copied().unwrap_or_default();
        self.ctx.moves.clear(shard);
        let metrics = &self.ctx.metrics;
        if matches!(kind, Pull::Copy { .. }) {
            metrics.shard_copied_bytes.inc_by(received.bytes);
        } else {
            metrics.shard_moved_bytes.inc_by(received.bytes);
            metrics.shards_pulled.inc();
        }
        tracing::info!(
            shard,
            config = config_num,
            items = received.items,
            bytes = received.bytes,
            ms = started.elapsed().as_millis() as u64,
            "{}",
            kind.done()
        );
        Ok(())
    }

    /// Gathers a copy's chunks into table files of about `COPY_FILE_BYTES`, each written on a
    /// blocking thread and proposed as an `IngestCopy` entry, a few files at a time.
    async fn ingest_copy(
        &self,
        config_num: u64,
        shard: ShardId,
        begun_at: u64,
        chunks: impl futures::Stream<Item = Result<ShardChunk, MoveError>> + Send,
    ) -> Result<(), MoveError> {
        let batches = futures::stream::try_unfold((Box::pin(chunks), false), |(mut chunks, ended)| async move {
            if ended {
                return Ok(None);
            }
            let mut batch = CopyBatch::default();
            while batch.bytes < COPY_FILE_BYTES {
                match chunks.try_next().await? {
                    Some(chunk) => batch.add(chunk),
                    None => return Ok(Some((batch, (chunks, true)))),
                }
            }
            Ok(Some((batch, (chunks, false))))
        });
        batches
            .map_ok(|batch| self.ingest_batch(config_num, shard, begun_at, batch))
            .try_buffer_unordered(COPY_FILES_IN_FLIGHT)
            .try_collect::<()>()
            .await
    }

    async fn ingest_batch(
        &self,
        config_num: u64,
        shard: ShardId,
        begun_at: u64,
        batch: CopyBatch,
    ) -> Result<(), MoveError> {
        if batch.records.is_empty() {
            return Ok(());
        }
        if batch.records.iter().any(|r| r.key.is_empty()) {
            return Err(MoveError::BadChunk { shard, source: RecordError::EmptyKey });
        }
        let (items, bytes) = (batch.records.len() as u64, batch.bytes as u64);
        let files = self.ctx.copy_files.clone();
        let file = tokio::task::spawn_blocking(move || {
            let keys: Vec<Vec<u8>> = batch.records.iter().map(|r| data_key(shard, &r.key)).collect();
            let records = keys.iter().zip(&batch.records).map(|(key, r)| (key.as_slice(), r.value.as_slice()));
            files.build(shard, config_num, records)
        })
        .await
        .map_err(|e| MoveError::CopyFile { shard, source: std::io::Error::other(e) })?
        .map_err(|source| MoveError::CopyFile { shard, source })?;
        self.expect_applied(shard, Op::IngestCopy { config_num, begun_at, file, items, bytes }).await?;
        self.ctx.moves.add(shard, items, bytes);
        Ok(())
    }

    async fn install(&self, config_num: u64, shard: ShardId, kind: Pull, chunk: ShardChunk) -> Result<(), MoveError> {
        if chunk.data.is_empty() && chunk.sessions.is_empty() && chunk.deleted.is_empty() {
            return Ok(());
        }
        let records = |list: Vec<shardkv_proto::v1::ShardRecord>| -> Vec<Record> {
            list.into_iter().map(|r| Record { key: r.key, value: r.value }).collect()
        };
        let items = (chunk.data.len() + chunk.sessions.len() + chunk.deleted.len()) as u64;
        let bytes: usize = chunk.data.iter().chain(&chunk.sessions).map(|r| r.key.len() + r.value.len()).sum::<usize>()
            + chunk.deleted.iter().map(Vec::len).sum::<usize>();
        let (data, sessions) = (records(chunk.data), records(chunk.sessions));
        let deleted: Vec<ByteBuf> = chunk.deleted.into_iter().map(ByteBuf::from).collect();
        // A chunk apply would refuse is not proposed at all.
        check_chunk(&data, &sessions)
            .and_then(|_| check_deleted(&deleted))
            .map_err(|source| MoveError::BadChunk { shard, source })?;
        self.expect_applied(shard, kind.op(config_num, data, deleted, sessions, false)).await?;
        self.ctx.moves.add(shard, items, bytes as u64);
        Ok(())
    }

    /// Deletes this group's copy once its installation by the new owner is certain: the new
    /// owner says so, or, when it cannot (it may have left and been deleted since), a later
    /// owner of the shard does (see `confirm`).
    async fn hand_off(&self, config_num: u64, transfer: &Transfer) -> Result<(), MoveError> {
        let shard = transfer.shard;
        if let Err(mut refusals) = self.installed(config_num, shard, transfer.group, &transfer.members).await {
            let later = self.configs_after(config_num).await?;
            let mut confirmed = false;
            for witness in witnesses(shard, transfer.group, &transfer.members, config_num, &later) {
                match self.installed(witness.config_num, shard, witness.group, &witness.members).await {
                    Ok(()) => {
                        tracing::info!(
                            shard,
                            config = config_num,
                            receiver = transfer.group,
                            witness = witness.group,
                            witness_config = witness.config_num,
                            "installation confirmed by a later owner"
                        );
                        confirmed = true;
                        break;
                    }
                    Err(more) => refusals.0.extend(more.0),
                }
            }
            if !confirmed {
                return Err(MoveError::Unconfirmed { shard, config_num, refusals });
            }
        }
        self.expect_applied(shard, Op::DropShard { config_num }).await
    }

    /// Whether `group`, at `members`, has installed `shard` at `config_num`.
    async fn installed(
        &self,
        config_num: u64,
        shard: ShardId,
        group: GroupId,
        members: &[Member],
    ) -> Result<(), Refusals> {
        // A replica that says no may lag; another may already have applied the install.
        self.ask_shard_installed(config_num, shard, group, members, |r| r.installed, "not installed").await.0
    }

    /// Asks `group`'s replicas at `members` about `shard` at `config_num` until one's answer
    /// passes `yes`, with whether any replica answered at all.
    async fn ask_shard_installed(
        &self,
        config_num: u64,
        shard: ShardId,
        group: GroupId,
        members: &[Member],
        yes: fn(&ShardInstalledResponse) -> bool,
        no: &'static str,
    ) -> (Result<(), Refusals>, bool) {
        let cluster_id = self.ctx.scope.cluster_id.clone();
        let request = ShardInstalledRequest { cluster_id, config_num, shard, group_id: group };
        let answered = AtomicBool::new(false);
        let outcome = first_answer(&self.channels, addrs(members), |channel| {
            let (request, answered) = (request.clone(), &answered);
            async move {
                let response = MigrationClient::new(channel).shard_installed(request).await?;
                answered.store(true, Ordering::Relaxed);
                if yes(&response.into_inner()) { Ok(()) } else { Err(ReplicaRefusal::NotYet(no)) }
            }
        })
        .await;
        (outcome, answered.load(Ordering::Relaxed))
    }

    /// The configs after `config_num` as far as known, asking the meta group for newer ones at
    /// most once per `POLL`: a hand-off in progress is retried every `MOVE_RETRY`, and the
    /// receiver usually confirms it before any later config exists.
    async fn configs_after(&self, config_num: u64) -> Result<Vec<Config>, MoveError> {
        let next = {
            let mut later = self.later_configs();
            later.configs.retain(|&num, _| num > config_num);
            let due = later.asked.is_none_or(|at| at.elapsed() >= POLL);
            if due {
                later.asked = Some(Instant::now());
            }
            due.then(|| later.configs.last_key_value().map_or(config_num + 1, |(&num, _)| num + 1))
        };
        if let Some(mut num) = next {
            while let Some(config) = self.fetch_config(num, Duration::ZERO).await? {
                self.later_configs().configs.insert(num, config);
                num += 1;
            }
        }
        Ok(self.later_configs().configs.values().cloned().collect())
    }

    fn later_configs(&self) -> std::sync::MutexGuard<'_, LaterConfigs> {
        self.later.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn expect_applied(&self, shard: ShardId, op: Op) -> Result<(), MoveError> {
        match self.propose(shard, op).await? {
            OpResult::Applied => Ok(()),
            result => Err(MoveError::Refused { shard, result }),
        }
    }

    async fn propose(&self, shard: ShardId, op: Op) -> Result<OpResult, MoveError> {
        self.propose_logged(shard, op).await.map(|(_, result)| result)
    }

    /// Proposes `op` and returns the log index it was applied at, with its result.
    async fn propose_logged(&self, shard: ShardId, op: Op) -> Result<(u64, OpResult), MoveError> {
        let cmd = Command { session: None, shard, op };
        let written = self.ctx.raft.client_write(cmd).await.map_err(|e| MoveError::Propose(Box::new(e)))?;
        Ok((written.log_id.index(), written.data))
    }
}

/// Records of a copy gathered for one table file.
#[derive(Default)]
struct CopyBatch {
    records: Vec<shardkv_proto::v1::ShardRecord>,
    bytes: usize,
}

impl CopyBatch {
    /// Adds a copy chunk's data (a copy carries no sessions or deletions).
    fn add(&mut self, chunk: ShardChunk) {
        self.bytes += chunk.data.iter().map(|r| r.key.len() + r.value.len()).sum::<usize>();
        self.records.extend(chunk.data);
    }
}

/// What a stream of chunks from a shard's owner holds, and so which entry installs each chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pull {
    /// A copy taken while the owner still serves the shard (data only), begun by the
    /// `BeginCopy` entry at log index `begun_at`.
    Copy { begun_at: u64 },
    /// The whole frozen shard.
    Whole,
    /// The keys changed since the copy, and the sessions.
    Changes,
}

impl Pull {
    fn op(self, config_num: u64, data: Vec<Record>, deleted: Vec<ByteBuf>, sessions: Vec<Record>, last: bool) -> Op {
        match self {
            Pull::Copy { .. } => unreachable!("a copy is proposed as files (see `ingest_copy`)"),
            Pull::Whole => Op::InstallChunk { config_num, data, sessions, last },
            Pull::Changes => Op::InstallChanges { config_num, data, deleted, sessions, last },
        }
    }

    fn done(self) -> &'static str {
        match self {
            Pull::Copy { .. } => "copied a shard while its owner serves it",
            Pull::Whole => "pulled a shard",
            Pull::Changes => "pulled a shard's changes since its copy",
        }
    }

    /// The entry that ends a pull, after which the shard serves. A copy ends with the others
    /// of its config (see `CopyAhead::received`).
    fn last(self, config_num: u64) -> Option<Op> {
        match self {
            Pull::Copy { .. } => None,
            kind => Some(kind.op(config_num, Vec::new(), Vec::new(), Vec::new(), true)),
        }
    }
}

fn addrs(members: &[Member]) -> impl Iterator<Item = &str> {
    members.iter().map(|m| m.addr.as_str())
}

/// The first answer `ask` accepts, trying the replicas at `addrs` in order (any replica of a
/// group can answer these questions); otherwise every replica's refusal.
async fn first_answer<'a, T, F, Fut>(
    channels: &Channels,
    addrs: impl IntoIterator<Item = &'a str>,
    ask: F,
) -> Result<T, Refusals>
where
    F: Fn(Channel) -> Fut,
    Fut: std::future::Future<Output = Result<T, ReplicaRefusal>>,
{
    let mut refusals = Refusals::default();
    for addr in addrs {
        let answer = match channels.get(addr) {
            Ok(channel) => ask(channel).await,
            Err(e) => Err(e.into()),
        };
        match answer {
            Ok(value) => return Ok(value),
            Err(refusal) => refusals.0.push((addr.to_string(), refusal)),
        }
    }
    Err(refusals)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(group: u64) -> Vec<Member> {
        vec![Member { node_id: 1, addr: format!("127.0.0.{group}:7100") }]
    }

    #[test]
    fn a_group_without_config_looks_for_where_it_joined() {
        assert_eq!(plan(&GroupShards::new(1, 4)), Plan::Start);
    }

    #[test]
    fn a_settled_group_looks_for_the_next_config() {
        let mut group = GroupShards::new(1, 4);
        group.config.num = 3;
        group.shards.insert(0, ShardState::Serving);
        assert_eq!(plan(&group), Plan::FetchConfig { num: 4 });
    }

    #[test]
    fn an_unsettled_group_pulls_and_hands_off_at_its_config() {
        let mut group = GroupShards::new(1, 4);
        group.config.num = 3;
        group.shards.insert(0, ShardState::Serving);
        group.shards.insert(1, ShardState::Pulling { from: 2, members: members(2) });
        group.shards.insert(2, ShardState::BePulled { to: 3, members: members(3) });
        group.shards.insert(3, ShardState::CatchingUp { from: 2, members: members(2) });
        group.shards.insert(4, ShardState::Copied { config_num: 4, from: 2 });
        assert_eq!(
            plan(&group),
            Plan::Move {
                config_num: 3,
                pulls: vec![Transfer { shard: 1, group: 2, members: members(2) }],
                catch_ups: vec![Transfer { shard: 3, group: 2, members: members(2) }],
                handoffs: vec![Transfer { shard: 2, group: 3, members: members(3) }],
            }
        );
    }

    #[test]
    fn refusals_name_every_replica_asked() {
        let refusals = Refusals(vec![
            ("a:1".into(), tonic::Status::unavailable("down").into()),
            ("b:2".into(), ReplicaRefusal::NotYet("not installed")),
        ]);
        assert_eq!(refusals.to_string(), "a:1: down; b:2: not installed");
        assert_eq!(Refusals::default().to_string(), "no replica to ask");
    }
}
