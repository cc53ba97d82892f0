//! The shard-move benchmark: fill one shard, move it back and forth between two groups, and
//! measure how long each move takes (Move call until the cluster has settled) and how long
//! writes to the moving shard are refused.
//!
//! **Refused window.** During each move a few probe writers write keys of the moving shard
//! back to back, each through its own client with a short request deadline (so one write's
//! internal retries never span the whole move). The refused window of a move is the longest
//! interval between two consecutive successful probe writes (completion times, all writers
//! merged), counted from the last success before the Move call to the first success after
//! the cluster settled. It therefore includes one ordinary write latency and the retry
//! granularity of the probes; the same statistic over the probe's warm-up before the Move
//! call (`baseline_gap`) shows how large that floor is.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use serde::Serialize;
use shardkv_proto::shard_for_key;

use crate::client::{Client, ClientOptions, Topology};
use crate::error::Error;

/// Nearest-rank percentile of `values` (any order): the smallest value with at least
/// `q` of the values at or below it. `None` for no values.
pub fn percentile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// The longest interval between consecutive successes that covers `[from, to]`: the
/// successes (offsets from a common origin, any order) inside the interval, bracketed by the
/// last success at or before `from` and the first at or after `to`. A missing bracket is
/// replaced by `from` (or `to`), so with no success at all the answer is `to - from`, a lower
/// bound.
pub fn refused_window(successes: &[Duration], from: Duration, to: Duration) -> Duration {
    let before = successes.iter().copied().filter(|&s| s <= from).max().unwrap_or(from);
    let after = successes.iter().copied().filter(|&s| s >= to).min().unwrap_or(to);
    let mut points: Vec<Duration> = successes.iter().copied().filter(|&s| s > from && s < to).collect();
    points.push(before);
    points.push(after);
    points.sort();
    points.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default()
}

/// The longest interval between consecutive successes (any order); zero for fewer than two.
pub fn longest_gap(successes: &[Duration]) -> Duration {
    let mut sorted = successes.to_vec();
    sorted.sort();
    sorted.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default()
}

/// Megabytes (10^6 bytes) per second.
pub fn mb_per_sec(bytes: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 { 0.0 } else { bytes as f64 / 1e6 / secs }
}

/// Keys `{prefix}-{n}` that hash to `shard` of `shards`, in order of `n`.
pub fn shard_keys(prefix: &str, shard: u32, shards: u32) -> impl Iterator<Item = Vec<u8>> + '_ {
    (0u64..)
        .map(move |n| format!("{prefix}-{n:08}").into_bytes())
        .filter(move |key| shard_for_key(key, shards) == shard)
}

/// The groups a shard alternates between: move `i` (from 0) goes to `b` when `i` is even and
/// back to `a` when odd, where `a` is the shard's owner before the first move.
pub fn move_target(i: usize, a: u64, b: u64) -> u64 {
    if i.is_multiple_of(2) { b } else { a }
}

#[derive(Debug, Clone)]
pub struct MoveBenchConfig {
    /// The shard to move; `None` picks the first shard of the lowest group.
    pub shard: Option<u32>,
    /// The group to move it to first; `None` picks the lowest other group.
    pub to_group: Option<u64>,
    /// Bytes of values written into the shard before the moves.
    pub fill_bytes: u64,
    /// Size of each fill value.
    pub fill_value_size: usize,
    /// Concurrent fill writers.
    pub fill_clients: usize,
    /// Moves, alternating between the two groups.
    pub moves: usize,
    /// Concurrent probe writers during each move (0: no refused-window measurement).
    pub probe_writers: usize,
    pub probe_value_size: usize,
    /// Deadline of one probe write, retries included.
    pub probe_timeout: Duration,
    /// How long the probe runs before each Move call (its baseline).
    pub probe_warmup: Duration,
    /// Interval of the cluster-status polls that detect a settled cluster.
    pub poll_interval: Duration,
    /// A move that has not settled after this long fails the benchmark.
    pub move_timeout: Duration,
}

