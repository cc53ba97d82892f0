//! How a snapshot (a checkpoint directory) travels between replicas: its files packed into one
//! stream, written and read without holding a file in memory.
//!
//! ```text
//! "SKVSNAP2"
//! files:    u8 1 | u16 name_len | name | u64 len | the file's bytes
//! trailer:  u8 0 | u32 file_count | u32 crc32 of every byte before the crc
//! ```
//! The checksum is checked before the unpacked directory is used: a damaged stream is refused.
//! RocksDB's block checksums then guard every record read from the files.

use std::collections::BTreeSet;
use std::fs;
use std::fs::File;
use std::io;
use std::io::BufWriter;
use std::io::Read;
use std::io::Write;
use std::path::Path;

use crc32fast::Hasher;

const MAGIC: &[u8; 8] = b"SKVSNAP2";
/// The format before snapshots were checkpoints: named in the refusal.
const RECORDS_MAGIC: &[u8; 8] = b"SKVSNAP1";
const FILE: u8 = 1;
const END: u8 = 0;
/// RocksDB's file names are short; a longer one is corruption.
const MAX_NAME: u16 = 255;
const COPY_BUFFER: usize = 1 << 20;

fn corrupt(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("snapshot corrupt: {}", msg.into()))
}

/// Writes every file of `dir` to `out` in the archive format; returns the bytes written.
pub fn pack(dir: &Path, out: impl Write) -> io::Result<u64> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir)? {
        names.push(entry?.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    // Every file is opened before any is sent: sending takes a while, a newer snapshot may
    // remove this directory meanwhile, and an open file stays readable after its name is gone.
    let mut files = Vec::with_capacity(names.len());
    for name in names {
        check_name(&name)?;
        let file = File::open(dir.join(&name))?;
        let len = file.metadata()?.len();
        files.push((name, file, len));
    }
    let mut out = HashedWriter { out, crc: Hasher::new(), bytes: 0 };
    out.write_all(MAGIC)?;
    let count = files.len() as u32;
    for (name, file, len) in files {
        out.write_all(&[FILE])?;
        out.write_all(&(name.len() as u16).to_le_bytes())?;
        out.write_all(name.as_bytes())?;
        out.write_all(&len.to_le_bytes())?;
        let copied = io::copy(&mut file.take(len), &mut out)?;
        if copied != len {
            return Err(io::Error::other(format!("snapshot file {name} shrank while it was sent")));
        }
    }
    out.write_all(&[END])?;
    out.write_all(&count.to_le_bytes())?;
    let crc = out.crc.clone().finalize();
    out.out.write_all(&crc.to_le_bytes())?;
    out.out.flush()?;
    Ok(out.bytes + 4)
}

/// Reads an archive from `input` into the new directory `dir`, checking its structure and
/// checksum; files are fsynced. Returns the bytes of the files. On error `dir` may hold part of
/// the files: the caller removes it.
pub fn unpack(input: impl Read, dir: &Path) -> io::Result<u64> {
    let mut input = HashedReader { input, crc: Hasher::new() };
    let mut magic = [0u8; 8];
    input.read_exact_or_corrupt(&mut magic)?;
    if &magic == RECORDS_MAGIC {
        return Err(corrupt(
            "this snapshot is in the record format of shardkv before checkpoint snapshots; \
             upgrade the sending node",
        ));
    }
    if &magic != MAGIC {
        return Err(corrupt("not a shardkv snapshot (bad magic)"));
    }
    fs::create_dir(dir)?;
    let mut names = BTreeSet::new();
    let mut total = 0u64;
    loop {
        let mut tag = [0u8; 1];
        input.read_exact_or_corrupt(&mut tag)?;
        match tag[0] {
            FILE => {}
            END => break,
            other => return Err(corrupt(format!("unknown entry tag {other}"))),
        }
        let mut name_len = [0u8; 2];
        input.read_exact_or_corrupt(&mut name_len)?;
        let name_len = u16::from_le_bytes(name_len);
        if name_len == 0 || name_len > MAX_NAME {
            return Err(corrupt(format!("a file name of {name_len} bytes")));
        }
        let mut name = vec![0u8; name_len as usize];
        input.read_exact_or_corrupt(&mut name)?;
        let name = String::from_utf8(name).map_err(|_| corrupt("a file name that is not UTF-8"))?;
        check_name(&name)?;
        if !names.insert(name.clone()) {
            return Err(corrupt(format!("file {name} appears twice")));
        }
        let mut len = [0u8; 8];
        input.read_exact_or_corrupt(&mut len)?;
        let len = u64::from_le_bytes(len);
        let file = File::create_new(dir.join(&name))?;
        let mut writer = BufWriter::with_capacity(COPY_BUFFER, file);
        let copied = io::copy(&mut (&mut input).take(len), &mut writer)?;
        if copied != len {
            return Err(corrupt(format!("truncated in file {name} ({copied} of {len} bytes)")));
        }
        writer.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        total += len;
    }
    let mut count = [0u8; 4];
    input.read_exact_or_corrupt(&mut count)?;
    let count = u32::from_le_bytes(count);
    if count as usize != names.len() {
        return Err(corrupt(format!("trailer says {count} files, read {}", names.len())));
    }
    let expected = input.crc.clone().finalize();
    let mut crc = [0u8; 4];
    input.input.read_exact(&mut crc).map_err(|_| corrupt("truncated trailer"))?;
    if u32::from_le_bytes(crc) != expected {
        return Err(corrupt("checksum mismatch"));
    }
    if input.input.read(&mut [0u8; 1])? != 0 {
        return Err(corrupt("bytes after the trailer"));
    }
    File::open(dir)?.sync_all()?;
    Ok(total)
}

/// A plain file name: no path separators, no parent or current directory, nothing a
/// checkpoint does not write.
fn check_name(name: &str) -> io::Result<()> {
    let plain = !name.is_empty()
        && name.len() <= MAX_NAME as usize
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if plain { Ok(()) } else { Err(corrupt(format!("file name {name:?} is not a plain file name"))) }
}

struct HashedWriter<W> {
    out: W,
    crc: Hasher,
    bytes: u64,
}

impl<W: Write> Write for HashedWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.crc.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

struct HashedReader<R> {
    input: R,
    crc: Hasher,
}

impl<R: Read> HashedReader<R> {
    fn read_exact_or_corrupt(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.read_exact(buf).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => corrupt("truncated"),
            _ => e,
        })
    }
}

