//! The session chain's proof modes end to end, on real proxies, a real upstream, and on memory
//! and a real redis-server: each mode over a long chain, a scripted attacker that has seen every
//! request and answer (it continues a `hash` chain, and neither an `hmac` nor a `signature` one),
//! tampered signed requests refused without advancing the chain, exactly one of 100 identical
//! requests accepted, the headers a page on another origin reads, and no id or key in the logs.
//! The test client plays the browser: ring's `EcdsaKeyPair` signs as WebCrypto's ECDSA P-256
//! does (IEEE P1363 `r||s`).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use keygate_tests::redis::RedisServer;
use ring::hmac;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use sha2::{Digest, Sha256};

const APP_KEY: &str = "shop-key-0123456789";
/// The `hmac` policy's secret (at least 32 bytes).
const CHAIN_SECRET: &str = "chain-secret-0123456789abcdef0123456789";
const ORIGIN: &str = "https://app.example";

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Hash,
    Hmac,
    Signature,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::Hash, Mode::Hmac, Mode::Signature];

    fn name(self) -> &'static str {
        match self {
            Mode::Hash => "hash",
            Mode::Hmac => "hmac",
            Mode::Signature => "signature",
        }
    }

    /// Each mode has its own policy and `/<mode>` route; its create path is `/<mode>/session`.
    fn create_path(self) -> String {
        format!("/{}/session", self.name())
    }
}

/// One policy and route per mode, CORS for [`ORIGIN`] on each, sessions in `redis` when given.
fn manifests(up: &Upstream, redis: Option<&RedisServer>) -> String {
    let mut yaml = secret_yaml("app-keys", &BTreeMap::from([("shop", APP_KEY)]))
        + &secret_yaml("chain", &BTreeMap::from([("key", CHAIN_SECRET)]));
    let store = match redis {
        Some(redis) => {
            yaml += &secret_yaml("redis", &BTreeMap::from([("url", redis.url().as_str())]));
            "store: redis, redisUrl: {name: redis, key: url}"
        }
        None => "store: memory",
    };
    for mode in Mode::ALL {
        let name = mode.name();
        let key = if mode == Mode::Hmac {
            ", chainKeySecretRef: {name: chain, key: key}"
        } else {
            ""
        };
        yaml += &format!(
            "apiVersion: keygate.dev/v1alpha1\nkind: SessionChainPolicy\nmetadata: {{name: {name}, namespace: default}}\nspec: {{createPath: {}, apiKeysSecretRef: {{name: app-keys}}, proof: {name}, {store}{key}}}\n---\n",
            mode.create_path()
        );
        yaml += &route_yaml(
            name,
            &format!("/{name}"),
            &up.url(),
            &format!(
                "  auth: sessionChain\n  sessionChainRef: {name}\n  bodyLimit: 4096\n  cors: {{allowOrigins: ['{ORIGIN}']}}"
            ),
        );
    }
    yaml
}

/// `POST <createPath>` from a page on [`ORIGIN`].
async fn post_create(proxy: &Proxy, mode: Mode, body: &serde_json::Value) -> Got {
    let req = Request::post(proxy.url(&mode.create_path()))
        .header("x-api-key", APP_KEY)
        .header("origin", ORIGIN)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    send(req).await
}

/// A browser session: what the SDK keeps.
struct Client {
    id: String,
    last: String,
    /// `hmac` mode: the chain key, hex-decoded.
    chain_key: Option<Vec<u8>>,
    /// `signature` mode: the non-extractable key pair.
    signer: Option<Arc<EcdsaKeyPair>>,
}

fn key_pair() -> Arc<EcdsaKeyPair> {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    Arc::new(EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap())
}

