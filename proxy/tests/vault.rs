//! The token vault end to end: a real proxy on loopback, real recording upstreams, and a real
//! `redis-server` for the shared store. What the upstream receives, what the browser sees, what
//! the store holds, and what the logs never hold.

mod common;

use std::collections::BTreeMap;

use bytes::Bytes;
use common::*;
use http::Response;
use http_body_util::Full;
use keygate_tests::logs;
use keygate_tests::redis::{RedisCluster, RedisServer, SentinelGroup};
use serde_json::{Value, json};

const BT_ID: &str = "26818785-547b-4b28-b0fa-531377e99f4e";
const BT_DATA: &str = "sensitive data";
const CARD_NUMBER: &str = "4242424242424242";
const CARD_NAME: &str = "Jane \"JJ\" Doe\nSecond line";
const TRICKY: &str = "quote \" and\nnewline \\ backslash & = + %";
const IBAN: &str = "DE89370400440532013000";
const EXPIRED: &str = "expired-secret-data";
const AES_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const APP_KEY: &str = "backend-key-do-not-leak-9Z";
/// What the JSON upstream answers on the tokenizing route.
const ANSWER_NUMBER: &str = "5555444433331111";
const ANSWER_IBAN: &str = "GB82WEST12345698765432";

/// Every piece of token data in these tests: none may reach a log line or a metric.
const ALL_DATA: &[&str] = &[
    BT_DATA,
    CARD_NUMBER,
    "Jane \"JJ\" Doe",
    "Second line",
    "newline \\ backslash",
    IBAN,
    EXPIRED,
    APP_KEY,
    ANSWER_NUMBER,
    ANSWER_IBAN,
    "endpoint-data-7Y",
];

enum Store {
    Memory,
    Redis(String),
}

fn static_tokens() -> String {
    let card = json!({"data": {"number": CARD_NUMBER, "cvc": "123", "name": CARD_NAME}, "classification": "pci"});
    let tokens = [
        (BT_ID, json!({"data": BT_DATA, "classification": "general"})),
        ("card", card),
        ("tricky", json!({"data": TRICKY, "classification": "general"})),
        ("iban", json!({"data": IBAN, "classification": "bank"})),
        (
            "old",
            json!({"data": EXPIRED, "classification": "general", "expiresAt": "2001-01-01T00:00:00Z"}),
        ),
    ]
    .map(|(k, v)| (k, v.to_string()));
    secret_yaml("tokens", &tokens.iter().map(|(k, v)| (*k, v.as_str())).collect())
}

/// Rule `cards` (static tokens + a dynamic store, tokenizes answers, has an endpoint), rule
/// `small` (at most 2 expressions), and routes: `/pay` and `/cards` (JSON answers) with `cards`,
/// `/small` with `small`, `/plain` without rules.
fn manifests(upstream: &str, json_upstream: &str, store: &Store) -> String {
    let (store_yaml, redis_secret) = match store {
        Store::Memory => ("store: memory".to_string(), String::new()),
        Store::Redis(url) => (
            "store: redis\n    redisUrl: {name: redis, key: url}".to_string(),
            secret_yaml("redis", &BTreeMap::from([("url", url.as_str())])),
        ),
    };
    let mut y = static_tokens();
    y += &redis_secret;
    y += &secret_yaml("vault-key", &BTreeMap::from([("k1", AES_KEY)]));
    y += &secret_yaml("app-keys", &BTreeMap::from([("backend", APP_KEY)]));
    y += &format!(
        "apiVersion: keygate.dev/v1alpha1
kind: TokenVaultRule
metadata: {{name: cards, namespace: default}}
spec:
  source:
    secretRef: {{name: tokens}}
    {store_yaml}
    encryptionKeys: [{{name: vault-key, key: k1}}]
  permissions:
  - {{classification: general}}
  - {{classification: pci, locations: [body]}}
  - {{classification: bank, locations: [headers]}}
  tokenizeResponse: {{pointers: [/card/number, /iban, /missing], classification: pci, ttl: 1h}}
  tokenizeEndpoint: {{path: /vault/acme, keysSecretRef: {{name: app-keys}}}}
---
apiVersion: keygate.dev/v1alpha1
kind: TokenVaultRule
metadata: {{name: small, namespace: default}}
spec:
  source: {{secretRef: {{name: tokens}}}}
  permissions: [{{classification: general}}]
  maxTokensPerRequest: 2
---
"
    );
    y += &route_yaml("pay", "/pay", upstream, "  vaultRuleRefs: [cards]");
    y += &route_yaml("cards", "/cards", json_upstream, "  vaultRuleRefs: [cards]");
    y += &route_yaml("small", "/small", upstream, "  vaultRuleRefs: [small]");
    y += &route_yaml("plain", "/plain", upstream, "");
    y
}

