//! API keys per app, as `auth: apiKey` routes and session-chain policies read them from a Secret:
//! each key of the Secret is an app name, its value that app's keys, one per line (several during
//! a rotation). Only SHA-256 hashes are kept; checking a presented key is one hash and one map
//! lookup, so the time taken says nothing about how close a guess was.

use std::collections::HashMap;
use std::sync::Arc;

use keygate_crds::SecretSnapshot;
use sha2::{Digest, Sha256};

/// The apps and their hashed keys.
#[derive(Default)]
pub struct ApiKeys {
    by_hash: HashMap<[u8; 32], Arc<str>>,
}

/// Hashes only, and those never print.
impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} keys)", self.by_hash.len())
    }
}

impl ApiKeys {
    /// Reads Secret `namespace/name` from the secret snapshot. Empty lines are ignored.
    pub fn from_secret(secrets: &SecretSnapshot, namespace: &str, name: &str) -> ApiKeys {
        let prefix = format!("{namespace}/{name}/");
        let mut by_hash = HashMap::new();
        for (id, value) in secrets.values.range(prefix.clone()..) {
            let Some(app) = id.strip_prefix(&prefix) else { break };
            let app: Arc<str> = Arc::from(app);
            for key in value.lines().map(str::trim).filter(|k| !k.is_empty()) {
                by_hash.insert(Sha256::digest(key.as_bytes()).into(), app.clone());
            }
        }
        ApiKeys { by_hash }
    }

    /// The app a presented key belongs to.
    pub fn app(&self, presented: &[u8]) -> Option<&Arc<str>> {
        let hash: [u8; 32] = Sha256::digest(presented).into();
        self.by_hash.get(&hash)
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_per_app_with_rotation() {
        let mut secrets = SecretSnapshot::default();
        for (id, v) in [
            ("ns/keys/shop", "new-key\nold-key\n"),
            ("ns/keys/blog", " blog-key \n\n"),
            ("ns/keysx/other", "other"),
            ("ns/a/x", "a"),
        ] {
            secrets.values.insert(id.into(), v.into());
        }
        let keys = ApiKeys::from_secret(&secrets, "ns", "keys");
        assert_eq!(keys.len(), 3);
        assert_eq!(keys.app(b"new-key").map(|a| &**a), Some("shop"));
        assert_eq!(keys.app(b"old-key").map(|a| &**a), Some("shop"));
        assert_eq!(keys.app(b"blog-key").map(|a| &**a), Some("blog"));
        assert!(keys.app(b"other").is_none(), "another Secret's keys do not count");
        assert!(keys.app(b"").is_none());
        assert!(format!("{keys:?}").contains("3 keys"));
    }
}
