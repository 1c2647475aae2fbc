//! The operator's Prometheus metrics, served on `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ObjectLabels {
    object: &'static str,
}

/// Reconciles, errors, compile time, snapshot size, writes, leadership.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ResultLabels, Counter>,
    writes: Family<ObjectLabels, Counter>,
    /// Seconds `compile()` took.
    pub compile_seconds: Histogram,
    /// Bytes of snapshot data in the ConfigMap, as stored (after compression).
    pub snapshot_bytes: Gauge,
    /// 1 while this replica holds the Lease.
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("keygate_operator");
        let reconciles = Family::<ResultLabels, Counter>::default();
        let writes = Family::<ObjectLabels, Counter>::default();
        let compile_seconds = Histogram::new(exponential_buckets(0.000_1, 2.0, 16));
        let snapshot_bytes = Gauge::default();
        let leader = Gauge::default();
        registry.register("reconciles", "Reconciles by result (ok, error)", reconciles.clone());
        registry.register(
            "writes",
            "Objects written: configmap, secret, status, event",
            writes.clone(),
        );
        registry.register(
            "compile_duration_seconds",
            "Time compile() took",
            compile_seconds.clone(),
        );
        registry.register(
            "snapshot_bytes",
            "Snapshot bytes stored in the ConfigMap",
            snapshot_bytes.clone(),
        );
        registry.register("leader", "1 while this replica holds the Lease", leader.clone());
        Metrics {
            registry,
            reconciles,
            writes,
            compile_seconds,
            snapshot_bytes,
            leader,
        }
    }
}

impl Metrics {
    /// Counts one reconcile.
    pub fn reconciled(&self, ok: bool) {
        self.reconciles
            .get_or_create(&ResultLabels {
                result: if ok { "ok" } else { "error" },
            })
            .inc();
    }

    /// Counts one write of `object`.
    pub fn wrote(&self, object: &'static str) {
        self.writes.get_or_create(&ObjectLabels { object }).inc();
    }

    /// How many times `object` was written.
    pub fn writes(&self, object: &'static str) -> u64 {
        self.writes.get_or_create(&ObjectLabels { object }).get()
    }

    /// Reconciles that succeeded.
    pub fn reconciles_ok(&self) -> u64 {
        self.reconciles.get_or_create(&ResultLabels { result: "ok" }).get()
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
