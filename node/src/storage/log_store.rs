//! The Raft log and Raft metadata on RocksDB (openraft `RaftLogStorage`).

use std::collections::BTreeMap;
use std::collections::HashSet;
use std::fmt::Debug;
use std::io;
use std::ops::Bound;
use std::ops::RangeBounds;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::sync::PoisonError;

use openraft::OptionalSend;
use openraft::RaftLogReader;
use openraft::entry::RaftEntry;
use openraft::storage::IOFlushed;
use openraft::storage::LogState;
use openraft::storage::RaftLogStorage;
use rocksdb::DB;
use rocksdb::Direction;
use rocksdb::IteratorMode;
use rocksdb::WriteBatch;
use rocksdb::WriteOptions;

use super::CF_LOG;
use super::CF_RAFT_META;
use super::LogFlusher;
use super::LogGrowth;
use super::LogTail;
use super::cf;
use super::io_err;
use super::keys::log_index;
use super::keys::log_key;
use crate::state_machine::copy_files::CopyFiles;
use crate::types::Entry;
use crate::types::LogId;
use crate::types::TypeConfig;
use crate::types::Vote;
use crate::types::copy_file_of;
use crate::types::decode;
use crate::types::encode;

const VOTE_KEY: &[u8] = b"vote";
const COMMITTED_KEY: &[u8] = b"committed";
const PURGED_KEY: &[u8] = b"last_purged";

#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    flusher: LogFlusher,
    /// Removed with the last entry naming them (see `state_machine::copy_files`).
    copy_files: CopyFiles,
    /// The copy files the entries in the log name, by entry index: a purge or truncation
    /// finds the files it frees here instead of reading and decoding every entry it removes.
    named_copy_files: Arc<Mutex<BTreeMap<u64, String>>>,
    growth: Arc<LogGrowth>,
    /// The newest entries, which replication and the state machine read right after their
    /// append.
    tail: Arc<LogTail>,
    /// The committed log id Raft reported last, not yet written: it goes into the next
    /// append's write instead of a write of its own on every commit.
    unwritten_committed: Arc<Mutex<Option<Option<LogId>>>>,
}

impl LogStore {
    /// Opens the log: reads which copy files its entries name, and removes the copy files none
    /// names (left by a crash between removing entries and their files). Returns how many
    /// files it removed.
    pub fn open(
        db: Arc<DB>,
        flusher: LogFlusher,
        copy_files: CopyFiles,
        growth: Arc<LogGrowth>,
    ) -> io::Result<(Self, usize)> {
        let tail = Arc::new(LogTail::new(super::LOG_TAIL_BYTES));
        let store = Self {
            db,
            flusher,
            copy_files,
            named_copy_files: Arc::default(),
            growth,
            tail,
            unwritten_committed: Arc::default(),
        };
        let mut named = BTreeMap::new();
        store.for_each_entry(0.., |entry| {
            if let Some(file) = copy_file_of(&entry) {
                named.insert(entry.index(), file.name.clone());
            }
        })?;
        let removed = store.copy_files.remove_unnamed(&named.values().cloned().collect())?;
        *store.named() = named;
        Ok((store, removed))
    }

