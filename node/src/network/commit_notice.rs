//! Commit notices folded into the next append. Once a write commits, Raft sends each follower
//! an append without entries that carries only the new commit index; the follower answers it
//! like any append. At one client that doubled the messages per write, and on a busy machine
//! the followers' handling of them held up the leader's next sends. A notice is now held for a
//! moment and dropped when another append follows (which carries the same or a newer commit);
//! alone, it goes out when its time is up. Raft matches answers by log id, so an append never
//! sent needs no answer of its own.

use std::time::Duration;

use futures::Stream;
use futures::StreamExt;
use futures::stream::BoxStream;
use openraft::raft::AppendEntriesRequest;
use tokio::time::Instant;

use crate::types::TypeConfig;

/// How long a commit notice waits for an append to ride on: a follower idle meanwhile applies
/// the last writes at most this much later.
pub const COMMIT_NOTICE_HOLD: Duration = Duration::from_millis(5);

type Request = AppendEntriesRequest<TypeConfig>;

/// `requests`, with each append without entries held up to `hold` and dropped if any append
/// follows within that time.
pub fn fold_commit_notices(
    requests: impl Stream<Item = Request> + Send + Unpin + 'static,
    hold: Duration,
) -> BoxStream<'static, Request> {
    let state = Some((requests, None::<(Request, Instant)>));
    futures::stream::unfold(state, move |state| async move {
        let (mut requests, mut held) = state?;
        loop {
            let next = match held.as_ref().map(|(_, until)| *until) {
                None => requests.next().await,
                Some(until) => tokio::select! {
                    next = requests.next() => next,
                    () = tokio::time::sleep_until(until) => {
                        let (notice, _) = held.take().expect("a notice is held");
                        return Some((notice, Some((requests, None))));
                    }
                },
            };
            match next {
                // A later notice replaces the one held, within the first one's time.
                Some(notice) if notice.entries.is_empty() => {
                    let until = held.map_or_else(|| Instant::now() + hold, |(_, until)| until);
                    held = Some((notice, until));
                }
                Some(append) => return Some((append, Some((requests, None)))),
                // Raft's requests ended: what is held still goes, then nothing.
                None => return held.map(|(notice, _)| (notice, None)),
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use openraft::EntryPayload;
    use openraft::Vote;

    use super::*;
    use crate::types::Entry;
    use crate::types::hostile_input::log_id;

    const HOLD: Duration = Duration::from_millis(5);

    /// An append of the entries `first..=last` (none when `last < first`) carrying commit
    /// index `commit`.
    fn append(first: u64, last: u64, commit: u64) -> Request {
        AppendEntriesRequest {
            vote: Vote::new(2, 1),
            prev_log_id: Some(log_id(2, first - 1)),
            entries: (first..=last).map(|i| Entry { log_id: log_id(2, i), payload: EntryPayload::Blank }).collect(),
            leader_commit: Some(log_id(2, commit)),
        }
    }

    /// What goes out, each with its commit index and its number of entries, and when.
    async fn sent(requests: Vec<(Duration, Request)>) -> Vec<(u64, usize, Duration)> {
        let started = Instant::now();
        let requests = futures::stream::iter(requests)
            .then(move |(at, request)| async move {
                tokio::time::sleep_until(started + at).await;
                request
            })
            .boxed();
        fold_commit_notices(requests, HOLD)
            .map(|request| {
                let commit = request.leader_commit.map_or(0, |id| id.index());
                (commit, request.entries.len(), started.elapsed())
            })
            .collect()
            .await
    }

    #[tokio::test(start_paused = true)]
    async fn a_notice_followed_by_an_append_in_time_is_dropped() {
        let ms = Duration::from_millis;
        let out = sent(vec![(ms(0), append(5, 5, 4)), (ms(1), append(6, 5, 5)), (ms(2), append(6, 6, 5))]).await;
        assert_eq!(out, [(4, 1, ms(0)), (5, 1, ms(2))]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_notice_alone_goes_out_when_its_time_is_up() {
        let ms = Duration::from_millis;
        let out = sent(vec![(ms(0), append(5, 5, 4)), (ms(1), append(6, 5, 5)), (ms(20), append(6, 6, 5))]).await;
        assert_eq!(out, [(4, 1, ms(0)), (5, 0, ms(1) + HOLD), (5, 1, ms(20))]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_notice_replaces_the_held_one_within_its_time() {
        let ms = Duration::from_millis;
        let notices = [(ms(0), append(6, 5, 4)), (ms(3), append(6, 5, 5)), (ms(30), append(6, 5, 6))];
        let out = sent(notices.into_iter().chain([(ms(50), append(6, 6, 6))]).collect()).await;
        assert_eq!(out, [(5, 0, HOLD), (6, 0, ms(30) + HOLD), (6, 1, ms(50))]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_notice_goes_out_when_the_requests_end() {
        let out = sent(vec![(Duration::ZERO, append(6, 5, 5))]).await;
        assert_eq!(out, [(5, 0, Duration::ZERO)]);
    }
}
