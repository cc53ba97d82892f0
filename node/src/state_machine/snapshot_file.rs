//! The on-disk snapshot format, written and read as a stream so that no snapshot is ever held
//! in memory.
//!
//! ```text
//! "SKVSNAP1" | u32 header_len | header (bincode: last log id, membership)
//! records:  u8 kind (1 data, 2 session, 3 sharding state) | u32 key_len | u32 value_len | key | value
//! trailer:  u8 0 | u64 record_count | u32 crc32 of every byte before the crc
//! ```
//! The checksum is verified before a snapshot is installed: a damaged file is refused.

use std::fs::File;
use std::io;
use std::io::BufReader;
use std::io::BufWriter;
use std::io::Read;
use std::io::Write;
use std::path::Path;

use crc32fast::Hasher;
use serde::Deserialize;
use serde::Serialize;

use crate::types::LogId;
use crate::types::StoredMembership;
use crate::types::decode;
use crate::types::encode;

const MAGIC: &[u8; 8] = b"SKVSNAP1";
const END: u8 = 0;
/// Records larger than this are corruption, not data (values are capped far below). The writer
/// refuses to write one, so that every snapshot written can be installed.
pub const MAX_RECORD_PART: u32 = 64 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    Data = 1,
    Session = 2,
    /// Sharding state: configs (meta group) or shard states (data group).
    Shards = 3,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotHeader {
    pub last_log_id: Option<LogId>,
    pub membership: StoredMembership,
}

fn corrupt(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("snapshot corrupt: {}", msg.into()))
}

pub struct SnapshotWriter {
    out: BufWriter<File>,
    crc: Hasher,
    records: u64,
    bytes: u64,
}

impl SnapshotWriter {
    pub fn create(path: &Path, header: &SnapshotHeader) -> io::Result<Self> {
        let mut w = Self {
            out: BufWriter::with_capacity(1 << 20, File::create(path)?),
            crc: Hasher::new(),
            records: 0,
            bytes: 0,
        };
        let header = encode(header);
        w.put(MAGIC)?;
        w.put(&(header.len() as u32).to_le_bytes())?;
        w.put(&header)?;
        Ok(w)
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.crc.update(bytes);
        self.bytes += bytes.len() as u64;
        self.out.write_all(bytes)
    }

    pub fn record(&mut self, kind: RecordKind, key: &[u8], value: &[u8]) -> io::Result<()> {
        for (what, len) in [("key", key.len()), ("value", value.len())] {
            if len > MAX_RECORD_PART as usize {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "a {kind:?} record {what} of {len} bytes is over the snapshot record limit of {MAX_RECORD_PART} \
                         bytes; no node could install the snapshot"
                    ),
                ));
            }
        }
        self.put(&[kind as u8])?;
        self.put(&(key.len() as u32).to_le_bytes())?;
        self.put(&(value.len() as u32).to_le_bytes())?;
        self.put(key)?;
        self.put(value)?;
        self.records += 1;
        Ok(())
    }

    /// Writes the trailer and fsyncs; returns the file size.
    pub fn finish(mut self) -> io::Result<u64> {
        self.put(&[END])?;
        self.put(&self.records.to_le_bytes())?;
        let crc = self.crc.clone().finalize();
        self.out.write_all(&crc.to_le_bytes())?;
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(self.bytes + 4)
    }
}

pub struct SnapshotReader {
    input: BufReader<File>,
    crc: Hasher,
    records: u64,
    /// Bytes of the file not read yet: no length read from the file may claim more.
    remaining: u64,
    pub header: SnapshotHeader,
}

pub struct Record {
    pub kind: RecordKind,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

impl SnapshotReader {
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        let remaining = file.metadata()?.len();
        let mut reader = Self {
            input: BufReader::with_capacity(1 << 20, file),
            crc: Hasher::new(),
            records: 0,
            remaining,
            header: SnapshotHeader { last_log_id: None, membership: StoredMembership::default() },
        };
        let mut magic = [0u8; 8];
        reader.read(&mut magic)?;
        if &magic != MAGIC {
            return Err(corrupt("not a shardkv snapshot (bad magic)"));
        }
        let header_len = reader.read_u32()?;
        let header = reader.read_part("header", header_len)?;
        reader.header = decode(&header).map_err(|e| corrupt(format!("header: {e}")))?;
        Ok(reader)
    }

