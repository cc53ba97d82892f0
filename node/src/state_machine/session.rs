//! Exactly-once bookkeeping for one client session (Raft thesis §6.3).
//!
//! A session remembers the responses of writes the client may still retry. The client tells us
//! with every write the lowest sequence number it still waits for (`first_unacked`); responses
//! below it can never be asked for again and are dropped, which bounds the table by the
//! client's concurrency.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::Serialize;

use crate::types::OpResult;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Every sequence number below this has been acknowledged by the client.
    acked_below: u64,
    /// Responses of applied writes at or above `acked_below`.
    responses: BTreeMap<u64, OpResult>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Dedup {
    /// Not applied before: apply it.
    Fresh,
    /// Already applied: answer with the cached response, do not apply again.
    Duplicate(OpResult),
    /// Below what the client acknowledged: a stale retry nobody waits for.
    Expired,
}

impl Session {
    pub fn check(&self, seq: u64) -> Dedup {
        if seq < self.acked_below {
            return Dedup::Expired;
        }
        match self.responses.get(&seq) {
            Some(result) => Dedup::Duplicate(result.clone()),
            None => Dedup::Fresh,
        }
    }

    pub fn record(&mut self, seq: u64, first_unacked: u64, result: OpResult) {
        self.responses.insert(seq, result);
        if first_unacked > self.acked_below {
            self.acked_below = first_unacked;
            self.responses = self.responses.split_off(&first_unacked);
        }
    }

    pub fn cached_responses(&self) -> usize {
        self.responses.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_gets_the_cached_response() {
        let mut s = Session::default();
        assert_eq!(s.check(1), Dedup::Fresh);
        s.record(1, 1, OpResult::Delete { existed: true });
        assert_eq!(s.check(1), Dedup::Duplicate(OpResult::Delete { existed: true }));
        assert_eq!(s.check(2), Dedup::Fresh);
    }

    #[test]
    fn acknowledged_responses_are_forgotten() {
        let mut s = Session::default();
        for seq in 1..=5 {
            s.record(seq, 1, OpResult::Put);
        }
        assert_eq!(s.cached_responses(), 5);
        s.record(6, 4, OpResult::Put);
        assert_eq!(s.cached_responses(), 3, "4, 5 and 6 are still retryable");
        assert_eq!(s.check(3), Dedup::Expired);
        assert_eq!(s.check(4), Dedup::Duplicate(OpResult::Put));
    }

    #[test]
    fn concurrent_writes_out_of_order_are_each_applied_once() {
        let mut s = Session::default();
        s.record(3, 1, OpResult::Put);
        assert_eq!(s.check(2), Dedup::Fresh, "2 was still in flight when 3 arrived");
        s.record(2, 1, OpResult::Put);
        assert_eq!(s.check(2), Dedup::Duplicate(OpResult::Put));
        assert_eq!(s.check(3), Dedup::Duplicate(OpResult::Put));
    }

    #[test]
    fn an_older_first_unacked_never_moves_the_watermark_back() {
        let mut s = Session::default();
        s.record(10, 10, OpResult::Put);
        s.record(11, 2, OpResult::Put);
        assert_eq!(s.check(9), Dedup::Expired);
    }
}
