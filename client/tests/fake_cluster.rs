//! The client against in-process fake nodes: leader redirection, retries that reuse the
//! write's (client_id, seq), errors that must not be retried, deadlines, and scan paging.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shardkv_client::{Client, ClientOptions, Error, ScanOptions};
use shardkv_proto::v1::kv_server::{Kv, KvServer};
use shardkv_proto::v1::{BatchRequest, BatchResponse};
use shardkv_proto::v1::{
    CompareAndSwapRequest, CompareAndSwapResponse, DeleteRequest, DeleteResponse, GetRequest, GetResponse, KeyValue,
    PutRequest, PutResponse, RequestHeader, ScanRequest, ScanResponse,
};
use shardkv_proto::{LEADER_ADDR_HEADER, OUTCOME_HEADER, OUTCOME_UNKNOWN};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

mod common;

/// How a fake node answers writes.
#[derive(Clone)]
enum Role {
    /// Points at the leader's address.
    Follower { leader: String },
    /// Knows no leader.
    Leaderless,
    /// Serves requests, after failing the first `fail_first` with UNAVAILABLE (no hint).
    Leader { fail_first: usize },
    /// Rejects every request as invalid.
    Rejecting,
    /// Took the write into its log, then lost it on a leader change: UNAVAILABLE marked
    /// outcome-unknown. After `then_leaderless` attempts it knows no leader (a definite answer).
    Discarding { then_leaderless: usize },
    /// Never answers within any deadline.
    Stalling,
}

#[derive(Clone)]
struct FakeNode {
    role: Role,
    attempts: Arc<AtomicUsize>,
    /// Headers of the writes that reached the serving code.
    headers: Arc<Mutex<Vec<RequestHeader>>>,
}

impl FakeNode {
    fn new(role: Role) -> Self {
        Self { role, attempts: Arc::new(AtomicUsize::new(0)), headers: Arc::new(Mutex::new(Vec::new())) }
    }

    /// Answers a request after the node's delay (a stalling node answers after any deadline).
    async fn answer(&self, header: Option<RequestHeader>) -> Result<(), Status> {
        if let Role::Stalling = self.role {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        self.admit(header)
    }

    fn admit(&self, header: Option<RequestHeader>) -> Result<(), Status> {
        let attempt = self.attempts.fetch_add(1, Ordering::SeqCst);
        match &self.role {
            Role::Follower { leader } => {
                let mut status = Status::unavailable("not the leader");
                status.metadata_mut().insert(LEADER_ADDR_HEADER, leader.parse().unwrap());
                Err(status)
            }
            Role::Leaderless => Err(Status::unavailable("no leader")),
            Role::Leader { fail_first } if attempt < *fail_first => {
                self.headers.lock().unwrap().extend(header);
                Err(Status::unavailable("stepping down"))
            }
            Role::Leader { .. } => {
                self.headers.lock().unwrap().extend(header);
                Ok(())
            }
            Role::Rejecting => Err(Status::invalid_argument("empty key")),
            Role::Discarding { then_leaderless } if attempt >= *then_leaderless => {
                Err(Status::unavailable("no leader"))
            }
            Role::Discarding { .. } => {
                self.headers.lock().unwrap().extend(header);
                let mut status = Status::unavailable("log entry discarded on leader change; commit status unknown");
                status.metadata_mut().insert(OUTCOME_HEADER, OUTCOME_UNKNOWN.parse().unwrap());
                Err(status)
            }
            Role::Stalling => Err(Status::unavailable("too late")),
        }
    }
}

/// Sorted keys "k0".."k9" served two per page.
fn page_after(continuation: &[u8], limit: u32) -> ScanResponse {
    let keys: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
    let start = keys.iter().position(|k| k.as_bytes() > continuation).unwrap_or(keys.len());
    let take = if limit == 0 { 2 } else { limit.min(2) as usize };
    let items: Vec<KeyValue> = keys[start..]
        .iter()
        .take(take)
        .map(|k| KeyValue { key: k.clone().into_bytes(), value: b"v".to_vec() })
        .collect();
    let continuation = match items.last() {
        Some(last) if start + items.len() < keys.len() => last.key.clone(),
        _ => Vec::new(),
    };
    ScanResponse { items, continuation }
}

#[tonic::async_trait]
impl Kv for FakeNode {
    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        self.answer(None).await?;
        let key = request.into_inner().key;
        Ok(Response::new(GetResponse { found: key == b"present", value: b"value".to_vec(), applied_index: 1 }))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        self.answer(request.into_inner().header).await?;
        Ok(Response::new(PutResponse { index: 7 }))
    }

