//! The one stop sequence of a node: stop being ready, hand leadership over, snapshot and
//! purge, report. The preStop hook, SIGTERM/SIGINT (before the servers close) and a confirmed
//! Removed notice all run it.
//!
//! Runs once per process; later calls get the same report, so a retried hook, or a SIGTERM
//! after the hook, is harmless.

use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use serde::Serialize;
use shardkv_proto::v1::GroupStopReport;
use shardkv_proto::v1::StopReport;
use shardkv_proto::v1::StopStep;
use tokio::sync::OnceCell;

use super::leadership::TransferError;
use super::leadership::transfer_leadership;
use super::snapshot::snapshot_and_purge;
use crate::context::NodeContext;
use crate::types::NodeId;

const TRANSFER_TIMEOUT: Duration = Duration::from_secs(10);
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Serialize)]
pub struct StepTiming {
    pub step: &'static str,
    pub ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupReport {
    pub group_id: u64,
    pub was_leader: bool,
    /// Where leadership went, when this node led the group.
    pub new_leader: Option<NodeId>,
    pub transfer_error: Option<String>,
    /// The applied index the snapshot had to cover.
    pub applied_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    pub snapshot_error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PrestopReport {
    pub node_id: NodeId,
    pub groups: Vec<GroupReport>,
    pub steps: Vec<StepTiming>,
    pub total_ms: u64,
    /// True when every step succeeded: leadership moved (if held) and the snapshot covers the log.
    pub clean: bool,
}

impl From<PrestopReport> for StopReport {
    fn from(r: PrestopReport) -> Self {
        StopReport {
            node_id: r.node_id,
            groups: r
                .groups
                .into_iter()
                .map(|g| GroupStopReport {
                    group_id: g.group_id,
                    was_leader: g.was_leader,
                    new_leader: g.new_leader,
                    transfer_error: g.transfer_error.unwrap_or_default(),
                    applied_index: g.applied_index.unwrap_or_default(),
                    snapshot_index: g.snapshot_index,
                    purged_index: g.purged_index,
                    snapshot_error: g.snapshot_error.unwrap_or_default(),
                })
                .collect(),
            steps: r.steps.into_iter().map(|s| StopStep { step: s.step.to_string(), ms: s.ms }).collect(),
            total_ms: r.total_ms,
            clean: r.clean,
        }
    }
}

#[derive(Default)]
pub struct Prestop {
    report: OnceCell<PrestopReport>,
}

impl Prestop {
    pub async fn run(&self, ctx: &Arc<NodeContext>) -> PrestopReport {
        self.report.get_or_init(|| run_once(ctx)).await.clone()
    }
}

async fn run_once(ctx: &Arc<NodeContext>) -> PrestopReport {
    let started = Instant::now();
    let mut steps = Vec::new();
    let mut timed = |step: &'static str, since: Instant| {
        let took = since.elapsed();
        ctx.metrics.observe_prestop_step(step, took);
        steps.push(StepTiming { step, ms: took.as_millis() as u64 });
    };

    let t = Instant::now();
    ctx.set_stopping();
    timed("stop_ready", t);

    let t = Instant::now();
    let (was_leader, new_leader, transfer_error) = match transfer_leadership(&ctx.raft, None, TRANSFER_TIMEOUT).await {
        Ok(leader) => (true, Some(leader), None),
        Err(TransferError::NotLeader) => (false, None, None),
        // A single-voter group has nowhere to move leadership; staying leader is expected there.
        Err(TransferError::NoOtherVoter) => (true, None, None),
        Err(e) => (true, None, Some(e.to_string())),
    };
    timed("transfer_leadership", t);

    let t = Instant::now();
    let snapshot = snapshot_and_purge(&ctx.raft, SNAPSHOT_TIMEOUT).await;
    timed("snapshot_and_purge", t);

    let group = GroupReport {
        group_id: ctx.scope.group_id,
        was_leader,
        new_leader,
        transfer_error,
        applied_index: snapshot.as_ref().ok().map(|s| s.applied_index),
        snapshot_index: snapshot.as_ref().ok().map(|s| s.snapshot_index),
        purged_index: snapshot.as_ref().ok().map(|s| s.purged_index),
        snapshot_error: snapshot.err().map(|e| e.to_string()),
    };
    let clean = group.transfer_error.is_none() && group.snapshot_error.is_none();
    let report = PrestopReport {
        node_id: ctx.node_id,
        groups: vec![group],
        steps,
        total_ms: started.elapsed().as_millis() as u64,
        clean,
    };
    tracing::info!(report = %serde_json::to_string(&report).unwrap_or_default(), "preStop finished");
    report
}
