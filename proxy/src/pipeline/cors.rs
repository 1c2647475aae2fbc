//! Cross-origin rules, answered by Keygate per route: preflights never reach the upstream, and
//! every answer on a CORS route (the upstream's and Keygate's own errors alike, so a page can read
//! a `proxy_error`) gets the headers for an allowed origin and none for any other.
//!
//! The lists come from `compile()` already complete — configured headers plus the ones Keygate
//! reads on the route (API key, session chain, CSRF, target URL) — and are rendered into header
//! values once per config generation.

use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode};
use keygate_crds::snapshot::CorsPolicy;

use crate::body::{Body, empty};
use crate::error::ProxyError;

/// An allowed origin.
#[derive(Debug, PartialEq, Eq)]
enum Pattern {
    /// `*`.
    Any,
    /// `https://app.example.com`.
    Exact(String),
    /// `https://*.example.com[:port]`: scheme, `.example.com`, port part (`:8443` or empty).
    Suffix {
        scheme: String,
        domain: String,
        port: String,
    },
}

impl Pattern {
    fn parse(raw: &str) -> Pattern {
        if raw == "*" {
            return Pattern::Any;
        }
        match raw.split_once("://*") {
            Some((scheme, rest)) => {
                let (domain, port) = match rest.rfind(':') {
                    Some(i) => (&rest[..i], &rest[i..]),
                    None => (rest, ""),
                };
                Pattern::Suffix {
                    scheme: scheme.to_string(),
                    domain: domain.to_string(),
                    port: port.to_string(),
                }
            }
            None => Pattern::Exact(raw.to_string()),
        }
    }

    /// `origin` is lower-case `scheme://host[:port]`.
    fn matches(&self, origin: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Exact(o) => o == origin,
            Pattern::Suffix { scheme, domain, port } => {
                let Some(rest) = origin.strip_prefix(scheme.as_str()).and_then(|r| r.strip_prefix("://")) else {
                    return false;
                };
                let Some(host) = rest.strip_suffix(port.as_str()) else {
                    return false;
                };
                // One label or more in front of the domain, and no port when the pattern has none.
                host.strip_suffix(domain.as_str())
                    .is_some_and(|label| !label.is_empty() && !label.contains(['/', ':', '@']))
            }
        }
    }
}

/// A route's CORS rules, ready to apply.
pub struct Cors {
    patterns: Vec<Pattern>,
    any: bool,
    credentials: bool,
    methods: Vec<Method>,
    allow_headers: Vec<String>,
    allow_methods_value: HeaderValue,
    allow_headers_value: HeaderValue,
    expose_value: Option<HeaderValue>,
    max_age_value: HeaderValue,
}

impl Cors {
    /// Prepares the rules; fails only on names no header can carry.
    pub fn new(policy: &CorsPolicy) -> Result<Cors, String> {
        let join = |names: &[String]| {
            HeaderValue::from_str(&names.join(", ")).map_err(|_| format!("{names:?} cannot be a header value"))
        };
        let patterns: Vec<Pattern> = policy.allow_origins.iter().map(|o| Pattern::parse(o)).collect();
        Ok(Cors {
            any: patterns.contains(&Pattern::Any),
            patterns,
            credentials: policy.allow_credentials,
            methods: policy
                .allow_methods
                .iter()
                .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
                .collect(),
            allow_headers: policy.allow_headers.clone(),
            allow_methods_value: join(&policy.allow_methods)?,
            allow_headers_value: join(&policy.allow_headers)?,
            expose_value: (!policy.expose_headers.is_empty())
                .then(|| join(&policy.expose_headers))
                .transpose()?,
            max_age_value: HeaderValue::from(policy.max_age_seconds),
        })
    }

    /// Whether `origin` (the `Origin` header's value) is allowed.
    pub fn allows(&self, origin: &str) -> bool {
        let origin = origin.to_ascii_lowercase();
        origin != "null" && self.patterns.iter().any(|p| p.matches(&origin))
    }

    /// Whether the request is a CORS preflight (which Keygate answers itself).
    pub fn is_preflight(parts: &Parts) -> bool {
        preflight_shape(&parts.method, &parts.headers)
    }

    /// [`Cors::is_preflight`] before the request is taken apart.
    pub fn is_preflight_request<B>(req: &http::Request<B>) -> bool {
        preflight_shape(req.method(), req.headers())
    }

