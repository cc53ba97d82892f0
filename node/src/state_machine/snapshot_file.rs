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
/// Records larger than this are corruption, not data (values are capped far below).
const MAX_RECORD_PART: u32 = 64 << 20;

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
    pub header: SnapshotHeader,
}

pub struct Record {
    pub kind: RecordKind,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

impl SnapshotReader {
    pub fn open(path: &Path) -> io::Result<Self> {
        let mut input = BufReader::with_capacity(1 << 20, File::open(path)?);
        let mut crc = Hasher::new();
        let mut magic = [0u8; 8];
        read_hashed(&mut input, &mut crc, &mut magic)?;
        if &magic != MAGIC {
            return Err(corrupt("not a shardkv snapshot (bad magic)"));
        }
        let header_len = read_u32(&mut input, &mut crc)?;
        if header_len > MAX_RECORD_PART {
            return Err(corrupt(format!("header length {header_len}")));
        }
        let mut header = vec![0u8; header_len as usize];
        read_hashed(&mut input, &mut crc, &mut header)?;
        let header = decode(&header)?;
        Ok(Self { input, crc, records: 0, header })
    }

    /// The next record, or `None` at the trailer, which is then checked.
    pub fn next_record(&mut self) -> io::Result<Option<Record>> {
        let mut kind = [0u8; 1];
        read_hashed(&mut self.input, &mut self.crc, &mut kind)?;
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
        let key_len = read_u32(&mut self.input, &mut self.crc)?;
        let value_len = read_u32(&mut self.input, &mut self.crc)?;
        if key_len > MAX_RECORD_PART || value_len > MAX_RECORD_PART {
            return Err(corrupt(format!("record lengths {key_len}/{value_len}")));
        }
        let mut key = vec![0u8; key_len as usize];
        read_hashed(&mut self.input, &mut self.crc, &mut key)?;
        let mut value = vec![0u8; value_len as usize];
        read_hashed(&mut self.input, &mut self.crc, &mut value)?;
        self.records += 1;
        Ok(Some(Record { kind, key, value }))
    }

    fn check_trailer(&mut self) -> io::Result<()> {
        let mut count = [0u8; 8];
        read_hashed(&mut self.input, &mut self.crc, &mut count)?;
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

/// Reads the whole file once and checks its structure and checksum.
pub fn verify(path: &Path) -> io::Result<SnapshotHeader> {
    let mut reader = SnapshotReader::open(path)?;
    while reader.next_record()?.is_some() {}
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

fn read_u32(input: &mut impl Read, crc: &mut Hasher) -> io::Result<u32> {
    let mut b = [0u8; 4];
    read_hashed(input, crc, &mut b)?;
    Ok(u32::from_le_bytes(b))
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
    fn a_flipped_byte_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        write_sample(&path);
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let err = verify(&path).unwrap_err();
        assert!(err.to_string().contains("snapshot corrupt"), "{err}");
    }

    #[test]
    fn a_truncated_file_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        write_sample(&path);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
        assert!(verify(&path).is_err());
    }
}
