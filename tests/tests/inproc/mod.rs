//! In-process operator replicas and `--kube` proxies against the real API server, shared by the
//! end-to-end tests (`mod inproc;` in each).
#![allow(dead_code)] // each test file uses its own part

use std::sync::Arc;
use std::time::Duration;

use keygate_crds::resources::{ProxyRoute, Status};
use keygate_operator::metrics::Metrics;
use keygate_operator::output::Target;
use keygate_operator::run::{Settings, run};
use keygate_proxy::edge::Edge;
use keygate_proxy::proxy::Shared;
use keygate_proxy::server::{ListenerLimits, serve_proxy};
use keygate_proxy::source::{self, Source, kube::KubeSource};
use keygate_tests::cluster::kubeconfig_hint;
use kube::{Api, Client};
use tokio::sync::watch;

pub const CONFIG_MAP: &str = "keygate-config";
pub const SECRET: &str = "keygate-secrets";

pub async fn client() -> Client {
    Client::try_default()
        .await
        .unwrap_or_else(|e| panic!("{e}: {}", kubeconfig_hint()))
}

/// One in-process operator replica.
pub struct Operator {
    pub metrics: Arc<Metrics>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Operator {
    /// A replica writing into `ns` and watching only it.
    pub async fn start(ns: &str, identity: &str) -> Operator {
        Operator::watching(ns, &[ns], identity).await
    }

    /// A replica writing into `ns` and watching `namespaces`.
    pub async fn watching(ns: &str, namespaces: &[&str], identity: &str) -> Operator {
        let settings = Settings {
            target: Target {
                namespace: ns.into(),
                config_map: CONFIG_MAP.into(),
                secret: SECRET.into(),
            },
            watch_namespaces: namespaces.iter().map(|n| n.to_string()).collect(),
            lease: "keygate-operator".into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(3),
            debounce: Duration::from_millis(50),
            resync: Duration::from_secs(300),
        };
        let metrics = Arc::new(Metrics::default());
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(run(client().await, settings, metrics.clone(), rx));
        Operator { metrics, stop, task }
    }

    /// Stops gracefully, releasing the Lease.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }

    /// Dies without releasing anything, as a killed pod would.
    pub fn kill(self) {
        self.task.abort();
    }

    pub fn leads(&self) -> bool {
        self.metrics.leader.get() == 1
    }
}

/// An in-process proxy following the operator's ConfigMap and Secret through the API.
pub async fn kube_proxy(ns: &str) -> (std::net::SocketAddr, Arc<Shared>) {
    let source = KubeSource::start(client().await, ns, CONFIG_MAP, SECRET);
    source.ready().await;
    let source = Source::Kube(source);
    let shared = Arc::new(Shared::default());
    let last = source::load_once(&source, &shared).ok().map(|(d, _)| d);
    tokio::spawn(source::watch(source, shared.clone(), last, Duration::from_millis(500)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_proxy(
        listener,
        shared.clone(),
        ListenerLimits::default(),
        Edge::default(),
        std::future::pending(),
    ));
    (addr, shared)
}

/// The `Ready` condition of a route once it has one for the route's current generation.
pub async fn ready_condition(ns: &str, name: &str) -> Option<(String, String, String)> {
    let r = Api::<ProxyRoute>::namespaced(client().await, ns)
        .get_opt(name)
        .await
        .ok()??;
    let Status {
        conditions,
        observed_generation,
    } = r.status?;
    if observed_generation != r.metadata.generation {
        return None;
    }
    let c = conditions.into_iter().find(|c| c.type_ == "Ready")?;
    Some((c.status, c.reason, c.message))
}
