//! A leader's replication to one follower as one gRPC stream (`Raft/StreamAppend`): appends go
//! out as Raft produces them, without waiting for the answers to the ones before, and the
//! follower answers each in order. With one append in flight at a time, every append waited
//! a round trip plus the follower's fsync for the one before it, and a commit notice (an
//! append without entries) held back the next write's entries.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::PoisonError;
use std::time::Duration;

use futures::Stream;
use futures::StreamExt;
use openraft::error::NetworkError;
use openraft::error::RPCError;
use openraft::error::Unreachable;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::StreamAppendResult;
use shardkv_proto::v1::RaftReply;
use shardkv_proto::v1::RaftRequest;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::GroupScope;
use super::append_batch::APPEND_BYTES;
use super::append_batch::split;
use super::commit_notice::COMMIT_NOTICE_HOLD;
use super::commit_notice::fold_commit_notices;
use crate::types::TypeConfig;
use crate::types::copy_file_of;
use crate::types::decode;
use crate::types::encode;

type RpcError = RPCError<TypeConfig>;
/// What a follower answers to one append of the stream.
pub type StreamReply = Result<StreamAppendResult<TypeConfig>, String>;

/// One append on the wire, waiting for its answer.
struct Sent {
    at: Instant,
    /// How long its answer may take once it is the oldest unanswered (see `peer::deadline_for`).
    allowed: Duration,
    /// Whether it is the last piece of one of Raft's requests (see `append_batch::split`):
    /// only those are answered to Raft.
    ends_request: bool,
}

/// The appends sent and not yet answered, oldest first.
#[derive(Clone, Default)]
struct InFlight(Arc<Mutex<VecDeque<Sent>>>);

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Sent>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Turns Raft's requests into the messages of the stream: commit notices folded into the
/// next append (see `commit_notice`), each cut to fit a message, encoded, and recorded as in
/// flight when the transport takes it.
pub fn outgoing(
    requests: impl Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
    scope: GroupScope,
    deadline_for: impl Fn(usize) -> Duration + Send + 'static,
) -> (impl Stream<Item = RaftRequest> + Send + 'static, Answers) {
    let in_flight = InFlight::default();
    let recorded = in_flight.clone();
    // The transport pulls the messages from a task of its own: once the answers are dropped
    // (Raft ended this stream), the messages end too, so that nothing more is taken from
    // Raft's request stream and the follower sees the stream end.
    let (answers_open, answers_dropped) = oneshot::channel::<()>();
    let messages = fold_commit_notices(requests, COMMIT_NOTICE_HOLD)
        .flat_map(|rpc| {
            let pieces = split(rpc, APPEND_BYTES);
            let last = pieces.len() - 1;
            futures::stream::iter(pieces.into_iter().enumerate().map(move |(i, piece)| (piece, i == last)))
        })
        .map(move |(piece, ends_request)| {
            let payload = encode(&piece);
            // The follower fetches the copy files these entries name before it answers.
            let copy_bytes: u64 = piece.entries.iter().filter_map(copy_file_of).map(|file| file.size).sum();
            let allowed = deadline_for(payload.len() + copy_bytes as usize);
            recorded.lock().push_back(Sent { at: Instant::now(), allowed, ends_request });
            RaftRequest { cluster_id: scope.cluster_id.clone(), group_id: scope.group_id, payload }
        })
        .take_until(answers_dropped);
    (messages, Answers { in_flight, open: answers_open })
}

/// Matches the follower's replies to the appends in flight.
pub struct Answers {
    in_flight: InFlight,
    /// Dropped with the answers: ends the messages (see `outgoing`).
    open: oneshot::Sender<()>,
}

