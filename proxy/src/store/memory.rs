//! The single-replica [`Store`]: a mutex-guarded map with lazy expiry. Every operation holds the
//! lock only for a map lookup, so compare-and-set is atomic by construction.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Store, StoreFuture, Take};

/// Expired entries are swept when the map has grown past this many since the last sweep, so
/// memory stays bounded by live entries without a background task.
const SWEEP_EVERY: usize = 4096;

struct Entry {
    value: Vec<u8>,
    expires: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|t| t > now)
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    buckets: HashMap<String, Bucket>,
    next_sweep: usize,
}

/// In-process store.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

impl MemoryStore {
    fn with<T>(&self, f: impl FnOnce(&mut Inner, Instant) -> T) -> T {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut inner, Instant::now())
    }

    /// Number of live entries (for tests and metrics).
    pub fn len(&self) -> usize {
        self.with(|i, now| i.entries.values().filter(|e| e.live(now)).count())
    }

    /// Whether no live entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    fn insert(&mut self, key: &str, value: &[u8], ttl: Option<Duration>, now: Instant) {
        self.entries.insert(
            key.to_string(),
            Entry {
                value: value.to_vec(),
                expires: ttl.map(|t| now + t),
            },
        );
        if self.entries.len() >= self.next_sweep {
            self.entries.retain(|_, e| e.live(now));
            // Buckets that have been full for a minute carry no state worth keeping.
            self.buckets
                .retain(|_, b| now.duration_since(b.at) < Duration::from_secs(60));
            self.next_sweep = self.entries.len() + SWEEP_EVERY;
        }
    }
}

impl Store for MemoryStore {
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Vec<u8>>> {
        let v = self.with(|i, now| i.entries.get(key).filter(|e| e.live(now)).map(|e| e.value.clone()));
        Box::pin(async move { Ok(v) })
    }

    fn set<'a>(&'a self, key: &'a str, value: &'a [u8], ttl: Option<Duration>) -> StoreFuture<'a, ()> {
        self.with(|i, now| i.insert(key, value, ttl, now));
        Box::pin(async { Ok(()) })
    }

    fn compare_and_set<'a>(
        &'a self,
        key: &'a str,
        expected: &'a [u8],
        new: &'a [u8],
        ttl: Option<Duration>,
    ) -> StoreFuture<'a, bool> {
        let swapped = self.with(|i, now| {
            let current = i.entries.get(key).filter(|e| e.live(now));
            // Expected values are secrets (the next chain link): compared in constant time.
            if current.is_some_and(|e| crate::seal::constant_time_eq(&e.value, expected)) {
                i.insert(key, new, ttl, now);
                true
            } else {
                false
            }
        });
        Box::pin(async move { Ok(swapped) })
    }

    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()> {
        self.with(|i, _| i.entries.remove(key));
        Box::pin(async { Ok(()) })
    }

    fn take<'a>(&'a self, key: &'a str, per_second: f64, burst: u32) -> StoreFuture<'a, Take> {
        let take = self.with(|i, now| {
            let burst = f64::from(burst.max(1));
            let b = i
                .buckets
                .entry(key.to_string())
                .or_insert(Bucket { tokens: burst, at: now });
            b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * per_second).min(burst);
            b.at = now;
            if b.tokens >= 1.0 {
                b.tokens -= 1.0;
                Take::Allowed
            } else {
                Take::Limited(Duration::from_secs_f64((1.0 - b.tokens) / per_second))
            }
        });
        Box::pin(async move { Ok(take) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn values_expire() {
        let s = MemoryStore::default();
        s.set("k", b"v", Some(Duration::from_millis(30))).await.unwrap();
        s.set("forever", b"v", None).await.unwrap();
        assert_eq!(s.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(s.get("k").await.unwrap(), None);
        assert_eq!(s.get("forever").await.unwrap().as_deref(), Some(&b"v"[..]));
        s.delete("forever").await.unwrap();
        assert!(s.is_empty());
    }

    #[tokio::test]
    async fn compare_and_set_swaps_once() {
        let s = MemoryStore::default();
        s.set("chain", b"a", None).await.unwrap();
        assert!(s.compare_and_set("chain", b"a", b"b", None).await.unwrap());
        assert!(
            !s.compare_and_set("chain", b"a", b"c", None).await.unwrap(),
            "a stale read loses"
        );
        assert_eq!(s.get("chain").await.unwrap().as_deref(), Some(&b"b"[..]));
        assert!(!s.compare_and_set("missing", b"", b"x", None).await.unwrap());
        assert_eq!(s.get("missing").await.unwrap(), None, "a missing key is never created");
    }

    #[tokio::test]
    async fn bucket_empties_then_refills() {
        let s = MemoryStore::default();
        for _ in 0..3 {
            assert_eq!(s.take("b", 20.0, 3).await.unwrap(), Take::Allowed);
        }
        let Take::Limited(wait) = s.take("b", 20.0, 3).await.unwrap() else {
            panic!("a fourth request within the burst of three must be limited");
        };
        assert!(wait <= Duration::from_millis(50), "{wait:?}");
        tokio::time::sleep(wait + Duration::from_millis(5)).await;
        assert_eq!(s.take("b", 20.0, 3).await.unwrap(), Take::Allowed);
    }
}
