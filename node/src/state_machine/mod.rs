//! The persistent state machine (openraft `RaftStateMachine`) and its snapshots.
//!
//! State lives in RocksDB: applying a batch writes data, sessions and `last_applied` in one
//! WriteBatch, without the WAL (the Raft log holds every applied entry); a restart resumes
//! from the last flush of these column families and re-applies the log from there, without
//! replaying a snapshot. Snapshots are RocksDB checkpoints of these column families (see
//! `checkpoint`), packed into one stream to travel (see `snapshot_archive`).

mod apply;
pub mod checkpoint;
pub mod copy_files;
pub mod records;
pub mod session;
mod session_cache;
pub mod sharding;
pub mod snapshot_archive;
mod snapshot_store;

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::PoisonError;

use futures::Stream;
use futures::TryStreamExt;
use openraft::EntryPayload;
use openraft::OptionalSend;
use openraft::RaftSnapshotBuilder;
use openraft::storage::EntryResponder;
use openraft::storage::RaftStateMachine;
use rocksdb::DB;
use rocksdb::WriteBatch;
use rocksdb::WriteOptions;
pub use snapshot_store::SnapshotDir;
pub use snapshot_store::SnapshotStore;

use self::apply::Applied;
use self::apply::ApplyBatch;
use self::checkpoint::RecordKind;
use self::checkpoint::SnapshotHeader;
use self::copy_files::CopyFiles;
use self::session::Session;
use self::session_cache::SessionCache;
use self::sharding::Role;
use self::sharding::Sharding;
use self::sharding::SharedSharding;
use crate::metrics::NodeMetrics;
use crate::storage::CF_DATA;
use crate::storage::CF_SESSIONS;
use crate::storage::CF_SHARDS;
use crate::storage::CF_SM_META;
use crate::storage::cf;
use crate::storage::io_err;
use crate::storage::keys::SHARD_KEYS_END;
use crate::types::Command;
use crate::types::LogId;
use crate::types::Op;
use crate::types::OpResult;
use crate::types::Refusal;
use crate::types::Snapshot;
use crate::types::SnapshotMeta;
use crate::types::StoredMembership;
use crate::types::TypeConfig;
use crate::types::decode;
use crate::types::encode;

const APPLIED_KEY: &[u8] = b"last_applied";
const MEMBERSHIP_KEY: &[u8] = b"membership";
/// Set while a snapshot is being loaded; a restart finds it and loads that snapshot again.
const INSTALLING_KEY: &[u8] = b"installing_snapshot";

/// Snapshot loads are written in batches of about this size.
const INSTALL_BATCH_BYTES: usize = 4 << 20;

pub struct StateMachine {
    db: Arc<DB>,
    snapshots: SnapshotStore,
    copy_files: CopyFiles,
    applied: Option<LogId>,
    membership: StoredMembership,
    sharding: SharedSharding,
    sessions: SessionCache,
    shards: u32,
    metrics: Arc<NodeMetrics>,
    /// Held while a snapshot is loaded and while a checkpoint is made, so that no checkpoint
    /// catches an install half done (an install writes in batches; a build runs beside the
    /// state machine's task).
    install_lock: Arc<Mutex<()>>,
}

impl StateMachine {
    pub fn open(
        db: Arc<DB>,
        snapshots: SnapshotStore,
        copy_files: CopyFiles,
        role: Role,
        shards: u32,
        metrics: Arc<NodeMetrics>,
    ) -> io::Result<Self> {
        let meta_cf = cf(&db, CF_SM_META);
        if let Some(name) = db.get_cf(meta_cf, INSTALLING_KEY).map_err(io_err)? {
            let path = snapshots.dir().join(String::from_utf8_lossy(&name).as_ref());
            if !path.is_dir() {
                // Only a version that wrote snapshots as record files could have left this.
                return Err(io::Error::other(format!(
                    "a snapshot install was interrupted, and the snapshot it loaded ({}) is not a checkpoint \
                     directory (a snapshot file of an earlier version, removed at start): this replica's state \
                     is part of one; move the data directory aside so that the replica rejoins empty and \
                     catches up from the others",
                    path.display()
                )));
            }
            tracing::warn!(snapshot = %path.display(), "a snapshot install was interrupted; loading it again");
            load_snapshot(&db, &path)?;
        }
        let (applied, membership) = read_applied_state(|key| db.get_cf(meta_cf, key))?;
        let sharding = Arc::new(std::sync::RwLock::new(Sharding::load(&db, role, shards)?));
        Ok(Self {
            db,
            snapshots,
            copy_files,
            applied,
            membership,
            sharding,
            sessions: SessionCache::default(),
            shards,
            metrics,
            install_lock: Arc::default(),
        })
    }

