//! Starting a node: storage, Raft, the gRPC and admin HTTP servers; and stopping it cleanly.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use openraft::SnapshotPolicy;
use openraft::storage::RaftLogStorage;
use shardkv_proto::FILE_DESCRIPTOR_SET;
use shardkv_proto::MAX_BATCH_REQUEST_BYTES;
use shardkv_proto::v1::admin_server::AdminServer;
use shardkv_proto::v1::kv_server::KvServer;
use shardkv_proto::v1::meta_server::MetaServer;
use shardkv_proto::v1::migration_server::MigrationServer;
use shardkv_proto::v1::raft_server::RaftServer;
use shardkv_tls::{ClientTls, ServerTls};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::admin::AdminService;
use crate::api::kv::KvService;
use crate::auth::layer::AuthorizeLayer;
use crate::config::NodeArgs;
use crate::context::Limits;
use crate::context::NodeContext;
use crate::identity;
use crate::identity::Identity;
use crate::lifecycle::http;
use crate::lifecycle::prestop::Prestop;
use crate::meta::service::MetaService;
use crate::metrics::NodeMetrics;
use crate::migration::driver::Driver;
use crate::migration::service::MigrationService;
use crate::network::GroupScope;
use crate::network::MAX_MESSAGE_BYTES;
use crate::network::channels::Channels;
use crate::network::channels::KEEPALIVE_INTERVAL;
use crate::network::channels::KEEPALIVE_TIMEOUT;
use crate::network::peer::PeerNetwork;
use crate::network::service::RaftService;
use crate::session_clock;
use crate::state_machine::SnapshotStore;
use crate::state_machine::StateMachine;
use crate::state_machine::copy_files::CopyFiles;
use crate::state_machine::sharding::Role;
use crate::storage;
use crate::storage::LogFlusher;
use crate::storage::LogGrowth;
use crate::storage::LogStore;
use crate::types::Raft;
use crate::types::index_of;

/// How long in-flight gRPC calls may take to finish once shutdown starts.
const GRPC_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
const RECOVERY_WAIT: Duration = Duration::from_secs(10);
/// Session expiries below this may be shorter than how long clients retry one write.
const LONGEST_CLIENT_RETRY: Duration = Duration::from_secs(60);

fn raft_config(args: &NodeArgs) -> anyhow::Result<openraft::Config> {
    let config = openraft::Config {
        cluster_name: format!("{}/group-{}", args.cluster_id, args.group_id),
        heartbeat_interval: args.heartbeat_ms,
        election_timeout_min: args.election_timeout_ms,
        election_timeout_max: args.election_timeout_ms * 2,
        install_snapshot_timeout: 300_000,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(args.snapshot_every),
        max_in_snapshot_log_to_keep: 1000,
        max_payload_entries: 512,
        // A node cut off from the others must not bump terms and depose a healthy leader when
        // it comes back.
        enable_pre_vote: Some(true),
        // Replicate an append while the local fsync is still running instead of after it: the
        // leader's fsync and the followers' overlap, which takes one fsync off every write.
        broadcast_submitted_on_append: Some(true),
        // A leader restarted within its term must win an election before it serves again.
        // Resuming at once would take its read index from the committed log id it stored, which
        // is not synced (a power loss can take the last commits back) and is written only with
        // the next append: the resumed leader would answer a linearizable read without the last
        // acknowledged write. A new leader's read index is its own term's first entry, which
        // commits only behind everything committed before it.
        enable_leader_restore: Some(false),
        ..Default::default()
    };
    config.validate().context("invalid Raft configuration")
}