    /// The next record, or `None` at the trailer, which is then checked.
    pub fn next_record(&mut self) -> io::Result<Option<Record>> {
        let mut kind = [0u8; 1];
        self.read(&mut kind)?;
        let kind = match kind[0] {
            END => {
                self.check_trailer()?;
                return Ok(None);
            }
            1 => RecordKind::Data,
            2 => RecordKind::Session,
            3 => RecordKind::Shards,
            other => return Err(corrupt(format!("unknown record kind {other}"))),
        };
        let key_len = self.read_u32()?;
        let value_len = self.read_u32()?;
        let key = self.read_part("record key", key_len)?;
        let value = self.read_part("record value", value_len)?;
        self.records += 1;
        Ok(Some(Record { kind, key, value }))
    }

    /// Reads a length-prefixed part, refusing a length above the format's limit or beyond the
    /// end of the file before allocating anything.
    fn read_part(&mut self, what: &str, len: u32) -> io::Result<Vec<u8>> {
        if len > MAX_RECORD_PART || u64::from(len) > self.remaining {
            return Err(corrupt(format!("{what} of {len} bytes ({} left in the file)", self.remaining)));
        }
        let mut part = vec![0u8; len as usize];
        self.read(&mut part)?;
        Ok(part)
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<()> {
        read_hashed(&mut self.input, &mut self.crc, buf)?;
        self.remaining = self.remaining.saturating_sub(buf.len() as u64);
        Ok(())
    }

    fn read_u32(&mut self) -> io::Result<u32> {
        let mut b = [0u8; 4];
        self.read(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn check_trailer(&mut self) -> io::Result<()> {
        let mut count = [0u8; 8];
        self.read(&mut count)?;
        if u64::from_le_bytes(count) != self.records {
            return Err(corrupt(format!("trailer says {} records, read {}", u64::from_le_bytes(count), self.records)));
        }
        let mut crc = [0u8; 4];
        self.input.read_exact(&mut crc).map_err(|_| corrupt("truncated trailer"))?;
        if u32::from_le_bytes(crc) != self.crc.clone().finalize() {
            return Err(corrupt("checksum mismatch"));
        }
        Ok(())
    }
}

/// Reads the whole file once and checks its structure, its checksum and, with `check`, the
/// content of every record.
pub fn verify(path: &Path, mut check: impl FnMut(&Record) -> Result<(), String>) -> io::Result<SnapshotHeader> {
    let mut reader = SnapshotReader::open(path)?;
    while let Some(record) = reader.next_record()? {
        check(&record).map_err(|reason| corrupt(format!("record {}: {reason}", reader.records)))?;
    }
    Ok(reader.header)
}

fn read_hashed(input: &mut impl Read, crc: &mut Hasher, buf: &mut [u8]) -> io::Result<()> {
    input.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => corrupt("truncated"),
        _ => e,
    })?;
    crc.update(buf);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> SnapshotHeader {
        SnapshotHeader { last_log_id: None, membership: StoredMembership::default() }
    }

    fn write_sample(path: &Path) {
        let mut w = SnapshotWriter::create(path, &header()).unwrap();
        for i in 0..100u32 {
            w.record(RecordKind::Data, &i.to_be_bytes(), &[7u8; 300]).unwrap();
        }
        w.record(RecordKind::Session, b"s", b"v").unwrap();
        w.finish().unwrap();
    }

    #[test]
    fn round_trip_reads_every_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        write_sample(&path);
        let mut r = SnapshotReader::open(&path).unwrap();
        let mut n = 0;
        while let Some(rec) = r.next_record().unwrap() {
            if n < 100 {
                assert_eq!(rec.kind, RecordKind::Data);
                assert_eq!(rec.key, (n as u32).to_be_bytes());
            } else {
                assert_eq!(rec.kind, RecordKind::Session);
            }
            n += 1;
        }
        assert_eq!(n, 101);
    }