    /// The sharding state as of the last applied entry, shared with request handlers.
    pub fn sharding(&self) -> SharedSharding {
        self.sharding.clone()
    }
}

fn read_applied_state(
    get: impl Fn(&[u8]) -> Result<Option<Vec<u8>>, rocksdb::Error>,
) -> io::Result<(Option<LogId>, StoredMembership)> {
    let applied = get(APPLIED_KEY).map_err(io_err)?.map(|b| decode::<Option<LogId>>(&b)).transpose()?.flatten();
    let membership = get(MEMBERSHIP_KEY).map_err(io_err)?.map(|b| decode(&b)).transpose()?;
    Ok((applied, membership.unwrap_or_default()))
}

/// Records the last applied log id, and the membership when it changed (`None`: it did not;
/// the stored one stays right).
pub(crate) fn put_applied_state(
    db: &DB,
    batch: &mut WriteBatch,
    applied: &Option<LogId>,
    membership: Option<&StoredMembership>,
) {
    let meta_cf = cf(db, CF_SM_META);
    batch.put_cf(meta_cf, APPLIED_KEY, encode(applied));
    if let Some(membership) = membership {
        batch.put_cf(meta_cf, MEMBERSHIP_KEY, encode(membership));
    }
}

/// Writes a finished apply batch with the applied state it reaches, then makes its changes
/// visible.
fn write_applied(
    db: &DB,
    (mut write_batch, changed): (WriteBatch, Applied),
    applied: &Option<LogId>,
    membership: Option<&StoredMembership>,
    shared: &SharedSharding,
    sessions: &mut SessionCache,
) -> io::Result<()> {
    put_applied_state(db, &mut write_batch, applied, membership);
    // Without the WAL: every entry here is in the Raft log, which is durable, and a crash
    // re-applies from the last flush (see storage::flush_state_machine). This halves what
    // each write puts in the WAL and fsyncs.
    let mut opts = WriteOptions::default();
    opts.disable_wal(true);
    db.write_opt(write_batch, &opts).map_err(io_err)?;
    changed.publish(shared, sessions);
    Ok(())
}

