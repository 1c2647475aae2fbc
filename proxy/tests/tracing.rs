//! W3C trace context end to end: the upstream receives a valid `traceparent` (the client's when
//! valid, a new one otherwise), and the access log line carries the same trace id.

mod common;

use common::*;
use http::StatusCode;
use keygate_proxy::pipeline::trace;

const CLIENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test]
async fn the_upstream_and_the_access_log_share_the_trace_id() {
    logs::capture();
    let up = Upstream::ok().await;
    let proxy = Proxy::start(&route_yaml("api", "/api", &up.url(), "")).await;

    // A valid traceparent passes untouched, with its tracestate.
    let got = get(
        &proxy.url("/api/traced"),
        &[("traceparent", CLIENT), ("tracestate", "congo=t61rcWkgMzE")],
    )
    .await;
    assert_eq!(got.status, StatusCode::OK);
    let seen = up.last();
    assert_eq!(seen.headers["traceparent"], CLIENT);
    assert_eq!(seen.headers["tracestate"], "congo=t61rcWkgMzE");

    // Absent or malformed: the upstream gets a new, valid one, and no stale tracestate.
    for headers in [
        vec![],
        vec![
            ("traceparent", "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
            ("tracestate", "x=1"),
        ],
    ] {
        let got = get(&proxy.url("/api/untraced"), &headers).await;
        assert_eq!(got.status, StatusCode::OK);
        let seen = up.last();
        let value = seen.headers["traceparent"].to_str().unwrap().to_string();
        let id = trace::parse(value.as_bytes()).unwrap_or_else(|| panic!("invalid traceparent {value:?}"));
        assert!(seen.headers.get("tracestate").is_none());
        assert_ne!(value, CLIENT);
        assert_access_logged(&id.to_string(), "/api/untraced");
    }
    assert_access_logged("4bf92f3577b34da6a3ce929d0e0e4736", "/api/traced");

    // Keygate's own answers are logged with a trace id too.
    let got = get(&proxy.url("/nowhere"), &[("traceparent", CLIENT)]).await;
    assert_eq!(got.status, StatusCode::NOT_FOUND);
    assert_access_logged("4bf92f3577b34da6a3ce929d0e0e4736", "/nowhere");
}

/// Fails unless an access log line for `path` names `trace_id`.
fn assert_access_logged(trace_id: &str, path: &str) {
    let logs = logs::captured();
    assert!(
        logs.lines().any(|l| l.contains("keygate::access")
            && l.contains(&format!("path={path} "))
            && l.contains(&format!("trace_id={trace_id}"))),
        "no access log line for {path} with trace_id={trace_id}:\n{logs}"
    );
}