/// A proxy with both upstreams; the JSON one answers card data for every request.
async fn setup(store: Store) -> (Proxy, Upstream, Upstream) {
    logs::capture();
    let upstream = Upstream::ok().await;
    let json_upstream = Upstream::start(|_| async {
        let body = json!({"card": {"number": ANSWER_NUMBER, "exp": "12/30"}, "iban": ANSWER_IBAN, "other": "kept"});
        Response::builder()
            .header("content-type", "application/json")
            .header("etag", "\"v1\"")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap()
    })
    .await;
    let proxy = Proxy::start(&manifests(&upstream.url(), &json_upstream.url(), &store)).await;
    (proxy, upstream, json_upstream)
}

fn body_str(seen: &Seen) -> String {
    String::from_utf8(seen.body.to_vec()).unwrap()
}

#[tokio::test]
async fn the_basis_theory_example_arrives_as_sensitive_data() {
    let (proxy, upstream, _j) = setup(Store::Memory).await;
    let sent = format!(r#"{{"parameter1": "{{{{{BT_ID}}}}}", "parameter2": "non-sensitive"}}"#);
    let got = post(&proxy.url("/pay/charge"), "application/json", sent, &[]).await;
    assert_eq!(got.status, 200, "{:?}", got.body);
    let seen = upstream.last();
    assert_eq!(
        body_str(&seen),
        r#"{"parameter1": "sensitive data", "parameter2": "non-sensitive"}"#
    );
    assert_eq!(seen.headers["content-length"], seen.body.len().to_string());
}

#[tokio::test]
async fn json_bodies_stay_valid_with_quotes_and_newlines() {
    let (proxy, upstream, _j) = setup(Store::Memory).await;
    let sent = r#"{
        "whole": "{{ tricky }}",
        "inside": "before {{tricky}} after",
        "name": "{{ card | json: \"/name\" }}",
        "card": "{{ card }}",
        "number": {{ card | json: "/number" }},
        "label": "card {{ card | json: \"/cvc\" }}"
    }"#;
    let got = post(&proxy.url("/pay"), "application/json; charset=utf-8", sent, &[]).await;
    assert_eq!(got.status, 200, "{:?}", got.body);
    let seen: Value = serde_json::from_slice(&upstream.last().body).expect("the upstream gets valid JSON");
    assert_eq!(seen["whole"], TRICKY);
    assert_eq!(seen["inside"], format!("before {TRICKY} after"));
    assert_eq!(seen["name"], CARD_NAME);
    assert_eq!(
        seen["card"],
        json!({"number": CARD_NUMBER, "cvc": "123", "name": CARD_NAME})
    );
    assert_eq!(seen["number"], CARD_NUMBER, "outside a string, the JSON value as is");
    assert_eq!(seen["label"], "card 123");
}

