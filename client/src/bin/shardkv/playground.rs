//! `shardkv playground`: a local sharded cluster of real `shardkv-node` processes on loopback:
//! a meta group and G data groups of R replicas each.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use clap::Args;
use futures::FutureExt;
use futures::future::{BoxFuture, join_all, select_all};
use serde::{Deserialize, Serialize};
use shardkv_client::{Client, ClientOptions, ClientTls, ClusterStatus, Error, StatusResponse, TlsFiles, Topology};

use crate::certs::{self, Bundle};
use crate::tls_files::{self, TLS_JSON};
use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::Instant;

#[derive(Args)]
pub struct PlaygroundArgs {
    /// Data groups [default: 2, or what --data-dir was created with].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=9))]
    groups: Option<u16>,
    /// Replicas of each group, the meta group's included [default: 3, or what --data-dir was
    /// created with].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=10))]
    replicas: Option<u16>,
    /// Shards the keys hash into, fixed when the cluster is created [default: 64, or what
    /// --data-dir was created with].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=65536))]
    shards: Option<u32>,
    /// Directory for the nodes' data and logs and the cluster-id, layout.json and endpoints files.
    #[arg(long)]
    data_dir: PathBuf,
    /// Client port of meta node 1. Node i of group g (0 = meta) listens on P+10g+i-1, its
    /// admin HTTP on 100 above that.
    #[arg(long, default_value_t = 7100)]
    base_port: u16,
    /// How long to wait for the nodes to answer, elect leaders and serve every shard.
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    startup_timeout: u64,
    /// Run without TLS. By default the playground makes a CA and certificates in DIR/tls (once;
    /// later runs reuse them), runs every node with mutual TLS, and writes DIR/tls.json, which
    /// `shardkv --endpoints-file DIR/endpoints` picks up (the admin certificate).
    #[arg(long)]
    insecure: bool,
}

const DEFAULT_LAYOUT: Layout = Layout { groups: 2, replicas: 3, shards: 64 };

/// The shape of a playground cluster, kept in DIR/layout.json so that a re-run without flags
/// restarts the same cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Layout {
    groups: u16,
    replicas: u16,
    shards: u32,
}

/// The layout to run: the flags given, else the saved layout, else the defaults. The shard
/// count and the replicas cannot change for an existing cluster, and groups can only be
/// added (a re-run with more groups joins the new ones).
fn resolve_layout(args: &PlaygroundArgs, saved: Option<Layout>) -> anyhow::Result<Layout> {
    let base = saved.unwrap_or(DEFAULT_LAYOUT);
    let layout = Layout {
        groups: args.groups.unwrap_or(base.groups),
        replicas: args.replicas.unwrap_or(base.replicas),
        shards: args.shards.unwrap_or(base.shards),
    };
    if let Some(saved) = saved {
        let created = format!(
            "{} was created with --groups {} --replicas {} --shards {}",
            args.data_dir.display(),
            saved.groups,
            saved.replicas,
            saved.shards
        );
        ensure!(layout.shards == saved.shards, "{created}; the shard count of a cluster never changes");
        ensure!(layout.replicas == saved.replicas, "{created}; pass the same --replicas or use another --data-dir");
        ensure!(
            layout.groups >= saved.groups,
            "{created}; to shrink, `shardkv admin leave` the groups first, or use another --data-dir"
        );
    }
    Ok(layout)
}

fn load_layout(path: &Path) -> anyhow::Result<Option<Layout>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Grace period for a node to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(30);
/// Time allowed for a node's preStop procedure.
const PRESTOP_TIMEOUT: Duration = Duration::from_secs(30);
/// The playground's certificates are for local use; ten years spares renewing them.
const PLAYGROUND_CERT_DAYS: u64 = 3650;
const STATUS_POLL: Duration = Duration::from_millis(250);
const LOG_TAIL_LINES: usize = 20;
/// Group id of the meta group.
const META: u64 = 0;

