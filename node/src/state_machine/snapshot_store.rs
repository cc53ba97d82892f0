//! The directory of snapshot files: keeps the newest, removes the rest.

use std::fs;
use std::io;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use super::snapshot_file::SnapshotHeader;
use super::snapshot_file::SnapshotReader;
use crate::types::LogId;
use crate::types::Snapshot;
use crate::types::SnapshotMeta;

/// Snapshot data as openraft passes it around: a file on disk, never the bytes themselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFile {
    pub path: PathBuf,
    pub size: u64,
}

impl SnapshotFile {
    pub fn file_name(&self) -> String {
        self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }
}

const PREFIX: &str = "snapshot-";
const SUFFIX: &str = ".skv";

#[derive(Clone)]
pub struct SnapshotStore {
    dir: PathBuf,
    current: Arc<Mutex<Option<Snapshot>>>,
    temp_counter: Arc<AtomicU64>,
}

impl SnapshotStore {
    pub fn open(dir: PathBuf) -> io::Result<Self> {
        fs::create_dir_all(&dir)?;
        let mut newest: Option<(String, PathBuf)> = None;
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                fs::remove_file(&path)?;
            } else if name.starts_with(PREFIX)
                && name.ends_with(SUFFIX)
                && newest.as_ref().is_none_or(|(n, _)| name > *n)
            {
                newest = Some((name, path));
            }
        }
        let current = match newest {
            None => None,
            Some((_, path)) => {
                let header = SnapshotReader::open(&path)?.header;
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

    /// A fresh path in the snapshot directory for a file being written or received.
    pub fn temp_path(&self) -> PathBuf {
        let n = self.temp_counter.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!("incoming-{}-{n}.tmp", unique_stamp()))
    }

    /// Makes a complete, verified file the current snapshot and removes older ones, unless the
    /// current snapshot is as new or newer: then the file is dropped and the current one stays.
    /// openraft may finish building a snapshot after a newer one was installed, and a node that
    /// went back to it would serve a snapshot older than its purged log. Returns the current
    /// snapshot after the call.
    pub fn adopt(&self, file: &Path, header: &SnapshotHeader) -> io::Result<Snapshot> {
        // Held throughout, so that two adoptions racing cannot both win.
        let mut current = self.current.lock().expect("snapshot store lock");
        if let Some(newer) = current.as_ref().filter(|c| !is_newer(&header.last_log_id, &c.meta.last_log_id)) {
            tracing::info!(
                offered = ?header.last_log_id,
                current = ?newer.meta.last_log_id,
                "not adopting a snapshot that is not newer than the current one"
            );
            if file.parent() == Some(self.dir.as_path()) {
                fs::remove_file(file)?;
            }
            return Ok(newer.clone());
        }
        let index = crate::types::index_of(&header.last_log_id);
        let target = self.dir.join(format!("{PREFIX}{index:020}-{}{SUFFIX}", unique_stamp()));
        if file.parent() == Some(self.dir.as_path()) {
            fs::rename(file, &target)?;
        } else {
            let tmp = self.temp_path();
            fs::copy(file, &tmp)?;
            fs::File::open(&tmp)?.sync_all()?;
            fs::rename(&tmp, &target)?;
        }
        fs::File::open(&self.dir)?.sync_all()?;
        let snapshot = snapshot_of(&target, header.clone())?;
        *current = Some(snapshot.clone());
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
            if path != target && name.starts_with(PREFIX) && name.ends_with(SUFFIX) {
                fs::remove_file(&path)?;
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
    let size = fs::metadata(path)?.len();
    Ok(Snapshot {
        meta: SnapshotMeta { last_log_id: header.last_log_id, last_membership: header.membership },
        snapshot: SnapshotFile { path: path.to_path_buf(), size },
    })
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
    use crate::state_machine::snapshot_file::SnapshotWriter;
    use crate::types::StoredMembership;

    fn log_id(term: u64, index: u64) -> Option<LogId> {
        let leader = openraft::impls::leader_id_adv::LeaderId::<u64, u64>::new(term, 1);
        Some(LogId::new(leader.to_committed(), index))
    }

    /// Writes an empty snapshot file at `last_log_id` into `dir`, as a build or a receive does.
    fn write(store: &SnapshotStore, last_log_id: Option<LogId>) -> (PathBuf, SnapshotHeader) {
        let header = SnapshotHeader { last_log_id, membership: StoredMembership::default() };
        let path = store.temp_path();
        SnapshotWriter::create(&path, &header).unwrap().finish().unwrap();
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
        assert!(!older.exists(), "the older file is removed");
        assert_eq!(snapshot_files(dir.path()), vec![adopted.snapshot.file_name()]);

        let (same, same_header) = write(&store, log_id(1, 20));
        let kept = store.adopt(&same, &same_header).unwrap();
        assert_eq!(kept.snapshot, adopted.snapshot, "an equal one does not replace it");
        let (later_term, later_header) = write(&store, log_id(2, 20));
        assert_eq!(store.adopt(&later_term, &later_header).unwrap().meta.last_log_id, log_id(2, 20));

        let reopened = SnapshotStore::open(dir.path().to_path_buf()).unwrap();
        assert_eq!(reopened.current().unwrap().meta.last_log_id, log_id(2, 20));
    }

    #[test]
    fn the_first_snapshot_is_adopted() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path().to_path_buf()).unwrap();
        let (file, header) = write(&store, None);
        assert_eq!(store.adopt(&file, &header).unwrap().meta.last_log_id, None);
        assert!(store.current().is_some());
    }
}
