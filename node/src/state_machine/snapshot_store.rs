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

    /// Makes a complete, verified file the current snapshot and removes older ones.
    pub fn adopt(&self, file: &Path, header: &SnapshotHeader) -> io::Result<Snapshot> {
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
        *self.current.lock().expect("snapshot store lock") = Some(snapshot.clone());
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
