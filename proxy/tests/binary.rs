//! The `keygate-proxy` binary as users run it: `serve --manifests` streaming a 64 MiB upload
//! without buffering it (peak RSS shows it), logs that never carry a secret, and `check`.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sha2::{Digest, Sha256};

const BIN: &str = env!("CARGO_BIN_EXE_keygate-proxy");
const API_KEY: &str = "sk-live-binary-7d1e4f";
const COOKIE_VALUE: &str = "browser-session-93ac";
const QUERY_TOKEN: &str = "query-token-55b2";

/// A running `keygate-proxy serve`, with its log lines collected.
struct Served {
    child: Child,
    proxy: String,
    admin: String,
    logs: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Served {
    fn start(manifests: &str) -> Served {
        Served::start_with(manifests, &[])
    }

    /// [`Served::start`] with more `serve` flags.
    fn start_with(manifests: &str, flags: &[&std::ffi::OsStr]) -> Served {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.yaml"), manifests).unwrap();
        let mut child = Command::new(BIN)
            .args(["serve", "--manifests"])
            .arg(dir.path())
            .args([
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
            ])
            .args(flags)
            .args(if flags.iter().any(|f| *f == "--workers") {
                &[][..]
            } else {
                &["--workers", "1"][..]
            })
            .env("RUST_LOG", "debug")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let logs2 = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && let (Some(p), Some(a)) = (v["fields"]["proxy"].as_str(), v["fields"]["admin"].as_str())
                {
                    let _ = tx.send((p.to_string(), a.to_string()));
                }
                logs2.lock().unwrap().push(line);
            }
        });
        let (proxy, admin) = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("proxy did not start: {:?}", logs.lock().unwrap()));
        Served {
            child,
            proxy: format!("http://{proxy}"),
            admin: format!("http://{admin}"),
            logs,
            _dir: dir,
        }
    }

    /// Peak resident memory of the proxy process, from the kernel's own accounting.
    fn peak_rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kb: u64 = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap();
        kb * 1024
    }

    fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `total` bytes of a deterministic pattern in 64 KiB chunks, generated as they are sent.
struct Pattern {
    sent: u64,
    total: u64,
}

fn pattern_chunk(offset: u64, len: usize) -> Bytes {
    (0..len)
        .map(|i| ((offset + i as u64) % 251) as u8)
        .collect::<Vec<_>>()
        .into()
}

