//! Destinations named by the client, through the real in-process proxy: base-URL semantics
//! against an HTTPS upstream with a private CA, hostile URLs refused before any connection,
//! names whose DNS answers (controlled by the test) point at private addresses or the proxy
//! itself refused, redirects passed back untouched, `minTls` honoured, and fixed routes refusing
//! destination headers.

mod common;

use std::collections::BTreeMap;

use bytes::Bytes;
use common::tls::{Server, TestCa};
use common::*;
use http::{Response, StatusCode};
use http_body_util::Full;
use keygate_proxy::external::resolve::StaticResolver;

/// An `ExternalAllowlist` manifest; `spec` is YAML lines indented by 2.
fn allowlist_yaml(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: keygate.dev/v1alpha1\nkind: ExternalAllowlist\nmetadata: {{name: {name}, namespace: default}}\nspec:\n{spec}\n---\n"
    )
}

/// A `ProxyRoute` whose destination comes from `allowlist`.
fn allowlist_route(name: &str, prefix: &str, allowlist: &str) -> String {
    format!(
        "apiVersion: keygate.dev/v1alpha1\nkind: ProxyRoute\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  pathPrefix: {prefix}\n  allowlistRef: {allowlist}\n---\n"
    )
}

/// An HTTPS upstream on loopback serving a certificate for `cert_name` from a fresh private CA,
/// and a proxy with route `/ext` → allowlist `partners` (header `BT-PROXY-URL`, host
/// `api.partner.test` on the upstream's port, loopback opened by `allowCidrs`, the CA trusted
/// from a Secret). `api.partner.test` resolves to 127.0.0.1 only through the test's resolver.
struct Partner {
    up: Server,
    proxy: Proxy,
}

impl Partner {
    async fn start(cert_name: &str) -> Partner {
        let ca = TestCa::new();
        let (cert, key) = ca.leaf(cert_name);
        let up = Server::tls(cert, key).await;
        let pem = ca.pem();
        let yaml = secret_yaml("partner-ca", &BTreeMap::from([("ca.crt", pem.as_str())]))
            + &allowlist_yaml(
                "partners",
                &format!(
                    "  targetUrlHeader: BT-PROXY-URL\n  hosts: [api.partner.test]\n  ports: [{}]\n  allowCidrs: [127.0.0.0/8]\n  caBundle: {{name: partner-ca, key: ca.crt}}",
                    up.addr.port()
                ),
            )
            + &allowlist_route("ext", "/ext", "partners");
        let resolver = StaticResolver::default().with("api.partner.test", &["127.0.0.1"]);
        let proxy = Proxy::start_resolving(&yaml, resolver).await;
        Partner { up, proxy }
    }

    /// The upstream's base URL by name, with `path`.
    fn target(&self, path: &str) -> String {
        format!("https://api.partner.test:{}{path}", self.up.addr.port())
    }

    async fn get(&self, path: &str, target: Option<&str>) -> Got {
        let headers: Vec<(&str, &str)> = target.map(|t| ("BT-PROXY-URL", t)).into_iter().collect();
        within("the request through the proxy", get(&self.proxy.url(path), &headers)).await
    }
}

