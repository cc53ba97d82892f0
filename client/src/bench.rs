//! Load generation against a key-value target, with latency histograms.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::Rng;
use serde::Serialize;
use tokio::task::JoinSet;

use crate::client::Client;
use crate::error::Error;

#[cfg(feature = "etcd")]
pub mod etcd;
pub mod moves;

/// A key-value store the benchmark can drive.
pub trait KvTarget: Send + Sync + 'static {
    type Error: std::fmt::Display + Send;

    /// A handle for one concurrent worker, with its own session where the target has them.
    fn worker(&self) -> Self
    where
        Self: Sized;

    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Reads `key`; `Ok(false)` when it is absent.
    fn get(&self, key: Vec<u8>) -> impl Future<Output = Result<bool, Self::Error>> + Send;
}

impl KvTarget for Client {
    type Error = Error;

    fn worker(&self) -> Self {
        self.new_session()
    }

    async fn put(&self, key: Vec<u8>, value: Vec<u8>) -> Result<(), Error> {
        Client::put(self, key, value).await.map(drop)
    }

    async fn get(&self, key: Vec<u8>) -> Result<bool, Error> {
        Ok(Client::get(self, key).await?.is_some())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BenchOp {
    Put,
    Get,
}

/// Which keys the operations touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOrder {
    /// Uniformly random keys of the key space.
    Random,
    /// Keys 0, 1, 2, ... in turn (prefilling the key space).
    Sequential,
}

#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub op: BenchOp,
    /// Concurrent workers, each with its own session.
    pub clients: usize,
    /// Stop after this many operations were started.
    pub total: Option<u64>,
    /// Stop after this much time; operations still in flight then are abandoned.
    pub duration: Option<Duration>,
    pub value_size: usize,
    /// Size of the key space.
    pub keys: u64,
    pub key_order: KeyOrder,
    /// The first this many operations each start a new session that is never used again, as
    /// short-lived clients that write once and go away do; later operations use their worker's
    /// last session. 0: one session per worker.
    pub fresh_sessions: u64,
}

impl BenchConfig {
    /// Configuration that writes every key of the key space once.
    pub fn prefill(keys: u64, value_size: usize, clients: usize) -> Self {
        Self {
            op: BenchOp::Put,
            clients,
            total: Some(keys),
            duration: None,
            value_size,
            keys,
            key_order: KeyOrder::Sequential,
            fresh_sessions: 0,
        }
    }
}

/// The key a benchmark uses for index `n` of the key space.
pub fn bench_key(n: u64) -> Vec<u8> {
    format!("bench-{n:010}").into_bytes()
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatencySummary {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl LatencySummary {
    /// Summarises a histogram of latencies recorded in microseconds.
    pub fn from_micros(histogram: &Histogram<u64>) -> Self {
        let ms = |micros: u64| micros as f64 / 1000.0;
        Self {
            p50_ms: ms(histogram.value_at_quantile(0.50)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            p999_ms: ms(histogram.value_at_quantile(0.999)),
            max_ms: ms(histogram.max()),
            mean_ms: histogram.mean() / 1000.0,
        }
    }
}

/// State of a running benchmark, reported about once a second.
#[derive(Debug, Clone)]
pub struct Progress {
    pub elapsed: Duration,
    pub ops: u64,
    pub errors: u64,
    pub ops_per_sec: f64,
    pub p99_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub op: BenchOp,
    pub clients: usize,
    pub value_size: usize,
    /// Operations that succeeded.
    pub ops: u64,
    pub errors: u64,
    /// Reads that found no value.
    pub misses: u64,
    pub elapsed_secs: f64,
    pub throughput_ops_per_sec: f64,
    /// Latency of successful operations.
    pub latency: LatencySummary,
    pub first_error: Option<String>,
}

/// Histogram of latencies in microseconds, from 1µs to 1 hour, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[derive(Default)]
struct Counters {
    started: AtomicU64,
    errors: AtomicU64,
    misses: AtomicU64,
    first_error: Mutex<Option<String>>,
}

/// Runs the benchmark and returns its report; `on_progress` is called about every second.
/// The run always ends: after `total` operations, after `duration`, or both.
pub async fn run<T: KvTarget>(target: &T, config: BenchConfig, mut on_progress: impl FnMut(&Progress)) -> BenchReport {
    let config = Arc::new(config);
    let counters = Arc::new(Counters::default());
    let histograms: Vec<Arc<Mutex<Histogram<u64>>>> =
        (0..config.clients.max(1)).map(|_| Arc::new(Mutex::new(latency_histogram()))).collect();
    let started = Instant::now();
    let stop_at = config.duration.map(|d| tokio::time::Instant::from_std(started + d));

    let mut workers = JoinSet::new();
    for histogram in &histograms {
        workers.spawn(work(
            target.worker(),
            Arc::clone(&config),
            Arc::clone(&counters),
            Arc::clone(histogram),
            stop_at,
        ));
    }

    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await; // The first tick completes at once.
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let merged = merge(&histograms);
                let elapsed = started.elapsed();
                on_progress(&Progress {
                    elapsed,
                    ops: merged.len(),
                    errors: counters.errors.load(Ordering::Relaxed),
                    ops_per_sec: merged.len() as f64 / elapsed.as_secs_f64(),
                    p99_ms: merged.value_at_quantile(0.99) as f64 / 1000.0,
                });
            }
            finished = workers.join_next() => match finished {
                Some(Ok(())) => {}
                Some(Err(failure)) => std::panic::resume_unwind(failure.into_panic()),
                None => break,
            },
        }
    }

    let elapsed = started.elapsed();
    let merged = merge(&histograms);
    BenchReport {
        op: config.op,
        clients: config.clients,
        value_size: config.value_size,
        ops: merged.len(),
        errors: counters.errors.load(Ordering::Relaxed),
        misses: counters.misses.load(Ordering::Relaxed),
        elapsed_secs: elapsed.as_secs_f64(),
        throughput_ops_per_sec: merged.len() as f64 / elapsed.as_secs_f64(),
        latency: LatencySummary::from_micros(&merged),
        first_error: lock(&counters.first_error).clone(),
    }
}

