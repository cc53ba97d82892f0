//! preStop: readiness off, leadership moved, snapshot taken and log purged, clean exit on
//! SIGTERM, and a restart that replays only a short log suffix.

use std::time::Duration;
use std::time::Instant;

use shardkv_client::Client;
use shardkv_client::ClientOptions;
use shardkv_proto::v1::RemoveLearnersRequest;
use shardkv_proto::v1::RemovedRequest;

use crate::harness::Cluster;
use crate::harness::WAIT;
use crate::harness::wait_for;

#[tokio::test(flavor = "multi_thread")]
async fn prestop_hands_over_and_the_restart_replays_a_short_suffix() {
    let mut cluster = Cluster::start(16, 3, &[]).await;
    let client = cluster.client();
    write_in_parallel(&client).await;
    let leader = cluster.leader().await;
    let before = cluster.status(leader).await.unwrap();
    let entries_before = before.last_log_index - before.purged_index;
    assert!(entries_before >= 1200, "the log holds the writes before preStop: {before:?}");
    assert_eq!(cluster.http_get(leader, "/readyz").await.0, 200);

    let (code, body) = cluster.http_get(leader, "/lifecycle/prestop").await;
    assert_eq!(code, 200, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    let group = &report["groups"][0];
    assert_eq!(report["clean"], true, "{report}");
    assert_eq!(group["was_leader"], true, "{report}");
    let new_leader = group["new_leader"].as_u64().expect("new leader reported");
    assert_ne!(new_leader, leader);
    assert!(group["snapshot_index"].as_u64().unwrap() >= before.applied_index, "{report}");
    assert_eq!(group["purged_index"], group["snapshot_index"], "{report}");
    assert_eq!(cluster.http_get(leader, "/readyz").await.0, 503, "not ready after preStop");
    let metrics = cluster.http_get(leader, "/metrics").await.1;
    assert!(metrics.contains("shardkv_prestop_step_seconds"), "preStop steps are exported");

    // A second call (a retried hook) gets the same report instead of running again.
    assert_eq!(cluster.http_get(leader, "/lifecycle/prestop").await.1, body);

    let exit = cluster.terminate(leader);
    assert!(exit.success(), "clean exit after SIGTERM: {exit:?}\n{}", cluster.log(leader));
    assert!(cluster.log(leader).contains("stopped cleanly"));

    client.put("after", "restart").await.unwrap();
    cluster.start_node(leader);
    let status = wait_for("the restarted node to rejoin", WAIT, || async {
        let s = cluster.status(leader).await?;
        (s.leader_id.is_some() && s.applied_index > before.applied_index).then_some(s)
    })
    .await;
    assert!(
        status.startup_log_entries <= 10,
        "restart replayed {} entries; {entries_before} were on disk before preStop",
        status.startup_log_entries
    );
    assert_eq!(cluster.client_for([leader]).get_serializable("w7-149").await.unwrap().as_deref(), Some(&b"v"[..]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_removed_node_records_that_it_left_and_rejoins_only_as_a_new_member_with_rejoin_after_removal() {
    let mut cluster = Cluster::start(40, 3, &[]).await;
    let client = cluster.client();
    client.put("before", "removal").await.unwrap();
    client.change_membership(vec![1, 2], false).await.unwrap();

    wait_for("node 3 to stop reporting ready", WAIT, || async {
        (cluster.http_get(3, "/readyz").await.0 == 503).then_some(())
    })
    .await;
    assert!(cluster.data_dir(3).join("left.json").exists(), "the removal is recorded on disk");
    assert!(cluster.terminate(3).success());

    let mut restarted = cluster.node_command(3, &cluster.cluster_id.clone()).spawn().unwrap();
    let exit = wait_for("the removed node to refuse to start", WAIT, || {
        let status = restarted.try_wait().unwrap();
        async move { status }
    })
    .await;
    assert_eq!(exit.code(), Some(2), "exits with the configuration-error code");
    let log = cluster.log(3);
    assert!(log.contains("node 3 was removed from group 0"), "the refusal explains itself:\n{log}");
    assert!(log.contains("--rejoin-after-removal"), "the refusal names the flag:\n{log}");
    assert_eq!(client.get("before").await.unwrap().as_deref(), Some(&b"removal"[..]), "the group serves on");

    // What the operator's pods do (a scale 3 -> 2 -> 3 that kept the volume): the same data dir
    // with the flag, set through its variable as in the pod template.
    let left: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cluster.data_dir(3).join("left.json")).unwrap()).unwrap();
    let aside = cluster.data_dir(3).join(format!("removed-{}", left["membership_index"].as_u64().unwrap()));
    let mut command = cluster.node_command(3, &cluster.cluster_id.clone());
    command.env("SHARDKV_REJOIN_AFTER_REMOVAL", "true");
    cluster.start_command(3, command);
    let status = wait_for("the node to start again", WAIT, || cluster.status(3)).await;
    assert!(!status.initialized, "it starts as a new, uninitialised member: {status:?}");
    assert!(status.members.is_empty() && status.last_log_index == 0, "with no old log: {status:?}");
    assert!(aside.join("db").is_dir() && aside.join("left.json").exists(), "the old state is aside");
    assert!(!cluster.data_dir(3).join("left.json").exists());
    assert!(cluster.log(3).contains("moved its old state aside"), "{}", cluster.log(3));

    // Added again like any new pod: a learner first, then a voter.
    client.put("between", "removal and rejoin").await.unwrap();
    client.add_learner(3, cluster.grpc_addr(3), true).await.unwrap();
    client.change_membership(vec![1, 2, 3], false).await.unwrap();
    client.put("after", "rejoin").await.unwrap();
    let replica = cluster.client_for([3]);
    wait_for("the rejoined node to apply the write after its return", WAIT, || async {
        (replica.get_serializable("after").await.ok()?.as_deref() == Some(&b"rejoin"[..])).then_some(())
    })
    .await;
    assert_eq!(replica.get_serializable("before").await.unwrap().as_deref(), Some(&b"removal"[..]));
    assert_eq!(replica.get_serializable("between").await.unwrap().as_deref(), Some(&b"removal and rejoin"[..]));
    let status = cluster.status(3).await.unwrap();
    assert!(status.initialized, "{status:?}");
    assert!(status.members.iter().any(|m| m.node_id == 3 && m.role == "voter"), "a voter again: {status:?}");
    assert!(cluster.is_running(3));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_learner_can_be_removed_and_is_told_it_left() {
    let mut cluster = Cluster::start(41, 1, &[]).await;
    cluster.start_node(2);
    let client = cluster.client();
    client.add_learner(2, cluster.grpc_addr(2), true).await.unwrap();
    // Until the membership entry listing it has reached it, a fresh node is a learner that
    // knows no group (and could not confirm a removal with it).
    wait_for("node 2 to replicate as a learner", WAIT, || async {
        let status = cluster.status(2).await?;
        (status.state == "Learner" && status.members.iter().any(|m| m.node_id == 2)).then_some(())
    })
    .await;
    let mut admin = cluster.admin(1).await;

    let refused = admin.remove_learners(RemoveLearnersRequest { node_ids: vec![1] }).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("node 1 is a voter"), "{}", refused.message());

    admin.remove_learners(RemoveLearnersRequest { node_ids: vec![2] }).await.unwrap();
    let status = cluster.status(1).await.unwrap();
    assert_eq!(status.members.iter().map(|m| m.node_id).collect::<Vec<_>>(), [1], "only the voter is left");
    assert!(cluster.data_dir(2).join("left.json").exists(), "the removed learner recorded that it left");
    assert_eq!(cluster.http_get(2, "/readyz").await.0, 503);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forged_removed_notice_to_a_live_voter_is_refused() {
    let mut cluster = Cluster::start(43, 3, &[]).await;
    let client = cluster.client();
    client.put("k", "v").await.unwrap();
    let leader = cluster.leader().await;
    let voter = (1..=3).find(|id| *id != leader).unwrap();

    // Whoever knows the cluster and group id can send the notice.
    let notice = RemovedRequest { cluster_id: cluster.cluster_id.clone(), group_id: 0, membership_index: 1 };
    let refused = cluster.admin(voter).await.removed(notice).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("not removed"), "{}", refused.message());
    assert!(!cluster.data_dir(voter).join("left.json").exists(), "a false notice was recorded");
    assert_eq!(cluster.http_get(voter, "/readyz").await.0, 200, "the voter still reports ready");

    // It restarts as a member and serves.
    assert!(cluster.terminate(voter).success());
    cluster.start_node(voter);
    client.put("after", "restart").await.unwrap();
    let replica = cluster.client_for([voter]);
    wait_for("the restarted voter to apply a new write", WAIT, || async {
        (replica.get_serializable("after").await.ok()?.as_deref() == Some(&b"restart"[..])).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_without_prestop_hands_over_snapshots_and_the_restart_replays_a_short_suffix() {
    let mut cluster = Cluster::start(45, 3, &[]).await;
    let client = cluster.client();
    write_in_parallel(&client).await;
    let leader = cluster.leader().await;
    let before = cluster.status(leader).await.unwrap();
    assert!(before.last_log_index - before.purged_index >= 1200, "the log holds the writes: {before:?}");

    // No preStop call: only the signal. A client of the other members gets a write through
    // within a second.
    let others: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let options = ClientOptions { request_timeout: Duration::from_secs(1), ..ClientOptions::default() };
    let survivors = Client::with_options(others.iter().map(|id| cluster.grpc_addr(*id)).collect(), options).unwrap();
    cluster.send_term(leader);
    let started = Instant::now();
    survivors.put("during", "stop").await.expect("a write through another member within 1 s of SIGTERM");
    let took = started.elapsed();
    eprintln!("a write through another member {took:?} after SIGTERM");
    assert!(took < Duration::from_secs(1), "the write took {took:?}");

    let exit = tokio::task::block_in_place(|| cluster.wait_exit(leader));
    assert!(exit.success(), "clean exit after SIGTERM: {exit:?}\n{}", cluster.log(leader));
    let log = cluster.log(leader);
    assert!(log.contains("preStop finished") && log.contains("stopped cleanly"), "{log}");
    // The new leader's append stream to this node ended with the stop instead of holding the
    // drain open (and the log growing) until its timeout.
    assert!(!log.contains("gRPC calls still running"), "{log}");

    cluster.start_node(leader);
    let status = wait_for("the restarted node to rejoin", WAIT, || async {
        let s = cluster.status(leader).await?;
        (s.leader_id.is_some() && s.applied_index > before.applied_index).then_some(s)
    })
    .await;
    eprintln!("the restart replayed {} log entries", status.startup_log_entries);
    assert!(
        status.startup_log_entries <= 10,
        "restart replayed {} entries; {} were on disk before SIGTERM",
        status.startup_log_entries,
        before.last_log_index - before.purged_index
    );
    let restarted = cluster.client_for([leader]);
    assert_eq!(restarted.get_serializable("during").await.unwrap().as_deref(), Some(&b"stop"[..]));
}

/// 8 sessions writing 150 keys each (`w{session}-{i}` = "v"), so the log holds 1200 entries.
async fn write_in_parallel(client: &Client) {
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let c = client.new_session();
            tokio::spawn(async move {
                for i in 0..150 {
                    c.put(format!("w{w}-{i}"), "v").await.unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
}

/// Two network namespaces joined by a veth pair (10.233.0.1 in `node`, 10.233.0.2 in `peer`),
/// deleted on drop: a peer that is not on the node's loopback, without touching the host's
/// network.
struct NetnsPair {
    node: String,
    peer: String,
}

impl NetnsPair {
    const NODE_IP: &str = "10.233.0.1";

    /// None when this process may not create network namespaces (not root); under CI=true
    /// that is a failure, not a skip.
    fn create() -> Option<NetnsPair> {
        let tag = std::process::id();
        let pair = NetnsPair { node: format!("skv-node-{tag}"), peer: format!("skv-peer-{tag}") };
        if !ip(&["netns", "add", &pair.node]) {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "cannot create a network namespace (needs root)");
            eprintln!("skipped: cannot create a network namespace (needs root)");
            return None;
        }
        for step in [
            vec!["netns", "add", &pair.peer],
            vec![
                "link", "add", "skv-n", "netns", &pair.node, "type", "veth", "peer", "name", "skv-p", "netns",
                &pair.peer,
            ],
            vec!["-n", &pair.node, "addr", "add", "10.233.0.1/30", "dev", "skv-n"],
            vec!["-n", &pair.peer, "addr", "add", "10.233.0.2/30", "dev", "skv-p"],
            vec!["-n", &pair.node, "link", "set", "skv-n", "up"],
            vec!["-n", &pair.peer, "link", "set", "skv-p", "up"],
            vec!["-n", &pair.node, "link", "set", "lo", "up"],
            vec!["-n", &pair.peer, "link", "set", "lo", "up"],
        ] {
            assert!(ip(&step), "ip {}", step.join(" "));
        }
        Some(pair)
    }

    /// An HTTP GET from inside namespace `ns` (bash's /dev/tcp): (status code, body).
    fn http_get(ns: &str, host: &str, path: &str) -> Option<(u16, String)> {
        let script = format!(
            "exec 3<>/dev/tcp/{host}/{port} && printf 'GET {path} HTTP/1.1\\r\\nHost: {host}\\r\\nConnection: \
             close\\r\\n\\r\\n' >&3 && cat <&3",
            port = crate::harness::ADMIN_PORT
        );
        let out = std::process::Command::new("timeout")
            .args(["30", "ip", "netns", "exec", ns, "bash", "-c", &script])
            .output()
            .expect("running ip netns exec");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        Some((status, body))
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        ip(&["netns", "del", &self.node]);
        ip(&["netns", "del", &self.peer]);
    }
}

fn ip(args: &[&str]) -> bool {
    std::process::Command::new("ip").args(args).status().is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread")]
async fn prestop_answers_only_loopback_peers_while_probes_and_metrics_answer_anyone() {
    let Some(netns) = NetnsPair::create() else { return };
    let mut cluster = Cluster::new(233, &[]);
    // The node in its own namespace, with the admin port on every address (as in a pod).
    let inner = cluster.node_command(1, &cluster.cluster_id.clone());
    let mut args: Vec<std::ffi::OsString> = inner.get_args().map(|a| a.to_os_string()).collect();
    let at = args.iter().position(|a| a == "--admin-listen").expect("node_command sets --admin-listen");
    args[at + 1] = format!("0.0.0.0:{}", crate::harness::ADMIN_PORT).into();
    let log = std::fs::OpenOptions::new().create(true).append(true).open(cluster.log_path(1)).unwrap();
    let mut command = std::process::Command::new("ip");
    command
        .args(["netns", "exec", &netns.node])
        .arg(inner.get_program())
        .args(args)
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    cluster.start_command(1, command);

    let remote = |path: &'static str| {
        let peer = netns.peer.clone();
        async move {
            tokio::task::spawn_blocking(move || NetnsPair::http_get(&peer, NetnsPair::NODE_IP, path)).await.unwrap()
        }
    };
    let (code, body) = wait_for("the node's /healthz from the other namespace", WAIT, || remote("/healthz")).await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = remote("/metrics").await.expect("/metrics answers a remote peer");
    assert_eq!(code, 200);
    assert!(body.contains("shardkv_"), "{body}");

    let (code, body) = remote("/lifecycle/prestop").await.expect("an answer");
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("answers only 127.0.0.1 and ::1, not 10.233.0.2"), "{body}");
    let (_, ready) = remote("/readyz").await.expect("/readyz answers a remote peer");
    assert!(!ready.contains("stopping"), "a refused preStop changed nothing: {ready}");
    assert!(cluster.log(1).contains("refused /lifecycle/prestop from a non-loopback peer"));

    let node_ns = netns.node.clone();
    let (code, body) =
        tokio::task::spawn_blocking(move || NetnsPair::http_get(&node_ns, "127.0.0.1", "/lifecycle/prestop"))
            .await
            .unwrap()
            .expect("an answer on loopback");
    assert_eq!(code, 200, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(report["node_id"] == 1, "{report}");
    let (_, ready) = remote("/readyz").await.expect("/readyz answers");
    assert!(ready.contains("stopping"), "the loopback preStop ran: {ready}");
}
