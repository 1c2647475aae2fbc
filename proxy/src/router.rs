//! Host, then longest-prefix route matching at `/` boundaries. A lookup costs one hash probe per
//! host label and one per path segment, independent of how many routes exist, so 10,000 routes
//! match as fast as ten.

use std::collections::HashMap;

/// A table keyed by host or prefix. Its keys come from the config alone, and a request's path
/// only probes it, so it needs no defence against chosen collisions: a fast hash (foldhash) in
/// place of SipHash, which took more of a request's time than the probes themselves.
type Table<T> = HashMap<String, T, foldhash::fast::RandomState>;

/// Maps normalized prefixes (no trailing `/`, root is `/`) to a value.
#[derive(Debug)]
struct Prefixes<T> {
    by_prefix: Table<T>,
}

impl<T> Default for Prefixes<T> {
    fn default() -> Self {
        Prefixes {
            by_prefix: Table::default(),
        }
    }
}

impl<T> Prefixes<T> {
    /// The value of the longest prefix that matches `path` at a segment boundary:
    /// `/api` matches `/api`, `/api/` and `/api/x`, never `/apix`.
    fn lookup(&self, path: &str) -> Option<&T> {
        if let Some(v) = self.by_prefix.get(path) {
            return Some(v);
        }
        let mut end = path.len();
        while let Some(slash) = path[..end].rfind('/') {
            let candidate = if slash == 0 { "/" } else { &path[..slash] };
            if let Some(v) = self.by_prefix.get(candidate) {
                return Some(v);
            }
            end = slash;
        }
        None
    }
}

/// Routes by host, then prefix: exact hosts, `*.` wildcards keyed by the domain after `*.`, and
/// routes for any host.
#[derive(Debug)]
pub struct Router<T> {
    exact: Table<Prefixes<T>>,
    wildcard: Table<Prefixes<T>>,
    any: Prefixes<T>,
    len: usize,
}

impl<T: Clone> Router<T> {
    /// Builds a router from `(hosts, prefix, value)`; hosts lower case without trailing dot,
    /// empty for any host. Prefixes must be normalized and unique per host (`compile()` ensures
    /// it).
    pub fn new(entries: impl IntoIterator<Item = (Vec<String>, String, T)>) -> Self {
        let mut router = Router {
            exact: Table::default(),
            wildcard: Table::default(),
            any: Prefixes::default(),
            len: 0,
        };
        for (hosts, prefix, value) in entries {
            router.len += 1;
            if hosts.is_empty() {
                router.any.by_prefix.insert(prefix, value);
                continue;
            }
            for host in hosts {
                let table = match host.strip_prefix("*.") {
                    Some(domain) => router.wildcard.entry(domain.to_string()),
                    None => router.exact.entry(host),
                };
                table.or_default().by_prefix.insert(prefix.clone(), value.clone());
            }
        }
        router
    }
}

impl<T> Router<T> {
    /// The route for `host` (as [`request_host`] gives it; `None` when the request named none)
    /// and `path`: the exact host's routes first, then wildcards from the longest domain to the
    /// shortest, then the routes for any host; within each, the longest prefix.
    pub fn lookup(&self, host: Option<&str>, path: &str) -> Option<&T> {
        if let Some(host) = host {
            if let Some(v) = self.exact.get(host).and_then(|p| p.lookup(path)) {
                return Some(v);
            }
            // `*.example.com` covers every name below example.com, so each parent domain of
            // the host is a candidate, nearest first.
            if !self.wildcard.is_empty() {
                let mut rest = host;
                while let Some(dot) = rest.find('.') {
                    rest = &rest[dot + 1..];
                    if let Some(v) = self.wildcard.get(rest).and_then(|p| p.lookup(path)) {
                        return Some(v);
                    }
                }
            }
        }
        self.any.lookup(path)
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no routes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The host a request names, as routes match it: the `:authority` (HTTP/2) or absolute-form
/// target, else the `Host` header; port and trailing dot removed, lower case. Borrowed when
/// already in that form, which it nearly always is.
pub fn request_host<B>(req: &http::Request<B>) -> Option<std::borrow::Cow<'_, str>> {
    let host = match req.uri().authority() {
        Some(authority) => authority.host(),
        None => {
            let value = req.headers().get(http::header::HOST)?.to_str().ok()?;
            strip_port(value)
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return None;
    }
    Some(if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    })
}

/// `name:port` → `name`; `[v6]:port` → `[v6]`.
fn strip_port(value: &str) -> &str {
    let value = value.trim();
    if value.starts_with('[') {
        return value.find(']').map_or(value, |end| &value[..=end]);
    }
    // A byte search: `rsplit_once` with a char pattern runs a general string searcher, which
    // costs about twice as much on a name this short.
    value
        .bytes()
        .rposition(|b| b == b':')
        .map_or(value, |colon| &value[..colon])
}

#[cfg(test)]
mod tests {
    use super::{Router, request_host};

    fn router(prefixes: &[&str]) -> Router<String> {
        Router::new(prefixes.iter().map(|p| (Vec::new(), p.to_string(), p.to_string())))
    }

