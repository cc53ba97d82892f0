//! Scans merge every shard in key order and page with continuation tokens.

use shardkv_client::ScanOptions;
use shardkv_proto::shard_for_key;
use shardkv_proto::v1::ScanRequest;

use crate::harness::Cluster;

#[tokio::test(flavor = "multi_thread")]
async fn a_prefix_scan_returns_every_key_in_order_across_shards_and_pages() {
    let cluster = Cluster::start(20, 1, &[]).await;
    let client = cluster.client();
    let keys: Vec<String> = (0..60).map(|i| format!("user/{i:03}")).collect();
    for key in &keys {
        client.put(key.clone(), format!("v-{key}")).await.unwrap();
    }
    for other in ["aaa", "user0", "usez", "zzz"] {
        client.put(other, "x").await.unwrap();
    }
    let shards: std::collections::BTreeSet<u32> = keys.iter().map(|k| shard_for_key(k.as_bytes(), 64)).collect();
    assert!(shards.len() > 20, "the keys spread over many shards: {}", shards.len());

    // Page by page through the raw API: 7 items per page, continuation until done.
    let mut kv = cluster.kv(1).await;
    let (mut seen, mut continuation, mut pages) = (Vec::new(), Vec::new(), 0);
    loop {
        let page = kv
            .scan(ScanRequest { prefix: b"user/".to_vec(), limit: 7, continuation, ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(page.items.len() <= 7);
        seen.extend(page.items.into_iter().map(|kv| (String::from_utf8(kv.key).unwrap(), kv.value)));
        if page.continuation.is_empty() {
            break;
        }
        continuation = page.continuation;
    }
    assert_eq!(pages, 9, "60 keys in pages of 7");
    let seen_keys: Vec<&String> = seen.iter().map(|(k, _)| k).collect();
    assert_eq!(seen_keys, keys.iter().collect::<Vec<_>>(), "every key once, in order, nothing outside the prefix");
    assert!(seen.iter().all(|(k, v)| *v == format!("v-{k}").into_bytes()));

    // Range bounds and the client's own paging agree.
    let range = ScanOptions { start: b"user/010".to_vec(), end: b"user/020".to_vec(), ..Default::default() };
    let items = client.scan(range).await.unwrap();
    let got: Vec<String> = items.into_iter().map(|(k, _)| String::from_utf8(k).unwrap()).collect();
    assert_eq!(got, keys[10..20]);
    let limited = client.scan(ScanOptions { limit: Some(3), ..Default::default() }).await.unwrap();
    let got: Vec<String> = limited.into_iter().map(|(k, _)| String::from_utf8(k).unwrap()).collect();
    assert_eq!(got, ["aaa", "user/000", "user/001"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scan_of_large_values_pages_by_bytes_and_completes() {
    let cluster = Cluster::start(44, 1, &[]).await;
    let client = cluster.client();
    let value = vec![b'v'; 8 << 10];
    let writers: Vec<_> = (0..16)
        .map(|w| {
            let (client, value) = (client.new_session(), value.clone());
            tokio::spawn(async move {
                for i in (w..1000).step_by(16) {
                    client.put(format!("big/{i:04}"), value.clone()).await.unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }

    // 1,000 x 8 KiB is twice what a gRPC client accepts in one message.
    let items = client.scan(ScanOptions { prefix: b"big/".to_vec(), ..Default::default() }).await.unwrap();
    assert_eq!(items.len(), 1000);
    assert!(items.iter().enumerate().all(|(i, (k, v))| *k == format!("big/{i:04}").into_bytes() && *v == value));

    // Each page stays near the server's byte bound.
    let mut kv = cluster.kv(1).await;
    let page = kv.scan(ScanRequest { prefix: b"big/".to_vec(), ..Default::default() }).await.unwrap().into_inner();
    let bytes: usize = page.items.iter().map(|kv| kv.key.len() + kv.value.len()).sum();
    assert!(
        !page.continuation.is_empty() && bytes <= (1 << 20) + (9 << 10),
        "{} items, {bytes} bytes",
        page.items.len()
    );
}
