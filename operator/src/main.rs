//! shardkv-operator: serves /metrics and /healthz, takes the leader Lease, then runs the
//! ShardCluster controller until told to stop (or until the Lease is lost).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use clap::Parser;
use kube::Client;
use kube::runtime::events::Reporter;
use shardkv_operator::controller;
use shardkv_operator::controller::Context;
use shardkv_operator::controller::Settings;
use shardkv_operator::leader::Election;
use shardkv_operator::leader::Leadership;
use shardkv_operator::metrics::Metrics;
use shardkv_operator::nodes::GrpcNodes;
use shardkv_operator::resources::MANAGER;
use shardkv_operator::resources::OperatorPods;
use shardkv_operator::telemetry;
use shardkv_operator::telemetry::LogFormat;

#[derive(Debug, Parser)]
#[command(name = "shardkv-operator", version, about = "Reconciles ShardCluster resources into shardkv node groups")]
struct Args {
    /// HTTP listen address for /metrics and /healthz.
    #[arg(long, env = "SHARDKV_OPERATOR_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    #[arg(long, env = "SHARDKV_OPERATOR_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// DNS suffix of the Kubernetes cluster, used in node peer addresses.
    #[arg(long, env = "SHARDKV_OPERATOR_CLUSTER_DOMAIN", default_value = "cluster.local")]
    cluster_domain: String,
    /// Log entries a learner may be behind its leader and still be promoted to voter.
    #[arg(long, env = "SHARDKV_OPERATOR_MAX_LEARNER_LAG", default_value_t = 1000)]
    max_learner_lag: u64,
    /// Timeout of one gRPC call to a node, in milliseconds.
    #[arg(long, env = "SHARDKV_OPERATOR_NODE_TIMEOUT_MS", default_value_t = 5000)]
    node_timeout_ms: u64,
    /// Take a Lease before acting (needed when more than one replica runs).
    #[arg(long, env = "SHARDKV_OPERATOR_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    #[arg(long, env = "SHARDKV_OPERATOR_LEASE_NAME", default_value = "shardkv-operator")]
    lease_name: String,
    /// Namespace of the Lease; the client's default namespace when unset.
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    /// Labels of the operator's pods (`k=v,k=v`): each cluster's NetworkPolicy lets pods with
    /// them, in the operator's namespace (POD_NAMESPACE), reach the nodes.
    #[arg(long, env = "SHARDKV_OPERATOR_POD_LABELS", default_value = "app.kubernetes.io/name=shardkv-operator", value_parser = parse_labels)]
    operator_pod_labels: BTreeMap<String, String>,
    /// This replica's identity in the election (its pod name).
    #[arg(long, env = "POD_NAME", default_value = "shardkv-operator")]
    identity: String,
}

fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, String> {
    text.split(',')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
            _ => Err(format!("{pair:?} is not key=value")),
        })
        .collect()
}

async fn metrics(State(metrics): State<Arc<Metrics>>) -> String {
    metrics.encode()
}

async fn serve_http(listen: SocketAddr, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/metrics", get(self::metrics))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(metrics);
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    tracing::info!(%listen, "serving /metrics and /healthz");
    axum::serve(listener, app).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    telemetry::init(args.log_format);
    let client = Client::try_default().await.context("connecting to the Kubernetes API")?;
    let metrics = Arc::new(Metrics::default());
    let http = tokio::spawn(serve_http(args.listen, metrics.clone()));

    let mut leadership = if args.leader_election {
        let election = Election {
            lease_name: args.lease_name.clone(),
            namespace: args.lease_namespace.clone().unwrap_or_else(|| client.default_namespace().to_string()),
            identity: args.identity.clone(),
            lease_duration: Duration::from_secs(15),
            renew_margin: Duration::from_secs(5),
        };
        tracing::info!(lease = %election.lease_name, namespace = %election.namespace, identity = %election.identity, "waiting for the leader Lease");
        let held = Leadership::acquire(client.clone(), &election).await.context("leader election")?;
        tracing::info!("holding the leader Lease");
        Some(held)
    } else {
        None
    };

    let nodes =
        GrpcNodes::new(Duration::from_millis(args.node_timeout_ms), Duration::from_millis(args.node_timeout_ms));
    let operator_pods = OperatorPods {
        namespace: Some(args.lease_namespace.clone().unwrap_or_else(|| client.default_namespace().to_string())),
        labels: args.operator_pod_labels,
    };
    let settings = Settings {
        cluster_domain: args.cluster_domain,
        max_learner_lag: args.max_learner_lag,
        operator_pods,
        ..Settings::default()
    };
    let reporter = Reporter { controller: MANAGER.into(), instance: Some(args.identity) };
    let ctx = Arc::new(Context::new(client, nodes, metrics, settings, reporter));

    let lost = async {
        match leadership.as_mut() {
            Some(held) => held.lost().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = controller::run(ctx) => tracing::info!("controller stopped"),
        () = lost => anyhow::bail!("lost the leader Lease; exiting so that only the new leader acts"),
        served = http => served.context("HTTP server task")?.context("HTTP server")?,
    }
    Ok(())
}
