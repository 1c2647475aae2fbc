//! Builds the upstream request from the client's: the upstream URL (prefix stripped, path and
//! query appended to the base), hop-by-hop headers and the browser's cookies dropped,
//! `X-Forwarded-*` set from the resolved [`Client`], and the route's headers injected over
//! anything the client sent.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Uri, request::Parts};

use super::client::Client;
use crate::config::LiveRoute;
use crate::error::ProxyError;

const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Whether `name` is a header in which a client claims who it is or how it came; only Keygate
/// writes those upstream.
fn is_client_claim(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "forwarded" | "x-real-ip" | "x-forwarded-for" | "x-forwarded-proto" | "x-forwarded-host" | "x-forwarded-port"
    )
}

/// The upstream URI for a request to `path_and_query` on `route`.
pub fn upstream_uri(
    route: &LiveRoute,
    scheme: &Scheme,
    authority: &Authority,
    base_path: &str,
    uri: &Uri,
) -> Result<Uri, ProxyError> {
    let path = uri.path();
    let rest = if route.spec.strip_prefix && route.spec.path_prefix != "/" {
        &path[route.spec.path_prefix.len().min(path.len())..]
    } else {
        path
    };
    let root = base_path.is_empty() && rest.is_empty();
    // Exactly the length: a string with room to spare becomes a shared buffer only through one
    // more allocation.
    let len = base_path.len() + rest.len() + usize::from(root) + uri.query().map_or(0, |q| q.len() + 1);
    let mut pq = String::with_capacity(len);
    pq.push_str(base_path);
    pq.push_str(rest);
    if root {
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
pub fn rewrite_headers(route: &LiveRoute, parts: &mut Parts, client: &Client) {
    let headers = &mut parts.headers;
    // The client may not vouch for who it is; the upstream connection sets Host from the
    // upstream URI.
    let sent_host = headers.remove(header::HOST);
    let original_host = client.host.clone().or(sent_host).or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    let passthrough = route.spec.cookie_passthrough;
    super::strip_fields(headers, |name| {
        is_client_claim(name) || (!passthrough && name == header::COOKIE)
    });
    if passthrough {
        join_cookies(headers);
    }
    // Two values from one text rather than one value cloned: a clone of a value built from
    // bytes allocates anyway.
    let addr = client.addr_text();
    headers.insert(X_FORWARDED_FOR, client.chain.clone().unwrap_or_else(|| addr.header()));
    headers.insert(X_REAL_IP, addr.header());
    headers.insert(X_FORWARDED_PROTO, client.proto.header());
    if let Some(host) = original_host {
        headers.insert(X_FORWARDED_HOST, host);
    }
    for (name, value) in &route.inject {
        headers.insert(name.clone(), value.clone());
    }
}

/// HTTP/2 clients may send each cookie as its own field; an HTTP/1.1 upstream must get them as
/// one `Cookie` header joined by `; ` (RFC 9113 §8.2.3).
fn join_cookies(headers: &mut HeaderMap) {
    if headers.get_all(header::COOKIE).iter().nth(1).is_none() {
        return;
    }
    let joined: Vec<&[u8]> = headers
        .get_all(header::COOKIE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    if let Ok(v) = HeaderValue::from_bytes(&joined.join(&b"; "[..])) {
        headers.insert(header::COOKIE, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Target, test_route};
    use crate::pipeline::client::{self, Connection, TrustedProxies};
    use http::Request;

    fn forwarded(route: &LiveRoute, uri: &str) -> String {
        let Target::Fixed {
            scheme,
            authority,
            base_path,
        } = &route.target
        else {
            unreachable!()
        };
        upstream_uri(route, scheme, authority, base_path, &uri.parse().unwrap())
            .unwrap()
            .to_string()
    }

    #[test]
    fn base_url_semantics() {
        let strip = test_route(serde_json::json!({}));
        assert_eq!(
            forwarded(&strip, "/r/a/b?x=1&y=%20"),
            "http://127.0.0.1:1/base/a/b?x=1&y=%20"
        );
        assert_eq!(forwarded(&strip, "/r"), "http://127.0.0.1:1/base");
        assert_eq!(forwarded(&strip, "/r/"), "http://127.0.0.1:1/base/");
        let keep = test_route(serde_json::json!({"stripPrefix": false}));
        assert_eq!(forwarded(&keep, "/r/a"), "http://127.0.0.1:1/base/r/a");
        let root = test_route(
            serde_json::json!({"pathPrefix": "/", "destination": {"type": "upstream", "url": "http://127.0.0.1:1"}}),
        );
        assert_eq!(forwarded(&root, "/a?q"), "http://127.0.0.1:1/a?q");
    }

    /// What a lenient upstream makes of a path: every escape decoded (`times` over), `\\` read as
    /// `/`, `;params` dropped from each segment, dot segments removed (clamped at the root).
    fn resolved_by_lenient_upstream(path: &str, times: usize) -> String {
        let mut bytes = path.as_bytes().to_vec();
        for _ in 0..times {
            let mut out = Vec::with_capacity(bytes.len());
            let mut i = 0;
            while i < bytes.len() {
                let hex = |b: u8| (b as char).to_digit(16);
                match (
                    bytes[i],
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) {
                    (b'%', Some(hi), Some(lo)) => {
                        out.push((hi * 16 + lo) as u8);
                        i += 3;
                    }
                    (b, ..) => {
                        out.push(b);
                        i += 1;
                    }
                }
            }
            bytes = out;
        }
        let text = String::from_utf8_lossy(&bytes).replace('\\', "/");
        let mut kept: Vec<&str> = Vec::new();
        for segment in text.split('/').skip(1) {
            match segment.split(';').next().unwrap_or("") {
                "." => {}
                ".." => {
                    kept.pop();
                }
                name => kept.push(name),
            }
        }
        format!("/{}", kept.join("/"))
    }

    /// Random paths under the route's prefix, built from the pieces path tricks are made of.
    fn random_path(rng: &mut crate::test_rng::Rng) -> String {
        const PIECES: &[&str] = &[
            "/", "/", "a", "..", ".", "%2e", "%2E", "%2f", "%2F", "%5c", "\\", ";", ";x=1", "%25", "%32", "%65",
            "%c0%ae", "%c0", "%ae", "//", "%", "e", "2", "f", "%41", "~", "%7e", "admin", "?", "#", "%252e", "%252E",
            "%252f", "%255c", "%2525",
        ];
        let mut path = String::from(if rng.below(8) == 0 { "/" } else { "/r/" });
        for _ in 0..rng.below(12) {
            path.push_str(PIECES[rng.below(PIECES.len())]);
        }
        path
    }

    /// The issue's property: whatever the path, what the upstream receives resolves (however
    /// leniently the upstream decodes it, once or twice) to a path under the route's base path.
    #[test]
    fn nothing_reaches_the_upstream_outside_its_base_path() {
        use super::super::path::normalize;
        use crate::router::Router;
        let routes = [
            test_route(serde_json::json!({})),
            test_route(serde_json::json!({"stripPrefix": false})),
            test_route(serde_json::json!({"allowEncodedSlashes": true})),
        ];
        let router = Router::new([(Vec::new(), "/r".to_string(), ())]);
        let (mut served, mut refused) = (0, 0);
        for seed in 0..20_000u64 {
            let mut rng = crate::test_rng::Rng::seeded(seed);
            let raw = random_path(&mut rng);
            let Ok(uri) = raw.parse::<Uri>() else { continue };
            let Ok(n) = normalize(uri.path()) else {
                refused += 1;
                continue;
            };
            if router.lookup(None, &n.path).is_none() {
                continue;
            }
            let canonical: Uri = match uri.query() {
                Some(q) => format!("{}?{q}", n.path),
                None => n.path.to_string(),
            }
            .parse()
            .unwrap_or_else(|e| panic!("seed {seed}: canonical path {:?} does not parse: {e}", n.path));
            for route in routes
                .iter()
                .filter(|r| !n.encoded_slash || r.spec.allow_encoded_slashes)
            {
                let sent = forwarded(route, &canonical.to_string());
                let sent_path = sent.strip_prefix("http://127.0.0.1:1").unwrap();
                let sent_path = sent_path.split('?').next().unwrap();
                assert!(
                    sent_path == "/base" || sent_path.starts_with("/base/"),
                    "seed {seed}: {raw:?} sent as {sent}"
                );
                for times in 1..=2 {
                    let seen = resolved_by_lenient_upstream(sent_path, times);
                    assert!(
                        seen == "/base" || seen.starts_with("/base/"),
                        "seed {seed}: {raw:?} sent as {sent_path:?} resolves to {seen:?} after {times} decodings"
                    );
                }
                served += 1;
            }
        }
        // The generator must exercise both sides, or the property says nothing.
        assert!(served > 5_000 && refused > 2_000, "served {served}, refused {refused}");
    }

    fn rewritten(route: &LiveRoute, headers: &[(&str, &str)]) -> HeaderMap {
        let mut b = Request::get("/r");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let mut parts = b.body(()).unwrap().into_parts().0;
        let conn = Connection {
            peer: "192.0.2.7:5000".parse().unwrap(),
            proxied: None,
            tls: false,
        };
        let client = client::resolve(&conn, &parts.headers, &TrustedProxies::default());
        rewrite_headers(route, &mut parts, &client);
        parts.headers
    }

    #[test]
    fn cookies_dropped_unless_passed_through_and_then_joined() {
        let cookies = [("cookie", "a=1"), ("cookie", "b=2")];
        assert!(
            rewritten(&test_route(serde_json::json!({})), &cookies)
                .get("cookie")
                .is_none()
        );
        let through = rewritten(&test_route(serde_json::json!({"cookiePassthrough": true})), &cookies);
        assert_eq!(through.get_all("cookie").iter().collect::<Vec<_>>(), ["a=1; b=2"]);
    }

    #[test]
    fn forwarded_headers_and_injection_win_over_the_client() {
        let route =
            test_route(serde_json::json!({"forwardHeaders": [{"name": "x-api-key", "value": {"literal": "server"}}]}));
        let h = rewritten(
            &route,
            &[
                ("x-api-key", "client"),
                ("host", "app.example"),
                ("x-forwarded-for", "198.51.100.1"),
                ("x-forwarded-proto", "https"),
                ("forwarded", "for=198.51.100.1"),
                ("x-real-ip", "198.51.100.1"),
            ],
        );
        assert_eq!(h["x-api-key"], "server");
        assert_eq!(h.get_all("x-api-key").iter().count(), 1);
        assert!(h.get("host").is_none(), "hyper sets Host from the upstream URI");
        assert_eq!(h["x-forwarded-host"], "app.example");
        assert_eq!(
            h["x-forwarded-for"], "192.0.2.7",
            "an untrusted peer's chain is not believed"
        );
        assert_eq!(h["x-real-ip"], "192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert!(h.get("forwarded").is_none());
    }
}
