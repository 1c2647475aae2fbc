//! The control plane at scale: `cargo run --release -p keygate-tests --example scale [-- ROUTES [DIR]]`
//! (with DIR, only writes the manifests there as `scale.yaml`, for `keygate-proxy check -f DIR`).
//!
//! Generates ROUTES (default 10,000) ProxyRoutes, each injecting a header from its own Secret and
//! allowing one CORS origin, with a CookieTranslation and an ExternalAllowlist per 100 routes
//! (`keygate_tests::scale`), then prints, each the best of a few runs:
//! - parse: the YAML read as `keygate-proxy check -f` reads it;
//! - compile: `compile()` over the parsed resources (what the operator does on every change);
//! - recompile after one change: compile + build the outputs with one route changed, the
//!   operator's reconcile without its API calls;
//! - outputs: the ConfigMap and Secret built (JSON, gzip) and their stored sizes against the
//!   1 MiB object limit;
//! - proxy apply: the written snapshot files read, decompressed, parsed, built into a live
//!   config and swapped in, as the proxy's config-dir source does on a change;
//! - RSS of this process after each step (peak, from /proc/self/status);
//!
//! then the same as a Markdown table (the lines starting with `|`), which `bench/run` copies
//! into BENCHMARKS.md.

use std::time::{Duration, Instant};

use keygate_crds::{Resources, compile, manifests};
use keygate_operator::output::{self, OBJECT_DATA_LIMIT, SNAPSHOT_GZ_FILE, Target};
use keygate_proxy::proxy::Shared;
use keygate_proxy::source::{self, Source};
use keygate_tests::scale;

const RUNS: usize = 3;

