//! Requests to one node coalesced into `Kv/Batch` calls.
//!
//! Every unary gRPC call costs both sides an HTTP/2 stream (headers, data and trailers, each
//! written and read), and a node confirms its leadership once per linearizable get; at 256
//! concurrent clients that per-call work was most of the leader's and the client's CPU. So the
//! client's tasks hand their gets, puts, deletes and compare-and-swaps to a queue per node, and
//! one task sends what is queued as one `Kv/Batch` call. At most `MAX_IN_FLIGHT` batches per
//! queue are in flight; while they are, requests queue for the next one, so batches grow with
//! the load and no timer delays anything: a lone request goes out at once, in a batch of one.
//! Reads and writes queue apart, so that a read never waits for the commit of a write it was
//! batched with.

use std::sync::Arc;
use std::time::Duration;

use shardkv_proto::MAX_BATCH_ITEMS;
use shardkv_proto::OUTCOME_HEADER;
use shardkv_proto::OUTCOME_UNKNOWN;
use shardkv_proto::v1::BatchItem;
use shardkv_proto::v1::BatchRequest;
use shardkv_proto::v1::batch_item;
use shardkv_proto::v1::batch_result;
use tokio::sync::Semaphore;
use tokio::sync::mpsc;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use super::Connection;
use super::kv_client;
use super::request as unary;

/// Sends a KV request to the node behind `connection` and waits for its answer: in the next
/// batch if it is small, else as its own unary call. `timeout` is the call's gRPC deadline.
pub(super) async fn kv_call(
    connection: Connection,
    request: batch_item::Request,
    timeout: Duration,
) -> Result<batch_result::Response, tonic::Status> {
    use batch_item::Request;
    use batch_result::Response;
    let bytes = request.encoded_len();
    if bytes <= MAX_BATCHED_ITEM_BYTES {
        return connection.batches.call(request, bytes, timeout).await;
    }
    let mut kv = kv_client(connection.channel);
    Ok(match request {
        Request::Get(message) => Response::Get(kv.get(unary(message, timeout)).await?.into_inner()),
        Request::Put(message) => Response::Put(kv.put(unary(message, timeout)).await?.into_inner()),
        Request::Delete(message) => Response::Delete(kv.delete(unary(message, timeout)).await?.into_inner()),
        Request::CompareAndSwap(message) => {
            Response::CompareAndSwap(kv.compare_and_swap(unary(message, timeout)).await?.into_inner())
        }
    })
}

/// The error for a node answering a request with the response of another kind.
pub(super) fn mismatched(asked: &str, answer: &batch_result::Response) -> tonic::Status {
    let kind = match answer {
        batch_result::Response::Get(_) => "get",
        batch_result::Response::Put(_) => "put",
        batch_result::Response::Delete(_) => "delete",
        batch_result::Response::CompareAndSwap(_) => "compare-and-swap",
        batch_result::Response::Error(_) => "error",
    };
    tonic::Status::internal(format!("the node answered a {asked} with a {kind} response"))
}

/// Items up to this size (encoded) are batched; larger ones go as their own call, so that
/// batching never holds small requests behind a large one.
const MAX_BATCHED_ITEM_BYTES: usize = 64 << 10;
/// A batch closes once its items reach this size (encoded), well under what a node accepts
/// (`shardkv_proto::MAX_BATCH_REQUEST_BYTES`).
const MAX_BATCH_BYTES: usize = 1 << 20;
/// Most batch calls in flight to one node per queue.
const MAX_IN_FLIGHT: usize = 2;
/// Most items per batch.
const MAX_ITEMS: usize = 256;
const _: () = assert!(MAX_ITEMS <= MAX_BATCH_ITEMS && MAX_BATCH_BYTES < shardkv_proto::MAX_BATCH_REQUEST_BYTES);

type Reply = oneshot::Sender<Result<batch_result::Response, tonic::Status>>;

struct Queued {
    request: batch_item::Request,
    /// `request`'s encoded size.
    bytes: usize,
    deadline: Instant,
    reply: Reply,
}

/// The read and write queues of one node.
pub(super) struct Batches {
    reads: Queue,
    writes: Queue,
}

impl Batches {
    /// Starts the sending tasks; needs a tokio runtime. They end when this is dropped.
    pub(super) fn start(channel: &Channel) -> Self {
        Self { reads: Queue::start(channel.clone()), writes: Queue::start(channel.clone()) }
    }

