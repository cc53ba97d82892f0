//! Applying committed commands: reads see earlier writes of the same batch through an
//! overlay, and everything a batch changes lands in one RocksDB WriteBatch.

use std::collections::HashMap;
use std::io;
use std::sync::PoisonError;

use rocksdb::DB;
use rocksdb::IteratorMode;
use rocksdb::ReadOptions;
use rocksdb::WriteBatch;

use super::records::check_chunk;
use super::records::check_deleted;
use super::session;
use super::session::CLOCK_KEY;
use super::session::Dedup;
use super::session::Session;
use super::session::SessionClock;
use super::session_cache::SessionCache;
use super::sharding::Sharding;
use super::sharding::SharedSharding;
use super::sharding::write_config;
use crate::meta::MetaChange;
use crate::meta::next_config;
use crate::migration::Admission;
use crate::migration::ConfigRefusal;
use crate::migration::GroupShards;
use crate::storage::CF_DATA;
use crate::storage::CF_SESSIONS;
use crate::storage::CF_SHARDS;
use crate::storage::cf;
use crate::storage::io_err;
use crate::storage::keys::change_key;
use crate::storage::keys::change_range;
use crate::storage::keys::data_key;
use crate::storage::keys::session_key;
use crate::storage::keys::shard_range;
use crate::types::Command;
use crate::types::Op;
use crate::types::OpResult;
use crate::types::Record;
use crate::types::Refusal;
use crate::types::ShardId;
use crate::types::decode;
use crate::types::encode;

/// What a written batch changed that lives outside RocksDB too.
pub struct Applied {
    /// The sharding state, when the batch changed it.
    sharding: Option<Sharding>,
    sessions: HashMap<[u8; 12], Session>,
    sessions_dropped: bool,
}

impl Applied {
    /// Makes the batch's changes visible: the sharding state to request handlers, the sessions
    /// to the next batches. Call only after the batch is written.
    pub fn publish(self, shared: &SharedSharding, cached_sessions: &mut SessionCache) {
        if let Some(next) = self.sharding {
            *shared.write().unwrap_or_else(PoisonError::into_inner) = next;
        }
        cached_sessions.written(self.sessions, self.sessions_dropped);
    }
}

/// A slice of a shard pulled from its previous owner.
struct Pulled<'a> {
    config_num: u64,
    data: &'a [Record],
    /// User keys the previous owner deleted since the copy this pull completes.
    deleted: &'a [serde_bytes::ByteBuf],
    sessions: &'a [Record],
    last: bool,
}

pub struct ApplyBatch<'a> {
    db: &'a DB,
    batch: WriteBatch,
    data: HashMap<Vec<u8>, Option<Vec<u8>>>,
    /// Sessions this batch wrote (a deleted one as a default session).
    sessions: HashMap<[u8; 12], Session>,
    /// Sessions as of the previous batch, where they are cached; this batch takes the ones it
    /// reads and gives them back (changed or not) in `sessions`.
    cached_sessions: &'a mut SessionCache,
    /// Shards this batch dropped (their data and sessions deleted by range): what RocksDB and
    /// the session cache still hold of them is gone for the rest of the batch.
    dropped_shards: Vec<[u8; 4]>,
    /// The session clock as changed by this batch.
    clock: Option<SessionClock>,
    shared: &'a SharedSharding,
    /// The sharding state as changed by this batch; published only after the batch is written.
    sharding: Option<Sharding>,
}

impl<'a> ApplyBatch<'a> {
    pub fn new(db: &'a DB, shared: &'a SharedSharding, cached_sessions: &'a mut SessionCache) -> Self {
        Self {
            db,
            batch: WriteBatch::default(),
            data: HashMap::new(),
            sessions: HashMap::new(),
            cached_sessions,
            dropped_shards: Vec::new(),
            clock: None,
            shared,
            sharding: None,
        }
    }

