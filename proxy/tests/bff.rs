//! The backend-for-frontend flow through a real proxy and a real recording upstream: the login
//! answer's token becomes an HttpOnly cookie, the cookie becomes the upstream's header, large
//! tokens stay server-side, encrypted cookies, CORS, CSRF and API-key auth — and none of the
//! secrets involved ever reaches a log line.

mod common;

use std::collections::BTreeMap;

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use keygate_tests::logs;
use keygate_tests::redis::{RedisCluster, RedisOptions, RedisServer, SentinelGroup};

const TOKEN: &str = "eyJhbGciOi.session-token-7Q2x";
const KEY_A: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const KEY_B: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";
const APP_KEY: &str = "app-key-shop-91c3e7";

/// An API whose login answers `{"result": {"session": {"token": ..}, "user": "ann"}}` with the
/// token it is given, 401 for a wrong password, and `upstream ok` for anything else.
async fn api(token: String) -> Upstream {
    Upstream::start(move |seen| {
        let token = token.clone();
        async move {
            if seen.uri.ends_with("/session/start") {
                if seen.body.as_ref() == b"wrong" {
                    let mut r = Response::new(Full::new(Bytes::from_static(b"{\"error\":\"bad password\"}")));
                    *r.status_mut() = StatusCode::UNAUTHORIZED;
                    return r;
                }
                if seen.body.as_ref() == b"no-token" {
                    return Response::new(Full::new(Bytes::from_static(b"{\"result\":{\"user\":\"ann\"}}")));
                }
                let body = serde_json::json!({"result": {"session": {"token": token, "expires": 3600}, "user": "ann"}});
                return Response::builder()
                    .header("content-type", "application/json")
                    .header("set-cookie", "upstream=1")
                    .body(Full::new(Bytes::from(body.to_string())))
                    .unwrap();
            }
            Response::builder()
                .header("location", "/items/1")
                .body(Full::new(Bytes::from_static(b"upstream ok")))
                .unwrap()
        }
    })
    .await
}

/// A cookie translation `login` plus a route `/api` to `upstream`; `cookie`, `extra` and `route`
/// are YAML lines under the translation's `cookie:`, the translation's spec and the route's spec.
fn bff(upstream: &str, cookie: &str, extra: &str, route: &str) -> String {
    format!(
        "apiVersion: keygate.dev/v1alpha1
kind: CookieTranslation
metadata: {{name: login, namespace: default}}
spec:
  cookie:
    name: sid
{cookie}
  header: {{name: Authorization, template: 'Bearer {{token}}'}}
  sessionStart: {{path: /api/session/start, tokenPointer: /result/session/token, responsePointer: /result}}
  logout: {{path: /api/session/logout}}
{extra}
---
{}",
        route_yaml(
            "api",
            "/api",
            upstream,
            &format!("  cookieTranslationRef: login\n{route}")
        )
    )
}

