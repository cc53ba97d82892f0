//! Table files of shard copies. The receiving group's leader writes a copied slice of a shard
//! into a RocksDB table file (SST), and every replica ingests that file into its state machine
//! by a hard link: the copied data is written once per replica, instead of into the Raft log's
//! WAL, its memtable and table files, and again into the state machine's. The log carries only
//! an entry naming the file, with its size and CRC.
//!
//! Invariant: a replica whose log holds an entry naming a file holds the file, so that applying
//! or re-applying the log after a crash always finds it. The leader writes the file before it
//! proposes the entry; a follower fetches it before it appends an entry naming it (see
//! `network::service`); and a file is removed only with the last log entry naming it (log
//! purge or truncation), or at start when no entry in the log names it.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::io::Read;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use rocksdb::DB;
use rocksdb::IngestExternalFileOptions;
use rocksdb::Options;
use rocksdb::SstFileWriter;

use crate::storage::CF_DATA;
use crate::storage::cf;
use crate::storage::io_err;
use crate::types::CopyFile;
use crate::types::ShardId;

const SUFFIX: &str = ".sst";
const TEMP_SUFFIX: &str = ".tmp";
/// The name of the link a file is ingested through: RocksDB moves it into the database, and
/// the file under its own name stays for a replay.
const INGEST_SUFFIX: &str = ".ingesting";

/// The directory of copy files on one node.
#[derive(Clone)]
pub struct CopyFiles {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    node_id: u64,
    built: AtomicU64,
}

impl CopyFiles {
    /// Opens (creating) the directory; files left half written by an earlier run are removed.
    pub fn open(dir: PathBuf, node_id: u64) -> io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        for entry in std::fs::read_dir(&dir)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if name.ends_with(TEMP_SUFFIX) || name.ends_with(INGEST_SUFFIX) {
                std::fs::remove_file(dir.join(&name))?;
            }
        }
        Ok(Self { inner: Arc::new(Inner { dir, node_id, built: AtomicU64::new(0) }) })
    }

    /// Where the file `name` lives; refuses a name that is not one of ours (path separators,
    /// `..`, odd characters), since names arrive in log entries and RPCs.
    pub fn path(&self, name: &str) -> io::Result<PathBuf> {
        let plain = name.len() <= 128
            && name.ends_with(SUFFIX)
            && !name.starts_with('.')
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !plain || name.contains("..") {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{name:?} is not a copy file name")));
        }
        Ok(self.inner.dir.join(name))
    }

    /// Whether this node holds `file` whole (its size; the CRC was checked when it arrived).
    pub fn holds(&self, file: &CopyFile) -> bool {
        self.path(&file.name).and_then(std::fs::metadata).is_ok_and(|m| m.len() == file.size)
    }

    /// Writes `records` (state-machine keys of `shard`, strictly ascending, and their values)
    /// into a new table file, durably, and returns it.
    pub fn build<'r>(
        &self,
        shard: ShardId,
        config_num: u64,
        records: impl IntoIterator<Item = (&'r [u8], &'r [u8])>,
    ) -> io::Result<CopyFile> {
        let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let seq = self.inner.built.fetch_add(1, Ordering::Relaxed);
        let name = format!("copy-{shard}-{config_num}-n{}-{nanos}-{seq}{SUFFIX}", self.inner.node_id);
        let path = self.path(&name)?;
        let temp = path.with_extension(&TEMP_SUFFIX[1..]);
        let opts = table_options();
        let mut writer = SstFileWriter::create(&opts);
        writer.open(&temp).map_err(io_err)?;
        for (key, value) in records {
            writer
                .put(key, value)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("copy file of shard {shard}: {e}")))?;
        }
        writer.finish().map_err(io_err)?;
        drop(writer);
        let (size, crc32) = size_and_crc(&temp)?;
        File::open(&temp)?.sync_all()?;
        std::fs::rename(&temp, &path)?;
        self.sync_dir()?;
        Ok(CopyFile { name, size, crc32 })
    }

    /// Starts receiving `file` from a peer.
    pub fn receive(&self, file: &CopyFile) -> io::Result<Receiving> {
        let path = self.path(&file.name)?;
        // Its own temporary name: a fetch cut short by a cancelled append may still be running
        // when the append is sent again.
        let temp = path.with_extension(format!("{:016x}{TEMP_SUFFIX}", rand::random::<u64>()));
        let out = File::create(&temp)?;
        Ok(Receiving { out, temp, path, expected: file.clone(), crc: crc32fast::Hasher::new(), size: 0 })
    }

    /// Opens `name` to send it to a peer.
    pub fn open_file(&self, name: &str) -> io::Result<File> {
        File::open(self.path(name)?)
    }

    /// Ingests `file` into the state machine's data. The caller has flushed the state
    /// machine's memtables: an ingest whose keys overlap a memtable flushes that column family
    /// alone, which would make its data durable ahead of the applied index.
    pub fn ingest(&self, db: &DB, file: &CopyFile) -> io::Result<()> {
        let path = self.path(&file.name)?;
        let link = path.with_extension(&INGEST_SUFFIX[1..]);
        match std::fs::remove_file(&link) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        std::fs::hard_link(&path, &link)
            .map_err(|e| io::Error::new(e.kind(), format!("copy file {} named by a log entry: {e}", path.display())))?;
        let mut opts = IngestExternalFileOptions::default();
        opts.set_move_files(true);
        db.ingest_external_file_cf_opts(cf(db, CF_DATA), &opts, vec![&link]).map_err(io_err)?;
        // Moved into the database, or linked there and removed here: either way it is gone.
        let _ = std::fs::remove_file(&link);
        Ok(())
    }

    /// Removes the named files (those of purged or truncated log entries).
    pub fn remove<'n>(&self, names: impl IntoIterator<Item = &'n str>) {
        for name in names {
            if let Ok(path) = self.path(name) {
                match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        tracing::warn!(file = %path.display(), error = %e, "could not remove a copy file");
                    }
                    _ => {}
                }
            }
        }
    }

    /// Removes every file no name in `named` refers to (at start: the files of entries gone
    /// from the log, and of copies never proposed). Returns how many it removed.
    pub fn remove_unnamed(&self, named: &HashSet<String>) -> io::Result<usize> {
        let mut removed = 0;
        for entry in std::fs::read_dir(&self.inner.dir)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if name.ends_with(SUFFIX) && !named.contains(&name) {
                std::fs::remove_file(self.inner.dir.join(&name))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.inner.dir)?.sync_all()
    }
}

