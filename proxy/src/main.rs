//! `keygate-proxy`: `serve` runs the data plane on manifests or operator snapshots; `check`
//! validates a folder of manifests offline with the same `compile()` the operator runs.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use keygate_crds::cidr::Cidr;
use keygate_proxy::edge::Edge;
use keygate_proxy::edge::tls::{Certs, MinVersion, TlsFiles};
use keygate_proxy::pipeline::client::TrustedProxies;
use keygate_proxy::process::{init_logging, shutdown_signal};
use keygate_proxy::proxy::{RequestLimits, Shared};
use keygate_proxy::server::{ListenerLimits, bind_workers, serve_admin, serve_worker};
use keygate_proxy::source::kube::KubeSource;
use keygate_proxy::source::{self, Source};
use keygate_proxy::upstream::{ClientCache, enter_worker};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "keygate-proxy",
    version,
    about = "Keeps API secrets out of browsers: a proxy configured by Keygate resources."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the proxy.
    Serve(Box<Serve>),
    /// Validate a folder of manifests; print each problem; exit 1 if any resource is bad.
    Check {
        /// Folder of YAML manifests (Keygate resources and Secrets).
        #[arg(short = 'f', long = "filename")]
        dir: PathBuf,
    },
}

#[derive(clap::Args)]
struct Serve {
    /// Serve Keygate resources and Secrets from YAML in this folder (standalone mode, no cluster).
    #[arg(long, group = "source", required_unless_present_any = ["config_dir", "kube"])]
    manifests: Option<PathBuf>,
    /// Serve the operator's snapshot from this folder (a mounted ConfigMap holding snapshot.json).
    #[arg(long, group = "source")]
    config_dir: Option<PathBuf>,
    /// Folder holding secrets.json (a mounted Secret). Default: --config-dir.
    #[arg(long, requires = "config_dir")]
    secrets_dir: Option<PathBuf>,
    /// Serve the operator's ConfigMap and Secret, watched through the Kubernetes API.
    #[arg(long, group = "source")]
    kube: bool,
    /// Namespace of the operator's ConfigMap and Secret (with --kube).
    #[arg(long, env = "POD_NAMESPACE", default_value = "keygate-system")]
    kube_namespace: String,
    /// Name of the operator's ConfigMap (with --kube).
    #[arg(long, default_value = "keygate-config")]
    config_map: String,
    /// Name of the operator's Secret (with --kube).
    #[arg(long, default_value = "keygate-secrets")]
    secret: String,
    /// Proxy listen address.
    #[arg(long, env = "KEYGATE_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Admin listen address (/healthz, /readyz, /metrics).
    #[arg(long, env = "KEYGATE_ADMIN_LISTEN", default_value = "0.0.0.0:9901")]
    admin_listen: SocketAddr,
    /// Workers: threads with their own event loop and their own listening socket
    /// (`SO_REUSEPORT`). Default: one per core.
    #[arg(long, env = "KEYGATE_WORKERS")]
    workers: Option<usize>,
    /// How often to look for configuration changes, in milliseconds.
    #[arg(long, default_value_t = 500)]
    poll_interval_ms: u64,
    /// Most client connections open at once.
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
    /// Largest request head in bytes; larger requests get 431.
    #[arg(long, default_value_t = 64 * 1024)]
    max_header_bytes: usize,
    /// Seconds to let requests in flight finish on shutdown.
    #[arg(long, default_value_t = 30)]
    drain_timeout_secs: u64,
    /// Serve HTTPS with this PEM certificate chain (`tls.crt` of a mounted kubernetes.io/tls
    /// Secret). Reloaded when it changes, polled like the configuration; the admin port stays
    /// cleartext.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert (`tls.key`).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Oldest TLS version accepted: 1.2 (default) or 1.3.
    #[arg(long, value_name = "1.2|1.3", requires = "tls_cert")]
    tls_min_version: Option<MinVersion>,
    /// Load balancers whose X-Forwarded-For/-Proto/-Host are believed, as CIDRs or addresses
    /// (comma-separated). From any other peer those headers are replaced.
    #[arg(long, env = "KEYGATE_TRUSTED_PROXIES", value_name = "CIDR,...", value_delimiter = ',', value_parser = TrustedProxies::parse_entry)]
    trusted_proxies: Vec<Cidr>,
    /// Require a PROXY protocol v1 or v2 header (as network load balancers send) on every proxy
    /// connection, before TLS; a connection without a valid one is closed.
    #[arg(long)]
    proxy_protocol: bool,
    /// Seconds a client may take to send a request's headers (slowloris); then the connection is closed.
    /// Also the longest an HTTP/1.1 connection stays idle between requests.
    #[arg(long, default_value_t = 20)]
    header_read_timeout_secs: u64,
    /// Seconds a request body may stall while the upstream waits for it; then 408 REQUEST_TIMEOUT.
    #[arg(long, default_value_t = 30)]
    body_idle_timeout_secs: u64,
    /// Seconds a client connection may stay open with no request in flight (HTTP/1.1 and HTTP/2).
    #[arg(long, default_value_t = 75)]
    keepalive_timeout_secs: u64,
    /// Most header fields in a request; more get 431.
    #[arg(long, default_value_t = 100)]
    max_headers: usize,
    /// HTTP/2 streams one connection may have open at once.
    #[arg(long, default_value_t = 100)]
    h2_max_concurrent_streams: u32,
    /// HTTP/2 streams a client may open and cancel before they are served; past it the
    /// connection is closed with GOAWAY (rapid reset, CVE-2023-44487).
    #[arg(long, default_value_t = 20)]
    h2_max_pending_reset_streams: usize,
    /// HTTP/2 streams Keygate may reset for a client's protocol errors before closing the connection.
    #[arg(long, default_value_t = 256)]
    h2_max_local_error_resets: usize,
    /// Log format: `text` or `json`.
    #[arg(long, env = "KEYGATE_LOG_FORMAT", default_value = "text")]
    log_format: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { dir } => check(&dir),
        Command::Serve(args) => {
            init_logging(&args.log_format);
            match run(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn check(dir: &std::path::Path) -> ExitCode {
    let mut files = Vec::new();
    if let Err(e) = source::collect_yaml(dir, &mut files) {
        eprintln!("{e}");
        return ExitCode::from(2);
    }
    match source::compile_manifests(&files) {
        Ok((snapshot, _)) => {
            println!(
                "ok: {} route(s) in {} file(s), snapshot {}",
                snapshot.routes.len(),
                files.len(),
                snapshot.hash()
            );
            ExitCode::SUCCESS
        }
        Err(source::LoadError::Invalid(problems)) => {
            for p in &problems {
                println!("{p}");
            }
            eprintln!("{} problem(s) found", problems.len());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Box<Serve>) -> anyhow::Result<()> {
    // Thread per core: each worker is a current-thread runtime with its own listener, so a
    // request never leaves the thread that accepted it (no work stealing, no cross-thread
    // wake-ups). The first worker also runs the control tasks (config source, admin port).
    let workers = args
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    worker_runtime()?.block_on(serve(*args, workers))
}

fn worker_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
}

async fn serve(args: Serve, workers: usize) -> anyhow::Result<()> {
    let source = match (&args.manifests, &args.config_dir) {
        (Some(dir), _) => Source::Manifests(dir.clone()),
        (None, Some(dir)) => Source::Snapshot {
            config_dir: dir.clone(),
            secrets_dir: args.secrets_dir.clone().unwrap_or_else(|| dir.clone()),
        },
        (None, None) => {
            let client = kube::Client::try_default()
                .await
                .context("connecting to the Kubernetes API")?;
            let source = KubeSource::start(client, &args.kube_namespace, &args.config_map, &args.secret);
            source.ready().await;
            Source::Kube(source)
        }
    };
    let shared = Arc::new(Shared {
        clients: ClientCache::default().for_workers(workers),
        trusted_proxies: TrustedProxies::new(args.trusted_proxies.clone()),
        limits: RequestLimits {
            max_headers: args.max_headers,
            body_idle_timeout: Duration::from_secs(args.body_idle_timeout_secs),
        },
        ..Shared::default()
    });
    let mut edge = Edge {
        proxy_protocol: args.proxy_protocol,
        ..Edge::default()
    };
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let files = TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        };
        let (certs, watch) = Certs::load(files).context("refusing to start")?;
        let config = certs.server_config(args.tls_min_version.unwrap_or_default());
        edge.tls = Some(config.into());
        tokio::spawn(watch.run(shared.clone(), Duration::from_millis(args.poll_interval_ms)));
    }
    let initial = match source::load_once(&source, &shared) {
        Ok((digest, config)) => {
            tracing::info!(hash = %config.hash, routes = config.route_count(), "configuration loaded");
            Some(digest)
        }
        // Standalone mode refuses to start on a bad folder, as nginx does; the operator's
        // snapshot may simply not be written yet, so wait for it with /readyz failing.
        Err(e) if matches!(source, Source::Manifests(_)) => anyhow::bail!("refusing to start: {e}"),
        Err(e) => {
            tracing::warn!(error = %e, "no usable configuration yet; /readyz stays 503 until one loads");
            None
        }
    };

    let mut proxy_listeners = bind_workers(args.listen, workers)
        .with_context(|| format!("binding {}", args.listen))?
        .into_iter();
    let proxy_listener = tokio::net::TcpListener::from_std(proxy_listeners.next().expect("one listener per worker"))?;
    let admin_listener = tokio::net::TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("binding {}", args.admin_listen))?;
    tracing::info!(
        proxy = %proxy_listener.local_addr()?,
        admin = %admin_listener.local_addr()?,
        tls = edge.tls.is_some(),
        workers,
        proxy_protocol = edge.proxy_protocol,
        "listening"
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    tokio::spawn(source::watch(
        source,
        shared.clone(),
        initial,
        Duration::from_millis(args.poll_interval_ms),
    ));
    let admin = tokio::spawn(serve_admin(admin_listener, shared.clone(), stopped(stop_rx.clone())));
    let limits = ListenerLimits {
        max_connections: args.max_connections,
        max_header_bytes: args.max_header_bytes,
        drain: Duration::from_secs(args.drain_timeout_secs),
        header_read_timeout: Duration::from_secs(args.header_read_timeout_secs),
        keepalive_timeout: Duration::from_secs(args.keepalive_timeout_secs),
        h2_max_concurrent_streams: args.h2_max_concurrent_streams,
        h2_max_pending_accept_reset_streams: args.h2_max_pending_reset_streams,
        h2_max_local_error_reset_streams: args.h2_max_local_error_resets,
    };
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut others = Vec::new();
    for (i, listener) in proxy_listeners.enumerate() {
        let (shared, limits, edge, permits, stop) = (
            shared.clone(),
            limits.clone(),
            edge.clone(),
            permits.clone(),
            stopped(stop_rx.clone()),
        );
        let thread = std::thread::Builder::new()
            .name(format!("keygate-worker-{}", i + 1))
            .spawn(move || {
                enter_worker(i + 1);
                worker_runtime()?.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    serve_worker(listener, shared, limits, edge, permits, stop).await;
                    anyhow::Ok(())
                })
            })
            .context("starting a worker thread")?;
        others.push(thread);
    }
    let proxy = tokio::spawn(serve_worker(
        proxy_listener,
        shared,
        limits,
        edge,
        permits,
        stopped(stop_rx),
    ));

    shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = proxy.await;
    for thread in others {
        // Each drains its own connections, as the first worker just did.
        match tokio::task::spawn_blocking(move || thread.join()).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "a worker stopped with an error"),
            Ok(Err(_)) | Err(_) => tracing::warn!("a worker panicked"),
            Ok(Ok(Ok(()))) => {}
        }
    }
    let _ = admin.await;
    Ok(())
}