impl Default for MoveBenchConfig {
    fn default() -> Self {
        Self {
            shard: None,
            to_group: None,
            fill_bytes: 64 << 20,
            fill_value_size: 64 << 10,
            fill_clients: 16,
            moves: 5,
            probe_writers: 4,
            probe_value_size: 256,
            probe_timeout: Duration::from_millis(500),
            probe_warmup: Duration::from_secs(1),
            poll_interval: Duration::from_millis(50),
            move_timeout: Duration::from_secs(600),
        }
    }
}

/// One move as measured.
#[derive(Debug, Clone, Serialize)]
pub struct MoveResult {
    pub index: usize,
    pub from_group: u64,
    pub to_group: u64,
    /// The shard map the Move created.
    pub config_num: u64,
    /// Move call until the cluster settled.
    pub duration_secs: f64,
    /// The shard's filled bytes over `duration_secs`.
    pub mb_per_sec: f64,
    /// Move call until the Move call returned.
    pub move_call_ms: f64,
    /// The longest interval without a successful probe write (see the module docs).
    pub refused_window_ms: f64,
    /// The same statistic over the probe's warm-up before the Move call.
    pub baseline_gap_ms: f64,
    pub probe_ok: u64,
    pub probe_failed: u64,
    pub probe_first_error: Option<String>,
    /// Most bytes the receiving group's leader reported received while the pull ran (the
    /// report ends with the pull, so this may stop short of the total).
    pub max_reported_moved_bytes: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct MoveBenchReport {
    pub shard: u32,
    pub shards: u32,
    pub groups: (u64, u64),
    /// Bytes of values in the shard (keys and probe writes not counted).
    pub shard_bytes: u64,
    pub fill_keys: u64,
    pub fill_value_size: usize,
    pub fill_secs: f64,
    pub moves: Vec<MoveResult>,
    pub mb_per_sec_p50: Option<f64>,
    pub mb_per_sec_min: Option<f64>,
    pub duration_secs_p50: Option<f64>,
    pub duration_secs_max: Option<f64>,
    pub refused_ms_p50: Option<f64>,
    pub refused_ms_p99: Option<f64>,
    pub refused_ms_max: Option<f64>,
    pub baseline_gap_ms_max: Option<f64>,
    /// Filled keys read back after the last move (values of the right size).
    pub verified_keys: u64,
}

impl MoveBenchReport {
    fn summarise(&mut self) {
        let of = |f: fn(&MoveResult) -> f64| self.moves.iter().map(f).collect::<Vec<_>>();
        let (rates, durations, refused, baseline) =
            (of(|m| m.mb_per_sec), of(|m| m.duration_secs), of(|m| m.refused_window_ms), of(|m| m.baseline_gap_ms));
        self.mb_per_sec_p50 = percentile(&rates, 0.5);
        self.mb_per_sec_min = percentile(&rates, 0.0);
        self.duration_secs_p50 = percentile(&durations, 0.5);
        self.duration_secs_max = percentile(&durations, 1.0);
        self.refused_ms_p50 = percentile(&refused, 0.5);
        self.refused_ms_p99 = percentile(&refused, 0.99);
        self.refused_ms_max = percentile(&refused, 1.0);
        self.baseline_gap_ms_max = percentile(&baseline, 1.0);
    }
}

/// What the benchmark reports while it runs.
pub enum MoveEvent<'a> {
    Filling { written: u64, total: u64, elapsed: Duration },
    Filled { bytes: u64, elapsed: Duration },
    Moving { index: usize, elapsed: Duration, state: &'a str },
    Moved(&'a MoveResult),
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs the benchmark against the sharded cluster `admin` talks to. `admin` is used for the
/// fill, the Move calls and the status polls; every probe writer gets its own client over
/// the same endpoints, so its shard map is refreshed only by its own WrongGroup answers.
pub async fn run(
    admin: &Client,
    config: &MoveBenchConfig,
    mut on_event: impl FnMut(MoveEvent<'_>),
) -> anyhow::Result<MoveBenchReport> {
    anyhow::ensure!(config.fill_value_size > 0, "the fill value size must be positive");
    anyhow::ensure!(config.fill_clients > 0, "at least one fill writer is needed");
    wait_settled(admin, config, |_, _| {}).await?;
    let map = admin.refresh_config().await?;
    let shards = map.shard_groups.len() as u32;
    let mut groups: Vec<u64> = map.groups.iter().map(|g| g.group_id).collect();
    groups.sort_unstable();
    anyhow::ensure!(groups.len() >= 2, "moving a shard needs at least 2 data groups; the map has {groups:?}");
    let shard = match config.shard {
        Some(shard) => shard,
        None => map.shard_groups.iter().position(|&g| g == groups[0]).map(|s| s as u32).unwrap_or(0),
    };
    anyhow::ensure!(shard < shards, "shard {shard} does not exist (the cluster has {shards})");
    let from = map.shard_groups[shard as usize];
    let to = config.to_group.unwrap_or_else(|| *groups.iter().find(|&&g| g != from).expect("two groups"));
    anyhow::ensure!(to != from && groups.contains(&to), "group {to} is not another group of the map {groups:?}");

    // Fill.
    let fill_keys = config.fill_bytes.div_ceil(config.fill_value_size as u64);
    let keys: Arc<Vec<Vec<u8>>> = Arc::new(shard_keys("movebench", shard, shards).take(fill_keys as usize).collect());
    let filled = Instant::now();
    fill(admin, &keys, config, |written, elapsed| on_event(MoveEvent::Filling { written, total: fill_keys, elapsed }))
        .await?;
    let shard_bytes = fill_keys * config.fill_value_size as u64;
    on_event(MoveEvent::Filled { bytes: shard_bytes, elapsed: filled.elapsed() });

    let mut report = MoveBenchReport {
        shard,
        shards,
        groups: (from, to),
        shard_bytes,
        fill_keys,
        fill_value_size: config.fill_value_size,
        fill_secs: filled.elapsed().as_secs_f64(),
        ..MoveBenchReport::default()
    };
    let probe_keys: Vec<Vec<u8>> = shard_keys("moveprobe", shard, shards).take(config.probe_writers).collect();
    for index in 0..config.moves {
        let target = move_target(index, from, to);
        let source = if target == to { from } else { to };
        let result = one_move(admin, config, shard, index, source, target, &probe_keys, &mut on_event).await?;
        on_event(MoveEvent::Moved(&result));
        report.moves.push(result);
    }
    report.summarise();

    // The data survived the moves.
    let check: Vec<&Vec<u8>> = keys.iter().step_by((keys.len() / 16).max(1)).collect();
    for key in check {
        let value = admin.get(key.clone()).await?;
        anyhow::ensure!(
            value.as_ref().map(Vec::len) == Some(config.fill_value_size),
            "key {} lost or wrong after the moves ({:?} bytes)",
            String::from_utf8_lossy(key),
            value.map(|v| v.len())
        );
        report.verified_keys += 1;
    }
    Ok(report)
}

/// Writes every key once with random values of `fill_value_size`, `fill_clients` at a time.
async fn fill(
    client: &Client,
    keys: &Arc<Vec<Vec<u8>>>,
    config: &MoveBenchConfig,
    mut progress: impl FnMut(u64, Duration),
) -> anyhow::Result<()> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let mut writers = tokio::task::JoinSet::new();
    for _ in 0..config.fill_clients {
        let (client, keys, next, done) = (client.new_session(), Arc::clone(keys), Arc::clone(&next), Arc::clone(&done));
        let mut value = vec![0u8; config.fill_value_size];
        rand::rng().fill(&mut value[..]);
        writers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(key) = keys.get(i) else { return Ok::<_, Error>(()) };
                client.put(key.clone(), value.clone()).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => progress(done.load(Ordering::Relaxed), started.elapsed()),
            finished = writers.join_next() => match finished {
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(error))) => anyhow::bail!("filling the shard: {error}"),
                Some(Err(panic)) => std::panic::resume_unwind(panic.into_panic()),
                None => break,
            },
        }
    }
    progress(done.load(Ordering::Relaxed), started.elapsed());
    Ok(())
}

