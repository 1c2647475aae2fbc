//! Prometheus metrics of the data plane, rendered by the admin port's `/metrics`. Labels carry
//! route ids, statuses and the config hash — never paths, headers or anything a client sent.

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabels {
    hash: String,
}

/// Route label of requests no route matched, so unknown paths cannot grow the label set.
const NO_ROUTE: &str = "-";

fn latency_histogram() -> Histogram {
    // 250µs .. ~16s
    Histogram::new(exponential_buckets(0.000_25, 2.0, 17))
}

/// The proxy's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    upstream_seconds: Family<RouteLabels, Histogram, fn() -> Histogram>,
    reloads: Family<ReloadLabels, Counter>,
    info: Family<InfoLabels, Gauge>,
    routes: Gauge,
    live_hash: Mutex<Option<String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("keygate");
        let requests = Family::<RequestLabels, Counter>::default();
        let upstream_seconds = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let reloads = Family::<ReloadLabels, Counter>::default();
        let info = Family::<InfoLabels, Gauge>::default();
        let routes = Gauge::default();
        registry.register("requests", "Requests answered, by route and status", requests.clone());
        registry.register(
            "upstream_duration_seconds",
            "Time from sending a request upstream to its response headers",
            upstream_seconds.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration changes applied (ok) or refused",
            reloads.clone(),
        );
        registry.register("config_info", "The live configuration, by content hash", info.clone());
        registry.register("config_routes", "Routes in the live configuration", routes.clone());
        Metrics {
            registry,
            requests,
            upstream_seconds,
            reloads,
            info,
            routes,
            live_hash: Mutex::new(None),
        }
    }

    /// Counts one answered request.
    pub fn request(&self, route: Option<&str>, status: u16) {
        let route = route.unwrap_or(NO_ROUTE).to_string();
        self.requests.get_or_create(&RequestLabels { route, status }).inc();
    }

    /// Records the time to upstream response headers.
    pub fn upstream_latency(&self, route: &str, seconds: f64) {
        self.upstream_seconds
            .get_or_create(&RouteLabels {
                route: route.to_string(),
            })
            .observe(seconds);
    }

    /// Counts a reload that was applied or refused.
    pub fn reload(&self, applied: bool) {
        let result = if applied { "ok" } else { "refused" };
        self.reloads.get_or_create(&ReloadLabels { result }).inc();
    }

    /// Marks `hash` as the live configuration.
    pub fn config_live(&self, hash: &str, routes: usize) {
        let mut live = self.live_hash.lock().expect("metrics lock");
        if let Some(old) = live.take() {
            self.info.remove(&InfoLabels { hash: old });
        }
        self.info.get_or_create(&InfoLabels { hash: hash.to_string() }).set(1);
        *live = Some(hash.to_string());
        self.routes.set(routes as i64);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