impl http_body::Body for Pattern {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.sent >= self.total {
            return Poll::Ready(None);
        }
        let len = (self.total - self.sent).min(64 * 1024) as usize;
        let chunk = pattern_chunk(self.sent, len);
        self.sent += len as u64;
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_a_64_mib_upload_without_buffering_it() {
    const SIZE: u64 = 64 * 1024 * 1024;
    let up = Upstream::start(|seen| async move {
        let digest = hex::encode(Sha256::digest(&seen.body));
        http::Response::new(http_body_util::Full::new(Bytes::from(format!(
            "{} {digest}",
            seen.body.len()
        ))))
    })
    .await;
    let served = Served::start(&route_yaml("upload", "/upload", &up.url(), "  bodyLimit: 134217728"));
    let before = served.peak_rss_bytes();

    let client: Client<_, Pattern> = Client::builder(TokioExecutor::new()).build_http();
    let req = Request::post(format!("{}/upload/big", served.proxy))
        .header("content-type", "application/octet-stream")
        .body(Pattern { sent: 0, total: SIZE })
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let answer = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();

    let mut expected = Sha256::new();
    let mut offset = 0;
    while offset < SIZE {
        let len = (SIZE - offset).min(64 * 1024) as usize;
        expected.update(pattern_chunk(offset, len));
        offset += len as u64;
    }
    assert_eq!(
        answer,
        format!("{SIZE} {}", hex::encode(expected.finalize())),
        "the upstream received every byte, in order"
    );

    let peak = served.peak_rss_bytes();
    println!(
        "proxy peak RSS: {:.1} MiB before, {:.1} MiB after a 64 MiB upload",
        before as f64 / 1048576.0,
        peak as f64 / 1048576.0
    );
    // A buffered upload would add its 64 MiB to the peak; streaming adds a few buffers.
    assert!(
        peak.saturating_sub(before) < 16 * 1024 * 1024,
        "peak RSS grew from {before} to {peak} bytes: the proxy buffered the upload"
    );
}

#[tokio::test]
async fn logs_never_carry_secrets() {
    let up = Upstream::ok().await;
    let manifests = secret_yaml("keys", &BTreeMap::from([("api", API_KEY)]))
        + &route_yaml(
            "api",
            "/api",
            &up.url(),
            "  forwardHeaders:\n  - name: authorization\n    valueFrom: {name: keys, key: api}",
        )
        + &route_yaml(
            "gone",
            "/gone",
            "http://127.0.0.1:9",
            "  forwardHeaders:\n  - name: x-api-key\n    valueFrom: {name: keys, key: api}",
        );
    let served = Served::start(&manifests);
    let cookie = format!("session={COOKIE_VALUE}");
    for path in [
        format!("/api/x?token={QUERY_TOKEN}"),
        format!("/gone/x?token={QUERY_TOKEN}"),
        format!("/nowhere?token={QUERY_TOKEN}"),
    ] {
        get(
            &format!("{}{path}", served.proxy),
            &[("cookie", &cookie), ("authorization", "Bearer browser-forged")],
        )
        .await;
    }
    assert_eq!(up.last().headers["authorization"], API_KEY);
    let metrics = get(&format!("{}/metrics", served.admin), &[]).await;
    let metrics = String::from_utf8_lossy(&metrics.body).to_string();
    assert!(
        metrics.contains("keygate_requests_total{route=\"default/api\",status=\"200\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("keygate_requests_total{route=\"default/gone\",status=\"502\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("keygate_config_info{hash="), "{metrics}");
    assert!(
        metrics.contains("keygate_upstream_duration_seconds_bucket"),
        "{metrics}"
    );

    tokio::time::sleep(Duration::from_millis(200)).await;
    let logs = served.logs();
    assert!(
        logs.contains("\"status\":200") && logs.contains("UPSTREAM_UNAVAILABLE"),
        "access log lines were written: {logs}"
    );
    for secret in [API_KEY, COOKIE_VALUE, QUERY_TOKEN] {
        assert!(!logs.contains(secret), "a secret reached the logs");
        assert!(!metrics.contains(secret), "a secret reached the metrics");
    }
}

/// Listening sockets on `port` (IPv4), from the kernel's own table.
fn listening_sockets(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f[1].ends_with(&format!(":{port:04X}")) && f[3] == "0A"
        })
        .count()
}

#[tokio::test]
async fn workers_each_listen_serve_and_drain_on_sigterm() {
    let up = Upstream::ok().await;
    let mut served = Served::start_with(
        &route_yaml("api", "/api", &up.url(), ""),
        &["--workers".as_ref(), "3".as_ref()],
    );
    let port: u16 = served.proxy.rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(listening_sockets(port), 3, "one SO_REUSEPORT socket per worker");
    // Fresh connections, so the kernel spreads them over the workers' sockets.
    for i in 0..30 {
        let got = get(&format!("{}/api/{i}", served.proxy), &[("connection", "close")]).await;
        assert_eq!(got.status, StatusCode::OK, "request {i}");
    }
    let metrics = get(&format!("{}/metrics", served.admin), &[]).await;
    assert!(
        String::from_utf8_lossy(&metrics.body)
            .contains("keygate_requests_total{route=\"default/api\",status=\"200\"} 30"),
        "every worker counts into the same metrics"
    );
    let status = Command::new("kill")
        .args(["-TERM", &served.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || {
        let exit = served.child.wait().unwrap();
        (exit, served)
    });
    let (exit, served) = tokio::time::timeout(Duration::from_secs(20), exit)
        .await
        .unwrap()
        .unwrap();
    assert!(
        exit.success(),
        "every worker drained and the process exited cleanly: {exit:?}"
    );
    assert!(served.logs().contains("all connections drained"), "{}", served.logs());
}

#[tokio::test]
async fn admin_ready_after_load() {
    let up = Upstream::ok().await;
    let served = Served::start(&route_yaml("api", "/api", &up.url(), ""));
    assert_eq!(
        get(&format!("{}/healthz", served.admin), &[]).await.status,
        StatusCode::OK
    );
    let ready = get(&format!("{}/readyz", served.admin), &[]).await;
    assert_eq!(ready.status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&ready.body).contains("1 routes"));
}

fn check(manifests: &[(&str, &str)]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in manifests {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let out = Command::new(BIN)
        .args(["check", "-f"])
        .arg(dir.path())
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn check_accepts_a_good_folder() {
    let good = secret_yaml("keys", &BTreeMap::from([("api", API_KEY)]))
        + &route_yaml(
            "api",
            "/api",
            "https://api.example.com/v1",
            "  forwardHeaders:\n  - name: x-api-key\n    valueFrom: {name: keys, key: api}",
        );
    let (code, out, _) = check(&[("routes.yaml", &good)]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("ok: 1 route(s) in 1 file(s)"), "{out}");
    assert!(!out.contains(API_KEY));
}

#[test]
fn check_names_each_bad_resource_field_and_fix() {
    let good = route_yaml("fine", "/fine", "https://api.example.com", "");
    let bad = route_yaml("no-slash", "api", "https://api.example.com", "")
        + &route_yaml("bad-url", "/bad", "ftp://files.example.com", "")
        + &route_yaml("zdup", "/fine", "https://other.example.com", "")
        + &route_yaml(
            "needs-secret",
            "/s",
            "https://api.example.com",
            "  forwardHeaders:\n  - name: x-api-key\n    valueFrom: {name: absent, key: api}",
        )
        + &route_yaml("typo", "/t", "https://api.example.com", "  bodyLimt: 10");
    let (code, out, err) = check(&[("a-good.yaml", &good), ("b-bad.yaml", &bad)]);
    assert_eq!(code, 1, "{out}{err}");
    let expect = [
        "ProxyRoute/default/no-slash: spec.pathPrefix: pathPrefix must start with '/'",
        "ProxyRoute/default/bad-url: spec.upstream: upstream must be an absolute http:// or https:// URL",
        "ProxyRoute/default/zdup: spec.pathPrefix: path prefix /fine is already served by ProxyRoute default/fine",
        "ProxyRoute/default/needs-secret: spec.forwardHeaders[0].valueFrom: Secret default/absent does not exist",
        "ProxyRoute/default/typo: spec.bodyLimt: unknown field",
    ];
    for line in expect {
        assert!(out.lines().any(|l| l.starts_with(line)), "missing {line:?} in:\n{out}");
    }
    assert!(!out.contains("default/fine:"), "the good route has no problem: {out}");
    assert!(err.contains("problem(s) found"));
}

#[test]
fn check_applies_host_rules_offline() {
    let hosts = |h: &str| format!("  hosts: [{h}]");
    let good = route_yaml("shop", "/api", "https://shop.example.com", &hosts("shop.example.com"))
        + &route_yaml("blog", "/api", "https://blog.example.com", &hosts("blog.example.com"));
    let bad = route_yaml("zsquat", "/api", "https://s.example.com", &hosts("SHOP.example.com"))
        + &route_yaml("ported", "/p", "https://p.example.com", &hosts("'p.example.com:8443'"));
    let (code, out, err) = check(&[("a-good.yaml", &good), ("b-bad.yaml", &bad)]);
    assert_eq!(code, 1, "{out}{err}");
    for line in [
        "ProxyRoute/default/zsquat: spec.pathPrefix: path prefix /api on host shop.example.com is already served by ProxyRoute default/shop",
        "ProxyRoute/default/ported: spec.hosts: hosts entries must be DNS names",
    ] {
        assert!(out.lines().any(|l| l.starts_with(line)), "missing {line:?} in:\n{out}");
    }
    assert!(
        !out.contains("default/blog:"),
        "another host's /api is no conflict: {out}"
    );
}

#[test]
fn check_applies_delegations_and_sharing_from_the_folder() {
    let platform = "apiVersion: v1\nkind: Namespace\nmetadata: {name: default, labels: {tenant: 'yes'}}\n---
apiVersion: keygate.dev/v1alpha1\nkind: KeygateDelegation\nmetadata: {name: apps}
spec: {namespaces: [default], hosts: [shop.example.com]}\n---
apiVersion: keygate.dev/v1alpha1\nkind: ExternalAllowlist\nmetadata: {name: partners, namespace: platform}
spec: {hosts: [api.partner.example], allowedNamespaces: {from: Selector, selector: {matchLabels: {tenant: 'yes'}}}}\n---\n";
    let routes = route_yaml("shop", "/api", "https://a.example.com", "  hosts: [shop.example.com]")
        + "apiVersion: keygate.dev/v1alpha1\nkind: ProxyRoute\nmetadata: {name: partner}\nspec: {hosts: [shop.example.com], pathPrefix: /partner, allowlistRef: platform/partners}\n---\n"
        + &route_yaml("blog", "/api", "https://b.example.com", "  hosts: [blog.example.com]");
    let (code, out, err) = check(&[("platform.yaml", platform), ("routes.yaml", &routes)]);
    assert_eq!(code, 1, "{out}{err}");
    let refused: Vec<&str> = out.lines().filter(|l| l.starts_with("ProxyRoute/")).collect();
    assert_eq!(
        refused,
        [
            "ProxyRoute/default/blog: spec.hosts: host blog.example.com with path prefix /api is outside what KeygateDelegation apps (hosts: shop.example.com; path prefixes: any) delegates to namespace default; claim a host and prefix within it, or ask the platform team to extend it"
        ],
        "the shared allowlist admits the labelled namespace; only the undelegated host is refused"
    );
}

#[test]
fn check_refuses_a_missing_folder() {
    let out = Command::new(BIN)
        .args(["check", "-f", "/nonexistent/keygate"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/keygate"));
}

#[tokio::test]
async fn tls_flags_serve_https_on_the_proxy_port_and_keep_admin_plain() {
    let ca = common::tls::TestCa::new();
    let (cert, key, _) = ca.leaf_pem("localhost");
    let files = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = (files.path().join("tls.crt"), files.path().join("tls.key"));
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, &key).unwrap();
    let up = Upstream::ok().await;
    let served = Served::start_with(
        &route_yaml("r", "/r", &up.url(), ""),
        &[
            "--tls-cert".as_ref(),
            cert_file.as_os_str(),
            "--tls-key".as_ref(),
            key_file.as_os_str(),
            "--tls-min-version".as_ref(),
            "1.3".as_ref(),
            "--trusted-proxies".as_ref(),
            "127.0.0.1,::1".as_ref(),
        ],
    );
    let addr = served.proxy.trim_start_matches("http://").to_string();
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let tls = ca
        .client(&[&rustls::version::TLS13], &[b"http/1.1"])
        .connect(rustls_pki_types::ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/r/x")
        .header("host", "localhost")
        .header("x-forwarded-for", "203.0.113.5")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send.send_request(req).await.unwrap().status(), StatusCode::OK);
    let seen = up.last();
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    assert_eq!(seen.headers["x-forwarded-for"], "203.0.113.5, 127.0.0.1");
    assert_eq!(
        get(&format!("{}/healthz", served.admin), &[]).await.status,
        StatusCode::OK
    );
    let logs = served.logs();
    assert!(
        logs.contains("\"client\":\"203.0.113.5\""),
        "the access log shows the resolved client"
    );
    for line in key.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!logs.contains(line), "key material reached the logs");
    }
}

#[test]
fn bad_edge_flags_name_the_flag_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let serve = |flags: &[&str]| {
        let out = Command::new(BIN)
            .args(["serve", "--manifests"])
            .arg(dir.path())
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(flags)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{flags:?} started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = serve(&["--trusted-proxies", "10.0.0.0/8,10.1.2.3/16"]);
    assert!(
        err.contains("--trusted-proxies") && err.contains("write 10.1.0.0/16"),
        "{err}"
    );
    let err = serve(&["--trusted-proxies", "lb.internal"]);
    assert!(
        err.contains("--trusted-proxies") && err.contains("lb.internal"),
        "{err}"
    );
    let err = serve(&[
        "--tls-cert",
        "/nonexistent/tls.crt",
        "--tls-key",
        "/nonexistent/tls.key",
    ]);
    assert!(err.contains("--tls-cert /nonexistent/tls.crt"), "{err}");
    let err = serve(&["--tls-cert", "/nonexistent/tls.crt"]);
    assert!(err.contains("--tls-key"), "{err}");
}

#[test]
fn check_names_transform_expression_errors_by_field() {
    let good = route_yaml(
        "fine",
        "/fine",
        "https://api.example.com",
        "  transform:\n    request:\n    - {op: setHeader, name: x-user, value: \"request.headers['x-user-id']\"}",
    );
    let bad = route_yaml(
        "bad-cel",
        "/bad",
        "https://api.example.com",
        "  transform:\n    request:\n    - {op: setHeader, name: x-a, value: \"request.method = 'GET'\"}\n    response:\n    - {op: setJsonField, pointer: /a, value: 'request.body.x + response.nope()'}",
    );
    let (code, out, err) = check(&[("a-good.yaml", &good), ("b-bad.yaml", &bad)]);
    assert_eq!(code, 1, "{out}{err}");
    let expect = [
        "ProxyRoute/default/bad-cel: spec.transform.request[0].value: CEL syntax error at line 1, column 16",
        "ProxyRoute/default/bad-cel: spec.transform.response[0].value: unknown function nope()",
    ];
    for line in expect {
        assert!(out.lines().any(|l| l.starts_with(line)), "missing {line:?} in:\n{out}");
    }
    assert!(!out.contains("default/fine:"), "the good route has no problem: {out}");
}
