//! The routing client against an in-process fake sharded cluster: a fake meta group serving
//! shard maps and fake data groups that refuse shards they do not own (WrongGroup).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shardkv_client::{Client, ClientOptions, Error, ScanOptions, Topology};
use shardkv_proto::v1::kv_server::{Kv, KvServer};
use shardkv_proto::v1::meta_server::{Meta, MetaServer};
use shardkv_proto::v1::{BatchRequest, BatchResponse};
use shardkv_proto::v1::{
    CompareAndSwapRequest, CompareAndSwapResponse, ConfigResponse, DeleteRequest, DeleteResponse, GetRequest,
    GetResponse, GroupMembers, JoinRequest, KeyValue, LeaveRequest, Member, MoveRequest, PutRequest, PutResponse,
    QueryRequest, RequestHeader, ScanRequest, ScanResponse, ShardConfig,
};
use shardkv_proto::{CONFIG_NUM_HEADER, shard_for_key};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

mod common;

const SHARDS: u32 = 4;

/// A meta group whose answer is whatever config the test installed last.
#[derive(Clone, Default)]
struct FakeMeta {
    current: Arc<Mutex<ShardConfig>>,
    queries: Arc<AtomicUsize>,
    joins: Arc<Mutex<Vec<GroupMembers>>>,
}

impl FakeMeta {
    fn set(&self, config: ShardConfig) {
        *self.current.lock().unwrap() = config;
    }

    fn answer(&self) -> Result<Response<ConfigResponse>, Status> {
        Ok(Response::new(ConfigResponse { config: Some(self.current.lock().unwrap().clone()) }))
    }
}

#[tonic::async_trait]
impl Meta for FakeMeta {
    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<ConfigResponse>, Status> {
        let group = request.into_inner().group.unwrap();
        self.joins.lock().unwrap().push(group.clone());
        let mut config = self.current.lock().unwrap();
        config.num += 1;
        config.shard_groups = vec![group.group_id; SHARDS as usize];
        config.groups.push(group);
        drop(config);
        self.answer()
    }

    async fn leave(&self, _: Request<LeaveRequest>) -> Result<Response<ConfigResponse>, Status> {
        Err(Status::invalid_argument("unknown group"))
    }

    async fn r#move(&self, _: Request<MoveRequest>) -> Result<Response<ConfigResponse>, Status> {
        Err(Status::unimplemented("move"))
    }

    async fn query(&self, _: Request<QueryRequest>) -> Result<Response<ConfigResponse>, Status> {
        self.queries.fetch_add(1, Ordering::SeqCst);
        self.answer()
    }
}

/// A request's header and the shards it named.
type Seen = (RequestHeader, Vec<u32>);

/// A data group's leader: serves the shards in `owned`, refuses the others with WrongGroup at
/// `config_num`, and answers "moving in" for the first `moving_in` requests.
#[derive(Clone, Default)]
struct FakeGroup {
    owned: Arc<Mutex<BTreeSet<u32>>>,
    config_num: Arc<AtomicU64>,
    moving_in: Arc<AtomicUsize>,
    data: Arc<Mutex<BTreeMap<Vec<u8>, Vec<u8>>>>,
    /// Every request's header, refused or not, with the shard list of scans.
    seen: Arc<Mutex<Vec<Seen>>>,
    attempts: Arc<AtomicUsize>,
}

impl FakeGroup {
    fn owning(shards: &[u32], config_num: u64) -> Self {
        let group = FakeGroup::default();
        group.reassign(shards, config_num);
        group
    }

    fn reassign(&self, shards: &[u32], config_num: u64) {
        *self.owned.lock().unwrap() = shards.iter().copied().collect();
        self.config_num.store(config_num, Ordering::SeqCst);
    }

