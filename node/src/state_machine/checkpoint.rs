//! A snapshot is a RocksDB checkpoint of the state machine: its column families' SST files,
//! hard-linked into a directory of their own. Making one costs a memtable flush and a link
//! per file, whatever the size of the data; the files are immutable, so the directory stays
//! the state of that moment while the live database goes on.

use std::fs;
use std::io;
use std::path::Path;

use rocksdb::BlockBasedOptions;
use rocksdb::DB;
use rocksdb::IteratorMode;
use rocksdb::Options;
use rocksdb::ReadOptions;
use rocksdb::checkpoint::Checkpoint;

use serde::Deserialize;
use serde::Serialize;

use super::read_applied_state;
use crate::storage::CF_DATA;
use crate::storage::CF_LOG;
use crate::storage::CF_RAFT_META;
use crate::storage::CF_SESSIONS;
use crate::storage::CF_SHARDS;
use crate::storage::CF_SM_META;
use crate::storage::STATE_MACHINE_CFS;
use crate::storage::cf;
use crate::storage::io_err;
use crate::types::LogId;
use crate::types::StoredMembership;

/// What a snapshot is of: the last log entry it includes and the membership as of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotHeader {
    pub last_log_id: Option<LogId>,
    pub membership: StoredMembership,
}

/// What a state-machine record is, by the column family it lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecordKind {
    Data,
    Session,
    /// Sharding state: configs (meta group) or shard states (data group).
    Shards,
}

impl std::fmt::Display for RecordKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RecordKind::Data => "data",
            RecordKind::Session => "session",
            RecordKind::Shards => "sharding state",
        })
    }
}

/// The column families a snapshot carries records of (the last applied log id and membership,
/// in `sm_meta`, travel as the snapshot's header).
pub const RECORD_CFS: [(&str, RecordKind); 3] =
    [(CF_DATA, RecordKind::Data), (CF_SESSIONS, RecordKind::Session), (CF_SHARDS, RecordKind::Shards)];

/// Makes a checkpoint of `db`'s state machine in `dir` (which must not exist) and returns the
/// applied state it holds. The checkpoint's flush makes every applied write part of it,
/// including those written without the WAL. The Raft log's column families are dropped from
/// the copy: a snapshot carries only state.
pub fn create(db: &DB, dir: &Path) -> io::Result<SnapshotHeader> {
    Checkpoint::new(db).and_then(|c| c.create_checkpoint(dir)).map_err(io_err)?;
    let mut copy = DB::open_cf(&copy_options(), dir, [CF_LOG, CF_RAFT_META].into_iter().chain(STATE_MACHINE_CFS))
        .map_err(io_err)?;
    for name in [CF_LOG, CF_RAFT_META] {
        copy.drop_cf(name).map_err(io_err)?;
    }
    let header = header_of(&copy)?;
    drop(copy);
    fs::File::open(dir)?.sync_all()?;
    Ok(header)
}

/// Opens a checkpoint to read, refusing one whose files are damaged or missing.
pub fn open(dir: &Path) -> io::Result<DB> {
    DB::open_cf_for_read_only(&copy_options(), dir, STATE_MACHINE_CFS, false).map_err(io_err)
}

/// The applied log id and membership a checkpoint holds.
pub fn header_of(db: &DB) -> io::Result<SnapshotHeader> {
    let meta_cf = cf(db, CF_SM_META);
    let (last_log_id, membership) = read_applied_state(|key| db.get_cf(meta_cf, key))?;
    Ok(SnapshotHeader { last_log_id, membership })
}

/// Visits every record of a checkpoint, column family by column family, in key order.
pub fn for_each_record(db: &DB, mut visit: impl FnMut(RecordKind, &[u8], &[u8]) -> io::Result<()>) -> io::Result<()> {
    for (name, kind) in RECORD_CFS {
        // One pass in key order: cached blocks would never be read again.
        let mut read = ReadOptions::default();
        read.fill_cache(false);
        for item in db.iterator_cf_opt(cf(db, name), read, IteratorMode::Start) {
            let (key, value) = item.map_err(io_err)?;
            visit(kind, &key, &value)?;
        }
    }
    Ok(())
}

/// The bytes of a checkpoint's files.
pub fn size(dir: &Path) -> io::Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir)? {
        total += entry?.metadata()?.len();
    }
    Ok(total)
}

fn copy_options() -> Options {
    let mut opts = Options::default();
    opts.set_paranoid_checks(true);
    // Table files are opened when read, not all at open: opening stays cheap for any size.
    opts.set_max_open_files(64);
    // Read once, front to back: a block cache would only hold memory.
    let mut tables = BlockBasedOptions::default();
    tables.disable_cache();
    opts.set_block_based_table_factory(&tables);
    opts
}

#[cfg(test)]
mod tests {
    use openraft::vote::RaftLeaderId;
    use rocksdb::WriteBatch;
    use rocksdb::WriteOptions;

    use super::*;
    use crate::state_machine::put_applied_state;

    fn log_id(index: u64) -> Option<LogId> {
        let leader = openraft::impls::leader_id_adv::LeaderId::<u64, u64>::new(1, 1);
        Some(LogId::new(leader.to_committed(), index))
    }

    /// Writes as apply does: state-machine records and the applied log id, without the WAL.
    fn apply(db: &DB, index: u64, key: &[u8]) {
        let mut batch = WriteBatch::default();
        batch.put_cf(cf(db, CF_DATA), key, b"value");
        put_applied_state(db, &mut batch, &log_id(index), Some(&StoredMembership::default()));
        let mut opts = WriteOptions::default();
        opts.disable_wal(true);
        db.write_opt(batch, &opts).unwrap();
    }

    #[test]
    fn a_checkpoint_holds_the_applied_state_of_its_moment_without_the_raft_log() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::storage::open_db(&dir.path().join("db")).unwrap();
        db.put_cf(cf(&db, CF_LOG), b"entry", b"log").unwrap();
        apply(&db, 7, b"\0\0\0\x01a");
        apply(&db, 8, b"\0\0\0\x01b");

        let header = create(&db, &dir.path().join("checkpoint")).unwrap();
        assert_eq!(header.last_log_id, log_id(8), "writes that skipped the WAL are in it");
        apply(&db, 9, b"\0\0\0\x01c");

        let names = DB::list_cf(&Options::default(), dir.path().join("checkpoint")).unwrap();
        assert!(!names.iter().any(|n| n == CF_LOG || n == CF_RAFT_META), "{names:?}");
        let checkpoint = open(&dir.path().join("checkpoint")).unwrap();
        assert_eq!(header_of(&checkpoint).unwrap(), header);
        let mut records = Vec::new();
        for_each_record(&checkpoint, |kind, key, _| {
            records.push((kind, key.to_vec()));
            Ok(())
        })
        .unwrap();
        let data = |k: &[u8]| (RecordKind::Data, k.to_vec());
        assert_eq!(records, vec![data(b"\0\0\0\x01a"), data(b"\0\0\0\x01b")], "the later write is not in it");
        assert!(size(&dir.path().join("checkpoint")).unwrap() > 0);
    }

    #[test]
    fn a_damaged_checkpoint_does_not_open() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::storage::open_db(&dir.path().join("db")).unwrap();
        apply(&db, 1, b"\0\0\0\x01a");
        let path = dir.path().join("checkpoint");
        create(&db, &path).unwrap();
        fs::remove_file(path.join("CURRENT")).unwrap();
        assert!(open(&path).is_err());
    }
}
