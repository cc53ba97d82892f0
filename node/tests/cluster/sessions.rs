//! Session expiry: a client that writes and never comes back leaves no session behind on any
//! replica, an idle group stops adding clock entries, and the client is served again with a new
//! session when it does come back.

use std::time::Duration;
use std::time::Instant;

use crate::harness::Cluster;
use crate::harness::WAIT;
use crate::harness::wait_for;

const EXPIRY: Duration = Duration::from_secs(2);

async fn sessions_on(cluster: &Cluster, id: u64) -> Option<u64> {
    cluster.status(id).await.map(|s| s.sessions)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_never_returns_leaves_no_session_after_the_expiry() {
    let cluster = Cluster::start(200, 3, &["--session-expiry-secs", &EXPIRY.as_secs().to_string()]).await;
    let client = cluster.client();
    for i in 0..8 {
        client.put(format!("key-{i}"), "value").await.unwrap();
    }
    let last_write = Instant::now();
    for id in 1..=3 {
        let held = wait_for("every replica to hold the sessions", WAIT, || async {
            sessions_on(&cluster, id).await.filter(|n| *n > 0)
        })
        .await;
        assert!(held <= 8, "node {id} holds {held} sessions for one client writing 8 keys");
    }

    // The client goes away. Every replica deletes its sessions, at the same log entry.
    for id in 1..=3 {
        wait_for("the sessions to expire", EXPIRY * 8, || async {
            sessions_on(&cluster, id).await.filter(|n| *n == 0)
        })
        .await;
    }
    assert!(last_write.elapsed() >= EXPIRY, "expired {:?} after the last write", last_write.elapsed());
    assert_eq!(client.get("key-0").await.unwrap().as_deref(), Some(&b"value"[..]), "only sessions expire");

    // Without sessions the leader proposes no clock entries (ticks are every 100 ms here).
    let leader = cluster.leader().await;
    let before = cluster.status(leader).await.unwrap().last_log_index;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(cluster.status(leader).await.unwrap().last_log_index, before, "an idle group's log grew");

    // The same client comes back: its next write starts a new session and succeeds.
    client.put("key-0", "again").await.expect("a write after the expiry starts a new session");
    assert_eq!(client.get("key-0").await.unwrap().as_deref(), Some(&b"again"[..]));
    assert_eq!(sessions_on(&cluster, leader).await, Some(1));
}
