//! Group removals (scale-in) as status records them, and their Events.

use std::collections::BTreeSet;

use kube::runtime::events::EventType;

use super::context::Context;
use crate::crd::ShardCluster;
use crate::crd::ShardClusterStatus;
use crate::nodes::NodeApi;
use crate::plan::Removal;
use crate::plan::RemovalPhase;
use crate::resources::ClusterNames;

/// The removals recorded in status (an entry whose phase this operator does not know is
/// dropped: it is planned again from what is observed).
pub(super) fn recorded_removals(status: Option<&ShardClusterStatus>) -> Vec<Removal> {
    status
        .map(|s| s.group_removals.as_slice())
        .unwrap_or_default()
        .iter()
        .filter_map(|r| {
            Some(Removal { group_id: r.group_id, leave_config: r.leave_config, phase: RemovalPhase::parse(&r.phase)? })
        })
        .collect()
}

/// An Event for each removal that started, changed phase, finished or was called off.
pub(super) async fn publish_removal_changes(
    ctx: &Context<impl NodeApi>,
    cluster: &ShardCluster,
    names: &ClusterNames,
    previous: Option<&ShardClusterStatus>,
    status: &ShardClusterStatus,
    observed_groups: &BTreeSet<u64>,
) {
    let before = previous.map(|p| p.group_removals.as_slice()).unwrap_or_default();
    for removal in &status.group_removals {
        let id = removal.group_id;
        if before.iter().any(|b| b.group_id == id && b.phase == removal.phase) {
            continue;
        }
        let held = removal.shards_held.map_or("unknown".to_string(), |n| n.to_string());
        let note = match removal.leave_config {
            Some(c) => format!(
                "group {id}: {} (left in config {c}; {held} shards held, {} bytes moved)",
                removal.phase, removal.bytes_moved
            ),
            None => format!("group {id}: {} ({held} shards held)", removal.phase),
        };
        let reason = format!("Removal{}", removal.phase);
        ctx.publish(cluster, Some(names.group(id)), EventType::Normal, &reason, "GroupScaleIn", note).await;
    }
    for gone in before.iter().filter(|b| !status.group_removals.iter().any(|r| r.group_id == b.group_id)) {
        let id = gone.group_id;
        let (reason, note) = if observed_groups.contains(&id) && gone.phase != RemovalPhase::Deleting.as_str() {
            ("RemovalCancelled", format!("group {id} is wanted again: its removal is called off"))
        } else {
            ("RemovalDone", format!("group {id} is deleted ({} bytes moved out)", gone.bytes_moved))
        };
        ctx.publish(cluster, Some(names.group(id)), EventType::Normal, reason, "GroupScaleIn", note).await;
    }
}