fn merge(histograms: &[Arc<Mutex<Histogram<u64>>>]) -> Histogram<u64> {
    let mut merged = latency_histogram();
    for histogram in histograms {
        merged.add(&*lock(histogram)).expect("histograms share their bounds");
    }
    merged
}

/// One worker: issues operations back to back until the run's bounds are reached.
async fn work<T: KvTarget>(
    mut target: T,
    config: Arc<BenchConfig>,
    counters: Arc<Counters>,
    histogram: Arc<Mutex<Histogram<u64>>>,
    stop_at: Option<tokio::time::Instant>,
) {
    let mut value = vec![0u8; config.value_size];
    // Random bytes, so that storage compression does not flatter the results.
    rand::rng().fill(&mut value[..]);
    loop {
        let n = counters.started.fetch_add(1, Ordering::Relaxed);
        if config.total.is_some_and(|total| n >= total) {
            return;
        }
        if n < config.fresh_sessions {
            target = target.worker();
        }
        let key = match config.key_order {
            KeyOrder::Sequential => bench_key(n % config.keys.max(1)),
            KeyOrder::Random => bench_key(rand::random_range(0..config.keys.max(1))),
        };
        let op_started = Instant::now();
        let operation = async {
            match config.op {
                BenchOp::Put => target.put(key, value.clone()).await.map(|()| true),
                BenchOp::Get => target.get(key).await,
            }
        };
        let result = match stop_at {
            Some(stop_at) => match tokio::time::timeout_at(stop_at, operation).await {
                Ok(result) => result,
                Err(_time_is_up) => return,
            },
            None => operation.await,
        };
        match result {
            Ok(found) => {
                let micros = op_started.elapsed().as_micros();
                lock(&histogram).saturating_record(u64::try_from(micros).unwrap_or(u64::MAX));
                if !found {
                    counters.misses.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(error) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                lock(&counters.first_error).get_or_insert_with(|| error.to_string());
            }
        }
        if stop_at.is_some_and(|stop_at| tokio::time::Instant::now() >= stop_at) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::convert::Infallible;

    #[test]
    fn latency_summary_reports_percentiles_in_milliseconds() {
        let mut histogram = latency_histogram();
        for micros in 1..=1000u64 {
            histogram.record(micros * 10).unwrap();
        }
        let summary = LatencySummary::from_micros(&histogram);
        assert!((summary.p50_ms - 5.0).abs() < 0.01, "{summary:?}");
        assert!((summary.p99_ms - 9.9).abs() < 0.01, "{summary:?}");
        assert!((summary.p999_ms - 9.99).abs() < 0.01, "{summary:?}");
        assert!((summary.max_ms - 10.0).abs() < 0.01, "{summary:?}");
    }

    #[test]
    fn bench_keys_sort_in_numeric_order() {
        assert!(bench_key(9) < bench_key(10));
        assert_eq!(bench_key(42), b"bench-0000000042");
    }

    /// Records the keys it is asked to write, and how many sessions were started.
    #[derive(Clone, Default)]
    struct Recorder {
        keys: Arc<Mutex<Vec<Vec<u8>>>>,
        sessions: Arc<AtomicU64>,
    }

    impl KvTarget for Recorder {
        type Error = Infallible;

        fn worker(&self) -> Self {
            self.sessions.fetch_add(1, Ordering::Relaxed);
            self.clone()
        }

        async fn put(&self, key: Vec<u8>, _value: Vec<u8>) -> Result<(), Infallible> {
            lock(&self.keys).push(key);
            Ok(())
        }

        async fn get(&self, _key: Vec<u8>) -> Result<bool, Infallible> {
            Ok(false)
        }
    }

    #[tokio::test]
    async fn prefill_writes_every_key_exactly_once() {
        let recorder = Recorder::default();
        let report = run(&recorder, BenchConfig::prefill(500, 8, 4), |_| {}).await;
        assert_eq!(report.ops, 500);
        assert_eq!(report.errors, 0);
        let keys = lock(&recorder.keys);
        let distinct: HashSet<&Vec<u8>> = keys.iter().collect();
        assert_eq!((keys.len(), distinct.len()), (500, 500));
        assert!(distinct.contains(&bench_key(499)));
    }

    #[tokio::test]
    async fn a_duration_bound_stops_the_run() {
        let config = BenchConfig {
            op: BenchOp::Get,
            clients: 2,
            total: None,
            duration: Some(Duration::from_millis(50)),
            value_size: 1,
            keys: 10,
            key_order: KeyOrder::Random,
            fresh_sessions: 0,
        };
        let report = run(&Recorder::default(), config, |_| {}).await;
        assert!(report.ops > 0);
        assert_eq!(report.misses, report.ops);
    }

    #[tokio::test]
    async fn each_of_the_first_fresh_sessions_operations_starts_a_new_session() {
        let recorder = Recorder::default();
        let config = BenchConfig { fresh_sessions: 60, ..BenchConfig::prefill(100, 8, 4) };
        let report = run(&recorder, config, |_| {}).await;
        assert_eq!(report.ops, 100);
        assert_eq!(recorder.sessions.load(Ordering::Relaxed), 4 + 60, "one per worker, then one per operation");
    }
}
