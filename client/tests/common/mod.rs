//! What the fake servers of the client tests share.

use shardkv_proto::v1::kv_server::Kv;
use shardkv_proto::v1::{BatchRequest, BatchResponse, BatchResult, ItemError, batch_item, batch_result};
use tonic::{Request, Status};

/// A `Kv/Batch` answer made by calling `kv`'s unary handler for each item in turn.
pub async fn answer_each(kv: &impl Kv, request: BatchRequest) -> BatchResponse {
    use batch_result::Response;
    let mut results = Vec::new();
    for item in request.items {
        let answer = match item.request {
            Some(batch_item::Request::Get(r)) => kv.get(Request::new(r)).await.map(|r| Response::Get(r.into_inner())),
            Some(batch_item::Request::Put(r)) => kv.put(Request::new(r)).await.map(|r| Response::Put(r.into_inner())),
            Some(batch_item::Request::Delete(r)) => {
                kv.delete(Request::new(r)).await.map(|r| Response::Delete(r.into_inner()))
            }
            Some(batch_item::Request::CompareAndSwap(r)) => {
                kv.compare_and_swap(Request::new(r)).await.map(|r| Response::CompareAndSwap(r.into_inner()))
            }
            None => Err(Status::invalid_argument("a batch item without a request")),
        };
        let response = answer.unwrap_or_else(|status| Response::Error(ItemError::from(&status)));
        results.push(BatchResult { response: Some(response) });
    }
    BatchResponse { results }
}
