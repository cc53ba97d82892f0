//! `shardkv playground`: a local cluster of real `shardkv-node` processes on loopback.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use clap::Args;
use futures::FutureExt;
use futures::future::{BoxFuture, join_all, select_all};
use serde_json::Value;
use shardkv_client::{Client, ClientOptions, Error, StatusResponse};
use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::Instant;

#[derive(Args)]
pub struct PlaygroundArgs {
    /// Number of nodes.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=50))]
    replicas: u16,
    /// Directory for the nodes' data, logs, cluster-id and endpoints files.
    #[arg(long)]
    data_dir: PathBuf,
    /// Client port of node 1; node i listens on P+i-1 and its admin HTTP on P+100+i-1.
    #[arg(long, default_value_t = 7100)]
    base_port: u16,
    /// How long to wait for the nodes to answer and elect a leader.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    startup_timeout: u64,
}

/// Grace period for a node to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(30);
/// Time allowed for a node's preStop procedure.
const PRESTOP_TIMEOUT: Duration = Duration::from_secs(30);
const STATUS_POLL: Duration = Duration::from_millis(250);
const LOG_TAIL_LINES: usize = 20;

/// Addresses and files of one playground node.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NodeSpec {
    id: u64,
    client_addr: String,
    admin_addr: String,
    data_dir: PathBuf,
    log_path: PathBuf,
}

fn node_specs(dir: &Path, replicas: u16, base_port: u16) -> anyhow::Result<Vec<NodeSpec>> {
    let last_admin_port = u32::from(base_port) + 100 + u32::from(replicas) - 1;
    ensure!(
        last_admin_port <= u32::from(u16::MAX),
        "--base-port {base_port} is too high for {replicas} replicas (admin ports reach {last_admin_port})"
    );
    Ok((1..=replicas)
        .map(|i| NodeSpec {
            id: u64::from(i),
            client_addr: format!("127.0.0.1:{}", base_port + i - 1),
            admin_addr: format!("127.0.0.1:{}", base_port + 100 + i - 1),
            data_dir: dir.join(format!("node-{i}")),
            log_path: dir.join(format!("node-{i}.log")),
        })
        .collect())
}

struct RunningNode {
    spec: NodeSpec,
    child: Child,
}

