//! Exactly-once bookkeeping for one client session (Raft thesis §6.3), and when sessions expire.
//!
//! A session remembers the results of writes the client may still retry. The client tells us
//! with every write the lowest sequence number it still waits for (`first_unacked`); results
//! below it can never be asked for again and are dropped. Two more bounds keep the table small
//! whatever clients do:
//! - a session caches at most [`MAX_CACHED_RESPONSES`] results, and results, not values: one
//!   slow request pinning `first_unacked` cannot make it grow without end;
//! - a session nobody wrote through for the expiry time is deleted. Time comes from the log
//!   only (clock entries the leader proposes, see [`SessionClock`]), so every replica expires
//!   the same sessions at the same entry.

use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::time::Duration;

use serde::Deserialize;
use serde::Serialize;

use crate::types::Op;
use crate::types::OpResult;
use crate::types::decode;
use crate::types::encode;

/// Results a session keeps at most. A client has at most this many writes of one session to
/// one shard in flight before the oldest one's retry is refused as outcome-unknown; the Rust
/// client has one write per caller task in flight, far below it.
pub const MAX_CACHED_RESPONSES: usize = 1024;

/// The clock keeps about this many marks per expiry time: expiry is late by at most
/// `expiry / MARKS_PER_EXPIRY` (plus one tick), and the clock record stays small.
const MARKS_PER_EXPIRY: u64 = 64;

/// Where the session clock is stored (sharding-state column family, so snapshots carry it).
pub const CLOCK_KEY: &[u8] = b"session_clock";

/// A stored session starts with this word, which a session of the first format cannot start
/// with (it started with the acknowledged sequence number, never `u64::MAX`).
const FORMAT_2: [u8; 8] = u64::MAX.to_le_bytes();

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Log index of the last write through this session (or of the chunk that moved it here).
    /// First field, so that a sweep reads it without decoding the rest.
    last_active: u64,
    /// Every sequence number below this has been acknowledged by the client.
    acked_below: u64,
    /// Results of sequence numbers below this may have been evicted to respect the cap.
    evicted_below: u64,
    /// Results of applied writes at or above `acked_below`.
    responses: BTreeMap<u64, Cached>,
}

/// What a retry needs to get the original answer, without the values a result may carry: a
/// successful compare-and-swap's previous value is the expected value the retry carries again.
/// A failed compare-and-swap is not cached at all: it changed nothing, so evaluating its retry
/// again is linearizable (the caller never saw the first answer), and its previous value could
/// be as large as any value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cached {
    Put,
    Delete { existed: bool },
    CasSucceeded,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Dedup {
    /// Not applied before: apply it.
    Fresh,
    /// Already applied: answer with the cached result, do not apply again.
    Duplicate(Cached),
    /// Below what the client acknowledged: a stale retry nobody waits for.
    Expired,
    /// Older than every cached result and not cached: it may have been applied and its result
    /// evicted, so it is neither applied again nor answered.
    Evicted,
}

impl Cached {
    /// The cached form of `result`; `None` for results that are not cached.
    fn of(result: &OpResult) -> Option<Cached> {
        match result {
            OpResult::Put => Some(Cached::Put),
            OpResult::Delete { existed } => Some(Cached::Delete { existed: *existed }),
            OpResult::CompareAndSwap { succeeded: true, .. } => Some(Cached::CasSucceeded),
            _ => None,
        }
    }

    /// The original result, given the retried operation.
    pub fn result(self, op: &Op) -> OpResult {
        match (self, op) {
            (Cached::Put, _) => OpResult::Put,
            (Cached::Delete { existed }, _) => OpResult::Delete { existed },
            (Cached::CasSucceeded, Op::CompareAndSwap { expected, .. }) => {
                OpResult::CompareAndSwap { succeeded: true, previous: expected.clone() }
            }
            (Cached::CasSucceeded, _) => OpResult::CompareAndSwap { succeeded: true, previous: None },
        }
    }
}

impl Session {
    pub fn check(&self, seq: u64) -> Dedup {
        if seq < self.acked_below {
            return Dedup::Expired;
        }
        match self.responses.get(&seq) {
            Some(cached) => Dedup::Duplicate(*cached),
            None if seq < self.evicted_below => Dedup::Evicted,
            None => Dedup::Fresh,
        }
    }

