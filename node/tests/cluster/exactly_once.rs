//! A retried write (same client id and sequence number) is applied once, also across a leader
//! change and a snapshot, because the session table is replicated state.

use shardkv_proto::v1::CompareAndSwapRequest;
use shardkv_proto::v1::DeleteRequest;
use shardkv_proto::v1::PutRequest;
use shardkv_proto::v1::RequestHeader;
use shardkv_proto::v1::TriggerSnapshotRequest;

use crate::harness::Cluster;

fn header(seq: u64, first_unacked: u64) -> Option<RequestHeader> {
    Some(RequestHeader { client_id: 4242, seq, first_unacked_seq: first_unacked, config_num: 0 })
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_of_one_sequence_number_apply_once() {
    let mut cluster = Cluster::start(14, 3, &[]).await;
    let leader = cluster.leader().await;
    let mut kv = cluster.kv(leader).await;

    let cas = CompareAndSwapRequest {
        header: header(1, 1),
        key: b"counter".to_vec(),
        expect_absent: true,
        expected: vec![],
        new_value: b"1".to_vec(),
    };
    let first = kv.compare_and_swap(cas.clone()).await.unwrap().into_inner();
    assert!(first.succeeded);
    // Applied again, the swap would fail: the key exists now. The retry gets the first answer.
    let retry = kv.compare_and_swap(cas).await.unwrap().into_inner();
    assert!(retry.succeeded, "retry re-executed instead of answering from the session table");

    let delete = DeleteRequest { header: header(2, 1), key: b"counter".to_vec() };
    assert!(kv.delete(delete.clone()).await.unwrap().into_inner().existed);
    assert!(kv.delete(delete.clone()).await.unwrap().into_inner().existed, "second delete of seq 2 re-executed");

    // The session table survives a snapshot and a leader crash.
    cluster.admin(leader).await.trigger_snapshot(TriggerSnapshotRequest {}).await.unwrap();
    cluster.kill9(leader);
    let new_leader = cluster.leader().await;
    let mut kv = cluster.kv(new_leader).await;
    let again = kv.delete(delete).await.unwrap().into_inner();
    assert!(again.existed, "the new leader forgot that seq 2 was applied");
    assert!(cluster.client().get("counter").await.unwrap().is_none());

    // Once the client acknowledged everything below 3, a stale retry of 1 is refused. (The
    // watermark travels with writes, per shard: the session moves with its shard.)
    let put = PutRequest { header: header(3, 3), key: b"counter".to_vec(), value: b"3".to_vec() };
    kv.put(put).await.unwrap();
    let stale = CompareAndSwapRequest {
        header: header(1, 1),
        key: b"counter".to_vec(),
        expect_absent: true,
        expected: vec![],
        new_value: b"1".to_vec(),
    };
    let err = kv.compare_and_swap(stale).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("session expired"), "{}", err.message());
    assert_eq!(cluster.client().get("counter").await.unwrap().as_deref(), Some(&b"3"[..]), "stale retry applied");
}