async fn post(url: &str, headers: &[(&str, &str)], body: &'static str) -> Got {
    let mut b = Request::post(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(b.body(Full::new(Bytes::from_static(body.as_bytes()))).unwrap()).await
}

/// The `name=value` pairs the answer sets, with each cookie's attributes.
fn set_cookies(got: &Got) -> Vec<String> {
    got.headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

fn cookie_pair(got: &Got, name: &str) -> String {
    set_cookies(got)
        .iter()
        .find(|c| c.starts_with(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} cookie in {:?}", set_cookies(got)))
        .split(';')
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn login_token_becomes_cookie_and_cookie_becomes_header() {
    logs::capture();
    let up = api(TOKEN.into()).await;
    let cookie = "    hostPrefix: true\n    maxAgeSeconds: 3600";
    let proxy = Proxy::start(&bff(&up.url(), cookie, "", "  auth: cookie")).await;

    let login = post(&proxy.url("/api/session/start"), &[("cookie", "other=1")], "pw").await;
    assert_eq!(login.status, StatusCode::OK);
    let cookies = set_cookies(&login);
    assert_eq!(
        cookies.len(),
        1,
        "only Keygate's cookie, never the upstream's: {cookies:?}"
    );
    let c = &cookies[0];
    assert!(c.starts_with("__Host-sid="), "{c}");
    for attr in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/", "Max-Age=3600"] {
        assert!(c.split("; ").any(|a| a == attr), "{attr} missing from {c}");
    }
    assert!(!c.contains("Domain"), "{c}");
    assert_eq!(
        login.json(),
        serde_json::json!({"session": {"expires": 3600}, "user": "ann"}),
        "the browser gets /result without the token"
    );
    assert!(!String::from_utf8_lossy(&login.body).contains(TOKEN));
    assert_eq!(
        up.last().headers.get("cookie"),
        None,
        "the login call carries no browser cookie"
    );

    let pair = cookie_pair(&login, "__Host-sid");
    let got = get(&proxy.url("/api/items"), &[("cookie", &format!("theme=dark; {pair}"))]).await;
    assert_eq!(got.status, StatusCode::OK);
    let seen = up.last();
    assert_eq!(seen.headers["authorization"], format!("Bearer {TOKEN}"));
    assert!(
        seen.headers.get("cookie").is_none(),
        "the Cookie header is never forwarded"
    );

    let none = get(&proxy.url("/api/items"), &[]).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert_eq!(none.error_code(), "SESSION_REQUIRED");

    let wrong = post(&proxy.url("/api/session/start"), &[], "wrong").await;
    assert_eq!(
        wrong.status,
        StatusCode::UNAUTHORIZED,
        "an upstream error passes through"
    );
    assert_eq!(wrong.body, "{\"error\":\"bad password\"}");
    assert!(set_cookies(&wrong).is_empty(), "and sets no cookie");

    let missing = post(&proxy.url("/api/session/start"), &[], "no-token").await;
    assert_eq!(missing.status, StatusCode::BAD_GATEWAY);
    assert_eq!(missing.error_code(), "SESSION_START_FAILED");
    assert!(
        missing.json()["proxy_error"]["message"]
            .as_str()
            .unwrap()
            .contains("/result/session/token")
    );
    assert!(set_cookies(&missing).is_empty(), "never a cookie with an empty value");

    logs::assert_not_logged(TOKEN);
    logs::assert_not_logged(&pair["__Host-sid=".len()..]);
}

#[tokio::test]
async fn large_token_lives_server_side_and_logout_clears_both() {
    logs::capture();
    let big: String = (0..6000).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    let up = api(big.clone()).await;
    let proxy = Proxy::start(&bff(&up.url(), "", "", "  auth: cookie")).await;

    let login = post(&proxy.url("/api/session/start"), &[], "pw").await;
    assert_eq!(login.status, StatusCode::OK);
    let pair = cookie_pair(&login, "sid");
    assert!(pair.len() < 200, "a handle, not the token: {} bytes", pair.len());
    assert!(!pair.contains(&big[..32]));

    assert_eq!(
        get(&proxy.url("/api/x"), &[("cookie", &pair)]).await.status,
        StatusCode::OK
    );
    assert_eq!(up.last().headers["authorization"], format!("Bearer {big}"));

    let out = post(&proxy.url("/api/session/logout"), &[("cookie", &pair)], "").await;
    assert_eq!(out.status, StatusCode::NO_CONTENT);
    let cleared = set_cookies(&out);
    assert!(
        cleared
            .iter()
            .any(|c| c.starts_with("sid=;") && c.contains("Max-Age=0")),
        "{cleared:?}"
    );
    let calls = up.count();
    let after = get(&proxy.url("/api/x"), &[("cookie", &pair)]).await;
    assert_eq!(
        after.status,
        StatusCode::UNAUTHORIZED,
        "the server-side token is gone too"
    );
    assert_eq!(after.error_code(), "SESSION_EXPIRED");
    assert_eq!(up.count(), calls, "nothing was forwarded");

    // storage: cookie refuses rather than set a cookie browsers drop.
    let proxy = Proxy::start(&bff(&up.url(), "", "  storage: cookie", "")).await;
    let refused = post(&proxy.url("/api/session/start"), &[], "pw").await;
    assert_eq!(refused.status, StatusCode::BAD_GATEWAY);
    assert!(
        refused.json()["proxy_error"]["message"]
            .as_str()
            .unwrap()
            .contains("storage")
    );
    logs::assert_not_logged(&big[..64]);
}

fn keys_secret(keys: &[(&str, &str)]) -> String {
    secret_yaml("cookie-keys", &keys.iter().copied().collect::<BTreeMap<_, _>>())
}

#[tokio::test]
async fn encrypted_cookie_round_trip_tampering_and_rotation() {
    logs::capture();
    let up = api(TOKEN.into()).await;
    let one_key = "  encryptionKeys: [{name: cookie-keys, key: a}]";
    let proxy = Proxy::start(&(keys_secret(&[("a", KEY_A)]) + &bff(&up.url(), "", one_key, "  auth: cookie"))).await;

    let login = post(&proxy.url("/api/session/start"), &[], "pw").await;
    let old = cookie_pair(&login, "sid");
    assert!(
        !old.contains(TOKEN) && !old.contains("t."),
        "the value is sealed: {old}"
    );
    assert_eq!(
        get(&proxy.url("/api/x"), &[("cookie", &old)]).await.status,
        StatusCode::OK
    );
    assert_eq!(up.last().headers["authorization"], format!("Bearer {TOKEN}"));

    let calls = up.count();
    let mut tampered = old.clone().into_bytes();
    let i = tampered.len() - 5;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    for bad in [tampered.as_str(), "sid=t.forged-token", "sid="] {
        let got = get(&proxy.url("/api/x"), &[("cookie", bad)]).await;
        assert_eq!(got.status, StatusCode::UNAUTHORIZED, "{bad}");
        assert!(["SESSION_INVALID", "SESSION_REQUIRED"].contains(&got.error_code().as_str()));
    }
    assert_eq!(up.count(), calls, "a bad cookie is never forwarded");

    // Rotation: a new key first; cookies sealed under the old one keep working.
    let hash = proxy.hash();
    let two_keys = "  encryptionKeys: [{name: cookie-keys, key: b}, {name: cookie-keys, key: a}]";
    proxy.rewrite(&(keys_secret(&[("a", KEY_A), ("b", KEY_B)]) + &bff(&up.url(), "", two_keys, "  auth: cookie")));
    let hash = proxy.wait_for_new_config(&hash).await;
    assert_eq!(
        get(&proxy.url("/api/x"), &[("cookie", &old)]).await.status,
        StatusCode::OK
    );
    let new = cookie_pair(&post(&proxy.url("/api/session/start"), &[], "pw").await, "sid");
    assert_eq!(
        get(&proxy.url("/api/x"), &[("cookie", &new)]).await.status,
        StatusCode::OK
    );

    // The old key retired: its cookies no longer open, the new ones still do.
    let new_only = "  encryptionKeys: [{name: cookie-keys, key: b}]";
    proxy.rewrite(&(keys_secret(&[("b", KEY_B)]) + &bff(&up.url(), "", new_only, "  auth: cookie")));
    proxy.wait_for_new_config(&hash).await;
    let retired = get(&proxy.url("/api/x"), &[("cookie", &old)]).await;
    assert_eq!(retired.error_code(), "SESSION_INVALID");
    assert_eq!(
        get(&proxy.url("/api/x"), &[("cookie", &new)]).await.status,
        StatusCode::OK
    );
    logs::assert_not_logged(KEY_A);
    logs::assert_not_logged(KEY_B);
    logs::assert_not_logged(TOKEN);
}

const CORS: &str = "  exposeHeaders: [{name: Location, as: X-WHIP-Resource}]
  csrf: {mode: doubleSubmit}
  cors:
    allowOrigins: [https://app.example, 'https://*.preview.example']
    allowHeaders: [x-trace]
    allowCredentials: true
    maxAgeSeconds: 300";

async fn preflight(proxy: &Proxy, origin: &str, method: &str, headers: &str) -> Got {
    let req = Request::options(proxy.url("/api/items"))
        .header("origin", origin)
        .header("access-control-request-method", method)
        .header("access-control-request-headers", headers)
        .body(Full::new(Bytes::new()))
        .unwrap();
    send(req).await
}

#[tokio::test]
async fn cors_preflight_and_actual_requests() {
    let up = api(TOKEN.into()).await;
    let proxy = Proxy::start(&bff(&up.url(), "", "", &format!("  auth: cookie\n{CORS}"))).await;

    let ok = preflight(
        &proxy,
        "https://pr-7.preview.example",
        "POST",
        "content-type, x-csrf-token, x-trace",
    )
    .await;
    assert_eq!(ok.status, StatusCode::NO_CONTENT);
    assert_eq!(
        ok.headers["access-control-allow-origin"],
        "https://pr-7.preview.example"
    );
    assert_eq!(ok.headers["access-control-allow-credentials"], "true");
    assert_eq!(ok.headers["access-control-max-age"], "300");
    let allowed = ok.headers["access-control-allow-headers"].to_str().unwrap();
    for h in ["content-type", "x-csrf-token", "x-trace"] {
        assert!(allowed.contains(h), "{h} is derived or configured: {allowed}");
    }
    assert_eq!(up.count(), 0, "preflights never reach the upstream");

    for (origin, method, headers) in [
        ("https://evil.example", "POST", "content-type"),
        ("https://preview.example", "GET", ""),
        ("https://app.example", "POST", "x-not-allowed"),
    ] {
        let refused = preflight(&proxy, origin, method, headers).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{origin} {headers}");
        assert!(refused.headers.get("access-control-allow-origin").is_none());
    }

    let login = post(
        &proxy.url("/api/session/start"),
        &[("origin", "https://app.example")],
        "pw",
    )
    .await;
    assert_eq!(login.status, StatusCode::OK);
    let (sid, csrf) = (cookie_pair(&login, "sid"), cookie_pair(&login, "sid_csrf"));
    // A page on another host cannot read the proxy's CSRF cookie: the token comes in a header too.
    assert_eq!(login.headers["x-keygate-csrf"], &csrf["sid_csrf=".len()..]);
    let exposed = login.headers["access-control-expose-headers"].to_str().unwrap();
    assert!(exposed.contains("x-keygate-csrf"), "{exposed}");
    let cookies = format!("{sid}; {csrf}");
    let got = get(
        &proxy.url("/api/items"),
        &[("origin", "https://app.example"), ("cookie", &cookies)],
    )
    .await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.headers["access-control-allow-origin"], "https://app.example");
    assert_eq!(got.headers["access-control-allow-credentials"], "true");
    assert_eq!(got.headers["x-whip-resource"], "/items/1");
    let exposed = got.headers["access-control-expose-headers"].to_str().unwrap();
    assert!(exposed.contains("x-whip-resource"), "{exposed}");
    assert!(got.headers.get_all("vary").iter().any(|v| v == "Origin"));

    let evil = get(
        &proxy.url("/api/items"),
        &[("origin", "https://evil.example"), ("cookie", &cookies)],
    )
    .await;
    assert!(evil.headers.get("access-control-allow-origin").is_none());
    let error = get(&proxy.url("/api/items"), &[("origin", "https://app.example")]).await;
    assert_eq!(error.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        error.headers["access-control-allow-origin"], "https://app.example",
        "the page can read Keygate's own errors"
    );
    assert_eq!(error.headers["x-keygate-error"], "SESSION_REQUIRED");
    let exposed = error.headers["access-control-expose-headers"].to_str().unwrap();
    for h in ["x-keygate-error", "retry-after"] {
        assert!(exposed.contains(h), "{h}: {exposed}");
    }
}

#[tokio::test]
async fn csrf_double_submit_header_mode_and_origin() {
    let up = api(TOKEN.into()).await;
    let proxy = Proxy::start(&bff(&up.url(), "", "", &format!("  auth: cookie\n{CORS}"))).await;
    let app = ("origin", "https://app.example");
    let login = post(&proxy.url("/api/session/start"), &[app], "pw").await;
    let csrf_cookie = set_cookies(&login)
        .into_iter()
        .find(|c| c.starts_with("sid_csrf="))
        .unwrap();
    assert!(
        !csrf_cookie.contains("HttpOnly"),
        "the page must read it: {csrf_cookie}"
    );
    let (sid, csrf) = (cookie_pair(&login, "sid"), cookie_pair(&login, "sid_csrf"));
    let token = &csrf["sid_csrf=".len()..];
    let cookies = format!("{sid}; {csrf}");

    let calls = up.count();
    let pass = post(
        &proxy.url("/api/items"),
        &[app, ("cookie", &cookies), ("x-csrf-token", token)],
        "{}",
    )
    .await;
    assert_eq!(pass.status, StatusCode::OK);
    for (why, headers) in [
        ("no header", vec![app, ("cookie", cookies.as_str())]),
        (
            "wrong header",
            vec![app, ("cookie", cookies.as_str()), ("x-csrf-token", "guess")],
        ),
        (
            "no cookie",
            vec![app, ("cookie", sid.as_str()), ("x-csrf-token", token)],
        ),
        (
            "other origin",
            vec![
                ("origin", "https://evil.example"),
                ("cookie", cookies.as_str()),
                ("x-csrf-token", token),
            ],
        ),
        ("no origin", vec![("cookie", cookies.as_str()), ("x-csrf-token", token)]),
    ] {
        let got = post(&proxy.url("/api/items"), &headers, "{}").await;
        assert_eq!(got.status, StatusCode::FORBIDDEN, "{why}");
        assert_eq!(got.error_code(), "CSRF_FAILED", "{why}");
    }
    assert_eq!(
        up.count(),
        calls + 1,
        "only the request that passed reached the upstream"
    );

    // Header mode with a Referer instead of an Origin.
    let header_mode = "  auth: cookie\n  csrf: {mode: header, headerName: x-csrf, headerValue: '1'}";
    let proxy = Proxy::start(&bff(&up.url(), "", "", header_mode)).await;
    let host = proxy.addr.to_string();
    let own = format!("http://{host}/page");
    let login = post(
        &proxy.url("/api/session/start"),
        &[("referer", &own), ("x-csrf", "1")],
        "pw",
    )
    .await;
    assert_eq!(login.status, StatusCode::OK);
    let sid = cookie_pair(&login, "sid");
    let good = post(
        &proxy.url("/api/items"),
        &[("referer", &own), ("cookie", &sid), ("x-csrf", "1")],
        "{}",
    )
    .await;
    assert_eq!(good.status, StatusCode::OK);
    let bad = post(&proxy.url("/api/items"), &[("referer", &own), ("cookie", &sid)], "{}").await;
    assert_eq!(bad.error_code(), "CSRF_FAILED");
}

#[tokio::test]
async fn api_key_auth() {
    logs::capture();
    let up = Upstream::ok().await;
    let keys = secret_yaml(
        "app-keys",
        &BTreeMap::from([("shop", APP_KEY), ("blog", "blog-key-1\nblog-key-2")]),
    );
    let spec = "  auth: apiKey\n  apiKey: {keysSecretRef: {name: app-keys}}";
    let proxy = Proxy::start(&(keys + &route_yaml("keyed", "/keyed", &up.url(), spec))).await;

    let ok = get(&proxy.url("/keyed/a"), &[("x-api-key", APP_KEY)]).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert!(
        up.last().headers.get("x-api-key").is_none(),
        "the app's key stays at Keygate"
    );
    assert_eq!(
        get(&proxy.url("/keyed/a"), &[("x-api-key", "blog-key-2")]).await.status,
        StatusCode::OK
    );
    for bad in [vec![], vec![("x-api-key", "nope")], vec![("x-api-key", "")]] {
        let got = get(&proxy.url("/keyed/a"), &bad).await;
        assert_eq!(got.status, StatusCode::UNAUTHORIZED);
        assert_eq!(got.error_code(), "INVALID_API_KEY");
    }
    assert_eq!(up.count(), 2);
    let metrics = proxy.shared.metrics.render();
    assert!(
        metrics.contains(r#"keygate_app_requests_total{route="default/keyed",app="shop"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"app="blog"} 1"#));
    assert!(!metrics.contains(APP_KEY));
    logs::assert_not_logged(APP_KEY);
    logs::assert_not_logged("blog-key-2");
}

/// Two proxies keeping server-side cookie tokens in the Redis at `url`; a handle set by one is
/// honoured by the other. Returns the proxies, the upstream and the session cookie.
async fn tokens_shared_through(url: &str) -> (Proxy, Proxy, Upstream, String) {
    let up = api(TOKEN.into()).await;
    let store = "  storage: server\n  store: redis\n  redisUrl: {name: cookie-keys, key: redis}\n  encryptionKeys: [{name: cookie-keys, key: a}]";
    let yaml = keys_secret(&[("a", KEY_A), ("redis", url)]) + &bff(&up.url(), "", store, "  auth: cookie");
    let (a, b) = (Proxy::start(&yaml).await, Proxy::start(&yaml).await);

    let pair = cookie_pair(&post(&a.url("/api/session/start"), &[], "pw").await, "sid");
    let got = get(&b.url("/api/x"), &[("cookie", &pair)]).await;
    assert_eq!(
        got.status,
        StatusCode::OK,
        "a handle set by one replica is honoured by another"
    );
    assert_eq!(up.last().headers["authorization"], format!("Bearer {TOKEN}"));
    (a, b, up, pair)
}

/// A logout on `b` ends the session on `a` too.
async fn logout_ends_it_everywhere(a: &Proxy, b: &Proxy, pair: &str) {
    assert_eq!(
        post(&b.url("/api/session/logout"), &[("cookie", pair)], "")
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        get(&a.url("/api/x"), &[("cookie", pair)]).await.error_code(),
        "SESSION_EXPIRED"
    );
}

#[tokio::test]
async fn server_side_tokens_on_redis_are_shared_by_replicas_and_sealed() {
    logs::capture();
    let server = RedisServer::start_with(RedisOptions {
        password: Some("redis-pw-cookie-test".into()),
        ..Default::default()
    });
    let (a, b, _up, pair) = tokens_shared_through(&server.url()).await;

    let client = ::redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = ::redis::cmd("KEYS").arg("*").query_async(&mut conn).await.unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let handle = &pair["sid=".len()..];
    assert!(
        !keys[0].contains(handle),
        "keys hold a hash of the handle, not the handle"
    );
    let stored: Vec<u8> = ::redis::cmd("GET").arg(&keys[0]).query_async(&mut conn).await.unwrap();
    assert!(
        !String::from_utf8_lossy(&stored).contains(TOKEN),
        "the store holds ciphertext only"
    );

    logout_ends_it_everywhere(&a, &b, &pair).await;
    logs::assert_not_logged("redis-pw-cookie-test");
    logs::assert_not_logged(TOKEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_tokens_on_sentinel_and_cluster() {
    logs::capture();
    let group = tokio::task::spawn_blocking(|| SentinelGroup::start("cookie-sentinel-pw"))
        .await
        .unwrap();
    let cluster = tokio::task::spawn_blocking(RedisCluster::start).await.unwrap();
    for url in [group.url(), cluster.url()] {
        let (a, b, _up, pair) = tokens_shared_through(&url).await;
        logout_ends_it_everywhere(&a, &b, &pair).await;
    }
    logs::assert_not_logged("cookie-sentinel-pw");
}