    /// Records the result of `seq`, applied at log index `index`.
    pub fn record(&mut self, seq: u64, first_unacked: u64, result: &OpResult, index: u64) {
        self.last_active = index;
        if let Some(cached) = Cached::of(result) {
            self.responses.insert(seq, cached);
        }
        if first_unacked > self.acked_below {
            self.acked_below = first_unacked;
            self.responses = self.responses.split_off(&first_unacked);
        }
        while self.responses.len() > MAX_CACHED_RESPONSES {
            let (oldest, _) = self.responses.pop_first().expect("over the cap, so not empty");
            self.evicted_below = self.evicted_below.max(oldest + 1);
        }
    }

    /// Marks the session active at `index` (it moved here with its shard).
    pub fn touch(&mut self, index: u64) {
        self.last_active = index;
    }

    /// How many results this session keeps for retries.
    pub fn cached_results(&self) -> usize {
        self.responses.len()
    }

    pub fn last_active(&self) -> u64 {
        self.last_active
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        [FORMAT_2.as_slice(), &encode(self)].concat()
    }

    /// Decodes a stored session of either format. A first-format session (before expiry and
    /// the cap) is converted: last active at index 0, so it expires one expiry time after the
    /// first clock entry unless written through again.
    pub fn from_bytes(bytes: &[u8]) -> std::io::Result<Session> {
        match bytes.strip_prefix(FORMAT_2.as_slice()) {
            Some(rest) => decode(rest),
            None => decode::<LegacySession>(bytes).map(LegacySession::upgrade),
        }
    }

    /// The stored form of `bytes` in the current format, when it is an old one: old sessions
    /// may hold large values (any number of 1 MiB compare-and-swap results), so a snapshot
    /// stores them converted, which keeps every record under the reader's limit.
    pub fn upgraded_bytes(bytes: &[u8]) -> Option<Vec<u8>> {
        if bytes.starts_with(&FORMAT_2) {
            return None;
        }
        Session::from_bytes(bytes).ok().map(|session| session.to_bytes())
    }
}

/// The log index a stored session was last active at, read without decoding the rest; 0 for a
/// session of the first format (or bytes that are no session), which therefore expires first.
pub fn last_active_in(bytes: &[u8]) -> u64 {
    bytes
        .strip_prefix(FORMAT_2.as_slice())
        .and_then(|rest| rest.first_chunk::<8>())
        .map_or(0, |index| u64::from_le_bytes(*index))
}

/// The first stored format of a session.
#[derive(Debug, Serialize, Deserialize)]
struct LegacySession {
    acked_below: u64,
    responses: BTreeMap<u64, OpResult>,
}

impl LegacySession {
    fn upgrade(self) -> Session {
        let responses = self.responses.iter().filter_map(|(seq, r)| Some((*seq, Cached::of(r)?))).collect();
        Session { last_active: 0, acked_below: self.acked_below, evicted_below: 0, responses }
    }
}

/// Log time, from the clock entries the leader proposes: which log indexes are at least one
/// expiry time old. Sessions are stamped with log indexes, not times, so a session created
/// while no clock entry was proposed for a long time (an idle group proposes none) is never
/// mistaken for an old one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionClock {
    /// Clock entries, oldest first, at least `expiry / MARKS_PER_EXPIRY` apart; the first is the
    /// newest one known to be an expiry time old, once there is one.
    marks: VecDeque<Mark>,
    /// Sessions last active below this index are gone.
    swept_below: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Mark {
    index: u64,
    time_ms: u64,
}

impl SessionClock {
    /// Applies the clock entry at `index` carrying the leader's time `now_ms`. Returns the log
    /// index below which sessions are now expired, when it moved: every entry below it was
    /// proposed before a clock entry whose time is `expiry_ms` or more before `now_ms`. Log time
    /// never goes back, whatever the leaders' clocks say.
    pub fn tick(&mut self, index: u64, now_ms: u64, expiry_ms: u64) -> Option<u64> {
        let now = self.marks.back().map_or(now_ms, |last| last.time_ms.max(now_ms));
        let spacing = (expiry_ms / MARKS_PER_EXPIRY).max(1);
        if self.marks.back().is_none_or(|last| now - last.time_ms >= spacing) {
            self.marks.push_back(Mark { index, time_ms: now });
        }
        let old = self.marks.iter().rposition(|mark| mark.time_ms.saturating_add(expiry_ms) <= now)?;
        self.marks.drain(..old);
        let cutoff = self.marks[0].index;
        (cutoff > self.swept_below).then(|| {
            self.swept_below = cutoff;
            cutoff
        })
    }
}