/// Addresses and files of one playground node.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NodeSpec {
    /// 0 for the meta group.
    group: u64,
    id: u64,
    client_addr: String,
    admin_addr: String,
    data_dir: PathBuf,
    log_path: PathBuf,
}

impl NodeSpec {
    fn label(&self) -> String {
        match self.group {
            META => format!("meta node {}", self.id),
            group => format!("group {group} node {}", self.id),
        }
    }
}

/// The meta group's nodes, then each data group's, in order.
fn node_specs(dir: &Path, layout: Layout, base_port: u16) -> anyhow::Result<Vec<NodeSpec>> {
    let last_admin_port = u32::from(base_port) + 100 + 10 * u32::from(layout.groups) + u32::from(layout.replicas) - 1;
    ensure!(
        last_admin_port <= u32::from(u16::MAX),
        "--base-port {base_port} is too high for {} groups of {} replicas (admin ports reach {last_admin_port})",
        layout.groups,
        layout.replicas
    );
    let mut specs = Vec::new();
    for group in 0..=u64::from(layout.groups) {
        for id in 1..=u64::from(layout.replicas) {
            let port = u64::from(base_port) + 10 * group + id - 1;
            let name = if group == META { format!("meta-{id}") } else { format!("g{group}-{id}") };
            specs.push(NodeSpec {
                group,
                id,
                client_addr: format!("127.0.0.1:{port}"),
                admin_addr: format!("127.0.0.1:{}", port + 100),
                data_dir: dir.join(&name),
                log_path: dir.join(format!("{name}.log")),
            });
        }
    }
    Ok(specs)
}

fn group_specs(specs: &[NodeSpec], group: u64) -> Vec<&NodeSpec> {
    specs.iter().filter(|s| s.group == group).collect()
}