/// `keygate-chain-v1\n<METHOD>\n<target>\n<SHA256_hex(body)>\n<link>`, signed as WebCrypto does.
fn sign(signer: &EcdsaKeyPair, method: &str, target: &str, body: &[u8], link: &str) -> String {
    let message = format!("keygate-chain-v1\n{method}\n{target}\n{}\n{link}", sha256_hex(body));
    let signature = signer.sign(&SystemRandom::new(), message.as_bytes()).unwrap();
    assert_eq!(signature.as_ref().len(), 64, "IEEE P1363 r||s");
    URL_SAFE_NO_PAD.encode(signature)
}

/// A request as it goes on the wire, kept so an attacker can copy it.
#[derive(Clone, Debug)]
struct Sent {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Bytes,
}

impl Sent {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn with_header(mut self, name: &str, value: &str) -> Sent {
        self.headers.retain(|(n, _)| n != name);
        self.headers.push((name.into(), value.into()));
        self
    }

    async fn send(&self, proxy: &Proxy) -> Got {
        let mut req = Request::builder()
            .method(self.method.as_str())
            .uri(proxy.url(&self.target));
        for (n, v) in &self.headers {
            req = req.header(n, v);
        }
        send(req.body(Full::new(self.body.clone())).unwrap()).await
    }
}

fn advanced(got: &Got) -> bool {
    got.headers.get("x-keygate-chain").is_some_and(|v| v == "advanced")
}

impl Client {
    async fn create(proxy: &Proxy, mode: Mode) -> (Client, Got) {
        let signer = (mode == Mode::Signature).then(key_pair);
        let mut body = serde_json::json!({"machine_id": "6f1c1c36-2a52-4c61-9d0e-0b7a2b1c9e11"});
        if let Some(signer) = &signer {
            body["public_key"] = URL_SAFE_NO_PAD.encode(signer.public_key().as_ref()).into();
        }
        let got = post_create(proxy, mode, &body).await;
        assert_eq!(got.status, StatusCode::OK, "{:?}", String::from_utf8_lossy(&got.body));
        let answer = got.json();
        let id = answer["session_id"].as_str().expect("a session_id").to_string();
        let chain_key = answer["chain_key"].as_str().map(|k| {
            assert!(
                k.len() == 64 && k.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "64 lowercase hex: {k}"
            );
            hex::decode(k).unwrap()
        });
        assert_eq!(chain_key.is_some(), mode == Mode::Hmac, "a chain key only in hmac mode");
        let client = Client {
            last: id.clone(),
            id,
            chain_key,
            signer,
        };
        (client, got)
    }

    /// The next link, as the SDK computes it.
    fn next(&self) -> String {
        match &self.chain_key {
            Some(key) => hex::encode(hmac::sign(
                &hmac::Key::new(hmac::HMAC_SHA256, key),
                self.last.as_bytes(),
            )),
            None => sha256_hex(self.last.as_bytes()),
        }
    }

    /// The next request, signed in `signature` mode.
    fn request(&self, method: &str, target: &str, body: &str) -> Sent {
        let link = self.next();
        let mut sent = Sent {
            method: method.into(),
            target: target.into(),
            headers: vec![
                ("x-api-key".into(), APP_KEY.into()),
                ("x-session-id".into(), self.id.clone()),
                ("x-request-id".into(), link.clone()),
                ("content-type".into(), "application/json".into()),
            ],
            body: Bytes::from(body.to_string()),
        };
        if let Some(signer) = &self.signer {
            let signature = sign(signer, method, target, body.as_bytes(), &link);
            sent.headers.push(("x-keygate-signature".into(), signature));
        }
        sent
    }

    /// Sends `sent`; moves on when Keygate says the chain advanced.
    async fn send(&mut self, proxy: &Proxy, sent: &Sent) -> Got {
        let got = sent.send(proxy).await;
        if advanced(&got) {
            self.last = sent.header("x-request-id").unwrap().to_string();
        }
        got
    }

    async fn call(&mut self, proxy: &Proxy, method: &str, target: &str, body: &str) -> (Sent, Got) {
        let sent = self.request(method, target, body);
        let got = self.send(proxy, &sent).await;
        (sent, got)
    }
}

