//! e2e-load: concurrent clients doing put/get/cas/delete on a small key space
//! through the shardkv client, recording every operation as history events
//! (JSON lines, the format e2e/README.md defines and e2e/checker checks).
//!
//! After the load (its duration, `--stop-file` appearing, or SIGTERM), one more
//! client (id `--clients`) reads every key: those final reads let the checker
//! find acknowledged writes that were lost. `--read-back` runs only those final
//! reads, as client `--clients + 1`, so its history can be appended to an
//! earlier history of the same prefix.
//!
//! Event times (`ts_ns`) are nanoseconds since the UNIX epoch: the wall clock
//! read once at start plus the monotonic time since, so they never go back
//! within a run and compare with `date +%s%N` taken by the scenarios.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::Parser;
use rand::Rng;
use serde_json::{Value, json};
use shardkv_client::{Client, ClientOptions, ClientTls, Error, TlsFiles};
use tokio::sync::mpsc;

#[derive(Parser, Debug)]
struct Args {
    /// Comma-separated endpoints of the cluster's client Service (host:port).
    #[arg(long)]
    endpoints: String,
    /// Concurrent clients (one operation in flight each).
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Number of keys (few keys: more contention, a sharper check).
    #[arg(long, default_value_t = 16)]
    keys: usize,
    /// Seconds of load at most (the hard bound); `--stop-file` and SIGTERM
    /// may end it sooner.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// End the load as soon as this file exists (checked every 100 ms), or
    /// when `--duration` runs out, whichever comes first.
    #[arg(long)]
    stop_file: Option<PathBuf>,
    /// No load: only the final read of every key of the prefix, as client
    /// `--clients + 1` (to append to an earlier history of the same prefix and
    /// `--keys`, whose final reader was client `--clients`).
    #[arg(long)]
    read_back: bool,
    /// Deadline of each operation, retries included.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
    /// Key prefix (one per scenario keeps histories apart).
    #[arg(long, default_value = "e2e")]
    prefix: String,
    /// The history file (JSON lines) to write.
    #[arg(long)]
    history: PathBuf,
    /// PEM CA certificate of the cluster; with --cert and --key, connect with mutual TLS (the
    /// operator's client Secret, mounted).
    #[arg(long, requires_all = ["cert", "key"])]
    ca: Option<PathBuf>,
    #[arg(long, requires_all = ["ca", "key"])]
    cert: Option<PathBuf>,
    #[arg(long, requires_all = ["ca", "cert"])]
    key: Option<PathBuf>,
}

struct Recorder {
    /// The wall clock at `start`, in nanoseconds since the UNIX epoch.
    epoch_ns: u64,
    start: Instant,
    tx: mpsc::UnboundedSender<Value>,
}

impl Recorder {
    /// Nanoseconds since the UNIX epoch, monotonic: the wall clock is read
    /// once, at start, and the monotonic clock's elapsed time is added.
    fn ts(&self) -> u64 {
        self.epoch_ns + self.start.elapsed().as_nanos() as u64
    }
    fn invoke(&self, client: usize, op: &str, key: &str, value: Option<&str>, expected: Option<Option<&str>>) {
        let mut ev = json!({"client": client, "kind": "invoke", "op": op, "key": key, "ts_ns": self.ts()});
        if let Some(v) = value {
            ev["value"] = json!(v);
        }
        if let Some(e) = expected {
            ev["expected"] = json!(e);
        }
        let _ = self.tx.send(ev);
    }
    fn complete(&self, client: usize, op: &str, kind: &str, output: Value, error: Option<String>) {
        let mut ev = json!({"client": client, "kind": kind, "op": op, "output": output, "ts_ns": self.ts()});
        if let Some(e) = error {
            ev["error"] = json!(e);
        }
        let _ = self.tx.send(ev);
    }
}

/// An error is a definite failure only when the request was refused before
/// it could apply; anything else leaves a write's outcome unknown.
fn kind_of(e: &Error) -> &'static str {
    match e {
        Error::InvalidArgument(_) => "fail",
        _ => "timeout",
    }
}

/// What ended the load.
#[derive(Clone, Copy, Debug)]
enum Ended {
    Duration,
    StopFile,
    Sigterm,
    Interrupt,
    /// `--read-back`: there was no load.
    ReadBack,
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Ended::Duration => "ended by duration",
            Ended::StopFile => "ended by stop-file",
            Ended::Sigterm => "ended by SIGTERM",
            Ended::Interrupt => "ended by interrupt",
            Ended::ReadBack => "read-back only",
        })
    }
}

