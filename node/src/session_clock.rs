//! The leader's side of session expiry: it proposes its wall-clock time into the log now and
//! then, and every replica expires sessions by that log time alone (`state_machine::session`).

use std::sync::Arc;
use std::time::Duration;
use std::time::SystemTime;

use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use rocksdb::IteratorMode;
use shardkv_proto::v1::StatusRequest;
use shardkv_proto::v1::admin_client::AdminClient;
use tokio::sync::watch;

use crate::context::NodeContext;
use crate::network::channels::Channels;
use crate::state_machine::session::tick_interval;
use crate::storage::CF_SESSIONS;
use crate::storage::cf;
use crate::types::Command;
use crate::types::LogId;
use crate::types::NodeId;
use crate::types::Op;

/// Proposes a clock entry every tick while this node leads, the group holds sessions, and every
/// member runs a build that decodes clock entries; an idle group (no sessions) adds nothing to
/// its log.
pub async fn run(ctx: Arc<NodeContext>, channels: Channels, expiry: Duration, mut shutdown: watch::Receiver<bool>) {
    let expiry_ms = expiry.as_millis() as u64;
    // The membership whose members all said they decode clock entries.
    let mut ready_membership: Option<Option<LogId>> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick_interval(expiry)) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        if ctx.raft.metrics().borrow_watched().state != ServerState::Leader || ctx.is_stopping() || !has_sessions(&ctx)
        {
            continue;
        }
        let membership = ctx.raft.metrics().borrow_watched().membership_config.clone();
        let membership_id = *membership.log_id();
        if ready_membership.as_ref() != Some(&membership_id) {
            let members: Vec<(NodeId, String)> =
                membership.membership().nodes().map(|(id, node)| (*id, node.addr.clone())).collect();
            if !members_decode_clock(&ctx, &channels, &members).await {
                tracing::debug!("not every member decodes session clock entries yet (rolling upgrade); no expiry");
                continue;
            }
            ready_membership = Some(membership_id);
        }
        let now_ms = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let cmd = Command { session: None, shard: 0, op: Op::SessionClock { now_ms, expiry_ms } };
        // A lost proposal (leadership lost meanwhile) is simply made again at the next tick.
        if let Err(e) = ctx.raft.client_write(cmd).await {
            tracing::debug!(error = %e, "session clock entry not committed");
        }
    }
}

/// Whether every member (this node's build does) reports that it decodes clock entries. An older
/// build does not know the status field and reports false; so does a member that cannot be asked.
async fn members_decode_clock(ctx: &NodeContext, channels: &Channels, members: &[(NodeId, String)]) -> bool {
    let asks = members.iter().filter(|(id, _)| *id != ctx.node_id).map(|(id, addr)| async move {
        let mut request = tonic::Request::new(StatusRequest {});
        request.set_timeout(Duration::from_secs(2));
        let status = AdminClient::new(channels.get(addr).ok()?).status(request).await.ok()?.into_inner();
        let same_node =
            status.cluster_id == ctx.scope.cluster_id && status.group_id == ctx.scope.group_id && status.node_id == *id;
        Some(same_node && status.decodes_session_clock)
    });
    futures::future::join_all(asks).await.into_iter().all(|answer| answer == Some(true))
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