    fn named(&self) -> MutexGuard<'_, BTreeMap<u64, String>> {
        lock(&self.named_copy_files)
    }

    /// Forgets the copy files named by the entries `take` removes from the index, and removes
    /// those files no remaining entry names.
    fn release_copy_files(&self, take: impl FnOnce(&mut BTreeMap<u64, String>) -> BTreeMap<u64, String>) {
        let unnamed: Vec<String> = {
            let mut named = self.named();
            let removed = take(&mut named);
            let kept: HashSet<&String> = named.values().collect();
            removed.into_values().filter(|name| !kept.contains(name)).collect()
        };
        self.copy_files.remove(unnamed.iter().map(String::as_str));
    }

    /// Decodes the entries in `range` in order, checking that each is stored under its index.
    fn for_each_entry(&self, range: impl RangeBounds<u64>, mut each: impl FnMut(Entry)) -> io::Result<()> {
        let (start, _) = index_bounds(&range);
        let mode = IteratorMode::From(&log_key(start), Direction::Forward);
        for item in self.db.iterator_cf(cf(&self.db, CF_LOG), mode) {
            let (key, value) = item.map_err(io_err)?;
            if !range.contains(&log_index(&key)) {
                break;
            }
            let entry: Entry = decode(&value)?;
            if entry.index() != log_index(&key) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("raft log corrupt: key {} holds entry {}", log_index(&key), entry.index()),
                ));
            }
            each(entry);
        }
        Ok(())
    }

    fn get_meta<T: for<'de> serde::Deserialize<'de>>(&self, key: &[u8]) -> io::Result<Option<T>> {
        let raw = self.db.get_cf(cf(&self.db, CF_RAFT_META), key).map_err(io_err)?;
        raw.map(|bytes| decode(&bytes)).transpose()
    }

    fn put_meta<T: serde::Serialize>(&self, key: &[u8], value: &T, sync: bool) -> io::Result<()> {
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        self.db.put_cf_opt(cf(&self.db, CF_RAFT_META), key, encode(value), &opts).map_err(io_err)
    }

    fn last_entry_log_id(&self) -> io::Result<Option<LogId>> {
        let mut iter = self.db.iterator_cf(cf(&self.db, CF_LOG), IteratorMode::End);
        match iter.next() {
            None => Ok(None),
            Some(item) => {
                let (_, value) = item.map_err(io_err)?;
                Ok(Some(decode::<Entry>(&value)?.log_id()))
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The first index of `range` and the index just past it, if it ends.
fn index_bounds(range: &impl RangeBounds<u64>) -> (u64, Option<u64>) {
    let start = match range.start_bound() {
        Bound::Included(i) => *i,
        Bound::Excluded(i) => i + 1,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(i) => i.checked_add(1),
        Bound::Excluded(i) => Some(*i),
        Bound::Unbounded => None,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<Entry>> {
        if let (start, Some(end)) = index_bounds(&range)
            && let Some(entries) = self.tail.get(start, end)
        {
            return Ok(entries);
        }
        let mut entries = Vec::new();
        self.for_each_entry(range, |entry| entries.push(entry))?;
        Ok(entries)
    }

    async fn read_vote(&mut self) -> io::Result<Option<Vote>> {
        self.get_meta(VOTE_KEY)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId> = self.get_meta(PURGED_KEY)?;
        let last_log_id = self.last_entry_log_id()?.or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> io::Result<()> {
        // A vote must be durable before it is answered: fsync now, not through the flusher.
        self.put_meta(VOTE_KEY, vote, true)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> io::Result<()> {
        // openraft reads it back only to re-apply sooner after a restart, so it is written with
        // the next append, never synced, and may be a commit behind: the rest is applied once
        // the leader is heard from again. Nothing may serve reads from it: a restarted leader
        // holds an election before it leads again (`enable_leader_restore` is off, node.rs),
        // and reads wait for `wait_for_recovery`.
        *lock(&self.unwritten_committed) = Some(committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> io::Result<Option<LogId>> {
        if let Some(committed) = *lock(&self.unwritten_committed) {
            return Ok(committed);
        }
        Ok(self.get_meta::<Option<LogId>>(COMMITTED_KEY)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let log_cf = cf(&self.db, CF_LOG);
        let mut batch = WriteBatch::default();
        let mut named = Vec::new();
        let mut appended = Vec::new();
        let mut appended_bytes = 0;
        for entry in entries {
            let bytes = encode(&entry);
            appended_bytes += bytes.len() as u64;
            batch.put_cf(log_cf, log_key(entry.index()), &bytes);
            if let Some(file) = copy_file_of(&entry) {
                named.push((entry.index(), file.name.clone()));
            }
            appended.push((entry, bytes.len()));
        }
        if let Some(committed) = lock(&self.unwritten_committed).take() {
            batch.put_cf(cf(&self.db, CF_RAFT_META), COMMITTED_KEY, encode(&committed));
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(false);
        self.db.write_opt(batch, &opts).map_err(io_err)?;
        self.tail.appended(appended);
        self.named().extend(named);
        self.growth.appended(appended_bytes);
        self.flusher.flush_then(callback);
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> io::Result<()> {
        let from = last_log_id.map_or(0, |id| id.index() + 1);
        // The tail first: a read in between finds the entries in RocksDB, never only in memory.
        self.tail.truncated(from);
        let log_cf = cf(&self.db, CF_LOG);
        self.db.delete_range_cf(log_cf, log_key(from), log_key(u64::MAX)).map_err(io_err)?;
        // delete_range excludes its end key.
        self.db.delete_cf(log_cf, log_key(u64::MAX)).map_err(io_err)?;
        self.release_copy_files(|named| named.split_off(&from));
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        // openraft purges only what is applied (and snapshotted); applied state skips the WAL,
        // so it is flushed first: after a crash the state machine resumes at or past the purge
        // point, and the entries it re-applies are still in the log.
        super::flush_state_machine(&self.db).map_err(io_err)?;
        // Record the purge point first: a crash in between leaves extra entries, never a gap.
        self.put_meta(PURGED_KEY, &log_id, false)?;
        let log_cf = cf(&self.db, CF_LOG);
        self.tail.purged(log_id.index());
        self.db.delete_range_cf(log_cf, log_key(0), log_key(log_id.index() + 1)).map_err(io_err)?;
        // The entries are gone (a crash before this leaves files that the next start removes).
        self.release_copy_files(|named| {
            let kept = named.split_off(&(log_id.index() + 1));
            std::mem::replace(named, kept)
        });
        self.growth.purged();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use openraft::EntryPayload;

    use super::*;
    use crate::metrics::NodeMetrics;
    use crate::types::Command;
    use crate::types::CopyFile;
    use crate::types::Op;
    use crate::types::hostile_input;

    fn ingest(index: u64, name: &str) -> Entry {
        let file = CopyFile { name: name.into(), size: 1, crc32: 0 };
        let op = Op::IngestCopy { config_num: 1, begun_at: 1, file, items: 1, bytes: 1 };
        let payload = EntryPayload::Normal(Command { session: None, shard: 1, op });
        Entry { log_id: hostile_input::log_id(1, index), payload }
    }

    fn blank(index: u64) -> Entry {
        Entry { log_id: hostile_input::log_id(1, index), payload: EntryPayload::Blank }
    }

    /// What a log store opens on: a database, its flusher and a copy-file directory.
    struct Parts {
        _dir: tempfile::TempDir,
        db: Arc<DB>,
        flusher: LogFlusher,
        files: CopyFiles,
    }

    impl Parts {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let db = crate::storage::open_db(&dir.path().join("db")).unwrap();
            let flusher = LogFlusher::start(db.clone(), Arc::new(NodeMetrics::default()));
            let files = CopyFiles::open(dir.path().join("copies"), 1).unwrap();
            Self { _dir: dir, db, flusher, files }
        }

        /// Opens the log on these parts; returns it and how many unnamed files it removed.
        fn open(&self) -> (LogStore, usize) {
            LogStore::open(self.db.clone(), self.flusher.clone(), self.files.clone(), LogGrowth::new(u64::MAX)).unwrap()
        }
    }

    /// Files are removed with the last entry naming them, by purge or truncation, and at
    /// open when no entry names them; a file two entries name outlives the first of them.
    #[tokio::test]
    async fn copy_files_go_with_the_last_entry_naming_them() {
        let parts = Parts::new();
        let files = &parts.files;
        let exists = |name: &str| files.path(name).unwrap().exists();
        let entries =
            vec![blank(1), ingest(2, "a.sst"), blank(3), ingest(4, "b.sst"), ingest(5, "a.sst"), ingest(6, "c.sst")];
        let (mut log, _) = parts.open();
        log.append(entries, IOFlushed::noop()).await.unwrap();
        drop(log);
        for name in ["a.sst", "b.sst", "c.sst", "unnamed.sst"] {
            std::fs::write(files.path(name).unwrap(), b"x").unwrap();
        }

        let (mut log, removed) = parts.open();
        assert_eq!(removed, 1);
        assert!(!exists("unnamed.sst") && exists("a.sst") && exists("b.sst") && exists("c.sst"));
        log.purge(hostile_input::log_id(1, 2)).await.unwrap();
        assert!(exists("a.sst"), "entry 5 still names it");
        log.purge(hostile_input::log_id(1, 4)).await.unwrap();
        assert!(!exists("b.sst") && exists("a.sst"));
        log.truncate_after(Some(hostile_input::log_id(1, 5))).await.unwrap();
        assert!(!exists("c.sst") && exists("a.sst"));
        log.purge(hostile_input::log_id(1, 5)).await.unwrap();
        assert!(!exists("a.sst"));
    }

    /// A commit is not a write of its own: it is read back from memory until the next append
    /// writes it, and a restart before that finds the one written before.
    #[tokio::test]
    async fn the_committed_log_id_is_written_with_the_next_append() {
        let parts = Parts::new();
        let open = || parts.open().0;
        let committed = |index| Some(hostile_input::log_id(1, index));

        let mut log = open();
        log.append(vec![blank(1), blank(2)], IOFlushed::noop()).await.unwrap();
        log.save_committed(committed(1)).await.unwrap();
        assert_eq!(log.read_committed().await.unwrap(), committed(1));
        assert_eq!(open().read_committed().await.unwrap(), None, "not written before an append");

        log.append(vec![blank(3)], IOFlushed::noop()).await.unwrap();
        log.save_committed(committed(2)).await.unwrap();
        assert_eq!(open().read_committed().await.unwrap(), committed(1));
    }
}
