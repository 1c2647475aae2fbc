//! WebSocket tunnels on routes with `websocket: true`. The HTTP/1.1 handshake is an ordinary
//! request through every stage (cookie → header, API key, CSRF/Origin, rate limit, session
//! chain); only after the upstream answers `101 Switching Protocols` do the two connections
//! become one byte pipe. Other routes never see an upgrade: `Upgrade` and `Connection` are
//! hop-by-hop and dropped, so the request goes on as a plain one; `Upgrade: h2c` is never a
//! WebSocket and so never honoured. Tunnels are counted, closed when the proxy shuts down, and closed a drain timeout after a reload changes
//! or removes their route (its keys may have been rotated for a reason).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Method, Response, Version, request};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::sync::{Notify, watch};

use keygate_crds::snapshot::Route;

use crate::body::{self, Body};
use crate::config::{Config, LiveRoute};
use crate::idle::Activity;
use crate::metrics::Metrics;
use crate::pipeline::has_token;

/// True for an HTTP/1.1 WebSocket handshake (RFC 6455 §4.1): `GET` with `Connection: upgrade`
/// and `Upgrade: websocket`.
pub fn is_handshake(parts: &request::Parts) -> bool {
    parts.method == Method::GET
        && parts.version == Version::HTTP_11
        && has_token(&parts.headers, header::CONNECTION, "upgrade")
        && has_token(&parts.headers, header::UPGRADE, "websocket")
}

/// Puts back the upgrade headers that header hygiene removed, on the upstream request or the
/// client's answer.
pub fn restore_upgrade_headers(headers: &mut http::HeaderMap) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
}

/// The client's side of a handshake: its connection once upgraded, and the connection's
/// activity, so the keep-alive limit leaves an open tunnel alone.
pub struct ClientSide {
    upgrade: OnUpgrade,
    activity: Option<Activity>,
}

impl ClientSide {
    /// Takes the pending upgrade out of the request, if hyper offered one.
    pub fn take(parts: &mut request::Parts) -> Option<ClientSide> {
        Some(ClientSide {
            upgrade: parts.extensions.remove::<OnUpgrade>()?,
            activity: parts.extensions.remove::<Activity>(),
        })
    }
}

/// Open tunnels; the signal that closes them all at shutdown; and the configurations applied,
/// so a tunnel whose route a reload removed or changed is closed after the drain timeout.
pub struct Tunnels {
    open: AtomicUsize,
    closing: watch::Sender<bool>,
    drained: Notify,
    configs: watch::Sender<Option<Arc<Config>>>,
    grace_ms: AtomicU64,
}

impl Default for Tunnels {
    fn default() -> Self {
        Tunnels {
            open: AtomicUsize::new(0),
            closing: watch::channel(false).0,
            drained: Notify::new(),
            configs: watch::channel(None).0,
            grace_ms: AtomicU64::new(30_000),
        }
    }
}

impl Tunnels {
    /// Tunnels open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// How long a tunnel whose route a reload changed may go on: the listener's drain timeout.
    pub fn set_grace(&self, grace: Duration) {
        self.grace_ms.store(grace.as_millis() as u64, Ordering::Release);
    }

    /// Tells open tunnels that `config` is now live.
    pub fn reloaded(&self, config: &Arc<Config>) {
        self.configs.send_replace(Some(config.clone()));
    }

    /// Closes every tunnel, and refuses new ones; returns once none is open.
    pub async fn close_all(&self) {
        self.closing.send_replace(true);
        loop {
            let drained = self.drained.notified();
            if self.open() == 0 {
                return;
            }
            drained.await;
        }
    }
}

/// Keeps a tunnel counted while it lives.
struct Open {
    tunnels: Arc<Tunnels>,
    gauge: prometheus_client::metrics::gauge::Gauge,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.gauge.dec();
        if self.tunnels.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.tunnels.drained.notify_waiters();
        }
    }
}

/// What a tunnel was opened under: it lives on while reloads leave these alone.
struct Terms {
    spec: Route,
    inject: Vec<(http::HeaderName, HeaderValue)>,
}

impl Terms {
    fn of(route: &LiveRoute) -> Terms {
        Terms {
            spec: route.spec.clone(),
            inject: route.inject.clone(),
        }
    }

