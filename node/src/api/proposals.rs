//! Client writes proposed to Raft together.
//!
//! Raft appends, in one log write, every proposal queued when its core task runs. Proposed
//! straight from the request tasks, each proposal woke the core, which the runtime polls next
//! (the woken task takes its LIFO slot), so under load nearly every write became a log append
//! of its own: 1.2 entries per append at 256 clients, each with its own RocksDB write, fsync
//! hand-off and replication wake-up. Here request tasks queue their writes; one task submits
//! the queue after yielding once, which lets every other runnable request task queue first.

use openraft::error::ClientWriteError;
use openraft::error::Fatal;
use openraft::error::RaftError;
use openraft::impls::ProgressResponder;
use openraft::raft::ClientWriteResponse;
use openraft::raft::ClientWriteResult;
use tokio::sync::mpsc;

use crate::types::Command;
use crate::types::Raft;
use crate::types::TypeConfig;

type Responder = ProgressResponder<TypeConfig, ClientWriteResult<TypeConfig>>;
type WriteError = RaftError<TypeConfig, ClientWriteError<TypeConfig>>;

/// The queue into Raft. Dropping it ends the task that submits from it.
pub struct Proposals {
    queue: mpsc::UnboundedSender<(Command, Responder)>,
}

impl Proposals {
    /// Starts the submitting task on the current runtime.
    pub fn start(raft: Raft) -> Self {
        let (queue, pending) = mpsc::unbounded_channel();
        tokio::spawn(submit(raft, pending));
        Self { queue }
    }

    /// Proposes `cmd` and waits until it is applied (as `Raft::client_write`).
    pub async fn write(&self, cmd: Command) -> Result<ClientWriteResponse<TypeConfig>, WriteError> {
        let (responder, applied) = ProgressResponder::complete_only();
        // The submitting task ends only once every sender is gone; if it panicked, the
        // responder is dropped with the queue and the receive below reports Raft stopped.
        self.queue.send((cmd, responder)).ok();
        match applied.await {
            Ok(result) => result.map_err(RaftError::APIError),
            Err(_dropped) => Err(RaftError::Fatal(Fatal::Stopped)),
        }
    }
}

async fn submit(raft: Raft, mut pending: mpsc::UnboundedReceiver<(Command, Responder)>) {
    let mut batch = Vec::new();
    while let Some(first) = pending.recv().await {
        batch.push(first);
        tokio::task::yield_now().await;
        while let Ok(next) = pending.try_recv() {
            batch.push(next);
        }
        for (cmd, responder) in batch.drain(..) {
            // On failure (Raft stopped) the responder is dropped and its writer told so.
            if raft.client_write_ff(cmd, Some(responder)).await.is_err() {
                break;
            }
        }
    }
}
