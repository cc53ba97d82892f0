//! `shardkv bench`: command-line front end of the library's load generator.

use std::process::ExitCode;
use std::time::Duration;

#[cfg(feature = "etcd")]
use anyhow::Context;
use clap::{Args, ValueEnum};
use shardkv_client::Client;
use shardkv_client::bench::{self, BenchConfig, BenchOp, KeyOrder, KvTarget};

use crate::output;

#[derive(Clone, Copy, ValueEnum)]
pub enum OpArg {
    Put,
    Get,
}

/// Systems the benchmark can drive.
#[derive(Clone, Copy, ValueEnum)]
pub enum TargetArg {
    Shardkv,
    /// An etcd v3 cluster at --endpoints (only in builds with the `etcd` feature).
    #[cfg(feature = "etcd")]
    Etcd,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("bound").required(true).multiple(true).args(["total", "duration"])))]
pub struct BenchArgs {
    /// Operation to issue.
    op: OpArg,
    #[arg(long, value_enum, default_value = "shardkv")]
    target: TargetArg,
    /// Concurrent workers, each with its own session.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Stop after this many operations.
    #[arg(long)]
    total: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    duration: Option<f64>,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Size of the key space.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// Write every key of the key space before the run.
    #[arg(long)]
    prefill: bool,
    /// Print the result as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

pub async fn run(client: &Client, args: &BenchArgs) -> anyhow::Result<ExitCode> {
    match args.target {
        TargetArg::Shardkv => run_against(client, args).await,
        #[cfg(feature = "etcd")]
        TargetArg::Etcd => {
            // The same endpoint list and deadlines as a shardkv run, so both see equal settings.
            let options = client.options();
            let etcd = shardkv_client::bench::etcd::EtcdTarget::connect(
                client.endpoints(),
                options.request_timeout,
                options.connect_timeout,
            )
            .await
            .context("connecting to etcd")?;
            run_against(&etcd, args).await
        }
    }
}

async fn run_against<T: KvTarget>(target: &T, args: &BenchArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.clients > 0, "--clients must be at least 1");
    anyhow::ensure!(args.keys > 0, "--keys must be at least 1");
    let duration = args
        .duration
        .map(Duration::try_from_secs_f64)
        .transpose()
        .map_err(|e| anyhow::anyhow!("bad --duration: {e}"))?;

    if args.prefill {
        eprintln!("prefilling {} keys...", args.keys);
        let config = BenchConfig::prefill(args.keys, args.value_size, args.clients);
        let report = bench::run(target, config, |p| eprintln!("{}", output::progress_line("prefill", p))).await;
        eprintln!("prefilled {} keys in {:.1} s, {} errors", report.ops, report.elapsed_secs, report.errors);
        anyhow::ensure!(report.errors == 0, "prefill failed: {}", report.first_error.unwrap_or_default());
    }

    let config = BenchConfig {
        op: match args.op {
            OpArg::Put => BenchOp::Put,
            OpArg::Get => BenchOp::Get,
        },
        clients: args.clients,
        total: args.total,
        duration,
        value_size: args.value_size,
        keys: args.keys,
        key_order: KeyOrder::Random,
    };
    let report = bench::run(target, config, |p| eprintln!("{}", output::progress_line("bench", p))).await;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", output::bench_report_text(&report));
    }
    Ok(if report.ops == 0 && report.errors > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
