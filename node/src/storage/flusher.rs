//! Group commit: one thread fsyncs the RocksDB WAL for many log appends at once.
//!
//! Appends are written to RocksDB without sync and their completion callbacks queued here. The
//! flusher takes every callback queued so far, issues one WAL fsync, then completes them all in
//! order. Under load many appends share an fsync; idle, an append waits for exactly one.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Instant;

use openraft::storage::IOFlushed;
use rocksdb::DB;

use crate::metrics::NodeMetrics;
use crate::types::TypeConfig;

#[derive(Clone)]
pub struct LogFlusher {
    inner: Arc<FlusherThread>,
}

/// Owns the thread: dropping the last `LogFlusher` closes the queue and joins the thread, so
/// its handle on the DB is released before the DB is closed (RocksDB aborts the process when
/// a DB outlives `main`).
struct FlusherThread {
    tx: Option<mpsc::Sender<IOFlushed<TypeConfig>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for FlusherThread {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(thread) = self.thread.take()
            && thread.thread().id() != std::thread::current().id()
        {
            thread.join().ok();
        }
    }
}

impl LogFlusher {
    /// Starts the flusher thread. It ends when every `LogFlusher` clone is dropped.
    pub fn start(db: Arc<DB>, metrics: Arc<NodeMetrics>) -> Self {
        let (tx, rx) = mpsc::channel::<IOFlushed<TypeConfig>>();
        let thread = std::thread::Builder::new()
            .name("wal-flusher".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut group = vec![first];
                    group.extend(rx.try_iter());
                    let started = Instant::now();
                    let result = db.flush_wal(true);
                    metrics.observe_fsync(started.elapsed(), group.len());
                    for callback in group {
                        callback.io_completed(result.clone().map_err(super::io_err));
                    }
                }
            })
            .expect("spawning the WAL flusher thread");
        Self { inner: Arc::new(FlusherThread { tx: Some(tx), thread: Some(thread) }) }
    }

    /// Completes `callback` once everything written to RocksDB so far is durable.
    pub fn flush_then(&self, callback: IOFlushed<TypeConfig>) {
        let tx = self.inner.tx.as_ref().expect("the queue closes only when the flusher is dropped");
        if let Err(mpsc::SendError(callback)) = tx.send(callback) {
            callback.io_completed(Err(std::io::Error::other("WAL flusher has stopped")));
        }
    }
}