    /// True while `config` serves the route as the tunnel was opened: same spec, same secrets.
    fn hold_in(&self, config: &Config) -> bool {
        config
            .route_by_id(&self.spec.id)
            .is_some_and(|r| r.spec == self.spec && r.inject == self.inject)
    }
}

/// Resolves once a reload has changed or removed the tunnel's route and the grace has passed.
async fn retired(mut configs: watch::Receiver<Option<Arc<Config>>>, terms: Terms, grace: Duration) {
    loop {
        if configs.changed().await.is_err() {
            return std::future::pending().await;
        }
        let live = configs.borrow_and_update().clone();
        if live.is_some_and(|c| !terms.hold_in(&c)) {
            tokio::time::sleep(grace).await;
            return;
        }
    }
}

/// Answers the client with the upstream's `101` (its headers cleaned as any answer's are) and
/// joins the two connections in the background. A tunnel opened during shutdown is closed at once.
pub fn join(
    tunnels: &Arc<Tunnels>,
    metrics: &Metrics,
    route: &LiveRoute,
    client: ClientSide,
    mut upstream: Response<Body>,
) -> Response<Body> {
    let upstream_io = hyper::upgrade::on(&mut upstream);
    let (mut parts, _) = upstream.into_parts();
    crate::pipeline::response::rewrite_headers(route, &mut parts);
    restore_upgrade_headers(&mut parts.headers);
    tunnels.open.fetch_add(1, Ordering::AcqRel);
    let open = Open {
        tunnels: tunnels.clone(),
        gauge: metrics.websocket_opened(&route.id),
    };
    let mut closing = tunnels.closing.subscribe();
    let mut configs = tunnels.configs.subscribe();
    configs.mark_unchanged();
    let grace = Duration::from_millis(tunnels.grace_ms.load(Ordering::Acquire));
    let terms = Terms::of(route);
    let id = route.id.clone();
    tokio::spawn(async move {
        let _busy = client.activity.as_ref().map(Activity::begin);
        let (client_io, upstream_io) = match tokio::try_join!(client.upgrade, upstream_io) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(route = %id, error = %e, "websocket upgrade did not complete");
                return;
            }
        };
        let (mut client_io, mut upstream_io) = (TokioIo::new(client_io), TokioIo::new(upstream_io));
        tokio::select! {
            copied = tokio::io::copy_bidirectional(&mut client_io, &mut upstream_io) => {
                tracing::debug!(route = %id, result = ?copied, "websocket closed");
            }
            _ = closing.wait_for(|c| *c) => {
                tracing::debug!(route = %id, "websocket closed by shutdown");
            }
            () = retired(configs, terms, grace) => {
                tracing::info!(route = %id, "websocket closed: a reload changed or removed its route");
            }
        }
        drop(open);
    });
    Response::from_parts(parts, body::empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: &str, version: Version, headers: &[(&str, &str)]) -> request::Parts {
        let mut b = http::Request::builder().method(method).version(version).uri("/ws");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn only_http11_get_websocket_upgrades_are_handshakes() {
        let ws = [("connection", "keep-alive, Upgrade"), ("upgrade", "WebSocket")];
        assert!(is_handshake(&parts("GET", Version::HTTP_11, &ws)));
        for (method, version, headers) in [
            ("POST", Version::HTTP_11, &ws[..]),
            ("GET", Version::HTTP_10, &ws[..]),
            ("GET", Version::HTTP_2, &ws[..]),
            ("GET", Version::HTTP_11, &[("upgrade", "websocket")][..]),
            ("GET", Version::HTTP_11, &[("connection", "upgrade")][..]),
            (
                "GET",
                Version::HTTP_11,
                &[("connection", "Upgrade, HTTP2-Settings"), ("upgrade", "h2c")][..],
            ),
            (
                "GET",
                Version::HTTP_11,
                &[("connection", "upgraded"), ("upgrade", "websocket")][..],
            ),
        ] {
            assert!(
                !is_handshake(&parts(method, version, headers)),
                "{method} {version:?} {headers:?}"
            );
        }
    }

    #[tokio::test]
    async fn close_all_returns_at_once_when_no_tunnel_is_open() {
        let tunnels = Tunnels::default();
        tokio::time::timeout(Duration::from_secs(1), tunnels.close_all())
            .await
            .unwrap();
        assert!(
            *tunnels.closing.borrow(),
            "new tunnels are closed at once after shutdown"
        );
    }
}