/// Returns once `path` exists (polled every 100 ms); never without a path.
async fn stop_file_appears(path: Option<&Path>) {
    let Some(path) = path else { return std::future::pending().await };
    while !path.exists() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn text(v: Option<Vec<u8>>) -> Value {
    v.map(|b| json!(String::from_utf8_lossy(&b))).unwrap_or(Value::Null)
}

async fn run_client(
    id: usize,
    client: Client,
    rec: Arc<Recorder>,
    keys: Vec<String>,
    stop: Arc<AtomicBool>,
) -> [u64; 3] {
    let mut counts = [0u64; 3]; // ok, fail, timeout
    let mut seq = 0u64;
    let mut last_seen: Vec<Option<String>> = vec![None; keys.len()];
    while !stop.load(Ordering::Relaxed) {
        let (k, dice) = {
            let mut rng = rand::rng();
            (rng.random_range(0..keys.len()), rng.random_range(0..100u32))
        };
        let key = &keys[k];
        seq += 1;
        let value = format!("c{id}-{seq}");
        let (op, result): (&str, Result<Value, Error>) = match dice {
            0..40 => {
                rec.invoke(id, "put", key, Some(&value), None);
                ("put", client.put(key.as_bytes(), value.as_bytes()).await.map(|_| Value::Null))
            }
            40..80 => {
                rec.invoke(id, "get", key, None, None);
                ("get", client.get(key.as_bytes()).await.map(text))
            }
            80..95 => {
                let expected = last_seen[k].clone();
                rec.invoke(id, "cas", key, Some(&value), Some(expected.as_deref()));
                let r =
                    client.compare_and_swap(key.as_bytes(), expected.map(String::into_bytes), value.as_bytes()).await;
                ("cas", r.map(|o| json!(o.succeeded)))
            }
            _ => {
                rec.invoke(id, "delete", key, None, None);
                ("delete", client.delete(key.as_bytes()).await.map(|existed| json!(existed)))
            }
        };
        match result {
            Ok(out) => {
                counts[0] += 1;
                last_seen[k] = match op {
                    "put" => Some(value),
                    "get" => out.as_str().map(str::to_string),
                    "cas" if out == json!(true) => Some(value),
                    "delete" => None,
                    _ => last_seen[k].take(),
                };
                rec.complete(id, op, "ok", out, None);
            }
            Err(e) => {
                let kind = kind_of(&e);
                counts[if kind == "fail" { 1 } else { 2 }] += 1;
                rec.complete(id, op, kind, Value::Null, Some(e.to_string()));
            }
        }
    }
    counts
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let endpoints = shardkv_client::parse_endpoint_list(&args.endpoints).context("--endpoints")?;
    let tls = match (&args.ca, &args.cert, &args.key) {
        (Some(ca), Some(cert), Some(key)) => {
            let files = TlsFiles { ca: ca.clone(), cert: cert.clone(), key: key.clone() };
            Some(ClientTls::new(files).context("loading the TLS files")?)
        }
        _ => None,
    };
    let options =
        ClientOptions { request_timeout: Duration::from_millis(args.timeout_ms), tls, ..ClientOptions::default() };
    let base = Client::with_options(endpoints, options).context("client")?;
    let keys: Vec<String> = (0..args.keys).map(|i| format!("{}-k{i}", args.prefix)).collect();

    let (tx, mut rx) = mpsc::unbounded_channel::<Value>();
    let start = Instant::now();
    let epoch_ns = SystemTime::now().duration_since(UNIX_EPOCH).context("the system clock is before 1970")?.as_nanos();
    let rec =
        Arc::new(Recorder { epoch_ns: u64::try_from(epoch_ns).context("the system clock is past 2554")?, start, tx });
    let file = std::fs::File::create(&args.history).with_context(|| format!("creating {}", args.history.display()))?;
    let writer = tokio::task::spawn_blocking(move || -> Result<u64> {
        let mut out = std::io::BufWriter::new(file);
        let mut n = 0;
        while let Some(ev) = rx.blocking_recv() {
            serde_json::to_writer(&mut out, &ev)?;
            out.write_all(b"\n")?;
            n += 1;
            if n % 256 == 0 {
                out.flush()?;
            }
        }
        out.flush()?;
        out.get_ref().sync_all()?;
        Ok(n)
    });

    let started = Instant::now();
    let mut totals = [0u64; 3];
    let (load_clients, stopped, final_client) = if args.read_back {
        (0, Ended::ReadBack, args.clients + 1)
    } else {
        if let Some(p) = args.stop_file.as_deref().filter(|p| p.exists()) {
            eprintln!("e2e-load: the stop file {} exists already: the load ends at once", p.display());
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for id in 0..args.clients {
            tasks.push(tokio::spawn(run_client(id, base.new_session(), rec.clone(), keys.clone(), stop.clone())));
        }
        let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let stopped = tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(args.duration)) => Ended::Duration,
            _ = stop_file_appears(args.stop_file.as_deref()) => Ended::StopFile,
            _ = sigterm.recv() => Ended::Sigterm,
            _ = tokio::signal::ctrl_c() => Ended::Interrupt,
        };
        eprintln!(
            "e2e-load: load {stopped} after {:.1}s, finishing in-flight operations",
            started.elapsed().as_secs_f64()
        );
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            let c = t.await?;
            for i in 0..3 {
                totals[i] += c[i];
            }
        }
        (args.clients, stopped, args.clients)
    };
    // Final reads, by one more client, after every operation above returned.
    let reader = base.new_session();
    let mut final_ok = 0;
    for key in &keys {
        rec.invoke(final_client, "get", key, None, None);
        match reader.get(key.as_bytes()).await {
            Ok(v) => {
                final_ok += 1;
                rec.complete(final_client, "get", "ok", text(v), None);
            }
            Err(e) => rec.complete(final_client, "get", kind_of(&e), Value::Null, Some(e.to_string())),
        }
    }
    drop(rec);
    let events = writer.await??;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "e2e-load: {} clients, {:.1}s ({}): {} ok ({:.0}/s), {} failed, {} unknown outcome; {}/{} final reads; {} events in {}",
        load_clients,
        secs,
        stopped,
        totals[0],
        totals[0] as f64 / secs,
        totals[1],
        totals[2],
        final_ok,
        keys.len(),
        events,
        args.history.display()
    );
    if final_ok < keys.len() {
        anyhow::bail!("only {final_ok} of {} final reads succeeded: the lost-write check is incomplete", keys.len());
    }
    Ok(())
}
