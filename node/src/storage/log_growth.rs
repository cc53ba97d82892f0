//! How much the log grew since it was last purged (purges follow snapshots), and a snapshot
//! asked for once that passes a byte limit. Raft's own policy counts entries, which suits small
//! values; with 1 MiB values the same count would let the log grow to many gigabytes.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use tokio::sync::Notify;
use tokio::sync::watch;

use crate::types::Raft;

pub struct LogGrowth {
    bytes: AtomicU64,
    limit: u64,
    passed: Notify,
}

impl LogGrowth {
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(Self { bytes: AtomicU64::new(0), limit, passed: Notify::new() })
    }

    /// Counts `bytes` appended; the append that passes the limit wakes [`LogGrowth::run`].
    pub fn appended(&self, bytes: u64) {
        let before = self.bytes.fetch_add(bytes, Ordering::Relaxed);
        if before < self.limit && before + bytes >= self.limit {
            self.passed.notify_one();
        }
    }

    /// The log was purged up to a snapshot: it starts growing from there.
    pub fn purged(&self) {
        self.bytes.store(0, Ordering::Relaxed);
    }

    /// Asks Raft for a snapshot each time the log passes the limit, until shutdown.
    pub async fn run(self: Arc<Self>, raft: Raft, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = self.passed.notified() => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            // Counted from now: a snapshot that is already being built is not asked for twice.
            self.bytes.store(0, Ordering::Relaxed);
            tracing::info!(
                limit_bytes = self.limit,
                "log grew past its byte limit since the last snapshot; building one"
            );
            if let Err(e) = raft.trigger().snapshot().await {
                tracing::warn!(error = %e, "could not ask for a snapshot");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    /// Whether the trigger was woken (a wake-up with nobody waiting is kept for the next wait).
    fn woken(growth: &LogGrowth) -> bool {
        growth.passed.notified().now_or_never().is_some()
    }

    #[test]
    fn the_append_that_passes_the_limit_wakes_the_trigger_once() {
        let growth = LogGrowth::new(100);
        growth.appended(60);
        assert!(!woken(&growth), "60 of 100 bytes");
        growth.appended(60);
        assert!(woken(&growth), "120 of 100 bytes");
        growth.appended(60);
        assert!(!woken(&growth), "passed once, not again until purged");
        growth.purged();
        growth.appended(100);
        assert!(woken(&growth), "100 of 100 bytes after the purge");
    }
}