/// Why the playground is shutting down.
enum StopReason {
    Signal(&'static str),
    NodeExited(usize, std::io::Result<ExitStatus>),
    StartupFailed(anyhow::Error),
}

pub async fn run(args: &PlaygroundArgs) -> anyhow::Result<ExitCode> {
    let binary = find_node_binary()?;
    let dir = &args.data_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let endpoints_path = dir.join("endpoints");
    // A stale endpoints file would tell tooling the cluster is up before it is.
    remove_if_present(&endpoints_path)?;
    let cluster_id = load_or_create_cluster_id(&dir.join("cluster-id"))?;
    let specs = node_specs(dir, args.replicas, args.base_port)?;

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;

    eprintln!("starting {} nodes of cluster {cluster_id} with {}", specs.len(), binary.display());
    let mut nodes = Vec::new();
    for spec in &specs {
        match spawn_node(&binary, &cluster_id, spec) {
            Ok(child) => nodes.push(RunningNode { spec: spec.clone(), child }),
            Err(error) => {
                shutdown(&mut nodes, &endpoints_path).await;
                return Err(error);
            }
        }
    }

    let client = Client::with_options(
        specs.iter().map(|s| s.client_addr.clone()).collect(),
        ClientOptions { request_timeout: Duration::from_secs(1), ..ClientOptions::default() },
    )?;
    let startup_timeout = Duration::from_secs(args.startup_timeout);
    let started = tokio::select! {
        outcome = bring_up(&client, &specs, startup_timeout) => outcome.map_err(StopReason::StartupFailed),
        reason = stop_requested(&mut sigint, &mut sigterm, &mut nodes) => Err(reason),
    };
    let reason = match started {
        Ok(leader) => {
            let endpoints = specs.iter().map(|s| s.client_addr.as_str()).collect::<Vec<_>>().join(",");
            write_atomically(&endpoints_path, &endpoints)?;
            print_usage(dir, &cluster_id, &endpoints, leader, &specs);
            stop_requested(&mut sigint, &mut sigterm, &mut nodes).await
        }
        Err(reason) => reason,
    };

    let failed = match reason {
        StopReason::Signal(name) => {
            eprintln!("received {name}, stopping the cluster");
            false
        }
        StopReason::NodeExited(index, status) => {
            let node = &nodes[index].spec;
            eprintln!(
                "node {} exited on its own ({}); last lines of {}:",
                node.id,
                describe_exit(&status),
                node.log_path.display()
            );
            for line in log_tail(&node.log_path, LOG_TAIL_LINES) {
                eprintln!("  | {line}");
            }
            eprintln!("stopping the other nodes");
            true
        }
        StopReason::StartupFailed(error) => {
            eprintln!("startup failed: {error:#}; stopping the cluster");
            true
        }
    };
    shutdown(&mut nodes, &endpoints_path).await;
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// Resolves when a signal arrives or a node exits.
async fn stop_requested(
    sigint: &mut tokio::signal::unix::Signal,
    sigterm: &mut tokio::signal::unix::Signal,
    nodes: &mut [RunningNode],
) -> StopReason {
    tokio::select! {
        _ = sigint.recv() => StopReason::Signal("SIGINT"),
        _ = sigterm.recv() => StopReason::Signal("SIGTERM"),
        (index, status) = first_exit(nodes) => StopReason::NodeExited(index, status),
    }
}

async fn first_exit(nodes: &mut [RunningNode]) -> (usize, std::io::Result<ExitStatus>) {
    let waits: Vec<BoxFuture<'_, std::io::Result<ExitStatus>>> =
        nodes.iter_mut().map(|n| n.child.wait().boxed()).collect();
    let (status, index, _) = select_all(waits).await;
    (index, status)
}

fn find_node_binary() -> anyhow::Result<PathBuf> {
    const NAME: &str = "shardkv-node";
    if let Some(path) = std::env::var_os("SHARDKV_NODE_BIN") {
        let path = PathBuf::from(path);
        ensure!(path.is_file(), "SHARDKV_NODE_BIN={} is not a file", path.display());
        return Ok(path);
    }
    let sibling = std::env::current_exe().ok().map(|exe| exe.with_file_name(NAME));
    if let Some(sibling) = sibling.as_ref().filter(|p| p.is_file()) {
        return Ok(sibling.clone());
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|dir| dir.join(NAME)).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .find(|candidate| candidate.is_file());
    match on_path {
        Some(path) => Ok(path),
        None => bail!(
            "{NAME} not found: set SHARDKV_NODE_BIN, put it next to this binary{}, or on PATH \
             (build it with `cargo build --release -p shardkv-node`)",
            sibling.map(|p| format!(" ({})", p.display())).unwrap_or_default()
        ),
    }
}

fn load_or_create_cluster_id(path: &Path) -> anyhow::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let id = text.trim().to_string();
            ensure!(!id.is_empty(), "{} is empty", path.display());
            Ok(id)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = format!("playground-{:016x}", rand::random::<u64>());
            write_atomically(path, &id)?;
            Ok(id)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn write_atomically(path: &Path, contents: &str) -> anyhow::Result<()> {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, contents).with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("writing {}", path.display()))
}

fn remove_if_present(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

fn spawn_node(binary: &Path, cluster_id: &str, spec: &NodeSpec) -> anyhow::Result<Child> {
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log_path)
        .with_context(|| format!("opening {}", spec.log_path.display()))?;
    // Logs are appended across runs; the marker shows where this run starts.
    writeln!(log, "--- shardkv playground: starting node {} ---", spec.id)?;
    let child = Command::new(binary)
        .arg("--cluster-id")
        .arg(cluster_id)
        .arg("--node-id")
        .arg(spec.id.to_string())
        .arg("--data-dir")
        .arg(&spec.data_dir)
        .arg("--listen")
        .arg(&spec.client_addr)
        .arg("--admin-listen")
        .arg(&spec.admin_addr)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Own process group: a terminal's Ctrl-C must reach only the playground, which then
        // stops the nodes in order (preStop first).
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {} for node {}", binary.display(), spec.id))?;
    eprintln!(
        "node {}: pid {}, client {}, admin http://{}, log {}",
        spec.id,
        child.id().unwrap_or_default(),
        spec.client_addr,
        spec.admin_addr,
        spec.log_path.display()
    );
    Ok(child)
}