/// Polls the cluster status until it has settled at config `at_least` or later.
async fn wait_settled_at(
    admin: &Client,
    config: &MoveBenchConfig,
    at_least: u64,
    mut on_poll: impl FnMut(&str, u64),
) -> anyhow::Result<()> {
    let deadline = Instant::now() + config.move_timeout;
    let mut last: String;
    loop {
        match admin.cluster_status().await {
            Ok(status) if status.config.num < at_least => {
                last = format!("the meta group answered config {} < {at_least}", status.config.num)
            }
            Ok(status) => match status.unsettled() {
                None => return Ok(()),
                Some(why) => {
                    let received = status
                        .moves()
                        .iter()
                        .filter(|m| m.state == "pulling")
                        .map(|m| m.moved_bytes)
                        .max()
                        .unwrap_or(0);
                    on_poll(&why, received);
                    last = why;
                }
            },
            Err(error) => last = error.to_string(),
        }
        anyhow::ensure!(Instant::now() < deadline, "not settled within {:?}: {last}", config.move_timeout);
        tokio::time::sleep(config.poll_interval).await;
    }
}

async fn wait_settled(admin: &Client, config: &MoveBenchConfig, on_poll: impl FnMut(&str, u64)) -> anyhow::Result<()> {
    wait_settled_at(admin, config, 0, on_poll).await
}

