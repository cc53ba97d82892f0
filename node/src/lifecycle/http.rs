//! The admin HTTP port: /healthz, /readyz, /metrics and /lifecycle/prestop.
//!
//! Probes and scrapers reach the first three from anywhere. /lifecycle/prestop changes the
//! node's state (it steps down and snapshots), so it answers only loopback peers: the pod's
//! preStop hook execs `shardkv prestop` inside the pod, and the operator, which needs the same
//! stop from outside, calls the Admin PrepareStop RPC under its mTLS identity.

use std::net::SocketAddr;
use std::sync::Arc;

use openraft::async_runtime::WatchReceiver;

use axum::Json;
use axum::Router;
use axum::extract::ConnectInfo;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use super::prestop::Prestop;
use super::prestop::PrestopReport;
use crate::context::NodeContext;

#[derive(Clone)]
struct AdminState {
    ctx: Arc<NodeContext>,
    prestop: Arc<Prestop>,
}

pub fn router(ctx: Arc<NodeContext>, prestop: Arc<Prestop>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        // `shardkv prestop` uses GET; POST is accepted for people and scripts.
        .route("/lifecycle/prestop", get(prestop_hook).post(prestop_hook))
        .with_state(AdminState { ctx, prestop })
}

async fn healthz(State(s): State<AdminState>) -> impl IntoResponse {
    match &s.ctx.raft.metrics().borrow_watched().running_state {
        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
        Err(fatal) => (StatusCode::SERVICE_UNAVAILABLE, format!("raft stopped: {fatal}\n")),
    }
}

/// Ready means: not shutting down, recovered after a restart, and in a group with a leader.
async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    if s.ctx.is_stopping() {
        return (StatusCode::SERVICE_UNAVAILABLE, "stopping (preStop ran)\n".to_string());
    }
    if !s.ctx.is_recovered() {
        return (StatusCode::SERVICE_UNAVAILABLE, "re-applying the log after a restart\n".to_string());
    }
    match s.ctx.leader() {
        Some((id, _)) => (StatusCode::OK, format!("ready; leader is node {id}\n")),
        None => (StatusCode::SERVICE_UNAVAILABLE, "no leader known yet\n".to_string()),
    }
}

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    let raft_metrics = s.ctx.raft.metrics().borrow_watched().clone();
    let body = s.ctx.metrics.render(&raft_metrics);
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
}

async fn prestop_hook(
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    State(s): State<AdminState>,
) -> Result<Json<PrestopReport>, (StatusCode, String)> {
    if !may_run_lifecycle_hooks(peer) {
        tracing::warn!(%peer, "refused /lifecycle/prestop from a non-loopback peer");
        return Err((
            StatusCode::FORBIDDEN,
            format!(
                "/lifecycle/prestop answers only 127.0.0.1 and ::1, not {}: run shardkv prestop inside the \
                 pod, or call the Admin PrepareStop RPC with an operator or admin certificate\n",
                peer.ip()
            ),
        ));
    }
    Ok(Json(s.prestop.run(&s.ctx).await))
}

/// Whether a peer may call the endpoints that change the node's state. A packet from a
/// loopback source address can only come from this host's (the pod's) own network stack:
/// the kernel drops such sources arriving on any other interface.
fn may_run_lifecycle_hooks(peer: SocketAddr) -> bool {
    match peer.ip() {
        std::net::IpAddr::V4(ip) => ip.is_loopback(),
        std::net::IpAddr::V6(ip) => ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

#[cfg(test)]
mod tests {
    use super::may_run_lifecycle_hooks;

    #[test]
    fn only_loopback_peers_may_run_lifecycle_hooks() {
        for local in ["127.0.0.1:5000", "127.0.223.9:1", "[::1]:80", "[::ffff:127.0.0.1]:80"] {
            assert!(may_run_lifecycle_hooks(local.parse().unwrap()), "{local}");
        }
        for remote in ["10.0.0.7:5000", "0.0.0.0:1", "192.168.1.1:80", "[fe80::1]:80", "[::ffff:10.1.2.3]:80"] {
            assert!(!may_run_lifecycle_hooks(remote.parse().unwrap()), "{remote}");
        }
    }
}