#[tokio::test]
async fn form_and_text_bodies() {
    let (proxy, upstream, _j) = setup(Store::Memory).await;
    // As a browser's URLSearchParams encodes it.
    let form = "amount=10&card=%7B%7B+card+%7C+json%3A+%22%2Fnumber%22+%7D%7D&note=%7B%7Btricky%7D%7D&x=a%20b";
    let got = post(&proxy.url("/pay"), "application/x-www-form-urlencoded", form, &[]).await;
    assert_eq!(got.status, 200, "{:?}", got.body);
    let seen = upstream.last();
    assert_eq!(
        body_str(&seen),
        format!("amount=10&card={CARD_NUMBER}&note=quote+%22+and%0Anewline+%5C+backslash+%26+%3D+%2B+%25&x=a%20b")
    );
    assert_eq!(seen.headers["content-length"], seen.body.len().to_string());

    let text = "Number: {{ card | json: \"/number\" }}\nNote: {{tricky}}\n";
    let got = post(&proxy.url("/pay"), "text/plain", text, &[]).await;
    assert_eq!(got.status, 200);
    assert_eq!(
        body_str(&upstream.last()),
        format!("Number: {CARD_NUMBER}\nNote: {TRICKY}\n")
    );

    // Binary bodies are not read, let alone changed.
    let got = post(&proxy.url("/pay"), "application/octet-stream", "{{ card }} {{ ", &[]).await;
    assert_eq!(got.status, 200);
    assert_eq!(body_str(&upstream.last()), "{{ card }} {{ ");
}

#[tokio::test]
async fn headers_and_query() {
    let (proxy, upstream, _j) = setup(Store::Memory).await;
    let url = proxy.url(&format!("/pay/x?q={{{{{BT_ID}}}}}&enc=%7B%7B+tricky+%7D%7D&keep=%41"));
    let got = get(
        &url,
        &[
            ("x-iban", "{{ iban }}"),
            ("authorization", &format!("Bearer {{{{{BT_ID}}}}}")),
        ],
    )
    .await;
    assert_eq!(got.status, 200, "{:?}", got.body);
    let seen = upstream.last();
    assert_eq!(seen.headers["x-iban"], IBAN);
    assert_eq!(seen.headers["authorization"], format!("Bearer {BT_DATA}"));
    assert_eq!(
        seen.uri,
        "/x?q=sensitive+data&enc=quote+%22+and%0Anewline+%5C+backslash+%26+%3D+%2B+%25&keep=%41"
    );

    // A header cannot carry a line break: refused, not split into two headers.
    let before = upstream.count();
    let got = get(&proxy.url("/pay"), &[("x-note", "{{tricky}}")]).await;
    assert_eq!((got.status.as_u16(), got.error_code()), (400, "BAD_REQUEST".into()));
    assert_eq!(upstream.count(), before);
}

#[tokio::test]
async fn at_most_max_tokens_per_request() {
    let (proxy, upstream, _j) = setup(Store::Memory).await;
    let expressions = |n: usize| {
        let items: Vec<String> = (0..n).map(|_| format!("\"{{{{{BT_ID}}}}}\"")).collect();
        format!("[{}]", items.join(","))
    };
    let got = post(&proxy.url("/pay"), "application/json", expressions(100), &[]).await;
    assert_eq!(got.status, 200, "{:?}", got.body);
    let seen: Vec<String> = serde_json::from_slice(&upstream.last().body).unwrap();
    assert_eq!(seen, vec![BT_DATA; 100]);

    let before = upstream.count();
    let got = post(&proxy.url("/pay"), "application/json", expressions(101), &[]).await;
    assert_eq!((got.status.as_u16(), got.error_code()), (400, "TOO_MANY_TOKENS".into()));
    assert_eq!(
        got.json()["proxy_error"]["message"],
        "the request carries more than 100 token expressions"
    );

    // The count is per request, across locations: one in a header and two in the body is three.
    let header = format!("{{{{{BT_ID}}}}}");
    let got = post(&proxy.url("/small"), "text/plain", expressions(2), &[("x-a", &header)]).await;
    assert_eq!((got.status.as_u16(), got.error_code()), (400, "TOO_MANY_TOKENS".into()));
    let got = post(&proxy.url("/small"), "text/plain", expressions(1), &[("x-a", &header)]).await;
    assert_eq!(got.status, 200, "{:?}", got.body);
    assert_eq!(upstream.count(), before + 1);
}