/// Applies an `IngestCopy` entry: ingests its file if the copy it belongs to still takes data
/// (the same answer on every replica), refuses it otherwise.
fn ingest_copy(db: &DB, files: &CopyFiles, shared: &SharedSharding, cmd: &Command) -> io::Result<OpResult> {
    let Op::IngestCopy { config_num, begun_at, file, .. } = &cmd.op else {
        unreachable!("only IngestCopy entries name a copy file")
    };
    let accepted =
        shared.read().unwrap_or_else(PoisonError::into_inner).group.accepts_copy(*config_num, *begun_at, cmd.shard);
    if !accepted {
        return Ok(OpResult::Refused(Refusal::TakesNoCopy { shard: cmd.shard, config_num: *config_num }));
    }
    // Everything applied before this entry becomes durable first. The ingested data is durable
    // at once, later writes only at the next flush: after a crash the state machine is the last
    // flush plus the ingested files, and applying the log again starts at this entry at the
    // latest, so no entry re-applied before it can read data ingested after it. This entry
    // then ingests its file again (kept until the entry leaves the log). The flush also keeps
    // RocksDB from flushing the data column family alone, as an ingest overlapping its
    // memtable would.
    crate::storage::flush_state_machine(db).map_err(io_err)?;
    files.ingest(db, file)?;
    tracing::info!(shard = cmd.shard, config = config_num, file = file.name, bytes = file.size, "ingested a copy file");
    Ok(OpResult::Applied)
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotDir;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, StoredMembership)> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> io::Result<()>
    where
        Strm: Stream<Item = io::Result<EntryResponder<TypeConfig>>> + Unpin + OptionalSend,
    {
        let mut batch = ApplyBatch::new(&self.db, &self.sharding, &mut self.sessions);
        let mut replies = Vec::new();
        let mut count = 0u64;
        let mut membership_changed = false;
        while let Some((entry, responder)) = entries.try_next().await? {
            let result = match &entry.payload {
                EntryPayload::Blank => OpResult::Applied,
                EntryPayload::Normal(cmd) if cmd.op.copy_file().is_some() => {
                    // Ingested data lands in the database at once, so what the entries before
                    // it changed is written first, in log order.
                    let membership = std::mem::take(&mut membership_changed).then_some(&self.membership);
                    let written = batch.finish();
                    write_applied(&self.db, written, &self.applied, membership, &self.sharding, &mut self.sessions)?;
                    batch = ApplyBatch::new(&self.db, &self.sharding, &mut self.sessions);
                    ingest_copy(&self.db, &self.copy_files, &self.sharding, cmd)?
                }
                EntryPayload::Normal(cmd) => batch.apply(entry.log_id.index(), cmd)?,
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    membership_changed = true;
                    OpResult::Applied
                }
            };
            self.applied = Some(entry.log_id);
            count += 1;
            if let Some(responder) = responder {
                replies.push((responder, result));
            }
        }
        let membership = membership_changed.then_some(&self.membership);
        let written = batch.finish();
        write_applied(&self.db, written, &self.applied, membership, &self.sharding, &mut self.sessions)?;
        self.metrics.applied_entries.inc_by(count);
        for (responder, result) in replies {
            responder.send(result);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
            snapshots: self.snapshots.clone(),
            metrics: self.metrics.clone(),
            install_lock: self.install_lock.clone(),
        }
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: SnapshotDir) -> io::Result<()> {
        let (db, snapshots, metrics) = (self.db.clone(), self.snapshots.clone(), self.metrics.clone());
        let install_lock = self.install_lock.clone();
        let meta = meta.clone();
        let installed = tokio::task::spawn_blocking(move || -> io::Result<Snapshot> {
            // The receiving service read every record through (see check_snapshot); RocksDB
            // checks the blocks' checksums again as they are loaded. Loading opens the snapshot
            // again where adopting put it: a checkpoint opens its table files as it reads them.
            let header = header_matching(&checkpoint::open(&snapshot.path)?, &meta)?;
            let published = snapshots.adopt(&snapshot.path, &header)?;
            if published.meta.last_log_id != header.last_log_id {
                // openraft installs only snapshots past what is applied, and the current one
                // is never past that: this is a bug, and loading it would go back.
                return Err(io::Error::other(format!(
                    "refusing to install the snapshot at {:?}: the current snapshot is newer ({:?})",
                    header.last_log_id, published.meta.last_log_id
                )));
            }
            let _installing = install_lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut opts = WriteOptions::default();
            opts.set_sync(true);
            db.put_cf_opt(cf(&db, CF_SM_META), INSTALLING_KEY, published.snapshot.name(), &opts).map_err(io_err)?;
            load_snapshot(&db, &published.snapshot.path)?;
            metrics.snapshots_installed.inc();
            Ok(published)
        })
        .await
        .map_err(io::Error::other)??;
        self.applied = installed.meta.last_log_id;
        self.membership = installed.meta.last_membership;
        let role = self.sharding.read().unwrap_or_else(std::sync::PoisonError::into_inner).role;
        let reloaded = Sharding::load(&self.db, role, self.shards)?;
        *self.sharding.write().unwrap_or_else(std::sync::PoisonError::into_inner) = reloaded;
        self.sessions.clear();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> io::Result<Option<Snapshot>> {
        Ok(self.snapshots.current())
    }
}

/// Reads a snapshot through before it is installed: that its files open, every record's
/// content (RocksDB checks each block's checksum as it reads), and that it is the snapshot
/// `meta` describes. Returns its header.
pub fn check_snapshot(dir: &Path, meta: &SnapshotMeta) -> io::Result<SnapshotHeader> {
    let corrupt = |msg: String| io::Error::new(io::ErrorKind::InvalidData, format!("snapshot corrupt: {msg}"));
    let snapshot = checkpoint::open(dir).map_err(|e| corrupt(e.to_string()))?;
    let header = header_matching(&snapshot, meta)?;
    let mut records = 0u64;
    checkpoint::for_each_record(&snapshot, |kind, key, value| {
        records += 1;
        records::check_snapshot_record(kind, key, value).map_err(|e| corrupt(format!("record {records}: {e}")))
    })
    .map_err(|e| if e.kind() == io::ErrorKind::InvalidData { e } else { corrupt(e.to_string()) })?;
    Ok(header)
}

