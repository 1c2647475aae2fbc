//! The session chain end to end, on real proxies, a real upstream and a real redis-server: the
//! protocol and every error code, replays and copied requests refused, exactly one winner among
//! concurrent identical requests (also across two proxies sharing Redis), Redis outages that
//! only take chain routes down, rate limits, and no session id, link or key in the logs.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use keygate_tests::redis::RedisServer;
use sha2::{Digest, Sha256};

const SHOP_KEY: &str = "shop-key-0123456789";
const SHOP_OLD_KEY: &str = "shop-key-before-rotation";
const BLOG_KEY: &str = "blog-key-9876543210";

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// Where sessions live in a test setup.
enum StoreAt<'a> {
    Memory,
    Redis(&'a RedisServer),
}

/// Two policies (`web`: 30 s TTL, create path inside the `/api` prefix; `short`: 300 ms TTL),
/// a chain route per policy, a chain route whose upstream is down, and a plain route.
/// `rate_limit` is YAML added to the `/api` route's spec.
fn manifests(up: &Upstream, store: StoreAt, rate_limit: &str) -> String {
    let store_yaml = match store {
        StoreAt::Memory => "  store: memory\n".to_string(),
        StoreAt::Redis(_) => "  store: redis\n  redisUrl: {name: redis, key: url}\n".to_string(),
    };
    let mut yaml = secret_yaml(
        "app-keys",
        &BTreeMap::from([
            ("shop", format!("{SHOP_KEY}\n{SHOP_OLD_KEY}\n").as_str()),
            ("blog", BLOG_KEY),
        ]),
    );
    if let StoreAt::Redis(redis) = store {
        yaml += &secret_yaml("redis", &BTreeMap::from([("url", redis.url().as_str())]));
    }
    for (name, create, ttl) in [("web", "/api/session", "30s"), ("short", "/short-session", "300ms")] {
        yaml += &format!(
            "apiVersion: keygate.dev/v1alpha1\nkind: SessionChainPolicy\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  createPath: {create}\n  apiKeysSecretRef: {{name: app-keys}}\n  ttl: {ttl}\n{store_yaml}---\n"
        );
    }
    let chain = |policy: &str| format!("  auth: sessionChain\n  sessionChainRef: {policy}\n");
    yaml + &route_yaml("api", "/api", &up.url(), &(chain("web") + rate_limit))
        + &route_yaml("short", "/short", &up.url(), &chain("short"))
        + &route_yaml("down", "/down", "http://127.0.0.1:9", &chain("web"))
        + &route_yaml("plain", "/plain", &up.url(), "")
}

async fn post_create(proxy: &Proxy, path: &str, key: Option<&str>, body: &str) -> Got {
    let mut req = Request::post(proxy.url(path)).header("content-type", "application/json");
    if let Some(key) = key {
        req = req.header("x-api-key", key);
    }
    send(req.body(Full::new(Bytes::from(body.to_string()))).unwrap()).await
}

/// A browser session as the SDK will keep it.
#[derive(Clone)]
struct Session {
    key: String,
    id: String,
    last: String,
    /// Every link sent so far, for replays and the log check.
    sent: Vec<String>,
}

impl Session {
    async fn create(proxy: &Proxy, path: &str, key: &str) -> Session {
        let got = post_create(
            proxy,
            path,
            Some(key),
            r#"{"machine_id": "6f1c1c36-2a52-4c61-9d0e-0b7a2b1c9e11"}"#,
        )
        .await;
        assert_eq!(got.status, StatusCode::OK, "{:?}", String::from_utf8_lossy(&got.body));
        assert_eq!(got.headers["cache-control"], "no-store");
        let id = got.json()["session_id"].as_str().expect("a session_id").to_string();
        Session {
            key: key.into(),
            last: id.clone(),
            id,
            sent: Vec::new(),
        }
    }

    fn next(&self) -> String {
        sha256_hex(&self.last)
    }

    /// Sends `link` on `path` with this session's id and key; moves on when Keygate says the
    /// chain advanced.
    async fn send_link(&mut self, proxy: &Proxy, path: &str, link: &str) -> Got {
        let got = get(
            &proxy.url(path),
            &[
                ("x-api-key", &self.key),
                ("x-session-id", &self.id),
                ("x-request-id", link),
            ],
        )
        .await;
        self.sent.push(link.to_string());
        if got.headers.get("x-keygate-chain").is_some_and(|v| v == "advanced") {
            // The chain continues from the link's value, however its hex digits were cased.
            self.last = link.to_ascii_lowercase();
        }
        got
    }

