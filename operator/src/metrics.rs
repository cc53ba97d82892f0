//! Prometheus metrics of the operator, served as text on /metrics.

use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    reconcile_seconds: Histogram,
    failures: Family<Labels, Counter>,
    steps: Family<Labels, Counter>,
    shards_in_flight: Family<Labels, Gauge>,
    pods_rolled: Counter,
    rollout_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut m = Metrics {
            registry: Registry::with_prefix("shardkv_operator"),
            reconciles: Counter::default(),
            // 1 ms .. ~65 s
            reconcile_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            failures: Family::default(),
            steps: Family::default(),
            shards_in_flight: Family::default(),
            pods_rolled: Counter::default(),
            // 10 s .. ~3 h
            rollout_seconds: Histogram::new(exponential_buckets(10.0, 2.0, 11)),
        };
        m.registry.register("reconciles", "Reconciles run", m.reconciles.clone());
        m.registry.register("reconcile_seconds", "Time one reconcile took", m.reconcile_seconds.clone());
        m.registry.register("reconcile_failures", "Failed reconciles by reason", m.failures.clone());
        m.registry.register("steps", "Operation steps taken, by operation and step", m.steps.clone());
        m.registry.register(
            "shards_in_flight",
            "Shards being pulled into a group now, by cluster",
            m.shards_in_flight.clone(),
        );
        m.registry.register("pods_rolled", "Node pods restarted by rollouts", m.pods_rolled.clone());
        m.registry.register(
            "rollout_seconds",
            "Time a rollout took from its first to its last pod",
            m.rollout_seconds.clone(),
        );
        m
    }
}

impl Metrics {
    pub fn reconciled(&self, took: Duration) {
        self.reconciles.inc();
        self.reconcile_seconds.observe(took.as_secs_f64());
    }

    pub fn failed(&self, reason: &str) {
        self.failures.get_or_create(&vec![("reason", reason.to_string())]).inc();
    }

    pub fn step(&self, operation: &str, step: &str) {
        self.steps.get_or_create(&vec![("operation", operation.to_string()), ("step", step.to_string())]).inc();
    }

    pub fn shards_in_flight(&self, namespace: &str, cluster: &str, shards: u32) {
        let labels = vec![("namespace", namespace.to_string()), ("cluster", cluster.to_string())];
        self.shards_in_flight.get_or_create(&labels).set(i64::from(shards));
    }

    pub fn pod_rolled(&self) {
        self.pods_rolled.inc();
    }

    pub fn rollout_finished(&self, seconds: f64) {
        self.rollout_seconds.observe(seconds);
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String does not fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconciles_failures_and_steps_are_exported() {
        let m = Metrics::default();
        m.reconciled(Duration::from_millis(5));
        m.failed("Kube");
        m.step("Bootstrap", "Initialize");
        m.shards_in_flight("prod", "demo", 3);
        m.pod_rolled();
        m.rollout_finished(42.0);
        let text = m.encode();
        assert!(text.contains("shardkv_operator_reconciles_total 1"), "{text}");
        assert!(text.contains("shardkv_operator_reconcile_failures_total{reason=\"Kube\"} 1"), "{text}");
        assert!(text.contains("shardkv_operator_steps_total{operation=\"Bootstrap\",step=\"Initialize\"} 1"), "{text}");
        assert!(text.contains("shardkv_operator_reconcile_seconds_count 1"), "{text}");
        assert!(text.contains("shardkv_operator_pods_rolled_total 1"), "{text}");
        assert!(text.contains("shardkv_operator_rollout_seconds_count 1"), "{text}");
        assert!(text.contains("shardkv_operator_shards_in_flight{namespace=\"prod\",cluster=\"demo\"} 3"), "{text}");
    }
}
