use clap::Parser;
use shardkv_node::config::LogFormat;
use shardkv_node::config::NodeArgs;
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let args = NodeArgs::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,openraft=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = args.worker_threads {
        runtime.worker_threads(threads.into());
    }
    let runtime = runtime.enable_all().build().expect("starting the tokio runtime");
    match runtime.block_on(shardkv_node::node::run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("shardkv-node: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