/// The header of a checkpoint, if it is the snapshot `meta` describes.
fn header_matching(snapshot: &DB, meta: &SnapshotMeta) -> io::Result<SnapshotHeader> {
    let header = checkpoint::header_of(snapshot)?;
    if header.last_log_id != meta.last_log_id {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("snapshot holds the state at {:?}, expected {:?}", header.last_log_id, meta.last_log_id),
        ));
    }
    Ok(header)
}

/// Replaces the state-machine contents with a snapshot's, in batches. Sessions stored before
/// results were cached without values are written in the current format.
fn load_snapshot(db: &DB, dir: &Path) -> io::Result<()> {
    let snapshot = checkpoint::open(dir)?;
    tracing::info!(snapshot = %dir.display(), "loading a snapshot into the state machine");
    let (data_cf, sessions_cf, shards_cf) = (cf(db, CF_DATA), cf(db, CF_SESSIONS), cf(db, CF_SHARDS));
    let mut batch = WriteBatch::default();
    for target in [data_cf, sessions_cf, shards_cf] {
        batch.delete_range_cf(target, [].as_slice(), SHARD_KEYS_END.as_slice());
    }
    checkpoint::for_each_record(&snapshot, |kind, key, value| {
        match kind {
            RecordKind::Data => batch.put_cf(data_cf, key, value),
            RecordKind::Session => {
                let upgraded = Session::upgraded_bytes(value);
                batch.put_cf(sessions_cf, key, upgraded.as_deref().unwrap_or(value))
            }
            RecordKind::Shards => batch.put_cf(shards_cf, key, value),
        }
        if batch.size_in_bytes() >= INSTALL_BATCH_BYTES {
            db.write(std::mem::take(&mut batch)).map_err(io_err)?;
        }
        Ok(())
    })?;
    let header = checkpoint::header_of(&snapshot)?;
    put_applied_state(db, &mut batch, &header.last_log_id, Some(&header.membership));
    batch.delete_cf(cf(db, CF_SM_META), INSTALLING_KEY);
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    db.write_opt(batch, &opts).map_err(io_err)
}

pub struct SnapshotBuilder {
    db: Arc<DB>,
    snapshots: SnapshotStore,
    metrics: Arc<NodeMetrics>,
    install_lock: Arc<Mutex<()>>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotDir;

