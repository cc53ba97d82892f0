//! `shardkv bench`: command-line front end of the library's load generator.

use std::process::ExitCode;
use std::time::Duration;

#[cfg(feature = "etcd")]
use anyhow::Context;
use clap::{Args, ValueEnum};
use shardkv_client::Client;
use shardkv_client::bench::moves::{self, MoveBenchConfig};
use shardkv_client::bench::{self, BenchConfig, BenchOp, KeyOrder, KvTarget};

use crate::output;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OpArg {
    Put,
    Get,
    /// Fill one shard, move it back and forth between two groups, and report each move's
    /// duration, MB/s and how long writes to the shard were refused (sharded clusters only).
    Move,
}

/// Systems the benchmark can drive.
#[derive(Clone, Copy, ValueEnum)]
pub enum TargetArg {
    Shardkv,
    /// An etcd v3 cluster at --endpoints (only in builds with the `etcd` feature); with
    /// --ca/--cert/--key, over mutual TLS.
    #[cfg(feature = "etcd")]
    Etcd,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("bound").multiple(true).args(["total", "duration"])))]
pub struct BenchArgs {
    /// Operation to issue.
    op: OpArg,
    #[arg(long, value_enum, default_value = "shardkv")]
    target: TargetArg,
    /// Concurrent workers, each with its own session.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Stop after this many operations (put and get need --total, --duration or both).
    #[arg(long)]
    total: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    duration: Option<f64>,
    /// Value size in bytes [default: 100; for move, the size of each value filling the shard:
    /// 65536].
    #[arg(long)]
    value_size: Option<usize>,
    /// Size of the key space.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// The first N operations each start a new session that never returns (many short-lived
    /// clients); 0 keeps one session per client.
    #[arg(long, value_name = "N", default_value_t = 0)]
    fresh_sessions: u64,
    /// Write every key of the key space before the run.
    #[arg(long)]
    prefill: bool,
    /// Print the result as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    moves: MoveArgs,
}

/// Options of `bench move`.
#[derive(Args)]
#[command(next_help_heading = "Move benchmark (bench move)")]
pub struct MoveArgs {
    /// Shard to fill and move [default: the first shard of the lowest group].
    #[arg(long, value_name = "S")]
    shard: Option<u32>,
    /// Group to move the shard to first; later moves alternate [default: the lowest other group].
    #[arg(long, value_name = "G")]
    to_group: Option<u64>,
    /// Data written into the shard before the moves, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    shard_mib: u64,
    /// Moves to make, back and forth.
    #[arg(long, default_value_t = 5)]
    moves: usize,
    /// Concurrent probe writers to the moving shard during each move (0: none).
    #[arg(long, default_value_t = 4)]
    probe_writers: usize,
    /// Deadline of one probe write, its retries included, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 500)]
    probe_timeout_ms: u64,
    /// Interval of the status polls that detect the end of a move, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 50)]
    poll_ms: u64,
    /// A move not settled after this many seconds fails the benchmark.
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    move_timeout: u64,
}

pub async fn run(client: &Client, args: &BenchArgs) -> anyhow::Result<ExitCode> {
    match args.target {
        TargetArg::Shardkv if args.op == OpArg::Move => run_moves(client, args).await,
        TargetArg::Shardkv => run_against(client, args).await,
        #[cfg(feature = "etcd")]
        TargetArg::Etcd => {
            // The same endpoint list, deadlines and TLS files (--ca/--cert/--key) as a shardkv
            // run, so both see equal settings.
            let options = client.options();
            let etcd = shardkv_client::bench::etcd::EtcdTarget::connect(
                client.endpoints(),
                options.request_timeout,
                options.connect_timeout,
                options.tls.as_ref(),
            )
            .await
            .context("connecting to etcd")?;
            run_against(&etcd, args).await
        }
    }
}

async fn run_against<T: KvTarget>(target: &T, args: &BenchArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.op != OpArg::Move, "bench move runs against shardkv only");
    anyhow::ensure!(args.total.is_some() || args.duration.is_some(), "bench put/get need --total or --duration");
    anyhow::ensure!(args.clients > 0, "--clients must be at least 1");
    let value_size = args.value_size.unwrap_or(100);
    anyhow::ensure!(args.keys > 0, "--keys must be at least 1");
    let duration = args
        .duration
        .map(Duration::try_from_secs_f64)
        .transpose()
        .map_err(|e| anyhow::anyhow!("bad --duration: {e}"))?;

    if args.prefill {
        eprintln!("prefilling {} keys...", args.keys);
        let config = BenchConfig::prefill(args.keys, value_size, args.clients);
        let report = bench::run(target, config, |p| eprintln!("{}", output::progress_line("prefill", p))).await;
        eprintln!("prefilled {} keys in {:.1} s, {} errors", report.ops, report.elapsed_secs, report.errors);
        anyhow::ensure!(report.errors == 0, "prefill failed: {}", report.first_error.unwrap_or_default());
    }

    let config = BenchConfig {
        op: match args.op {
            OpArg::Put => BenchOp::Put,
            OpArg::Get => BenchOp::Get,
            OpArg::Move => unreachable!("checked above"),
        },
        clients: args.clients,
        total: args.total,
        duration,
        value_size,
        keys: args.keys,
        key_order: KeyOrder::Random,
        fresh_sessions: args.fresh_sessions,
    };
    let report = bench::run(target, config, |p| eprintln!("{}", output::progress_line("bench", p))).await;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", output::bench_report_text(&report));
    }
    Ok(if report.ops == 0 && report.errors > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

async fn run_moves(client: &Client, args: &BenchArgs) -> anyhow::Result<ExitCode> {
    let m = &args.moves;
    anyhow::ensure!(m.shard_mib > 0, "--shard-mib must be at least 1");
    let value_size = args.value_size.unwrap_or(64 << 10);
    anyhow::ensure!(value_size > 0, "--value-size must be at least 1");
    let config = MoveBenchConfig {
        shard: m.shard,
        to_group: m.to_group,
        fill_bytes: m.shard_mib << 20,
        fill_value_size: value_size,
        fill_clients: args.clients.max(1),
        moves: m.moves,
        probe_writers: m.probe_writers,
        probe_timeout: Duration::from_millis(m.probe_timeout_ms.max(1)),
        poll_interval: Duration::from_millis(m.poll_ms.max(1)),
        move_timeout: Duration::from_secs(m.move_timeout.max(1)),
        ..MoveBenchConfig::default()
    };
    let report = moves::run(client, &config, |event| eprintln!("{}", output::move_event_line(&event))).await?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", output::move_report_text(&report));
    }
    Ok(ExitCode::SUCCESS)
}
