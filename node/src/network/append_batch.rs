//! How much of an append travels in one message. Raft batches entries by count
//! (`max_payload_entries`); a batch of large values could outgrow the gRPC message limit, and
//! a follower that can never receive a batch never catches up.

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
