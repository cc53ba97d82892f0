//! The directory of snapshots: each one a checkpoint directory; keeps the newest, removes the
//! rest.

use std::fs;
use std::io;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use super::checkpoint;
use super::checkpoint::SnapshotHeader;
use crate::types::LogId;
use crate::types::Snapshot;
use crate::types::SnapshotMeta;

/// Snapshot data as openraft passes it around: a checkpoint directory on disk, never the bytes
/// themselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotDir {
    pub path: PathBuf,
    /// The bytes of its files.
    pub size: u64,
}

impl SnapshotDir {
    pub fn name(&self) -> String {
        self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }
}

const PREFIX: &str = "snapshot-";
/// Snapshot files of the record format, written before snapshots were checkpoints.
const RECORDS_SUFFIX: &str = ".skv";

#[derive(Clone)]
pub struct SnapshotStore {
    dir: PathBuf,
    current: Arc<Mutex<Option<Snapshot>>>,
    temp_counter: Arc<AtomicU64>,
}

impl SnapshotStore {
    /// Opens the directory, removing what an interrupted build or receive left and snapshots
    /// of the record format (the state machine's own state is in RocksDB; openraft builds a
    /// new snapshot when it needs one). A newest snapshot that does not open is an error.
    pub fn open(dir: PathBuf) -> io::Result<Self> {
        fs::create_dir_all(&dir)?;
        let mut newest: Option<(String, PathBuf)> = None;
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                remove(&path)?;
            } else if name.ends_with(RECORDS_SUFFIX) {
                tracing::info!(file = %path.display(), "removing a snapshot of the record format");
                remove(&path)?;
            } else if name.starts_with(PREFIX) && newest.as_ref().is_none_or(|(n, _)| name > *n) {
                newest = Some((name, path));
            }
        }
        let current = match newest {
            None => None,
            Some((_, path)) => {
                let header = checkpoint::header_of(&checkpoint::open(&path)?)?;
                Some(snapshot_of(&path, header)?)
            }
        };
        Ok(Self { dir, current: Arc::new(Mutex::new(current)), temp_counter: Arc::default() })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn current(&self) -> Option<Snapshot> {
        self.current.lock().expect("snapshot store lock").clone()
    }

    /// A fresh path in the snapshot directory for a snapshot being built or received.
    pub fn temp_path(&self) -> PathBuf {
        let n = self.temp_counter.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!("incoming-{}-{n}.tmp", unique_stamp()))
    }

    /// Makes a complete, verified checkpoint directory the current snapshot and removes older
    /// ones, unless the current snapshot is as new or newer: then the directory is dropped and
    /// the current one stays. openraft may finish building a snapshot after a newer one was
    /// installed, and a node that went back to it would serve a snapshot older than its purged
    /// log. A directory outside the store is copied in. Returns the current snapshot after the
    /// call.
    pub fn adopt(&self, source: &Path, header: &SnapshotHeader) -> io::Result<Snapshot> {
        let inside = source.parent() == Some(self.dir.as_path());
        // Held throughout, so that two adoptions racing cannot both win.
        let mut current = self.current.lock().expect("snapshot store lock");
        if let Some(newer) = current.as_ref().filter(|c| !is_newer(&header.last_log_id, &c.meta.last_log_id)) {
            tracing::info!(
                offered = ?header.last_log_id,
                current = ?newer.meta.last_log_id,
                "not adopting a snapshot that is not newer than the current one"
            );
            if inside {
                remove(source)?;
            }
            return Ok(newer.clone());
        }
        let index = crate::types::index_of(&header.last_log_id);
        let target = self.dir.join(format!("{PREFIX}{index:020}-{}", unique_stamp()));
        if inside {
            fs::rename(source, &target)?;
        } else {
            let tmp = self.temp_path();
            copy_dir(source, &tmp)?;
            fs::rename(&tmp, &target)?;
        }
        fs::File::open(&self.dir)?.sync_all()?;
        let snapshot = snapshot_of(&target, header.clone())?;
        *current = Some(snapshot.clone());
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
            if path != target && name.starts_with(PREFIX) {
                remove(&path)?;
            }
        }
        Ok(snapshot)
    }
}

