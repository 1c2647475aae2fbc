//! Reactors end to end, through a real proxy on loopback and real upstreams: inbound tokenization
//! (`tokenizeRequest`) and request/answer transforms (`transform`). What the upstream receives,
//! what the client gets, what streams, and what the logs never hold.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use keygate_tests::logs;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const AES_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
/// Raw values a browser sends in; none may reach an upstream of the inbound route or a log.
const CARD: &str = "4111111111111111";
const FORM_CARD: &str = "5500 0000 0000 0004";
/// Injected by `forwardHeaders`: the upstream gets it, no transform can read it.
const API_KEY: &str = "upstream-api-key-never-readable-3Q";
const COOKIE: &str = "sid=browser-session-cookie-8W";

/// Rule `inbound` vaults `/sensitive_value` (JSON) and `card_number` (forms) as `pci` tokens and
/// lets `pci` be revealed in bodies only. `/in` tokenizes (and copies the field into a header by
/// transform, to show the transform sees the token); `/reveal` detokenizes; `/tx` transforms.
fn manifests(upstream: &str, json_upstream: &str, raw_upstream: &str, redis: Option<&str>) -> String {
    let mut y = secret_yaml("vault-key", &BTreeMap::from([("k1", AES_KEY)]));
    let store = match redis {
        None => "store: memory",
        Some(url) => {
            y += &secret_yaml("redis", &BTreeMap::from([("url", url)]));
            "store: redis\n    redisUrl: {name: redis, key: url}"
        }
    };
    y += &secret_yaml("upstream-keys", &BTreeMap::from([("api", API_KEY)]));
    y += &format!(
        "apiVersion: keygate.dev/v1alpha1
kind: TokenVaultRule
metadata: {{name: inbound, namespace: default}}
spec:
  source:
    {store}
    encryptionKeys: [{{name: vault-key, key: k1}}]
  permissions: [{{classification: pci, locations: [body]}}]
  tokenizeRequest: {{pointers: [/sensitive_value, /card/number], formFields: [card_number], classification: pci, ttl: 1h}}
---
"
    );
    let routes = [
        ("in", upstream, "  vaultRuleRefs: [inbound]
  transform:
    request:
    - {op: setHeader, name: x-copied, value: \"request.body != null && has(request.body.sensitive_value) ? request.body.sensitive_value : 'none'\"}"),
        ("reveal", upstream, "  vaultRuleRefs: [inbound]"),
        ("tx", json_upstream, "  transform:
    request:
    - {op: setHeader, name: x-user, value: \"request.headers['x-user-id'] + '@' + request.query.tenant\"}
    - {op: removeHeader, name: x-debug}
    - {op: setJsonField, pointer: /meta/via, value: \"'keygate'\"}
    - {op: removeJsonField, pointer: /internal}
    - {op: setJsonField, pointer: /total, value: \"request.body.items.map(i, i.price).filter(p, p > 0).size()\"}
    response:
    - {op: setHeader, name: x-upstream-status, value: 'response.status'}
    - {op: removeHeader, name: server}
    - {op: removeJsonField, pointer: /debug}
    - {op: setJsonField, pointer: /for, value: 'request.path'}"),
        ("wrap", json_upstream, "  transform:
    request:
    - {op: replaceJsonBody, value: \"{'envelope': {'payload': request.body, 'method': request.method}}\"}
    response:
    - {op: replaceJsonBody, value: \"{'ok': response.status < 400, 'data': response.body}\"}"),
        ("fails", json_upstream, "  transform:
    request:
    - {op: setHeader, name: x-a, value: \"'first'\"}
    - {op: setHeader, name: x-tenant, value: \"request.headers['x-tenant']\"}"),
        ("fails-answer", json_upstream, "  transform:
    response:
    - {op: setJsonField, pointer: /n, value: 'response.body.count + 1'}"),
        ("echo", json_upstream, "  forwardHeaders:
  - {name: x-api-key, valueFrom: {name: upstream-keys, key: api}}
  transform:
    request:
    - {op: setJsonField, pointer: /headers, value: 'request.headers'}
    response:
    - {op: setJsonField, pointer: /request, value: 'request'}"),
        ("stream", raw_upstream, "  transform:
    request:
    - {op: setHeader, name: x-streamed, value: 'request.method'}
    response:
    - {op: setHeader, name: x-answer, value: \"'seen'\"}"),
    ];
    for (name, upstream, spec) in routes {
        y += &route_yaml(name, &format!("/{name}"), upstream, spec);
    }
    y
}

/// Answers with a JSON document describing what it received, plus fields the answer transforms
/// remove.
async fn json_upstream() -> Upstream {
    Upstream::start(|seen| async move {
        let received: Value = serde_json::from_slice(&seen.body).unwrap_or(Value::Null);
        let body = json!({"received": received, "debug": {"trace": "internal"}, "count": "not a number"});
        Response::builder()
            .header("content-type", "application/json")
            .header("server", "upstream/1.0")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap()
    })
    .await
}

/// A bare HTTP/1.1 upstream that answers as soon as it has the request head, sends one chunk of
/// its answer and then holds the connection open: a proxy that buffered either body would never
/// get it through. Sends each request head it read on `heads`.
async fn holding_upstream(heads: tokio::sync::mpsc::UnboundedSender<String>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let heads = heads.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = heads.send(String::from_utf8_lossy(&head).into_owned());
                let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n";
                conn.write_all(answer.as_bytes()).await.unwrap();
                // Held open: the rest of the answer never comes while the test runs.
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    format!("http://{addr}")
}

struct Setup {
    proxy: Proxy,
    upstream: Upstream,
    json: Upstream,
    heads: tokio::sync::mpsc::UnboundedReceiver<String>,
}

async fn setup() -> Setup {
    setup_with(None).await
}

/// [`setup`] with the rule's tokens in the Redis at `redis`.
async fn setup_with(redis: Option<&str>) -> Setup {
    logs::capture();
    let upstream = Upstream::ok().await;
    let json = json_upstream().await;
    let (tx, heads) = tokio::sync::mpsc::unbounded_channel();
    let raw = holding_upstream(tx).await;
    let proxy = Proxy::start(&manifests(&upstream.url(), &json.url(), &raw, redis)).await;
    Setup {
        proxy,
        upstream,
        json,
        heads,
    }
}

/// The token `id` sent in a JSON body through `path` reaches the upstream as the card number.
async fn assert_reveals(s: &Setup, path: &str, id: &str) {
    let got = post(
        &s.proxy.url(path),
        "application/json",
        format!(r#"{{"card": "{{{{{id}}}}}"}}"#),
        &[],
    )
    .await;
    assert_eq!(got.status, 200, "{:?}", got.body);
    assert_eq!(
        serde_json::from_slice::<Value>(&s.upstream.last().body).unwrap(),
        json!({"card": CARD})
    );
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().filter(|b| *b == b'-').count() == 4
        && s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

#[tokio::test]
async fn the_seed_example_arrives_as_a_token_that_a_revealing_route_turns_back() {
    let s = setup().await;
    let got = post(
        &s.proxy.url("/in/charge"),
        "application/json",
        format!(r#"{{"sensitive_value": "{CARD}", "amount": 12}}"#),
        &[],
    )
    .await;
    assert_eq!(got.status, 200, "{:?}", got.body);
    let seen = s.upstream.last();
    let received: Value = serde_json::from_slice(&seen.body).unwrap();
    let id = received["sensitive_value"].as_str().unwrap().to_string();
    assert!(is_uuid(&id), "the upstream gets a token id, got {id:?}");
    assert_eq!(received["amount"], 12);
    assert!(!String::from_utf8_lossy(&seen.body).contains(CARD));
    assert_eq!(seen.headers["content-length"], seen.body.len().to_string());
    // Inbound tokenization runs before request transforms: what a transform copies is the token.
    assert_eq!(seen.headers["x-copied"], id.as_str());

    // The route allowed to reveal pci data in bodies swaps the token back.
    assert_reveals(&s, "/reveal/pay", &id).await;
    // ... but not in a header, which its rule does not permit for pci.
    let got = get(&s.proxy.url("/reveal/pay"), &[("x-card", &format!("{{{{{id}}}}}"))]).await;
    assert_eq!(
        (got.status.as_u16(), got.error_code().as_str()),
        (403, "TOKEN_NOT_PERMITTED")
    );

    // Nested pointers, and a field that is absent, are fine.
    let got = post(
        &s.proxy.url("/in"),
        "application/json",
        format!(r#"{{"card": {{"number": "{CARD}", "exp": "12/30"}}}}"#),
        &[],
    )
    .await;
    assert_eq!(got.status, 200);
    let received: Value = serde_json::from_slice(&s.upstream.last().body).unwrap();
    assert!(is_uuid(received["card"]["number"].as_str().unwrap()));
    assert_eq!(received["card"]["exp"], "12/30");
    assert_eq!(s.upstream.last().headers["x-copied"], "none");
    logs::assert_not_logged(CARD);
}

#[tokio::test]
async fn form_fields_are_tokenized_by_name() {
    let s = setup().await;
    let body = format!("name=Jane+Doe&card_number={}&note=a%26b", FORM_CARD.replace(' ', "+"));
    let got = post(&s.proxy.url("/in"), "application/x-www-form-urlencoded", body, &[]).await;
    assert_eq!(got.status, 200, "{:?}", got.body);
    let seen = String::from_utf8(s.upstream.last().body.to_vec()).unwrap();
    let fields: Vec<&str> = seen.split('&').collect();
    assert_eq!(fields[0], "name=Jane+Doe");
    assert_eq!(fields[2], "note=a%26b");
    let id = fields[1].strip_prefix("card_number=").unwrap();
    assert!(is_uuid(id), "{seen}");
    // Detokenized back into a form body, form-encoded as it came.
    let got = post(
        &s.proxy.url("/reveal"),
        "application/x-www-form-urlencoded",
        format!("c=%7B%7B{id}%7D%7D"),
        &[],
    )
    .await;
    assert_eq!(got.status, 200, "{:?}", got.body);
    assert_eq!(
        &s.upstream.last().body[..],
        format!("c={}", FORM_CARD.replace(' ', "+")).as_bytes()
    );
    logs::assert_not_logged(FORM_CARD);
}

#[tokio::test]
async fn bodies_that_cannot_be_read_as_declared_are_refused_never_forwarded() {
    let s = setup().await;
    let before = s.upstream.count();
    let gzip = [("content-encoding", "gzip")];
    let cases = [
        ("application/json", &[][..], "it is not valid JSON"),
        (
            "text/plain",
            &[],
            "this route vaults request fields, so its bodies must be JSON or application/x-www-form-urlencoded",
        ),
        ("application/json", &gzip[..], "it is compressed (Content-Encoding)"),
    ];
    for (content_type, headers, why) in cases {
        let got = post(
            &s.proxy.url("/in"),
            content_type,
            format!(r#"{{"sensitive_value": "{CARD}""#),
            headers,
        )
        .await;
        assert_eq!(got.status, 400, "{content_type}");
        assert_eq!(got.error_code(), "REQUEST_NOT_TOKENIZABLE");
        assert_eq!(
            got.json()["proxy_error"]["message"],
            format!("the request body cannot be tokenized: {why}")
        );
        assert!(!String::from_utf8_lossy(&got.body).contains(CARD));
    }
    assert_eq!(s.upstream.count(), before, "nothing was forwarded");
    // A request without a body has nothing to vault.
    assert_eq!(get(&s.proxy.url("/in"), &[]).await.status, 200);
    logs::assert_not_logged(CARD);
}

#[tokio::test]
async fn every_transform_operation_through_the_proxy() {
    let s = setup().await;
    let got = post(
        &s.proxy.url("/tx/orders?tenant=acme"),
        "application/json",
        r#"{"items": [{"price": 3}, {"price": 0}, {"price": 5}], "internal": "drop me"}"#,
        &[("x-user-id", "u7"), ("x-debug", "1")],
    )
    .await;
    assert_eq!(got.status, 200, "{:?}", got.body);
    let seen = s.json.last();
    assert_eq!(seen.headers["x-user"], "u7@acme");
    assert!(seen.headers.get("x-debug").is_none());
    assert_eq!(
        serde_json::from_slice::<Value>(&seen.body).unwrap(),
        json!({"items": [{"price": 3}, {"price": 0}, {"price": 5}], "meta": {"via": "keygate"}, "total": 2})
    );
    assert_eq!(got.headers["x-upstream-status"], "200");
    assert!(got.headers.get("server").is_none());
    assert_eq!(got.headers["content-length"], got.body.len().to_string());
    let answer = got.json();
    assert!(answer.get("debug").is_none());
    assert_eq!(answer["for"], "/tx/orders");
    assert_eq!(answer["received"]["total"], 2);

    let got = post(&s.proxy.url("/wrap"), "application/json", "[1, 2]", &[]).await;
    assert_eq!(got.status, 200, "{:?}", got.body);
    assert_eq!(
        serde_json::from_slice::<Value>(&s.json.last().body).unwrap(),
        json!({"envelope": {"payload": [1, 2], "method": "POST"}})
    );
    assert_eq!(got.json()["ok"], true);
    assert_eq!(got.json()["data"]["received"]["envelope"]["method"], "POST");
}

#[tokio::test]
async fn run_time_failures_are_transform_failed_naming_the_operation() {
    let s = setup().await;
    let before = s.json.count();
    let got = get(&s.proxy.url("/fails"), &[]).await;
    assert_eq!(got.status, 400);
    assert_eq!(got.error_code(), "TRANSFORM_FAILED");
    assert_eq!(
        got.json(),
        json!({"proxy_error": {
            "code": "TRANSFORM_FAILED",
            "message": "transform.request[1] (setHeader x-tenant) failed: a field or key it reads is missing",
            "route": "default/fails"
        }})
    );
    assert_eq!(
        s.json.count(),
        before,
        "a failed request transform sends nothing upstream"
    );
    assert_eq!(get(&s.proxy.url("/fails"), &[("x-tenant", "t1")]).await.status, 200);
    assert_eq!(s.json.last().headers["x-tenant"], "t1");

    let got = get(&s.proxy.url("/fails-answer"), &[]).await;
    assert_eq!(got.status, 502);
    assert_eq!(
        got.json()["proxy_error"]["message"],
        "transform.response[0] (setJsonField /n) failed: a value has the wrong type for the operation or function"
    );
    // Never half an answer: nothing of the upstream's answer reaches the client.
    assert!(!String::from_utf8_lossy(&got.body).contains("received"));

    // A request body a JSON operation cannot parse.
    let got = post(
        &s.proxy.url("/tx?tenant=a"),
        "application/json",
        "{nope",
        &[("x-user-id", "u")],
    )
    .await;
    assert_eq!(got.status, 400);
    assert!(
        got.json()["proxy_error"]["message"]
            .as_str()
            .unwrap()
            .ends_with("failed: the body is not valid JSON")
    );
}

#[tokio::test]
async fn a_header_only_transform_streams_both_bodies() {
    let mut s = setup().await;
    // A request body that sends one chunk and then waits for as long as the test runs.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, std::io::Error>>(1);
    tx.send(Ok(http_body::Frame::data(Bytes::from_static(b"chunk-1"))))
        .await
        .unwrap();
    let body = StreamBody::new(tokio_stream_from(rx));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::combinators::BoxBody<Bytes, std::io::Error>>();
    let req = Request::post(s.proxy.url("/stream/up"))
        .header("content-type", "application/octet-stream")
        .body(BodyExt::boxed(body))
        .unwrap();
    let resp = within(
        "the answer's head while the request body is still open",
        client.request(req),
    )
    .await
    .unwrap();
    let head = s.heads.recv().await.unwrap();
    assert!(head.contains("x-streamed: POST\r\n"), "{head}");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-answer"], "seen");
    let mut body = resp.into_body();
    let first = within("the answer's first chunk while the rest is held", body.frame())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), Bytes::from_static(b"first"));
    drop(tx);
}

/// A `Stream` of what arrives on `rx`.
fn tokio_stream_from<T: Send + 'static>(rx: tokio::sync::mpsc::Receiver<T>) -> impl futures::Stream<Item = T> {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })
}

#[tokio::test]
async fn transforms_never_read_injected_secrets_or_cookies() {
    let s = setup().await;
    let got = post(
        &s.proxy.url("/echo?x=1"),
        "application/json",
        "{}",
        &[("cookie", COOKIE), ("x-visible", "yes")],
    )
    .await;
    assert_eq!(got.status, 200, "{:?}", got.body);
    let seen = s.json.last();
    // The upstream still gets its key: the transform ran before Keygate added it.
    assert_eq!(seen.headers["x-api-key"], API_KEY);
    let copied: Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(copied["headers"]["x-visible"], "yes");
    let answer = String::from_utf8(got.body.to_vec()).unwrap();
    assert!(answer.contains(r#""x-visible":"yes""#), "{answer}");
    for secret in [API_KEY, COOKIE, "browser-session-cookie"] {
        assert!(!answer.contains(secret), "{secret} reached the client: {answer}");
        assert!(!String::from_utf8_lossy(&seen.body).contains(secret));
        logs::assert_not_logged(secret);
    }
}

#[tokio::test]
async fn inbound_tokens_in_redis_are_sealed_and_reveal_back() {
    let redis = keygate_tests::redis::RedisServer::start();
    let s = setup_with(Some(&redis.url())).await;
    let got = post(
        &s.proxy.url("/in"),
        "application/json",
        format!(r#"{{"sensitive_value": "{CARD}"}}"#),
        &[],
    )
    .await;
    assert_eq!(got.status, 200, "{:?}", got.body);
    let received: Value = serde_json::from_slice(&s.upstream.last().body).unwrap();
    let id = received["sensitive_value"].as_str().unwrap().to_string();
    let client = ::redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = ::redis::cmd("KEYS").arg("*").query_async(&mut conn).await.unwrap();
    assert_eq!(
        keys,
        [keygate_proxy::store::key("vault", "default/inbound", id.as_bytes())]
    );
    let ttl: i64 = ::redis::cmd("TTL").arg(&keys[0]).query_async(&mut conn).await.unwrap();
    assert!((3500..=3600).contains(&ttl), "the rule's ttl of 1h: {ttl}");
    let value: Vec<u8> = ::redis::cmd("GET").arg(&keys[0]).query_async(&mut conn).await.unwrap();
    let value = String::from_utf8_lossy(&value);
    for plain in [CARD, id.as_str(), "pci"] {
        assert!(!value.contains(plain), "the store holds plaintext");
    }
    assert_reveals(&s, "/reveal", &id).await;
    logs::assert_not_logged(CARD);
}
