//! `keygate-operator`: watches Keygate resources and the Secrets they name, compiles them, and
//! writes the proxies' ConfigMap and Secret and every resource's status. One replica leads.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use k8s_openapi::api::coordination::v1::Lease;
use keygate_operator::leader::Election;
use keygate_operator::metrics::Metrics;
use keygate_operator::output::Target;
use keygate_operator::reconcile::{Context, FIELD_MANAGER, error_policy, reconcile};
use keygate_operator::watch;
use keygate_proxy::server::{Plain, serve_plain};
use kube::runtime::events::{Recorder, Reporter};
use kube::{Api, Client};
use tokio::sync::{Notify, watch as channel};

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
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if args.log_format == "json" {
        logs.json().init()
    } else {
        logs.init()
    }

    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let notify = Arc::new(Notify::new());
    let ctx = Arc::new(Context {
        client: client.clone(),
        target: Target {
            namespace: args.namespace.clone(),
            config_map: args.config_map,
            secret: args.secret,
        },
        stores: watch::start(&client, &args.watch_namespaces, &notify),
        metrics: Metrics::default(),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.into(),
                instance: Some(identity.clone()),
            },
        ),
    });

    let (stop_tx, stop_rx) = channel::channel(false);
    let (leading_tx, mut leading) = channel::channel(false);
    let election = Election {
        api: Api::<Lease>::namespaced(client.clone(), &args.namespace),
        name: args.lease,
        identity: identity.clone(),
        duration: Duration::from_secs(args.lease_seconds),
        renew: Duration::from_secs((args.lease_seconds / 3).max(1)),
    };
    let election = tokio::spawn(election.run(leading_tx, stop_rx.clone()));

    let listener = tokio::net::TcpListener::bind(args.metrics_listen)
        .await
        .with_context(|| format!("binding {}", args.metrics_listen))?;
    tracing::info!(identity = %identity, metrics = %listener.local_addr()?, watch = ?args.watch_namespaces, "keygate-operator started");
    let metrics_ctx = ctx.clone();
    let mut admin_stop = stop_rx.clone();
    tokio::spawn(serve_plain(
        listener,
        async move {
            let _ = admin_stop.wait_for(|s| *s).await;
        },
        move |path| match path {
            "/healthz" | "/readyz" => Plain::ok("ok\n"),
            "/metrics" => Plain::metrics(metrics_ctx.metrics.render()),
            _ => Plain::not_found("/healthz or /metrics"),
        },
    ));

    let mut stop = stop_rx;
    let signal = tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let resync = Duration::from_secs(300);
    loop {
        tokio::select! {
            () = notify.notified() => {}
            _ = leading.changed() => {}
            () = tokio::time::sleep(resync) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        let leads = *leading.borrow_and_update();
        ctx.metrics.leader.set(i64::from(leads));
        if !leads {
            continue;
        }
        // Let a burst of changes (kubectl apply -f dir/) settle into one compile.
        tokio::time::sleep(Duration::from_millis(args.debounce_ms)).await;
        ctx.stores.ready().await;
        match reconcile(&ctx).await {
            Ok(outcome) => {
                ctx.metrics.reconciled(true);
                tracing::debug!(?outcome, "reconciled");
            }
            Err(e) => {
                tokio::time::sleep(error_policy(&e, &ctx)).await;
                notify.notify_one();
            }
        }
    }
    tracing::info!("shutting down");
    let _ = election.await;
    let _ = signal.await;
    Ok(())
}

async fn shutdown_signal() {
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("installing SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