    async fn call(&mut self, proxy: &Proxy, path: &str) -> Got {
        let link = self.next();
        self.send_link(proxy, path, &link).await
    }
}

fn refused(got: &Got, status: StatusCode, code: &str) {
    assert_eq!(got.status, status, "{:?}", String::from_utf8_lossy(&got.body));
    assert_eq!(got.error_code(), code);
    assert!(
        got.headers.get("x-keygate-chain").is_none(),
        "a refused request does not advance"
    );
}

/// The whole protocol against one store kind; returns every secret that must not be logged.
async fn protocol(store: StoreAt<'_>) -> Vec<String> {
    let up = Upstream::ok().await;
    let proxy = Proxy::start(&manifests(&up, store, "")).await;

    let mut s = Session::create(&proxy, "/api/session", SHOP_KEY).await;
    assert_eq!(
        up.count(),
        0,
        "the create path is Keygate's own, even inside a route prefix"
    );
    for i in 0..5 {
        let got = s.call(&proxy, &format!("/api/items/{i}")).await;
        assert_eq!(got.status, StatusCode::OK, "{:?}", String::from_utf8_lossy(&got.body));
        assert_eq!(got.headers["x-keygate-chain"], "advanced");
        let seen = up.last();
        assert_eq!(seen.uri, format!("/items/{i}"));
        for h in ["x-api-key", "x-session-id", "x-request-id"] {
            assert!(!seen.headers.contains_key(h), "{h} reached the upstream");
        }
    }
    assert_eq!(up.count(), 5);

    // Every earlier request, replayed as copied: refused, and the chain is not disturbed.
    for link in s.sent.clone() {
        refused(
            &s.clone().send_link(&proxy, "/api/x", &link).await,
            StatusCode::UNAUTHORIZED,
            "REQUEST_OUT_OF_SESSION",
        );
    }
    // Uppercase hex is the same link.
    let upper = s.next().to_uppercase();
    assert_eq!(s.send_link(&proxy, "/api/x", &upper).await.status, StatusCode::OK);

    // Another session's link is not this session's.
    let mut other = Session::create(&proxy, "/api/session", SHOP_OLD_KEY).await;
    let foreign = other.next();
    refused(
        &s.clone().send_link(&proxy, "/api/x", &foreign).await,
        StatusCode::UNAUTHORIZED,
        "REQUEST_OUT_OF_SESSION",
    );
    assert_eq!(
        other.call(&proxy, "/api/x").await.status,
        StatusCode::OK,
        "a rotated-out key still works"
    );

    // API keys: unknown, missing, and another app's valid key on this app's session.
    let mut wrong = s.clone();
    wrong.key = "not-a-key".into();
    refused(
        &wrong.call(&proxy, "/api/x").await,
        StatusCode::UNAUTHORIZED,
        "INVALID_API_KEY",
    );
    wrong.key = BLOG_KEY.into();
    refused(
        &wrong.call(&proxy, "/api/x").await,
        StatusCode::UNAUTHORIZED,
        "INVALID_API_KEY",
    );
    let link = s.next();
    let no_key = get(
        &proxy.url("/api/x"),
        &[("x-session-id", &s.id), ("x-request-id", &link)],
    )
    .await;
    refused(&no_key, StatusCode::UNAUTHORIZED, "INVALID_API_KEY");

    // Session and link headers.
    let no_session = get(
        &proxy.url("/api/x"),
        &[("x-api-key", SHOP_KEY), ("x-request-id", &link)],
    )
    .await;
    refused(&no_session, StatusCode::UNAUTHORIZED, "INVALID_SESSION");
    let mut unknown = s.clone();
    unknown.id = "made-up-session".into();
    refused(
        &unknown.call(&proxy, "/api/x").await,
        StatusCode::UNAUTHORIZED,
        "SESSION_TIME_OUT",
    );
    let no_link = get(
        &proxy.url("/api/x"),
        &[("x-api-key", SHOP_KEY), ("x-session-id", &s.id)],
    )
    .await;
    refused(&no_link, StatusCode::UNAUTHORIZED, "INVALID_REQUEST_ID");
    for bad in [&link[..63], &format!("{}g", &link[..63]), &format!("{link}0")] {
        refused(
            &s.clone().send_link(&proxy, "/api/x", bad).await,
            StatusCode::UNAUTHORIZED,
            "INVALID_REQUEST_ID",
        );
    }
    assert_eq!(
        s.call(&proxy, "/api/x").await.status,
        StatusCode::OK,
        "refusals left the chain intact"
    );

    // A session of one policy means nothing to another.
    refused(
        &s.clone().call(&proxy, "/short/x").await,
        StatusCode::UNAUTHORIZED,
        "SESSION_TIME_OUT",
    );

    // The upstream failing after the chain advanced: the client is told to move on.
    let got = s.call(&proxy, "/down/x").await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    assert_eq!(got.error_code(), "UPSTREAM_UNAVAILABLE");
    assert_eq!(got.headers["x-keygate-chain"], "advanced");
    assert_eq!(
        s.call(&proxy, "/api/x").await.status,
        StatusCode::OK,
        "the next link follows the failed one"
    );

    // A client that lost a response: out of session, then a new session and one retry.
    let lost = s.next();
    assert_eq!(
        s.clone().send_link(&proxy, "/api/x", &lost).await.status,
        StatusCode::OK
    );
    refused(
        &s.send_link(&proxy, "/api/x", &lost).await,
        StatusCode::UNAUTHORIZED,
        "REQUEST_OUT_OF_SESSION",
    );
    let mut retry = Session::create(&proxy, "/api/session", SHOP_KEY).await;
    assert_eq!(retry.call(&proxy, "/api/x").await.status, StatusCode::OK);

    // Expiry: a session unused for longer than its TTL (300 ms) is gone.
    let mut short = Session::create(&proxy, "/short-session", SHOP_KEY).await;
    tokio::time::sleep(Duration::from_millis(450)).await;
    refused(
        &short.call(&proxy, "/short/x").await,
        StatusCode::UNAUTHORIZED,
        "SESSION_TIME_OUT",
    );

    // Creating sessions: POST only, a valid key, the protocol's body.
    let body = r#"{"machine_id": "m"}"#;
    let got = get(&proxy.url("/api/session"), &[("x-api-key", SHOP_KEY)]).await;
    assert_eq!(
        (got.status, got.error_code().as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED")
    );
    refused(
        &post_create(&proxy, "/api/session", Some("nope"), body).await,
        StatusCode::UNAUTHORIZED,
        "INVALID_API_KEY",
    );
    refused(
        &post_create(&proxy, "/api/session", None, body).await,
        StatusCode::UNAUTHORIZED,
        "INVALID_API_KEY",
    );
    for bad in ["", "{}", r#"{"machine_id": ""}"#, "not json", r#"{"machine_id": 5}"#] {
        let got = post_create(&proxy, "/api/session", Some(SHOP_KEY), bad).await;
        assert_eq!(
            (got.status, got.error_code().as_str()),
            (StatusCode::BAD_REQUEST, "BAD_REQUEST"),
            "{bad}"
        );
    }
    let got = post_create(&proxy, "/api/session", Some(SHOP_KEY), &"x".repeat(10_000)).await;
    assert_eq!(got.status, StatusCode::PAYLOAD_TOO_LARGE);
    let a = Session::create(&proxy, "/api/session", SHOP_KEY).await;
    let b = Session::create(&proxy, "/api/session", SHOP_KEY).await;
    assert_ne!(a.id, b.id, "session ids are random, not derived from the request");
    assert!(a.id.len() >= 43, "256 bits");

    // Usage is counted per app.
    let metrics = proxy.shared.metrics.render();
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("app=\"shop\"") && l.contains("route=\"default/api\"")),
        "{metrics}"
    );

    let mut secrets = vec![SHOP_KEY.to_string(), SHOP_OLD_KEY.to_string(), BLOG_KEY.to_string()];
    for session in [s, other, retry, short, a, b] {
        secrets.push(session.id.clone());
        secrets.extend(session.sent);
    }
    secrets
}

