//! Snapshot the local replica and purge the log it covers, waiting for both.

use openraft::async_runtime::WatchReceiver;
use openraft::metrics::WaitError;
use std::time::Duration;
use tokio::time::Instant;

use crate::types::Raft;
use crate::types::index_of;

const RETRIGGER_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct SnapshotOutcome {
    /// The applied index when the snapshot was asked for: the snapshot covers at least this.
    pub applied_index: u64,
    pub snapshot_index: u64,
    pub purged_index: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("raft has stopped: {0}")]
    Stopped(String),
    #[error("no snapshot up to {applied} within {timeout:?} (the latest covers {snapshot_index})")]
    SnapshotTimeout { applied: u64, snapshot_index: u64, timeout: Duration },
    #[error("the log was not purged up to {snapshot_index} within {timeout:?} (purged up to {purged_index})")]
    PurgeTimeout { snapshot_index: u64, purged_index: u64, timeout: Duration },
}

pub async fn snapshot_and_purge(raft: &Raft, timeout: Duration) -> Result<SnapshotOutcome, SnapshotError> {
    let deadline = Instant::now() + timeout;
    let applied = index_of(&raft.metrics().borrow_watched().last_applied);
    let snapshot_index = snapshot_covering(raft, applied, deadline, timeout).await?;
    raft.trigger().purge_log(snapshot_index).await.map_err(stopped)?;
    let left = deadline.saturating_duration_since(Instant::now());
    let purged = raft
        .wait(Some(left))
        .metrics(|m| index_of(&m.purged) >= snapshot_index, "log purged up to the snapshot")
        .await
        .map_err(|_| SnapshotError::PurgeTimeout {
            snapshot_index,
            purged_index: index_of(&raft.metrics().borrow_watched().purged),
            timeout,
        })?;
    Ok(SnapshotOutcome { applied_index: applied, snapshot_index, purged_index: index_of(&purged.purged) })
}

/// Waits for a snapshot that covers `applied` and returns its index. Raft ignores a trigger
/// while it is building a snapshot (one the log-size policy started, say), and that build may
/// stop short of `applied`; so the trigger is repeated after every snapshot that lands short,
/// and every second while none lands.
async fn snapshot_covering(
    raft: &Raft,
    applied: u64,
    deadline: Instant,
    timeout: Duration,
) -> Result<u64, SnapshotError> {
    loop {
        let before = index_of(&raft.metrics().borrow_watched().snapshot);
        if before >= applied {
            return Ok(before);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(SnapshotError::SnapshotTimeout { applied, snapshot_index: before, timeout });
        }
        raft.trigger().snapshot().await.map_err(stopped)?;
        let landed = raft
            .wait(Some(left.min(RETRIGGER_EVERY)))
            .metrics(|m| index_of(&m.snapshot) != before, "a new snapshot")
            .await;
        // A timeout only means no snapshot landed within this round: the loop checks again.
        if let Err(WaitError::ShuttingDown) = landed {
            return Err(SnapshotError::Stopped("shutting down".into()));
        }
    }
}

fn stopped(e: openraft::error::Fatal<crate::types::TypeConfig>) -> SnapshotError {
    SnapshotError::Stopped(e.to_string())
}
