//! CSRF protection for unsafe methods: the request must come from an allowed origin (`Origin`, or
//! `Referer` when a browser sends no `Origin`; a CORS origin of the route or the proxy's own host)
//! and prove it can read what only the page can — the double-submit cookie echoed in
//! `X-CSRF-Token`, or a fixed custom header a cross-site form cannot set.

use http::header::{self, HeaderMap};
use http::request::Parts;
use http::{Method, Uri};
use keygate_crds::resources::route::CsrfMode;

use super::cookie::{Step, cookie_value};
use crate::config::LiveRoute;
use crate::error::ProxyError;
use crate::seal::constant_time_eq;

/// Checks the route's CSRF rules; safe methods always pass.
pub fn check(route: &LiveRoute, parts: &Parts, step: Step) -> Result<(), ProxyError> {
    let Some(policy) = &route.spec.csrf else {
        return Ok(());
    };
    // A WebSocket handshake is a GET, yet it opens a channel both ways with the page's cookies
    // (cross-site WebSocket hijacking). Browsers always send its Origin and let no page add a
    // header to it, so the origin is what can be checked.
    if route.spec.websocket && crate::websocket::is_handshake(parts) {
        return check_origin(route, parts);
    }
    if matches!(
        parts.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    ) {
        return Ok(());
    }
    let headers = &parts.headers;
    if policy.check_origin {
        check_origin(route, parts)?;
    }
    let sent = headers
        .get(policy.header.as_str())
        .map(|v| v.as_bytes())
        .filter(|v| !v.is_empty());
    match policy.mode {
        CsrfMode::Header => {
            let sent = sent.ok_or(ProxyError::CsrfFailed("the CSRF header is missing"))?;
            if policy
                .value
                .as_ref()
                .is_some_and(|want| !constant_time_eq(want.as_bytes(), sent))
            {
                return Err(ProxyError::CsrfFailed("the CSRF header has the wrong value"));
            }
        }
        // At the login call there is no CSRF cookie yet: it is set by the answer.
        CsrfMode::DoubleSubmit if step == Step::SessionStart => {}
        CsrfMode::DoubleSubmit => {
            let name = route.cookie.as_ref().and_then(|c| c.csrf_cookie());
            let cookie = name.and_then(|n| cookie_value(headers, n)).filter(|c| !c.is_empty());
            let (Some(cookie), Some(sent)) = (cookie, sent) else {
                return Err(ProxyError::CsrfFailed(
                    "the CSRF cookie or the X-CSRF-Token header is missing",
                ));
            };
            if !constant_time_eq(cookie.as_bytes(), sent) {
                return Err(ProxyError::CsrfFailed("X-CSRF-Token does not match the CSRF cookie"));
            }
        }
    }
    Ok(())
}

/// The page that sent the request must be a CORS origin of the route or the proxy's own host.
fn check_origin(route: &LiveRoute, parts: &Parts) -> Result<(), ProxyError> {
    let origin = request_origin(&parts.headers).ok_or(ProxyError::CsrfFailed(
        "the request has neither Origin nor Referer, so its origin cannot be checked",
    ))?;
    let allowed = route.cors.as_ref().is_some_and(|c| c.allows(&origin)) || is_own(&origin, parts);
    if !allowed {
        return Err(ProxyError::CsrfFailed(
            "the request comes from an origin this route does not allow",
        ));
    }
    Ok(())
}

/// `scheme://host[:port]` of the page that sent the request.
fn request_origin(headers: &HeaderMap) -> Option<String> {
    if let Some(o) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        return Some(o.to_string());
    }
    let referer: Uri = headers.get(header::REFERER)?.to_str().ok()?.parse().ok()?;
    Some(format!("{}://{}", referer.scheme_str()?, referer.authority()?))
}

/// Whether `origin` names the host the request was sent to (same-origin calls need no CORS).
fn is_own(origin: &str, parts: &Parts) -> bool {
    let Some((_, authority)) = origin.split_once("://") else {
        return false;
    };
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()));
    host.is_some_and(|h| h.eq_ignore_ascii_case(authority))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_route;
    use http::Request;

    fn parts(method: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = Request::builder().method(method).uri("/r");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn code(r: Result<(), ProxyError>) -> &'static str {
        r.map_or_else(|e| e.code(), |_| "OK")
    }

    #[test]
    fn header_mode_and_origin() {
        let route = test_route(serde_json::json!({
            "csrf": {"mode": "header", "header": "x-csrf", "value": "1", "checkOrigin": true},
            "cors": {"allowOrigins": ["https://app.example"], "allowMethods": ["POST"], "allowHeaders": ["x-csrf"],
                     "allowCredentials": true, "maxAgeSeconds": 60}
        }));
        let t = Step::Translate;
        assert_eq!(code(check(&route, &parts("GET", &[]), t)), "OK", "safe methods pass");
        let good = [("origin", "https://app.example"), ("x-csrf", "1")];
        assert_eq!(code(check(&route, &parts("POST", &good), t)), "OK");
        let own = [
            ("origin", "http://proxy.test:8080"),
            ("host", "proxy.test:8080"),
            ("x-csrf", "1"),
        ];
        assert_eq!(code(check(&route, &parts("POST", &own), t)), "OK", "same origin");
        let referer = [("referer", "https://app.example/page?q"), ("x-csrf", "1")];
        assert_eq!(code(check(&route, &parts("DELETE", &referer), t)), "OK");
        for bad in [
            vec![("x-csrf", "1")],
            vec![("origin", "https://evil.example"), ("x-csrf", "1")],
            vec![("origin", "https://app.example")],
            vec![("origin", "https://app.example"), ("x-csrf", "2")],
            vec![("referer", "https://evil.example/"), ("x-csrf", "1")],
        ] {
            assert_eq!(code(check(&route, &parts("POST", &bad), t)), "CSRF_FAILED", "{bad:?}");
        }
    }
}
