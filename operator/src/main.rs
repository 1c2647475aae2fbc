//! `keygate-operator`: watches Keygate resources and the Secrets they name, compiles them, and
//! writes the proxies' ConfigMap and Secret and every resource's status. One replica leads.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use keygate_operator::metrics::Metrics;
use keygate_operator::output::Target;
use keygate_operator::run::{Settings, run};
use keygate_proxy::process::{init_logging, shutdown_signal};
use keygate_proxy::server::{Plain, serve_plain};
use kube::Client;
use tokio::sync::watch;

#[derive(Parser)]
#[command(
    name = "keygate-operator",
    version,
    about = "Compiles Keygate resources into the proxy's ConfigMap and Secret."
)]
struct Args {
    /// The operator's own namespace: where the ConfigMap, Secret and Lease live.
    #[arg(long, env = "POD_NAMESPACE", default_value = "keygate-system")]
    namespace: String,
    /// Namespaces to watch, comma-separated. Default: all.
    #[arg(long, env = "KEYGATE_WATCH_NAMESPACES", value_delimiter = ',')]
    watch_namespaces: Vec<String>,
    /// Name of the ConfigMap holding the snapshot.
    #[arg(long, default_value = "keygate-config")]
    config_map: String,
    /// Name of the Secret holding the secret snapshot.
    #[arg(long, default_value = "keygate-secrets")]
    secret: String,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "keygate-operator")]
    lease: String,
    /// This replica's identity in the Lease. Default: POD_NAME, else host name and process id.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Seconds a Lease stays valid without renewal.
    #[arg(long, default_value_t = 15)]
    lease_seconds: u64,
    /// Address of /metrics and /healthz.
    #[arg(long, env = "KEYGATE_METRICS_LISTEN", default_value = "0.0.0.0:8081")]
    metrics_listen: SocketAddr,
    /// Milliseconds to wait after a change for more changes before compiling.
    #[arg(long, default_value_t = 100)]
    debounce_ms: u64,
    /// Log format: `text` or `json`.
    #[arg(long, env = "KEYGATE_LOG_FORMAT", default_value = "text")]
    log_format: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(&args.log_format);

    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let settings = Settings {
        target: Target {
            namespace: args.namespace,
            config_map: args.config_map,
            secret: args.secret,
        },
        watch_namespaces: args.watch_namespaces,
        lease: args.lease,
        identity: identity.clone(),
        lease_duration: Duration::from_secs(args.lease_seconds),
        debounce: Duration::from_millis(args.debounce_ms),
        resync: Duration::from_secs(300),
    };
    let metrics = Arc::new(Metrics::default());
    let (stop_tx, stop) = watch::channel(false);

    let listener = tokio::net::TcpListener::bind(args.metrics_listen)
        .await
        .with_context(|| format!("binding {}", args.metrics_listen))?;
    tracing::info!(identity = %identity, metrics = %listener.local_addr()?, watch = ?settings.watch_namespaces, "keygate-operator started");
    let scrape = metrics.clone();
    let mut admin_stop = stop.clone();
    tokio::spawn(serve_plain(
        listener,
        async move {
            let _ = admin_stop.wait_for(|s| *s).await;
        },
        move |path| match path {
            "/healthz" | "/readyz" => Plain::ok("ok\n"),
            "/metrics" => Plain::metrics(scrape.render()),
            _ => Plain::not_found("/healthz or /metrics"),
        },
    ));
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    });
    run(client, settings, metrics, stop).await;
    Ok(())
}
