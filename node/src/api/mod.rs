//! gRPC services a node offers to clients and to the operator.

pub mod admin;
pub mod errors;
pub mod kv;
mod proposals;
mod scan;

use std::future::Future;
use std::time::Instant;

use tonic::Response;
use tonic::Status;

use crate::metrics::NodeMetrics;

/// Runs a handler and records its count and latency under `method`.
pub async fn observed<T>(
    metrics: &NodeMetrics,
    method: &'static str,
    handler: impl Future<Output = Result<T, Status>>,
) -> Result<Response<T>, Status> {
    let started = Instant::now();
    let result = handler.await;
    let code = result.as_ref().map_or_else(|s| s.code(), |_| tonic::Code::Ok);
    metrics.observe_rpc(method, code, started.elapsed());
    result.map(Response::new)
}
