//! The newest entries of the Raft log, kept in memory as they are appended. Right after an
//! append, replication to each follower and then the state machine read those same entries;
//! served from here, each read is a clone instead of a RocksDB iterator and a decode per entry.
//! The tail only ever holds entries RocksDB holds too (or is about to, during an append), so a
//! read it cannot serve whole falls back to RocksDB.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::sync::PoisonError;

use openraft::entry::RaftEntry;

use crate::types::Entry;

/// Encoded bytes of entries the tail keeps: the entries in flight to followers and not yet
/// applied, at hundreds of thousands of small entries per second, with room to spare.
pub const LOG_TAIL_BYTES: usize = 4 << 20;

pub struct LogTail {
    limit: usize,
    inner: Mutex<Tail>,
}

#[derive(Default)]
struct Tail {
    /// Consecutive indexes, oldest first, each with its encoded size.
    entries: VecDeque<(Entry, usize)>,
    bytes: usize,
}

impl Tail {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|(entry, _)| entry.index())
    }

    fn end_index(&self) -> Option<u64> {
        self.entries.back().map(|(entry, _)| entry.index() + 1)
    }

    fn pop_front(&mut self) {
        if let Some((_, bytes)) = self.entries.pop_front() {
            self.bytes -= bytes;
        }
    }

    fn pop_back(&mut self) {
        if let Some((_, bytes)) = self.entries.pop_back() {
            self.bytes -= bytes;
        }
    }
}

impl LogTail {
    pub fn new(limit: usize) -> Self {
        Self { limit, inner: Mutex::default() }
    }

    fn lock(&self) -> MutexGuard<'_, Tail> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds appended entries (in index order, each with its encoded size), dropping the oldest
    /// past the byte limit. Entries that do not follow the tail replace it.
    pub fn appended(&self, entries: impl IntoIterator<Item = (Entry, usize)>) {
        let mut tail = self.lock();
        for (entry, bytes) in entries {
            if tail.end_index().is_some_and(|end| end != entry.index()) {
                *tail = Tail::default();
            }
            tail.bytes += bytes;
            tail.entries.push_back((entry, bytes));
        }
        while tail.bytes > self.limit {
            tail.pop_front();
        }
    }

    /// Forgets the entries from index `from` on (the log was truncated there).
    pub fn truncated(&self, from: u64) {
        let mut tail = self.lock();
        while tail.end_index().is_some_and(|end| end > from) {
            tail.pop_back();
        }
    }

    /// Forgets the entries up to and including index `upto` (the log was purged there).
    pub fn purged(&self, upto: u64) {
        let mut tail = self.lock();
        while tail.first_index().is_some_and(|first| first <= upto) {
            tail.pop_front();
        }
    }

    /// Copies of the entries with indexes `start..end`, if the tail holds every one of them.
    pub fn get(&self, start: u64, end: u64) -> Option<Vec<Entry>> {
        let tail = self.lock();
        let first = tail.first_index()?;
        if start < first || end > tail.end_index()? || start > end {
            return None;
        }
        let from = (start - first) as usize;
        Some(tail.entries.range(from..from + (end - start) as usize).map(|(entry, _)| entry.clone()).collect())
    }
}

#[cfg(test)]
mod tests {
    use openraft::EntryPayload;

    use super::*;
    use crate::types::hostile_input;

    fn entry(index: u64) -> (Entry, usize) {
        (Entry { log_id: hostile_input::log_id(1, index), payload: EntryPayload::Blank }, 10)
    }

    fn indexes(entries: Option<Vec<Entry>>) -> Option<Vec<u64>> {
        entries.map(|entries| entries.iter().map(RaftEntry::index).collect())
    }

    #[test]
    fn serves_only_ranges_it_holds_whole() {
        let tail = LogTail::new(1000);
        tail.appended((5..10).map(entry));
        assert_eq!(indexes(tail.get(6, 9)), Some(vec![6, 7, 8]));
        assert_eq!(indexes(tail.get(5, 10)), Some(vec![5, 6, 7, 8, 9]));
        assert_eq!(indexes(tail.get(7, 7)), Some(vec![]));
        assert_eq!(tail.get(4, 6), None, "index 4 is only in RocksDB");
        assert_eq!(tail.get(8, 11), None, "index 10 is not in the log");
    }

    #[test]
    fn drops_the_oldest_entries_past_its_byte_limit() {
        let tail = LogTail::new(30);
        tail.appended((1..=5).map(entry));
        assert_eq!(tail.get(2, 3), None);
        assert_eq!(indexes(tail.get(3, 6)), Some(vec![3, 4, 5]));
    }

    #[test]
    fn truncation_and_purge_remove_their_entries() {
        let tail = LogTail::new(1000);
        tail.appended((1..=6).map(entry));
        tail.truncated(5);
        assert_eq!(tail.get(4, 6), None);
        tail.purged(2);
        assert_eq!(tail.get(2, 4), None);
        assert_eq!(indexes(tail.get(3, 5)), Some(vec![3, 4]));
        tail.appended([entry(5)]);
        assert_eq!(indexes(tail.get(3, 6)), Some(vec![3, 4, 5]));
    }

    #[test]
    fn entries_that_do_not_follow_replace_the_tail() {
        let tail = LogTail::new(1000);
        tail.appended((1..=3).map(entry));
        tail.appended([entry(7)]);
        assert_eq!(tail.get(1, 2), None);
        assert_eq!(indexes(tail.get(7, 8)), Some(vec![7]));
    }
}
