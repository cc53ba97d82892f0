//! `shardkv playground` end to end: a meta group and two data groups of real node processes
//! started through the CLI, writes and reads routed by shard, a shard moved with `shardkv
//! admin move` while its data stays readable, a clean stop (preStop on every node, leaders
//! hand over), and a restart on the same directory that still has the data and the map.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use shardkv_proto::shard_for_key;

// Away from the default playground (7100) and bench/compare (7300) ports. Meta nodes listen
// on 7600-7602, group 1 on 7610-7612, group 2 on 7620-7622 (admin HTTP 100 above).
const BASE_PORT: &str = "7600";
const SHARDS: u32 = 8;
const KEYS: usize = 16;
const WAIT: Duration = Duration::from_secs(90);

/// The node binary: $SHARDKV_NODE_BIN, else the one `cargo test --workspace` builds next to
/// the CLI.
fn node_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("SHARDKV_NODE_BIN") {
        return PathBuf::from(path);
    }
    let node = PathBuf::from(env!("CARGO_BIN_EXE_shardkv")).with_file_name("shardkv-node");
    assert!(node.exists(), "{} is missing: run the tests with --workspace or set SHARDKV_NODE_BIN", node.display());
    node
}

fn shardkv() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shardkv"));
    cmd.env("SHARDKV_NODE_BIN", node_binary());
    cmd
}

/// A running `shardkv playground`; stopped with SIGINT (so its nodes stop too) when dropped,
/// also when an assertion fails.
struct Playground {
    child: Option<Child>,
}

impl Playground {
    fn start(dir: &Path, layout: &[&str]) -> Playground {
        let child = shardkv()
            .arg("playground")
            .args(layout)
            .args(["--base-port", BASE_PORT, "--data-dir"])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the playground");
        Playground { child: Some(child) }
    }

    /// Polls for DIR/endpoints, which the playground writes once every shard is served.
    fn wait_for_endpoints(&mut self, dir: &Path) -> String {
        let path = dir.join("endpoints");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(endpoints) = std::fs::read_to_string(&path) {
                return endpoints;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                let (_, output) = self.stop();
                panic!("the playground exited ({status}) before writing {}:\n{output}", path.display());
            }
            assert!(Instant::now() < deadline, "the playground wrote no {} within {WAIT:?}", path.display());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGINT, as Ctrl-C would send; returns whether it exited 0 and its output.
    fn stop(&mut self) -> (bool, String) {
        let child = self.child.take().expect("the playground runs");
        // Only our own child, which has not been reaped yet, so its pid is still its own.
        let sent = Command::new("kill").arg("-INT").arg(child.id().to_string()).status().unwrap();
        assert!(sent.success());
        let out = child.wait_with_output().expect("waiting for the playground");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }
}

impl Drop for Playground {
    fn drop(&mut self) {
        if self.child.is_some() {
            let (_, output) = self.stop();
            eprintln!("playground output:\n{output}");
        }
    }
}

fn cli(dir: &Path, args: &[&str]) -> Output {
    shardkv().arg("--endpoints-file").arg(dir.join("endpoints")).args(args).output().expect("running shardkv")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

fn status_json(dir: &Path) -> Value {
    let output = cli(dir, &["status", "--json"]);
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).expect("status --json prints JSON")
}

/// Polls `status --json` until `done` holds for it.
fn wait_for_status(dir: &Path, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let status = status_json(dir);
        if done(&status) {
            return status;
        }
        assert!(Instant::now() < deadline, "no {what} within {WAIT:?}; last status: {status:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn key(i: usize) -> String {
    format!("key-{i:02}")
}

fn assert_every_key_readable(dir: &Path, context: &str) {
    for i in 0..KEYS {
        let get = cli(dir, &["get", &key(i)]);
        assert_eq!(stdout(&get), format!("value-{i}"), "{} {context}: {get:?}", key(i));
    }
}

#[test]
fn sharded_playground_serves_moves_a_shard_stops_cleanly_and_restarts_with_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let layout = ["--groups", "2", "--replicas", "3", "--shards", "8"];
    let mut playground = Playground::start(dir, &layout);
    let endpoints = playground.wait_for_endpoints(dir);
    assert_eq!(endpoints.trim(), "127.0.0.1:7600,127.0.0.1:7601,127.0.0.1:7602", "the meta group's endpoints");

    let status = status_json(dir);
    assert_eq!(status["settled"], true, "{status:#}");
    let owners: Vec<u64> =
        status["config"]["shard_groups"].as_array().unwrap().iter().map(|g| g.as_u64().unwrap()).collect();
    assert_eq!(owners.len(), SHARDS as usize);
    assert!(owners.contains(&1) && owners.contains(&2), "both groups own shards: {owners:?}");
    assert_eq!(status["groups"].as_array().unwrap().len(), 2);
    assert!(status["shards"].as_array().unwrap().iter().all(|s| s["state"] == "serving"), "{status:#}");

    for i in 0..KEYS {
        let put = cli(dir, &["put", &key(i), &format!("value-{i}")]);
        assert!(put.status.success(), "{put:?}");
    }
    assert_every_key_readable(dir, "after the writes");
    let scan = cli(dir, &["scan", "--prefix", "key-"]);
    let scanned: Vec<String> = stdout(&scan).lines().map(|line| line.split('\t').next().unwrap().to_string()).collect();
    assert_eq!(scanned, (0..KEYS).map(key).collect::<Vec<_>>(), "a cross-group scan in key order");
    let missing = cli(dir, &["get", "nobody"]);
    assert_eq!(missing.status.code(), Some(1), "an absent key exits 1");

    // Move a shard that holds data to the other group.
    let shard = shard_for_key(key(0).as_bytes(), SHARDS);
    let from = owners[shard as usize];
    let to = 3 - from;
    let moved = cli(dir, &["admin", "move", "--shard", &shard.to_string(), "--group", &to.to_string()]);
    assert!(moved.status.success(), "{moved:?}");
    let before = status["config"]["num"].as_u64().unwrap();
    let config_num: u64 = stdout(&moved).strip_prefix("config ").and_then(|n| n.parse().ok()).expect("config N");
    assert!(config_num > before, "the move made a new config ({before} -> {config_num})");
    let settled = wait_for_status(dir, "settled move", |s| {
        s["settled"] == true && s["config"]["num"] == config_num && s["config"]["shard_groups"][shard as usize] == to
    });
    assert_eq!(settled["config"]["pinned"][0], shard, "{settled:#}");
    assert_every_key_readable(dir, "after the move");

    let (ok, output) = playground.stop();
    assert!(ok, "playground exit:\n{output}");
    assert_eq!(output.matches("prestop: HTTP 200").count(), 9, "preStop ran on every node:\n{output}");
    assert_eq!(output.matches("leadership moved to node").count(), 3, "each group's leader handed over:\n{output}");
    assert!(!dir.join("endpoints").exists(), "a stopped cluster leaves no endpoints file");

    // A re-run without layout flags restarts the same cluster.
    let mut playground = Playground::start(dir, &[]);
    playground.wait_for_endpoints(dir);
    let status = status_json(dir);
    assert_eq!(status["config"]["num"], config_num, "the shard map survives a restart");
    assert_every_key_readable(dir, "after the restart");
    let (ok, output) = playground.stop();
    assert!(ok, "{output}");
}