/// Waits until every node answers, initialises the group if no node is initialised yet, and
/// waits for a leader; returns its id.
async fn bring_up(client: &Client, specs: &[NodeSpec], timeout: Duration) -> anyhow::Result<u64> {
    let deadline = Instant::now() + timeout;
    let mut ticker = tokio::time::interval(STATUS_POLL);
    let mut reported_at = Instant::now();

    let statuses = loop {
        ticker.tick().await;
        let statuses = client.status_all().await;
        let answering = statuses.iter().filter(|(_, s)| s.is_ok()).count();
        if answering == specs.len() {
            break statuses;
        }
        if Instant::now() >= deadline {
            let (endpoint, error) = first_error(&statuses);
            bail!("only {answering}/{} nodes answered within {timeout:?} ({endpoint}: {error})", specs.len());
        }
        if reported_at.elapsed() >= Duration::from_secs(1) {
            eprintln!("waiting for nodes: {answering}/{} answering", specs.len());
            reported_at = Instant::now();
        }
    };
    eprintln!("all {} nodes answer", specs.len());

    if statuses.iter().any(|(_, s)| s.as_ref().is_ok_and(|s| s.initialized)) {
        eprintln!("cluster already initialized, reusing its data");
    } else {
        let members = specs.iter().map(|s| (s.id, s.client_addr.clone())).collect();
        eprintln!("initializing the group on node 1 with {} voters", specs.len());
        match client.initialize(&specs[0].client_addr, members).await {
            // Initialised meanwhile (e.g. by an earlier, interrupted run): nothing to do.
            Ok(()) | Err(Error::FailedPrecondition(_)) => {}
            Err(error) => return Err(error).context("initializing node 1"),
        }
    }

    loop {
        let statuses = client.status_all().await;
        if let Some(leader) = statuses.iter().find_map(|(_, s)| s.as_ref().ok().and_then(|s| s.leader_id)) {
            return Ok(leader);
        }
        if Instant::now() >= deadline {
            bail!("no leader elected within {timeout:?}");
        }
        if reported_at.elapsed() >= Duration::from_secs(1) {
            eprintln!("waiting for a leader: {}", describe_states(&statuses));
            reported_at = Instant::now();
        }
        ticker.tick().await;
    }
}

fn first_error(statuses: &[(String, Result<StatusResponse, Error>)]) -> (String, String) {
    statuses
        .iter()
        .find_map(|(endpoint, s)| s.as_ref().err().map(|e| (endpoint.clone(), e.to_string())))
        .unwrap_or_default()
}