fn best<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut best = Duration::MAX;
    let mut last = None;
    for _ in 0..runs {
        let started = Instant::now();
        let out = f();
        best = best.min(started.elapsed());
        last = Some(out);
    }
    (best, last.expect("at least one run"))
}

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn rss() -> String {
    format!(
        "RSS {:.0} MiB (peak {:.0} MiB)",
        status_kib("VmRSS:") as f64 / 1024.0,
        status_kib("VmHWM:") as f64 / 1024.0
    )
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn main() -> anyhow::Result<()> {
    let routes: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(10_000);
    let yaml = scale::manifests(routes);
    // `scale N DIR` only writes the manifests, e.g. for `keygate-proxy check -f DIR`.
    if let Some(dir) = std::env::args().nth(2) {
        std::fs::create_dir_all(&dir)?;
        std::fs::write(std::path::Path::new(&dir).join("scale.yaml"), &yaml)?;
        println!("wrote {dir}/scale.yaml ({routes} routes)");
        return Ok(());
    }
    println!(
        "routes: {routes}; manifests: {:.1} MiB of YAML",
        yaml.len() as f64 / 1048576.0
    );

    let (took, parsed) = best(1, || manifests::parse([("scale.yaml", yaml.as_str())]));
    anyhow::ensure!(
        parsed.problems.is_empty(),
        "generated manifests do not parse: {:?}",
        parsed.problems
    );
    let resources: Resources = parsed.resources;
    println!(
        "parse:     {} ({} routes, {} secrets, {} cookie translations, {} allowlists); {}",
        ms(took),
        resources.routes.len(),
        resources.secrets.len(),
        resources.cookie_translations.len(),
        resources.allowlists.len(),
        rss()
    );

    let mut table = vec![
        format!("| figure | {routes} routes | target |"),
        "|---|---:|---|".to_string(),
        format!("| parse the YAML (as `check -f`) | {} | |", ms(took)),
    ];
    let (took, compiled) = best(RUNS, || compile(&resources));
    let refused: Vec<_> = compiled.refused().take(3).collect();
    anyhow::ensure!(refused.is_empty(), "generated resources refused: {refused:?}");
    anyhow::ensure!(compiled.snapshot.routes.len() == routes, "not every route compiled");
    println!("compile:   {} (target < 1 s); {}", ms(took), rss());
    table.push(format!("| `compile()` | {} | < 1 s |", ms(took)));
    let compile_rss = status_kib("VmRSS:");

    let target = Target {
        namespace: "keygate-system".into(),
        config_map: "keygate-config".into(),
        secret: "keygate-secrets".into(),
    };
    let (took, outputs) = best(RUNS, || output::build(&compiled, &target));
    let outputs = outputs?;
    let json = compiled.snapshot.to_json().len();
    let secrets_json = compiled.secrets.to_json().len();
    println!("outputs:   {} (snapshot JSON + gzip, secret snapshot JSON)", ms(took));
    println!(
        "snapshot:  {:.2} MiB JSON, {:.0} KiB stored gzipped (base64) = {:.0}% of the {}-byte object limit",
        json as f64 / 1048576.0,
        outputs.stored_bytes as f64 / 1024.0,
        outputs.stored_bytes as f64 * 100.0 / OBJECT_DATA_LIMIT as f64,
        OBJECT_DATA_LIMIT
    );
    table.push(format!(
        "| snapshot stored in the ConfigMap (gzip, base64) | {:.0} KiB = {:.0}% of the object limit | fits one object |",
        outputs.stored_bytes as f64 / 1024.0,
        outputs.stored_bytes as f64 * 100.0 / OBJECT_DATA_LIMIT as f64
    ));
    table.push(format!(
        "| secret snapshot stored in the Secret (base64) | {:.0} KiB = {:.0}% of the object limit | fits one object |",
        secrets_json.div_ceil(3) as f64 * 4.0 / 1024.0,
        secrets_json.div_ceil(3) as f64 * 4.0 * 100.0 / OBJECT_DATA_LIMIT as f64
    ));
    println!(
        "secrets:   {:.0} KiB JSON, {:.0} KiB stored (base64) = {:.0}% of the limit",
        secrets_json as f64 / 1024.0,
        secrets_json.div_ceil(3) as f64 * 4.0 / 1024.0,
        secrets_json.div_ceil(3) as f64 * 4.0 * 100.0 / OBJECT_DATA_LIMIT as f64
    );

    // The operator's reconcile after one changed resource: everything recompiled, outputs rebuilt.
    let mut changed = resources.clone();
    changed.routes[routes / 2].spec.body_limit = Some(4096);
    let (took, _) = best(RUNS, || {
        let compiled = compile(&changed);
        output::build(&compiled, &target).map(|o| o.snapshot_hash)
    });
    println!("one change: {} compile + outputs (target < 1 s)", ms(took));
    table.push(format!(
        "| one route changed: `compile()` + outputs | {} | < 1 s |",
        ms(took)
    ));

    // The proxy: the mounted files as the kubelet writes them, then one load as on a change.
    let dir = tempfile::tempdir()?;
    let gz = &outputs
        .config_map
        .binary_data
        .as_ref()
        .expect("large snapshots are gzipped")[SNAPSHOT_GZ_FILE];
    std::fs::write(dir.path().join(SNAPSHOT_GZ_FILE), &gz.0)?;
    let secrets = &outputs.secret.data.as_ref().expect("secret data")[keygate_crds::snapshot::SECRETS_FILE];
    std::fs::write(dir.path().join(keygate_crds::snapshot::SECRETS_FILE), &secrets.0)?;
    let src = Source::Snapshot {
        config_dir: dir.path().to_path_buf(),
        secrets_dir: dir.path().to_path_buf(),
    };
    drop((changed, resources, compiled, outputs, yaml));
    let shared = Shared::default();
    let (took, loaded) = best(RUNS, || source::load_once(&src, &shared));
    let (_, config) = loaded?;
    anyhow::ensure!(config.route_count() == routes, "the proxy did not load every route");
    println!(
        "proxy apply: {} read + gunzip + parse + build + swap (target < 0.5 s); {}",
        ms(took),
        rss()
    );
    table.push(format!(
        "| proxy apply: read, gunzip, parse, build, swap | {} | < 0.5 s |",
        ms(took)
    ));
    table.push(format!(
        "| RSS of this process: after compiling / after the proxy's load | {:.0} MiB / {:.0} MiB | |",
        compile_rss as f64 / 1024.0,
        status_kib("VmRSS:") as f64 / 1024.0
    ));
    println!();
    for line in table {
        println!("{line}");
    }
    Ok(())
}