impl<R: Read> Read for HashedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.input.read(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use rand::Rng;
    use rand::SeedableRng;

    use super::*;

    fn sample_dir(root: &Path) -> std::path::PathBuf {
        let dir = root.join("source");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("000012.sst"), vec![7u8; 300_000]).unwrap();
        fs::write(dir.join("MANIFEST-000005"), b"manifest").unwrap();
        fs::write(dir.join("CURRENT"), b"MANIFEST-000005\n").unwrap();
        fs::write(dir.join("empty.log"), b"").unwrap();
        dir
    }

    fn packed(root: &Path) -> Vec<u8> {
        let mut bytes = Vec::new();
        let written = pack(&sample_dir(root), &mut bytes).unwrap();
        assert_eq!(written, bytes.len() as u64);
        bytes
    }

    fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut files: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.file_name().to_string_lossy().into_owned(), fs::read(e.path()).unwrap())
            })
            .collect();
        files.sort();
        files
    }

    #[test]
    fn a_directory_round_trips() {
        let root = tempfile::tempdir().unwrap();
        let bytes = packed(root.path());
        let target = root.path().join("target");
        let total = unpack(bytes.as_slice(), &target).unwrap();
        assert_eq!(total, 300_000 + 8 + 16);
        assert_eq!(files(&target), files(&root.path().join("source")));
    }

    #[test]
    fn a_directory_removed_while_it_is_sent_arrives_whole() {
        let root = tempfile::tempdir().unwrap();
        let source = sample_dir(root.path());
        let expected = files(&source);
        let (reader, writer) = std::io::pipe().unwrap();
        let gone = source.clone();
        // The pipe holds far less than the archive: packing blocks until unpacking reads.
        let packer = std::thread::spawn(move || pack(&source, writer));
        let mut reader = std::io::BufReader::new(reader);
        let mut magic = [0u8; 8];
        reader.read_exact(&mut magic).unwrap();
        fs::remove_dir_all(&gone).unwrap();
        let target = root.path().join("target");
        unpack(io::Cursor::new(magic).chain(reader), &target).unwrap();
        packer.join().unwrap().unwrap();
        assert_eq!(files(&target), expected);
    }

    #[test]
    fn damaged_truncated_or_extended_archives_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let original = packed(root.path());
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut attempt = 0;
        let mut refused = |bytes: &[u8]| {
            attempt += 1;
            let target = root.path().join(format!("t{attempt}"));
            unpack(bytes, &target).is_err()
        };
        for len in (0..original.len()).step_by(9973).chain([original.len() - 1]) {
            assert!(refused(&original[..len]), "a {len}-byte prefix was accepted");
        }
        for _ in 0..200 {
            let mut bytes = original.clone();
            let at = rng.random_range(0..bytes.len());
            bytes[at] = bytes[at].wrapping_add(rng.random_range(1..=255));
            assert!(refused(&bytes), "a changed byte at {at} went unnoticed");
        }
        assert!(refused(&[original.as_slice(), b"x"].concat()), "trailing bytes");
    }

    #[test]
    fn names_that_leave_the_directory_are_refused() {
        let root = tempfile::tempdir().unwrap();
        for name in ["../escape", "/etc/passwd", "..", "a/b", "", "sp ace"] {
            let mut bytes = MAGIC.to_vec();
            bytes.push(FILE);
            bytes.extend((name.len() as u16).to_le_bytes());
            bytes.extend(name.as_bytes());
            bytes.extend(1u64.to_le_bytes());
            bytes.push(b'x');
            let err = unpack(bytes.as_slice(), &root.path().join("t")).unwrap_err();
            assert!(err.to_string().contains("snapshot corrupt"), "{name:?}: {err}");
            fs::remove_dir_all(root.path().join("t")).ok();
        }
        assert!(!root.path().join("escape").exists());
    }

    #[test]
    fn the_record_format_of_older_nodes_is_named() {
        let root = tempfile::tempdir().unwrap();
        let err = unpack(&b"SKVSNAP1\0\0\0\0"[..], &root.path().join("t")).unwrap_err();
        assert!(err.to_string().contains("before checkpoint snapshots"), "{err}");
    }
}