fn refused(got: &Got, status: StatusCode, code: &str) {
    assert_eq!(got.status, status, "{:?}", String::from_utf8_lossy(&got.body));
    assert_eq!(got.error_code(), code);
    assert_eq!(got.headers["x-keygate-error"], code);
    assert!(!advanced(got), "a refused request does not advance");
}

/// Each mode over 12 chained requests (GET and POST, odd paths and queries), with the upstream
/// seeing each body unchanged and no protocol header; no session id or chain key is logged.
async fn happy_paths(redis: Option<&RedisServer>) {
    keygate_tests::logs::capture();
    let up = Upstream::ok().await;
    let proxy = &Proxy::start(&manifests(&up, redis)).await;
    let mut secrets = Vec::new();
    for mode in Mode::ALL {
        let (mut client, _) = Client::create(proxy, mode).await;
        for i in 0..12 {
            let body = format!(r#"{{"n": {i}, "note": "ünïcode"}}"#);
            let (method, body) = if i % 2 == 0 {
                ("POST", body.as_str())
            } else {
                ("GET", "")
            };
            let name = mode.name();
            // Sent as the browser would after its own URL handling: Keygate normalizes the path
            // for routing, and the signature still covers what was sent.
            let target = format!("/{name}/./items/%61{i}?q=a%20b&i={i}");
            let (_, got) = client.call(proxy, method, &target, body).await;
            assert_eq!(got.status, StatusCode::OK, "{mode:?} #{i}: {:?}", got.body);
            assert!(advanced(&got), "{mode:?} #{i}");
            let seen = up.last();
            assert_eq!(seen.uri, format!("/items/a{i}?q=a%20b&i={i}"));
            assert_eq!(seen.body, body.as_bytes(), "forwarded unchanged");
            for h in ["x-api-key", "x-session-id", "x-request-id", "x-keygate-signature"] {
                assert!(!seen.headers.contains_key(h), "{h} reached the upstream");
            }
        }
        secrets.push(client.id.clone());
        secrets.extend(client.chain_key.as_ref().map(hex::encode));
    }
    assert_nothing_logged(&secrets);
}

#[tokio::test]
async fn each_mode_chains_on_memory_and_nothing_secret_is_logged() {
    happy_paths(None).await;
}

#[tokio::test]
async fn each_mode_chains_on_redis_and_nothing_secret_is_logged() {
    happy_paths(Some(&RedisServer::start())).await;
}

/// A script that holds the session id and a copy of every request and answer after the session
/// was created (for `signature`, the create request and answer too: the public key is no
/// secret). It tries everything it can compute from them; returns how many of its requests
/// were accepted.
async fn attacker(proxy: &Proxy, mode: Mode, id: &str, seen: &[(Sent, Got)]) -> usize {
    let (last_sent, _) = seen.last().expect("the attacker saw something");
    let last = last_sent.header("x-request-id").unwrap();
    let mut links = vec![sha256_hex(last.as_bytes())];
    // Every value it saw, tried as an HMAC key over the last link.
    let mut keys: Vec<String> = vec![id.to_string(), APP_KEY.to_string()];
    for (sent, got) in seen {
        keys.extend(sent.headers.iter().map(|(_, v)| v.clone()));
        keys.extend(got.headers.values().filter_map(|v| v.to_str().ok()).map(String::from));
        keys.push(String::from_utf8_lossy(&got.body).into_owned());
    }
    for key in &keys {
        for key in [key.as_bytes().to_vec(), hex::decode(key).unwrap_or_default()] {
            links.push(hex::encode(hmac::sign(
                &hmac::Key::new(hmac::HMAC_SHA256, &key),
                last.as_bytes(),
            )));
        }
    }
    links.sort();
    links.dedup();
    let own_key = key_pair();
    let mut accepted = 0;
    // Replays first, then each computed link with each signature it could bring.
    for (sent, _) in seen {
        accepted += usize::from(advanced(&sent.send(proxy).await));
    }
    let seen_signatures: Vec<&str> = seen
        .iter()
        .filter_map(|(s, _)| s.header("x-keygate-signature"))
        .collect();
    for link in &links {
        let forged = last_sent
            .clone()
            .with_header("x-session-id", id)
            .with_header("x-request-id", link);
        let mut attempts = vec![forged.clone()];
        if mode == Mode::Signature {
            let body = forged.body.clone();
            let own = sign(&own_key, &forged.method, &forged.target, &body, link);
            attempts.push(forged.clone().with_header("x-keygate-signature", &own));
            for sig in &seen_signatures {
                attempts.push(forged.clone().with_header("x-keygate-signature", sig));
            }
        }
        for attempt in attempts {
            let got = attempt.send(proxy).await;
            if advanced(&got) {
                accepted += 1;
            } else if mode == Mode::Signature {
                assert_eq!(got.error_code(), "INVALID_SIGNATURE");
            }
        }
    }
    accepted
}

async fn scripted_attacker(redis: Option<&RedisServer>) {
    let up = Upstream::ok().await;
    let proxy = Proxy::start(&manifests(&up, redis)).await;
    for mode in Mode::ALL {
        let (mut client, created) = Client::create(&proxy, mode).await;
        let mut seen = Vec::new();
        if mode == Mode::Signature {
            let create = Sent {
                method: "POST".into(),
                target: mode.create_path(),
                headers: vec![("x-api-key".into(), APP_KEY.into())],
                body: Bytes::new(),
            };
            seen.push((create, created));
        }
        for i in 0..5 {
            let target = format!("/{}/orders?page={i}", mode.name());
            let pair = client.call(&proxy, "POST", &target, r#"{"item": 1}"#).await;
            assert_eq!(pair.1.status, StatusCode::OK);
            seen.push(pair);
        }
        let accepted = attacker(&proxy, mode, &client.id, &seen).await;
        match mode {
            // Anyone who saw one link computes the next: the seed's chain stops copies only.
            Mode::Hash => assert_eq!(accepted, 1, "the hash chain is continued by a script"),
            Mode::Hmac | Mode::Signature => assert_eq!(accepted, 0, "{mode:?}: the attacker got through"),
        }
        let (_, got) = client.call(&proxy, "GET", &format!("/{}/after", mode.name()), "").await;
        if mode == Mode::Hash {
            refused(&got, StatusCode::UNAUTHORIZED, "REQUEST_OUT_OF_SESSION");
        } else {
            assert_eq!(got.status, StatusCode::OK, "{mode:?}: the real client goes on");
        }
    }
}

#[tokio::test]
async fn a_script_that_saw_everything_cannot_continue_hmac_or_signature_chains_on_memory() {
    scripted_attacker(None).await;
}

#[tokio::test]
async fn a_script_that_saw_everything_cannot_continue_hmac_or_signature_chains_on_redis() {
    let redis = RedisServer::start();
    scripted_attacker(Some(&redis)).await;
}

#[tokio::test]
async fn tampered_signed_requests_are_refused_and_do_not_advance() {
    let up = Upstream::ok().await;
    let proxy = Proxy::start(&manifests(&up, None)).await;
    let (mut client, _) = Client::create(&proxy, Mode::Signature).await;
    let (_, got) = client.call(&proxy, "POST", "/signature/pay", r#"{"amount": 1}"#).await;
    assert_eq!(got.status, StatusCode::OK);

    let genuine = client.request("POST", "/signature/pay?to=alice", r#"{"amount": 5}"#);
    let mut body = genuine.clone();
    body.body = Bytes::from_static(br#"{"amount": 5000}"#);
    let mut extra_byte = genuine.clone();
    extra_byte.body = Bytes::from_static(br#"{"amount": 5} "#);
    let mut path = genuine.clone();
    path.target = "/signature/refund?to=alice".into();
    let mut query = genuine.clone();
    query.target = "/signature/pay?to=mallory".into();
    // The same resource in another spelling is still another request target.
    let mut spelling = genuine.clone();
    spelling.target = "/signature/./pay?to=alice".into();
    let mut method = genuine.clone();
    method.method = "PUT".into();
    let link = genuine.header("x-request-id").unwrap().to_string();
    let other_link = genuine.clone().with_header("x-request-id", &"0".repeat(64));
    let missing = Sent {
        headers: genuine
            .headers
            .iter()
            .filter(|(n, _)| n != "x-keygate-signature")
            .cloned()
            .collect(),
        ..genuine.clone()
    };
    let garbage = genuine.clone().with_header("x-keygate-signature", "not-a-signature");
    let truncated = genuine.clone().with_header(
        "x-keygate-signature",
        &genuine.header("x-keygate-signature").unwrap()[..40],
    );
    let before = up.count();
    for (why, forged) in [
        ("body", body),
        ("one byte more", extra_byte),
        ("path", path),
        ("query", query),
        ("spelling", spelling),
        ("method", method),
        ("link", other_link),
        ("no signature", missing),
        ("garbage", garbage),
        ("truncated", truncated),
    ] {
        let got = forged.send(&proxy).await;
        assert_eq!(got.status, StatusCode::UNAUTHORIZED, "{why}");
        assert_eq!(got.error_code(), "INVALID_SIGNATURE", "{why}");
        assert_eq!(got.headers["x-keygate-error"], "INVALID_SIGNATURE", "{why}");
        assert!(!advanced(&got), "{why}");
    }
    assert_eq!(up.count(), before, "no forged request reached the upstream");
    let got = client.send(&proxy, &genuine).await;
    assert_eq!(got.status, StatusCode::OK, "the real client's link was not spent");
    assert_eq!(client.last, link);
    assert_eq!(up.last().body, br#"{"amount": 5}"#[..]);
    // The genuine request, replayed: its signature is fine, its link is spent.
    refused(
        &genuine.send(&proxy).await,
        StatusCode::UNAUTHORIZED,
        "REQUEST_OUT_OF_SESSION",
    );
    // Bodies beyond the route's bodyLimit are refused before anything is verified.
    let big = client.request("POST", "/signature/pay", &"x".repeat(5000));
    refused(&big.send(&proxy).await, StatusCode::PAYLOAD_TOO_LARGE, "BODY_TOO_LARGE");
    assert_eq!(
        client.call(&proxy, "GET", "/signature/x", "").await.1.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn signature_sessions_need_a_public_key() {
    let up = Upstream::ok().await;
    let proxy = Proxy::start(&manifests(&up, None)).await;
    let public = URL_SAFE_NO_PAD.encode(key_pair().public_key().as_ref());
    let padded = format!("{public}=");
    let std_b64 = base64::engine::general_purpose::STANDARD.encode(key_pair().public_key().as_ref());
    for bad in [
        serde_json::json!({"machine_id": "m"}),
        serde_json::json!({"machine_id": "m", "public_key": ""}),
        serde_json::json!({"machine_id": "m", "public_key": &public[..60]}),
        serde_json::json!({"machine_id": "m", "public_key": padded}),
        serde_json::json!({"machine_id": "m", "public_key": std_b64}),
        serde_json::json!({"machine_id": "m", "public_key": URL_SAFE_NO_PAD.encode([4u8; 33])}),
    ] {
        let got = post_create(&proxy, Mode::Signature, &bad).await;
        assert_eq!(got.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(got.error_code(), "BAD_REQUEST");
        let message = got.json()["proxy_error"]["message"].as_str().unwrap().to_string();
        assert!(message.contains("public_key"), "{message}");
    }
}

/// 100 copies of one request (signed, in `signature` mode), spread over `proxies`: exactly one
/// is accepted in each mode, and the chain goes on from it on every proxy.
async fn one_of_a_hundred(proxies: &[Arc<Proxy>], up: &Upstream) {
    for mode in Mode::ALL {
        let (mut client, _) = Client::create(&proxies[0], mode).await;
        let before = up.count();
        let sent = client.request("POST", &format!("/{}/race", mode.name()), r#"{"once": true}"#);
        let send = |proxy: Arc<Proxy>| {
            let sent = sent.clone();
            async move { sent.send(&proxy).await }
        };
        let lost = |got: &Got| refused(got, StatusCode::UNAUTHORIZED, "REQUEST_OUT_OF_SESSION");
        assert_eq!(accepted_among_copies(proxies, 100, send, lost).await, 1, "{mode:?}");
        assert_eq!(up.count(), before + 1, "{mode:?}: exactly one reached the upstream");
        client.last = sent.header("x-request-id").unwrap().to_string();
        for proxy in proxies {
            let (_, got) = client.call(proxy, "GET", &format!("/{}/after", mode.name()), "").await;
            assert_eq!(got.status, StatusCode::OK, "{mode:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_of_a_hundred_identical_requests_wins_in_each_mode_on_memory() {
    let up = Upstream::ok().await;
    let proxy = Arc::new(Proxy::start(&manifests(&up, None)).await);
    one_of_a_hundred(&[proxy], &up).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_of_a_hundred_identical_requests_wins_in_each_mode_across_two_proxies_on_redis() {
    let redis = RedisServer::start();
    let up = Upstream::ok().await;
    let yaml = manifests(&up, Some(&redis));
    let proxies = [Arc::new(Proxy::start(&yaml).await), Arc::new(Proxy::start(&yaml).await)];
    one_of_a_hundred(&proxies, &up).await;
}

/// What the SDK reads on another origin is exposed, errors name their code in a header, and the
/// signature header is allowed in preflights of signature routes only.
#[tokio::test]
async fn a_page_on_another_origin_reads_what_the_sdk_needs() {
    let up = Upstream::ok().await;
    let proxy = Proxy::start(&manifests(&up, None)).await;
    let preflight = |path: &str| {
        Request::options(proxy.url(path))
            .header("origin", ORIGIN)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type, x-api-key, x-session-id, x-request-id, x-keygate-signature",
            )
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    assert_eq!(send(preflight("/signature/x")).await.status, StatusCode::NO_CONTENT);
    assert_eq!(
        send(preflight("/signature/session")).await.status,
        StatusCode::NO_CONTENT
    );
    let hash = send(preflight("/hash/x")).await;
    assert_eq!(
        hash.status,
        StatusCode::FORBIDDEN,
        "no signature header on a hash route"
    );
    assert_eq!(hash.headers["x-keygate-error"], "CORS_REJECTED");

    let exposed = |got: &Got| {
        got.headers["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .to_string()
    };
    let (mut client, created) = Client::create(&proxy, Mode::Hmac).await;
    assert_eq!(
        created.headers["access-control-allow-origin"], ORIGIN,
        "the chain key is readable"
    );
    let mut sent = client.request("GET", "/hmac/x", "");
    sent.headers.push(("origin".into(), ORIGIN.into()));
    let got = client.send(&proxy, &sent).await;
    assert_eq!(got.status, StatusCode::OK);
    for h in ["x-keygate-chain", "x-keygate-error", "retry-after"] {
        assert!(exposed(&got).contains(h), "{h}: {}", exposed(&got));
    }
    let replay = sent.send(&proxy).await;
    refused(&replay, StatusCode::UNAUTHORIZED, "REQUEST_OUT_OF_SESSION");
    assert_eq!(replay.headers["access-control-allow-origin"], ORIGIN);
    assert!(exposed(&replay).contains("x-keygate-error"));
}
