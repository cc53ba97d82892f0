//! `Kv/Batch`: each item answered as its own call would be, and the client coalescing
//! concurrent requests into batches.

use std::sync::Arc;

use shardkv_proto::LEADER_ADDR_HEADER;
use shardkv_proto::MAX_BATCH_ITEMS;
use shardkv_proto::v1::BatchItem;
use shardkv_proto::v1::BatchRequest;
use shardkv_proto::v1::BatchResult;
use shardkv_proto::v1::CompareAndSwapRequest;
use shardkv_proto::v1::DeleteRequest;
use shardkv_proto::v1::GetRequest;
use shardkv_proto::v1::PutRequest;
use shardkv_proto::v1::ReadConsistency;
use shardkv_proto::v1::RequestHeader;
use shardkv_proto::v1::batch_item::Request;
use shardkv_proto::v1::batch_result::Response;

use crate::harness::Cluster;

fn session(seq: u64) -> Option<RequestHeader> {
    Some(RequestHeader { client_id: 41, seq, first_unacked_seq: 1, config_num: 0 })
}

fn get(key: &str) -> BatchItem {
    let consistency = ReadConsistency::Linearizable.into();
    BatchItem { request: Some(Request::Get(GetRequest { header: None, key: key.into(), consistency })) }
}

fn put(seq: u64, key: &str, value: &str) -> BatchItem {
    BatchItem { request: Some(Request::Put(PutRequest { header: session(seq), key: key.into(), value: value.into() })) }
}

fn error_of(result: &BatchResult) -> tonic::Status {
    match result.response.clone() {
        Some(Response::Error(error)) => error.into_status(),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_answers_each_item_as_its_own_call_would() {
    let cluster = Cluster::start(21, 3, &[]).await;
    let leader = cluster.leader().await;
    let mut kv = cluster.kv(leader).await;

    let first = BatchRequest {
        items: vec![
            put(1, "a", "1"),
            get(""),
            BatchItem { request: Some(Request::Put(PutRequest { header: None, key: "b".into(), value: "2".into() })) },
            BatchItem {
                request: Some(Request::CompareAndSwap(CompareAndSwapRequest {
                    header: session(2),
                    key: "c".into(),
                    expect_absent: true,
                    new_value: "3".into(),
                    ..Default::default()
                })),
            },
            BatchItem { request: Some(Request::Delete(DeleteRequest { header: session(3), key: "d".into() })) },
            BatchItem { request: None },
        ],
    };
    let results = kv.batch(first).await.unwrap().into_inner().results;
    assert_eq!(results.len(), 6, "one result per item: {results:?}");
    assert!(matches!(&results[0].response, Some(Response::Put(reply)) if reply.index > 0), "{:?}", results[0]);
    let empty_key = error_of(&results[1]);
    assert_eq!((empty_key.code(), empty_key.message()), (tonic::Code::InvalidArgument, "key must not be empty"));
    let no_session = error_of(&results[2]);
    assert_eq!(no_session.code(), tonic::Code::InvalidArgument);
    assert!(no_session.message().contains("writes need a session"), "{}", no_session.message());
    assert!(matches!(&results[3].response, Some(Response::CompareAndSwap(reply)) if reply.succeeded && !reply.found));
    assert!(matches!(&results[4].response, Some(Response::Delete(reply)) if !reply.existed));
    assert_eq!(error_of(&results[5]).code(), tonic::Code::InvalidArgument);

    // The writes above are read back; the refused one wrote nothing.
    let results =
        kv.batch(BatchRequest { items: vec![get("a"), get("b"), get("c")] }).await.unwrap().into_inner().results;
    let values: Vec<Option<Vec<u8>>> = results
        .iter()
        .map(|result| match &result.response {
            Some(Response::Get(reply)) => reply.found.then(|| reply.value.clone()),
            other => panic!("expected a get response, got {other:?}"),
        })
        .collect();
    assert_eq!(values, vec![Some(b"1".to_vec()), None, Some(b"3".to_vec())]);

    // A repeated (client, seq) applies once, as with unary puts: the session answers it.
    let repeat = kv.batch(BatchRequest { items: vec![put(1, "a", "other")] }).await.unwrap().into_inner().results;
    assert!(matches!(&repeat[0].response, Some(Response::Put(_))), "{repeat:?}");
    assert_eq!(cluster.client().get("a").await.unwrap().as_deref(), Some(&b"1"[..]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_follower_refuses_every_item_with_the_leader_hint() {
    let cluster = Cluster::start(22, 3, &[]).await;
    let leader = cluster.leader().await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let mut kv = cluster.kv(follower).await;
    let results =
        kv.batch(BatchRequest { items: vec![get("x"), put(1, "x", "1")] }).await.unwrap().into_inner().results;
    for result in &results {
        let status = error_of(result);
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert_eq!(status.metadata().get(LEADER_ADDR_HEADER).unwrap(), cluster.grpc_addr(leader).as_str());
    }
    let too_many = BatchRequest { items: vec![get("x"); MAX_BATCH_ITEMS + 1] };
    let refused = cluster.kv(leader).await.batch(too_many).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert_eq!(refused.message(), format!("a batch of {} items; the limit is {MAX_BATCH_ITEMS}", MAX_BATCH_ITEMS + 1));
}

/// The count of `Batch` calls the node at `id` answered and the items they carried, from its
/// metrics.
async fn batch_calls(cluster: &Cluster, id: u64) -> (u64, u64) {
    let (_, body) = cluster.http_get(id, "/metrics").await;
    let calls = body
        .lines()
        .filter(|line| line.starts_with("shardkv_grpc_requests_total{") && line.contains("method=\"Batch\""))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    let items = body
        .lines()
        .find_map(|line| line.strip_prefix("shardkv_kv_batch_items_sum ")?.parse::<f64>().ok())
        .unwrap_or(0.0);
    (calls, items as u64)
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_requests_of_one_client_share_batch_calls() {
    let cluster = Cluster::start(23, 3, &[]).await;
    let leader = cluster.leader().await;
    let client = cluster.client();
    client.put("warm", "up").await.unwrap();
    let (calls_before, items_before) = batch_calls(&cluster, leader).await;

    const TASKS: usize = 128;
    const ROUNDS: usize = 8;
    let client = Arc::new(client);
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..TASKS {
        let session = client.new_session();
        tasks.spawn(async move {
            for round in 0..ROUNDS {
                let key = format!("k{task}-{round}");
                session.put(key.clone(), format!("v{round}")).await.unwrap();
                assert_eq!(session.get(key).await.unwrap(), Some(format!("v{round}").into_bytes()));
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.unwrap();
    }

    let (calls_after, items_after) = batch_calls(&cluster, leader).await;
    let (calls, items) = (calls_after - calls_before, items_after - items_before);
    let requests = (TASKS * ROUNDS * 2) as u64;
    assert_eq!(items, requests, "every request went in a Batch call ({calls} calls)");
    assert!(calls * 4 <= requests, "{requests} requests from {TASKS} tasks went in {calls} Batch calls");
}