    async fn delete(&self, request: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
        self.answer(request.into_inner().header).await?;
        Ok(Response::new(DeleteResponse { existed: true, index: 8 }))
    }

    async fn compare_and_swap(
        &self,
        request: Request<CompareAndSwapRequest>,
    ) -> Result<Response<CompareAndSwapResponse>, Status> {
        let request = request.into_inner();
        self.answer(request.header).await?;
        // The fake key holds "old".
        let succeeded = !request.expect_absent && request.expected == b"old";
        Ok(Response::new(CompareAndSwapResponse { succeeded, found: true, current: b"old".to_vec(), index: 9 }))
    }

    async fn batch(&self, request: Request<BatchRequest>) -> Result<Response<BatchResponse>, Status> {
        Ok(Response::new(common::answer_each(self, request.into_inner()).await))
    }

    async fn scan(&self, request: Request<ScanRequest>) -> Result<Response<ScanResponse>, Status> {
        self.answer(None).await?;
        let request = request.into_inner();
        Ok(Response::new(page_after(&request.continuation, request.limit)))
    }
}

/// Serves `node` on a fresh loopback port; returns "127.0.0.1:port".
async fn serve(node: FakeNode) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(KvServer::new(node))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    addr
}

/// An address nothing listens on.
async fn closed_port() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().to_string()
}

fn client(endpoints: Vec<String>, timeout: Duration) -> Client {
    Client::with_options(endpoints, ClientOptions { request_timeout: timeout, ..ClientOptions::default() }).unwrap()
}

#[tokio::test]
async fn a_follower_redirects_the_write_to_the_leader() {
    let leader = FakeNode::new(Role::Leader { fail_first: 0 });
    let leader_addr = serve(leader.clone()).await;
    let follower = FakeNode::new(Role::Follower { leader: leader_addr.clone() });
    let follower_addr = serve(follower.clone()).await;
    let client = client(vec![follower_addr], Duration::from_secs(5));

    assert_eq!(client.put("k", "v").await.unwrap(), 7);
    assert_eq!(client.put("k", "v2").await.unwrap(), 7);

    // The second write went straight to the remembered leader.
    assert_eq!(follower.attempts.load(Ordering::SeqCst), 1);
    let headers = leader.headers.lock().unwrap();
    assert_eq!(headers.len(), 2);
    assert_eq!(headers[0].client_id, client.client_id());
    assert_eq!((headers[0].seq, headers[0].first_unacked_seq), (1, 1));
    assert_eq!((headers[1].seq, headers[1].first_unacked_seq), (2, 2));
}

#[tokio::test]
async fn retries_of_a_write_reuse_its_sequence_number() {
    let leader = FakeNode::new(Role::Leader { fail_first: 2 });
    let leader_addr = serve(leader.clone()).await;
    let follower_addr = serve(FakeNode::new(Role::Follower { leader: leader_addr.clone() })).await;
    let client = client(vec![leader_addr, follower_addr], Duration::from_secs(5));

    assert!(client.delete("k").await.unwrap());

    let headers = leader.headers.lock().unwrap();
    assert_eq!(headers.len(), 3, "two failed attempts and the successful one");
    assert!(headers.iter().all(|h| h.client_id == client.client_id() && h.seq == 1));
}

#[tokio::test]
async fn an_unreachable_endpoint_is_skipped() {
    let leader = FakeNode::new(Role::Leader { fail_first: 0 });
    let leader_addr = serve(leader.clone()).await;
    let client = client(vec![closed_port().await, leader_addr], Duration::from_secs(5));
    assert_eq!(client.get("present").await.unwrap(), Some(b"value".to_vec()));
    assert_eq!(client.get("absent").await.unwrap(), None);
}

