//! Bad input is refused with a clear error and changes nothing.

use shardkv_proto::v1::GetRequest;
use shardkv_proto::v1::PutRequest;
use shardkv_proto::v1::RaftRequest;
use shardkv_proto::v1::RequestHeader;
use shardkv_proto::v1::raft_client::RaftClient;

use crate::harness::Cluster;
use crate::harness::WAIT;
use crate::harness::wait_for;

fn put(key: Vec<u8>, value: Vec<u8>) -> PutRequest {
    PutRequest { header: Some(RequestHeader { client_id: 7, seq: 1, first_unacked_seq: 1, config_num: 0 }), key, value }
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_and_empty_keys_and_values_are_invalid_arguments() {
    let cluster = Cluster::start(17, 1, &["--max-key-bytes", "4096", "--max-value-bytes", "1048576"]).await;
    let mut kv = cluster.kv(1).await;

    let err = kv.put(put(vec![b'k'; 4097], b"v".to_vec())).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(err.message(), "key is 4097 bytes; the limit is 4096 bytes");

    let err = kv.put(put(b"k".to_vec(), vec![0; (1 << 20) + 1])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(err.message(), "value is 1048577 bytes; the limit is 1048576 bytes");

    let err = kv.put(put(vec![], b"v".to_vec())).await.unwrap_err();
    assert_eq!((err.code(), err.message()), (tonic::Code::InvalidArgument, "key must not be empty"));

    let err = kv.get(GetRequest { header: None, key: vec![], consistency: 0 }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    let no_session = PutRequest { header: None, key: b"k".to_vec(), value: b"v".to_vec() };
    let err = kv.put(no_session).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("writes need a session"), "{}", err.message());

    // Nothing refused above was stored; a value exactly at the limit is accepted.
    let client = cluster.client();
    assert_eq!(client.get("k").await.unwrap(), None);
    kv.put(put(b"k".to_vec(), vec![1; 1 << 20])).await.unwrap();
    assert_eq!(client.get("k").await.unwrap().map(|v| v.len()), Some(1 << 20));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_data_dir_of_another_cluster_is_refused_at_start() {
    let mut cluster = Cluster::start(18, 1, &[]).await;
    let exit = cluster.terminate(1);
    assert!(exit.success());

    let mut other = cluster.node_command(1, "some-other-cluster").spawn().unwrap();
    let exit = wait_for("the node to refuse the data dir", WAIT, || {
        let status = other.try_wait().unwrap();
        async move { status }
    })
    .await;
    assert_eq!(exit.code(), Some(2), "exits with the configuration-error code");
    let log = cluster.log(1);
    assert!(
        log.contains("belongs to cluster \"test-18\"") && log.contains("started as cluster \"some-other-cluster\""),
        "the error names both clusters:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn raft_traffic_from_another_cluster_is_refused() {
    let cluster = Cluster::start(19, 1, &[]).await;
    let before = cluster.status(1).await.unwrap();

    // A direct Raft RPC naming another cluster.
    let mut raft = RaftClient::connect(format!("http://{}", cluster.grpc_addr(1))).await.unwrap();
    let foreign = RaftRequest { cluster_id: "intruder".into(), group_id: 0, payload: vec![1, 2, 3] };
    let err = raft.vote(foreign).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("wrong cluster"), "{}", err.message());

    // A real node of another cluster that believes our node is its peer: it campaigns and is
    // refused, and our node's term and leadership are untouched.
    let mut intruders = Cluster::new(19, &[]);
    intruders.cluster_id = "intruders".into();
    intruders.start_node(11);
    let mut admin = intruders.admin(11).await;
    let members = vec![
        shardkv_proto::v1::Member { node_id: 11, addr: intruders.grpc_addr(11) },
        shardkv_proto::v1::Member { node_id: 1, addr: cluster.grpc_addr(1) },
    ];
    admin.initialize(shardkv_proto::v1::InitializeRequest { members }).await.unwrap();
    wait_for("our node to log the refusal", WAIT, || async {
        cluster.log(1).contains("refused Raft RPC from another cluster").then_some(())
    })
    .await;
    let after = cluster.status(1).await.unwrap();
    assert_eq!(after.term, before.term, "a foreign vote request changed our term");
    assert_eq!(after.leader_id, Some(1));
    let intruder = intruders.status(11).await.unwrap();
    assert_ne!(intruder.state, "Leader", "the intruder cannot win a vote from our node");
}