fn addrs(specs: &[&NodeSpec]) -> Vec<String> {
    specs.iter().map(|s| s.client_addr.clone()).collect()
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
    let layout_path = dir.join("layout.json");
    let layout = resolve_layout(args, load_layout(&layout_path)?)?;
    let cluster_id = load_or_create_cluster_id(&dir.join("cluster-id"))?;
    write_atomically(&layout_path, &serde_json::to_string(&layout)?)?;
    let tls = playground_tls(dir, &cluster_id, args.insecure)?;
    let specs = node_specs(dir, layout, args.base_port)?;
    let meta_endpoints = addrs(&group_specs(&specs, META));
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let worker_threads = worker_threads_per_node(specs.len(), cores);

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;

    eprintln!(
        "starting cluster {cluster_id}: a meta group and {} data groups of {} replicas, {} shards, with {}",
        layout.groups,
        layout.replicas,
        layout.shards,
        binary.display()
    );
    let mut nodes = Vec::new();
    for spec in &specs {
        match spawn_node(
            &binary,
            &cluster_id,
            spec,
            layout.shards,
            &meta_endpoints,
            worker_threads,
            tls.as_ref().map(|t| &t.node),
        ) {
            Ok(child) => nodes.push(RunningNode { spec: spec.clone(), child }),
            Err(error) => {
                shutdown(&mut nodes, &endpoints_path).await;
                return Err(error);
            }
        }
    }

    let options = ClientOptions {
        request_timeout: Duration::from_secs(2),
        tls: tls.as_ref().map(|t| ClientTls::new(t.admin.clone())).transpose()?,
        ..ClientOptions::default()
    };
    // Status and Initialize go to single nodes; joins and the shard map to the meta group.
    let nodes_client = Client::with_options(
        specs.iter().map(|s| s.client_addr.clone()).collect(),
        ClientOptions { topology: Some(Topology::Standalone), ..options.clone() },
    )?;
    let meta_client =
        Client::with_options(meta_endpoints.clone(), ClientOptions { topology: Some(Topology::Sharded), ..options })?;
    let startup_timeout = Duration::from_secs(args.startup_timeout);
    let started = tokio::select! {
        outcome = bring_up(&nodes_client, &meta_client, &specs, layout, startup_timeout) => {
            outcome.map_err(StopReason::StartupFailed)
        }
        reason = stop_requested(&mut sigint, &mut sigterm, &mut nodes) => Err(reason),
    };
    let reason = match started {
        Ok(cluster) => {
            let endpoints = meta_endpoints.join(",");
            write_atomically(&endpoints_path, &endpoints)?;
            print_usage(dir, &cluster_id, &endpoints, &cluster, layout, tls.as_ref());
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
                "{} exited on its own ({}); last lines of {}:",
                node.label(),
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

/// Every node of the playground shares this machine: each gets its share of the CPUs as async
/// worker threads, at least one. Threads beyond that only add wake-ups between them.
fn worker_threads_per_node(nodes: usize, cores: usize) -> usize {
    (cores / nodes.max(1)).max(1)
}

/// The playground's certificates (made once in DIR/tls) and DIR/tls.json naming the admin's, or
/// none with --insecure (and no tls.json, so clients of DIR/endpoints connect in plaintext).
fn playground_tls(dir: &Path, cluster_id: &str, insecure: bool) -> anyhow::Result<Option<Bundle>> {
    if insecure {
        remove_if_present(&dir.join(TLS_JSON))?;
        return Ok(None);
    }
    let tls_dir = dir.join("tls");
    let bundle = if tls_dir.join("ca.pem").exists() {
        Bundle::in_dir(&tls_dir)
    } else {
        certs::init(&tls_dir, cluster_id, &["localhost".to_string(), "127.0.0.1".to_string()], PLAYGROUND_CERT_DAYS)?
    };
    tls_files::write_beside(dir, &bundle.admin)?;
    Ok(Some(bundle))
}

fn spawn_node(
    binary: &Path,
    cluster_id: &str,
    spec: &NodeSpec,
    shards: u32,
    meta_endpoints: &[String],
    worker_threads: usize,
    tls: Option<&TlsFiles>,
) -> anyhow::Result<Child> {
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log_path)
        .with_context(|| format!("opening {}", spec.log_path.display()))?;
    // Logs are appended across runs; the marker shows where this run starts.
    writeln!(log, "--- shardkv playground: starting {} ---", spec.label())?;
    let mut command = Command::new(binary);
    command
        .arg("--cluster-id")
        .arg(cluster_id)
        .arg("--group-id")
        .arg(spec.group.to_string())
        .arg("--node-id")
        .arg(spec.id.to_string())
        .arg("--shards")
        .arg(shards.to_string())
        .arg("--data-dir")
        .arg(&spec.data_dir)
        .arg("--listen")
        .arg(&spec.client_addr)
        .arg("--admin-listen")
        .arg(&spec.admin_addr)
        .arg("--worker-threads")
        .arg(worker_threads.to_string());
    if spec.group == META {
        command.args(["--role", "meta"]);
    } else {
        command.args(["--role", "data", "--meta-endpoints"]).arg(meta_endpoints.join(","));
    }
    if let Some(tls) = tls {
        command.arg("--tls-ca").arg(&tls.ca).arg("--tls-cert").arg(&tls.cert).arg("--tls-key").arg(&tls.key);
    }
    let child = command
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Own process group: a terminal's Ctrl-C must reach only the playground, which then
        // stops the nodes in order (preStop first).
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {} for {}", binary.display(), spec.label()))?;
    eprintln!(
        "{}: pid {}, client {}, admin http://{}, log {}",
        spec.label(),
        child.id().unwrap_or_default(),
        spec.client_addr,
        spec.admin_addr,
        spec.log_path.display()
    );
    Ok(child)
}

/// Prints `message()` at most once a second.
struct Reporter {
    last: Instant,
}

impl Reporter {
    fn report(&mut self, message: impl FnOnce() -> String) {
        if self.last.elapsed() >= Duration::from_secs(1) {
            eprintln!("{}", message());
            self.last = Instant::now();
        }
    }
}

/// Brings the cluster up: every node answers; each group (meta first) is initialised unless
/// it already is, and has a leader; every data group missing from the shard map joins it, in
/// order; then every shard is served by its owner at the latest config. Returns that status.
async fn bring_up(
    nodes: &Client,
    meta: &Client,
    specs: &[NodeSpec],
    layout: Layout,
    timeout: Duration,
) -> anyhow::Result<ClusterStatus> {
    let deadline = Instant::now() + timeout;
    let mut ticker = tokio::time::interval(STATUS_POLL);
    let mut reporter = Reporter { last: Instant::now() };
    let all: Vec<String> = specs.iter().map(|s| s.client_addr.clone()).collect();

    let statuses = loop {
        ticker.tick().await;
        let statuses = nodes.status_of(&all).await;
        let answering = statuses.iter().filter(|(_, s)| s.is_ok()).count();
        if answering == specs.len() {
            break statuses;
        }
        if Instant::now() >= deadline {
            let (endpoint, error) = first_error(&statuses);
            bail!("only {answering}/{} nodes answered within {timeout:?} ({endpoint}: {error})", specs.len());
        }
        reporter.report(|| format!("waiting for nodes: {answering}/{} answering", specs.len()));
    };
    eprintln!("all {} nodes answer", specs.len());

    for group in 0..=u64::from(layout.groups) {
        let members = group_specs(specs, group);
        let name = if group == META { "the meta group".to_string() } else { format!("group {group}") };
        let initialized = statuses
            .iter()
            .filter(|(endpoint, _)| members.iter().any(|m| &m.client_addr == endpoint))
            .any(|(_, s)| s.as_ref().is_ok_and(|s| s.initialized));
        if initialized {
            eprintln!("{name} is already initialized, reusing its data");
            continue;
        }
        let voters = members.iter().map(|s| (s.id, s.client_addr.clone())).collect();
        eprintln!("initializing {name} on {} with {} voters", members[0].label(), members.len());
        match nodes.initialize(&members[0].client_addr, voters).await {
            // Initialised meanwhile (e.g. by an earlier, interrupted run): nothing to do.
            Ok(()) | Err(Error::FailedPrecondition(_)) => {}
            Err(error) => return Err(error).with_context(|| format!("initializing {name}")),
        }
    }

    loop {
        let statuses = nodes.status_of(&all).await;
        let leaderless: Vec<String> = (0..=u64::from(layout.groups))
            .filter(|&group| {
                !statuses.iter().any(|(endpoint, s)| {
                    group_specs(specs, group).iter().any(|m| &m.client_addr == endpoint)
                        && s.as_ref().is_ok_and(|s| s.leader_id.is_some())
                })
            })
            .map(|group| if group == META { "meta".to_string() } else { group.to_string() })
            .collect();
        if leaderless.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            bail!("no leader elected within {timeout:?} in groups {}", leaderless.join(", "));
        }
        reporter.report(|| format!("waiting for a leader in groups {}", leaderless.join(", ")));
        ticker.tick().await;
    }
    eprintln!("every group has a leader");

    let config = retry_until(deadline, || meta.query_config(0)).await.context("reading the shard map")?;
    for group in 1..=u64::from(layout.groups) {
        if config.groups.iter().any(|g| g.group_id == group) {
            continue;
        }
        let members: Vec<(u64, String)> =
            group_specs(specs, group).iter().map(|s| (s.id, s.client_addr.clone())).collect();
        let joined = retry_until(deadline, || meta.join(group, members.clone()))
            .await
            .with_context(|| format!("joining group {group}"))?;
        eprintln!("group {group} joined the shard map: config {}", joined.num);
    }

    loop {
        let outcome = meta.cluster_status().await;
        let reason = match &outcome {
            Ok(cluster) => match cluster.unsettled() {
                None => break outcome.map_err(anyhow::Error::from),
                Some(reason) => reason,
            },
            Err(error) => format!("cluster status: {error}"),
        };
        if Instant::now() >= deadline {
            bail!("the shards were not all served within {timeout:?}: {reason}");
        }
        reporter.report(|| format!("waiting for every shard to be served: {reason}"));
        ticker.tick().await;
    }
}

/// Calls `operation` until it succeeds or `deadline` passes (each call has its own request
/// deadline); returns the last error then.
async fn retry_until<T, F, Fut>(deadline: Instant, mut operation: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    loop {
        match operation().await {
            Ok(value) => return Ok(value),
            Err(error) if Instant::now() >= deadline => return Err(error),
            Err(Error::InvalidArgument(message)) => return Err(Error::InvalidArgument(message)),
            Err(_) => tokio::time::sleep(STATUS_POLL).await,
        }
    }
}

fn first_error(statuses: &[(String, Result<StatusResponse, Error>)]) -> (String, String) {
    statuses
        .iter()
        .find_map(|(endpoint, s)| s.as_ref().err().map(|e| (endpoint.clone(), e.to_string())))
        .unwrap_or_default()
}

fn print_usage(
    dir: &Path,
    cluster_id: &str,
    endpoints: &str,
    cluster: &ClusterStatus,
    layout: Layout,
    tls: Option<&Bundle>,
) {
    let file = dir.join("endpoints");
    let file = file.display();
    println!(
        "playground cluster {cluster_id} is up: a meta group and {} data groups of {} replicas, {} shards, config {}",
        layout.groups, layout.replicas, layout.shards, cluster.config.num
    );
    println!("  meta endpoints: {endpoints} (written to {file})");
    for group in &cluster.groups {
        let owned = cluster.config.shard_groups.iter().filter(|&&g| g == group.group_id).count();
        let leader = group.leader().map_or_else(|| "none".to_string(), |l| format!("node {}", l.node_id));
        let members: Vec<&str> = group.nodes.iter().map(|(endpoint, _)| endpoint.as_str()).collect();
        println!("  group {}: {} (leader {leader}), {owned} shards", group.group_id, members.join(","));
    }
    println!("  logs:           {}", dir.join("<meta|gG>-<i>.log").display());
    match tls {
        Some(tls) => {
            println!("  TLS:            on; CA {}, certificates in {}", tls.ca.display(), dir.join("tls").display());
            println!(
                "  --endpoints-file uses the admin certificate ({}); or set, for a data client:",
                dir.join(TLS_JSON).display()
            );
            certs::print_env("    ", &tls.client);
        }
        None => println!("  TLS:            off (--insecure)"),
    }
    println!("try:");
    println!("  shardkv --endpoints-file {file} put k v");
    println!("  shardkv --endpoints-file {file} get k");
    println!("  shardkv --endpoints-file {file} status");
    println!("  shardkv --endpoints-file {file} admin move --shard 0 --group {}", layout.groups);
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
            (spec.label(), outcome)
        }
    });
    for (label, outcome) in join_all(prestops).await {
        match outcome {
            Ok(response) => {
                eprintln!(
                    "{label} prestop: HTTP {} {}",
                    response.status,
                    crate::prestop::summarize_report(&response.body)
                )
            }
            Err(error) => eprintln!("{label} prestop failed: {error:#}"),
        }
    }

    for &i in &running {
        if let Some(pid) = nodes[i].child.id() {
            let pid = libc::pid_t::try_from(pid).expect("pids fit in pid_t");
            // SAFETY: kill(2) has no memory effects; `pid` is our own unreaped child, so the
            // id cannot have been reused by another process.
            if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
                eprintln!("{}: SIGTERM failed: {}", nodes[i].spec.label(), std::io::Error::last_os_error());
            }
        }
    }
    let exits = nodes.iter_mut().map(|node| async move {
        let label = node.spec.label();
        let status = match tokio::time::timeout(STOP_GRACE, node.child.wait()).await {
            Ok(status) => status,
            Err(_) => {
                eprintln!("{label} still running {STOP_GRACE:?} after SIGTERM, killing it");
                // start_kill sends SIGKILL; the node had its grace period.
                let _ = node.child.start_kill();
                node.child.wait().await
            }
        };
        (label, status)
    });
    for (label, status) in join_all(exits).await {
        eprintln!("{label} exited: {}", describe_exit(&status));
    }
}

