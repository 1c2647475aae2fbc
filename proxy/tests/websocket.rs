//! WebSocket tunnels against a real echo upstream and a real client (tokio-tungstenite): the
//! handshake passes the pipeline (API key injected, browser cookie dropped, Origin checked),
//! messages echo both ways, routes without `websocket: true` get no upgrade, `Upgrade: h2c`
//! is ignored, and shutdown closes an open tunnel within the drain timeout.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use futures::{SinkExt, StreamExt};
use http::StatusCode;
use keygate_proxy::edge::Edge;
use keygate_proxy::proxy::Shared;
use keygate_proxy::server::{ListenerLimits, serve_proxy};
use keygate_proxy::source::{self, Source};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A WebSocket echo server; records each handshake's headers.
async fn echo_upstream() -> (String, Arc<Mutex<Vec<http::HeaderMap>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                // tungstenite fixes the callback's error type (a whole HTTP response).
                #[allow(clippy::result_large_err)]
                let callback = |req: &http::Request<()>, resp| {
                    record.lock().unwrap().push(req.headers().clone());
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, seen)
}

fn manifests(upstream: &str) -> String {
    manifests_with_key(upstream, "sk-ws-4411")
}

fn manifests_with_key(upstream: &str, key: &str) -> String {
    let spec = "  websocket: true\n  forwardHeaders:\n  - name: x-api-key\n    valueFrom: {name: keys, key: api}\n  csrf: {mode: header, headerName: x-csrf, headerValue: \"1\"}\n  cors: {allowOrigins: [https://app.example]}";
    secret_yaml("keys", &BTreeMap::from([("api", key)]))
        + &route_yaml("ws", "/ws", upstream, spec)
        + &route_yaml("plain", "/plain", upstream, "")
}

type Client = tokio_tungstenite::WebSocketStream<TcpStream>;

async fn connect(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut()
            .insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
    }
    let tcp = TcpStream::connect(addr).await.unwrap();
    within("the handshake", tokio_tungstenite::client_async(req, tcp))
        .await
        .map(|(ws, _)| ws)
}

const BROWSER: &[(&str, &str)] = &[("origin", "https://app.example"), ("cookie", "session=browser-secret")];

async fn echo(ws: &mut Client, msg: Message) {
    ws.send(msg.clone()).await.unwrap();
    let back = within("the echo", ws.next()).await.unwrap().unwrap();
    assert_eq!(back, msg);
}