    /// Applies `cmd`, the entry at log `index`.
    pub fn apply(&mut self, index: u64, cmd: &Command) -> io::Result<OpResult> {
        match &cmd.op {
            Op::Put { .. } | Op::Delete { .. } | Op::CompareAndSwap { .. } => self.apply_data(index, cmd),
            Op::Meta(change) => self.apply_meta(change),
            Op::ApplyConfig { config } => {
                let mut discarded = Vec::new();
                let result = self.change_config(config.num, "applied config", |group| {
                    discarded = group.apply_config(config.clone())?;
                    Ok(())
                });
                for shard in discarded {
                    tracing::info!(
                        shard,
                        config = config.num,
                        "deleted a copy taken ahead of a move that did not use it"
                    );
                    self.delete_shard(shard)?;
                }
                Ok(result)
            }
            Op::StartAfter { baseline } => {
                Ok(self.change_config(baseline.num, "started after config, owning nothing", |group| {
                    group.start_after(baseline.clone())
                }))
            }
            Op::InstallChunk { config_num, data, sessions, last } => {
                let pulled = Pulled { config_num: *config_num, data, deleted: &[], sessions, last: *last };
                let accepted = self.sharding_view(|s| s.group.accepts_chunk(*config_num, cmd.shard));
                self.install(index, cmd.shard, accepted, pulled)
            }
            Op::InstallChanges { config_num, data, deleted, sessions, last } => {
                let pulled = Pulled { config_num: *config_num, data, deleted, sessions, last: *last };
                let accepted = self.sharding_view(|s| s.group.accepts_changes(*config_num, cmd.shard));
                self.install(index, cmd.shard, accepted, pulled)
            }
            Op::DropShard { config_num } => {
                if self.sharding_mut().group.finish_handoff(*config_num, cmd.shard) {
                    self.delete_shard(cmd.shard)?;
                    tracing::info!(shard = cmd.shard, config = config_num, "deleted a shard its new owner installed");
                }
                Ok(OpResult::Applied)
            }
            Op::TrackChanges { config_num } => Ok(self.track_changes(cmd.shard, *config_num)),
            Op::BeginCopy { config_num } => {
                if !self.sharding_mut().group.begin_copy(*config_num, cmd.shard, index) {
                    return Ok(OpResult::Refused(Refusal::CannotCopy { shard: cmd.shard, config_num: *config_num }));
                }
                self.delete_shard(cmd.shard)?;
                tracing::info!(shard = cmd.shard, config = config_num, "copying a shard ahead of its move here");
                Ok(OpResult::Applied)
            }
            Op::CopyChunk { config_num, begun_at, data } => self.copy_chunk(cmd.shard, *config_num, *begun_at, data),
            Op::IngestCopy { .. } => unreachable!("the state machine ingests copy files outside a batch"),
            Op::DiscardCopy { config_num } => {
                if !self.sharding_mut().group.discard_copy(*config_num, cmd.shard) {
                    return Ok(OpResult::Refused(Refusal::NoCopy { shard: cmd.shard, config_num: *config_num }));
                }
                self.delete_shard(cmd.shard)?;
                tracing::warn!(
                    shard = cmd.shard,
                    config = config_num,
                    "deleted a copy without changes; pulling it whole"
                );
                Ok(OpResult::Applied)
            }
            Op::FinishCopy { config_num, begun_at } => {
                if !self.sharding_mut().group.finish_copy(*config_num, *begun_at, cmd.shard) {
                    return Ok(OpResult::Refused(Refusal::NoCopy { shard: cmd.shard, config_num: *config_num }));
                }
                tracing::info!(shard = cmd.shard, config = config_num, "copied a shard ahead of its move here");
                Ok(OpResult::Applied)
            }
            Op::SessionClock { now_ms, expiry_ms } => {
                self.tick_clock(index, *now_ms, *expiry_ms)?;
                Ok(OpResult::Applied)
            }
        }
    }