    fn admit(&self, header: Option<RequestHeader>, shards: &[u32]) -> Result<(), Status> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        self.seen.lock().unwrap().push((header.unwrap_or_default(), shards.to_vec()));
        if self.moving_in.load(Ordering::SeqCst) > 0 {
            self.moving_in.fetch_sub(1, Ordering::SeqCst);
            return Err(Status::unavailable("shard is moving into this group; retry shortly"));
        }
        let owned = self.owned.lock().unwrap();
        if let Some(shard) = shards.iter().find(|s| !owned.contains(s)) {
            let num = self.config_num.load(Ordering::SeqCst);
            let mut status = Status::failed_precondition(format!("wrong group: shard {shard} in config {num}"));
            status.metadata_mut().insert(CONFIG_NUM_HEADER, num.into());
            return Err(status);
        }
        Ok(())
    }

    fn admit_key(&self, header: Option<RequestHeader>, key: &[u8]) -> Result<(), Status> {
        self.admit(header, &[shard_for_key(key, SHARDS)])
    }

    fn writes(&self) -> Vec<RequestHeader> {
        self.seen.lock().unwrap().iter().map(|(h, _)| *h).filter(|h| h.client_id != 0).collect()
    }
}

#[tonic::async_trait]
impl Kv for FakeGroup {
    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let request = request.into_inner();
        self.admit_key(request.header, &request.key)?;
        let value = self.data.lock().unwrap().get(&request.key).cloned();
        Ok(Response::new(GetResponse { found: value.is_some(), value: value.unwrap_or_default(), applied_index: 1 }))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let request = request.into_inner();
        self.admit_key(request.header, &request.key)?;
        self.data.lock().unwrap().insert(request.key, request.value);
        Ok(Response::new(PutResponse { index: 7 }))
    }

    async fn delete(&self, request: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
        let request = request.into_inner();
        self.admit_key(request.header, &request.key)?;
        let existed = self.data.lock().unwrap().remove(&request.key).is_some();
        Ok(Response::new(DeleteResponse { existed, index: 8 }))
    }

    async fn compare_and_swap(
        &self,
        request: Request<CompareAndSwapRequest>,
    ) -> Result<Response<CompareAndSwapResponse>, Status> {
        let request = request.into_inner();
        self.admit_key(request.header, &request.key)?;
        Err(Status::unimplemented("cas"))
    }

    async fn batch(&self, request: Request<BatchRequest>) -> Result<Response<BatchResponse>, Status> {
        Ok(Response::new(common::answer_each(self, request.into_inner()).await))
    }

    /// Serves the requested shards (all owned ones when none are named) two items a page.
    async fn scan(&self, request: Request<ScanRequest>) -> Result<Response<ScanResponse>, Status> {
        let request = request.into_inner();
        let shards = if request.shards.is_empty() {
            self.owned.lock().unwrap().iter().copied().collect()
        } else {
            request.shards.clone()
        };
        self.admit(request.header, &shards)?;
        let data = self.data.lock().unwrap();
        let page = if request.limit == 0 { 2 } else { request.limit.min(2) as usize };
        let matching: Vec<KeyValue> = data
            .iter()
            .filter(|(key, _)| shards.contains(&shard_for_key(key, SHARDS)))
            .filter(|(key, _)| key.as_slice() >= request.start.as_slice() && key.starts_with(&request.prefix))
            .filter(|(key, _)| request.continuation.is_empty() || key.as_slice() > request.continuation.as_slice())
            .map(|(key, value)| KeyValue { key: key.clone(), value: value.clone() })
            .collect();
        let items: Vec<KeyValue> = matching.iter().take(page).cloned().collect();
        let continuation = if matching.len() > page { items.last().unwrap().key.clone() } else { Vec::new() };
        Ok(Response::new(ScanResponse { items, continuation }))
    }
}

async fn listen() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    (listener, addr)
}

async fn serve_meta(meta: FakeMeta) -> String {
    let (listener, addr) = listen().await;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(MetaServer::new(meta))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    addr
}

async fn serve_group(group: FakeGroup) -> String {
    let (listener, addr) = listen().await;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(KvServer::new(group))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    addr
}

fn config(num: u64, shard_groups: [u64; SHARDS as usize], groups: &[(u64, &str)]) -> ShardConfig {
    ShardConfig {
        num,
        shard_groups: shard_groups.to_vec(),
        groups: groups
            .iter()
            .map(|(group_id, addr)| GroupMembers {
                group_id: *group_id,
                members: vec![Member { node_id: 1, addr: addr.to_string() }],
            })
            .collect(),
        pinned: Vec::new(),
    }
}