#[allow(clippy::too_many_arguments)]
async fn one_move(
    admin: &Client,
    config: &MoveBenchConfig,
    shard: u32,
    index: usize,
    from: u64,
    to: u64,
    probe_keys: &[Vec<u8>],
    on_event: &mut impl FnMut(MoveEvent<'_>),
) -> anyhow::Result<MoveResult> {
    let probe = Probe::start(admin, config, probe_keys);
    // Warm up: the probe's own map and leaders are current and it has a baseline.
    probe.wait_for_success(config.probe_warmup.max(config.probe_timeout * 4)).await;
    tokio::time::sleep(config.probe_warmup).await;

    let started = Instant::now();
    let moved = admin.move_shard(shard, to).await;
    let move_call = started.elapsed();
    let new_config = match moved {
        Ok(map) => map,
        Err(error) => {
            probe.stop().await;
            anyhow::bail!("move {index} (shard {shard} to group {to}): {error}");
        }
    };
    let mut max_received = 0;
    let mut last_report = Instant::now();
    let settled = wait_settled_at(admin, config, new_config.num, |why, received| {
        max_received = max_received.max(received);
        if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            on_event(MoveEvent::Moving { index, elapsed: started.elapsed(), state: why });
        }
    })
    .await;
    let elapsed = started.elapsed();
    if let Err(error) = settled {
        probe.stop().await;
        return Err(error.context(format!("move {index} (shard {shard} to group {to})")));
    }
    // The window ends with the first probe success after the cluster settled.
    let settled_at = probe.offset(Instant::now());
    probe.wait_for_success_after(settled_at, config.probe_timeout * 10).await;
    let outcome = probe.stop().await;

    let move_at = outcome.offset(started);
    let warmup: Vec<Duration> = outcome.successes.iter().copied().filter(|&s| s <= move_at).collect();
    let refused =
        if probe_keys.is_empty() { Duration::ZERO } else { refused_window(&outcome.successes, move_at, settled_at) };
    Ok(MoveResult {
        index,
        from_group: from,
        to_group: to,
        config_num: new_config.num,
        duration_secs: elapsed.as_secs_f64(),
        mb_per_sec: mb_per_sec(
            config.fill_bytes.div_ceil(config.fill_value_size as u64) * config.fill_value_size as u64,
            elapsed,
        ),
        move_call_ms: ms(move_call),
        refused_window_ms: ms(refused),
        baseline_gap_ms: ms(longest_gap(&warmup)),
        probe_ok: outcome.successes.len() as u64,
        probe_failed: outcome.failed,
        probe_first_error: outcome.first_error,
        max_reported_moved_bytes: max_received,
    })
}