#[tokio::test]
async fn messages_echo_through_the_proxy_with_the_key_injected_and_no_cookie() {
    let (up, seen) = echo_upstream().await;
    let proxy = Proxy::start(&manifests(&up)).await;
    let mut ws = connect(proxy.addr, "/ws/chat", BROWSER)
        .await
        .expect("handshake through the proxy");
    echo(&mut ws, Message::text("hello through keygate")).await;
    echo(&mut ws, Message::binary(vec![0u8, 1, 2, 255])).await;
    let headers = seen.lock().unwrap()[0].clone();
    assert_eq!(headers["x-api-key"], "sk-ws-4411");
    assert!(
        headers.get("cookie").is_none(),
        "the browser cookie reached the upstream"
    );
    let metrics = proxy.shared.metrics.render();
    assert!(
        metrics.contains(r#"keygate_websockets_total{route="default/ws"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"keygate_websockets_open{route="default/ws"} 1"#),
        "{metrics}"
    );
    ws.close(None).await.unwrap();
    // The close handshake completes and the client hangs up, as a browser does.
    within("the close handshake", async { while ws.next().await.is_some() {} }).await;
    drop(ws);
    for _ in 0..100 {
        if proxy.shared.tunnels.open() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(proxy.shared.tunnels.open(), 0);
    assert!(
        proxy
            .shared
            .metrics
            .render()
            .contains(r#"keygate_websockets_open{route="default/ws"} 0"#)
    );
}

#[tokio::test]
async fn a_handshake_from_another_origin_gets_403_json() {
    let (up, seen) = echo_upstream().await;
    let proxy = Proxy::start(&manifests(&up)).await;
    let err = connect(proxy.addr, "/ws/chat", &[("origin", "https://evil.example")])
        .await
        .unwrap_err();
    let tokio_tungstenite::tungstenite::Error::Http(resp) = err else {
        panic!("expected an HTTP refusal, got {err:?}")
    };
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    // tungstenite keeps whatever bytes it read past the head, so match the JSON, not parse it.
    let body = String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned();
    assert!(body.contains(r#"{"proxy_error":{"code":"CSRF_FAILED""#), "{body:?}");
    assert!(
        seen.lock().unwrap().is_empty(),
        "the refused handshake reached the upstream"
    );
}

#[tokio::test]
async fn without_the_opt_in_or_for_h2c_there_is_no_upgrade() {
    let up = Upstream::ok().await;
    let proxy = Proxy::start(
        &(route_yaml("plain", "/plain", &up.url(), "") + &route_yaml("ws", "/ws", &up.url(), "  websocket: true")),
    )
    .await;
    // No opt-in: the handshake reaches the upstream as a plain GET, without upgrade headers.
    let err = connect(proxy.addr, "/plain/chat", &[]).await.unwrap_err();
    assert!(
        matches!(&err, tokio_tungstenite::tungstenite::Error::Http(r) if r.status() == StatusCode::OK),
        "{err:?}"
    );
    let seen = up.last();
    assert!(
        seen.headers.get("upgrade").is_none() && seen.headers.get("connection").is_none(),
        "{:?}",
        seen.headers
    );
    // Upgrade: h2c is never honoured, even on a WebSocket route.
    let got = get(
        &proxy.url("/ws/h2c"),
        &[
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA"),
        ],
    )
    .await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body, "upstream ok");
    let seen = up.last();
    assert!(
        seen.headers.get("upgrade").is_none() && seen.headers.get("http2-settings").is_none(),
        "{:?}",
        seen.headers
    );
}

#[tokio::test]
async fn shutdown_closes_an_open_websocket_within_the_drain_timeout() {
    let (up, _) = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("keygate.yaml"), manifests(&up)).unwrap();
    let shared = Arc::new(Shared::default());
    source::load_once(&Source::Manifests(dir.path().to_path_buf()), &shared).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let limits = ListenerLimits {
        drain: Duration::from_secs(10),
        ..ListenerLimits::default()
    };
    let server = tokio::spawn(serve_proxy(listener, shared.clone(), limits, Edge::default(), async {
        let _ = stopped.await;
    }));
    let mut ws = connect(addr, "/ws/chat", BROWSER).await.unwrap();
    echo(&mut ws, Message::text("before shutdown")).await;
    assert_eq!(shared.tunnels.open(), 1);
    stop.send(()).unwrap();
    // The server returns once the tunnel is closed, well within the 10 s drain timeout.
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("shutdown waited for the websocket")
        .unwrap();
    assert_eq!(shared.tunnels.open(), 0);
    let next = within("the client to see the close", ws.next()).await;
    assert!(!matches!(next, Some(Ok(Message::Text(_)))), "{next:?}");
}

#[tokio::test]
async fn a_reload_that_changes_the_route_closes_its_tunnels_after_the_drain_timeout() {
    let (up, seen) = echo_upstream().await;
    let limits = ListenerLimits {
        drain: Duration::from_millis(500),
        ..ListenerLimits::default()
    };
    let proxy = Proxy::start_limited(&manifests(&up), limits, Default::default()).await;
    let mut ws = connect(proxy.addr, "/ws/chat", BROWSER).await.unwrap();
    echo(&mut ws, Message::text("before")).await;

    // A reload that leaves the route as it was leaves the tunnel open.
    let hash = proxy.hash();
    proxy.rewrite(&(manifests(&up) + &route_yaml("other", "/other", &up, "")));
    let hash = proxy.wait_for_new_config(&hash).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    echo(&mut ws, Message::text("after an unrelated reload")).await;

    // Rotating the key the route injects closes it once the drain timeout has passed.
    proxy.rewrite(&manifests_with_key(&up, "sk-ws-rotated"));
    proxy.wait_for_new_config(&hash).await;
    let closed = within("the tunnel to close after the reload", async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(msg)) if msg.is_close() => return,
                Some(Ok(_)) => {}
            }
        }
    });
    closed.await;
    for _ in 0..100 {
        if proxy.shared.tunnels.open() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(proxy.shared.tunnels.open(), 0);
    // A new handshake gets the new key.
    let mut ws = connect(proxy.addr, "/ws/chat", BROWSER).await.unwrap();
    echo(&mut ws, Message::text("on the new config")).await;
    assert_eq!(seen.lock().unwrap().last().unwrap()["x-api-key"], "sk-ws-rotated");
}
