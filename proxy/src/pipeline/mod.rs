//! The request pipeline, one stage per module, in the order a request meets them:
//! [`client`] (who is asking, resolved once per request) → [`trace`] (a W3C `traceparent` on
//! every request) → [`path`] (one canonical spelling, before routing) → [`cors`] (preflights
//! answered here) → [`limits`] (method, content type, body size) → [`cookie`] (session start and
//! logout intercepted) → [`auth`] (cookie translated, API key
//! checked) → [`csrf`] (unsafe methods) → [`ratelimit`] (token buckets) → [`chain`] (session-chain
//! check and advance, each link proven as [`proof`] says; its create path is served before routing) → destination (see
//! [`crate::external`]) → inbound tokenization (`tokenizeRequest`, see [`crate::vault`]) →
//! [`transform`] (CEL request operations) → [`request`] (the upstream request: URL, header
//! hygiene, injected headers) → vault detokenization → upstream (see [`crate::proxy`]) →
//! [`response`] (header hygiene and renames on the way back; answers tokenized; the login answer
//! becomes a cookie; then the [`transform`] answer operations; CORS headers on every answer).

pub mod auth;
pub mod chain;
pub mod client;
pub mod cookie;
pub mod cors;
pub mod csrf;
pub mod limits;
pub mod path;
pub mod proof;
pub mod ratelimit;
pub mod request;
pub mod response;
pub mod trace;
pub mod transform;

use std::pin::Pin;
use std::task::{Context, Poll};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use smallvec::SmallVec;

use crate::error::ProxyError;

/// What a stage that may wait returns: its result at once when the route does not configure the
/// stage, else its work on the heap. A request's future would otherwise carry every stage's
/// state inline, sized for the largest, on every route, and build and move it on each request
/// whether the stage runs or not (docs/architecture.md has the sizes).
pub enum Stage<'a, T> {
    /// Nothing to wait for.
    Done(Option<Result<T, ProxyError>>),
    /// The stage's work.
    Running(Pin<Box<dyn Future<Output = Result<T, ProxyError>> + Send + 'a>>),
}

impl<'a, T> Stage<'a, T> {
    /// A stage the route does not configure: `value` passes on unchanged.
    pub fn skip(value: T) -> Self {
        Stage::Done(Some(Ok(value)))
    }

    /// A stage that decided without waiting.
    pub fn ready(result: Result<T, ProxyError>) -> Self {
        Stage::Done(Some(result))
    }

    /// A stage that waits.
    pub fn run(work: impl Future<Output = Result<T, ProxyError>> + Send + 'a) -> Self {
        Stage::Running(Box::pin(work))
    }
}

// Neither variant is pinned in place: the result is moved out, the work is already boxed.
impl<T> Unpin for Stage<'_, T> {}

impl<T> Future for Stage<'_, T> {
    type Output = Result<T, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Stage::Done(result) => Poll::Ready(result.take().expect("a stage is polled after it finished")),
            Stage::Running(work) => work.as_mut().poll(cx),
        }
    }
}

/// Whether `name` describes one connection, not the message, and so never crosses the proxy
/// (RFC 9110 §7.6.1). `Transfer-Encoding` goes too: each side frames its own messages.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "upgrade"
            | "transfer-encoding"
    )
}

/// Removes the hop-by-hop headers, every header named in `Connection`, and every header
/// `also` picks. The names present are walked once: a request carries a handful of fields, and
/// a lookup for each name that might be there cost more than the walk.
pub(crate) fn strip_fields(headers: &mut HeaderMap, also: impl Fn(&HeaderName) -> bool) {
    // The names `Connection` lists are matched as text where they stand, and the doomed names
    // are gathered on the stack: most requests lose a field or two, and neither list is worth
    // an allocation.
    let connection = headers.get_all(header::CONNECTION);
    let named = connection.iter().next().is_some();
    let doomed: SmallVec<[HeaderName; 4]> = headers
        .keys()
        .filter(|n| is_hop_by_hop(n) || also(n) || (named && connection.iter().any(|v| value_has_token(v, n.as_str()))))
        .cloned()
        .collect();
    for name in &doomed {
        headers.remove(name);
    }
}

/// Whether a `name` field's comma-separated list holds `token` (case-insensitive), as hyper
/// reads `Connection`: values that are not visible ASCII are skipped.
pub(crate) fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| value_has_token(v, token))
}

/// Whether one value of a comma-separated field holds `token`, read as [`has_token`] reads it.
pub(crate) fn value_has_token(value: &HeaderValue, token: &str) -> bool {
    value
        .to_str()
        .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// Removes the value at JSON pointer `pointer` (RFC 6901), if there is one: the session token
/// from a login answer, a field a transform removes.
pub(crate) fn remove_pointer(doc: &mut serde_json::Value, pointer: &str) {
    let Some((parent, last)) = pointer.rsplit_once('/') else {
        return;
    };
    let last = last.replace("~1", "/").replace("~0", "~");
    match doc.pointer_mut(parent) {
        Some(serde_json::Value::Object(map)) => {
            map.remove(&last);
        }
        Some(serde_json::Value::Array(items)) => {
            if let Ok(i) = last.parse::<usize>()
                && i < items.len()
            {
                items.remove(i);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn token_removed_and_subtree_kept() {
        let mut doc = json!({"result": {"session": {"token": "T", "user": "ann"}, "plan": "pro"}, "meta": 1});
        remove_pointer(&mut doc, "/result/session/token");
        assert_eq!(
            doc,
            json!({"result": {"session": {"user": "ann"}, "plan": "pro"}, "meta": 1})
        );
        let mut doc = json!({"a/b": {"~t": "T"}, "list": ["x", "T"]});
        remove_pointer(&mut doc, "/a~1b/~0t");
        remove_pointer(&mut doc, "/list/1");
        remove_pointer(&mut doc, "/missing/x");
        assert_eq!(doc, json!({"a/b": {}, "list": ["x"]}));
    }
    use http::HeaderValue;

    #[test]
    fn removes_hop_by_hop_and_connection_tokens() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret-Hop , upgrade"),
        );
        // A second `Connection` field names more.
        h.append(header::CONNECTION, HeaderValue::from_static("X-Other-Hop"));
        h.insert("x-other-hop", HeaderValue::from_static("1"));
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::PROXY_AUTHORIZATION, HeaderValue::from_static("Basic x"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        h.insert("x-picked", HeaderValue::from_static("1"));
        strip_fields(&mut h, |name| name == "x-picked");
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-kept"], "yes");
    }
}