    /// Checkpoints the state machine as it is now applied (at least what it was when the
    /// builder was made). If a newer snapshot was installed in the meantime, the store keeps
    /// that one, and it is what this returns.
    async fn build_snapshot(&mut self) -> io::Result<Snapshot> {
        let (db, snapshots, metrics) = (self.db.clone(), self.snapshots.clone(), self.metrics.clone());
        let install_lock = self.install_lock.clone();
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let dir = snapshots.temp_path();
            let header = {
                let _no_install = install_lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                checkpoint::create(&db, &dir)?
            };
            let snapshot = snapshots.adopt(&dir, &header)?;
            metrics.observe_snapshot_built(started.elapsed(), snapshot.snapshot.size);
            tracing::info!(
                last_log_id = ?snapshot.meta.last_log_id,
                bytes = snapshot.snapshot.size,
                ms = started.elapsed().as_millis() as u64,
                "snapshot built"
            );
            Ok(snapshot)
        })
        .await
        .map_err(io::Error::other)?
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::RwLock;

    use super::*;
    use crate::storage::keys::session_key;
    use crate::types::Command;
    use crate::types::Op;
    use crate::types::SessionTag;

    const MIB: usize = 1 << 20;
    /// Compare-and-swaps per client, each with a 1 MiB previous value: a session that kept them
    /// would be larger than any record should be.
    const SWAPS: u64 = 66;

    /// A session as stored before results were cached without values.
    #[derive(serde::Serialize)]
    struct FirstFormatSession {
        acked_below: u64,
        responses: BTreeMap<u64, OpResult>,
    }

    fn apply(db: &DB, shared: &SharedSharding, index: u64, cmd: Command) -> OpResult {
        let mut cache = SessionCache::default();
        let mut batch = ApplyBatch::new(db, shared, &mut cache);
        let result = batch.apply(index, &cmd).unwrap();
        let (write_batch, applied) = batch.finish();
        db.write(write_batch).unwrap();
        applied.publish(shared, &mut cache);
        result
    }

    #[test]
    fn an_interrupted_install_of_a_record_file_snapshot_is_named_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::storage::open_db(&dir.path().join("db")).unwrap();
        db.put_cf(cf(&db, CF_SM_META), INSTALLING_KEY, b"snapshot-00000000000000000042-1.skv").unwrap();
        let snapshots = SnapshotStore::open(dir.path().join("snapshots")).unwrap();
        let metrics = Arc::new(NodeMetrics::default());
        let copy_files = CopyFiles::open(dir.path().join("copies"), 1).unwrap();
        let err =
            StateMachine::open(db, snapshots, copy_files, Role::Standalone { group: 1 }, 4, metrics).err().unwrap();
        assert!(err.to_string().contains("is not a checkpoint directory"), "{err}");
    }

    /// Clients each pin their window (first unacked stays 1) while they swap a 1 MiB value back
    /// and forth, and one session was stored in the first format with as many 1 MiB results:
    /// the snapshot installs on another replica, where every session is small and the retries
    /// still get their answers.
    #[test]
    fn a_snapshot_holding_many_large_sessions_stays_installable() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::storage::open_db(&dir.path().join("db")).unwrap();
        let shared: SharedSharding =
            Arc::new(RwLock::new(Sharding::load(&db, Role::Standalone { group: 1 }, 4).unwrap()));
        let values = [vec![b'a'; MIB], vec![b'b'; MIB]];
        let mut index = 0;
        for client in 1..=2u64 {
            let key = format!("key-{client}").into_bytes();
            for seq in 1..=SWAPS {
                index += 1;
                let (from, to) = (&values[seq as usize % 2], &values[(seq as usize + 1) % 2]);
                let expected = (seq > 1).then(|| from.clone());
                let op = Op::CompareAndSwap { key: key.clone(), expected, new_value: to.clone() };
                let session = Some(SessionTag { client_id: client, seq, first_unacked: 1 });
                let result = apply(&db, &shared, index, Command { session, shard: 0, op });
                assert!(matches!(result, OpResult::CompareAndSwap { succeeded: true, .. }), "{result:?}");
            }
        }
        let failed = OpResult::CompareAndSwap { succeeded: false, previous: Some(values[0].clone()) };
        let first_format = FirstFormatSession {
            acked_below: 1,
            responses: (1..=SWAPS).map(|seq| (seq, failed.clone())).chain([(SWAPS + 1, OpResult::Put)]).collect(),
        };
        db.put_cf(cf(&db, CF_SESSIONS), session_key(1, 3), encode(&first_format)).unwrap();

        let snapshots = SnapshotStore::open(dir.path().join("snapshots")).unwrap();
        let checkpoint_dir = snapshots.temp_path();
        let header = checkpoint::create(&db, &checkpoint_dir).expect("the checkpoint is made");
        let snapshot = snapshots.adopt(&checkpoint_dir, &header).unwrap();
        check_snapshot(&snapshot.snapshot.path, &snapshot.meta).expect("and can be installed");

        let other = tempfile::tempdir().unwrap();
        let replica = crate::storage::open_db(other.path()).unwrap();
        load_snapshot(&replica, &snapshot.snapshot.path).unwrap();
        let first_format = replica.get_cf(cf(&replica, CF_SESSIONS), session_key(1, 3)).unwrap().unwrap();
        assert!(first_format.len() < 4096, "installed in the current format: {} bytes", first_format.len());
        let shared: SharedSharding =
            Arc::new(RwLock::new(Sharding::load(&replica, Role::Standalone { group: 1 }, 4).unwrap()));
        // Seq 3 swapped values[1] for values[0]; its retry carries the same expected value.
        let retry = Op::CompareAndSwap { key: b"key-1".to_vec(), expected: Some(values[1].clone()), new_value: vec![] };
        let session = Some(SessionTag { client_id: 1, seq: 3, first_unacked: 1 });
        let answer = apply(&replica, &shared, index + 1, Command { session, shard: 0, op: retry });
        assert_eq!(answer, OpResult::CompareAndSwap { succeeded: true, previous: Some(values[1].clone()) });
        let session = Some(SessionTag { client_id: 3, seq: SWAPS + 1, first_unacked: 1 });
        let put = Op::Put { key: b"k".to_vec(), value: b"v".to_vec() };
        assert_eq!(apply(&replica, &shared, index + 2, Command { session, shard: 1, op: put }), OpResult::Put);
    }
}
