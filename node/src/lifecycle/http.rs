//! The admin HTTP port: /healthz, /readyz, /metrics and /lifecycle/prestop.

use openraft::async_runtime::WatchReceiver;
use std::sync::Arc;

use axum::Json;
use axum::Router;
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
        // Kubernetes' httpGet hook uses GET; POST is accepted for people and scripts.
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

async fn prestop_hook(State(s): State<AdminState>) -> Json<PrestopReport> {
    Json(s.prestop.run(&s.ctx).await)
}