fn message(got: &Got) -> String {
    got.json()["proxy_error"]["message"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn allowed_destination_gets_the_request_path_and_query_appended() {
    let p = Partner::start("api.partner.test").await;
    let got = p.get("/ext/foo/bar?param=value", Some(&p.target("/api"))).await;
    assert_eq!(got.status, StatusCode::OK, "{:?}", String::from_utf8_lossy(&got.body));
    assert_eq!(got.body, "upstream ok");
    let got = p.get("/ext/v2/items", Some(&p.target("/api/"))).await;
    assert_eq!(got.status, StatusCode::OK);

    let hits = p.up.hits();
    assert_eq!(hits.len(), 2);
    assert_eq!(hits[0].path_and_query, "/api/foo/bar?param=value");
    assert_eq!(
        hits[1].path_and_query, "/api/v2/items",
        "a trailing / on the base is not doubled"
    );
    assert!(
        hits[0].headers.get("bt-proxy-url").is_none(),
        "the destination header is for Keygate, not the upstream"
    );
}

/// The named base path and the request path both get the canonical spelling, so nothing
/// reaches the destination outside the base path the client named.
#[tokio::test]
async fn destination_paths_are_normalized_like_request_paths() {
    let p = Partner::start("api.partner.test").await;
    let served = [
        ("/ext/x", "/api/v1/../v2", "/api/v2/x"),
        ("/ext/a/../y", "/api/%2e/v1", "/api/v1/y"),
        ("/ext/%2e%2e/ext/z", "/api", "/api/z"),
    ];
    for (path, base, expected) in served {
        let got = p.get(path, Some(&p.target(base))).await;
        assert_eq!(
            got.status,
            StatusCode::OK,
            "{path} on {base}: {:?}",
            String::from_utf8_lossy(&got.body)
        );
        assert_eq!(p.up.hits().last().unwrap().path_and_query, expected, "{path} on {base}");
    }
    let refused = [
        ("/ext/x", "/api/../..", "DESTINATION_INVALID"),
        ("/ext/x", "/api/..%2f..", "DESTINATION_INVALID"),
        ("/ext/x", "/api/a%2Fb", "DESTINATION_INVALID"),
        ("/ext/x", "/api/%252e%252e", "DESTINATION_INVALID"),
        ("/ext/../../etc", "/api", "BAD_PATH"),
        ("/ext/..%2f..%2fetc", "/api", "BAD_PATH"),
    ];
    let before = p.up.hits().len();
    for (path, base, code) in refused {
        let got = p.get(path, Some(&p.target(base))).await;
        assert_eq!(got.status, StatusCode::BAD_REQUEST, "{path} on {base}");
        assert_eq!(got.error_code(), code, "{path} on {base}: {}", message(&got));
    }
    assert_eq!(p.up.hits().len(), before, "nothing refused reached the destination");
}

#[tokio::test]
async fn certificate_for_another_name_is_upstream_tls() {
    let p = Partner::start("other.partner.test").await;
    let got = p.get("/ext/ping", Some(&p.target(""))).await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    assert_eq!(got.error_code(), "UPSTREAM_TLS");
    assert!(message(&got).contains("certificate"), "{}", message(&got));
    assert!(
        p.up.hits().is_empty(),
        "nothing was sent to a server with the wrong name"
    );
}

#[tokio::test]
async fn hostile_destinations_are_refused_before_any_connection() {
    logs::capture();
    let p = Partner::start("api.partner.test").await;
    let port = p.up.addr.port();
    let cases: Vec<(String, StatusCode, &str)> = vec![
        (
            format!("https://127.0.0.1:{port}/api"),
            StatusCode::FORBIDDEN,
            "DESTINATION_NOT_ALLOWED",
        ),
        (
            format!("https://0x7f000001:{port}/"),
            StatusCode::FORBIDDEN,
            "DESTINATION_NOT_ALLOWED",
        ),
        (
            format!("https://2130706433:{port}/"),
            StatusCode::FORBIDDEN,
            "DESTINATION_NOT_ALLOWED",
        ),
        (
            format!("https://[::ffff:127.0.0.1]:{port}/"),
            StatusCode::FORBIDDEN,
            "DESTINATION_NOT_ALLOWED",
        ),
        (
            format!("https://api.partner.test.evil.net:{port}/"),
            StatusCode::FORBIDDEN,
            "DESTINATION_NOT_ALLOWED",
        ),
        (
            format!("https://evil-partner.test:{port}/"),
            StatusCode::FORBIDDEN,
            "DESTINATION_NOT_ALLOWED",
        ),
        (
            format!("http://api.partner.test:{port}/"),
            StatusCode::FORBIDDEN,
            "DESTINATION_NOT_ALLOWED",
        ),
        (
            "https://api.partner.test/".to_string(),
            StatusCode::FORBIDDEN,
            "DESTINATION_NOT_ALLOWED",
        ),
        (
            format!("https://evil@api.partner.test:{port}/"),
            StatusCode::BAD_REQUEST,
            "DESTINATION_INVALID",
        ),
        (
            format!("https://evil.net\\@api.partner.test:{port}/"),
            StatusCode::BAD_REQUEST,
            "DESTINATION_INVALID",
        ),
        (
            format!("https://api%2epartner.test:{port}/"),
            StatusCode::BAD_REQUEST,
            "DESTINATION_INVALID",
        ),
        (
            format!("https://api.partner.test:{port}/v1#x"),
            StatusCode::BAD_REQUEST,
            "DESTINATION_INVALID",
        ),
        (
            "api.partner.test/v1".to_string(),
            StatusCode::BAD_REQUEST,
            "DESTINATION_INVALID",
        ),
    ];
    for (target, status, code) in &cases {
        let got = p.get("/ext/x", Some(target)).await;
        assert_eq!((got.status, got.error_code().as_str()), (*status, *code), "{target}");
        assert_eq!(got.json()["proxy_error"]["route"], "default/ext");
    }

    let missing = p.get("/ext/x", None).await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    assert_eq!(missing.error_code(), "DESTINATION_MISSING");
    assert!(message(&missing).contains("BT-PROXY-URL"), "{}", message(&missing));

    let twice = within(
        "a request with two destination headers",
        get(
            &p.proxy.url("/ext/x"),
            &[("BT-PROXY-URL", &p.target("/a")), ("BT-PROXY-URL", &p.target("/b"))],
        ),
    )
    .await;
    assert_eq!(
        (twice.status, twice.error_code().as_str()),
        (StatusCode::BAD_REQUEST, "DESTINATION_INVALID")
    );

    // The log says which rule refused and for which host, never the URL's path.
    let refused = p.get("/ext/x", Some("https://api.partner.test:1/acct-7f3a9d/v1")).await;
    assert_eq!(refused.error_code(), "DESTINATION_NOT_ALLOWED");
    assert!(message(&refused).contains("port"), "{}", message(&refused));
    let log = logs::captured();
    let line = log
        .lines()
        .find(|l| l.contains("destination refused") && l.contains("the port is not allowed"))
        .expect("a warning naming the port rule");
    assert!(line.contains("WARN") && line.contains("api.partner.test"), "{line}");
    logs::assert_not_logged("acct-7f3a9d");

    assert!(p.up.hits().is_empty(), "no hostile destination reached the upstream");
    assert_eq!(p.up.accepted(), 0, "not even a connection was opened");
}

#[tokio::test]
async fn names_resolving_to_private_addresses_are_refused() {
    logs::capture();
    let yaml = allowlist_yaml("open", "  hosts: ['*.partner.test']") + &allowlist_route("open", "/open", "open");
    let resolver = StaticResolver::default()
        .with("loop.partner.test", &["127.0.0.1"])
        .with("meta.partner.test", &["169.254.169.254"])
        .with("six.partner.test", &["::1"])
        .with("mapped.partner.test", &["::ffff:10.0.0.1"])
        .with("nat64.partner.test", &["64:ff9b::a9fe:a9fe"]);
    let proxy = Proxy::start_resolving(&yaml, resolver).await;
    for (host, rule) in [
        ("loop.partner.test", "loopback"),
        ("meta.partner.test", "link-local (cloud metadata)"),
        ("six.partner.test", "loopback"),
        ("mapped.partner.test", "private (10.0.0.0/8)"),
        ("nat64.partner.test", "link-local (cloud metadata)"),
    ] {
        let target = format!("https://{host}/v1");
        let got = within(
            "the request",
            get(&proxy.url("/open/x?q=1"), &[("X-Target-URL", &target)]),
        )
        .await;
        assert_eq!(got.status, StatusCode::FORBIDDEN, "{host}");
        assert_eq!(got.error_code(), "DESTINATION_RESOLVES_PRIVATE", "{host}");
        let message = message(&got);
        assert!(message.contains(host), "{message}");
        assert!(
            !message.contains("127.0.0.1") && !message.contains("169.254"),
            "the client learns nothing about internal addresses: {message}"
        );
        let log = logs::captured();
        assert!(
            log.lines()
                .any(|l| l.contains("DESTINATION_RESOLVES_PRIVATE") && l.contains(host) && l.contains(rule)),
            "the log names the rule ({rule}) for {host}"
        );
    }
}

#[tokio::test]
async fn one_private_answer_refuses_the_name_even_beside_a_good_one() {
    let ca = TestCa::new();
    let (cert, key) = ca.leaf("good.partner.test");
    let up = Server::tls(cert, key).await;
    let port = up.addr.port();
    let pem = ca.pem();
    let yaml = secret_yaml("partner-ca", &BTreeMap::from([("ca.crt", pem.as_str())]))
        + &allowlist_yaml(
            "partners",
            &format!(
                "  hosts: ['*.partner.test']\n  ports: [{port}]\n  allowCidrs: [127.0.0.0/8]\n  caBundle: {{name: partner-ca, key: ca.crt}}"
            ),
        )
        + &allowlist_route("ext", "/ext", "partners");
    let resolver = StaticResolver::default()
        .with("good.partner.test", &["127.0.0.1"])
        .with("split.partner.test", &["127.0.0.1", "10.0.0.1"])
        .with("split6.partner.test", &["127.0.0.1", "fd00::1"]);
    let proxy = Proxy::start_resolving(&yaml, resolver).await;

    for host in ["split.partner.test", "split6.partner.test"] {
        let target = format!("https://{host}:{port}/");
        let got = within("the request", get(&proxy.url("/ext/x"), &[("X-Target-URL", &target)])).await;
        assert_eq!(got.status, StatusCode::FORBIDDEN, "{host}");
        assert_eq!(got.error_code(), "DESTINATION_RESOLVES_PRIVATE", "{host}");
    }
    assert_eq!(up.accepted(), 0, "no connection for a name with a private answer");

    let target = format!("https://good.partner.test:{port}/base");
    let got = within("the request", get(&proxy.url("/ext/x"), &[("X-Target-URL", &target)])).await;
    assert_eq!(got.status, StatusCode::OK, "{:?}", String::from_utf8_lossy(&got.body));
    assert_eq!(up.hits()[0].path_and_query, "/base/x");
}

#[tokio::test]
async fn the_proxy_never_calls_its_own_listener_even_when_allowed() {
    logs::capture();
    let yaml = |port: u16| {
        allowlist_yaml(
            "self",
            &format!("  hosts: [self.partner.test]\n  schemes: [http]\n  ports: [{port}]\n  allowCidrs: [127.0.0.0/8]"),
        ) + &allowlist_route("loop", "/loop", "self")
    };
    let resolver = StaticResolver::default().with("self.partner.test", &["127.0.0.1"]);
    let proxy = Proxy::start_resolving(&yaml(1), resolver).await;
    let port = proxy.addr.port();
    let old = proxy.hash();
    proxy.rewrite(&yaml(port));
    proxy.wait_for_new_config(&old).await;

    let target = format!("http://self.partner.test:{port}/loop");
    let got = within(
        "the request",
        get(&proxy.url("/loop/again"), &[("X-Target-URL", &target)]),
    )
    .await;
    assert_eq!(got.status, StatusCode::FORBIDDEN);
    assert_eq!(got.error_code(), "DESTINATION_RESOLVES_PRIVATE");
    assert!(
        logs::captured()
            .lines()
            .any(|l| l.contains("self.partner.test") && l.contains("the proxy's own listener")),
        "the log says the address is the proxy's own"
    );
    let metrics = proxy.shared.metrics.render();
    let answered: Vec<&str> = metrics
        .lines()
        .filter(|l| l.contains("requests_total{") && l.contains("route=\"default/loop\""))
        .collect();
    assert_eq!(
        answered,
        ["keygate_requests_total{route=\"default/loop\",status=\"403\"} 1"],
        "one request, answered by the proxy; none looped back through it"
    );
}

#[tokio::test]
async fn redirects_go_back_to_the_client_unfollowed() {
    let up = Upstream::start(|_| async {
        Response::builder()
            .status(302)
            .header("location", "https://elsewhere.example/next")
            .body(Full::new(Bytes::new()))
            .unwrap()
    })
    .await;
    let port = up.addr.port();
    let yaml = allowlist_yaml(
        "plain",
        &format!("  hosts: [plain.partner.test]\n  schemes: [http]\n  ports: [{port}]\n  allowCidrs: [127.0.0.0/8]"),
    ) + &allowlist_route("plain", "/plain", "plain");
    let resolver = StaticResolver::default().with("plain.partner.test", &["127.0.0.1"]);
    let proxy = Proxy::start_resolving(&yaml, resolver).await;

    let target = format!("http://plain.partner.test:{port}/v1");
    let got = within(
        "the request",
        get(&proxy.url("/plain/start"), &[("X-Target-URL", &target)]),
    )
    .await;
    assert_eq!(got.status, StatusCode::FOUND);
    assert_eq!(got.headers["location"], "https://elsewhere.example/next");
    assert_eq!(
        up.count(),
        1,
        "Keygate made one request and did not follow the redirect"
    );
    assert_eq!(up.last().uri, "/v1/start");
}

#[tokio::test]
async fn min_tls_13_refuses_an_upstream_that_only_speaks_tls_12() {
    let ca = TestCa::new();
    let (cert, key) = ca.leaf("old.partner.test");
    let up = Server::tls_versions(cert, key, &[&rustls::version::TLS12]).await;
    let port = up.addr.port();
    let pem = ca.pem();
    let spec = |min: &str| {
        format!(
            "  hosts: [old.partner.test]\n  ports: [{port}]\n  minTls: '{min}'\n  allowCidrs: [127.0.0.0/8]\n  caBundle: {{name: partner-ca, key: ca.crt}}"
        )
    };
    let yaml = secret_yaml("partner-ca", &BTreeMap::from([("ca.crt", pem.as_str())]))
        + &allowlist_yaml("strict", &spec("1.3"))
        + &allowlist_yaml("lenient", &spec("1.2"))
        + &allowlist_route("strict", "/strict", "strict")
        + &allowlist_route("lenient", "/lenient", "lenient");
    let resolver = StaticResolver::default().with("old.partner.test", &["127.0.0.1"]);
    let proxy = Proxy::start_resolving(&yaml, resolver).await;
    let target = format!("https://old.partner.test:{port}");

    let strict = within(
        "the request",
        get(&proxy.url("/strict/x"), &[("X-Target-URL", &target)]),
    )
    .await;
    assert_eq!(strict.status, StatusCode::BAD_GATEWAY);
    assert_eq!(strict.error_code(), "UPSTREAM_TLS");
    assert!(up.hits().is_empty());

    let lenient = within(
        "the request",
        get(&proxy.url("/lenient/x"), &[("X-Target-URL", &target)]),
    )
    .await;
    assert_eq!(
        lenient.status,
        StatusCode::OK,
        "{:?}",
        String::from_utf8_lossy(&lenient.body)
    );
    assert_eq!(up.hits().len(), 1);
}

#[tokio::test]
async fn fixed_routes_refuse_destination_headers() {
    let up = Upstream::ok().await;
    let yaml = allowlist_yaml(
        "partners",
        "  targetUrlHeader: BT-PROXY-URL\n  hosts: [api.partner.test]",
    ) + &route_yaml("fixed", "/fixed", &up.url(), "");
    let proxy = Proxy::start(&yaml).await;
    for header in ["X-Target-URL", "BT-PROXY-URL", "bt-proxy-url"] {
        let got = within(
            "the request",
            get(&proxy.url("/fixed/x"), &[(header, "https://api.partner.test/")]),
        )
        .await;
        assert_eq!(got.status, StatusCode::BAD_REQUEST, "{header}");
        assert_eq!(got.error_code(), "DESTINATION_FIXED", "{header}");
        assert!(
            message(&got).contains(&header.to_ascii_lowercase()),
            "{}",
            message(&got)
        );
    }
    assert_eq!(up.count(), 0);
    let got = within("the request", get(&proxy.url("/fixed/x"), &[])).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(up.count(), 1);
}