fn describe_states(statuses: &[(String, Result<StatusResponse, Error>)]) -> String {
    statuses
        .iter()
        .map(|(endpoint, s)| match s {
            Ok(s) => format!("node {} {} term {}", s.node_id, s.state, s.term),
            Err(e) => format!("{endpoint} {e}"),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn print_usage(dir: &Path, cluster_id: &str, endpoints: &str, leader: u64, specs: &[NodeSpec]) {
    let file = dir.join("endpoints");
    let file = file.display();
    println!("playground cluster {cluster_id} is up: {} nodes, leader is node {leader}", specs.len());
    println!("  endpoints: {endpoints} (written to {file})");
    println!("  logs:      {}", dir.join("node-<i>.log").display());
    println!("try:");
    println!("  shardkv --endpoints-file {file} put k v");
    println!("  shardkv --endpoints-file {file} get k");
    println!("  shardkv --endpoints-file {file} status");
    println!("  shardkv --endpoints-file {file} bench put --clients 16 --duration 10");
    println!("press Ctrl-C to stop the cluster (data is kept; re-run to restart it)");
}

/// preStop on every node still running, then SIGTERM, then wait (SIGKILL after a grace period).
async fn shutdown(nodes: &mut [RunningNode], endpoints_path: &Path) {
    if let Err(error) = remove_if_present(endpoints_path) {
        eprintln!("warning: {error:#}");
    }
    let running: Vec<usize> = (0..nodes.len()).filter(|&i| matches!(nodes[i].child.try_wait(), Ok(None))).collect();

    let prestops = running.iter().map(|&i| {
        let spec = &nodes[i].spec;
        async move {
            let outcome =
                shardkv_client::admin_http::get(&spec.admin_addr, "/lifecycle/prestop", PRESTOP_TIMEOUT).await;
            (spec.id, outcome)
        }
    });
    for (id, outcome) in join_all(prestops).await {
        match outcome {
            Ok(response) => {
                eprintln!("node {id} prestop: HTTP {} {}", response.status, summarize_report(&response.body))
            }
            Err(error) => eprintln!("node {id} prestop failed: {error:#}"),
        }
    }

    for &i in &running {
        if let Some(pid) = nodes[i].child.id() {
            let pid = libc::pid_t::try_from(pid).expect("pids fit in pid_t");
            // SAFETY: kill(2) has no memory effects; `pid` is our own unreaped child, so the
            // id cannot have been reused by another process.
            if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
                eprintln!("node {}: SIGTERM failed: {}", nodes[i].spec.id, std::io::Error::last_os_error());
            }
        }
    }
    let exits = nodes.iter_mut().map(|node| async move {
        let id = node.spec.id;
        let status = match tokio::time::timeout(STOP_GRACE, node.child.wait()).await {
            Ok(status) => status,
            Err(_) => {
                eprintln!("node {id} still running {STOP_GRACE:?} after SIGTERM, killing it");
                // start_kill sends SIGKILL; the node had its grace period.
                let _ = node.child.start_kill();
                node.child.wait().await
            }
        };
        (id, status)
    });
    for (id, status) in join_all(exits).await {
        eprintln!("node {id} exited: {}", describe_exit(&status));
    }
}

fn describe_exit(status: &std::io::Result<ExitStatus>) -> String {
    match status {
        Ok(status) => status.to_string(),
        Err(error) => format!("status unknown: {error}"),
    }
}

/// One line from a node's preStop report: per group, where leadership went and how far the
/// snapshot reaches; then whether every step succeeded and how long it took.
fn summarize_report(body: &[u8]) -> String {
    let Ok(report) = serde_json::from_slice::<Value>(body) else {
        return String::from_utf8_lossy(body).trim().replace('\n', " ");
    };
    let index = |v: &Value| v.as_u64().map_or_else(|| "?".to_string(), |i| i.to_string());
    let groups: Vec<String> = report["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|g| {
            let role = if g["was_leader"] == Value::Bool(true) {
                format!("led it, leadership moved to node {}", index(&g["new_leader"]))
            } else {
                "follower".to_string()
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

/// The last `count` lines of a log file (empty if it cannot be read).
fn log_tail(path: &Path, count: usize) -> Vec<String> {
    let text = std::fs::read(path).unwrap_or_default();
    last_lines(&String::from_utf8_lossy(&text), count)
}

fn last_lines(text: &str, count: usize) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(count)..].iter().map(|line| line.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_specs_follow_the_port_layout() {
        let specs = node_specs(Path::new("/d"), 3, 7100).unwrap();
        assert_eq!(specs.len(), 3);
        assert_eq!(specs[2].id, 3);
        assert_eq!(specs[2].client_addr, "127.0.0.1:7102");
        assert_eq!(specs[2].admin_addr, "127.0.0.1:7202");
        assert_eq!(specs[2].data_dir, Path::new("/d/node-3"));
        assert_eq!(specs[2].log_path, Path::new("/d/node-3.log"));
    }

    #[test]
    fn node_specs_reject_ports_past_the_range() {
        assert!(node_specs(Path::new("/d"), 3, 65_434).is_err());
        assert!(node_specs(Path::new("/d"), 1, 65_435).is_ok());
    }

    #[test]
    fn cluster_id_is_created_once_and_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster-id");
        let created = load_or_create_cluster_id(&path).unwrap();
        assert!(created.starts_with("playground-"));
        assert_eq!(load_or_create_cluster_id(&path).unwrap(), created);
    }

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
    }

    #[test]
    fn last_lines_keeps_the_end() {
        assert_eq!(last_lines("a\nb\nc\n", 2), ["b", "c"]);
        assert_eq!(last_lines("a", 5), ["a"]);
        assert!(last_lines("", 3).is_empty());
    }
}