    /// Answers a preflight: 204 with the rules for an allowed origin, method and headers, else
    /// a `CORS_REJECTED` error that carries no CORS headers, so the browser blocks the call.
    pub fn preflight(&self, parts: &Parts) -> Result<Response<Body>, ProxyError> {
        let origin = parts.headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
        let Some(origin) = origin.filter(|o| self.allows(o)) else {
            return Err(ProxyError::CorsRejected("the origin is not allowed on this route"));
        };
        let method = parts.headers[header::ACCESS_CONTROL_REQUEST_METHOD].as_bytes();
        if !self.methods.iter().any(|m| m.as_str().as_bytes() == method) {
            return Err(ProxyError::CorsRejected(
                "the method is not allowed cross-origin on this route",
            ));
        }
        let requested = parts
            .headers
            .get_all(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty());
        for h in requested {
            if !self.allow_headers.contains(&h) {
                return Err(ProxyError::CorsRejected(
                    "a requested header is not allowed cross-origin on this route",
                ));
            }
        }
        let mut resp = Response::new(empty());
        *resp.status_mut() = StatusCode::NO_CONTENT;
        let h = resp.headers_mut();
        self.allow_origin(origin, h);
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, self.allow_methods_value.clone());
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, self.allow_headers_value.clone());
        h.insert(header::ACCESS_CONTROL_MAX_AGE, self.max_age_value.clone());
        Ok(resp)
    }

    /// Adds the CORS headers to an answer (the upstream's or Keygate's own) for the request's
    /// `Origin`. Any CORS headers the upstream set are replaced: the route's rules decide.
    pub fn decorate(&self, origin: Option<&HeaderValue>, headers: &mut HeaderMap) {
        for name in [
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            header::ACCESS_CONTROL_ALLOW_METHODS,
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            header::ACCESS_CONTROL_MAX_AGE,
        ] {
            headers.remove(name);
        }
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
        let Some(origin) = origin.and_then(|o| o.to_str().ok()).filter(|o| self.allows(o)) else {
            return;
        };
        self.allow_origin(origin, headers);
        if let Some(expose) = &self.expose_value {
            headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
        }
    }

    fn allow_origin(&self, origin: &str, headers: &mut HeaderMap) {
        // `*` cannot be combined with credentials (compile() refuses it), so with credentials the
        // origin is always echoed; without, `*` stays `*` and caches need not vary.
        let value = if self.any && !self.credentials {
            HeaderValue::from_static("*")
        } else {
            match HeaderValue::from_str(origin) {
                Ok(v) => v,
                Err(_) => return,
            }
        };
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
        if self.credentials {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
    }
}

fn preflight_shape(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::OPTIONS
        && headers.contains_key(header::ORIGIN)
        && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn cors(origins: &[&str], credentials: bool) -> Cors {
        Cors::new(&CorsPolicy {
            allow_origins: origins.iter().map(|o| o.to_string()).collect(),
            allow_methods: vec!["GET".into(), "POST".into()],
            allow_headers: vec!["content-type".into(), "x-csrf-token".into()],
            expose_headers: vec!["x-whip-resource".into()],
            allow_credentials: credentials,
            max_age_seconds: 600,
        })
        .unwrap()
    }

    #[test]
    fn origin_patterns() {
        let c = cors(
            &[
                "https://app.example.com",
                "https://*.example.org",
                "http://*.local.test:8080",
            ],
            true,
        );
        for ok in [
            "https://app.example.com",
            "HTTPS://APP.EXAMPLE.COM",
            "https://a.example.org",
            "https://a.b.example.org",
            "http://x.local.test:8080",
        ] {
            assert!(c.allows(ok), "{ok}");
        }
        for bad in [
            "https://app.example.com:8443",
            "http://app.example.com",
            "https://example.org",
            "https://evilexample.org",
            "https://a.example.org:444",
            "https://a.example.org.evil.net",
            "http://x.local.test",
            "http://x.local.test:80800",
            "null",
            "",
        ] {
            assert!(!c.allows(bad), "{bad}");
        }
        assert!(cors(&["*"], false).allows("https://anything.test"));
        assert!(!cors(&["*"], false).allows("null"));
    }

    fn preflight(origin: &str, method: &str, headers: &str) -> Parts {
        Request::options("/r")
            .header("origin", origin)
            .header("access-control-request-method", method)
            .header("access-control-request-headers", headers)
            .body(())
            .unwrap()
            .into_parts()
            .0
    }

    #[test]
    fn preflight_answers() {
        let c = cors(&["https://app.example.com"], true);
        let ok = c
            .preflight(&preflight(
                "https://app.example.com",
                "POST",
                "Content-Type, X-CSRF-Token",
            ))
            .unwrap();
        assert_eq!(ok.status(), StatusCode::NO_CONTENT);
        let h = ok.headers();
        assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
        assert_eq!(h["access-control-allow-credentials"], "true");
        assert_eq!(h["access-control-allow-methods"], "GET, POST");
        assert_eq!(h["access-control-allow-headers"], "content-type, x-csrf-token");
        assert_eq!(h["access-control-max-age"], "600");
        for (origin, method, headers) in [
            ("https://evil.example", "POST", ""),
            ("https://app.example.com", "DELETE", ""),
            ("https://app.example.com", "POST", "x-other"),
        ] {
            let e = c.preflight(&preflight(origin, method, headers)).unwrap_err();
            assert_eq!(e.code(), "CORS_REJECTED", "{origin} {method} {headers}");
        }
    }

    #[test]
    fn decorate_only_allowed_origins_and_replaces_upstream_headers() {
        let c = cors(&["https://app.example.com"], false);
        let mut h = HeaderMap::new();
        h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
        c.decorate(Some(&HeaderValue::from_static("https://app.example.com")), &mut h);
        assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
        assert_eq!(h["access-control-expose-headers"], "x-whip-resource");
        assert_eq!(h["vary"], "Origin");
        assert!(h.get("access-control-allow-credentials").is_none());
        let mut h = HeaderMap::new();
        h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
        c.decorate(Some(&HeaderValue::from_static("https://evil.example")), &mut h);
        assert!(h.get("access-control-allow-origin").is_none(), "{h:?}");
        assert_eq!(h["vary"], "Origin");
    }
}