    /// The batch to write, and what it changed, to publish once it is written.
    pub fn finish(mut self) -> (WriteBatch, Applied) {
        if let Some(sharding) = &self.sharding {
            sharding.write_group(self.db, &mut self.batch);
        }
        let sessions_dropped = !self.dropped_shards.is_empty();
        let applied = Applied { sharding: self.sharding, sessions: self.sessions, sessions_dropped };
        (self.batch, applied)
    }

    fn sharding_mut(&mut self) -> &mut Sharding {
        let shared = self.shared;
        self.sharding.get_or_insert_with(|| shared.read().unwrap_or_else(PoisonError::into_inner).clone())
    }

    /// A change of this group's config, refused as the entry's result when the state does not
    /// allow it (the same on every replica).
    fn change_config(
        &mut self,
        num: u64,
        done: &str,
        change: impl FnOnce(&mut GroupShards) -> Result<(), ConfigRefusal>,
    ) -> OpResult {
        if let Err(refusal) = change(&mut self.sharding_mut().group) {
            tracing::warn!(?refusal, config = num, "config change refused");
            return OpResult::Refused(refusal.into());
        }
        tracing::info!(config = num, "{done}");
        OpResult::Config { num }
    }

    /// Reads the sharding state as this batch has it so far.
    fn sharding_view<T>(&self, read: impl FnOnce(&Sharding) -> T) -> T {
        match &self.sharding {
            Some(sharding) => read(sharding),
            None => read(&self.shared.read().unwrap_or_else(PoisonError::into_inner)),
        }
    }

    /// Deletes everything this replica holds of `shard`: data, sessions, and the changes
    /// recorded for a copy of it. For the rest of the batch, reads of it find nothing.
    fn delete_shard(&mut self, shard: ShardId) -> io::Result<()> {
        let (start, end) = shard_range(shard);
        // No range tombstone where there is no data: flushed before the first copy file of a
        // move here is ingested, it would overlap every file of the copy, which would then go
        // to L0 instead of the last level, and a compaction would write them all again.
        if self.holds_data(&start, &end)? {
            self.batch.delete_range_cf(cf(self.db, CF_DATA), start, end);
        }
        self.batch.delete_range_cf(cf(self.db, CF_SESSIONS), start, end);
        self.sessions.retain(|key, _| !key.starts_with(&start));
        self.data.retain(|key, _| !key.starts_with(&start));
        self.dropped_shards.push(start);
        if self.sharding_view(|s| s.copied_out.contains_key(&shard)) {
            self.sharding_mut().copied_out.remove(&shard);
            self.delete_changes(shard);
        }
        Ok(())
    }

    /// Whether the shard whose data keys run from `start` to `end` holds data, as this batch
    /// has it so far.
    fn holds_data(&self, start: &[u8; 4], end: &[u8; 4]) -> io::Result<bool> {
        if self.data.keys().any(|key| key.starts_with(start)) {
            return Ok(true);
        }
        if self.dropped_shards.contains(start) {
            return Ok(false);
        }
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(end.to_vec());
        let mut keys = self.db.raw_iterator_cf_opt(cf(self.db, CF_DATA), opts);
        keys.seek(start);
        keys.status().map_err(io_err)?;
        Ok(keys.valid())
    }

    fn delete_changes(&mut self, shard: ShardId) {
        let (start, end) = change_range(shard);
        self.batch.delete_range_cf(cf(self.db, CF_SHARDS), start, end);
    }

