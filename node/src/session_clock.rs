//! The leader's side of session expiry: it proposes its wall-clock time into the log now and
//! then, and every replica expires sessions by that log time alone (`state_machine::session`).

use std::sync::Arc;
use std::time::Duration;
use std::time::SystemTime;

use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use rocksdb::IteratorMode;
use tokio::sync::watch;

use crate::context::NodeContext;
use crate::state_machine::session::tick_interval;
use crate::storage::CF_SESSIONS;
use crate::storage::cf;
use crate::types::Command;
use crate::types::Op;

/// Proposes a clock entry every tick while this node leads and the group holds sessions; an
/// idle group (no sessions) adds nothing to its log.
pub async fn run(ctx: Arc<NodeContext>, expiry: Duration, mut shutdown: watch::Receiver<bool>) {
    let expiry_ms = expiry.as_millis() as u64;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick_interval(expiry)) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        if ctx.raft.metrics().borrow_watched().state != ServerState::Leader || ctx.is_stopping() || !has_sessions(&ctx)
        {
            continue;
        }
        let now_ms = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let cmd = Command { session: None, shard: 0, op: Op::SessionClock { now_ms, expiry_ms } };
        // A lost proposal (leadership lost meanwhile) is simply made again at the next tick.
        if let Err(e) = ctx.raft.client_write(cmd).await {
            tracing::debug!(error = %e, "session clock entry not committed");
        }
    }
}

fn has_sessions(ctx: &NodeContext) -> bool {
    ctx.db.iterator_cf(cf(&ctx.db, CF_SESSIONS), IteratorMode::Start).next().is_some()
}

/// How many sessions this replica holds (a scan; for status calls, off the async runtime).
pub fn count_sessions(ctx: &NodeContext) -> Result<u64, rocksdb::Error> {
    let mut count = 0;
    for item in ctx.db.iterator_cf(cf(&ctx.db, CF_SESSIONS), IteratorMode::Start) {
        item?;
        count += 1;
    }
    Ok(count)
}