    #[test]
    fn the_writer_refuses_a_record_the_reader_would_refuse() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SnapshotWriter::create(&dir.path().join("s"), &header()).unwrap();
        let limit = vec![0u8; MAX_RECORD_PART as usize];
        w.record(RecordKind::Session, b"k", &limit).expect("a record at the limit is written");
        let err = w.record(RecordKind::Session, b"k", &[limit.as_slice(), &[0]].concat()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("over the snapshot record limit"), "{err}");
        w.finish().unwrap();
        let path = dir.path().join("s");
        let header = verify(&path, |r| if r.value.len() == limit.len() { Ok(()) } else { Err("other".into()) });
        assert!(header.is_ok(), "what was written reads back: {header:?}");
    }

    #[test]
    fn a_flipped_byte_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        write_sample(&path);
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let err = verify(&path, |_| Ok(())).unwrap_err();
        assert!(err.to_string().contains("snapshot corrupt"), "{err}");
    }

    #[test]
    fn a_truncated_file_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        write_sample(&path);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
        assert!(verify(&path, |_| Ok(())).is_err());
    }

    /// The byte offset of the first record's key length.
    fn first_record_at(path: &Path) -> usize {
        let bytes = std::fs::read(path).unwrap();
        let header_len = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
        12 + header_len + 1
    }

    #[test]
    fn lengths_beyond_the_file_are_refused_before_allocating() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        write_sample(&path);
        let original = std::fs::read(&path).unwrap();
        let at = first_record_at(&path);
        for (offset, len) in [(0, MAX_RECORD_PART), (4, MAX_RECORD_PART), (0, u32::MAX), (4, 1 << 30)] {
            let mut bytes = original.clone();
            bytes[at + offset..at + offset + 4].copy_from_slice(&len.to_le_bytes());
            std::fs::write(&path, &bytes).unwrap();
            let err = verify(&path, |_| Ok(())).unwrap_err();
            assert!(err.to_string().contains("left in the file"), "{err}");
        }
        let mut bytes = original.clone();
        bytes[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        assert!(SnapshotReader::open(&path).is_err(), "a header length beyond the file");
    }

    #[test]
    fn truncated_and_random_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        write_sample(&path);
        let original = std::fs::read(&path).unwrap();
        for len in (0..original.len()).step_by(97) {
            std::fs::write(&path, &original[..len]).unwrap();
            assert!(verify(&path, |_| Ok(())).is_err(), "a {len}-byte prefix verified");
        }
        use rand::Rng;
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for _ in 0..300 {
            let mut bytes = original.clone();
            let at = rng.random_range(0..bytes.len());
            bytes[at] = bytes[at].wrapping_add(rng.random_range(1..=255));
            std::fs::write(&path, &bytes).unwrap();
            assert!(verify(&path, |_| Ok(())).is_err(), "a changed byte at {at} went unnoticed");
            let mut random = MAGIC.to_vec();
            random.extend((0..rng.random_range(0..600)).map(|_| rng.random::<u8>()));
            std::fs::write(&path, &random).unwrap();
            assert!(verify(&path, |_| Ok(())).is_err());
        }
    }

    #[test]
    fn a_record_the_content_check_refuses_fails_verification() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        write_sample(&path);
        let err = verify(&path, |r| if r.kind == RecordKind::Session { Err("bad session".into()) } else { Ok(()) })
            .unwrap_err();
        assert!(err.to_string().contains("record 101: bad session"), "{err}");
    }

    #[test]
    fn headers_survive_hostile_bytes() {
        let header = SnapshotHeader {
            last_log_id: Some(crate::types::hostile_input::log_id(2, 30)),
            membership: StoredMembership::default(),
        };
        crate::types::hostile_input::check::<SnapshotHeader>(&encode(&header));
    }
}