fn client(meta_addr: &str, timeout: Duration) -> Client {
    Client::with_options(vec![meta_addr.to_string()], ClientOptions { request_timeout: timeout, ..Default::default() })
        .unwrap()
}

/// A key in `shard`.
fn key_in(shard: u32, n: usize) -> String {
    (0..).map(|i| format!("key-{i}")).filter(|k| shard_for_key(k.as_bytes(), SHARDS) == shard).nth(n).unwrap()
}

#[tokio::test]
async fn wrong_group_refreshes_the_map_and_retries_at_the_new_owner_with_the_same_seq() {
    let key = key_in(2, 0);
    let shard = shard_for_key(key.as_bytes(), SHARDS);
    let one = FakeGroup::owning(&[0, 1, 2, 3], 1);
    let two = FakeGroup::owning(&[], 1);
    let (one_addr, two_addr) = (serve_group(one.clone()).await, serve_group(two.clone()).await);
    let meta = FakeMeta::default();
    meta.set(config(1, [1, 1, 1, 1], &[(1, &one_addr), (2, &two_addr)]));
    let client = client(&serve_meta(meta.clone()).await, Duration::from_secs(5));

    assert_eq!(client.topology().await.unwrap(), Topology::Sharded);
    client.put(key.as_str(), "v1").await.unwrap();
    assert_eq!(one.writes().last().map(|h| (h.seq, h.config_num)), Some((1, 1)));

    // Config 2 moves the key's shard to group 2; the client still holds config 1.
    one.reassign(&[0, 1, 3], 2);
    two.reassign(&[shard], 2);
    two.data.lock().unwrap().insert(key.clone().into_bytes(), b"v1".to_vec());
    meta.set(config(2, [1, 1, 2, 1], &[(1, &one_addr), (2, &two_addr)]));
    let queries_before = meta.queries.load(Ordering::SeqCst);

    client.put(key.as_str(), "v2").await.unwrap();

    let refused = one.writes().last().copied().unwrap();
    let accepted = two.writes().last().copied().unwrap();
    assert_eq!((refused.client_id, refused.seq, refused.config_num), (client.client_id(), 2, 1));
    assert_eq!((accepted.client_id, accepted.seq, accepted.config_num), (client.client_id(), 2, 2));
    assert_eq!(two.writes().len(), 1, "the retry reached the new owner once");
    assert_eq!(meta.queries.load(Ordering::SeqCst), queries_before + 1, "one refresh of the shard map");
    assert_eq!(client.config().await.unwrap().num, 2);

    // Later requests for the shard go straight to the new owner.
    let one_attempts = one.attempts.load(Ordering::SeqCst);
    assert_eq!(client.get(key.as_str()).await.unwrap(), Some(b"v2".to_vec()));
    assert_eq!(one.attempts.load(Ordering::SeqCst), one_attempts);
    let read = two.seen.lock().unwrap().last().unwrap().0;
    assert_eq!((read.client_id, read.config_num), (0, 2), "reads carry the config number and no session");
}

#[tokio::test]
async fn a_deadline_bounds_the_retries_while_no_group_serves_the_shard() {
    // The owner in the newest map keeps refusing (it has not applied that map).
    let stuck = FakeGroup::owning(&[], 1);
    let stuck_addr = serve_group(stuck.clone()).await;
    let meta = FakeMeta::default();
    meta.set(config(2, [1, 1, 1, 1], &[(1, &stuck_addr)]));
    let client = client(&serve_meta(meta.clone()).await, Duration::from_millis(400));

    let started = Instant::now();
    let error = client.put("k", "v").await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(matches!(&error, Error::Unavailable(msg) if msg.contains("wrong group")), "{error}");
    assert!(elapsed >= Duration::from_millis(100) && elapsed < Duration::from_millis(1500), "took {elapsed:?}");
    let attempts = stuck.attempts.load(Ordering::SeqCst);
    assert!(attempts > 2, "it retried ({attempts} attempts)");
    let seqs: BTreeSet<u64> = stuck.writes().iter().map(|h| h.seq).collect();
    assert_eq!(seqs, BTreeSet::from([1]), "every retry reused the write's seq");
    assert!(meta.queries.load(Ordering::SeqCst) < 100, "refreshes are bounded by the backoff");
}

