//! Upstream TLS (a private CA from a Secret, unknown issuers and wrong names refused), HTTP/2 by
//! ALPN and by prior knowledge, HTTP/2 from the client, and connection pooling — all against real
//! servers on loopback, with certificates minted at test time.

mod common;

use std::collections::BTreeMap;

use bytes::Bytes;
use common::tls::{Server, TestCa};
use common::*;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

const API_KEY: &str = "sk-live-tls-7d1e0b";

/// Manifests for route `/api` → `upstream` with `protocol`, the CA bundle Secret (when `ca` is
/// given) and an injected API key from a Secret.
fn tls_manifests(upstream: &str, ca: Option<&TestCa>, protocol: &str) -> String {
    let mut yaml = secret_yaml("api-keys", &BTreeMap::from([("payments", API_KEY)]));
    let mut spec = format!(
        "  upstreamProtocol: {protocol}\n  forwardHeaders:\n  - name: x-api-key\n    valueFrom: {{name: api-keys, key: payments}}\n"
    );
    if let Some(ca) = ca {
        let pem = ca.pem();
        yaml += &secret_yaml("upstream-ca", &BTreeMap::from([("ca.crt", pem.as_str())]));
        spec += "  tls:\n    caBundle: {name: upstream-ca, key: ca.crt}\n";
    }
    yaml + &route_yaml("api", "/api", upstream, spec.trim_end())
}

async fn get_within(url: &str) -> Got {
    within("the request through the proxy", get(url, &[])).await
}

fn error_message(got: &Got) -> String {
    got.json()["proxy_error"]["message"]
        .as_str()
        .expect("a proxy_error message")
        .to_string()
}

#[tokio::test]
async fn private_ca_bundle_and_alpn_h2_reach_the_https_upstream() {
    let ca = TestCa::new();
    let (cert, key) = ca.leaf("localhost");
    let up = Server::tls(cert, key).await;
    let proxy = Proxy::start(&tls_manifests(&up.https_url(), Some(&ca), "auto")).await;

    for i in 0..3 {
        let got = get_within(&proxy.url(&format!("/api/charges/{i}?expand=card"))).await;
        assert_eq!(
            got.status,
            StatusCode::OK,
            "request {i}: {:?}",
            String::from_utf8_lossy(&got.body)
        );
        assert_eq!(got.body, "upstream ok");
    }

    let hits = up.hits();
    assert_eq!(hits.len(), 3);
    let last = hits.last().unwrap();
    assert_eq!(
        last.version,
        Version::HTTP_2,
        "ALPN offered h2, so the upstream hop is HTTP/2"
    );
    assert_eq!(last.path_and_query, "/charges/2?expand=card");
    assert_eq!(last.headers["x-api-key"], API_KEY, "the injected key arrives over TLS");
    assert_eq!(up.alpn(), vec![Some("h2".to_string())], "one handshake, ALPN chose h2");
    assert_eq!(up.accepted(), 1, "HTTP/2 requests share one pooled connection");
}

#[tokio::test]
async fn upstream_protocol_http1_speaks_http1_over_tls() {
    let ca = TestCa::new();
    let (cert, key) = ca.leaf("localhost");
    let up = Server::tls(cert, key).await;
    let proxy = Proxy::start(&tls_manifests(&up.https_url(), Some(&ca), "http1")).await;

    let got = get_within(&proxy.url("/api/ping")).await;
    assert_eq!(got.status, StatusCode::OK, "{:?}", String::from_utf8_lossy(&got.body));
    let hits = up.hits();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].version, Version::HTTP_11);
    assert_eq!(hits[0].headers["host"], format!("localhost:{}", up.addr.port()));
    assert_eq!(hits[0].headers["x-api-key"], API_KEY);
    let alpn = up.alpn();
    assert_eq!(alpn.len(), 1, "one handshake");
    assert_ne!(alpn[0].as_deref(), Some("h2"), "h2 was never negotiated");
}

#[tokio::test]
async fn certificate_from_an_unknown_ca_is_refused_with_upstream_tls() {
    let ca = TestCa::new();
    let (cert, key) = ca.leaf("localhost");
    let up = Server::tls(cert, key).await;
    // No caBundle: only the public roots, which never signed this certificate.
    let proxy = Proxy::start(&tls_manifests(&up.https_url(), None, "auto")).await;

    let got = get_within(&proxy.url("/api/ping")).await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    assert_eq!(got.error_code(), "UPSTREAM_TLS");
    assert_eq!(got.json()["proxy_error"]["route"], "default/api");
    let message = error_message(&got);
    assert!(
        message.contains("certificate"),
        "the message names the certificate problem: {message}"
    );
    assert!(
        message.to_lowercase().contains("issuer"),
        "the message says the issuer is unknown: {message}"
    );
    assert!(!message.contains(API_KEY));
    assert!(up.hits().is_empty(), "no request went over an untrusted connection");
}