/// A file arriving from a peer: written under a temporary name, published under its own only
/// once its size and CRC match what the entry naming it says.
pub struct Receiving {
    out: File,
    temp: PathBuf,
    path: PathBuf,
    expected: CopyFile,
    crc: crc32fast::Hasher,
    size: u64,
}

impl Receiving {
    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.size += data.len() as u64;
        if self.size > self.expected.size {
            return Err(self.mismatch());
        }
        self.crc.update(data);
        self.out.write_all(data)
    }

    /// Checks the file whole and publishes it durably.
    pub fn finish(self) -> io::Result<()> {
        if self.size != self.expected.size || self.crc.clone().finalize() != self.expected.crc32 {
            let error = self.mismatch();
            let _ = std::fs::remove_file(&self.temp);
            return Err(error);
        }
        self.out.sync_all()?;
        std::fs::rename(&self.temp, &self.path)?;
        File::open(self.path.parent().expect("a copy file lives in a directory"))?.sync_all()
    }

    fn mismatch(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "copy file {} arrived as {} bytes with CRC {:08x}; its entry says {} bytes with CRC {:08x}",
                self.expected.name,
                self.size,
                self.crc.clone().finalize(),
                self.expected.size,
                self.expected.crc32
            ),
        )
    }
}

impl Drop for Receiving {
    fn drop(&mut self) {
        // Unfinished (a broken stream): the temporary file goes; a finished one was renamed.
        let _ = std::fs::remove_file(&self.temp);
    }
}

/// Table options of copy files: the state machine's compression, so an ingested file reads
/// like one RocksDB wrote.
fn table_options() -> Options {
    let mut opts = Options::default();
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    opts
}

