//! `shardkv`: command-line client, benchmark driver and local playground for shardkv.

mod bench;
mod certs;
mod commands;
mod output;
mod playground;
mod prestop;
mod tls_files;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use shardkv_client::{Client, ClientOptions, ClientTls, parse_endpoint_list};

#[derive(Parser)]
#[command(
    name = "shardkv",
    version,
    about = "Client of the shardkv key-value store",
    after_help = "Exit status: 0 done; 1 not done (key absent, swap refused, or an error: a failed write was not \
                  applied); 2 bad usage; 3 a write failed with its outcome unknown (it may or may not have been \
                  applied)."
)]
struct Cli {
    /// Comma-separated node addresses (host:port): the meta group of a sharded cluster, or the
    /// replicas of a standalone group.
    #[arg(long, global = true, env = "SHARDKV_ENDPOINTS", value_name = "LIST")]
    endpoints: Option<String>,
    /// File holding a comma-separated endpoint list, such as a playground's DIR/endpoints.
    /// Takes precedence over --endpoints.
    #[arg(long, global = true, value_name = "PATH")]
    endpoints_file: Option<PathBuf>,
    /// PEM CA certificate of the cluster; with --cert and --key, connect with mutual TLS.
    /// Without all three, the `tls.json` beside --endpoints-file is used if there is one (a
    /// TLS playground writes it), else plaintext.
    #[arg(long = "ca", global = true, env = "SHARDKV_CA", value_name = "PEM")]
    tls_ca: Option<PathBuf>,
    /// PEM client certificate (its URI name says the cluster and role: client, admin, ...).
    #[arg(long = "cert", global = true, env = "SHARDKV_CERT", value_name = "PEM")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --cert.
    // Named apart from the `key` argument of the KV commands.
    #[arg(long = "key", global = true, env = "SHARDKV_KEY", value_name = "PEM")]
    tls_key: Option<PathBuf>,
    /// Check that the nodes' certificates name this host instead of the address dialled (e.g. a
    /// pod's DNS name when dialling its IP).
    #[arg(long, global = true, env = "SHARDKV_TLS_SERVER_NAME", value_name = "NAME")]
    tls_server_name: Option<String>,
    /// Deadline of each request, retries included, in milliseconds.
    #[arg(long, global = true, value_name = "MS", default_value_t = 5000)]
    timeout_ms: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a value.
    Put { key: String, value: String },
    /// Read a value (linearizable unless --serializable); exits 1 if the key is absent.
    Get {
        key: String,
        /// Read the contacted replica's state without asking the leader; may be stale.
        #[arg(long)]
        serializable: bool,
    },
    /// Delete a key.
    Del { key: String },
    /// Compare-and-swap: `cas KEY EXPECTED NEW`, or `cas --expect-absent KEY NEW`.
    /// Exits 1 if the swap did not happen.
    Cas {
        key: String,
        /// EXPECTED NEW, or only NEW with --expect-absent.
        #[arg(required = true, num_args = 1..=2, value_name = "VALUES")]
        values: Vec<String>,
        /// Succeed only if the key is absent.
        #[arg(long)]
        expect_absent: bool,
    },
    /// List keys in order, one `key<TAB>value` per line.
    Scan {
        #[arg(long)]
        prefix: Option<String>,
        /// Inclusive start key.
        #[arg(long)]
        start: Option<String>,
        /// Exclusive end key.
        #[arg(long)]
        end: Option<String>,
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Show the cluster: for a sharded cluster the latest shard map, each group's leader and
    /// members, per-shard owner and state, and moves in progress; for a standalone group the
    /// Raft status of every endpoint.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Change or read the shard map (sharded clusters; --endpoints are the meta group's), or
    /// initialise a group started by hand.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Drive load against the cluster and report throughput and latency.
    Bench(bench::BenchArgs),
    /// Run a local cluster of shardkv-node processes until interrupted.
    Playground(playground::PlaygroundArgs),
    /// Make TLS certificates.
    #[command(subcommand)]
    Certs(certs::CertsCommand),
    /// Prepare the local node's stop (the pod's preStop hook): it stops being ready, hands
    /// leadership over and snapshots; prints its report.
    Prestop(prestop::PrestopArgs),
}

#[derive(Subcommand)]
pub enum AdminCommand {
    /// Add a data group (or update its members); shards rebalance onto it.
    Join {
        #[arg(long, value_name = "G")]
        group: u64,
        /// A replica of the group as NODE_ID=HOST:PORT; repeat for each replica.
        #[arg(long = "member", value_name = "ID=ADDR", required = true, value_parser = commands::parse_member)]
        members: Vec<(u64, String)>,
    },
    /// Remove a data group; its shards move to the remaining groups.
    Leave {
        #[arg(long, value_name = "G")]
        group: u64,
    },
    /// Move one shard to a group and pin it there.
    Move {
        #[arg(long, value_name = "S")]
        shard: u32,
        #[arg(long, value_name = "G")]
        group: u64,
    },
    /// Initialise a new group on one node, the first of --endpoints, with these voters: a
    /// standalone node or a group started by hand (the operator and the playground initialise
    /// their groups themselves). Fails if that node's group is already initialised.
    Init {
        /// A voter as NODE_ID=HOST:PORT; repeat for each (the node itself among them).
        #[arg(long = "member", value_name = "ID=ADDR", required = true, value_parser = commands::parse_member)]
        members: Vec<(u64, String)>,
    },
    /// Print a shard map (the latest unless --num).
    Config {
        #[arg(long, value_name = "N", default_value_t = 0)]
        num: u64,
        #[arg(long)]
        json: bool,
    },
}

impl Cli {
    fn client(&self) -> anyhow::Result<Client> {
        let list = match (&self.endpoints_file, &self.endpoints) {
            (Some(path), _) => {
                std::fs::read_to_string(path).with_context(|| format!("reading endpoints file {}", path.display()))?
            }
            (None, Some(list)) => list.clone(),
            (None, None) => anyhow::bail!(
                "no endpoints: pass --endpoints host:port,... (or set SHARDKV_ENDPOINTS) or --endpoints-file PATH"
            ),
        };
        let tls = tls_files::resolve(
            self.tls_ca.clone(),
            self.tls_cert.clone(),
            self.tls_key.clone(),
            self.endpoints_file.as_deref(),
        )?;
        let options = ClientOptions {
            request_timeout: std::time::Duration::from_millis(self.timeout_ms),
            tls: tls.map(ClientTls::new).transpose()?,
            tls_server_name: self.tls_server_name.clone(),
            ..ClientOptions::default()
        };
        Ok(Client::with_options(parse_endpoint_list(&list)?, options)?)
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match &cli.command {
        Command::Playground(args) => playground::run(args).await,
        Command::Certs(command) => certs::run(command).map(|()| ExitCode::SUCCESS),
        Command::Prestop(args) => prestop::run(args).await,
        command => match cli.client() {
            Ok(client) => run_with_client(&client, command).await,
            Err(error) => Err(error),
        },
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            match error.downcast_ref::<shardkv_client::Error>() {
                Some(e) if e.outcome_unknown() => {
                    eprintln!("read the key to find out whether the write took effect before writing again");
                    ExitCode::from(EXIT_OUTCOME_UNKNOWN)
                }
                _ if cli.command.is_write() => {
                    eprintln!("the write was not applied");
                    ExitCode::FAILURE
                }
                _ => ExitCode::FAILURE,
            }
        }
    }
}

/// Exit status of a write that failed after an attempt that may have been applied (1: it was
/// not applied, or any other failure; 2: bad usage).
const EXIT_OUTCOME_UNKNOWN: u8 = 3;

impl Command {
    fn is_write(&self) -> bool {
        matches!(self, Command::Put { .. } | Command::Del { .. } | Command::Cas { .. })
    }
}

async fn run_with_client(client: &Client, command: &Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Put { key, value } => commands::put(client, key, value).await,
        Command::Get { key, serializable } => commands::get(client, key, *serializable).await,
        Command::Del { key } => commands::del(client, key).await,
        Command::Cas { key, values, expect_absent } => commands::cas(client, key, values, *expect_absent).await,
        Command::Scan { prefix, start, end, limit } => commands::scan(client, prefix, start, end, *limit).await,
        Command::Status { json } => commands::status(client, *json).await,
        Command::Admin(admin) => commands::admin(client, admin).await,
        Command::Bench(args) => bench::run(client, args).await,
        Command::Playground(_) | Command::Certs(_) | Command::Prestop(_) => {
            unreachable!("the playground, certs and prestop need no client")
        }
    }
}
