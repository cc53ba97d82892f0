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

/// Makes the calling thread a batch thread, whose wake-up does not preempt the thread that woke
/// it. The flusher is woken by the Raft thread right after an append, and on the leader that
/// thread goes on to send the same entries to the followers, whose fsyncs are the longer path
/// to a commit; preempted, it sent them only after the flusher had issued its fsync (on the
/// 2-core VM, 1-client put p50 -9% without the preemption).
fn defer_to_the_waker() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: sets the calling thread's policy (pid 0) from a valid parameter; changing to
        // SCHED_BATCH needs no privilege.
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } != 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(), "the WAL flusher stays a normal thread");
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
                defer_to_the_waker();
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

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use openraft::type_config::TypeConfigExt;

    use super::*;

    /// The policy of each of this process's threads named `name`.
    fn policies_of_threads_named(name: &str) -> Vec<i32> {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|task| {
                let task = task.ok()?;
                let comm = std::fs::read_to_string(task.path().join("comm")).ok()?;
                let tid: libc::pid_t = task.file_name().to_str()?.parse().ok()?;
                // SAFETY: reads the policy of a thread of this process by its id.
                (comm.trim_end() == name).then(|| unsafe { libc::sched_getscheduler(tid) })
            })
            .collect()
    }

    #[tokio::test]
    async fn the_flusher_thread_does_not_preempt_its_waker() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::storage::open_db(&dir.path().join("db")).unwrap();
        let flusher = LogFlusher::start(db, Arc::new(NodeMetrics::default()));
        // Once a flush is done, the thread has set its policy.
        let (done, flushed) = TypeConfig::oneshot();
        flusher.flush_then(IOFlushed::signal(done));
        flushed.await.unwrap().unwrap();
        // Other tests' flushers may be starting too: this one is among the batch threads.
        let policies = policies_of_threads_named("wal-flusher");
        assert!(policies.contains(&libc::SCHED_BATCH), "policies {policies:?}");
    }
}