fn size_and_crc(path: &std::path::Path) -> io::Result<(u64, u32)> {
    let mut file = File::open(path)?;
    let mut crc = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok((size, crc.finalize()));
        }
        crc.update(&buf[..n]);
        size += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::keys::data_key;
    use crate::storage::open_db;

    fn records(shard: ShardId, n: u32) -> Vec<(Vec<u8>, Vec<u8>)> {
        (0..n).map(|i| (data_key(shard, format!("key-{i:05}").as_bytes()), vec![i as u8; 1000])).collect()
    }

    fn build(files: &CopyFiles, shard: ShardId, records: &[(Vec<u8>, Vec<u8>)]) -> CopyFile {
        files.build(shard, 3, records.iter().map(|(k, v)| (k.as_slice(), v.as_slice()))).unwrap()
    }

    #[test]
    fn a_built_file_ingests_into_the_data_and_stays_for_a_replay() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(&dir.path().join("db")).unwrap();
        let files = CopyFiles::open(dir.path().join("copies"), 1).unwrap();
        let written = records(7, 500);
        let file = build(&files, 7, &written);
        assert!(files.holds(&file));
        files.ingest(&db, &file).unwrap();
        for (key, value) in &written {
            assert_eq!(db.get_cf(cf(&db, CF_DATA), key).unwrap().as_deref(), Some(value.as_slice()));
        }
        // A replay after a crash ingests it again: the file is still there, whole.
        assert!(files.holds(&file));
        db.put_cf(cf(&db, CF_DATA), &written[0].0, b"newer").unwrap();
        files.ingest(&db, &file).unwrap();
        assert_eq!(db.get_cf(cf(&db, CF_DATA), &written[0].0).unwrap().as_deref(), Some(&written[0].1[..]));
    }

    #[test]
    fn keys_out_of_order_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let files = CopyFiles::open(dir.path().to_path_buf(), 1).unwrap();
        let mut unordered = records(1, 3);
        unordered.swap(0, 2);
        let refused = files.build(1, 3, unordered.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
        assert_eq!(refused.unwrap_err().kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn a_received_file_is_published_only_whole_and_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let sender = CopyFiles::open(dir.path().join("a"), 1).unwrap();
        let receiver = CopyFiles::open(dir.path().join("b"), 2).unwrap();
        let file = build(&sender, 2, &records(2, 300));
        let bytes = std::fs::read(sender.path(&file.name).unwrap()).unwrap();

        let mut truncated = receiver.receive(&file).unwrap();
        truncated.write(&bytes[..bytes.len() - 1]).unwrap();
        assert!(truncated.finish().is_err());
        assert!(!receiver.holds(&file));

        let mut damaged = bytes.clone();
        damaged[bytes.len() / 2] ^= 1;
        let mut changed = receiver.receive(&file).unwrap();
        changed.write(&damaged).unwrap();
        let error = changed.finish().unwrap_err().to_string();
        assert!(error.contains("CRC"), "{error}");
        assert!(!receiver.holds(&file));

        let mut longer = receiver.receive(&file).unwrap();
        assert!(longer.write(&[bytes.as_slice(), b"x"].concat()).is_err());
        drop(longer);

        let mut whole = receiver.receive(&file).unwrap();
        for part in bytes.chunks(4096) {
            whole.write(part).unwrap();
        }
        whole.finish().unwrap();
        assert!(receiver.holds(&file));
        let names: Vec<_> = std::fs::read_dir(dir.path().join("b")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from(&file.name)], "no temporary file is left");
    }

    #[test]
    fn names_that_leave_the_directory_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let files = CopyFiles::open(dir.path().to_path_buf(), 1).unwrap();
        for name in ["../x.sst", "a/b.sst", ".sst", "x.txt", "..sst", "", "x\0.sst"] {
            assert!(files.path(name).is_err(), "{name:?}");
        }
        assert!(files.path("copy-1-2-n3-4-5.sst").is_ok());
    }

    #[test]
    fn at_start_files_no_entry_names_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let files = CopyFiles::open(dir.path().to_path_buf(), 1).unwrap();
        let kept = build(&files, 1, &records(1, 10));
        let dropped = build(&files, 1, &records(1, 10));
        std::fs::write(dir.path().join("half.tmp"), b"x").unwrap();
        let files = CopyFiles::open(dir.path().to_path_buf(), 1).unwrap();
        assert!(!dir.path().join("half.tmp").exists());
        assert_eq!(files.remove_unnamed(&HashSet::from([kept.name.clone()])).unwrap(), 1);
        assert!(files.holds(&kept) && !files.holds(&dropped));
    }
}
