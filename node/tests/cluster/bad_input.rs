//! Bad input is refused with a clear error and changes nothing.

use openraft::EntryPayload;
use openraft::raft::AppendEntriesRequest;
use openraft::vote::RaftLeaderId;
use rand::Rng;
use rand::SeedableRng;
use shardkv_node::state_machine::checkpoint;
use shardkv_node::state_machine::snapshot_archive;
use shardkv_node::types::Command;
use shardkv_node::types::Entry;
use shardkv_node::types::LogId;
use shardkv_node::types::Op;
use shardkv_node::types::SnapshotMeta;
use shardkv_node::types::TypeConfig;
use shardkv_node::types::Vote;
use shardkv_node::types::encode;
use shardkv_proto::v1::GetRequest;
use shardkv_proto::v1::PutRequest;
use shardkv_proto::v1::RaftRequest;
use shardkv_proto::v1::RequestHeader;
use shardkv_proto::v1::SnapshotChunk;
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
    let err = raft.vote(foreign.clone()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("wrong cluster"), "{}", err.message());
    // The same message on an append stream ends the stream with the refusal.
    let mut replies = raft.stream_append(futures::stream::iter([foreign])).await.unwrap().into_inner();
    let err = replies.message().await.unwrap_err();
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

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(openraft::impls::leader_id_adv::LeaderId::<u64, u64>::new(term, 1).to_committed(), index)
}

/// An AppendEntries whose one Put has a key length prefix of 2^45 (a 32 TiB allocation).
fn append_with_huge_key_length() -> Vec<u8> {
    let marker = b"MARKER-KEY";
    let cmd = Command { session: None, shard: 0, op: Op::Put { key: marker.to_vec(), value: b"v".to_vec() } };
    let append = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new(1, 1),
        prev_log_id: None,
        entries: vec![Entry { log_id: log_id(1, 1), payload: EntryPayload::Normal(cmd) }],
        leader_commit: None,
    };
    let mut bytes = encode(&append);
    let at = bytes.windows(marker.len()).position(|w| w == marker).unwrap();
    assert_eq!(bytes[at - 8..at], (marker.len() as u64).to_le_bytes());
    bytes[at - 8..at].copy_from_slice(&(1u64 << 45).to_le_bytes());
    bytes
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_raft_messages_are_refused_and_the_node_serves_on() {
    let mut cluster = Cluster::start(42, 3, &[]).await;
    let client = cluster.client();
    client.put("before", "1").await.unwrap();
    let leader = cluster.leader().await;
    let target = (1..=3).find(|id| *id != leader).unwrap();
    let before = cluster.status(target).await.unwrap();
    let mut raft = RaftClient::connect(format!("http://{}", cluster.grpc_addr(target))).await.unwrap();
    let request = |payload: Vec<u8>| RaftRequest { cluster_id: cluster.cluster_id.clone(), group_id: 0, payload };

    let huge = append_with_huge_key_length();
    let err = raft.append_entries(request(huge.clone())).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("malformed Raft message"), "{}", err.message());
    let err = raft.append_entries(request(huge[..huge.len() / 2].to_vec())).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "a truncated append: {err:?}");
    let mut replies = raft.stream_append(futures::stream::iter([request(huge.clone())])).await.unwrap().into_inner();
    let err = replies.message().await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "on an append stream: {err:?}");
    assert!(err.message().contains("malformed Raft message"), "{}", err.message());
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    for _ in 0..50 {
        let mut random = vec![0u8; rng.random_range(0..300)];
        rng.fill(&mut random[..]);
        let refusals = [
            raft.append_entries(request(random.clone())).await,
            raft.vote(request(random.clone())).await,
            raft.pre_vote(request(random.clone())).await,
            raft.transfer_leader(request(random.clone())).await,
        ];
        for refused in refusals {
            // Random bytes may happen to decode into a harmless message; what matters is that
            // the node answers and lives.
            if let Err(err) = refused {
                assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
            }
        }
    }

    // Snapshots: a header that does not decode, then a well-formed header (from a higher term,
    // so Raft would install it) with bytes that are not a snapshot, a snapshot of the record
    // format older nodes sent, a truncated one, and a whole checkpoint of an empty state, which
    // is not the state at index 1,000 its header claims.
    let chunk = |header: Vec<u8>, data: Vec<u8>| SnapshotChunk {
        cluster_id: cluster.cluster_id.clone(),
        group_id: 0,
        header,
        data,
    };
    let meta = SnapshotMeta { last_log_id: Some(log_id(99, 1_000)), last_membership: Default::default() };
    let header = encode(&(Vote::new(99, 1), meta.clone()));
    let snapshot = {
        let dir = tempfile::tempdir().unwrap();
        let db = shardkv_node::storage::open_db(&dir.path().join("db")).unwrap();
        checkpoint::create(&db, &dir.path().join("checkpoint")).unwrap();
        let mut packed = Vec::new();
        snapshot_archive::pack(&dir.path().join("checkpoint"), &mut packed).unwrap();
        packed
    };
    for (what, chunks) in [
        ("undecodable header", vec![chunk(huge.clone(), Vec::new())]),
        ("not a snapshot", vec![chunk(header.clone(), b"garbage".to_vec()), chunk(Vec::new(), vec![7; 4096])]),
        ("record format", vec![chunk(header.clone(), b"SKVSNAP1\0\0\0\0".to_vec())]),
        ("truncated", vec![chunk(header.clone(), snapshot[..snapshot.len() - 3].to_vec())]),
        ("another state than the header's", vec![chunk(header.clone(), snapshot.clone())]),
    ] {
        let err = raft.install_snapshot(futures::stream::iter(chunks)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{what}: {err:?}");
    }

    // The node lives, its Raft runs, its term is untouched, and it keeps replicating.
    assert!(cluster.is_running(target), "node {target} died:\n{}", cluster.log(target));
    assert_eq!(cluster.http_get(target, "/healthz").await.0, 200, "{}", cluster.log(target));
    let after = cluster.status(target).await.unwrap();
    assert_eq!(after.term, before.term, "a refused message changed the term");
    client.put("after", "2").await.unwrap();
    let replica = cluster.client_for([target]);
    wait_for("the follower to apply a write made after the hostile messages", WAIT, || async {
        (replica.get_serializable("after").await.ok()?.as_deref() == Some(&b"2"[..])).then_some(())
    })
    .await;
}