#[tokio::test]
async fn a_replica_behind_the_map_is_passed_over_for_another_replica_of_the_group() {
    // Group 1's first replica still applies config 1 (it owned nothing then) and answers
    // WrongGroup from it; the second has applied config 2, the client's map.
    let behind = FakeGroup::owning(&[], 1);
    let current = FakeGroup::owning(&[0, 1, 2, 3], 2);
    let (behind_addr, current_addr) = (serve_group(behind.clone()).await, serve_group(current.clone()).await);
    let mut map = config(2, [1, 1, 1, 1], &[(1, &behind_addr)]);
    map.groups[0].members.push(Member { node_id: 2, addr: current_addr });
    let meta = FakeMeta::default();
    meta.set(map);
    let client = client(&serve_meta(meta.clone()).await, Duration::from_secs(5));
    assert_eq!(client.config().await.unwrap().num, 2);
    let queries = meta.queries.load(Ordering::SeqCst);

    let started = Instant::now();
    client.put("k", "v").await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
    assert_eq!(behind.writes().len(), 1, "the replica behind was asked once");
    assert_eq!(current.writes().len(), 1);
    assert_eq!(behind.writes()[0].seq, current.writes()[0].seq, "the same write moved on");
    assert_eq!(meta.queries.load(Ordering::SeqCst), queries, "a replica behind is no reason to refresh the map");
    assert_eq!(client.get("k").await.unwrap(), Some(b"v".to_vec()));
}

#[tokio::test]
async fn an_unassigned_shard_fails_at_the_deadline_with_the_reason() {
    let meta = FakeMeta::default();
    meta.set(config(0, [0, 0, 0, 0], &[]));
    let client = client(&serve_meta(meta).await, Duration::from_millis(300));
    let error = client.get("k").await.unwrap_err();
    assert!(matches!(&error, Error::Unavailable(msg) if msg.contains("not assigned to any group")), "{error}");
}

#[tokio::test]
async fn a_shard_moving_in_is_retried_at_the_same_group() {
    let group = FakeGroup::owning(&[0, 1, 2, 3], 1);
    group.moving_in.store(2, Ordering::SeqCst);
    let addr = serve_group(group.clone()).await;
    let meta = FakeMeta::default();
    meta.set(config(1, [1, 1, 1, 1], &[(1, &addr)]));
    let client = client(&serve_meta(meta).await, Duration::from_secs(5));
    client.put("k", "v").await.unwrap();
    let writes = group.writes();
    assert_eq!(writes.len(), 3, "two refusals, then served");
    assert!(writes.iter().all(|h| h.seq == 1));
}

fn fill(group: &FakeGroup, shards: &[u32], per_shard: usize) -> Vec<String> {
    let mut keys = Vec::new();
    for &shard in shards {
        for n in 0..per_shard {
            let key = key_in(shard, n);
            group.data.lock().unwrap().insert(key.clone().into_bytes(), format!("v-{key}").into_bytes());
            keys.push(key);
        }
    }
    keys
}

fn keys_of(items: &[(Vec<u8>, Vec<u8>)]) -> Vec<String> {
    items.iter().map(|(k, _)| String::from_utf8(k.clone()).unwrap()).collect()
}

