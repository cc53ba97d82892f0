//! `shardkv prestop`: the pod's preStop hook. It asks the node in the same pod, over loopback
//! (the only peers /lifecycle/prestop answers), to stop being ready, hand leadership over and
//! snapshot, and prints what the node reports.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use serde_json::Value;

#[derive(Args)]
pub struct PrestopArgs {
    /// The node's admin HTTP address, on loopback.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:7180")]
    admin_addr: String,
    /// How long to wait for the node's report (its leadership transfer and snapshot).
    #[arg(long, value_name = "SECONDS", default_value_t = 90)]
    timeout_secs: u64,
}

/// Exits 0 when the node reports a clean stop (leadership moved if held, the snapshot covers
/// the log), 1 otherwise: the kubelet records a failed hook as an event, and the node still
/// stops on SIGTERM.
pub async fn run(args: &PrestopArgs) -> anyhow::Result<ExitCode> {
    let response =
        shardkv_client::admin_http::get(&args.admin_addr, "/lifecycle/prestop", Duration::from_secs(args.timeout_secs))
            .await
            .with_context(|| format!("asking the node at {} to prepare its stop", args.admin_addr))?;
    let summary = summarize_report(&response.body);
    if response.status != 200 {
        bail!("the node answered HTTP {}: {summary}", response.status);
    }
    println!("{summary}");
    let clean = serde_json::from_slice::<Value>(&response.body).is_ok_and(|r| r["clean"] == Value::Bool(true));
    Ok(if clean { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// One line from a node's preStop report: per group, where leadership went and how far the
/// snapshot reaches; then whether every step succeeded and how long it took.
pub fn summarize_report(body: &[u8]) -> String {
    let Ok(report) = serde_json::from_slice::<Value>(body) else {
        return String::from_utf8_lossy(body).trim().replace('\n', " ");
    };
    let index = |v: &Value| v.as_u64().map_or_else(|| "?".to_string(), |i| i.to_string());
    let groups: Vec<String> = report["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|g| {
            let role = match (g["was_leader"] == Value::Bool(true), g["new_leader"].as_u64()) {
                (true, Some(new_leader)) => format!("led it, leadership moved to node {new_leader}"),
                (true, None) => "led it, leadership stayed".to_string(),
                (false, _) => "follower".to_string(),
            };
            let mut line = format!(
                "group {}: {role}, snapshot at {}, log purged to {}",
                index(&g["group_id"]),
                index(&g["snapshot_index"]),
                index(&g["purged_index"])
            );
            for key in ["transfer_error", "snapshot_error"] {
                if let Some(error) = g[key].as_str() {
                    line.push_str(&format!(", {key}: {error}"));
                }
            }
            line
        })
        .collect();
    format!("{}; clean={} in {} ms", groups.join("; "), report["clean"], index(&report["total_ms"]))
}

#[cfg(test)]
mod tests {
    use super::summarize_report;

    #[test]
    fn report_summary_says_where_leadership_went_and_how_far_the_snapshot_reaches() {
        let body = br#"{"node_id":2,"clean":true,"total_ms":118,"steps":[],
            "groups":[{"group_id":0,"was_leader":true,"new_leader":3,"snapshot_index":42,"purged_index":42}]}"#;
        assert_eq!(
            summarize_report(body),
            "group 0: led it, leadership moved to node 3, snapshot at 42, log purged to 42; clean=true in 118 ms"
        );
        let failed =
            br#"{"clean":false,"total_ms":5,"groups":[{"group_id":0,"was_leader":false,"snapshot_error":"boom"}]}"#;
        assert!(summarize_report(failed).contains("follower, snapshot at ?, log purged to ?, snapshot_error: boom"));
        assert_eq!(summarize_report(b"plain text\n"), "plain text");
        let alone = br#"{"clean":false,"total_ms":3,"groups":[{"group_id":1,"was_leader":true,"new_leader":null,
            "snapshot_index":4,"purged_index":4,"transfer_error":"no other voter"}]}"#;
        assert_eq!(
            summarize_report(alone),
            "group 1: led it, leadership stayed, snapshot at 4, log purged to 4, transfer_error: no other voter; \
             clean=false in 3 ms"
        );
    }
}
