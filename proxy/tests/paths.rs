//! Paths as an attacker spells them, sent byte for byte over a raw socket (no client library in
//! between to tidy them up) to the real in-process proxy, and what the upstream then receives:
//! never anything outside the route's base path.

mod common;

use std::collections::BTreeMap;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The status line's code and the body of the answer to `GET <target>`, sent exactly as written.
async fn raw_get(proxy: &Proxy, target: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let request = format!("GET {target} HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    within("the proxy's answer", stream.read_to_end(&mut answer))
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"));
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
    (status, body)
}

/// The `proxy_error.code` in an error body.
fn code(body: &str) -> String {
    let json: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body:?}"));
    json["proxy_error"]["code"].as_str().unwrap_or_default().to_string()
}

/// Routes `/api` → `<up>/v1` (with a key only that upstream may see), `/admin` → `<up>/admin`,
/// and `/files` → `<up>/store`, which allows encoded slashes.
async fn start(up: &Upstream) -> Proxy {
    let key = "  forwardHeaders:\n  - name: x-api-key\n    valueFrom: {name: keys, key: api}";
    let yaml = secret_yaml("keys", &BTreeMap::from([("api", "sk-api-only")]))
        + &route_yaml("api", "/api", &format!("{}/v1", up.url()), key)
        + &route_yaml("admin", "/admin", &format!("{}/admin", up.url()), "")
        + &route_yaml(
            "files",
            "/files",
            &format!("{}/store", up.url()),
            "  allowEncodedSlashes: true",
        );
    Proxy::start(&yaml).await
}

#[tokio::test]
async fn spellings_of_an_escape_never_leave_the_base_path() {
    let up = Upstream::ok().await;
    let proxy = start(&up).await;
    // (what the browser sends, what the upstream receives)
    let served = [
        ("/api/users/1", "/v1/users/1"),
        ("/api/./users/./1", "/v1/users/1"),
        ("/api/a/../users", "/v1/users"),
        ("/api/a/%2e%2e/users", "/v1/users"),
        ("/api/a/%2E%2e/users", "/v1/users"),
        ("/api/a/.%2E/users", "/v1/users"),
        ("/api//users///1", "/v1/users/1"),
        ("//api/users", "/v1/users"),
        ("/api/%75sers?q=/../x&r=%2e%2e", "/v1/users?q=/../x&r=%2e%2e"),
        ("/api/x;v=1/y", "/v1/x;v=1/y"),
        ("/api/a%20b/%e2%82%ac", "/v1/a%20b/%E2%82%AC"),
        ("/files/a%2fb/c%5Cd", "/store/a%2Fb/c%5Cd"),
    ];
    for (sent, expected) in served {
        let before = up.count();
        let (status, body) = raw_get(&proxy, sent).await;
        assert_eq!(status, 200, "{sent}: {body}");
        assert_eq!(up.count(), before + 1, "{sent}");
        assert_eq!(up.last().uri, expected, "{sent}");
    }
}

#[tokio::test]
async fn refused_spellings_never_reach_the_upstream() {
    let up = Upstream::ok().await;
    let proxy = start(&up).await;
    let long = format!("/api/{}", "a".repeat(9000));
    let refused: [(&str, u16, &str); 16] = [
        ("/api/../../admin", 400, "BAD_PATH"),
        ("/api/%2e%2e/%2e%2e/admin", 400, "BAD_PATH"),
        ("/..", 400, "BAD_PATH"),
        ("/api/..%2fadmin", 400, "BAD_PATH"),
        ("/api/..%2Fadmin", 400, "BAD_PATH"),
        ("/api/..%5cadmin", 400, "BAD_PATH"),
        ("/api/..\\admin", 400, "BAD_PATH"),
        ("/api/..;/admin", 400, "BAD_PATH"),
        ("/api/%252e%252e/admin", 400, "BAD_PATH"),
        ("/api/%c0%ae%c0%ae/admin", 400, "BAD_PATH"),
        ("/api/%zz", 400, "BAD_PATH"),
        ("/api/a%2Fb", 400, "BAD_PATH"),
        ("/api/a%5cb", 400, "BAD_PATH"),
        ("/api/a\\b", 400, "BAD_PATH"),
        ("/files/..%2fadmin", 400, "BAD_PATH"),
        (long.as_str(), 414, "PATH_TOO_LONG"),
    ];
    for (sent, status, expected) in refused {
        let (got, body) = raw_get(&proxy, sent).await;
        assert_eq!((got, code(&body).as_str()), (status, expected), "{sent}: {body}");
    }
    assert_eq!(up.count(), 0, "nothing refused reached the upstream");
    let (_, body) = raw_get(&proxy, "/api/a%2Fb").await;
    assert!(body.contains("allowEncodedSlashes"), "the error names the fix: {body}");
}

#[tokio::test]
async fn routing_sees_the_normalized_path() {
    let up = Upstream::ok().await;
    let proxy = start(&up).await;
    // Climbing out of /api lands on /admin's route, with /admin's headers, not /api's key.
    let (status, body) = raw_get(&proxy, "/api/../admin/users").await;
    assert_eq!(status, 200, "{body}");
    let seen = up.last();
    assert_eq!(seen.uri, "/admin/users");
    assert!(
        seen.headers.get("x-api-key").is_none(),
        "the /api route's key stays with it"
    );
    // An escape of an unreserved character is the character: `/%61pi` is `/api`.
    let (status, _) = raw_get(&proxy, "/%61pi/users").await;
    assert_eq!(status, 200);
    assert_eq!(up.last().uri, "/v1/users");
    assert_eq!(up.last().headers["x-api-key"], "sk-api-only");
    // `/api/..` is `/`, which no route owns: it is not forwarded to /api's upstream.
    let before = up.count();
    let (status, body) = raw_get(&proxy, "/api/..").await;
    assert_eq!((status, code(&body).as_str()), (404, "ROUTE_NOT_FOUND"));
    assert_eq!(up.count(), before);
}
