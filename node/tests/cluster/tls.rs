//! Mutual TLS and authorization with real nodes: a TLS group serves a TLS client; a client
//! certificate of another CA, an expired one, one of another cluster and a plaintext client are
//! refused, each with an error that says which; a data client may not reconfigure; a node of
//! another cluster (its own CA) can neither join nor campaign.

use std::path::Path;
use std::time::{Duration, SystemTime};

use shardkv_client::{Client, ClientOptions, ClientTls, Error, TlsFiles};
use shardkv_proto::v1::admin_client::AdminClient;
use shardkv_proto::v1::meta_client::MetaClient;
use shardkv_proto::v1::raft_client::RaftClient;
use shardkv_proto::v1::{
    AddLearnerRequest, InitializeRequest, Member, MoveRequest, RaftRequest, StatusRequest, StatusResponse,
    TransferLeaderRequest,
};
use shardkv_tls::certs::{Ca, Validity};
use shardkv_tls::{PeerIdentity, Role};
use tonic::transport::{Channel, Endpoint};

use crate::harness::{Cluster, WAIT, wait_for};

/// A CA and the certificates it issued, in a directory.
struct Pki {
    dir: tempfile::TempDir,
    ca: Ca,
}

impl Pki {
    fn new(cluster: &str) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::generate(cluster, Validity::days_from_now(1)).unwrap();
        ca.pem().write(dir.path(), "ca").unwrap();
        Pki { dir, ca }
    }

    fn issue(&self, cluster: &str, role: Role, name: &str, hosts: &[String], validity: Validity) -> TlsFiles {
        let identity = PeerIdentity::new(cluster, role, name).unwrap();
        let (cert, key) = self.ca.issue(&identity, hosts, validity).unwrap().write(self.dir.path(), name).unwrap();
        TlsFiles { ca: self.dir.path().join("ca.pem"), cert, key }
    }

    fn valid(&self, cluster: &str, role: Role, name: &str) -> TlsFiles {
        self.issue(cluster, role, name, &[], Validity::days_from_now(1))
    }
}

fn tls_args(files: &TlsFiles) -> Vec<String> {
    let path = |p: &Path| p.display().to_string();
    vec![
        "--tls-ca".into(),
        path(&files.ca),
        "--tls-cert".into(),
        path(&files.cert),
        "--tls-key".into(),
        path(&files.key),
    ]
}

fn channel(addr: &str, files: &TlsFiles) -> Channel {
    let endpoint = Endpoint::from_shared(format!("http://{addr}")).unwrap().connect_timeout(Duration::from_secs(2));
    shardkv_tls::lazy_channel(endpoint, Some(&ClientTls::new(files.clone()).unwrap()))
}

fn client(endpoints: Vec<String>, tls: Option<&TlsFiles>) -> Client {
    let tls = tls.map(|files| ClientTls::new(files.clone()).unwrap());
    Client::with_options(endpoints, ClientOptions { tls, ..ClientOptions::default() }).unwrap()
}

async fn status(addr: &str, files: &TlsFiles) -> Option<StatusResponse> {
    let mut admin = AdminClient::new(channel(addr, files));
    admin.status(StatusRequest {}).await.ok().map(|r| r.into_inner())
}

/// A TLS group of nodes 1..=n on 127.0.`net`.x, initialised by an admin, with a leader.
struct TlsGroup {
    cluster: Cluster,
    pki: Pki,
    admin: TlsFiles,
}

impl TlsGroup {
    async fn start(net: u8, n: u64) -> TlsGroup {
        let mut cluster = Cluster::new(net, &[]);
        let id = cluster.cluster_id.clone();
        let pki = Pki::new(&id);
        let hosts: Vec<String> = (1..=n + 1).map(|i| format!("127.0.{net}.{i}")).collect();
        let node = pki.issue(&id, Role::Node, "node", &hosts, Validity::days_from_now(1));
        for i in 1..=n {
            let mut command = cluster.node_command(i, &id);
            command.args(tls_args(&node));
            cluster.start_command(i, command);
        }
        let admin = pki.valid(&id, Role::Admin, "admin");
        let members: Vec<Member> = (1..=n).map(|i| Member { node_id: i, addr: cluster.grpc_addr(i) }).collect();
        let first = cluster.grpc_addr(1);
        wait_for("node 1 to accept Initialize over TLS", WAIT, || {
            let (members, admin, first) = (members.clone(), admin.clone(), first.clone());
            async move { AdminClient::new(channel(&first, &admin)).initialize(InitializeRequest { members }).await.ok() }
        })
        .await;
        let group = TlsGroup { cluster, pki, admin };
        group.leader(n).await;
        group
    }