/// Log ids order snapshots: a later log id covers everything an earlier one does.
fn is_newer(offered: &Option<LogId>, current: &Option<LogId>) -> bool {
    offered > current
}

fn snapshot_of(path: &Path, header: SnapshotHeader) -> io::Result<Snapshot> {
    Ok(Snapshot {
        meta: SnapshotMeta { last_log_id: header.last_log_id, last_membership: header.membership },
        snapshot: SnapshotDir { path: path.to_path_buf(), size: checkpoint::size(path)? },
    })
}

fn remove(path: &Path) -> io::Result<()> {
    if path.is_dir() { fs::remove_dir_all(path) } else { fs::remove_file(path) }
}

fn copy_dir(from: &Path, to: &Path) -> io::Result<()> {
    fs::create_dir(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        fs::copy(entry.path(), &target)?;
        fs::File::open(&target)?.sync_all()?;
    }
    fs::File::open(to)?.sync_all()
}

/// Time-based stamp so that names sort by creation within an index.
fn unique_stamp() -> String {
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{nanos:024}")
}

#[cfg(test)]
mod tests {
    use openraft::vote::RaftLeaderId;

    use super::*;
    use crate::types::StoredMembership;

    fn log_id(term: u64, index: u64) -> Option<LogId> {
        let leader = openraft::impls::leader_id_adv::LeaderId::<u64, u64>::new(term, 1);
        Some(LogId::new(leader.to_committed(), index))
    }

    /// Checkpoints a state machine applied up to `last_log_id` into the store's directory, as a
    /// build or a receive does.
    fn write(store: &SnapshotStore, last_log_id: Option<LogId>) -> (PathBuf, SnapshotHeader) {
        let source = tempfile::tempdir().unwrap();
        let db = crate::storage::open_db(source.path()).unwrap();
        let mut batch = rocksdb::WriteBatch::default();
        crate::state_machine::put_applied_state(&db, &mut batch, &last_log_id, Some(&StoredMembership::default()));
        db.write(batch).unwrap();
        let path = store.temp_path();
        let header = checkpoint::create(&db, &path).unwrap();
        assert_eq!(header.last_log_id, last_log_id);
        (path, header)
    }

    fn snapshot_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn a_snapshot_finished_after_a_newer_one_is_dropped_and_the_newer_stays() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path().to_path_buf()).unwrap();
        let (older, older_header) = write(&store, log_id(1, 10));
        let (newer, newer_header) = write(&store, log_id(1, 20));
        let adopted = store.adopt(&newer, &newer_header).unwrap();
        assert_eq!(adopted.meta.last_log_id, log_id(1, 20));

        let kept = store.adopt(&older, &older_header).unwrap();
        assert_eq!(kept.snapshot, adopted.snapshot, "the call answers with the newer, current snapshot");
        assert_eq!(store.current().unwrap().snapshot, adopted.snapshot);
        assert!(!older.exists(), "the older checkpoint is removed");
        assert_eq!(snapshot_files(dir.path()), vec![adopted.snapshot.name()]);

        let (same, same_header) = write(&store, log_id(1, 20));
        let kept = store.adopt(&same, &same_header).unwrap();
        assert_eq!(kept.snapshot, adopted.snapshot, "an equal one does not replace it");
        let (later_term, later_header) = write(&store, log_id(2, 20));
        assert_eq!(store.adopt(&later_term, &later_header).unwrap().meta.last_log_id, log_id(2, 20));

        fs::create_dir(store.temp_path()).unwrap();
        fs::write(dir.path().join("snapshot-00000000000000000009-1.skv"), b"SKVSNAP1").unwrap();
        let reopened = SnapshotStore::open(dir.path().to_path_buf()).unwrap();
        assert_eq!(reopened.current().unwrap().meta.last_log_id, log_id(2, 20));
        assert_eq!(
            snapshot_files(dir.path()),
            vec![reopened.current().unwrap().snapshot.name()],
            "an interrupted build and a snapshot of the record format are removed"
        );
    }

    #[test]
    fn the_first_snapshot_is_adopted() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path().to_path_buf()).unwrap();
        let (checkpoint, header) = write(&store, None);
        assert_eq!(store.adopt(&checkpoint, &header).unwrap().meta.last_log_id, None);
        assert!(store.current().is_some());
    }
}
