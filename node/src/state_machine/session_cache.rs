//! The sessions the state machine wrote last, kept in memory so that applying a write does not
//! look its session up in RocksDB: under load that lookup, a search of a memtable holding every
//! version of every session, took about a tenth of a put's CPU.
//!
//! RocksDB stays the source of truth. A batch takes the sessions it writes out of the cache
//! (so they are moved, not copied) and the cache gets them back, changed, after the batch is
//! written; it is emptied whenever sessions change any other way (a shard dropped, a snapshot
//! installed). So an entry is always what RocksDB holds, and a batch that fails to be written
//! leaves only misses behind.

use std::collections::HashMap;

use super::session::Session;

/// Sessions kept at most. A session belongs to one client in one shard, so a client that
/// writes all over the key space has one per shard: this holds 512 such clients of a 64-shard
/// cluster (at 8,192, 256 benchmark clients missed the cache on every write). Beyond it, new
/// sessions are read from RocksDB as before; sessions already cached are still updated. With a
/// few results each (a few hundred bytes), this is at most about 10 MiB.
const MAX_SESSIONS: usize = 32_768;
/// A session caching more results than this is not kept (a client with many writes in flight):
/// it bounds the memory of the whole cache.
const MAX_RESULTS_PER_SESSION: usize = 64;

/// A seeded fast hash: SipHash over 32k keys was a visible share of a put's CPU.
#[derive(Default)]
pub struct SessionCache {
    sessions: HashMap<[u8; 12], Session, foldhash::fast::RandomState>,
}

impl SessionCache {
    /// Takes the session stored at `key` out of the cache, if it is cached; the batch that
    /// took it gives it back through [`SessionCache::written`].
    pub fn take(&mut self, key: &[u8; 12]) -> Option<Session> {
        self.sessions.remove(key)
    }

    /// Takes in the sessions a batch has written to RocksDB (a default session is a deleted
    /// one); `reset` empties the cache first, for a batch that also deleted sessions wholesale.
    pub fn written(&mut self, written: HashMap<[u8; 12], Session>, reset: bool) {
        if reset {
            self.sessions.clear();
        }
        for (key, session) in written {
            let keep = session != Session::default() && session.cached_results() <= MAX_RESULTS_PER_SESSION;
            if !keep {
                self.sessions.remove(&key);
            } else if self.sessions.len() < MAX_SESSIONS || self.sessions.contains_key(&key) {
                self.sessions.insert(key, session);
            }
        }
    }

    /// Forgets every session, for when RocksDB's sessions were replaced.
    pub fn clear(&mut self) {
        self.sessions.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::OpResult;

    fn key(n: u64) -> [u8; 12] {
        let mut key = [0; 12];
        key[4..].copy_from_slice(&n.to_be_bytes());
        key
    }

    fn session_with_results(results: u64) -> Session {
        let mut session = Session::default();
        for seq in 1..=results {
            session.record(seq, 1, &OpResult::Put, seq);
        }
        session
    }

    #[test]
    fn written_sessions_are_cached_and_deleted_ones_forgotten() {
        let mut cache = SessionCache::default();
        cache.written(HashMap::from([(key(1), session_with_results(1)), (key(2), session_with_results(2))]), false);
        cache.written(HashMap::from([(key(1), Session::default())]), false);
        assert_eq!(cache.take(&key(1)), None);
        assert_eq!(cache.take(&key(2)), Some(session_with_results(2)));
        assert_eq!(cache.take(&key(2)), None, "taken until the batch gives it back");
        cache.written(HashMap::from([(key(2), session_with_results(3))]), false);
        assert_eq!(cache.take(&key(2)), Some(session_with_results(3)));
    }

    #[test]
    fn a_reset_forgets_sessions_the_batch_did_not_write() {
        let mut cache = SessionCache::default();
        cache.written(HashMap::from([(key(1), session_with_results(1))]), false);
        cache.written(HashMap::from([(key(2), session_with_results(1))]), true);
        assert_eq!(cache.take(&key(1)), None);
        cache.written(HashMap::from([(key(2), session_with_results(1))]), false);
        cache.clear();
        assert_eq!(cache.take(&key(2)), None);
    }

    #[test]
    fn the_cache_is_bounded_in_sessions_and_results_but_updates_what_it_holds() {
        let mut cache = SessionCache::default();
        let full: HashMap<_, _> = (0..MAX_SESSIONS as u64).map(|n| (key(n), session_with_results(1))).collect();
        cache.written(full, false);
        cache.written(HashMap::from([(key(u64::MAX), session_with_results(1))]), false);
        assert_eq!(cache.take(&key(u64::MAX)), None, "no room for a new session");
        cache.written(HashMap::from([(key(0), session_with_results(2))]), false);
        assert_eq!(cache.take(&key(0)), Some(session_with_results(2)), "a cached session is updated");
        let busy = session_with_results(MAX_RESULTS_PER_SESSION as u64 + 1);
        cache.written(HashMap::from([(key(1), busy)]), false);
        assert_eq!(cache.take(&key(1)), None, "a session with many results is not kept, not even stale");
    }
}
