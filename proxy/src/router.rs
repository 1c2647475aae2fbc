//! Longest-prefix route matching at `/` boundaries. A lookup costs one hash probe per path
//! segment, independent of how many routes exist, so 10,000 routes match as fast as ten.

use std::collections::HashMap;

/// Maps normalized prefixes (no trailing `/`, root is `/`) to a value.
#[derive(Debug)]
pub struct Router<T> {
    by_prefix: HashMap<String, T>,
}

impl<T> Router<T> {
    /// Builds a router; prefixes must already be normalized and unique (`compile()` ensures it).
    pub fn new(entries: impl IntoIterator<Item = (String, T)>) -> Self {
        Router {
            by_prefix: entries.into_iter().collect(),
        }
    }

    /// The value of the longest prefix that matches `path` at a segment boundary:
    /// `/api` matches `/api`, `/api/` and `/api/x`, never `/apix`.
    pub fn lookup(&self, path: &str) -> Option<&T> {
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

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.by_prefix.len()
    }

    /// Whether there are no routes.
    pub fn is_empty(&self) -> bool {
        self.by_prefix.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::Router;

    fn router(prefixes: &[&str]) -> Router<String> {
        Router::new(prefixes.iter().map(|p| (p.to_string(), p.to_string())))
    }

    #[test]
    fn longest_prefix_wins_at_segment_boundaries() {
        let r = router(&["/api", "/api/v2", "/static"]);
        let hit = |p| r.lookup(p).map(String::as_str);
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
        assert_eq!(r.lookup("/anything/at/all").map(String::as_str), Some("/"));
        assert_eq!(r.lookup("/api/x").map(String::as_str), Some("/api"));
        assert_eq!(r.lookup("/").map(String::as_str), Some("/"));
    }

    #[test]
    fn ten_thousand_routes_each_found() {
        let prefixes: Vec<String> = (0..10_000).map(|i| format!("/tenant-{i}/api")).collect();
        let r = Router::new(prefixes.iter().map(|p| (p.clone(), p.clone())));
        assert_eq!(r.len(), 10_000);
        for p in &prefixes {
            assert_eq!(r.lookup(&format!("{p}/deep/path/x")), Some(p));
        }
        assert_eq!(r.lookup("/tenant-10000/api"), None);
    }
}
