//! Human-readable and JSON renderings of command results.

use serde_json::{Value, json};
use shardkv_client::bench::{BenchReport, Progress};
use shardkv_client::{Result, StatusResponse};

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

/// One row per endpoint, then the member list as seen by the leader (or the first node
/// that answered when there is no leader).
pub fn status_table(statuses: &[(String, Result<StatusResponse>)]) -> String {
    let mut rows = vec![
        [
            "ENDPOINT",
            "NODE",
            "STATE",
            "TERM",
            "LEADER",
            "LAST_LOG",
            "COMMITTED",
            "APPLIED",
            "SNAPSHOT",
            "PURGED",
            "INIT",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for (endpoint, status) in statuses {
        rows.push(match status {
            Ok(s) => vec![
                endpoint.clone(),
                s.node_id.to_string(),
                if s.stopping { format!("{} (stopping)", s.state) } else { s.state.clone() },
                s.term.to_string(),
                optional(s.leader_id),
                s.last_log_index.to_string(),
                s.committed_index.to_string(),
                s.applied_index.to_string(),
                s.snapshot_index.to_string(),
                s.purged_index.to_string(),
                if s.initialized { "yes" } else { "no" }.to_string(),
            ],
            Err(error) => vec![endpoint.clone(), format!("error: {error}")],
        });
    }
    let mut out = render_table(&rows);

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
        "stopping": s.stopping,
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