#[tokio::test]
async fn certificate_for_another_name_is_refused_with_upstream_tls() {
    let ca = TestCa::new();
    let (cert, key) = ca.leaf("other.example");
    let up = Server::tls(cert, key).await;
    let proxy = Proxy::start(&tls_manifests(&up.https_url(), Some(&ca), "auto")).await;

    let got = get_within(&proxy.url("/api/ping")).await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    assert_eq!(got.error_code(), "UPSTREAM_TLS");
    let message = error_message(&got);
    assert!(
        message.contains("certificate") && message.contains("name"),
        "the message says the name does not match: {message}"
    );
    assert!(up.hits().is_empty(), "no request went to a server with the wrong name");
}

#[tokio::test]
async fn upstream_protocol_http2_uses_prior_knowledge_on_cleartext() {
    let up = Upstream::ok().await;
    let proxy = Proxy::start(&route_yaml("h2c", "/h2c", &up.url(), "  upstreamProtocol: http2")).await;

    let got = get_within(&proxy.url("/h2c/stream?x=1")).await;
    assert_eq!(got.status, StatusCode::OK, "{:?}", String::from_utf8_lossy(&got.body));
    assert_eq!(got.body, "upstream ok");
    let seen = up.last();
    assert_eq!(
        seen.version,
        Version::HTTP_2,
        "the upstream was spoken to in HTTP/2 without TLS"
    );
    assert!(seen.uri.ends_with("/stream?x=1"), "{}", seen.uri);
}

#[tokio::test]
async fn http2_client_is_served_and_upstream_gets_http1() {
    let up = Upstream::start(|seen| async move { Response::builder().status(201).body(Full::new(seen.body)).unwrap() })
        .await;
    let spec = "  forwardHeaders:\n  - name: x-api-key\n    valueFrom: {name: api-keys, key: payments}";
    let yaml =
        secret_yaml("api-keys", &BTreeMap::from([("payments", API_KEY)])) + &route_yaml("api", "/api", &up.url(), spec);
    let proxy = Proxy::start(&yaml).await;

    let h2 = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let req = Request::post(proxy.url("/api/items?page=2"))
        .header("content-type", "application/json")
        .header("cookie", "session=browser-secret")
        .header("x-api-key", "forged-by-browser")
        .body(Full::new(Bytes::from_static(b"{\"name\":\"widget\"}")))
        .unwrap();
    let resp = within("the HTTP/2 request", h2.request(req))
        .await
        .expect("HTTP/2 request to the proxy failed");
    assert_eq!(resp.version(), Version::HTTP_2, "the proxy answered in HTTP/2");
    assert_eq!(resp.status(), StatusCode::CREATED);
    let body = within("the HTTP/2 response body", resp.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(body, "{\"name\":\"widget\"}", "the upstream's answer came back whole");

    let seen = up.last();
    assert_eq!(seen.version, Version::HTTP_11);
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.uri, "/items?page=2");
    assert_eq!(seen.body, "{\"name\":\"widget\"}");
    assert_eq!(seen.headers["host"], up.addr.to_string());
    assert_eq!(
        seen.headers["x-forwarded-host"],
        proxy.addr.to_string(),
        "the :authority the client used"
    );
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-api-key"], API_KEY);
    assert_eq!(seen.headers["content-type"], "application/json");
    assert!(seen.headers.get("cookie").is_none());
}

#[tokio::test]
async fn sequential_requests_reuse_pooled_upstream_connections() {
    let up = Server::http1().await;
    let proxy = Proxy::start(&route_yaml("pool", "/pool", &up.http_url(), "")).await;

    for i in 0..20 {
        let got = get_within(&proxy.url(&format!("/pool/{i}"))).await;
        assert_eq!(
            got.status,
            StatusCode::OK,
            "request {i}: {:?}",
            String::from_utf8_lossy(&got.body)
        );
    }
    let hits = up.hits();
    assert_eq!(hits.len(), 20);
    assert!(hits.iter().all(|h| h.version == Version::HTTP_11));
    assert_eq!(hits[19].path_and_query, "/19");
    let accepted = up.accepted();
    assert!(
        accepted <= 2,
        "20 sequential requests opened {accepted} upstream connections; they should reuse the pool"
    );
}
