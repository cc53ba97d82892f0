//! `shardkv certs init`: a cluster CA and a certificate for each role, in one directory; the
//! playground makes its certificates the same way.

use std::path::{Path, PathBuf};

use anyhow::{Context, ensure};
use clap::{Args, Subcommand};
use shardkv_client::TlsFiles;
use shardkv_tls::certs::{Ca, Validity};
use shardkv_tls::{PeerIdentity, Role};

#[derive(Subcommand)]
pub enum CertsCommand {
    /// Make a CA (ca.pem, ca-key.pem) and certificates signed by it, each NAME.pem with
    /// NAME-key.pem: node (every node of the cluster, a server for --host), client (data
    /// access), admin (also membership and shard-map changes) and operator.
    Init(InitArgs),
}

#[derive(Args)]
pub struct InitArgs {
    /// Directory to write into; refused if it already holds a ca.pem.
    #[arg(long)]
    dir: PathBuf,
    /// Cluster id the certificates belong to (the nodes' --cluster-id).
    #[arg(long)]
    cluster: String,
    /// Host name or IP address clients and peers use to reach the nodes; repeat for each.
    #[arg(long = "host", value_name = "NAME", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
    hosts: Vec<String>,
    /// Days the certificates (and the CA) are valid.
    #[arg(long, default_value_t = 365)]
    days: u64,
}

/// The files `init` writes.
pub struct Bundle {
    pub ca: PathBuf,
    pub node: TlsFiles,
    pub client: TlsFiles,
    pub admin: TlsFiles,
}

/// Roles given a certificate by `init`, with the name each is issued under.
const HOLDERS: [(Role, &str); 4] =
    [(Role::Node, "node"), (Role::Client, "client"), (Role::Admin, "admin"), (Role::Operator, "operator")];

impl Bundle {
    /// Where `init` writes in `dir`.
    pub fn in_dir(dir: &Path) -> Bundle {
        let ca = dir.join("ca.pem");
        let files = |name: &str| TlsFiles {
            ca: ca.clone(),
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}-key.pem")),
        };
        Bundle { node: files("node"), client: files("client"), admin: files("admin"), ca }
    }
}

pub fn init(dir: &Path, cluster: &str, hosts: &[String], days: u64) -> anyhow::Result<Bundle> {
    ensure!(!dir.join("ca.pem").exists(), "{} already holds a CA (ca.pem); not overwriting it", dir.display());
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let validity = Validity::days_from_now(days);
    let ca = Ca::generate(cluster, validity)?;
    ca.pem().write(dir, "ca")?;
    for (role, name) in HOLDERS {
        let identity = PeerIdentity::new(cluster, role, name)?;
        let sans: &[String] = if role == Role::Node { hosts } else { &[] };
        ca.issue(&identity, sans, validity)?.write(dir, name)?;
    }
    Ok(Bundle::in_dir(dir))
}

pub fn run(command: &CertsCommand) -> anyhow::Result<()> {
    match command {
        CertsCommand::Init(args) => {
            let bundle = init(&args.dir, &args.cluster, &args.hosts, args.days)?;
            println!("wrote a CA and node, client, admin and operator certificates to {}", args.dir.display());
            println!(
                "nodes:   --tls-ca {} --tls-cert {} --tls-key {}",
                bundle.ca.display(),
                bundle.node.cert.display(),
                bundle.node.key.display()
            );
            print_env("clients: ", &bundle.client);
            print_env("admins:  ", &bundle.admin);
            Ok(())
        }
    }
}

/// The environment lines that make the `shardkv` CLI use `files`.
pub fn print_env(prefix: &str, files: &TlsFiles) {
    println!(
        "{prefix}export SHARDKV_CA={} SHARDKV_CERT={} SHARDKV_KEY={}",
        files.ca.display(),
        files.cert.display(),
        files.key.display()
    );
}
