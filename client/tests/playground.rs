//! `shardkv playground` end to end: real node processes, a write through the CLI, a clean stop
//! (preStop on every node), and a restart on the same directory that still has the data.

use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Output;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

// Away from the default playground (7100) and bench/compare (7300) ports.
const BASE_PORT: &str = "7600";

fn shardkv() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shardkv"));
    // The node binary is built next to the CLI by `cargo test --workspace`.
    let node = PathBuf::from(env!("CARGO_BIN_EXE_shardkv")).with_file_name("shardkv-node");
    assert!(node.exists(), "{} is missing: run the tests with --workspace", node.display());
    cmd.env("SHARDKV_NODE_BIN", node);
    cmd
}

fn start_playground(dir: &std::path::Path) -> Child {
    shardkv()
        .args(["playground", "--replicas", "3", "--base-port", BASE_PORT, "--data-dir"])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the playground")
}

fn wait_for_endpoints(dir: &std::path::Path) -> String {
    let path = dir.join("endpoints");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(endpoints) = std::fs::read_to_string(&path) {
            return endpoints;
        }
        assert!(Instant::now() < deadline, "the playground wrote no {} within 60 s", path.display());
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn cli(dir: &std::path::Path, args: &[&str]) -> Output {
    shardkv().arg("--endpoints-file").arg(dir.join("endpoints")).args(args).output().expect("running shardkv")
}

/// SIGINT, as Ctrl-C would send; returns the playground's output once it has stopped.
fn stop(child: Child) -> (bool, String) {
    let sent = Command::new("kill").arg("-INT").arg(child.id().to_string()).status().unwrap();
    assert!(sent.success());
    let out = child.wait_with_output().expect("waiting for the playground");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn playground_serves_stops_cleanly_and_restarts_with_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let playground = start_playground(dir.path());
    let endpoints = wait_for_endpoints(dir.path());
    assert_eq!(endpoints.trim(), "127.0.0.1:7600,127.0.0.1:7601,127.0.0.1:7602");

    let put = cli(dir.path(), &["put", "greeting", "hello"]);
    assert!(put.status.success(), "{put:?}");
    let get = cli(dir.path(), &["get", "greeting"]);
    assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), "hello");
    let missing = cli(dir.path(), &["get", "nobody"]);
    assert_eq!(missing.status.code(), Some(1), "an absent key exits 1");

    let (ok, output) = stop(playground);
    assert!(ok, "playground exit:\n{output}");
    assert_eq!(output.matches("prestop: HTTP 200").count(), 3, "preStop ran on every node:\n{output}");
    assert!(output.contains("leadership moved to node"), "the leader handed over:\n{output}");
    assert!(!dir.path().join("endpoints").exists(), "a stopped cluster leaves no endpoints file");

    let playground = start_playground(dir.path());
    wait_for_endpoints(dir.path());
    let get = cli(dir.path(), &["get", "greeting"]);
    let (ok, output) = stop(playground);
    assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), "hello", "data survives a restart:\n{output}");
    assert!(ok, "{output}");
}
