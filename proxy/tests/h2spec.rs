//! HTTP/2 conformance: h2spec (built by `tests/h2spec-tool/build`) against the proxy's TLS
//! listener (h2 by ALPN) and its plain listener with prior knowledge (h2c), each serving a route
//! to an in-process upstream. Every case must pass except those allowlisted for that listener,
//! each with its reason; a case failing outside the list fails the test, and so does an
//! allowlisted case that passes again (so the list never outlives its reason).

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;

use common::*;

/// h2spec cases (`section/number`) allowed to fail on the plain listener, and why. None are
/// allowed on the TLS listener.
const ALLOWED_FAILURES_H2C: &[(&str, &str)] = &[(
    "http2/3.5/2",
    "invalid connection preface: the plain port serves HTTP/1.1 and h2c side by side (hyper-util's \
     auto builder sniffs the preface), so bytes that are not the HTTP/2 preface are an HTTP/1.1 \
     request, answered 400 and closed rather than closed silently. On the TLS listener ALPN has \
     chosen h2, the connection is HTTP/2 only, and the case passes",
)];

fn h2spec_binary() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/h2spec-tool/bin/h2spec");
    assert!(
        path.exists(),
        "h2spec is not built: run tests/h2spec-tool/build (needs go; .ci/run does it) — looked for {}",
        path.display()
    );
    path
}

/// What one h2spec run found.
#[derive(Debug, Default)]
struct Outcome {
    passed: usize,
    skipped: usize,
    failed: BTreeSet<String>,
}

/// Runs h2spec against `addr` with `extra` flags (e.g. `-t -k` for a TLS listener).
fn run_h2spec(addr: SocketAddr, path: &str, extra: &[&str]) -> Outcome {
    let report = tempfile::NamedTempFile::new().unwrap();
    let out = Command::new(h2spec_binary())
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string(), "-P", path])
        .args(["-o", "2", "-j"])
        .arg(report.path())
        .args(extra)
        .output()
        .expect("running h2spec");
    let xml = std::fs::read_to_string(report.path()).unwrap();
    assert!(
        xml.contains("<testcase"),
        "h2spec wrote no report; stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let outcome = parse_junit(&xml);
    eprintln!(
        "h2spec {extra:?}: {} passed, {} failed, {} skipped; failed: {:?}",
        outcome.passed,
        outcome.failed.len(),
        outcome.skipped,
        outcome.failed
    );
    if !outcome.failed.is_empty() {
        eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    }
    outcome
}

/// Counts h2spec's JUnit report: each `<testcase package="http2/5.1" classname="...">` holds a
/// `<failure>`, an `<error>`, a `<skipped>`, or nothing when it passed. A case is named
/// `package/n`, its position in the package, as h2spec numbers them.
fn parse_junit(xml: &str) -> Outcome {
    let mut outcome = Outcome::default();
    let mut package = String::new();
    let mut n = 0;
    for case in xml.split("<testcase").skip(1) {
        let pkg = attribute(case, "package").unwrap_or_default();
        if pkg != package {
            package = pkg;
            n = 0;
        }
        n += 1;
        let body = case.split("</testcase>").next().unwrap_or(case);
        if body.contains("<failure") || body.contains("<error") {
            outcome.failed.insert(format!("{package}/{n}"));
        } else if body.contains("<skipped") {
            outcome.skipped += 1;
        } else {
            outcome.passed += 1;
        }
    }
    outcome
}

fn attribute(tag: &str, name: &str) -> Option<String> {
    let start = tag.find(&format!("{name}=\""))? + name.len() + 2;
    Some(tag[start..].split('"').next()?.to_string())
}

fn assert_conformant(outcome: &Outcome, allowed: &[(&str, &str)]) {
    let allowed: BTreeSet<String> = allowed.iter().map(|(c, _)| c.to_string()).collect();
    let unexpected: Vec<_> = outcome.failed.difference(&allowed).collect();
    assert!(
        unexpected.is_empty(),
        "h2spec cases failing outside the allowlist: {unexpected:?}"
    );
    let fixed: Vec<_> = allowed.difference(&outcome.failed).collect();
    assert!(
        fixed.is_empty(),
        "allowlisted h2spec cases now pass; drop them from the allowlist: {fixed:?}"
    );
    assert!(outcome.passed > 100, "h2spec ran too few cases: {outcome:?}");
}

/// An upstream answering a little later than at once: several cases poke at a stream after
/// sending its request (WINDOW_UPDATE overflow, frames on half-closed streams) and expect it
/// still open, so an answer racing them would fail a case by chance.
async fn patient_upstream() -> Upstream {
    Upstream::start(|_| async {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        http::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(b"upstream ok")))
    })
    .await
}

/// Runs h2spec against `proxy` off the async runtime and checks the outcome.
async fn check(proxy: &Proxy, up: &Upstream, extra: &'static [&'static str], allowed: &[(&str, &str)]) {
    let addr = proxy.addr;
    let outcome = tokio::task::spawn_blocking(move || run_h2spec(addr, "/api/h2spec", extra))
        .await
        .unwrap();
    assert_conformant(&outcome, allowed);
    assert!(
        up.count() > 0,
        "h2spec's requests reached the upstream through the route"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_passes_h2spec() {
    let up = patient_upstream().await;
    let proxy = Proxy::start(&route_yaml("api", "/api", &up.url(), "")).await;
    check(&proxy, &up, &[], ALLOWED_FAILURES_H2C).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_over_tls_passes_h2spec() {
    use keygate_proxy::edge::Edge;
    use keygate_proxy::edge::tls::{Certs, MinVersion, TlsFiles};
    use keygate_proxy::pipeline::client::TrustedProxies;

    let (cert, key, _) = common::tls::TestCa::new().leaf_pem("localhost");
    let dir = tempfile::tempdir().unwrap();
    let files = TlsFiles {
        cert: dir.path().join("tls.crt"),
        key: dir.path().join("tls.key"),
    };
    std::fs::write(&files.cert, cert).unwrap();
    std::fs::write(&files.key, key).unwrap();
    let (certs, _) = Certs::load(files).unwrap();
    let edge = Edge {
        tls: Some(certs.server_config(MinVersion::default()).into()),
        ..Edge::default()
    };
    let up = patient_upstream().await;
    let proxy = Proxy::start_edge(
        &route_yaml("api", "/api", &up.url(), ""),
        edge,
        TrustedProxies::default(),
    )
    .await;
    // -t: TLS with ALPN h2; -k: the certificate is the test CA's, which h2spec does not know.
    check(&proxy, &up, &["-t", "-k"], &[]).await;
}