pub async fn run(args: NodeArgs) -> anyhow::Result<()> {
    let node_id = args.resolved_node_id()?;
    args.check_limits()?;
    if args.session_expiry() < LONGEST_CLIENT_RETRY {
        // Allowed (tests use seconds), but a client still retrying a write whose session
        // expired would have it applied twice.
        tracing::warn!(
            expiry_secs = args.session_expiry_secs,
            "--session-expiry-secs is shorter than a client may keep retrying one write; retries may apply twice"
        );
    }
    let role = args.resolved_role()?;
    let tls_files = args.tls_files()?;
    let server_tls = tls_files.clone().map(ServerTls::new).transpose()?;
    let client_tls = tls_files.map(ClientTls::new).transpose()?;
    let scope = GroupScope { cluster_id: args.cluster_id.clone(), group_id: args.group_id };
    let wanted =
        Identity { cluster_id: args.cluster_id.clone(), group_id: args.group_id, node_id, shards: args.shards };
    if let Some(aside) = identity::ensure(&args.data_dir, &wanted, args.rejoin_after_removal)? {
        tracing::warn!(
            membership_index = aside.left.membership_index,
            aside = %aside.aside.display(),
            moved = ?aside.moved,
            deleted_older_copies = ?aside.deleted,
            "this node was removed from its group (left.json) and --rejoin-after-removal is set: moved its old state \
             aside and starting as a new, uninitialised member; it rejoins once it is added again as a learner"
        );
    }

    // Bind first, so a port clash is reported before anything else starts.
    let grpc_listener =
        TcpListener::bind(args.listen).await.with_context(|| format!("binding gRPC address {}", args.listen))?;
    let admin_listener = TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("binding admin HTTP address {}", args.admin_listen))?;

    let metrics = Arc::new(NodeMetrics::default());
    let db_path = args.data_dir.join("db");
    let db = storage::open_db(&db_path).with_context(|| format!("opening RocksDB at {}", db_path.display()))?;
    let copy_files = CopyFiles::open(args.data_dir.join("copies"), node_id)?;
    let log_growth = LogGrowth::new(args.snapshot_every_bytes);
    let (mut log_store, unnamed) = LogStore::open(
        db.clone(),
        LogFlusher::start(db.clone(), metrics.clone()),
        copy_files.clone(),
        log_growth.clone(),
    )?;
    if unnamed > 0 {
        tracing::info!(files = unnamed, "removed copy files that no log entry names");
    }
    let log_state = log_store.get_log_state().await?;
    let startup_entries = index_of(&log_state.last_log_id) - index_of(&log_state.last_purged_log_id);
    metrics.startup_log_entries.set(startup_entries as i64);
    let snapshots = SnapshotStore::open(args.data_dir.join("snapshots"))?;
    let state_machine =
        StateMachine::open(db.clone(), snapshots.clone(), copy_files.clone(), role, args.shards, metrics.clone())?;
    let sharding = state_machine.sharding();

    let config = Arc::new(raft_config(&args)?);
    let channels = Channels::new(client_tls);
    let network = PeerNetwork::new(scope.clone(), channels.clone());
    let raft = Raft::new(node_id, config, network, log_store, state_machine).await?;
    tracing::info!(
        cluster = %args.cluster_id,
        role = role.name(),
        group = args.group_id,
        node = node_id,
        log_entries_on_disk = startup_entries,
        tls = server_tls.is_some(),
        last_purged = index_of(&log_state.last_purged_log_id),
        "node started"
    );
    let limits = Limits { max_key_bytes: args.max_key_bytes, max_value_bytes: args.max_value_bytes };
    let ctx = Arc::new(NodeContext::new(
        node_id,
        scope.clone(),
        args.shards,
        limits,
        raft.clone(),
        db.clone(),
        metrics,
        sharding,
        args.data_dir.clone(),
        copy_files,
    ));
    let prestop = Arc::new(Prestop::default());
    // Recovery needs the leader to confirm the commit index, so it runs while the node serves
    // Raft traffic; until then local reads are refused.
    tokio::spawn({
        let ctx = ctx.clone();
        async move {
            if ctx.raft.is_initialized().await.unwrap_or(false) {
                while let Err(e) = ctx.raft.wait_for_recovery(Some(RECOVERY_WAIT)).await {
                    tracing::info!(error = %e, "state machine still recovering");
                }
            }
            ctx.set_recovered();
        }
    });

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let grpc = tokio::spawn(serve_grpc(
        grpc_listener,
        server_tls,
        ctx.clone(),
        snapshots,
        channels.clone(),
        prestop.clone(),
        shutdown_rx.clone(),
    ));
    tokio::spawn(session_clock::run(ctx.clone(), channels.clone(), args.session_expiry(), shutdown_rx.clone()));
    tokio::spawn(log_growth.run(ctx.raft.clone(), shutdown_rx.clone()));
    if let Role::Sharded { .. } = role {
        tokio::spawn(Driver::new(ctx.clone(), args.meta_endpoints.clone(), channels).run(shutdown_rx.clone()));
    }
    let admin = tokio::spawn({
        let mut rx = shutdown_rx;
        let app = http::router(ctx.clone(), prestop.clone());
        async move {
            axum::serve(admin_listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>())
                .with_graceful_shutdown(async move {
                    let _ = rx.wait_for(|stop| *stop).await;
                })
                .await
        }
    });

    let signal = wait_for_signal().await?;
    // The same stop as preStop (a no-op wait for its report if the hook already ran), while
    // every service still answers: a write arriving now is redirected to the new leader.
    tracing::info!(signal, "stopping: handing leadership over and snapshotting before closing");
    let report = prestop.run(&ctx).await;
    tracing::info!(clean = report.clean, "closing gRPC, stopping Raft, closing RocksDB");
    shutdown_tx.send_replace(true);
    match tokio::time::timeout(GRPC_DRAIN_TIMEOUT, grpc).await {
        Ok(joined) => joined?.context("gRPC server failed")?,
        Err(_) => tracing::warn!("gRPC calls still running after {GRPC_DRAIN_TIMEOUT:?}; closing anyway"),
    }
    raft.shutdown().await.map_err(|e| anyhow::anyhow!("stopping raft: {e}"))?;
    admin.await?.context("admin HTTP server failed")?;
    // Leave a clean store behind: WAL synced and every column family's memtable flushed, so
    // the next start is fast.
    db.flush_wal(true).context("syncing the WAL")?;
    storage::flush_all(&db).context("flushing memtables")?;
    tracing::info!("stopped cleanly");
    Ok(())
}