#[tokio::test]
async fn protocol_on_memory() {
    keygate_tests::logs::capture();
    let secrets = protocol(StoreAt::Memory).await;
    assert_nothing_logged(&secrets);
}

#[tokio::test]
async fn protocol_on_redis() {
    keygate_tests::logs::capture();
    let redis = RedisServer::start();
    let secrets = protocol(StoreAt::Redis(&redis)).await;
    assert_nothing_logged(&secrets);
    let logs = keygate_tests::logs::captured();
    assert!(
        logs.contains("session chain refused the request"),
        "refusals are logged (fingerprinted)"
    );
}

/// 100 identical requests carrying the same next link, spread over `proxies`: exactly one is
/// accepted, and the chain then continues from it on every proxy.
async fn one_of_a_hundred(proxies: &[Arc<Proxy>], up: &Upstream) {
    let mut s = Session::create(&proxies[0], "/api/session", SHOP_KEY).await;
    assert_eq!(
        s.call(&proxies[proxies.len() - 1], "/api/warm").await.status,
        StatusCode::OK
    );
    let before = up.count();
    let link = s.next();
    let send = |proxy: Arc<Proxy>| {
        let (mut s, link) = (s.clone(), link.clone());
        async move { s.send_link(&proxy, "/api/race", &link).await }
    };
    let lost = |got: &Got| refused(got, StatusCode::UNAUTHORIZED, "REQUEST_OUT_OF_SESSION");
    assert_eq!(accepted_among_copies(proxies, 100, send, lost).await, 1);
    assert_eq!(up.count(), before + 1, "exactly one reached the upstream");
    s.last = link;
    for proxy in proxies {
        assert_eq!(s.call(proxy, "/api/after").await.status, StatusCode::OK);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_identical_requests_one_wins_on_memory() {
    let up = Upstream::ok().await;
    let proxy = Arc::new(Proxy::start(&manifests(&up, StoreAt::Memory, "")).await);
    one_of_a_hundred(&[proxy], &up).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_identical_requests_one_wins_across_two_proxies_on_redis() {
    let redis = RedisServer::start();
    let up = Upstream::ok().await;
    let yaml = manifests(&up, StoreAt::Redis(&redis), "");
    let proxies = [Arc::new(Proxy::start(&yaml).await), Arc::new(Proxy::start(&yaml).await)];
    one_of_a_hundred(&proxies, &up).await;
}

#[tokio::test]
async fn redis_outage_takes_down_chain_routes_only_and_heals() {
    let mut redis = RedisServer::start();
    let up = Upstream::ok().await;
    let proxy = Proxy::start(&manifests(&up, StoreAt::Redis(&redis), "")).await;
    let mut s = Session::create(&proxy, "/api/session", SHOP_KEY).await;
    assert_eq!(s.call(&proxy, "/api/x").await.status, StatusCode::OK);

    redis.stop();
    refused(
        &s.call(&proxy, "/api/x").await,
        StatusCode::SERVICE_UNAVAILABLE,
        "SESSION_STORE_UNAVAILABLE",
    );
    let body = r#"{"machine_id": "m"}"#;
    refused(
        &post_create(&proxy, "/api/session", Some(SHOP_KEY), body).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "SESSION_STORE_UNAVAILABLE",
    );
    assert_eq!(
        get(&proxy.url("/plain/x"), &[]).await.status,
        StatusCode::OK,
        "other routes keep serving"
    );

    redis.restart();
    // Nothing was persisted, so sessions start over; the proxy reconnects by itself.
    let mut created = None;
    for _ in 0..100 {
        let got = post_create(&proxy, "/api/session", Some(SHOP_KEY), body).await;
        if got.status == StatusCode::OK {
            created = Some(got.json()["session_id"].as_str().unwrap().to_string());
            break;
        }
        refused(&got, StatusCode::SERVICE_UNAVAILABLE, "SESSION_STORE_UNAVAILABLE");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let id = created.expect("sessions never came back after Redis restarted");
    let mut s = Session {
        key: SHOP_KEY.into(),
        last: id.clone(),
        id,
        sent: Vec::new(),
    };
    assert_eq!(s.call(&proxy, "/api/x").await.status, StatusCode::OK);
}

/// Sends plain requests until one is limited; returns its `Retry-After`.
async fn exhaust(proxy: &Proxy, path: &str, headers: &[(&str, &str)]) -> u64 {
    for _ in 0..50 {
        let got = get(&proxy.url(path), headers).await;
        if got.status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(got.error_code(), "RATE_LIMITED");
            return got.headers["retry-after"].to_str().unwrap().parse().unwrap();
        }
        assert_eq!(got.status, StatusCode::OK);
    }
    panic!("50 requests never hit a limit of 1/s with a burst of 3");
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after_then_recover() {
    let up = Upstream::ok().await;
    let limit = "  rateLimit: {requestsPerSecond: 1, burst: 3, per: session}\n";
    let proxy = Proxy::start(&manifests(&up, StoreAt::Memory, limit)).await;

    // Per session: one session's burst does not touch another's bucket.
    let mut s = Session::create(&proxy, "/api/session", SHOP_KEY).await;
    for _ in 0..3 {
        assert_eq!(s.call(&proxy, "/api/x").await.status, StatusCode::OK);
    }
    let got = s.call(&proxy, "/api/x").await;
    refused(&got, StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED");
    let wait: u64 = got.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=1).contains(&wait), "a whole second, rounded up: {wait}");
    let mut other = Session::create(&proxy, "/api/session", SHOP_KEY).await;
    assert_eq!(other.call(&proxy, "/api/x").await.status, StatusCode::OK);

    // A limited request did not spend its link: the same link is accepted after the wait.
    tokio::time::sleep(Duration::from_secs(wait)).await;
    assert_eq!(s.call(&proxy, "/api/x").await.status, StatusCode::OK);

    // Per route, on a route without a chain.
    let yaml = route_yaml(
        "plain",
        "/plain",
        &up.url(),
        "  rateLimit: {requestsPerSecond: 1, burst: 3}\n",
    );
    let plain = Proxy::start(&yaml).await;
    let wait = exhaust(&plain, "/plain/x", &[]).await;
    tokio::time::sleep(Duration::from_secs(wait)).await;
    assert_eq!(
        get(&plain.url("/plain/x"), &[]).await.status,
        StatusCode::OK,
        "the bucket refilled"
    );
}

#[tokio::test]
async fn per_app_limits_share_one_bucket_across_proxies_on_redis() {
    let redis = RedisServer::start();
    let up = Upstream::ok().await;
    let limit = "  rateLimit: {requestsPerSecond: 1, burst: 3, per: app}\n";
    let yaml = manifests(&up, StoreAt::Redis(&redis), limit);
    let (a, b) = (Proxy::start(&yaml).await, Proxy::start(&yaml).await);
    // Creating the session takes the first of the app's three tokens.
    let mut shop = Session::create(&a, "/api/session", SHOP_KEY).await;
    for proxy in [&b, &a] {
        assert_eq!(shop.call(proxy, "/api/x").await.status, StatusCode::OK);
    }
    refused(
        &shop.call(&b, "/api/x").await,
        StatusCode::TOO_MANY_REQUESTS,
        "RATE_LIMITED",
    );
    let mut blog = Session::create(&b, "/api/session", BLOG_KEY).await;
    assert_eq!(
        blog.call(&a, "/api/x").await.status,
        StatusCode::OK,
        "another app has its own bucket"
    );
}

/// The chain and cookie translation on one route: the login call and every later call carry the
/// next link, and the upstream gets the translated header without any protocol header.
#[tokio::test]
async fn chain_and_cookie_translation_on_one_route() {
    let up = Upstream::start(|seen| async move {
        let body = if seen.uri.ends_with("/login") {
            r#"{"token": "tok-chain-and-cookie"}"#
        } else {
            "upstream ok"
        };
        http::Response::new(Full::new(Bytes::from_static(body.as_bytes())))
    })
    .await;
    let yaml = secret_yaml("app-keys", &BTreeMap::from([("shop", SHOP_KEY)]))
        + "apiVersion: keygate.dev/v1alpha1\nkind: SessionChainPolicy\nmetadata: {name: web, namespace: default}\nspec:\n  createPath: /session\n  apiKeysSecretRef: {name: app-keys}\n---\n"
        + "apiVersion: keygate.dev/v1alpha1\nkind: CookieTranslation\nmetadata: {name: login, namespace: default}\nspec:\n  header: {name: x-auth-token}\n  sessionStart: {path: /api/login, method: GET, tokenPointer: /token}\n---\n"
        + &route_yaml(
            "api",
            "/api",
            &up.url(),
            "  auth: sessionChain\n  sessionChainRef: web\n  cookieTranslationRef: login",
        );
    let proxy = Proxy::start(&yaml).await;
    let mut session = Session::create(&proxy, "/session", SHOP_KEY).await;
    let call = |session: &Session, path: &str, cookie: Option<String>| {
        let mut headers = vec![
            ("x-api-key".to_string(), session.key.clone()),
            ("x-session-id".to_string(), session.id.clone()),
            ("x-request-id".to_string(), session.next()),
        ];
        headers.extend(cookie.map(|c| ("cookie".to_string(), c)));
        let url = proxy.url(path);
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            get(&url, &h).await
        }
    };
    let login = call(&session, "/api/login", None).await;
    assert_eq!(login.status, StatusCode::OK);
    session.last = session.next();
    let cookie = login.headers["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();

    let got = call(&session, "/api/items", Some(cookie.clone())).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.headers["x-keygate-chain"], "advanced");
    let seen = up.last();
    assert_eq!(seen.headers["x-auth-token"], "tok-chain-and-cookie");
    for h in ["cookie", "x-api-key", "x-session-id", "x-request-id"] {
        assert!(seen.headers.get(h).is_none(), "{h} must not reach the upstream");
    }
    // The cookie alone is not enough: the replayed link is refused.
    let replay = call(&session, "/api/items", Some(cookie)).await;
    assert_eq!(replay.error_code(), "REQUEST_OUT_OF_SESSION");
}

/// A page on another origin creates its session: the create path takes the CORS rules of the
/// route whose prefix covers it, preflight included.
#[tokio::test]
async fn create_path_answers_cors_like_its_route() {
    let up = Upstream::ok().await;
    let cors = "  cors: {allowOrigins: ['https://app.example']}\n";
    let proxy = Proxy::start(&manifests(&up, StoreAt::Memory, cors)).await;
    let preflight = Request::options(proxy.url("/api/session"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type, x-api-key")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let got = send(preflight).await;
    assert_eq!(got.status, StatusCode::NO_CONTENT);
    assert_eq!(got.headers["access-control-allow-origin"], "https://app.example");
    let allowed = got.headers["access-control-allow-headers"].to_str().unwrap();
    for h in ["x-api-key", "x-session-id", "x-request-id"] {
        assert!(allowed.contains(h), "{h} derived from the chain policy: {allowed}");
    }
    let create = Request::post(proxy.url("/api/session"))
        .header("origin", "https://app.example")
        .header("x-api-key", SHOP_KEY)
        .body(Full::new(Bytes::from_static(br#"{"machine_id": "m-1"}"#)))
        .unwrap();
    let got = send(create).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.headers["access-control-allow-origin"], "https://app.example");
    let other = Request::post(proxy.url("/api/session"))
        .header("origin", "https://evil.example")
        .header("x-api-key", SHOP_KEY)
        .body(Full::new(Bytes::from_static(br#"{"machine_id": "m-1"}"#)))
        .unwrap();
    assert!(send(other).await.headers.get("access-control-allow-origin").is_none());
    assert_eq!(up.count(), 0, "the create path is Keygate's own");
}

/// Creating sessions counts against the covering route's rate limit: a flood of creations is
/// refused before it can fill the store.
#[tokio::test]
async fn session_creation_is_rate_limited_by_its_route() {
    let up = Upstream::ok().await;
    let limit = "  rateLimit: {requestsPerSecond: 1, burst: 2, per: client}\n";
    let proxy = Proxy::start(&manifests(&up, StoreAt::Memory, limit)).await;
    let body = r#"{"machine_id": "m-1"}"#;
    for _ in 0..2 {
        assert_eq!(
            post_create(&proxy, "/api/session", Some(SHOP_KEY), body).await.status,
            StatusCode::OK
        );
    }
    let flood = post_create(&proxy, "/api/session", Some(SHOP_KEY), body).await;
    assert_eq!(flood.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(flood.error_code(), "RATE_LIMITED");
    assert!(flood.headers.contains_key("retry-after"));
}
