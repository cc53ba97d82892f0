//! Test harness: real `shardkv-node` processes on their own loopback addresses.
//!
//! Every test gets a distinct 127.0.N.0/24 network so tests can run in parallel; node `i`
//! listens on 127.0.N.i. Waiting is always for a condition, with a deadline.

use std::collections::BTreeMap;
use std::future::Future;

use futures::FutureExt;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::ExitStatus;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use shardkv_proto::v1::InitializeRequest;
use shardkv_proto::v1::Member;
use shardkv_proto::v1::StatusRequest;
use shardkv_proto::v1::StatusResponse;
use shardkv_proto::v1::admin_client::AdminClient;
use shardkv_proto::v1::kv_client::KvClient;
use tonic::transport::Channel;

pub const GRPC_PORT: u16 = 7100;
pub const ADMIN_PORT: u16 = 7180;
pub const WAIT: Duration = Duration::from_secs(30);

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub cluster_id: String,
    net: u8,
    node_args: Vec<String>,
    children: BTreeMap<u64, Child>,
}

/// Writes keys `bulk-0` to `bulk-{keys - 1}`, each holding `value(i)`, from 32 concurrent
/// sessions.
pub async fn write_bulk(client: &shardkv_client::Client, keys: usize, value: fn(usize) -> Vec<u8>) {
    let tasks: Vec<_> = (0..32)
        .map(|t| {
            let client = client.new_session();
            tokio::spawn(async move {
                for i in (t..keys).step_by(32) {
                    client.put(format!("bulk-{i}"), value(i)).await.expect("bulk put");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("bulk writer");
    }
}

/// Polls `probe` until it yields a value; panics naming `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Cluster {
    /// A cluster of `n` nodes on 127.0.`net`.0/24, initialised, with a leader.
    pub async fn start(net: u8, n: u64, node_args: &[&str]) -> Self {
        let mut cluster = Self::new(net, node_args);
        for id in 1..=n {
            cluster.start_node(id);
        }
        cluster.initialize(1, 1..=n).await;
        cluster.leader().await;
        cluster
    }

    pub fn new(net: u8, node_args: &[&str]) -> Self {
        Self::in_cluster(net, &format!("test-{net}"), node_args)
    }

    /// A group of cluster `cluster_id` (a sharded cluster has several groups, each on its own
    /// network).
    pub fn in_cluster(net: u8, cluster_id: &str, node_args: &[&str]) -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
            cluster_id: cluster_id.to_string(),
            net,
            node_args: node_args.iter().map(|s| s.to_string()).collect(),
            children: BTreeMap::new(),
        }
    }

    pub fn grpc_addr(&self, id: u64) -> String {
        format!("127.0.{}.{id}:{GRPC_PORT}", self.net)
    }

    pub fn admin_addr(&self, id: u64) -> String {
        format!("127.0.{}.{id}:{ADMIN_PORT}", self.net)
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node-{id}"))
    }

    pub fn log_path(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node-{id}.log"))
    }

    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.log_path(id)).unwrap_or_default()
    }

    /// The node command line, for starting it directly with other flags.
    pub fn node_command(&self, id: u64, cluster_id: &str) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_shardkv-node"));
        cmd.arg("--cluster-id")
            .arg(cluster_id)
            .arg("--node-id")
            .arg(id.to_string())
            .arg("--data-dir")
            .arg(self.data_dir(id))
            .arg("--listen")
            .arg(self.grpc_addr(id))
            .arg("--admin-listen")
            .arg(self.admin_addr(id))
            .args(&self.node_args);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path(id)).expect("node log");
        cmd.stdout(Stdio::from(log.try_clone().unwrap())).stderr(Stdio::from(log));
        cmd
    }

    pub fn start_node(&mut self, id: u64) {
        let command = self.node_command(id, &self.cluster_id.clone());
        self.start_command(id, command);
    }

    /// Starts node `id` from a [`Self::node_command`] given other flags or variables.
    pub fn start_command(&mut self, id: u64, mut command: Command) {
        assert!(!self.children.contains_key(&id), "node {id} is already running");
        let child = command.spawn().expect("spawning shardkv-node");
        self.children.insert(id, child);
    }

    pub async fn initialize(&self, on: u64, members: impl IntoIterator<Item = u64>) {
        let members: Vec<Member> =
            members.into_iter().map(|id| Member { node_id: id, addr: self.grpc_addr(id) }).collect();
        let addr = self.grpc_addr(on);
        wait_for(&format!("node {on} to accept Initialize"), WAIT, || {
            let (addr, members) = (addr.clone(), members.clone());
            async move {
                let mut admin = AdminClient::connect(format!("http://{addr}")).await.ok()?;
                admin.initialize(InitializeRequest { members }).await.ok()
            }
        })
        .await;
    }

    /// An admin client, once the node accepts connections.
    pub async fn admin(&self, id: u64) -> AdminClient<Channel> {
        let url = format!("http://{}", self.grpc_addr(id));
        wait_for(&format!("node {id} to accept connections"), WAIT, || {
            AdminClient::connect(url.clone()).map(Result::ok)
        })
        .await
    }

    /// A KV client, once the node accepts connections.
    pub async fn kv(&self, id: u64) -> KvClient<Channel> {
        let url = format!("http://{}", self.grpc_addr(id));
        wait_for(&format!("node {id} to accept connections"), WAIT, || KvClient::connect(url.clone()).map(Result::ok))
            .await
    }

    pub async fn status(&self, id: u64) -> Option<StatusResponse> {
        let mut admin = AdminClient::connect(format!("http://{}", self.grpc_addr(id))).await.ok()?;
        admin.status(StatusRequest {}).await.ok().map(|r| r.into_inner())
    }

    /// Waits until a running node reports a leader that is itself running and agrees.
    pub async fn leader(&self) -> u64 {
        let running: Vec<u64> = self.children.keys().copied().collect();
        wait_for("a leader", WAIT, || {
            let running = running.clone();
            async move {
                for id in &running {
                    let status = self.status(*id).await?;
                    if status.state == "Leader" && status.leader_id == Some(*id) {
                        return Some(*id);
                    }
                }
                None
            }
        })
        .await
    }

    /// Waits until node `id` has applied everything the leader had applied when this was called.
    pub async fn wait_applied_as_leader(&self, id: u64) {
        let leader = self.leader().await;
        let applied = self.status(leader).await.expect("the leader's status").applied_index;
        wait_for(&format!("node {id} to apply what its leader has"), WAIT, || async {
            (self.status(id).await?.applied_index >= applied).then_some(())
        })
        .await;
    }

    /// Ids of the nodes currently running.
    pub fn running(&self) -> Vec<u64> {
        self.children.keys().copied().collect()
    }

    pub fn client(&self) -> shardkv_client::Client {
        let endpoints = self.children.keys().map(|id| self.grpc_addr(*id)).collect();
        shardkv_client::Client::connect(endpoints).expect("client")
    }

    /// A client for every node of the cluster, running or not.
    pub fn client_for(&self, ids: impl IntoIterator<Item = u64>) -> shardkv_client::Client {
        shardkv_client::Client::connect(ids.into_iter().map(|id| self.grpc_addr(id)).collect()).expect("client")
    }

    /// True while node `id`'s process has not exited.
    pub fn is_running(&mut self, id: u64) -> bool {
        self.children.get_mut(&id).is_some_and(|child| child.try_wait().expect("waiting for node").is_none())
    }

    pub fn kill9(&mut self, id: u64) {
        let mut child = self.children.remove(&id).expect("node is running");
        child.kill().expect("SIGKILL");
        child.wait().expect("reaping killed node");
    }

    /// SIGSTOP (`pause`) / SIGCONT (`resume`): the node keeps its sockets but answers nothing.
    pub fn pause(&self, id: u64) {
        self.signal(id, "-STOP");
    }

    pub fn resume(&self, id: u64) {
        self.signal(id, "-CONT");
    }

    fn signal(&self, id: u64, signal: &str) {
        let pid = self.children.get(&id).expect("node is running").id();
        let sent = Command::new("kill").arg(signal).arg(pid.to_string()).status().expect("kill");
        assert!(sent.success(), "kill {signal} {pid}");
    }

    /// SIGTERM, then waits for the process to exit on its own.
    pub fn terminate(&mut self, id: u64) -> ExitStatus {
        self.send_term(id);
        self.wait_exit(id)
    }

    /// Sends SIGTERM to node `id` without waiting for it to exit.
    pub fn send_term(&self, id: u64) {
        let child = self.children.get(&id).expect("node is running");
        let sent = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().expect("kill -TERM");
        assert!(sent.success());
    }

    /// Waits (up to `WAIT`) for node `id` to exit on its own.
    pub fn wait_exit(&mut self, id: u64) -> ExitStatus {
        let mut child = self.children.remove(&id).expect("node is running");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = child.try_wait().expect("waiting for node") {
                return status;
            }
            if Instant::now() > deadline {
                child.kill().ok();
                panic!("node {id} did not exit within {WAIT:?} of SIGTERM:\n{}", self.log(id));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// GET on a node's admin HTTP port; returns (status code, body).
    pub async fn http_get(&self, id: u64, path: &str) -> (u16, String) {
        let response = shardkv_client::admin_http::get(&self.admin_addr(id), path, WAIT).await.expect("admin HTTP GET");
        (response.status, String::from_utf8(response.body).expect("UTF-8 body"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, mut child) in std::mem::take(&mut self.children) {
            child.kill().ok();
            child.wait().ok();
        }
        if std::thread::panicking() {
            for entry in std::fs::read_dir(self.dir.path()).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "log") {
                    let log = std::fs::read_to_string(&path).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(40).collect();
                    eprintln!("---- {} (last 40 lines)", path.display());
                    tail.iter().rev().for_each(|l| eprintln!("{l}"));
                }
            }
        }
    }
}