    /// Starts recording the keys written to `shard`, which its owner at `config_num` (the next
    /// config) is copying. Repeated for the same move, it changes nothing: the keys recorded
    /// since the first time cover every later copy too.
    fn track_changes(&mut self, shard: ShardId, config_num: u64) -> OpResult {
        let (serving, tracked) = self.sharding_view(|s| {
            let next = s.group.config_num() + 1 == config_num;
            (next && s.group.admission(shard) == Admission::Serve, s.copied_out.get(&shard).copied())
        });
        if !serving {
            return OpResult::Refused(Refusal::NotServedAhead { shard, config_num });
        }
        if tracked != Some(config_num) {
            // Left from a copy for another move, which cannot be pulled from any more.
            if tracked.is_some() {
                self.delete_changes(shard);
            }
            self.sharding_mut().copied_out.insert(shard, config_num);
            tracing::info!(shard, config = config_num, "recording changes to a shard its next owner is copying");
        }
        OpResult::Applied
    }

    fn copy_chunk(&mut self, shard: ShardId, config_num: u64, begun_at: u64, data: &[Record]) -> io::Result<OpResult> {
        if !self.sharding_view(|s| s.group.accepts_copy(config_num, begun_at, shard)) {
            return Ok(OpResult::Refused(Refusal::TakesNoCopy { shard, config_num }));
        }
        if let Err(refusal) = check_chunk(data, &[]) {
            return Ok(OpResult::Refused(Refusal::BadCopy { shard, config_num, reason: refusal }));
        }
        for record in data {
            self.write(data_key(shard, &record.key), Some(record.value.clone()));
        }
        Ok(OpResult::Applied)
    }

    fn apply_meta(&mut self, change: &MetaChange) -> io::Result<OpResult> {
        let latest = &self.sharding_mut().latest;
        let current = latest.num;
        Ok(match next_config(latest, change) {
            Ok(None) => OpResult::Config { num: current },
            Ok(Some(next)) => {
                tracing::info!(config = next.num, ?change, "new shard map");
                write_config(self.db, &mut self.batch, &next);
                let num = next.num;
                self.sharding_mut().latest = next;
                OpResult::Config { num }
            }
            Err(e) => OpResult::Refused(e.into()),
        })
    }

    /// Writes a pulled slice of `shard` (all of it, or its changes since a copy) if `accepted`.
    fn install(&mut self, index: u64, shard: ShardId, accepted: bool, pulled: Pulled<'_>) -> io::Result<OpResult> {
        let config_num = pulled.config_num;
        if !accepted {
            return Ok(OpResult::Refused(Refusal::TakesNoChunk { shard, config_num }));
        }
        // Content is checked before anything is written: a bad chunk is a no-op with a reason,
        // the same on every replica; failing apply would stop Raft on all of them.
        let decoded =
            match check_chunk(pulled.data, pulled.sessions).and_then(|d| check_deleted(pulled.deleted).map(|()| d)) {
                Ok(decoded) => decoded,
                Err(refusal) => {
                    tracing::warn!(shard, config = config_num, reason = %refusal, "refused a shard chunk");
                    return Ok(OpResult::Refused(Refusal::BadChunk { shard, config_num, reason: refusal }));
                }
            };
        // Through the overlay, so operations later in this batch read what the chunk wrote.
        for record in pulled.data {
            self.write(data_key(shard, &record.key), Some(record.value.clone()));
        }
        for key in pulled.deleted {
            self.write(data_key(shard, key), None);
        }
        // Stored in the current format and active from now on: the previous owner's log indexes
        // mean nothing in this group's log.
        for (client_id, mut session) in decoded {
            let key = session_key(shard, client_id);
            session.touch(index);
            self.batch.put_cf(cf(self.db, CF_SESSIONS), key, session.to_bytes());
            self.sessions.insert(key, session);
        }
        if pulled.last {
            self.sharding_mut().group.finish_pull(config_num, shard);
            tracing::info!(shard, config = config_num, "shard installed; serving it");
        }
        Ok(OpResult::Applied)
    }

