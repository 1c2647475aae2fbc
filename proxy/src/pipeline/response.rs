//! Shapes the upstream's answer for the browser: hop-by-hop headers and `Set-Cookie` dropped
//! (the browser's cookies belong to Keygate, not to the upstream), and `exposeHeaders` renames.

use http::header;
use http::response::Parts;

use crate::config::LiveRoute;

/// Rewrites the upstream's response headers in place.
pub fn rewrite_headers(route: &LiveRoute, parts: &mut Parts) {
    let headers = &mut parts.headers;
    super::strip_hop_by_hop(headers);
    if !route.spec.cookie_passthrough {
        headers.remove(header::SET_COOKIE);
    }
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