    async fn leader(&self, n: u64) -> StatusResponse {
        wait_for("a leader over TLS", WAIT, || async move {
            for i in 1..=n {
                let s = status(&self.cluster.grpc_addr(i), &self.admin).await?;
                if s.state == "Leader" && s.leader_id == Some(i) {
                    return Some(s);
                }
            }
            None
        })
        .await
    }

    fn endpoints(&self, n: u64) -> Vec<String> {
        (1..=n).map(|i| self.cluster.grpc_addr(i)).collect()
    }

    /// `shardkv_tls_connections_refused` of node `id` for `reason`, from its metrics.
    async fn refused(&self, id: u64, reason: &str) -> u64 {
        let addr = self.cluster.admin_addr(id);
        let body = match shardkv_client::admin_http::get(&addr, "/metrics", Duration::from_secs(2)).await {
            Ok(response) => response.body,
            Err(_) => return 0,
        };
        let line = format!("shardkv_tls_connections_refused_total{{reason=\"{reason}\"}} ");
        String::from_utf8_lossy(&body)
            .lines()
            .find_map(|l| l.strip_prefix(line.as_str()).and_then(|v| v.parse().ok()))
            .unwrap_or(0)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_group_serves_its_clients_and_says_why_it_refuses_others() {
    let group = TlsGroup::start(230, 3).await;
    let id = group.cluster.cluster_id.clone();
    let data = group.pki.valid(&id, Role::Client, "app");

    let good = client(group.endpoints(3), Some(&data));
    good.put(b"k", b"v").await.expect("a put over TLS");
    assert_eq!(good.get(b"k").await.expect("a get over TLS").as_deref(), Some(&b"v"[..]));

    // A client certificate of another CA (the client trusts the cluster's CA): the node refuses it.
    let stranger = Pki::new(&id);
    let foreign = stranger.valid(&id, Role::Client, "stranger");
    let foreign_cert = TlsFiles { ca: data.ca.clone(), ..foreign.clone() };
    let err = client(group.endpoints(3), Some(&foreign_cert)).get(b"k").await.unwrap_err();
    assert!(matches!(err, Error::Tls(_)), "{err}");
    assert!(
        err.to_string().contains("the server refused our certificate: certificate not signed by this cluster's CA"),
        "{err}"
    );
    // A client given another CA: it refuses the node's certificate itself.
    let err = client(group.endpoints(3), Some(&foreign)).get(b"k").await.unwrap_err();
    assert!(err.to_string().contains("the peer's certificate is not signed by this cluster's CA"), "{err}");

    let now = SystemTime::now();
    let old = Validity { not_before: now - Duration::from_secs(7200), not_after: now - Duration::from_secs(3600) };
    let expired = client(group.endpoints(3), Some(&group.pki.issue(&id, Role::Client, "old", &[], old)));
    let err = expired.put(b"k", b"w").await.unwrap_err();
    assert!(err.to_string().contains("certificate expired"), "{err}");
    assert!(!err.outcome_unknown(), "a refused handshake sent nothing: {err}");

    let plaintext = client(group.endpoints(3), None);
    let err = plaintext.get(b"k").await.unwrap_err();
    assert!(err.to_string().contains("server requires TLS"), "{err}");

    let other_cluster = client(group.endpoints(3), Some(&group.pki.valid("elsewhere", Role::Client, "app")));
    let err = other_cluster.get(b"k").await.unwrap_err();
    assert!(matches!(err, Error::PermissionDenied(_)), "{err}");
    assert!(err.to_string().contains(&format!("certificate belongs to cluster elsewhere, not {id}")), "{err}");

    // The node logs each refusal with its reason, and counts it.
    let logs = &group.cluster;
    wait_for("the refusals in node 1's log", WAIT, || async move {
        let log = logs.log(1);
        (log.contains("the peer's certificate is not signed by this cluster's CA")
            && log.contains("the peer's certificate expired")
            && log.contains("a plaintext client: this node requires TLS"))
        .then_some(())
    })
    .await;
    assert!(group.refused(1, "unknown_ca").await >= 1);
    assert!(group.refused(1, "plaintext").await >= 1);
    assert_eq!(good.get(b"k").await.unwrap().as_deref(), Some(&b"v"[..]), "refusals did not disturb the group");
}

#[tokio::test(flavor = "multi_thread")]
async fn data_clients_cannot_reconfigure_and_only_nodes_speak_raft() {
    let group = TlsGroup::start(231, 3).await;
    let id = group.cluster.cluster_id.clone();
    let data = group.pki.valid(&id, Role::Client, "app");
    let addr = group.cluster.grpc_addr(1);
    let denied = |status: tonic::Status, rpc: &str| {
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{rpc}: {status:?}");
        assert!(status.message().contains(&format!("spiffe://shardkv/{id}/client/app")), "{}", status.message());
        assert!(status.message().contains(rpc), "{}", status.message());
    };

    let mut admin = AdminClient::new(channel(&addr, &data));
    assert!(admin.status(StatusRequest {}).await.is_ok(), "clients may read status");
    let err = admin.transfer_leader(TransferLeaderRequest { to: 2 }).await.unwrap_err();
    denied(err, "/shardkv.v1.Admin/TransferLeader");
    let learner = Member { node_id: 9, addr: "127.0.231.9:7100".into() };
    let err = admin.add_learner(AddLearnerRequest { member: Some(learner), blocking: false }).await.unwrap_err();
    denied(err, "/shardkv.v1.Admin/AddLearner");
    let err = MetaClient::new(channel(&addr, &data)).r#move(MoveRequest { shard: 0, group_id: 1 }).await.unwrap_err();
    denied(err, "/shardkv.v1.Meta/Move");
    let err = RaftClient::new(channel(&addr, &data)).vote(RaftRequest::default()).await.unwrap_err();
    denied(err, "/shardkv.v1.Raft/Vote");

    // An admin may: the same TransferLeader call goes through the policy (the group answers it).
    let leader = group.leader(3).await;
    let to = if leader.node_id == 1 { 2 } else { 1 };
    let mut as_admin = AdminClient::new(channel(&group.cluster.grpc_addr(leader.node_id), &group.admin));
    as_admin.transfer_leader(TransferLeaderRequest { to }).await.expect("an admin may transfer leadership");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_of_another_cluster_can_neither_join_nor_campaign() {
    let mut group = TlsGroup::start(232, 3).await;
    let id = group.cluster.cluster_id.clone();
    let before = group.leader(3).await;

    // Node 4 claims the same cluster id (it is no secret) but holds its own CA's certificates.
    let intruder_pki = Pki::new(&id);
    let intruder = intruder_pki.issue(&id, Role::Node, "intruder", &["127.0.232.4".into()], Validity::days_from_now(1));
    let mut command = group.cluster.node_command(4, &id);
    command.args(tls_args(&intruder));
    group.cluster.start_command(4, command);
    let intruder_admin = intruder_pki.valid(&id, Role::Admin, "admin");
    let intruder_addr = group.cluster.grpc_addr(4);
    wait_for("the intruder to answer", WAIT, || status(&intruder_addr, &intruder_admin)).await;

    // Joining: the group's leader cannot replicate to it; the intruder refuses its certificate.
    let mut admin = AdminClient::new(channel(&group.cluster.grpc_addr(before.node_id), &group.admin));
    let learner = Member { node_id: 4, addr: intruder_addr.clone() };
    admin.add_learner(AddLearnerRequest { member: Some(learner), blocking: false }).await.expect("add learner");
    let g = &group;
    wait_for("the intruder to refuse the leader", WAIT, || async move {
        (g.refused(4, "ours_refused").await + g.refused(4, "unknown_ca").await > 0).then_some(())
    })
    .await;
    let intruder_status = status(&intruder_addr, &intruder_admin).await.expect("intruder status");
    assert!(intruder_status.members.is_empty(), "nothing was replicated to it: {intruder_status:?}");

    // Campaigning: initialised as if it were a voter of the group, its votes never arrive.
    let members: Vec<Member> = (1..=4).map(|i| Member { node_id: i, addr: group.cluster.grpc_addr(i) }).collect();
    AdminClient::new(channel(&intruder_addr, &intruder_admin))
        .initialize(InitializeRequest { members })
        .await
        .expect("the intruder initialises itself");
    wait_for("the group's nodes to refuse the intruder's vote requests", WAIT, || async move {
        let mut refused = 0;
        for i in 1..=3 {
            refused += g.refused(i, "ours_refused").await + g.refused(i, "unknown_ca").await;
        }
        (refused >= 3).then_some(())
    })
    .await;
    let after = group.leader(3).await;
    assert_eq!((after.node_id, after.term), (before.node_id, before.term), "the group's leader and term held");
    let voters: Vec<u64> = after.members.iter().filter(|m| m.role == "voter").map(|m| m.node_id).collect();
    assert_eq!(voters, [1, 2, 3], "the intruder never became a voter");
}