/// Probe writers running in the background.
struct Probe {
    origin: Instant,
    stop: Arc<AtomicBool>,
    state: Arc<Mutex<ProbeState>>,
    tasks: tokio::task::JoinSet<()>,
}

#[derive(Default)]
struct ProbeState {
    /// Completion times of successful writes, as offsets from `origin`.
    successes: Vec<Duration>,
    failed: u64,
    first_error: Option<String>,
}

struct ProbeOutcome {
    origin: Instant,
    successes: Vec<Duration>,
    failed: u64,
    first_error: Option<String>,
}

impl ProbeOutcome {
    fn offset(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.origin)
    }
}

/// Bound on the writes of one probe writer during one move, whatever the move's length.
const PROBE_MAX_WRITES: u64 = 1_000_000;

impl Probe {
    fn start(admin: &Client, config: &MoveBenchConfig, keys: &[Vec<u8>]) -> Probe {
        let origin = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let state = Arc::new(Mutex::new(ProbeState::default()));
        let mut tasks = tokio::task::JoinSet::new();
        let options = ClientOptions {
            request_timeout: config.probe_timeout,
            topology: Some(Topology::Sharded),
            ..admin.options().clone()
        };
        for key in keys {
            let (key, stop, state) = (key.clone(), Arc::clone(&stop), Arc::clone(&state));
            let client = Client::with_options(admin.endpoints().to_vec(), options.clone());
            let value = vec![b'p'; config.probe_value_size];
            tasks.spawn(async move {
                let Ok(client) = client else { return };
                for _ in 0..PROBE_MAX_WRITES {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let result = client.put(key.clone(), value.clone()).await;
                    let at = Instant::now().saturating_duration_since(origin);
                    let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
                    match result {
                        Ok(_) => state.successes.push(at),
                        Err(error) => {
                            state.failed += 1;
                            state.first_error.get_or_insert_with(|| error.to_string());
                        }
                    }
                }
            });
        }
        Probe { origin, stop, state, tasks }
    }