    fn apply_data(&mut self, index: u64, cmd: &Command) -> io::Result<OpResult> {
        // Ownership first: a refused request must leave no trace in the session table, because
        // the session moves with the shard and the new owner must execute the retry.
        let (admission, tracked) =
            self.sharding_view(|s| (s.group.admission(cmd.shard), s.copied_out.contains_key(&cmd.shard)));
        match admission {
            Admission::Serve => {}
            Admission::MovingIn => return Ok(OpResult::MovingIn),
            Admission::WrongGroup { config_num } => return Ok(OpResult::WrongGroup { config_num }),
        }
        // The shard's next owner holds a copy: it pulls the keys written since.
        if tracked {
            let key = change_key(cmd.shard, cmd.op.key().unwrap_or_default());
            self.batch.put_cf(cf(self.db, CF_SHARDS), key, []);
        }
        let Some(tag) = cmd.session else {
            return self.execute(cmd);
        };
        let key = session_key(cmd.shard, tag.client_id);
        let mut session = self.session(&key)?;
        let answered = match session.check(tag.seq) {
            Dedup::Duplicate(cached) => Some(cached.result(&cmd.op)),
            Dedup::Expired => Some(OpResult::SessionExpired),
            Dedup::Evicted => Some(OpResult::ResponseEvicted),
            Dedup::Fresh => None,
        };
        if let Some(result) = answered {
            // Unchanged, but it may have been taken from the cache: the batch gives it back.
            self.sessions.insert(key, session);
            return Ok(result);
        }
        let result = self.execute(cmd)?;
        session.record(tag.seq, tag.first_unacked, &result, index);
        self.batch.put_cf(cf(self.db, CF_SESSIONS), key, session.to_bytes());
        self.sessions.insert(key, session);
        Ok(result)
    }

    fn execute(&mut self, cmd: &Command) -> io::Result<OpResult> {
        let key = data_key(cmd.shard, cmd.op.key().unwrap_or_default());
        Ok(match &cmd.op {
            Op::Put { value, .. } => {
                self.write(key, Some(value.clone()));
                OpResult::Put
            }
            Op::Delete { .. } => {
                let existed = self.read(&key)?.is_some();
                if existed {
                    self.write(key, None);
                }
                OpResult::Delete { existed }
            }
            Op::CompareAndSwap { expected, new_value, .. } => {
                let previous = self.read(&key)?;
                let succeeded = previous == *expected;
                if succeeded {
                    self.write(key, Some(new_value.clone()));
                }
                OpResult::CompareAndSwap { succeeded, previous }
            }
            _ => unreachable!("only data operations are executed against the data"),
        })
    }

    fn read(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        match self.data.get(key) {
            Some(pending) => Ok(pending.clone()),
            None if self.dropped_in_this_batch(key) => Ok(None),
            None => self.db.get_cf(cf(self.db, CF_DATA), key).map_err(io_err),
        }
    }

    /// Whether `key` (shard-prefixed) belongs to a shard this batch dropped.
    fn dropped_in_this_batch(&self, key: &[u8]) -> bool {
        self.dropped_shards.iter().any(|prefix| key.starts_with(prefix))
    }

    fn write(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        let data_cf = cf(self.db, CF_DATA);
        match &value {
            Some(v) => self.batch.put_cf(data_cf, &key, v),
            None => self.batch.delete_cf(data_cf, &key),
        }
        self.data.insert(key, value);
    }

    fn session(&mut self, key: &[u8; 12]) -> io::Result<Session> {
        if let Some(s) = self.sessions.get(key) {
            return Ok(s.clone());
        }
        if self.dropped_in_this_batch(key) {
            return Ok(Session::default());
        }
        // Once this batch dropped a shard, the cache may hold sessions RocksDB is about to lose.
        if self.dropped_shards.is_empty()
            && let Some(s) = self.cached_sessions.take(key)
        {
            return Ok(s);
        }
        match self.db.get_cf(cf(self.db, CF_SESSIONS), key).map_err(io_err)? {
            Some(bytes) => Session::from_bytes(&bytes),
            None => Ok(Session::default()),
        }
    }

