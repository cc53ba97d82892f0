//! The tower layer in front of every gRPC service: with TLS on, each request is checked
//! against `policy` using the identity of its connection's client certificate, and a refusal
//! is answered PERMISSION_DENIED without reaching the service.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::{Either, Ready, ready};
use shardkv_tls::Peer;
use shardkv_tls::identity::IdentityError;
use tower::{Layer, Service};

use super::policy;
use crate::metrics::NodeMetrics;

#[derive(Clone)]
pub struct AuthorizeLayer {
    /// This node's cluster id; `None` when TLS is off and there is no identity to check.
    cluster: Option<Arc<str>>,
    metrics: Arc<NodeMetrics>,
}

impl AuthorizeLayer {
    pub fn new(cluster: Option<&str>, metrics: Arc<NodeMetrics>) -> Self {
        AuthorizeLayer { cluster: cluster.map(Arc::from), metrics }
    }
}

impl<S> Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Authorize<S> {
        Authorize { inner, layer: self.clone() }
    }
}

#[derive(Clone)]
pub struct Authorize<S> {
    inner: S,
    layer: AuthorizeLayer,
}

impl<S, B> Service<http::Request<B>> for Authorize<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let Some(cluster) = &self.layer.cluster else {
            return Either::Left(self.inner.call(request));
        };
        let peer = request.extensions().get::<Arc<Peer>>();
        // Every connection of a TLS server carries its peer; no peer would mean a bug, refused.
        let identity = peer.map_or(Err(&IdentityError::Missing), |peer| peer.identity.as_ref());
        match policy::authorize(identity, cluster, request.uri().path()) {
            Ok(()) => Either::Left(self.inner.call(request)),
            Err(denied) => {
                let remote = peer.map(|peer| peer.remote.to_string()).unwrap_or_default();
                tracing::warn!(remote, "{denied}");
                // Known RPCs only, so a caller cannot grow the metric without bound.
                let path = request.uri().path();
                self.layer.metrics.observe_denied(if policy::admits(path).is_some() { path } else { "unknown" });
                Either::Right(ready(Ok(tonic::Status::permission_denied(denied.to_string()).into_http())))
            }
        }
    }
}