impl Answers {
    /// Raft's answers, one per request, in order; ends after the first error. `idle_check` is
    /// how often an idle stream looks again for an append to time: one sent while nothing was
    /// in flight is timed from its sending, at most this much later.
    pub fn stream(
        self,
        replies: impl Stream<Item = Result<RaftReply, tonic::Status>> + Send + Unpin + 'static,
        idle_check: Duration,
        status_error: impl Fn(tonic::Status) -> RpcError + Send + Sync + 'static,
    ) -> impl Stream<Item = Result<StreamAppendResult<TypeConfig>, RpcError>> + Send + 'static {
        let status_error = Arc::new(status_error);
        let state = Some((replies, self.in_flight, Instant::now(), self.open));
        futures::stream::unfold(state, move |state| {
            let status_error = Arc::clone(&status_error);
            async move {
                let (mut replies, in_flight, mut last_answer, open) = state?;
                loop {
                    // The oldest unanswered append gets its time from when it was sent or from
                    // the answer before it, whichever is later: it may have waited behind
                    // larger ones.
                    let due = in_flight.lock().front().map(|sent| sent.at.max(last_answer) + sent.allowed);
                    let wait_until = due.unwrap_or_else(|| Instant::now() + idle_check);
                    let reply = match tokio::time::timeout_at(wait_until, replies.next()).await {
                        Err(_) if due.is_some() => {
                            let err = std::io::Error::other("no answer to an append in time");
                            return Some((Err(RPCError::Network(NetworkError::new(&err))), None));
                        }
                        Err(_) => continue,
                        Ok(Some(Err(status))) => return Some((Err(status_error(status)), None)),
                        Ok(None) => return None,
                        Ok(Some(Ok(reply))) => reply,
                    };
                    last_answer = Instant::now();
                    let Some(sent) = in_flight.lock().pop_front() else {
                        let err = std::io::Error::other("the follower answered an append that was not sent");
                        return Some((Err(RPCError::Network(NetworkError::new(&err))), None));
                    };
                    let answer = match decode::<StreamReply>(&reply.payload) {
                        Ok(Ok(answer)) => answer,
                        // The follower's Raft has stopped: as unreachable as a node that is down.
                        Ok(Err(stopped)) => {
                            let err = std::io::Error::other(stopped);
                            return Some((Err(RPCError::Unreachable(Unreachable::new(&err))), None));
                        }
                        Err(e) => return Some((Err(RPCError::Network(NetworkError::new(&e))), None)),
                    };
                    match answer {
                        // A piece before the last of its request: the last one answers for it.
                        Ok(_) if !sent.ends_request => continue,
                        Ok(matching) => {
                            return Some((Ok(Ok(matching)), Some((replies, in_flight, last_answer, open))));
                        }
                        Err(refused) => return Some((Ok(Err(refused)), None)),
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use openraft::EntryPayload;
    use openraft::raft::StreamAppendError;

    use super::*;
    use crate::types::Entry;
    use crate::types::Vote;
    use crate::types::hostile_input;
    use crate::types::hostile_input::log_id;

    const ALLOWED: Duration = Duration::from_millis(50);

    fn scope() -> GroupScope {
        GroupScope { cluster_id: "c".into(), group_id: 1 }
    }

    /// An append of entries `first..=last` (term 2) after `first - 1`, each with a value of `len` bytes.
    fn append(first: u64, last: u64, len: usize) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new(2, 1),
            prev_log_id: Some(log_id(2, first - 1)),
            entries: (first..=last)
                .map(|i| Entry {
                    log_id: log_id(2, i),
                    payload: EntryPayload::Normal(hostile_input::put(b"k", &vec![b'v'; len])),
                })
                .collect(),
            leader_commit: None,
        }
    }

    fn reply(answer: StreamReply) -> Result<RaftReply, tonic::Status> {
        Ok(RaftReply { payload: encode(&answer) })
    }

    type Answered = Vec<Result<StreamAppendResult<TypeConfig>, RpcError>>;

    /// Sends `requests` through `outgoing` (as the transport would take them), then feeds
    /// `replies` to the answers (and then nothing); returns what was sent and the first
    /// `answers` answers to Raft (fewer if the answers end).
    async fn exchange(
        requests: Vec<AppendEntriesRequest<TypeConfig>>,
        replies: Vec<Result<RaftReply, tonic::Status>>,
        answers: usize,
    ) -> (Vec<AppendEntriesRequest<TypeConfig>>, Answered) {
        let (messages, to_match) = outgoing(futures::stream::iter(requests), scope(), |_| ALLOWED);
        let sent: Vec<AppendEntriesRequest<TypeConfig>> = messages
            .map(|message| {
                assert_eq!((message.cluster_id.as_str(), message.group_id), ("c", 1));
                decode(&message.payload).unwrap()
            })
            .collect()
            .await;
        let replies = futures::stream::iter(replies).chain(futures::stream::pending());
        let answered = to_match.stream(Box::pin(replies), ALLOWED, |status| {
            RPCError::Unreachable(Unreachable::new(&std::io::Error::other(status.message().to_string())))
        });
        (sent, answered.take(answers).collect().await)
    }

    #[tokio::test]
    async fn each_request_is_answered_in_order_and_an_idle_stream_stays_open() {
        let started = Instant::now();
        let (messages, answers) =
            outgoing(futures::stream::iter([append(5, 5, 1), append(6, 7, 1)]), scope(), |_| ALLOWED);
        assert_eq!(messages.count().await, 2);
        let replies = futures::stream::iter([reply(Ok(Ok(Some(log_id(2, 5))))), reply(Ok(Ok(Some(log_id(2, 7)))))]);
        // Then the peer stays quiet, with nothing in flight, for several times ALLOWED, and the
        // replies end.
        let idle = futures::stream::once(tokio::time::sleep(6 * ALLOWED)).filter_map(|()| async { None });
        let answered: Answered =
            answers.stream(Box::pin(replies.chain(idle)), ALLOWED, |_| unreachable!()).collect().await;
        let answered: Vec<_> = answered.into_iter().map(|answer| answer.unwrap()).collect();
        assert_eq!(answered, [Ok(Some(log_id(2, 5))), Ok(Some(log_id(2, 7)))]);
        assert!(started.elapsed() >= 6 * ALLOWED, "an idle stream is not timed out");
    }

    #[tokio::test]
    async fn dropping_the_answers_ends_the_messages() {
        let (mut messages, answers) = outgoing(futures::stream::pending(), scope(), |_| ALLOWED);
        let replies = futures::stream::pending();
        let answered = answers.stream(replies, ALLOWED, |_| unreachable!());
        drop(answered);
        assert!(messages.next().await.is_none(), "Raft's requests are no longer taken");
    }

    #[tokio::test]
    async fn a_request_cut_into_pieces_is_answered_once_after_its_last_piece() {
        // Two entries of 40 MiB do not fit one message of APPEND_BYTES.
        let (sent, answered) = exchange(
            vec![append(5, 6, 40 << 20), append(7, 7, 1)],
            vec![
                reply(Ok(Ok(Some(log_id(2, 5))))),
                reply(Ok(Ok(Some(log_id(2, 6))))),
                reply(Ok(Ok(Some(log_id(2, 7))))),
            ],
            2,
        )
        .await;
        assert_eq!(sent.iter().map(|piece| piece.entries.len()).collect::<Vec<_>>(), [1, 1, 1]);
        let answered: Vec<_> = answered.into_iter().map(|answer| answer.unwrap()).collect();
        assert_eq!(answered, [Ok(Some(log_id(2, 6))), Ok(Some(log_id(2, 7)))]);
    }

    #[tokio::test]
    async fn a_refusal_ends_the_answers() {
        let conflict = StreamAppendError::Conflict(log_id(2, 4));
        let (_, answered) = exchange(
            vec![append(5, 5, 1), append(6, 6, 1)],
            vec![reply(Ok(Err(conflict.clone()))), reply(Ok(Ok(Some(log_id(2, 6)))))],
            2,
        )
        .await;
        assert_eq!(answered.len(), 1);
        assert_eq!(answered[0].as_ref().unwrap(), &Err(conflict));
    }

    #[tokio::test]
    async fn an_append_left_unanswered_fails_the_stream_in_time() {
        let started = Instant::now();
        let (_, answered) =
            exchange(vec![append(5, 5, 1), append(6, 6, 1)], vec![reply(Ok(Ok(Some(log_id(2, 5)))))], 2).await;
        assert!(answered[0].is_ok());
        assert!(matches!(answered[1], Err(RPCError::Network(_))), "{:?}", answered[1]);
        assert_eq!(answered.len(), 2);
        assert!(started.elapsed() >= ALLOWED, "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn a_stopped_follower_a_broken_stream_and_a_stray_reply_are_errors() {
        let (_, answered) = exchange(vec![append(5, 5, 1)], vec![reply(Err("raft stopped".into()))], 1).await;
        assert!(matches!(answered[..], [Err(RPCError::Unreachable(_))]), "{answered:?}");
        let broken = Err(tonic::Status::unavailable("connection reset"));
        let (_, answered) = exchange(vec![append(5, 5, 1)], vec![broken], 1).await;
        assert!(matches!(answered[..], [Err(RPCError::Unreachable(_))]), "{answered:?}");
        let (_, answered) = exchange(vec![], vec![reply(Ok(Ok(Some(log_id(2, 5)))))], 1).await;
        assert!(matches!(answered[..], [Err(RPCError::Network(_))]), "{answered:?}");
    }
}
