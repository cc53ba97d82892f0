//! How much of an append travels in one message. Raft batches entries by count
//! (`max_payload_entries`); a batch of large values could outgrow the gRPC message limit, and
//! a follower that can never receive a batch never catches up.

use openraft::raft::AppendEntriesRequest;

use crate::types::TypeConfig;
use crate::types::encoded_len;

/// An append carries at most this many bytes of entries, or a single entry when that one is
/// larger (an entry holds at most one record of `config::MAX_RECORD_BYTES`, so it stays far
/// below `MAX_MESSAGE_BYTES`).
pub const APPEND_BYTES: usize = 64 << 20;

/// How many of the entries, whose encoded sizes are `sizes` in log order, one append carries:
/// the longest prefix within `budget`, and at least one.
pub fn entries_that_fit(sizes: impl IntoIterator<Item = usize>, budget: usize) -> usize {
    let mut total = 0usize;
    let mut count = 0;
    for size in sizes {
        total = total.saturating_add(size);
        if count > 0 && total > budget {
            break;
        }
        count += 1;
    }
    count
}

/// Cuts `rpc` into appends that each carry at most `budget` bytes of entries (or one entry), in
/// log order, each one's `prev_log_id` the last entry of the one before; all carry `rpc`'s vote
/// and commit. A request within the budget stays whole.
pub fn split(mut rpc: AppendEntriesRequest<TypeConfig>, budget: usize) -> Vec<AppendEntriesRequest<TypeConfig>> {
    // Sized before anything is cut, so that a request within the budget costs one sizing.
    if rpc.entries.len() <= 1 || encoded_len(&rpc) <= budget {
        return vec![rpc];
    }
    // Each entry is sized once; the entries themselves are only moved.
    let sizes: Vec<usize> = rpc.entries.iter().map(encoded_len).collect();
    let mut pieces = Vec::new();
    let mut prev_log_id = rpc.prev_log_id;
    let mut rest = std::mem::take(&mut rpc.entries).into_iter();
    let mut sized = 0;
    while sized < sizes.len() {
        let count = entries_that_fit(sizes[sized..].iter().copied(), budget);
        sized += count;
        let entries: Vec<_> = rest.by_ref().take(count).collect();
        let last = entries.last().map(|entry| entry.log_id);
        pieces.push(AppendEntriesRequest { vote: rpc.vote, prev_log_id, leader_commit: rpc.leader_commit, entries });
        prev_log_id = last;
    }
    pieces
}

#[cfg(test)]
mod tests {
    use openraft::EntryPayload;

    use super::*;
    use crate::types::Entry;
    use crate::types::Vote;
    use crate::types::encode;
    use crate::types::hostile_input;
    use crate::types::hostile_input::log_id;

    fn append(values: &[usize]) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new(2, 1),
            prev_log_id: Some(log_id(1, 4)),
            entries: values
                .iter()
                .enumerate()
                .map(|(i, &len)| Entry {
                    log_id: log_id(2, 5 + i as u64),
                    payload: EntryPayload::Normal(hostile_input::put(b"k", &vec![b'v'; len])),
                })
                .collect(),
            leader_commit: Some(log_id(2, 5)),
        }
    }

    #[test]
    fn small_entries_all_fit() {
        assert_eq!(entries_that_fit([10, 20, 30], 100), 3);
        assert_eq!(entries_that_fit([10, 20, 70], 100), 3, "exactly the budget fits");
    }

    #[test]
    fn the_prefix_stops_before_the_entry_that_overflows() {
        assert_eq!(entries_that_fit([40, 40, 40, 1], 100), 2);
    }

    #[test]
    fn one_entry_larger_than_the_budget_still_travels_alone() {
        assert_eq!(entries_that_fit([500, 1], 100), 1);
        assert_eq!(entries_that_fit([1, 500], 100), 1);
    }

    #[test]
    fn no_entries_is_none() {
        assert_eq!(entries_that_fit([], 100), 0);
    }

    #[test]
    fn a_request_within_the_budget_stays_whole() {
        for (rpc, budget) in [(append(&[100, 100, 100]), 1 << 20), (append(&[5000]), 10), (append(&[]), 0)] {
            let pieces = split(rpc.clone(), budget);
            assert_eq!(pieces.len(), 1);
            assert_eq!(encode(&pieces[0]), encode(&rpc));
        }
    }

    #[test]
    fn a_large_request_is_cut_into_pieces_that_follow_each_other() {
        let rpc = append(&[1000, 1000, 1000, 5000, 10]);
        let entry_bytes = encoded_len(&rpc.entries[0]);
        let pieces = split(rpc.clone(), 2 * entry_bytes + 10);
        let counts: Vec<usize> = pieces.iter().map(|piece| piece.entries.len()).collect();
        assert_eq!(counts, [2, 1, 1, 1], "two small entries fit; the large one travels alone");
        let mut prev = rpc.prev_log_id;
        for piece in &pieces {
            assert_eq!(piece.prev_log_id, prev, "each piece follows the one before");
            assert_eq!((piece.vote, piece.leader_commit), (rpc.vote, rpc.leader_commit));
            prev = piece.entries.last().map(|entry| entry.log_id);
        }
        let entries: Vec<Entry> = pieces.into_iter().flat_map(|piece| piece.entries).collect();
        assert_eq!(encode(&entries), encode(&rpc.entries), "every entry once, in order");
    }
}
