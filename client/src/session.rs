//! Client session bookkeeping for exactly-once writes.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

/// A write session: a random client id and the sequence numbers of its writes.
///
/// The server caches the response of each (client_id, seq) so that a retried write is not
/// applied twice, and forgets cached responses below `first_unacked_seq`.
#[derive(Debug)]
pub struct Session {
    client_id: u64,
    seqs: Mutex<SeqState>,
}

#[derive(Debug)]
struct SeqState {
    next_seq: u64,
    in_flight: BTreeSet<u64>,
}

impl Session {
    /// A session with the given id, which must be nonzero (0 means "no session").
    pub fn new(client_id: u64) -> Self {
        assert_ne!(client_id, 0, "client id 0 is reserved for sessionless reads");
        Self { client_id, seqs: Mutex::new(SeqState { next_seq: 1, in_flight: BTreeSet::new() }) }
    }

    /// A session with a random nonzero client id.
    pub fn random() -> Self {
        let client_id = loop {
            let id: u64 = rand::random();
            if id != 0 {
                break id;
            }
        };
        Self::new(client_id)
    }

    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    /// Allocates the next sequence number and marks it in flight until the ticket drops.
    /// Allocation and registration happen under one lock: otherwise a concurrent
    /// `first_unacked_seq` could report a value above a seq that is about to be sent.
    pub fn begin_write(self: &Arc<Self>) -> WriteTicket {
        let mut seqs = self.lock();
        let seq = seqs.next_seq;
        seqs.next_seq += 1;
        seqs.in_flight.insert(seq);
        WriteTicket { session: Arc::clone(self), seq }
    }

    /// The smallest seq still awaiting a response, or the next seq when none is in flight.
    pub fn first_unacked_seq(&self) -> u64 {
        let seqs = self.lock();
        seqs.in_flight.first().copied().unwrap_or(seqs.next_seq)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SeqState> {
        // The state stays consistent even if a holder panicked: every update is one step.
        self.seqs.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One write in flight; its seq is reused by every retry and released on drop.
#[derive(Debug)]
pub struct WriteTicket {
    session: Arc<Session>,
    seq: u64,
}

impl WriteTicket {
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

impl Drop for WriteTicket {
    fn drop(&mut self) {
        self.session.lock().in_flight.remove(&self.seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqs_start_at_one_and_increase() {
        let session = Arc::new(Session::new(42));
        assert_eq!(session.first_unacked_seq(), 1);
        let first = session.begin_write();
        let second = session.begin_write();
        assert_eq!((first.seq(), second.seq()), (1, 2));
    }

    #[test]
    fn first_unacked_is_the_oldest_write_in_flight() {
        let session = Arc::new(Session::new(7));
        let one = session.begin_write();
        let two = session.begin_write();
        let three = session.begin_write();
        assert_eq!(session.first_unacked_seq(), 1);
        drop(two);
        assert_eq!(session.first_unacked_seq(), 1);
        drop(one);
        assert_eq!(session.first_unacked_seq(), 3);
        drop(three);
        assert_eq!(session.first_unacked_seq(), 4);
    }

    #[test]
    fn first_unacked_is_next_seq_when_idle() {
        let session = Arc::new(Session::new(7));
        for _ in 0..5 {
            drop(session.begin_write());
        }
        assert_eq!(session.first_unacked_seq(), 6);
    }

    #[test]
    fn concurrent_writes_get_distinct_seqs() {
        let session = Arc::new(Session::new(9));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let session = Arc::clone(&session);
                std::thread::spawn(move || (0..100).map(|_| session.begin_write().seq()).collect::<Vec<_>>())
            })
            .collect();
        let mut seqs: Vec<u64> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=800).collect::<Vec<_>>());
        assert_eq!(session.first_unacked_seq(), 801);
    }

    #[test]
    fn random_sessions_have_nonzero_ids() {
        assert!((0..100).all(|_| Session::random().client_id() != 0));
    }
}
