//! TLS on the proxy listener, with a real TLS client trusting a test CA: TLS 1.2 and 1.3 (and
//! 1.3 only), ALPN `h2` and `http/1.1`, certificates rotated on disk the way the kubelet does
//! it (a `..data` symlink swap) while open connections keep working, a broken pair refused with
//! the old one still serving, and a `__Host-` Secure session cookie that works end to end.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::tls::TestCa;
use common::*;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use keygate_proxy::edge::Edge;
use keygate_proxy::edge::tls::{Certs, MinVersion, TlsFiles};
use keygate_proxy::pipeline::client::TrustedProxies;
use keygate_tests::logs;
use rustls::version::{TLS12, TLS13};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const H2: &[u8] = b"h2";
const H1: &[u8] = b"http/1.1";

/// A `kubernetes.io/tls` Secret as the kubelet mounts it: `tls.crt` and `tls.key` are symlinks
/// through `..data`, which is swapped to a new timestamped folder on every update.
struct MountedSecret {
    dir: tempfile::TempDir,
    version: usize,
}

impl MountedSecret {
    fn new(cert: &str, key: &str) -> MountedSecret {
        let mut m = MountedSecret {
            dir: tempfile::tempdir().unwrap(),
            version: 0,
        };
        m.update(cert, key);
        for name in ["tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(Path::new("..data").join(name), m.dir.path().join(name)).unwrap();
        }
        m
    }

    fn update(&mut self, cert: &str, key: &str) {
        self.version += 1;
        let folder = format!("..2026_12_02_{}", self.version);
        let data = self.dir.path().join(&folder);
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("tls.crt"), cert).unwrap();
        std::fs::write(data.join("tls.key"), key).unwrap();
        let tmp = self.dir.path().join("..data_tmp");
        std::os::unix::fs::symlink(&folder, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.path().join("..data")).unwrap();
    }

    fn files(&self) -> TlsFiles {
        TlsFiles {
            cert: self.dir.path().join("tls.crt"),
            key: self.dir.path().join("tls.key"),
        }
    }
}

/// A TLS proxy on `manifests`, its certificate files polled every 20 ms.
async fn tls_proxy(manifests: &str, secret: &MountedSecret, min: MinVersion) -> Proxy {
    let (certs, watch) = Certs::load(secret.files()).unwrap();
    let edge = Edge {
        tls: Some(certs.server_config(min).into()),
        ..Edge::default()
    };
    let proxy = Proxy::start_edge(manifests, edge, TrustedProxies::default()).await;
    tokio::spawn(watch.run(proxy.shared.clone(), Duration::from_millis(20)));
    proxy
}

/// A TLS proxy with a route `/r` to a recording upstream, its CA and its certificate files.
struct Served {
    ca: TestCa,
    _secret: MountedSecret,
    up: Upstream,
    proxy: Proxy,
}

async fn served_on_tls(min: MinVersion) -> Served {
    let ca = TestCa::new();
    let (cert, key, _) = ca.leaf_pem("localhost");
    let secret = MountedSecret::new(&cert, &key);
    let up = Upstream::ok().await;
    let proxy = tls_proxy(&route_yaml("r", "/r", &up.url(), ""), &secret, min).await;
    Served {
        ca,
        _secret: secret,
        up,
        proxy,
    }
}