#[tokio::test]
async fn scan_asks_each_group_for_its_shards_and_merges_in_key_order() {
    let one = FakeGroup::owning(&[0, 2], 3);
    let two = FakeGroup::owning(&[1, 3], 3);
    let mut expected = fill(&one, &[0, 2], 4);
    expected.extend(fill(&two, &[1, 3], 4));
    expected.sort();
    let (one_addr, two_addr) = (serve_group(one.clone()).await, serve_group(two.clone()).await);
    let meta = FakeMeta::default();
    meta.set(config(3, [1, 2, 1, 2], &[(1, &one_addr), (2, &two_addr)]));
    let client = client(&serve_meta(meta).await, Duration::from_secs(5));

    let all = client.scan(ScanOptions::default()).await.unwrap();
    assert_eq!(keys_of(&all), expected);
    assert_eq!(all[0].1, format!("v-{}", expected[0]).into_bytes());
    assert!(one.seen.lock().unwrap().iter().all(|(h, shards)| shards == &[0, 2] && h.config_num == 3));
    assert!(two.seen.lock().unwrap().iter().all(|(_, shards)| shards == &[1, 3]));

    let limited = client.scan(ScanOptions { limit: Some(5), ..Default::default() }).await.unwrap();
    assert_eq!(keys_of(&limited), expected[..5]);

    let from = expected[7].clone();
    let tail = client.scan(ScanOptions { start: from.clone().into_bytes(), ..Default::default() }).await.unwrap();
    assert_eq!(keys_of(&tail), expected[7..]);
}

#[tokio::test]
async fn a_scan_that_meets_a_moved_shard_re_plans_without_losing_or_repeating_keys() {
    // The client routes with config 1 (shard 3 at group 2); config 2 moved it to group 1.
    let one = FakeGroup::owning(&[0, 2], 1);
    let two = FakeGroup::owning(&[1, 3], 1);
    let mut expected = fill(&one, &[0, 2], 3);
    expected.extend(fill(&two, &[1, 3], 3));
    expected.sort();
    let (one_addr, two_addr) = (serve_group(one.clone()).await, serve_group(two.clone()).await);
    let meta = FakeMeta::default();
    meta.set(config(1, [1, 2, 1, 2], &[(1, &one_addr), (2, &two_addr)]));
    let client = client(&serve_meta(meta.clone()).await, Duration::from_secs(5));
    assert_eq!(client.config().await.unwrap().num, 1);

    let moved: Vec<(Vec<u8>, Vec<u8>)> = {
        let mut data = two.data.lock().unwrap();
        let keys: Vec<Vec<u8>> = data.keys().filter(|k| shard_for_key(k, SHARDS) == 3).cloned().collect();
        keys.into_iter().map(|k| (k.clone(), data.remove(&k).unwrap())).collect()
    };
    one.data.lock().unwrap().extend(moved);
    one.reassign(&[0, 2, 3], 2);
    two.reassign(&[1], 2);
    meta.set(config(2, [1, 2, 1, 1], &[(1, &one_addr), (2, &two_addr)]));

    let all = client.scan(ScanOptions::default()).await.unwrap();
    assert_eq!(keys_of(&all), expected);
    assert_eq!(client.config().await.unwrap().num, 2);
    assert!(two.seen.lock().unwrap().iter().any(|(h, shards)| h.config_num == 2 && shards == &[1]));
}

#[tokio::test]
async fn a_data_group_reached_directly_explains_wrong_group() {
    let group = FakeGroup::owning(&[0], 4);
    let client = client(&serve_group(group).await, Duration::from_secs(2));
    assert_eq!(client.topology().await.unwrap(), Topology::Standalone);
    let error = client.put(key_in(1, 0), "v").await.unwrap_err();
    assert!(matches!(&error, Error::FailedPrecondition(msg) if msg.contains("meta group's endpoints")), "{error}");
    assert!(matches!(client.config().await, Err(Error::FailedPrecondition(_))));
}

#[tokio::test]
async fn join_goes_to_the_meta_group_and_updates_the_routing() {
    let group = FakeGroup::owning(&[0, 1, 2, 3], 1);
    let addr = serve_group(group.clone()).await;
    let meta = FakeMeta::default();
    meta.set(config(0, [0, 0, 0, 0], &[]));
    let client = client(&serve_meta(meta.clone()).await, Duration::from_secs(2));
    let joined = client.join(1, vec![(1, addr.clone())]).await.unwrap();
    assert_eq!(joined.num, 1);
    assert_eq!(meta.joins.lock().unwrap()[0].members[0].addr, addr);
    // The map the join returned routes at once, without another query.
    let queries = meta.queries.load(Ordering::SeqCst);
    client.put("k", "v").await.unwrap();
    assert_eq!(meta.queries.load(Ordering::SeqCst), queries);
    assert_eq!(group.writes().len(), 1);
}
