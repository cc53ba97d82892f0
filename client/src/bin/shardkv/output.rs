//! Human-readable and JSON renderings of command results.

use serde_json::{Value, json};
use shardkv_client::bench::moves::{MoveBenchReport, MoveEvent};
use shardkv_client::bench::{BenchReport, Progress};
use shardkv_client::cluster::{ClusterStatus, GroupStatus, MoveView};
use shardkv_client::{Result, ShardConfig, StatusResponse};

/// Aligns rows into columns separated by two spaces; the first row is the header. Shorter
/// rows (such as an endpoint and its error) do not widen the columns they overflow.
pub fn render_table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let full_rows = || rows.iter().filter(|row| row.len() == columns);
    let widths: Vec<usize> = (0..columns)
        .map(|c| full_rows().filter_map(|row| row.get(c)).map(|cell| cell.chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn optional(value: Option<u64>) -> String {
    value.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// A table with one row per node: the endpoint, then `cells` of its status, or its error.
fn node_table(
    statuses: &[(String, Result<StatusResponse>)],
    columns: &[&str],
    cells: impl Fn(&StatusResponse) -> Vec<String>,
) -> String {
    let mut rows = vec![std::iter::once("ENDPOINT").chain(columns.iter().copied()).map(String::from).collect()];
    for (endpoint, status) in statuses {
        let mut row = vec![endpoint.clone()];
        match status {
            Ok(s) => row.extend(cells(s)),
            Err(error) => row.push(format!("error: {error}")),
        }
        rows.push(row);
    }
    render_table(&rows)
}

fn state_cell(s: &StatusResponse) -> String {
    if s.stopping { format!("{} (stopping)", s.state) } else { s.state.clone() }
}

/// One row per endpoint, then the member list as seen by the leader (or the first node
/// that answered when there is no leader).
pub fn status_table(statuses: &[(String, Result<StatusResponse>)]) -> String {
    let columns = ["NODE", "STATE", "TERM", "LEADER", "LAST_LOG", "COMMITTED", "APPLIED", "SNAPSHOT", "PURGED", "INIT"];
    let mut out = node_table(statuses, &columns, |s| {
        vec![
            s.node_id.to_string(),
            state_cell(s),
            s.term.to_string(),
            optional(s.leader_id),
            s.last_log_index.to_string(),
            s.committed_index.to_string(),
            s.applied_index.to_string(),
            s.snapshot_index.to_string(),
            s.purged_index.to_string(),
            if s.initialized { "yes" } else { "no" }.to_string(),
        ]
    });

    let answered = statuses.iter().filter_map(|(_, s)| s.as_ref().ok());
    let reporter = answered.clone().find(|s| s.leader_id == Some(s.node_id)).or_else(|| answered.clone().next());
    if let Some(reporter) = reporter.filter(|s| !s.members.is_empty()) {
        out.push_str(&format!("\nmembers (as seen by node {}):\n", reporter.node_id));
        let mut members = vec![["NODE", "ROLE", "ADDR", "MATCHED"].map(String::from).to_vec()];
        for m in &reporter.members {
            members.push(vec![m.node_id.to_string(), m.role.clone(), m.addr.clone(), optional(m.matched_index)]);
        }
        out.push_str(&render_table(&members));
    }
    out
}

pub fn status_to_json(s: &StatusResponse) -> Value {
    json!({
        "cluster_id": s.cluster_id,
        "group_id": s.group_id,
        "node_id": s.node_id,
        "version": s.version,
        "state": s.state,
        "term": s.term,
        "leader_id": s.leader_id,
        "leader_addr": s.leader_addr,
        "last_log_index": s.last_log_index,
        "committed_index": s.committed_index,
        "applied_index": s.applied_index,
        "snapshot_index": s.snapshot_index,
        "purged_index": s.purged_index,
        "initialized": s.initialized,
        "startup_log_entries": s.startup_log_entries,
        "snapshots_installed": s.snapshots_installed,
        "sessions": s.sessions,
        "stopping": s.stopping,
        "role": s.role,
        "config_num": s.config_num,
        "shards": s.shards.iter().map(|shard| json!({
            "shard": shard.shard,
            "state": shard.state,
            "peer_group": shard.peer_group,
            "moved_items": shard.moved_items,
            "moved_bytes": shard.moved_bytes,
        })).collect::<Vec<_>>(),
        "members": s.members.iter().map(|m| json!({
            "node_id": m.node_id,
            "addr": m.addr,
            "role": m.role,
            "matched_index": m.matched_index,
        })).collect::<Vec<_>>(),
    })
}

/// A JSON array with one object per endpoint: `{"endpoint", "status"}` or `{"endpoint", "error"}`.
pub fn status_json(statuses: &[(String, Result<StatusResponse>)]) -> Value {
    Value::Array(
        statuses
            .iter()
            .map(|(endpoint, status)| match status {
                Ok(s) => json!({ "endpoint": endpoint, "status": status_to_json(s) }),
                Err(error) => json!({ "endpoint": endpoint, "error": error.to_string() }),
            })
            .collect(),
    )
}

/// Shard ids as compact ranges: `0-15,32,40-47`.
pub fn shard_ranges(shards: &[u32]) -> String {
    let mut sorted = shards.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j + 1 < sorted.len() && sorted[j + 1] == sorted[j] + 1 {
            j += 1;
        }
        parts.push(if i == j { sorted[i].to_string() } else { format!("{}-{}", sorted[i], sorted[j]) });
        i = j + 1;
    }
    if parts.is_empty() { "-".to_string() } else { parts.join(",") }
}

fn shards_of(config: &ShardConfig, group: u64) -> Vec<u32> {
    (0..config.shard_groups.len() as u32).filter(|&s| config.shard_groups[s as usize] == group).collect()
}

/// A shard map: its number, then each group's members and shards.
pub fn config_text(config: &ShardConfig) -> String {
    let mut out = format!(
        "config {}: {} shards, {} groups, pinned: {}\n",
        config.num,
        config.shard_groups.len(),
        config.groups.len(),
        shard_ranges(&config.pinned)
    );
    for group in &config.groups {
        let members: Vec<String> = group.members.iter().map(|m| format!("{}={}", m.node_id, m.addr)).collect();
        let shards = shards_of(config, group.group_id);
        out.push_str(&format!(
            "  group {}: {} shards ({}); members {}\n",
            group.group_id,
            shards.len(),
            shard_ranges(&shards),
            members.join(" ")
        ));
    }
    let unassigned = shards_of(config, 0);
    if !unassigned.is_empty() {
        out.push_str(&format!("  unassigned: {} shards ({})\n", unassigned.len(), shard_ranges(&unassigned)));
    }
    out
}

pub fn config_json(config: &ShardConfig) -> Value {
    json!({
        "num": config.num,
        "shard_groups": config.shard_groups,
        "pinned": config.pinned,
        "groups": config.groups.iter().map(|g| json!({
            "group_id": g.group_id,
            "members": g.members.iter().map(|m| json!({"node_id": m.node_id, "addr": m.addr})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

fn bytes_text(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

/// What a group receiving a shard in `state` is doing, for shards that receive data.
fn receiving(state: &str) -> Option<&'static str> {
    match state {
        "copying" => Some("copying, still served, from"),
        "catching_up" => Some("pulling changes since its copy from"),
        "pulling" => Some("pulling from"),
        _ => None,
    }
}

fn move_text(m: &MoveView) -> String {
    if let Some(doing) = receiving(&m.state) {
        return format!(
            "shard {}: group {} {doing} group {}: {} items, {} received",
            m.shard,
            m.group,
            m.peer_group,
            m.moved_items,
            bytes_text(m.moved_bytes)
        );
    }
    match m.state.as_str() {
        "copied" => format!(
            "shard {}: group {} holds a whole copy from group {} and waits for the move",
            m.shard, m.group, m.peer_group
        ),
        "be_pulled" => format!(
            "shard {}: group {} holds it frozen for group {} until that group installs it",
            m.shard, m.group, m.peer_group
        ),
        other => format!("shard {}: group {} {other} (peer group {})", m.shard, m.group, m.peer_group),
    }
}

fn group_table(group: &GroupStatus) -> String {
    let columns = ["NODE", "STATE", "TERM", "LEADER", "CONFIG", "LAST_LOG", "APPLIED", "SNAPSHOT"];
    node_table(&group.nodes, &columns, |s| {
        vec![
            s.node_id.to_string(),
            state_cell(s),
            s.term.to_string(),
            optional(s.leader_id),
            s.config_num.to_string(),
            s.last_log_index.to_string(),
            s.applied_index.to_string(),
            s.snapshot_index.to_string(),
        ]
    })
}

fn group_heading(name: &str, group: &GroupStatus) -> String {
    match (group.leader(), group.leader_endpoint()) {
        (Some(leader), Some(endpoint)) => {
            format!("{name}: leader node {} at {endpoint}, applied config {}", leader.node_id, leader.config_num)
        }
        _ => format!("{name}: no leader"),
    }
}

/// The whole sharded cluster: map, groups, shards, moves.
pub fn cluster_table(cluster: &ClusterStatus) -> String {
    let mut out = String::from("shard map ");
    out.push_str(&config_text(&cluster.config));
    out.push('\n');
    out.push_str(&group_heading("meta group", &cluster.meta));
    out.push('\n');
    out.push_str(&group_table(&cluster.meta));
    for group in &cluster.groups {
        let in_map = cluster.config.groups.iter().any(|g| g.group_id == group.group_id);
        let name = if in_map {
            format!("group {}", group.group_id)
        } else {
            format!("group {} (left the map)", group.group_id)
        };
        out.push('\n');
        out.push_str(&group_heading(&name, group));
        out.push('\n');
        out.push_str(&group_table(group));
    }

    out.push_str("\nshards:\n");
    let mut rows = vec![["SHARDS", "OWNER", "STATE"].map(String::from).to_vec()];
    let shards = cluster.shards();
    let mut i = 0;
    while i < shards.len() {
        let same = |j: usize| {
            shards[j].owner == shards[i].owner
                && shards[j].state == shards[i].state
                && receiving(&shards[j].state).is_none()
        };
        let mut j = i;
        while j + 1 < shards.len() && same(j + 1) {
            j += 1;
        }
        let range =
            if i == j { shards[i].shard.to_string() } else { format!("{}-{}", shards[i].shard, shards[j].shard) };
        let owner = if shards[i].owner == 0 { "-".to_string() } else { shards[i].owner.to_string() };
        let state = match receiving(&shards[i].state) {
            Some(doing) => format!(
                "{doing} group {} ({} items, {} so far)",
                shards[i].peer_group,
                shards[i].moved_items,
                bytes_text(shards[i].moved_bytes)
            ),
            None => shards[i].state.clone(),
        };
        rows.push(vec![range, owner, state]);
        i = j + 1;
    }
    out.push_str(&render_table(&rows));

    let moves = cluster.moves();
    if moves.is_empty() {
        out.push_str("\nno moves in progress\n");
    } else {
        out.push_str("\nmoves in progress:\n");
        for m in &moves {
            out.push_str(&format!("  {}\n", move_text(m)));
        }
    }
    if let Some(reason) = cluster.unsettled() {
        out.push_str(&format!("not settled: {reason}\n"));
    }
    out
}

fn group_json(group: &GroupStatus) -> Value {
    json!({
        "group_id": group.group_id,
        "leader": group.leader().map(|l| l.node_id),
        "leader_endpoint": group.leader_endpoint(),
        "nodes": status_json(&group.nodes),
    })
}

pub fn cluster_json(cluster: &ClusterStatus) -> Value {
    let unsettled = cluster.unsettled();
    json!({
        "config": config_json(&cluster.config),
        "meta": group_json(&cluster.meta),
        "groups": cluster.groups.iter().map(group_json).collect::<Vec<_>>(),
        "shards": cluster.shards().iter().map(|s| json!({
            "shard": s.shard,
            "owner": s.owner,
            "state": s.state,
            "peer_group": s.peer_group,
            "moved_items": s.moved_items,
            "moved_bytes": s.moved_bytes,
        })).collect::<Vec<_>>(),
        "moves": cluster.moves().iter().map(|m| json!({
            "shard": m.shard,
            "group": m.group,
            "state": m.state,
            "peer_group": m.peer_group,
            "moved_items": m.moved_items,
            "moved_bytes": m.moved_bytes,
        })).collect::<Vec<_>>(),
        "settled": unsettled.is_none(),
        "unsettled": unsettled,
    })
}

pub fn progress_line(label: &str, progress: &Progress) -> String {
    format!(
        "[{label} {:>4.0}s] {} ops, {:.0} ops/s, p99 {:.2} ms, {} errors",
        progress.elapsed.as_secs_f64(),
        progress.ops,
        progress.ops_per_sec,
        progress.p99_ms,
        progress.errors
    )
}

pub fn bench_report_text(report: &BenchReport) -> String {
    let op = serde_json::to_value(report.op).unwrap_or(Value::Null);
    let mut text = format!(
        "{} x{} clients, {} B values: {} ops in {:.2} s = {:.1} ops/s, {} errors\n\
         latency ms: p50 {:.3}  p99 {:.3}  p999 {:.3}  max {:.3}  mean {:.3}\n",
        op.as_str().unwrap_or("?"),
        report.clients,
        report.value_size,
        report.ops,
        report.elapsed_secs,
        report.throughput_ops_per_sec,
        report.errors,
        report.latency.p50_ms,
        report.latency.p99_ms,
        report.latency.p999_ms,
        report.latency.max_ms,
        report.latency.mean_ms,
    );
    if report.misses > 0 {
        text.push_str(&format!(
            "{} reads found no value (use --prefill to write the key space first)\n",
            report.misses
        ));
    }
    if let Some(error) = &report.first_error {
        text.push_str(&format!("first error: {error}\n"));
    }
    text
}

const MB: f64 = 1e6;

pub fn move_event_line(event: &MoveEvent<'_>) -> String {
    match event {
        MoveEvent::Filling { written, total, elapsed } => {
            format!("[fill {:>4.0}s] {written}/{total} values written", elapsed.as_secs_f64())
        }
        MoveEvent::Filled { bytes, elapsed } => format!(
            "filled the shard with {:.1} MB in {:.1} s ({:.1} MB/s)",
            *bytes as f64 / MB,
            elapsed.as_secs_f64(),
            *bytes as f64 / MB / elapsed.as_secs_f64().max(1e-9)
        ),
        MoveEvent::Moving { index, elapsed, state } => {
            format!("[move {index} {:>5.1}s] {state}", elapsed.as_secs_f64())
        }
        MoveEvent::Moved(m) => format!(
            "move {}: group {} -> {} (config {}) settled in {:.2} s = {:.1} MB/s; writes refused for {:.0} ms \
             (baseline gap {:.0} ms; probe {} ok, {} failed)",
            m.index,
            m.from_group,
            m.to_group,
            m.config_num,
            m.duration_secs,
            m.mb_per_sec,
            m.refused_window_ms,
            m.baseline_gap_ms,
            m.probe_ok,
            m.probe_failed
        ),
    }
}

pub fn move_report_text(report: &MoveBenchReport) -> String {
    let number = |v: Option<f64>, digits: usize| v.map_or_else(|| "-".to_string(), |v| format!("{v:.digits$}"));
    let mut text = format!(
        "shard {} of {} ({} values of {} B = {:.1} MB), moved between groups {} and {}\n",
        report.shard,
        report.shards,
        report.fill_keys,
        report.fill_value_size,
        report.shard_bytes as f64 / MB,
        report.groups.0,
        report.groups.1
    );
    let mut rows = vec![
        ["MOVE", "FROM", "TO", "CONFIG", "SECONDS", "MB/S", "REFUSED MS", "BASELINE GAP MS", "PROBE OK", "FAILED"]
            .map(String::from)
            .to_vec(),
    ];
    for m in &report.moves {
        rows.push(vec![
            m.index.to_string(),
            m.from_group.to_string(),
            m.to_group.to_string(),
            m.config_num.to_string(),
            format!("{:.2}", m.duration_secs),
            format!("{:.1}", m.mb_per_sec),
            format!("{:.0}", m.refused_window_ms),
            format!("{:.0}", m.baseline_gap_ms),
            m.probe_ok.to_string(),
            m.probe_failed.to_string(),
        ]);
    }
    text.push_str(&render_table(&rows));
    text.push_str(&format!(
        "move MB/s: p50 {}  min {}; seconds: p50 {}  max {}\n\
         writes refused ms: p50 {}  p99 {}  max {} (baseline gap without a move: max {})\n\
         {} filled keys read back after the moves\n",
        number(report.mb_per_sec_p50, 1),
        number(report.mb_per_sec_min, 1),
        number(report.duration_secs_p50, 2),
        number(report.duration_secs_max, 2),
        number(report.refused_ms_p50, 0),
        number(report.refused_ms_p99, 0),
        number(report.refused_ms_max, 0),
        number(report.baseline_gap_ms_max, 0),
        report.verified_keys
    ));
    if let Some(error) = report.moves.iter().find_map(|m| m.probe_first_error.as_ref()) {
        text.push_str(&format!("first probe error: {error}\n"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardkv_client::Error;
    use shardkv_proto::v1::ReplicaStatus;

    #[test]
    fn table_columns_are_aligned() {
        let rows = vec![vec!["A".to_string(), "BB".to_string()], vec!["ccc".to_string(), "d".to_string()]];
        assert_eq!(render_table(&rows), "A    BB\nccc  d\n");
        let with_short_row = vec![
            vec!["A".to_string(), "BB".to_string()],
            vec!["a long error".to_string()],
            vec!["c".to_string(), "d".to_string()],
        ];
        assert_eq!(render_table(&with_short_row), "A  BB\na long error\nc  d\n");
    }

    #[test]
    fn shard_ranges_collapse_runs() {
        assert_eq!(shard_ranges(&[5, 0, 1, 2, 7, 8, 3]), "0-3,5,7-8");
        assert_eq!(shard_ranges(&[]), "-");
        assert_eq!(shard_ranges(&[4]), "4");
    }

    #[test]
    fn cluster_table_shows_owners_states_and_moves() {
        use shardkv_client::cluster::GroupStatus;
        use shardkv_proto::v1::{GroupMembers, Member, ShardStatus};
        let member = |id: u64, addr: &str| Member { node_id: id, addr: addr.into() };
        let leader = |group: u64, shards: Vec<ShardStatus>| StatusResponse {
            group_id: group,
            node_id: 1,
            leader_id: Some(1),
            state: "Leader".into(),
            config_num: 3,
            shards,
            ..Default::default()
        };
        let shard = |shard: u32, state: &str, peer_group: u64| ShardStatus {
            shard,
            state: state.into(),
            peer_group,
            moved_items: 7,
            moved_bytes: 3 * 1024 * 1024,
        };
        let config = ShardConfig {
            num: 3,
            shard_groups: vec![1, 1, 2, 2],
            groups: vec![
                GroupMembers { group_id: 1, members: vec![member(1, "g1:1")] },
                GroupMembers { group_id: 2, members: vec![member(1, "g2:1")] },
            ],
            pinned: vec![1],
        };
        let cluster = ClusterStatus {
            config,
            meta: GroupStatus { group_id: 0, nodes: vec![("m:1".into(), Ok(leader(0, vec![])))] },
            groups: vec![
                GroupStatus {
                    group_id: 1,
                    nodes: vec![("g1:1".into(), Ok(leader(1, vec![shard(0, "serving", 0), shard(1, "serving", 0)])))],
                },
                GroupStatus {
                    group_id: 2,
                    nodes: vec![("g2:1".into(), Ok(leader(2, vec![shard(2, "pulling", 1), shard(3, "serving", 0)])))],
                },
            ],
        };
        let table = cluster_table(&cluster);
        assert!(table.starts_with("shard map config 3: 4 shards, 2 groups, pinned: 1\n"), "{table}");
        assert!(table.contains("group 1: 2 shards (0-1); members 1=g1:1"), "{table}");
        assert!(table.contains("group 2: leader node 1 at g2:1, applied config 3"), "{table}");
        assert!(table.contains("0-1     1      serving"), "{table}");
        assert!(table.contains("2       2      pulling from group 1 (7 items, 3.0 MiB so far)"), "{table}");
        assert!(table.contains("shard 2: group 2 pulling from group 1: 7 items, 3.0 MiB received"), "{table}");
        assert!(table.contains("not settled: 3/4 shards serving, 1 moves in progress"), "{table}");
        let json = cluster_json(&cluster);
        assert_eq!(json["shards"][2]["state"], "pulling");
        assert_eq!(json["moves"][0]["moved_bytes"], 3 * 1024 * 1024);
        assert_eq!(json["groups"][1]["leader_endpoint"], "g2:1");
        assert_eq!(json["settled"], false);
    }

    #[test]
    fn status_table_shows_errors_and_leader_members() {
        let leader = StatusResponse {
            node_id: 1,
            state: "Leader".into(),
            term: 3,
            leader_id: Some(1),
            members: vec![ReplicaStatus {
                node_id: 2,
                addr: "127.0.0.1:7101".into(),
                role: "voter".into(),
                matched_index: Some(17),
            }],
            ..Default::default()
        };
        let statuses = vec![
            ("127.0.0.1:7100".to_string(), Ok(leader)),
            ("127.0.0.1:7101".to_string(), Err(Error::Transport("connection refused".into()))),
        ];
        let table = status_table(&statuses);
        assert!(table.contains("Leader"), "{table}");
        assert!(table.contains("error: transport error: connection refused"), "{table}");
        assert!(table.contains("members (as seen by node 1)"), "{table}");
        assert!(table.contains("127.0.0.1:7101  17"), "{table}");
        let json = status_json(&statuses);
        assert_eq!(json[0]["status"]["members"][0]["matched_index"], 17);
        assert_eq!(json[1]["error"], "transport error: connection refused");
    }
}