    #[test]
    fn longest_prefix_wins_at_segment_boundaries() {
        let r = router(&["/api", "/api/v2", "/static"]);
        let hit = |p| r.lookup(None, p).map(String::as_str);
        assert_eq!(hit("/api"), Some("/api"));
        assert_eq!(hit("/api/"), Some("/api"));
        assert_eq!(hit("/api/users/1"), Some("/api"));
        assert_eq!(hit("/api/v2"), Some("/api/v2"));
        assert_eq!(hit("/api/v2/users"), Some("/api/v2"));
        assert_eq!(hit("/api/v20"), Some("/api"));
        assert_eq!(hit("/apix"), None);
        assert_eq!(hit("/"), None);
        assert_eq!(hit("/other/api"), None);
    }

    #[test]
    fn root_prefix_catches_everything_else() {
        let r = router(&["/", "/api"]);
        assert_eq!(r.lookup(None, "/anything/at/all").map(String::as_str), Some("/"));
        assert_eq!(
            r.lookup(Some("any.example"), "/api/x").map(String::as_str),
            Some("/api")
        );
        assert_eq!(r.lookup(None, "/").map(String::as_str), Some("/"));
    }

    #[test]
    fn host_first_exact_then_longer_wildcard_then_any_host() {
        let entry = |hosts: &[&str], prefix: &str, v: &str| {
            (
                hosts.iter().map(|h| h.to_string()).collect(),
                prefix.to_string(),
                v.to_string(),
            )
        };
        let r = Router::new([
            entry(&["shop.example.com"], "/api", "shop"),
            entry(&["*.example.com"], "/api", "wild"),
            entry(&["*.eu.example.com"], "/api", "wild-eu"),
            entry(&["blog.example.com", "www.blog.example"], "/", "blog"),
            entry(&[], "/api", "any"),
            entry(&[], "/health", "health"),
        ]);
        assert_eq!(r.len(), 6);
        let cases = [
            (Some("shop.example.com"), "/api/x", Some("shop"), "exact beats wildcard"),
            (Some("a.example.com"), "/api/x", Some("wild"), "wildcard"),
            (
                Some("a.b.example.com"),
                "/api",
                Some("wild"),
                "a wildcard covers deeper names",
            ),
            (
                Some("x.eu.example.com"),
                "/api",
                Some("wild-eu"),
                "longer wildcard wins",
            ),
            (
                Some("example.com"),
                "/api",
                Some("any"),
                "a wildcard does not cover its domain",
            ),
            (Some("other.test"), "/api/x", Some("any"), "unknown host"),
            (None, "/api/x", Some("any"), "no host"),
            (Some("blog.example.com"), "/api/x", Some("blog"), "host before prefix"),
            (Some("www.blog.example"), "/x", Some("blog"), "second host of a route"),
            (
                Some("shop.example.com"),
                "/health",
                Some("health"),
                "no host-specific route for the path: routes for any host take it",
            ),
            (Some("shop.example.com"), "/other", None, "nothing matches"),
        ];
        for (host, path, expected, why) in cases {
            assert_eq!(
                r.lookup(host, path).map(String::as_str),
                expected,
                "{host:?} {path}: {why}"
            );
        }
    }

    #[test]
    fn request_host_is_lower_case_without_port_or_trailing_dot() {
        let host = |uri: &str, header: Option<&str>| {
            let mut b = http::Request::builder().uri(uri);
            if let Some(h) = header {
                b = b.header("host", h);
            }
            request_host(&b.body(()).unwrap()).map(|h| h.into_owned())
        };
        assert_eq!(
            host("/x", Some("Shop.Example.COM:8443")),
            Some("shop.example.com".into())
        );
        assert_eq!(host("/x", Some("shop.example.com.")), Some("shop.example.com".into()));
        assert_eq!(host("/x", Some("[::1]:8080")), Some("[::1]".into()));
        assert_eq!(host("/x", None), None);
        assert_eq!(
            host("https://API.example.com:443/x", Some("ignored.example")),
            Some("api.example.com".into()),
            "the :authority (or absolute-form target) is the host"
        );
    }

    #[test]
    fn ten_thousand_routes_each_found() {
        let prefixes: Vec<String> = (0..10_000).map(|i| format!("/tenant-{i}/api")).collect();
        let r = Router::new(prefixes.iter().map(|p| (Vec::new(), p.clone(), p.clone())));
        assert_eq!(r.len(), 10_000);
        for p in &prefixes {
            assert_eq!(r.lookup(None, &format!("{p}/deep/path/x")), Some(p));
        }
        assert_eq!(r.lookup(None, "/tenant-10000/api"), None);
        let hosts = Router::new((0..10_000).map(|i| (vec![format!("t{i}.example.com")], "/api".to_string(), i)));
        for i in 0..10_000 {
            assert_eq!(hosts.lookup(Some(&format!("t{i}.example.com")), "/api/x"), Some(&i));
        }
    }
}
