//! Shapes the upstream's answer for the browser: hop-by-hop headers and `Set-Cookie` dropped
//! (the browser's cookies belong to Keygate, not to the upstream), and `exposeHeaders` renames.

use http::header;
use http::response::Parts;

use crate::config::LiveRoute;

/// Rewrites the upstream's response headers in place.
pub fn rewrite_headers(route: &LiveRoute, parts: &mut Parts) {
    let headers = &mut parts.headers;
    // In the same walk as the hop-by-hop fields.
    let passthrough = route.spec.cookie_passthrough;
    super::strip_fields(headers, |name| !passthrough && name == header::SET_COOKIE);
    for (from, to) in &route.renames {
        if from == to {
            continue;
        }
        let values: Vec<_> = headers.get_all(from).iter().cloned().collect();
        headers.remove(from);
        for v in values {
            headers.append(to.clone(), v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_route;
    use http::Response;

    fn rewritten(route: &LiveRoute, headers: &[(&str, &str)]) -> http::HeaderMap {
        let mut b = Response::builder();
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let mut parts = b.body(()).unwrap().into_parts().0;
        rewrite_headers(route, &mut parts);
        parts.headers
    }

    #[test]
    fn set_cookie_dropped_and_renames_keep_every_value() {
        let route = test_route(
            serde_json::json!({"exposeHeaders": [{"from": "location", "to": "x-whip-resource"}, {"from": "link", "to": "link"}]}),
        );
        let h = rewritten(
            &route,
            &[
                ("set-cookie", "a=1"),
                ("location", "/r/1"),
                ("link", "<a>"),
                ("link", "<b>"),
                ("connection", "close"),
            ],
        );
        assert!(h.get("set-cookie").is_none());
        assert!(h.get("location").is_none());
        assert_eq!(h["x-whip-resource"], "/r/1");
        assert_eq!(
            h.get_all("link").iter().count(),
            2,
            "a header exposed under its own name is untouched"
        );
        assert!(h.get("connection").is_none());
    }

    #[test]
    fn passthrough_returns_set_cookie() {
        let h = rewritten(
            &test_route(serde_json::json!({"cookiePassthrough": true})),
            &[("set-cookie", "a=1"), ("set-cookie", "b=2")],
        );
        assert_eq!(h.get_all("set-cookie").iter().count(), 2);
    }
}