    /// Advances the session clock with the clock entry at `index` and deletes the sessions it
    /// says are expired.
    fn tick_clock(&mut self, index: u64, now_ms: u64, expiry_ms: u64) -> io::Result<()> {
        let mut clock = match self.clock.take() {
            Some(clock) => clock,
            None => match self.db.get_cf(cf(self.db, CF_SHARDS), CLOCK_KEY).map_err(io_err)? {
                Some(bytes) => decode(&bytes)?,
                None => SessionClock::default(),
            },
        };
        let cutoff = clock.tick(index, now_ms, expiry_ms);
        self.batch.put_cf(cf(self.db, CF_SHARDS), CLOCK_KEY, encode(&clock));
        self.clock = Some(clock);
        if let Some(cutoff) = cutoff {
            self.expire_sessions(cutoff)?;
        }
        Ok(())
    }

    /// Deletes every session last active below log index `cutoff`. A full scan, but only when
    /// the cutoff moves (about every expiry/64), and it decodes one word of each session.
    fn expire_sessions(&mut self, cutoff: u64) -> io::Result<()> {
        let sessions_cf = cf(self.db, CF_SESSIONS);
        let mut expired: Vec<[u8; 12]> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.last_active() < cutoff && **s != Session::default())
            .map(|(key, _)| *key)
            .collect();
        for item in self.db.iterator_cf(sessions_cf, IteratorMode::Start) {
            let (key, value) = item.map_err(io_err)?;
            if let Ok(key) = <[u8; 12]>::try_from(&*key)
                && !self.sessions.contains_key(&key)
                && session::last_active_in(&value) < cutoff
            {
                expired.push(key);
            }
        }
        for key in &expired {
            self.batch.delete_cf(sessions_cf, key);
            self.sessions.insert(*key, Session::default());
        }
        if !expired.is_empty() {
            tracing::info!(sessions = expired.len(), before_index = cutoff, "expired idle client sessions");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::RwLock;

    use super::*;
    use crate::meta::Config;
    use crate::meta::Member;
    use crate::migration::ShardState;
    use crate::state_machine::sharding::Role;

    const SHARD: ShardId = 1;
    const CONFIG: u64 = 4;

    /// A data group at config 4 pulling shard 1.
    fn pulling() -> SharedSharding {
        let mut group = GroupShards::new(2, 4);
        group.config.num = CONFIG;
        let members = vec![Member { node_id: 1, addr: "127.0.0.1:7100".into() }];
        group.shards.insert(SHARD, ShardState::Pulling { from: 1, members });
        let role = Role::Sharded { group: 2 };
        Arc::new(RwLock::new(Sharding { role, group, latest: Config::initial(4), copied_out: Default::default() }))
    }

    fn record(key: &[u8], value: &[u8]) -> Record {
        Record { key: key.to_vec(), value: value.to_vec() }
    }

    fn chunk(sessions: Vec<Record>, last: bool) -> Command {
        let data = vec![record(b"pulled", b"value")];
        Command { session: None, shard: SHARD, op: Op::InstallChunk { config_num: CONFIG, data, sessions, last } }
    }

    #[test]
    fn a_chunk_with_bad_content_is_refused_as_a_no_op() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::storage::open_db(dir.path()).unwrap();
        let shared = pulling();
        let mut cache = SessionCache::default();
        let mut batch = ApplyBatch::new(&db, &shared, &mut cache);
        let bad_sessions = [
            (vec![record(&7u64.to_be_bytes(), b"not a session")], "the session of client 7 does not decode"),
            (vec![record(b"short", &Session::default().to_bytes())], "a session record's key is 5 bytes"),
        ];
        for (sessions, problem) in bad_sessions {
            let result = batch.apply(5, &chunk(sessions, true)).expect("bad content never fails apply");
            let OpResult::Refused(refusal @ Refusal::BadChunk { shard: SHARD, config_num: CONFIG, .. }) = result else {
                panic!("applied as {result:?}")
            };
            let message = refusal.to_string();
            assert!(message.starts_with("shard 1 chunk for config 4: ") && message.contains(problem), "{message}");
        }
        let (write_batch, applied) = batch.finish();
        db.write(write_batch).unwrap();
        let sharding = applied.sharding;
        assert_eq!(
            db.get_cf(cf(&db, CF_DATA), data_key(SHARD, b"pulled")).unwrap(),
            None,
            "a refused chunk writes nothing"
        );
        assert_eq!(db.get_cf(cf(&db, CF_SESSIONS), session_key(SHARD, 7)).unwrap(), None);
        assert!(sharding.is_none_or(|s| s.group.shards[&SHARD] != ShardState::Serving), "and does not finish the pull");

        // A good chunk after the bad ones still installs.
        let mut batch = ApplyBatch::new(&db, &shared, &mut cache);
        let good = vec![record(&7u64.to_be_bytes(), &Session::default().to_bytes())];
        assert_eq!(batch.apply(6, &chunk(good, true)).unwrap(), OpResult::Applied);
        let (write_batch, applied) = batch.finish();
        db.write(write_batch).unwrap();
        assert_eq!(applied.sharding.unwrap().group.shards[&SHARD], ShardState::Serving);
        assert_eq!(db.get_cf(cf(&db, CF_DATA), data_key(SHARD, b"pulled")).unwrap().as_deref(), Some(&b"value"[..]));
    }

