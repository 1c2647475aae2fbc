//! Builds the upstream request from the client's: the upstream URL (prefix stripped, path and
//! query appended to the base), hop-by-hop headers and the browser's cookies dropped,
//! `X-Forwarded-*` set, and the route's headers injected over anything the client sent.

use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{request::Parts, Uri};

use crate::config::LiveRoute;
use crate::error::ProxyError;

/// The upstream URI for a request to `path_and_query` on `route`.
pub fn upstream_uri(route: &LiveRoute, scheme: &Scheme, authority: &Authority, base_path: &str, uri: &Uri) -> Result<Uri, ProxyError> {
    let path = uri.path();
    let rest = if route.spec.strip_prefix && route.spec.path_prefix != "/" {
        &path[route.spec.path_prefix.len().min(path.len())..]
    } else {
        path
    };
    let mut pq = String::with_capacity(base_path.len() + rest.len() + uri.query().map_or(0, |q| q.len() + 1) + 1);
    pq.push_str(base_path);
    pq.push_str(rest);
    if pq.is_empty() {
        pq.push('/');
    }
    if let Some(q) = uri.query() {
        pq.push('?');
        pq.push_str(q);
    }
    let pq = PathAndQuery::try_from(pq).map_err(|_| ProxyError::BadRequest("the request path cannot be forwarded"))?;
    Uri::builder()
        .scheme(scheme.clone())
        .authority(authority.clone())
        .path_and_query(pq)
        .build()
        .map_err(|_| ProxyError::BadRequest("the request path cannot be forwarded"))
}

/// Rewrites the client's headers in place into the upstream's.
pub fn rewrite_headers(route: &LiveRoute, parts: &mut Parts, peer: SocketAddr) {
    let original_host = parts
        .headers
        .get(header::HOST)
        .cloned()
        .or_else(|| parts.uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()));
    let headers = &mut parts.headers;
    super::strip_hop_by_hop(headers);
    // The client may not vouch for who it is; hyper sets Host from the upstream URI.
    headers.remove(header::HOST);
    if !route.spec.cookie_passthrough {
        headers.remove(header::COOKIE);
    }
    forwarded_for(headers, peer);
    headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    if let Some(host) = original_host {
        headers.insert("x-forwarded-host", host);
    }
    for (name, value) in &route.inject {
        headers.insert(name.clone(), value.clone());
    }
}

/// Appends the peer to `X-Forwarded-For`, keeping the chain earlier proxies built.
fn forwarded_for(headers: &mut HeaderMap, peer: SocketAddr) {
    let ip = peer.ip().to_string();
    let chain = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prior) if !prior.trim().is_empty() => format!("{prior}, {ip}"),
        _ => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&chain) {
        headers.insert("x-forwarded-for", v);
    }
}