#[tokio::test]
async fn invalid_arguments_are_not_retried() {
    let node = FakeNode::new(Role::Rejecting);
    let client = client(vec![serve(node.clone()).await], Duration::from_secs(5));
    let error = client.put("", "v").await.unwrap_err();
    assert!(matches!(error, Error::InvalidArgument(_)), "{error}");
    assert_eq!(node.attempts.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn retries_stop_at_the_request_deadline() {
    let node = FakeNode::new(Role::Leaderless);
    let client = client(vec![serve(node.clone()).await], Duration::from_millis(300));
    let started = Instant::now();
    let error = client.put("k", "v").await.unwrap_err();
    assert!(matches!(error, Error::Unavailable(_)), "{error}");
    assert!(!error.outcome_unknown(), "every attempt was refused before it was proposed");
    assert!(started.elapsed() < Duration::from_millis(1000));
    assert!(node.attempts.load(Ordering::SeqCst) > 1, "it retried");
}

#[tokio::test]
async fn an_unreachable_cluster_reports_a_transport_error() {
    let client = client(vec![closed_port().await], Duration::from_millis(300));
    let error = client.get("k").await.unwrap_err();
    assert!(matches!(error, Error::Transport(_)), "{error}");
}

#[tokio::test]
async fn compare_and_swap_reports_the_previous_value() {
    let client = client(vec![serve(FakeNode::new(Role::Leader { fail_first: 0 })).await], Duration::from_secs(5));
    let swapped = client.compare_and_swap("k", Some(b"old".to_vec()), "new").await.unwrap();
    assert!(swapped.succeeded);
    assert_eq!(swapped.previous, Some(b"old".to_vec()));
    let refused = client.compare_and_swap("k", None, "new").await.unwrap();
    assert!(!refused.succeeded);
}

#[tokio::test]
async fn scan_follows_continuations_up_to_the_limit() {
    let client = client(vec![serve(FakeNode::new(Role::Leader { fail_first: 0 })).await], Duration::from_secs(5));
    let all = client.scan(ScanOptions::default()).await.unwrap();
    let keys: Vec<String> = all.iter().map(|(k, _)| String::from_utf8(k.clone()).unwrap()).collect();
    assert_eq!(keys, (0..10).map(|i| format!("k{i}")).collect::<Vec<_>>());

    let limited = client.scan(ScanOptions { limit: Some(5), ..ScanOptions::default() }).await.unwrap();
    assert_eq!(limited.len(), 5);
    assert_eq!(limited[4].0, b"k4");
}

#[tokio::test]
async fn a_write_whose_entry_may_have_committed_fails_as_outcome_unknown() {
    let node = FakeNode::new(Role::Discarding { then_leaderless: usize::MAX });
    let client = client(vec![serve(node.clone()).await], Duration::from_millis(300));
    for write in [
        client.put("k", "v").await.map(drop),
        client.delete("k").await.map(drop),
        client.compare_and_swap("k", None, "v").await.map(drop),
    ] {
        let error = write.unwrap_err();
        assert!(matches!(&error, Error::OutcomeUnknown(m) if m.contains("commit status unknown")), "{error}");
        assert!(error.outcome_unknown());
    }
    let headers = node.headers.lock().unwrap();
    assert!(headers.len() > 3, "each write was retried");
    assert!(headers.windows(2).all(|w| w[0].seq <= w[1].seq), "retries kept their sequence number");
}

#[tokio::test]
async fn an_uncertain_attempt_keeps_the_write_uncertain_after_definite_refusals() {
    let node = FakeNode::new(Role::Discarding { then_leaderless: 1 });
    let client = client(vec![serve(node.clone()).await], Duration::from_millis(300));
    let error = client.put("k", "v").await.unwrap_err();
    assert!(error.outcome_unknown(), "{error}");
    assert!(error.to_string().contains("no leader"), "the last answer is reported too: {error}");
    assert!(node.attempts.load(Ordering::SeqCst) > 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_attempt_cut_off_by_the_deadline_leaves_a_write_uncertain_but_not_a_read() {
    let client = client(vec![serve(FakeNode::new(Role::Stalling)).await], Duration::from_millis(200));
    let error = client.put("k", "v").await.unwrap_err();
    assert!(error.outcome_unknown(), "{error}");
    let read = client.get("k").await.unwrap_err();
    assert!(!read.outcome_unknown(), "reads are never uncertain: {read:?}");
}

#[tokio::test]
async fn a_write_that_never_reached_a_node_was_not_applied() {
    let client = client(vec![closed_port().await], Duration::from_millis(300));
    let error = client.put("k", "v").await.unwrap_err();
    assert!(matches!(error, Error::Transport(_)), "{error}");
}

/// Runs the `shardkv` CLI against `endpoint`; returns (exit code, stderr).
async fn cli(endpoint: &str, args: &[&str]) -> (Option<i32>, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_shardkv"))
        .args(["--endpoints", endpoint, "--timeout-ms", "300"])
        .args(args)
        .output()
        .await
        .unwrap();
    (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_tells_not_applied_from_outcome_unknown() {
    let uncertain = serve(FakeNode::new(Role::Discarding { then_leaderless: usize::MAX })).await;
    let (code, stderr) = cli(&uncertain, &["put", "k", "v"]).await;
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("outcome unknown") && stderr.contains("may or may not have been applied"), "{stderr}");

    let refused = serve(FakeNode::new(Role::Leaderless)).await;
    let (code, stderr) = cli(&refused, &["del", "k"]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("the write was not applied"), "{stderr}");
}