fn describe_exit(status: &std::io::Result<ExitStatus>) -> String {
    match status {
        Ok(status) => status.to_string(),
        Err(error) => format!("status unknown: {error}"),
    }
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

    fn layout(groups: u16, replicas: u16, shards: u32) -> Layout {
        Layout { groups, replicas, shards }
    }

    #[test]
    fn nodes_share_the_cpus_and_each_gets_at_least_one_thread() {
        assert_eq!(worker_threads_per_node(6, 2), 1);
        assert_eq!(worker_threads_per_node(6, 32), 5);
        assert_eq!(worker_threads_per_node(3, 12), 4);
        assert_eq!(worker_threads_per_node(0, 4), 4);
    }

    #[test]
    fn node_specs_follow_the_port_layout() {
        let specs = node_specs(Path::new("/d"), layout(2, 3, 8), 7100).unwrap();
        assert_eq!(specs.len(), 9);
        assert_eq!((specs[2].group, specs[2].id), (0, 3));
        assert_eq!(specs[2].client_addr, "127.0.0.1:7102");
        assert_eq!(specs[2].admin_addr, "127.0.0.1:7202");
        assert_eq!(specs[2].data_dir, Path::new("/d/meta-3"));
        assert_eq!(specs[2].log_path, Path::new("/d/meta-3.log"));
        let last = &specs[8];
        assert_eq!((last.group, last.id), (2, 3));
        assert_eq!(last.client_addr, "127.0.0.1:7122");
        assert_eq!(last.admin_addr, "127.0.0.1:7222");
        assert_eq!(last.data_dir, Path::new("/d/g2-3"));
        assert_eq!(last.label(), "group 2 node 3");
        let mut ports: Vec<&str> = specs.iter().flat_map(|s| [s.client_addr.as_str(), s.admin_addr.as_str()]).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 18, "no two nodes share a port");
    }

    #[test]
    fn node_specs_reject_ports_past_the_range() {
        // Highest admin port: base + 100 + 10 * groups + replicas - 1.
        assert!(node_specs(Path::new("/d"), layout(2, 3, 8), 65_414).is_err());
        assert!(node_specs(Path::new("/d"), layout(2, 3, 8), 65_413).is_ok());
    }

    fn args(groups: Option<u16>, replicas: Option<u16>, shards: Option<u32>) -> PlaygroundArgs {
        PlaygroundArgs {
            groups,
            replicas,
            shards,
            data_dir: PathBuf::from("/d"),
            base_port: 7100,
            startup_timeout: 1,
            insecure: false,
        }
    }

    #[test]
    fn layout_comes_from_flags_then_the_saved_layout_then_defaults() {
        assert_eq!(resolve_layout(&args(None, None, None), None).unwrap(), DEFAULT_LAYOUT);
        assert_eq!(resolve_layout(&args(Some(1), Some(1), Some(8)), None).unwrap(), layout(1, 1, 8));
        let saved = Some(layout(2, 1, 8));
        assert_eq!(resolve_layout(&args(None, None, None), saved).unwrap(), layout(2, 1, 8));
        assert_eq!(resolve_layout(&args(Some(3), None, None), saved).unwrap(), layout(3, 1, 8), "groups can grow");
        let shrink = resolve_layout(&args(Some(1), None, None), saved).unwrap_err().to_string();
        assert!(shrink.contains("admin leave"), "{shrink}");
        assert!(resolve_layout(&args(None, Some(3), None), saved).is_err());
        assert!(resolve_layout(&args(None, None, Some(64)), saved).is_err());
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
    fn last_lines_keeps_the_end() {
        assert_eq!(last_lines("a\nb\nc\n", 2), ["b", "c"]);
        assert_eq!(last_lines("a", 5), ["a"]);
        assert!(last_lines("", 3).is_empty());
    }
}
