//! Prometheus metrics of the data plane, rendered by the admin port's `/metrics`. Labels carry
//! route ids, statuses and the config hash — never paths, headers or anything a client sent.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A route id as a label value; an `Arc` so counting a request allocates nothing.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct RouteLabel(Arc<str>);

impl EncodeLabelValue for RouteLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(&self.0)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: RouteLabel,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: RouteLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppLabels {
    route: RouteLabel,
    app: RouteLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: &'static str,
}

impl ReloadLabels {
    fn of(applied: bool) -> ReloadLabels {
        ReloadLabels {
            result: if applied { "ok" } else { "refused" },
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabels {
    hash: String,
}

/// Route label of requests no route matched, so unknown paths cannot grow the label set.
const NO_ROUTE: &str = "-";

fn no_route() -> Arc<str> {
    static NONE: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
    NONE.get_or_init(|| Arc::from(NO_ROUTE)).clone()
}

fn latency_histogram() -> Histogram {
    // 250µs .. ~16s
    Histogram::new(exponential_buckets(0.000_25, 2.0, 17))
}

/// The statuses a route's [`RouteMeters`] keep a counter for; others are looked up per request.
const COMMON_STATUSES: [u16; 12] = [200, 201, 204, 301, 302, 304, 400, 401, 403, 404, 429, 502];

/// One route's metric series, resolved on first use and kept by the route, so counting a request
/// takes neither the family's lock nor a hash of its labels (both shared by every worker).
/// Handles share the family's values, so `/metrics` renders them as before.
#[derive(Default)]
pub struct RouteMeters {
    statuses: [std::sync::OnceLock<Counter>; COMMON_STATUSES.len()],
    upstream: std::sync::OnceLock<Histogram>,
}

/// The proxy's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    upstream_seconds: Family<RouteLabels, Histogram, fn() -> Histogram>,
    app_requests: Family<AppLabels, Counter>,
    reloads: Family<ReloadLabels, Counter>,
    tls_reloads: Family<ReloadLabels, Counter>,
    info: Family<InfoLabels, Gauge>,
    routes: Gauge,
    websockets_open: Family<RouteLabels, Gauge>,
    websockets: Family<RouteLabels, Counter>,
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
        let app_requests = Family::<AppLabels, Counter>::default();
        let reloads = Family::<ReloadLabels, Counter>::default();
        let tls_reloads = Family::<ReloadLabels, Counter>::default();
        let info = Family::<InfoLabels, Gauge>::default();
        let routes = Gauge::default();
        let websockets_open = Family::<RouteLabels, Gauge>::default();
        let websockets = Family::<RouteLabels, Counter>::default();
        registry.register(
            "websockets_open",
            "WebSocket tunnels open now, by route",
            websockets_open.clone(),
        );
        registry.register("websockets", "WebSocket tunnels opened, by route", websockets.clone());
        registry.register("requests", "Requests answered, by route and status", requests.clone());
        registry.register(
            "upstream_duration_seconds",
            "Time from sending a request upstream to its response headers",
            upstream_seconds.clone(),
        );
        registry.register(
            "app_requests",
            "Requests admitted by an app's API key, by route and app (the key's name in its Secret)",
            app_requests.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration changes applied (ok) or refused",
            reloads.clone(),
        );
        registry.register(
            "tls_reloads",
            "Listener certificate changes on disk applied (ok) or refused (the old pair keeps serving)",
            tls_reloads.clone(),
        );
        registry.register("config_info", "The live configuration, by content hash", info.clone());
        registry.register("config_routes", "Routes in the live configuration", routes.clone());
        Metrics {
            registry,
            requests,
            upstream_seconds,
            app_requests,
            reloads,
            tls_reloads,
            info,
            routes,
            websockets_open,
            websockets,
            live_hash: Mutex::new(None),
        }
    }

    /// Counts one answered request on a route, through the route's resolved series.
    pub fn route_request(&self, meters: &RouteMeters, route: &Arc<str>, status: u16) {
        let Some(i) = COMMON_STATUSES.iter().position(|s| *s == status) else {
            return self.request(Some(route), status);
        };
        meters.statuses[i]
            .get_or_init(|| {
                let route = RouteLabel(route.clone());
                self.requests.get_or_create(&RequestLabels { route, status }).clone()
            })
            .inc();
    }

    /// Records the time to a route's upstream response headers, through its resolved series.
    pub fn route_upstream_latency(&self, meters: &RouteMeters, route: &Arc<str>, seconds: f64) {
        meters
            .upstream
            .get_or_init(|| {
                let route = RouteLabel(route.clone());
                self.upstream_seconds.get_or_create(&RouteLabels { route }).clone()
            })
            .observe(seconds);
    }

    /// Counts one answered request.
    pub fn request(&self, route: Option<&Arc<str>>, status: u16) {
        let route = RouteLabel(route.cloned().unwrap_or_else(no_route));
        self.requests.get_or_create(&RequestLabels { route, status }).inc();
    }

    /// Counts a request an app's API key admitted.
    pub fn app_request(&self, route: &Arc<str>, app: &Arc<str>) {
        self.app_requests
            .get_or_create(&AppLabels {
                route: RouteLabel(route.clone()),
                app: RouteLabel(app.clone()),
            })
            .inc();
    }

    /// Counts a WebSocket tunnel opened on `route`; the returned gauge is decremented when it closes.
    pub fn websocket_opened(&self, route: &Arc<str>) -> Gauge {
        let labels = RouteLabels {
            route: RouteLabel(route.clone()),
        };
        self.websockets.get_or_create(&labels).inc();
        let open = self.websockets_open.get_or_create(&labels).clone();
        open.inc();
        open
    }

    /// Counts a reload that was applied or refused.
    pub fn reload(&self, applied: bool) {
        self.reloads.get_or_create(&ReloadLabels::of(applied)).inc();
    }

    /// Counts a listener certificate change that was applied or refused.
    pub fn tls_reload(&self, applied: bool) {
        self.tls_reloads.get_or_create(&ReloadLabels::of(applied)).inc();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_routes_resolved_series_are_the_ones_metrics_renders() {
        let metrics = Metrics::new();
        let meters = RouteMeters::default();
        let route: Arc<str> = Arc::from("ns/r");
        metrics.route_request(&meters, &route, 200);
        metrics.request(Some(&route), 200);
        metrics.route_request(&meters, &route, 200);
        metrics.route_request(&meters, &route, 418);
        metrics.route_upstream_latency(&meters, &route, 0.001);
        // After a reload the route's meters are new; the series is the same.
        metrics.route_upstream_latency(&RouteMeters::default(), &route, 0.002);
        let text = metrics.render();
        assert!(
            text.contains("keygate_requests_total{route=\"ns/r\",status=\"200\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("keygate_requests_total{route=\"ns/r\",status=\"418\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("keygate_upstream_duration_seconds_count{route=\"ns/r\"} 2"),
            "{text}"
        );
    }
}