#[tokio::test]
async fn every_error_is_answered_before_anything_goes_upstream() {
    let (proxy, upstream, _j) = setup(Store::Memory).await;
    let pay = proxy.url("/pay");
    let cases: Vec<(Got, u16, &str, String)> = vec![
        (
            post(&pay, "application/json", r#"{"a": "{{ nope }}"}"#, &[]).await,
            400,
            "TOKEN_NOT_FOUND",
            "no token for the expression in the body at byte 7: it does not exist or has expired".into(),
        ),
        (
            post(&pay, "text/plain", "x {{ old }}", &[]).await,
            400,
            "TOKEN_NOT_FOUND",
            "no token for the expression in the body at byte 2: it does not exist or has expired".into(),
        ),
        (
            get(&pay, &[("x-card", "{{card}}")]).await,
            403,
            "TOKEN_NOT_PERMITTED",
            "a token of classification pci may not be detokenized in the header x-card at byte 0".into(),
        ),
        (
            get(&proxy.url("/pay?c=%7B%7Bcard%7D%7D"), &[]).await,
            403,
            "TOKEN_NOT_PERMITTED",
            "a token of classification pci may not be detokenized in the query string, field 1, at byte 0 of its decoded value".into(),
        ),
        (
            post(&pay, "application/json", r#"{"i": "{{iban}}"}"#, &[]).await,
            403,
            "TOKEN_NOT_PERMITTED",
            "a token of classification bank may not be detokenized in the body at byte 7".into(),
        ),
        (
            post(&pay, "application/json", format!(r#"{{"a": "{{{{ {BT_ID} | upper }}}}"}}"#), &[]).await,
            400,
            "INVALID_EXPRESSION",
            "malformed token expression in the body at byte 49: expected the filter json".into(),
        ),
        (
            get(&pay, &[("x-a", "ok {{ tricky")]).await,
            400,
            "INVALID_EXPRESSION",
            "malformed token expression in the header x-a at byte 12: expected '}}' or '| json: \"<pointer>\"'".into(),
        ),
        (
            post(&pay, "application/json", r#"{"a": "{{ card | json: \"/pin\" }}"}"#, &[]).await,
            400,
            "INVALID_EXPRESSION",
            "malformed token expression in the body at byte 7: the token has no value at this JSON pointer".into(),
        ),
    ];
    for (got, status, code, message) in cases {
        assert_eq!(got.status.as_u16(), status, "{code}");
        assert_eq!(got.error_code(), code);
        assert_eq!(got.json()["proxy_error"]["message"], message.as_str());
        assert_eq!(got.json()["proxy_error"]["route"], "default/pay");
        let body = String::from_utf8_lossy(&got.body);
        for data in ALL_DATA {
            assert!(!body.contains(data), "an error answer carries token data");
        }
    }
    assert_eq!(upstream.count(), 0, "nothing was sent upstream");
}

#[tokio::test]
async fn routes_without_rules_pass_expressions_through() {
    let (proxy, upstream, _j) = setup(Store::Memory).await;
    let got = post(
        &proxy.url("/plain"),
        "application/json",
        r#"{"a": "{{card}} {{ bad"}"#,
        &[("x", "{{iban}}")],
    )
    .await;
    assert_eq!(got.status, 200);
    let seen = upstream.last();
    assert_eq!(body_str(&seen), r#"{"a": "{{card}} {{ bad"}"#);
    assert_eq!(seen.headers["x"], "{{iban}}");
}

/// The browser sees ids where the answer had card data, and each id detokenizes on `/pay`.
/// Returns the two ids.
async fn answers_are_tokenized(proxy: &Proxy, upstream: &Upstream) -> [String; 2] {
    let got = get(&proxy.url("/cards/mine"), &[]).await;
    assert_eq!(got.status, 200, "{:?}", got.body);
    let body = String::from_utf8_lossy(&got.body).to_string();
    assert!(!body.contains(ANSWER_NUMBER) && !body.contains(ANSWER_IBAN), "{body}");
    assert_eq!(got.headers["content-length"], got.body.len().to_string());
    assert!(got.headers.get("etag").is_none());
    let answer = got.json();
    assert_eq!(answer["card"]["exp"], "12/30");
    assert_eq!(answer["other"], "kept");
    let number_id = answer["card"]["number"].as_str().expect("an id").to_string();
    let iban_id = answer["iban"].as_str().expect("an id").to_string();
    assert_eq!(number_id.len(), 36, "a UUID: {number_id}");
    assert_ne!(number_id, iban_id);

    let sent = format!(r#"{{"number": "{{{{{number_id}}}}}", "iban": "{{{{ {iban_id} }}}}"}}"#);
    let got = post(&proxy.url("/pay"), "application/json", sent, &[]).await;
    assert_eq!(got.status, 200, "{:?}", got.body);
    let seen: Value = serde_json::from_slice(&upstream.last().body).unwrap();
    assert_eq!(seen, json!({"number": ANSWER_NUMBER, "iban": ANSWER_IBAN}));
    // Tokenized as pci, which this rule permits in bodies only.
    let got = get(&proxy.url("/pay"), &[("x-n", &format!("{{{{{number_id}}}}}"))]).await;
    assert_eq!(got.error_code(), "TOKEN_NOT_PERMITTED");
    [number_id, iban_id]
}

/// The store key of a token of rule `default/cards`.
fn vault_key(id: &str) -> String {
    keygate_proxy::store::key("vault", "default/cards", id.as_bytes())
}

/// Stored values are ciphertext: no data, no id, not even the classification.
fn assert_ciphertext(values: &[Vec<u8>], ids: &[String]) {
    assert_eq!(values.len(), 2);
    for v in values {
        let v = String::from_utf8_lossy(v);
        for plain in [ANSWER_NUMBER, ANSWER_IBAN, &ids[0], &ids[1], "pci"] {
            assert!(!v.contains(plain), "the store holds plaintext");
        }
    }
}

#[tokio::test]
async fn answers_are_tokenized_in_memory() {
    let (proxy, upstream, _j) = setup(Store::Memory).await;
    let ids = answers_are_tokenized(&proxy, &upstream).await;
    let memory = proxy.shared.stores.memory();
    let mut values = Vec::new();
    for id in &ids {
        values.push(memory.get(&vault_key(id)).await.unwrap().expect("stored"));
    }
    assert_ciphertext(&values, &ids);
}

#[tokio::test]
async fn answers_are_tokenized_in_redis() {
    let redis = RedisServer::start();
    let (proxy, upstream, _j) = setup(Store::Redis(redis.url())).await;
    let ids = answers_are_tokenized(&proxy, &upstream).await;
    let client = ::redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    // Every key Redis holds, not just the expected ones: nothing else may carry plaintext.
    let mut keys: Vec<String> = ::redis::cmd("KEYS").arg("*").query_async(&mut conn).await.unwrap();
    keys.sort();
    let mut expected: Vec<String> = ids.iter().map(|id| vault_key(id)).collect();
    expected.sort();
    assert_eq!(keys, expected);
    let mut values = Vec::new();
    for k in &keys {
        let ttl: i64 = ::redis::cmd("TTL").arg(k).query_async(&mut conn).await.unwrap();
        assert!((3500..=3600).contains(&ttl), "the rule's ttl of 1h: {ttl}");
        values.push(::redis::cmd("GET").arg(k).query_async(&mut conn).await.unwrap());
    }
    assert_ciphertext(&values, &ids);
}

async fn the_tokenize_endpoint(store: Store) {
    let (proxy, upstream, _j) = setup(store).await;
    let url = proxy.url("/vault/acme/tokens");
    let one = json!({"data": {"pan": "endpoint-data-7Y"}, "classification": "pci", "ttl": "1h"}).to_string();
    let key = [("x-api-key", APP_KEY)];

    let got = post(&url, "application/json", one.clone(), &[]).await;
    assert_eq!((got.status.as_u16(), got.error_code()), (401, "INVALID_API_KEY".into()));
    let got = post(&url, "application/json", one.clone(), &[("x-api-key", "wrong")]).await;
    assert_eq!((got.status.as_u16(), got.error_code()), (401, "INVALID_API_KEY".into()));
    let got = get(&url, &key).await;
    assert_eq!(got.error_code(), "METHOD_NOT_ALLOWED");
    let other = json!({"data": "endpoint-data-7Y", "classification": "secret-stuff"}).to_string();
    let got = post(&url, "application/json", other, &key).await;
    assert_eq!(
        (got.status.as_u16(), got.error_code()),
        (403, "CLASSIFICATION_NOT_ALLOWED".into())
    );
    let got = post(&url, "application/json", "{\"data\": \"endpoint-data-7Y\"", &key).await;
    assert_eq!(got.error_code(), "BAD_REQUEST");
    assert!(!String::from_utf8_lossy(&got.body).contains("endpoint-data-7Y"));
    assert_eq!(upstream.count(), 0, "served by Keygate, never forwarded");

    let got = post(&url, "application/json", one, &key).await;
    assert_eq!(got.status, 201, "{:?}", got.body);
    assert_eq!(got.headers["cache-control"], "no-store");
    let id = got.json()["id"].as_str().unwrap().to_string();
    let many = json!([
        {"data": "first-general", "classification": "general"},
        {"data": 42, "classification": "pci"}
    ]);
    let got = post(&url, "application/json", many.to_string(), &key).await;
    assert_eq!(got.status, 201);
    let ids: Vec<String> = got
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap().into())
        .collect();
    assert_eq!(ids.len(), 2);

    let sent = format!(
        r#"{{"pan": "{{{{ {id} | json: \"/pan\" }}}}", "g": "{{{{{}}}}}", "n": "{{{{{}}}}}"}}"#,
        ids[0], ids[1]
    );
    let got = post(&proxy.url("/pay"), "application/json", sent, &[]).await;
    assert_eq!(got.status, 200, "{:?}", got.body);
    let seen: Value = serde_json::from_slice(&upstream.last().body).unwrap();
    assert_eq!(seen, json!({"pan": "endpoint-data-7Y", "g": "first-general", "n": 42}));
    let metrics = proxy.shared.metrics.render();
    assert!(
        metrics.contains(r#"keygate_app_requests_total{route="default/cards",app="backend"} 4"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_tokenize_endpoint_in_memory() {
    the_tokenize_endpoint(Store::Memory).await;
}

#[tokio::test]
async fn the_tokenize_endpoint_in_redis() {
    let redis = RedisServer::start();
    the_tokenize_endpoint(Store::Redis(redis.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tokenize_endpoint_on_sentinel_and_cluster() {
    let group = tokio::task::spawn_blocking(|| SentinelGroup::start("vault-sentinel-pw"))
        .await
        .unwrap();
    let cluster = tokio::task::spawn_blocking(RedisCluster::start).await.unwrap();
    the_tokenize_endpoint(Store::Redis(group.url())).await;
    the_tokenize_endpoint(Store::Redis(cluster.url())).await;
    logs::assert_not_logged("vault-sentinel-pw");
}

#[tokio::test]
async fn a_store_that_is_down_answers_503_and_names_no_data() {
    let mut redis = RedisServer::start();
    let (proxy, upstream, _j) = setup(Store::Redis(redis.url())).await;
    redis.stop();
    let got = get(&proxy.url("/cards"), &[]).await;
    assert_eq!(
        (got.status.as_u16(), got.error_code()),
        (503, "VAULT_UNAVAILABLE".into())
    );
    assert!(!String::from_utf8_lossy(&got.body).contains(ANSWER_NUMBER));
    let got = post(&proxy.url("/pay"), "text/plain", "{{ some-dynamic-id }}", &[]).await;
    assert_eq!(got.error_code(), "VAULT_UNAVAILABLE");
    // Static tokens need no store.
    let got = post(&proxy.url("/pay"), "text/plain", format!("{{{{{BT_ID}}}}}"), &[]).await;
    assert_eq!(got.status, 200);
    assert_eq!(body_str(&upstream.last()), BT_DATA);
}

#[tokio::test]
async fn no_token_data_in_logs_or_metrics() {
    let (proxy, _upstream, _j) = setup(Store::Memory).await;
    let pay = proxy.url("/pay");
    post(
        &pay,
        "application/json",
        format!(r#"{{"a": "{{{{{BT_ID}}}}}", "c": "{{{{card}}}}"}}"#),
        &[],
    )
    .await;
    post(
        &pay,
        "application/json",
        r#"{"i": "{{iban}}", "o": "{{old}}"}"#,
        &[("x-i", "{{iban}}")],
    )
    .await;
    get(&proxy.url("/pay?q=%7B%7Btricky%7D%7D"), &[("x-c", "{{card}}")]).await;
    get(&proxy.url("/cards"), &[]).await;
    let one = json!({"data": "endpoint-data-7Y", "classification": "pci"}).to_string();
    post(
        &proxy.url("/vault/acme/tokens"),
        "application/json",
        one.clone(),
        &[("x-api-key", APP_KEY)],
    )
    .await;
    post(
        &proxy.url("/vault/acme/tokens"),
        "application/json",
        one,
        &[("x-api-key", "nope")],
    )
    .await;
    let metrics = proxy.shared.metrics.render();
    for data in ALL_DATA {
        logs::assert_not_logged(data);
        assert!(!metrics.contains(data), "token data in metrics");
    }
}

#[tokio::test]
async fn dynamic_tokens_survive_a_reload() {
    let (proxy, upstream, json_upstream) = setup(Store::Memory).await;
    let one = json!({"data": "kept-across-reloads", "classification": "general"}).to_string();
    let got = post(
        &proxy.url("/vault/acme/tokens"),
        "application/json",
        one,
        &[("x-api-key", APP_KEY)],
    )
    .await;
    let id = got.json()["id"].as_str().unwrap().to_string();
    let old = proxy.hash();
    let mut yaml = manifests(&upstream.url(), &json_upstream.url(), &Store::Memory);
    yaml += &route_yaml("more", "/more", &upstream.url(), "  vaultRuleRefs: [cards]");
    proxy.rewrite(&yaml);
    proxy.wait_for_new_config(&old).await;
    let got = post(&proxy.url("/more"), "text/plain", format!("{{{{{id}}}}}"), &[]).await;
    assert_eq!(got.status, 200, "{:?}", got.body);
    assert_eq!(body_str(&upstream.last()), "kept-across-reloads");
}

#[tokio::test]
async fn answers_that_cannot_be_tokenized_never_reach_the_browser() {
    let (_p, upstream, _j) = setup(Store::Memory).await;
    let odd = Upstream::start(|seen| async move {
        let (ct, ce, body) = match seen.uri.as_str() {
            "/broken" => (
                "application/json",
                None,
                format!("{{\"card\": {{\"number\": \"{ANSWER_NUMBER}\""),
            ),
            "/gzip" => ("application/json", Some("gzip"), ANSWER_NUMBER.to_string()),
            _ => ("text/plain", None, format!("card {ANSWER_NUMBER}")),
        };
        let mut b = Response::builder().header("content-type", ct);
        if let Some(ce) = ce {
            b = b.header("content-encoding", ce);
        }
        b.body(Full::new(Bytes::from(body))).unwrap()
    })
    .await;
    let proxy = Proxy::start(&manifests(&upstream.url(), &odd.url(), &Store::Memory)).await;
    let got = get(&proxy.url("/cards/broken"), &[("accept-encoding", "gzip, br")]).await;
    assert_eq!(
        (got.status.as_u16(), got.error_code()),
        (502, "RESPONSE_NOT_TOKENIZABLE".into())
    );
    assert_eq!(
        odd.last().headers["accept-encoding"],
        "identity",
        "answers are asked for uncompressed"
    );
    let got = get(&proxy.url("/cards/gzip"), &[]).await;
    assert_eq!(
        (got.status.as_u16(), got.error_code()),
        (502, "RESPONSE_NOT_TOKENIZABLE".into())
    );
    assert!(!String::from_utf8_lossy(&got.body).contains(ANSWER_NUMBER));
    // Only JSON answers are tokenized; others pass as they are.
    let got = get(&proxy.url("/cards/text"), &[]).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, format!("card {ANSWER_NUMBER}"));
}