/// How often a leader proposes a clock entry (while sessions exist): often enough that expiry
/// is not late by much, rarely enough that the log does not grow fast.
pub fn tick_interval(expiry: Duration) -> Duration {
    (expiry / 20).clamp(Duration::from_millis(100), Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cas(expected: &[u8]) -> Op {
        Op::CompareAndSwap { key: b"k".to_vec(), expected: Some(expected.to_vec()), new_value: b"new".to_vec() }
    }

    #[test]
    fn a_retry_gets_the_cached_response() {
        let mut s = Session::default();
        assert_eq!(s.check(1), Dedup::Fresh);
        s.record(1, 1, &OpResult::Delete { existed: true }, 10);
        assert_eq!(s.check(1), Dedup::Duplicate(Cached::Delete { existed: true }));
        assert_eq!(s.check(2), Dedup::Fresh);
        assert_eq!(s.last_active(), 10);
    }

    #[test]
    fn acknowledged_responses_are_forgotten() {
        let mut s = Session::default();
        for seq in 1..=5 {
            s.record(seq, 1, &OpResult::Put, seq);
        }
        assert_eq!(s.responses.len(), 5);
        s.record(6, 4, &OpResult::Put, 6);
        assert_eq!(s.responses.len(), 3, "4, 5 and 6 are still retryable");
        assert_eq!(s.check(3), Dedup::Expired);
        assert_eq!(s.check(4), Dedup::Duplicate(Cached::Put));
    }

    #[test]
    fn concurrent_writes_out_of_order_are_each_applied_once() {
        let mut s = Session::default();
        s.record(3, 1, &OpResult::Put, 1);
        assert_eq!(s.check(2), Dedup::Fresh, "2 was still in flight when 3 arrived");
        s.record(2, 1, &OpResult::Put, 2);
        assert_eq!(s.check(2), Dedup::Duplicate(Cached::Put));
        assert_eq!(s.check(3), Dedup::Duplicate(Cached::Put));
    }

    #[test]
    fn an_older_first_unacked_never_moves_the_watermark_back() {
        let mut s = Session::default();
        s.record(10, 10, &OpResult::Put, 1);
        s.record(11, 2, &OpResult::Put, 2);
        assert_eq!(s.check(9), Dedup::Expired);
    }

    /// One slow request (seq 1) keeps `first_unacked` at 1 while thousands of writes complete.
    #[test]
    fn a_pinned_window_keeps_only_the_newest_results_and_refuses_older_retries() {
        let mut s = Session::default();
        let writes = 3 * MAX_CACHED_RESPONSES as u64;
        for seq in 2..=writes {
            s.record(seq, 1, &OpResult::Put, seq);
        }
        assert_eq!(s.responses.len(), MAX_CACHED_RESPONSES);
        assert_eq!(s.check(writes), Dedup::Duplicate(Cached::Put));
        assert_eq!(s.check(writes - MAX_CACHED_RESPONSES as u64 + 1), Dedup::Duplicate(Cached::Put));
        assert_eq!(s.check(writes - MAX_CACHED_RESPONSES as u64), Dedup::Evicted, "evicted, never applied again");
        assert_eq!(s.check(1), Dedup::Evicted, "the slow one cannot tell it apart; refused, not applied late");
        assert_eq!(s.check(writes + 1), Dedup::Fresh);
        assert!(s.to_bytes().len() < 16 * MAX_CACHED_RESPONSES + 64, "{} bytes", s.to_bytes().len());
    }

    #[test]
    fn compare_and_swap_results_are_cached_without_values() {
        let big = vec![7u8; 1 << 20];
        let mut s = Session::default();
        s.record(1, 1, &OpResult::CompareAndSwap { succeeded: true, previous: Some(big.clone()) }, 1);
        s.record(2, 1, &OpResult::CompareAndSwap { succeeded: false, previous: Some(big.clone()) }, 2);
        assert!(s.to_bytes().len() < 100, "{} bytes", s.to_bytes().len());
        let Dedup::Duplicate(cached) = s.check(1) else { panic!("{:?}", s.check(1)) };
        assert_eq!(cached.result(&cas(&big)), OpResult::CompareAndSwap { succeeded: true, previous: Some(big) });
        assert_eq!(s.check(2), Dedup::Fresh, "a failed compare-and-swap changed nothing: evaluated again");
    }

    #[test]
    fn sessions_round_trip_and_first_format_sessions_are_converted() {
        let mut s = Session::default();
        s.record(4, 2, &OpResult::Delete { existed: false }, 77);
        assert_eq!(Session::from_bytes(&s.to_bytes()).unwrap(), s);
        assert_eq!(last_active_in(&s.to_bytes()), 77);
        assert_eq!(Session::upgraded_bytes(&s.to_bytes()), None);

        let responses = BTreeMap::from([
            (3, OpResult::Put),
            (4, OpResult::CompareAndSwap { succeeded: false, previous: Some(vec![1; 4096]) }),
            (5, OpResult::CompareAndSwap { succeeded: true, previous: Some(vec![2; 4096]) }),
        ]);
        let old = encode(&LegacySession { acked_below: 3, responses });
        assert_eq!(last_active_in(&old), 0, "old sessions expire first");
        let converted = Session::from_bytes(&old).unwrap();
        assert_eq!(converted.check(2), Dedup::Expired);
        assert_eq!(converted.check(3), Dedup::Duplicate(Cached::Put));
        assert_eq!(converted.check(4), Dedup::Fresh);
        assert_eq!(converted.check(5), Dedup::Duplicate(Cached::CasSucceeded));
        let upgraded = Session::upgraded_bytes(&old).unwrap();
        assert!(upgraded.len() < 100, "{} bytes", upgraded.len());
        assert_eq!(Session::from_bytes(&upgraded).unwrap(), converted);
    }

    #[test]
    fn sessions_survive_hostile_bytes() {
        let mut s = Session::default();
        s.record(3, 1, &OpResult::Put, 5);
        crate::types::hostile_input::check::<Session>(&encode(&s));
        let old = LegacySession { acked_below: 1, responses: BTreeMap::from([(2, OpResult::Put)]) };
        crate::types::hostile_input::check::<LegacySession>(&encode(&old));
        assert!(Session::from_bytes(&FORMAT_2).is_err());
        assert_eq!(last_active_in(&FORMAT_2), 0);
    }

    const MINUTE: u64 = 60_000;

    #[test]
    fn sessions_expire_once_a_clock_entry_an_expiry_time_old_follows_them() {
        let mut clock = SessionClock::default();
        assert_eq!(clock.tick(10, 1_000_000, 10 * MINUTE), None, "nothing is old yet");
        assert_eq!(clock.tick(20, 1_000_000 + 5 * MINUTE, 10 * MINUTE), None);
        // Ten minutes after the entry at 10: everything before it is idle for the expiry time.
        assert_eq!(clock.tick(30, 1_000_000 + 10 * MINUTE, 10 * MINUTE), Some(10));
        assert_eq!(clock.tick(31, 1_000_000 + 10 * MINUTE + 1, 10 * MINUTE), None, "no new sweep");
        assert_eq!(clock.tick(40, 1_000_000 + 15 * MINUTE, 10 * MINUTE), Some(20));
        assert!(clock.marks.len() <= 3, "old marks are dropped: {:?}", clock.marks);
    }

    #[test]
    fn a_session_started_after_a_long_idle_time_is_not_expired_early() {
        let mut clock = SessionClock::default();
        assert_eq!(clock.tick(5, 0, MINUTE), None);
        // An hour without clock entries (no sessions); a session is created at index 6, then the
        // next clock entry comes. Only what is older than the entry at 5 may expire.
        assert_eq!(clock.tick(7, 60 * MINUTE, MINUTE), Some(5));
        assert_eq!(clock.tick(8, 60 * MINUTE + 1000, MINUTE), None, "the session at 6 lives on");
        assert_eq!(clock.tick(9, 61 * MINUTE, MINUTE), Some(7));
    }

    #[test]
    fn log_time_never_goes_back() {
        let mut clock = SessionClock::default();
        clock.tick(1, 10 * MINUTE, MINUTE);
        // A new leader whose clock is behind: its entries count as the latest time seen.
        assert_eq!(clock.tick(2, 0, MINUTE), None);
        assert_eq!(clock.tick(3, 11 * MINUTE, MINUTE), Some(1));
    }

    #[test]
    fn the_clock_stays_small_however_often_it_ticks() {
        let mut clock = SessionClock::default();
        for i in 0..10_000u64 {
            clock.tick(i, i * 100, 10 * MINUTE);
        }
        assert!(clock.marks.len() <= MARKS_PER_EXPIRY as usize + 2, "{} marks", clock.marks.len());
        crate::types::hostile_input::check::<SessionClock>(&encode(&clock));
    }

    #[test]
    fn ticks_are_a_twentieth_of_the_expiry_within_bounds() {
        assert_eq!(tick_interval(Duration::from_secs(600)), Duration::from_secs(5));
        assert_eq!(tick_interval(Duration::from_secs(20)), Duration::from_secs(1));
        assert_eq!(tick_interval(Duration::from_secs(1)), Duration::from_millis(100));
    }
}
