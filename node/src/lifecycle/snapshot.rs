//! Snapshot the local replica and purge the log it covers, waiting for both.

use openraft::async_runtime::WatchReceiver;
use std::time::Duration;

use crate::types::Raft;
use crate::types::index_of;

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct SnapshotOutcome {
    /// The applied index when the snapshot was asked for: the snapshot covers at least this.
    pub applied_index: u64,
    pub snapshot_index: u64,
    pub purged_index: u64,
}

pub async fn snapshot_and_purge(raft: &Raft, timeout: Duration) -> Result<SnapshotOutcome, String> {
    let applied = index_of(&raft.metrics().borrow_watched().last_applied);
    let stopped = |e: openraft::error::Fatal<crate::types::TypeConfig>| format!("raft has stopped: {e}");
    raft.trigger().snapshot().await.map_err(stopped)?;
    let after_snapshot = raft
        .wait(Some(timeout))
        .metrics(|m| index_of(&m.snapshot) >= applied, "snapshot covers the applied log")
        .await
        .map_err(|e| format!("snapshot up to {applied} did not finish: {e}"))?;
    let snapshot_index = index_of(&after_snapshot.snapshot);
    raft.trigger().purge_log(snapshot_index).await.map_err(stopped)?;
    let purged = raft
        .wait(Some(timeout))
        .metrics(|m| index_of(&m.purged) >= snapshot_index, "log purged up to the snapshot")
        .await
        .map_err(|e| format!("log purge up to {snapshot_index} did not finish: {e}"))?;
    Ok(SnapshotOutcome { applied_index: applied, snapshot_index, purged_index: index_of(&purged.purged) })
}
