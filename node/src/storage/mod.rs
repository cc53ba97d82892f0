//! One RocksDB per node process, split into column families by concern.

mod flusher;
pub mod keys;
mod log_growth;
mod log_store;
mod log_tail;

use std::path::Path;
use std::sync::Arc;

pub use flusher::LogFlusher;
pub use log_growth::LogGrowth;
pub use log_store::LogStore;
use log_tail::LOG_TAIL_BYTES;
use log_tail::LogTail;
use rocksdb::ColumnFamilyDescriptor;
use rocksdb::DB;
use rocksdb::Options;

/// Raft log entries, keyed by index.
pub const CF_LOG: &str = "raft_log";
/// Raft metadata: vote, committed, last purged log id.
pub const CF_RAFT_META: &str = "raft_meta";
/// State-machine data, keys prefixed by shard id.
pub const CF_DATA: &str = "sm_data";
/// Client sessions (dedup table), keys prefixed by shard id so they move with their shard.
pub const CF_SESSIONS: &str = "sm_sessions";
/// State-machine metadata: last applied log id, membership, snapshot-install marker.
pub const CF_SM_META: &str = "sm_meta";
/// Replicated sharding state: the meta group's configs, a data group's shard states.
pub const CF_SHARDS: &str = "sm_shards";

const ALL_CFS: [&str; 6] = [CF_LOG, CF_RAFT_META, CF_DATA, CF_SESSIONS, CF_SM_META, CF_SHARDS];
/// The state machine's column families, which applied entries write without the WAL.
pub const STATE_MACHINE_CFS: [&str; 4] = [CF_DATA, CF_SESSIONS, CF_SM_META, CF_SHARDS];

pub fn open_db(path: &Path) -> Result<Arc<DB>, rocksdb::Error> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // Detect corruption when opening and reading instead of serving damaged data.
    opts.set_paranoid_checks(true);
    opts.increase_parallelism(2);
    // Applied entries are written without the WAL (the Raft log already holds them), so after
    // a crash the state machine is what was last flushed. Atomic flush keeps the column
    // families of one flush at the same point, so that state is always one applied prefix of
    // the log: never data without its session, or a session without its data.
    opts.set_atomic_flush(true);
    let cfs = ALL_CFS.iter().map(|name| {
        let mut cf_opts = Options::default();
        cf_opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        // Bounded memtables: a snapshot install or a burst of large values must not grow memory
        // with the size of the data. Sessions are rewritten by every write: their memtable is as
        // large as the data's, because with atomic flush the first column family to fill
        // flushes all of them, and a smaller one would flush the data memtable half empty (and
        // every version of a session it holds) far more often. Both are 8 MiB, not more: every
        // applied write inserts into their skip lists, and in a 32 MiB one (hundreds of
        // thousands of versions) an insert cost several cache misses per level, about a fifth
        // of the node's CPU under load; 8 MiB did 7% more puts for the flushes it adds. The
        // small column families (last applied, shard states) never fill first.
        let size = match *name {
            CF_LOG => 32 << 20,
            CF_DATA | CF_SESSIONS => 8 << 20,
            _ => 4 << 20,
        };
        cf_opts.set_write_buffer_size(size);
        cf_opts.set_max_write_buffer_number(2);
        ColumnFamilyDescriptor::new(*name, cf_opts)
    });
    Ok(Arc::new(DB::open_cf_descriptors(&opts, path, cfs)?))
}

/// Flushes the memtable of every column family (a stop leaves nothing for the WAL to replay).
pub fn flush_all(db: &DB) -> Result<(), rocksdb::Error> {
    for name in ALL_CFS {
        db.flush_cf(cf(db, name))?;
    }
    Ok(())
}

/// Makes everything applied so far durable: flushes the state machine's memtables, whose
/// writes skip the WAL. Log entries may be purged only up to what this has made durable.
pub fn flush_state_machine(db: &DB) -> Result<(), rocksdb::Error> {
    let cfs: Vec<_> = STATE_MACHINE_CFS.iter().map(|name| cf(db, name)).collect();
    db.flush_cfs_opt(&cfs, &rocksdb::FlushOptions::default())
}

pub fn cf<'a>(db: &'a DB, name: &str) -> &'a rocksdb::ColumnFamily {
    db.cf_handle(name).unwrap_or_else(|| panic!("column family {name} is created at open"))
}

pub fn io_err(e: rocksdb::Error) -> std::io::Error {
    std::io::Error::other(format!("rocksdb: {e}"))
}