    fn offset(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.origin)
    }

    /// Waits (polling, up to `limit`) until some write succeeded after `after`.
    async fn wait_for_success_after(&self, after: Duration, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.tasks.is_empty() && Instant::now() < deadline {
            let seen = self.state.lock().unwrap_or_else(|p| p.into_inner()).successes.iter().any(|&s| s >= after);
            if seen {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn wait_for_success(&self, limit: Duration) -> impl Future<Output = ()> + '_ {
        self.wait_for_success_after(Duration::ZERO, limit)
    }

    async fn stop(mut self) -> ProbeOutcome {
        self.stop.store(true, Ordering::Relaxed);
        while self.tasks.join_next().await.is_some() {}
        let state = std::mem::take(&mut *self.state.lock().unwrap_or_else(|p| p.into_inner()));
        ProbeOutcome {
            origin: self.origin,
            successes: state.successes,
            failed: state.failed,
            first_error: state.first_error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let values = [5.0, 1.0, 4.0, 2.0, 3.0];
        assert_eq!(percentile(&values, 0.5), Some(3.0));
        assert_eq!(percentile(&values, 0.0), Some(1.0));
        assert_eq!(percentile(&values, 0.99), Some(5.0));
        assert_eq!(percentile(&values, 1.0), Some(5.0));
        assert_eq!(percentile(&[7.0], 0.5), Some(7.0));
        assert_eq!(percentile(&[], 0.5), None);
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&hundred, 0.99), Some(99.0));
        assert_eq!(percentile(&hundred, 0.5), Some(50.0));
    }

    #[test]
    fn the_refused_window_is_the_longest_gap_across_the_move() {
        // Writes every 10 ms, then none from 120 to 470, then again.
        let successes = [ms(90), ms(100), ms(110), ms(120), ms(470), ms(480), ms(490), ms(600)];
        // Move called at 105, settled at 485.
        assert_eq!(refused_window(&successes, ms(105), ms(485)), ms(350));
        // Unordered input gives the same answer.
        let mut shuffled = successes;
        shuffled.reverse();
        assert_eq!(refused_window(&shuffled, ms(105), ms(485)), ms(350));
    }

    #[test]
    fn the_window_reaches_to_the_successes_bracketing_the_move() {
        // The last success before the call was at 50; the next one at 400 (after settling at 300).
        let successes = [ms(10), ms(50), ms(400), ms(410)];
        assert_eq!(refused_window(&successes, ms(100), ms(300)), ms(350));
        // A success exactly at the call or at the settle point brackets the move.
        assert_eq!(refused_window(&[ms(100), ms(300)], ms(100), ms(300)), ms(200));
    }

    #[test]
    fn without_successes_the_window_is_the_whole_move() {
        assert_eq!(refused_window(&[], ms(100), ms(900)), ms(800));
        assert_eq!(refused_window(&[ms(20)], ms(100), ms(900)), ms(880));
        assert_eq!(refused_window(&[ms(950)], ms(100), ms(900)), ms(850));
    }

    #[test]
    fn writes_that_never_stop_leave_only_small_gaps() {
        let successes: Vec<Duration> = (0..100).map(|i| ms(i * 7)).collect();
        assert_eq!(refused_window(&successes, ms(30), ms(600)), ms(7));
        assert_eq!(longest_gap(&successes), ms(7));
        assert_eq!(longest_gap(&[ms(3)]), Duration::ZERO);
        assert_eq!(longest_gap(&[ms(30), ms(3), ms(10)]), ms(20));
    }

    #[test]
    fn throughput_is_in_megabytes_per_second() {
        assert_eq!(mb_per_sec(64 << 20, Duration::from_secs(2)), 33.554432);
        assert_eq!(mb_per_sec(1, Duration::ZERO), 0.0);
    }

    #[test]
    fn shard_keys_hash_to_the_shard() {
        let keys: Vec<Vec<u8>> = shard_keys("movebench", 5, 64).take(50).collect();
        assert_eq!(keys.len(), 50);
        assert!(keys.iter().all(|k| shard_for_key(k, 64) == 5));
        let distinct: std::collections::HashSet<_> = keys.iter().collect();
        assert_eq!(distinct.len(), 50);
    }

    #[test]
    fn moves_alternate_between_the_two_groups() {
        let targets: Vec<u64> = (0..5).map(|i| move_target(i, 1, 2)).collect();
        assert_eq!(targets, [2, 1, 2, 1, 2]);
    }

    #[test]
    fn the_summary_takes_percentiles_over_the_moves() {
        let result = |i: usize, secs: f64, refused: f64| MoveResult {
            index: i,
            from_group: 1,
            to_group: 2,
            config_num: 3 + i as u64,
            duration_secs: secs,
            mb_per_sec: 64.0 / secs,
            move_call_ms: 1.0,
            refused_window_ms: refused,
            baseline_gap_ms: 5.0,
            probe_ok: 10,
            probe_failed: 0,
            probe_first_error: None,
            max_reported_moved_bytes: 0,
        };
        let mut report = MoveBenchReport {
            shard: 0,
            shards: 64,
            groups: (1, 2),
            shard_bytes: 64,
            fill_keys: 1,
            fill_value_size: 64,
            fill_secs: 1.0,
            moves: vec![result(0, 2.0, 300.0), result(1, 1.0, 100.0), result(2, 4.0, 200.0)],
            ..MoveBenchReport::default()
        };
        report.summarise();
        assert_eq!(report.mb_per_sec_p50, Some(32.0));
        assert_eq!(report.mb_per_sec_min, Some(16.0));
        assert_eq!(report.duration_secs_p50, Some(2.0));
        assert_eq!(report.duration_secs_max, Some(4.0));
        assert_eq!(report.refused_ms_p50, Some(200.0));
        assert_eq!(report.refused_ms_p99, Some(300.0));
    }
}