async fn serve_grpc(
    listener: TcpListener,
    tls: Option<ServerTls>,
    ctx: Arc<NodeContext>,
    snapshots: SnapshotStore,
    channels: Channels,
    prestop: Arc<Prestop>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<KvServer<KvService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let raft_service = RaftService::new(
        ctx.raft.clone(),
        ctx.scope.clone(),
        snapshots,
        ctx.copy_files.clone(),
        channels.clone(),
        shutdown.clone(),
    );
    let authorize = AuthorizeLayer::new(tls.is_some().then_some(ctx.scope.cluster_id.as_str()), ctx.metrics.clone());
    let metrics = ctx.metrics.clone();
    let router = tonic::transport::Server::builder()
        .initial_stream_window_size(16 << 20)
        .initial_connection_window_size(32 << 20)
        // Peers send 1 MiB frames (see network::channels).
        .max_frame_size(Some(1 << 20))
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .layer(authorize)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(
            KvServer::new(KvService::new(ctx.clone()))
                .max_decoding_message_size(ctx.limits.max_kv_request_bytes().max(MAX_BATCH_REQUEST_BYTES)),
        )
        .add_service(AdminServer::new(AdminService::new(ctx.clone(), channels, prestop)))
        .add_service(MetaServer::new(MetaService::new(ctx.clone())))
        .add_service(MigrationServer::new(MigrationService::new(ctx)).max_encoding_message_size(MAX_MESSAGE_BYTES))
        .add_service(
            RaftServer::new(raft_service)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        );
    let stop = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    match tls {
        Some(tls) => {
            let incoming = tls.incoming(listener, move |remote, refusal| {
                tracing::warn!(%remote, "refused a connection: {refusal}");
                metrics.observe_tls_refused(refusal.label());
            });
            router.serve_with_incoming_shutdown(incoming, stop).await?;
        }
        None => {
            // The listener was bound by us, so TCP_NODELAY must be set on the incoming stream
            // itself: without it Nagle's algorithm and delayed ACKs add ~40 ms to small responses.
            let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            router.serve_with_incoming_shutdown(incoming, stop).await?;
        }
    }
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::SignalKind;
    use tokio::signal::unix::signal;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}