    /// Applies `cmd` at `index` in a batch of its own and publishes it, as the state machine does.
    fn apply_alone(db: &DB, shared: &SharedSharding, cache: &mut SessionCache, index: u64, cmd: &Command) -> OpResult {
        let mut batch = ApplyBatch::new(db, shared, cache);
        let result = batch.apply(index, cmd).unwrap();
        let (write_batch, applied) = batch.finish();
        db.write(write_batch).unwrap();
        applied.publish(shared, cache);
        result
    }

    /// A put of key `k` as seq 1 of session 7.
    fn first_put_of_session_7(value: &[u8]) -> Command {
        Command {
            session: Some(crate::types::SessionTag { client_id: 7, seq: 1, first_unacked: 1 }),
            shard: SHARD,
            op: Op::Put { key: b"k".to_vec(), value: value.to_vec() },
        }
    }

    /// The session cache never answers for a session RocksDB no longer holds: a shard handed
    /// away and pulled back without its old session executes that session's next write afresh.
    #[test]
    fn a_dropped_shard_takes_its_cached_sessions_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::storage::open_db(dir.path()).unwrap();
        let shared = pulling();
        let mut cache = SessionCache::default();
        let read = |db: &DB| db.get_cf(cf(db, CF_DATA), data_key(SHARD, b"k")).unwrap();
        assert_eq!(apply_alone(&db, &shared, &mut cache, 1, &chunk(vec![], true)), OpResult::Applied);
        assert_eq!(apply_alone(&db, &shared, &mut cache, 2, &first_put_of_session_7(b"first")), OpResult::Put);
        assert_eq!(apply_alone(&db, &shared, &mut cache, 3, &first_put_of_session_7(b"retry")), OpResult::Put);
        assert_eq!(read(&db).as_deref(), Some(&b"first"[..]), "a retry is answered from the session");

        let to = vec![Member { node_id: 9, addr: "127.0.0.1:7200".into() }];
        shared.write().unwrap().group.shards.insert(SHARD, ShardState::BePulled { to: 3, members: to });
        let drop = Command { session: None, shard: SHARD, op: Op::DropShard { config_num: CONFIG } };
        assert_eq!(apply_alone(&db, &shared, &mut cache, 4, &drop), OpResult::Applied);
        assert_eq!(read(&db), None);