async fn handshake(
    proxy: &Proxy,
    ca: &TestCa,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(proxy.addr).await?;
    ca.client(versions, alpn)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// The leaf certificate the server presented.
fn presented(tls: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    tls.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// An HTTP/1.1 or HTTP/2 (by the negotiated ALPN) sender on an established TLS connection.
enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    async fn on(tls: TlsStream<TcpStream>) -> Sender {
        let h2 = tls.get_ref().1.alpn_protocol() == Some(H2);
        let io = TokioIo::new(tls);
        if h2 {
            let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
            tokio::spawn(conn);
            Sender::H2(send)
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            Sender::H1(send)
        }
    }

    async fn send(&mut self, mut req: Request<Full<Bytes>>) -> Got {
        let resp = match self {
            Sender::H1(s) => {
                req.headers_mut().insert("host", "localhost".parse().unwrap());
                s.send_request(req).await
            }
            Sender::H2(s) => {
                *req.uri_mut() = format!("https://localhost{}", req.uri()).parse().unwrap();
                *req.version_mut() = Version::HTTP_2;
                s.send_request(req).await
            }
        };
        let (parts, body) = within("a response", async { resp.unwrap() }).await.into_parts();
        Got {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }

    async fn get(&mut self, path: &str) -> Got {
        self.send(Request::get(path).body(Full::new(Bytes::new())).unwrap())
            .await
    }
}

fn negotiated(tls: &TlsStream<TcpStream>) -> (Option<rustls::ProtocolVersion>, Option<Vec<u8>>) {
    let session = tls.get_ref().1;
    (session.protocol_version(), session.alpn_protocol().map(<[u8]>::to_vec))
}

#[tokio::test]
async fn handshakes_with_tls_1_2_and_1_3_and_says_https_upstream() {
    let Served { ca, up, proxy, _secret } = served_on_tls(MinVersion::Tls12).await;
    for (version, expected) in [
        (&TLS12, rustls::ProtocolVersion::TLSv1_2),
        (&TLS13, rustls::ProtocolVersion::TLSv1_3),
    ] {
        let tls = handshake(&proxy, &ca, &[version], &[H1]).await.unwrap();
        assert_eq!(negotiated(&tls), (Some(expected), Some(H1.to_vec())));
        let got = Sender::on(tls).await.get("/r/x").await;
        assert_eq!(got.status, StatusCode::OK);
        let seen = up.last();
        assert_eq!(seen.headers["x-forwarded-proto"], "https");
        assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    }
}

#[tokio::test]
async fn min_version_1_3_refuses_tls_1_2() {
    let Served { ca, proxy, _secret, .. } = served_on_tls(MinVersion::Tls13).await;
    let refused = handshake(&proxy, &ca, &[&TLS12], &[H1]).await;
    assert!(refused.is_err(), "TLS 1.2 must be refused with --tls-min-version 1.3");
    let tls = handshake(&proxy, &ca, &[&TLS13, &TLS12], &[H1]).await.unwrap();
    assert_eq!(negotiated(&tls).0, Some(rustls::ProtocolVersion::TLSv1_3));
    assert_eq!(Sender::on(tls).await.get("/r/x").await.status, StatusCode::OK);
}

#[tokio::test]
async fn alpn_h2_and_http1_are_both_served() {
    let Served { ca, up, proxy, _secret } = served_on_tls(MinVersion::Tls12).await;
    for (offered, expected) in [
        (&[H2, H1][..], Some(H2.to_vec())),
        (&[H1][..], Some(H1.to_vec())),
        (&[][..], None),
    ] {
        let tls = handshake(&proxy, &ca, &[&TLS13], offered).await.unwrap();
        assert_eq!(negotiated(&tls).1, expected);
        let mut sender = Sender::on(tls).await;
        for _ in 0..2 {
            let got = sender.get("/r/alpn").await;
            assert_eq!(got.status, StatusCode::OK, "{offered:?}");
            assert_eq!(up.last().headers["x-forwarded-proto"], "https");
        }
    }
}

/// Reads what the server answers to `bytes` until it closes (or 5 s pass).
async fn answer_to(proxy: &Proxy, bytes: &[u8]) -> Vec<u8> {
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out)).await;
    out
}

/// A TLS 1.1 ClientHello: legacy version 3.2, no `supported_versions`, two CBC suites.
fn tls11_client_hello() -> Vec<u8> {
    let mut hello = vec![0x03, 0x02];
    hello.extend_from_slice(&[7u8; 32]);
    hello.push(0);
    hello.extend_from_slice(&[0x00, 0x04, 0xc0, 0x13, 0x00, 0x2f]);
    hello.extend_from_slice(&[0x01, 0x00]);
    let mut handshake = vec![0x01, 0x00, (hello.len() >> 8) as u8, hello.len() as u8];
    handshake.extend_from_slice(&hello);
    let mut record = vec![0x16, 0x03, 0x02, (handshake.len() >> 8) as u8, handshake.len() as u8];
    record.extend_from_slice(&handshake);
    record
}