    /// Sends `request` (`bytes` encoded) in the next batch to this node and waits for its
    /// answer, as the unary call would: its response, or the status it failed with. `timeout`
    /// bounds the batch call it goes in (the caller bounds its own wait).
    pub(super) async fn call(
        &self,
        request: batch_item::Request,
        bytes: usize,
        timeout: Duration,
    ) -> Result<batch_result::Response, tonic::Status> {
        let queue = match request {
            batch_item::Request::Get(_) => &self.reads,
            _ => &self.writes,
        };
        let (reply, answer) = oneshot::channel();
        queue.send(Queued { request, bytes, deadline: Instant::now() + timeout, reply });
        answer.await.unwrap_or_else(|_| {
            let mut status = tonic::Status::cancelled("the client's batching task stopped");
            // It may have been sent before the task stopped.
            status.metadata_mut().insert(OUTCOME_HEADER, MetadataValue::from_static(OUTCOME_UNKNOWN));
            Err(status)
        })
    }
}

struct Queue {
    sender: mpsc::UnboundedSender<Queued>,
}

impl Queue {
    fn start(channel: Channel) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(collect(channel, receiver));
        Self { sender }
    }

    fn send(&self, queued: Queued) {
        // The collecting task lives as long as this sender; if it panicked, dropping the
        // item's reply tells the caller.
        let _ = self.sender.send(queued);
    }
}

/// Whether a batch of `items` items and `bytes` bytes may take one more of `next` bytes.
fn fits(items: usize, bytes: usize, next: usize) -> bool {
    items < MAX_ITEMS && bytes + next <= MAX_BATCH_BYTES
}

/// Takes the first queued item once a batch may go, yields once, adds what is queued then (up
/// to the limits) and sends the batch from its own task.
async fn collect(channel: Channel, mut receiver: mpsc::UnboundedReceiver<Queued>) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut carried = None;
    loop {
        let first = match carried.take() {
            Some(first) => first,
            None => match receiver.recv().await {
                Some(first) => first,
                None => return,
            },
        };
        // While the batches in flight use every permit, requests queue up for the next one.
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else { return };
        let mut bytes = first.bytes;
        let mut batch = vec![first];
        // Lets the tasks that are ready to send queue their requests first.
        tokio::task::yield_now().await;
        while let Ok(next) = receiver.try_recv() {
            if !fits(batch.len(), bytes, next.bytes) {
                carried = Some(next);
                break;
            }
            bytes += next.bytes;
            batch.push(next);
        }
        let channel = channel.clone();
        tokio::spawn(async move {
            send(channel, batch).await;
            drop(permit);
        });
    }
}

/// Sends one batch and hands every item its answer (a failed call fails every item alike).
/// Items whose caller stopped waiting are left out: the caller counted that attempt as one
/// that may or may not apply, and retries or reports it so.
async fn send(channel: Channel, mut batch: Vec<Queued>) {
    batch.retain(|queued| !queued.reply.is_closed());
    let Some(deadline) = batch.iter().map(|queued| queued.deadline).max() else { return };
    let (items, replies): (Vec<_>, Vec<_>) =
        batch.into_iter().map(|queued| (BatchItem { request: Some(queued.request) }, queued.reply)).unzip();
    let timeout = deadline.saturating_duration_since(Instant::now());
    let mut request = tonic::Request::new(BatchRequest { items });
    request.set_timeout(timeout);
    // Bounded here too: a node that is paused or cut off never answers, and this batch holds
    // one of its queue's permits until it ends.
    let answer = tokio::time::timeout_at(deadline, kv_client(channel).batch(request))
        .await
        .unwrap_or_else(|_elapsed| Err(tonic::Status::deadline_exceeded(format!("no answer within {timeout:?}"))));
    match answer {
        Ok(response) => {
            let mut results = response.into_inner().results.into_iter();
            for reply in replies {
                let answer = match results.next().and_then(|result| result.response) {
                    Some(batch_result::Response::Error(error)) => Err(error.into_status()),
                    Some(response) => Ok(response),
                    None => Err(tonic::Status::internal("the node's batch response has no answer for this item")),
                };
                let _ = reply.send(answer);
            }
        }
        Err(status) => {
            for reply in replies {
                let _ = reply.send(Err(status.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_closes_at_its_item_limit() {
        assert!(fits(MAX_ITEMS - 1, 0, 100));
        assert!(!fits(MAX_ITEMS, 0, 100));
    }

    #[test]
    fn a_batch_closes_before_its_byte_limit_would_be_passed() {
        assert!(fits(1, MAX_BATCH_BYTES - 100, 100));
        assert!(!fits(1, MAX_BATCH_BYTES - 100, 101));
    }

    #[test]
    fn every_batched_item_fits_an_empty_batch() {
        assert!(fits(0, 0, MAX_BATCHED_ITEM_BYTES));
    }
}