        let from = vec![Member { node_id: 9, addr: "127.0.0.1:7200".into() }];
        shared.write().unwrap().group.shards.insert(SHARD, ShardState::Pulling { from: 3, members: from });
        assert_eq!(apply_alone(&db, &shared, &mut cache, 5, &chunk(vec![], true)), OpResult::Applied);
        assert_eq!(apply_alone(&db, &shared, &mut cache, 6, &first_put_of_session_7(b"again")), OpResult::Put);
        assert_eq!(read(&db).as_deref(), Some(&b"again"[..]), "the session came back empty, so seq 1 is new");
    }

    /// Dropping a shard that holds nothing leaves no range tombstone, which would overlap the
    /// files of a later copy of it and keep them out of the last level.
    #[test]
    fn a_copy_into_a_shard_that_held_nothing_is_ingested_into_the_last_level() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::storage::open_db(&dir.path().join("db")).unwrap();
        let files = crate::state_machine::copy_files::CopyFiles::open(dir.path().join("copies"), 1).unwrap();
        let shared = pulling();
        let mut cache = SessionCache::default();
        let to = vec![Member { node_id: 9, addr: "127.0.0.1:7200".into() }];
        shared.write().unwrap().group.shards.insert(SHARD, ShardState::BePulled { to: 3, members: to });
        let drop = Command { session: None, shard: SHARD, op: Op::DropShard { config_num: CONFIG } };
        assert_eq!(apply_alone(&db, &shared, &mut cache, 1, &drop), OpResult::Applied);
        crate::storage::flush_state_machine(&db).unwrap();

        let key = data_key(SHARD, b"copied");
        let file = files.build(SHARD, CONFIG, [(key.as_slice(), b"value".as_slice())]).unwrap();
        files.ingest(&db, &file).unwrap();
        let data_files: Vec<_> =
            db.live_files().unwrap().into_iter().filter(|f| f.column_family_name == CF_DATA).collect();
        let levels: Vec<i32> = data_files.iter().map(|f| f.level).collect();
        assert_eq!(levels, [6], "only the copied file, in the last level");
        assert_eq!(db.get_cf(cf(&db, CF_DATA), &key).unwrap().as_deref(), Some(&b"value"[..]));
    }

    /// The same within one batch: a drop, the shard's return and a write of its old session.
    #[test]
    fn a_shard_dropped_and_pulled_back_in_one_batch_forgets_its_cached_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::storage::open_db(dir.path()).unwrap();
        let shared = pulling();
        let mut cache = SessionCache::default();
        assert_eq!(apply_alone(&db, &shared, &mut cache, 1, &chunk(vec![], true)), OpResult::Applied);
        assert_eq!(apply_alone(&db, &shared, &mut cache, 2, &first_put_of_session_7(b"first")), OpResult::Put);

        let members = vec![Member { node_id: 9, addr: "127.0.0.1:7200".into() }];
        shared.write().unwrap().group.shards.insert(SHARD, ShardState::BePulled { to: 3, members: members.clone() });
        let mut batch = ApplyBatch::new(&db, &shared, &mut cache);
        let drop = Command { session: None, shard: SHARD, op: Op::DropShard { config_num: CONFIG } };
        assert_eq!(batch.apply(3, &drop).unwrap(), OpResult::Applied);
        batch.sharding_mut().group.shards.insert(SHARD, ShardState::Pulling { from: 3, members });
        assert_eq!(batch.apply(4, &chunk(vec![], true)).unwrap(), OpResult::Applied);
        assert_eq!(batch.apply(5, &first_put_of_session_7(b"again")).unwrap(), OpResult::Put);
        let (write_batch, applied) = batch.finish();
        db.write(write_batch).unwrap();
        applied.publish(&shared, &mut cache);
        assert_eq!(
            db.get_cf(cf(&db, CF_DATA), data_key(SHARD, b"k")).unwrap().as_deref(),
            Some(&b"again"[..]),
            "seq 1 of the returned shard is new, not answered from the dropped session"
        );
    }
}