#[tokio::test]
async fn cleartext_http_and_tls_1_1_are_refused() {
    let Served { up, proxy, _secret, .. } = served_on_tls(MinVersion::Tls12).await;
    let plain = answer_to(&proxy, b"GET /r/x HTTP/1.1\r\nhost: localhost\r\n\r\n").await;
    assert!(!plain.starts_with(b"HTTP/"), "cleartext HTTP got an HTTP answer");
    let old = answer_to(&proxy, &tls11_client_hello()).await;
    // A TLS alert (content type 21) or a bare close; never a ServerHello (22).
    assert!(old.is_empty() || old[0] == 0x15, "TLS 1.1 got {old:?}");
    assert_eq!(up.count(), 0);
}

fn tls_reloads(proxy: &Proxy, result: &str) -> u64 {
    let metrics = proxy.shared.metrics.render();
    let line = format!("keygate_tls_reloads_total{{result=\"{result}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&line))
        .map_or(0, |n| n.parse().unwrap())
}

#[tokio::test]
async fn rotation_reaches_new_connections_while_open_ones_keep_working_and_a_broken_pair_is_refused() {
    logs::capture();
    let ca = TestCa::new();
    let (cert_a, key_a, der_a) = ca.leaf_pem("localhost");
    let (cert_b, key_b, der_b) = ca.leaf_pem("localhost");
    let (cert_c, key_c, _) = ca.leaf_pem("localhost");
    let mut secret = MountedSecret::new(&cert_a, &key_a);
    let up = Upstream::ok().await;
    let proxy = tls_proxy(&route_yaml("r", "/r", &up.url(), ""), &secret, MinVersion::Tls12).await;

    let before = handshake(&proxy, &ca, &[&TLS13], &[H1]).await.unwrap();
    assert_eq!(presented(&before), der_a);
    let mut open = Sender::on(before).await;
    assert_eq!(open.get("/r/before").await.status, StatusCode::OK);

    secret.update(&cert_b, &key_b);
    let swapped = Instant::now();
    let latency = within("the new certificate to be served", async {
        loop {
            let tls = handshake(&proxy, &ca, &[&TLS13], &[H1]).await.unwrap();
            if presented(&tls) == der_b {
                return swapped.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    eprintln!("certificate reload latency with a 20 ms poll: {latency:?}");
    assert_eq!(tls_reloads(&proxy, "ok"), 1);
    // The connection opened before the swap goes on, on the session it negotiated.
    assert_eq!(open.get("/r/after").await.status, StatusCode::OK);
    assert_eq!(up.last().uri, "/after");

    // Certificate C with B's key, then a key file that is not PEM: both refused, B serves on.
    secret.update(&cert_c, &key_b);
    within("the mismatched pair to be refused", async {
        while tls_reloads(&proxy, "refused") < 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    secret.update(
        &cert_c,
        "-----BEGIN PRIVATE KEY-----\nnot base64 at all\n-----END PRIVATE KEY-----\n",
    );
    within("the broken key to be refused", async {
        while tls_reloads(&proxy, "refused") < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let after = handshake(&proxy, &ca, &[&TLS12], &[H2]).await.unwrap();
    assert_eq!(
        presented(&after),
        der_b,
        "a broken pair must leave the old certificate serving"
    );
    assert_eq!(Sender::on(after).await.get("/r/still").await.status, StatusCode::OK);
    assert_eq!(open.get("/r/still-open").await.status, StatusCode::OK);
    assert_eq!(tls_reloads(&proxy, "ok"), 1);

    let logged = logs::captured();
    assert!(
        logged.contains("does not belong to the certificate"),
        "the refusal says why"
    );
    assert!(
        logged.contains("holds no usable PEM private key"),
        "the refusal says why"
    );
    for key in [&key_a, &key_b, &key_c] {
        for line in key.lines().filter(|l| !l.starts_with("-----")) {
            logs::assert_not_logged(line);
        }
    }
    logs::assert_not_logged("not base64 at all");
}

#[tokio::test]
async fn start_errors_name_the_file_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let missing = TlsFiles {
        cert: dir.path().join("tls.crt"),
        key: dir.path().join("tls.key"),
    };
    let err = Certs::load(missing.clone()).unwrap_err().to_string();
    assert!(
        err.contains("--tls-cert") && err.contains(&missing.cert.display().to_string()),
        "{err}"
    );
    std::fs::write(&missing.cert, "not a certificate").unwrap();
    std::fs::write(&missing.key, "not a key").unwrap();
    let err = Certs::load(missing.clone()).unwrap_err().to_string();
    assert!(err.contains("no PEM certificate") && err.contains("tls.crt"), "{err}");
    let ca = TestCa::new();
    let (cert, _, _) = ca.leaf_pem("localhost");
    std::fs::write(&missing.cert, cert).unwrap();
    let err = Certs::load(missing).unwrap_err().to_string();
    assert!(
        err.contains("--tls-key") && err.contains("no usable PEM private key"),
        "{err}"
    );
}

/// An API whose login answers a token, and otherwise echoes nothing.
async fn login_api() -> Upstream {
    Upstream::start(|seen| async move {
        let body = if seen.uri.ends_with("/session/start") {
            r#"{"result": {"session": {"token": "tls-session-token-41f9"}, "user": "ann"}}"#
        } else {
            "upstream ok"
        };
        http::Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    })
    .await
}

#[tokio::test]
async fn host_prefixed_secure_cookie_works_end_to_end_over_tls() {
    logs::capture();
    let ca = TestCa::new();
    let (cert, key, _) = ca.leaf_pem("localhost");
    let secret = MountedSecret::new(&cert, &key);
    let up = login_api().await;
    let manifests = format!(
        "apiVersion: keygate.dev/v1alpha1
kind: CookieTranslation
metadata: {{name: login, namespace: default}}
spec:
  cookie: {{name: sid, hostPrefix: true, maxAgeSeconds: 3600}}
  header: {{name: Authorization, template: 'Bearer {{token}}'}}
  sessionStart: {{path: /api/session/start, tokenPointer: /result/session/token, responsePointer: /result}}
---
{}",
        route_yaml(
            "api",
            "/api",
            &up.url(),
            "  cookieTranslationRef: login\n  auth: cookie"
        )
    );
    let proxy = tls_proxy(&manifests, &secret, MinVersion::Tls12).await;
    let tls = handshake(&proxy, &ca, &[&TLS13], &[H2, H1]).await.unwrap();
    let mut browser = Sender::on(tls).await;

    let login = browser
        .send(
            Request::post("/api/session/start")
                .body(Full::new(Bytes::from_static(b"pw")))
                .unwrap(),
        )
        .await;
    assert_eq!(login.status, StatusCode::OK);
    let set = login.headers["set-cookie"].to_str().unwrap().to_string();
    assert!(set.starts_with("__Host-sid="), "{set}");
    for attr in ["; Secure", "; HttpOnly", "; Path=/"] {
        assert!(set.contains(attr), "{set} lacks {attr}");
    }
    assert!(!set.contains("Domain"), "__Host- cookies carry no Domain: {set}");
    let pair = set.split(';').next().unwrap().to_string();

    let call = browser
        .send(
            Request::get("/api/items")
                .header("cookie", &pair)
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(call.status, StatusCode::OK);
    let seen = up.last();
    assert_eq!(seen.headers["authorization"], "Bearer tls-session-token-41f9");
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    assert!(seen.headers.get("cookie").is_none());
    logs::assert_not_logged("tls-session-token-41f9");
    logs::assert_not_logged(pair.split_once('=').unwrap().1);
}

#[tokio::test]
async fn proxy_protocol_header_comes_before_tls() {
    let ca = TestCa::new();
    let (cert, key, _) = ca.leaf_pem("localhost");
    let secret = MountedSecret::new(&cert, &key);
    let (certs, _watch) = Certs::load(secret.files()).unwrap();
    let up = Upstream::ok().await;
    let edge = Edge {
        tls: Some(certs.server_config(MinVersion::Tls12).into()),
        proxy_protocol: true,
        ..Edge::default()
    };
    let proxy = Proxy::start_edge(&route_yaml("r", "/r", &up.url(), ""), edge, TrustedProxies::default()).await;
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(b"PROXY TCP4 198.51.100.20 10.0.0.1 40000 443\r\n")
        .await
        .unwrap();
    let tls = ca
        .client(&[&TLS13], &[H1])
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(Sender::on(tls).await.get("/r/pp").await.status, StatusCode::OK);
    let seen = up.last();
    assert_eq!(seen.headers["x-forwarded-for"], "198.51.100.20");
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
}
