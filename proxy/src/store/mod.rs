//! State that outlives a request and must be shared by every replica that serves it: session
//! chains, server-side cookie tokens, vaulted tokens and rate-limit buckets. One [`Store`] trait,
//! two kinds: [`memory::MemoryStore`] for a single replica, and Redis for many. Stages hold an
//! `Arc<dyn Store>` and never learn which kind they talk to.
//!
//! Keys are built by the stages and never carry a secret in the clear: session ids, handles and
//! token ids are hashed into the key (see [`key`]), so a `KEYS *` on Redis reveals nothing usable.
//! Stores live in [`Stores`], owned by the process and shared across config reloads, so a reload
//! never logs anybody out.

pub mod memory;
pub mod redis;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};

/// What a store operation returns.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Why a store could not answer. Never carries a key or value: both may be secret.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    /// The store cannot be reached or failed mid-command.
    #[error("the session store is unavailable: {0}")]
    Unavailable(String),
}

/// The outcome of taking a token from a rate-limit bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// A token was taken; the request may go on.
    Allowed,
    /// The bucket is empty; a token will be there after this long.
    Limited(Duration),
}

/// A key-value store with expiry and the two atomic operations the stages need.
pub trait Store: Send + Sync {
    /// The value at `key`, if present and not expired.
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Vec<u8>>>;

    /// Sets `key` to `value`, expiring after `ttl` (never when `None`).
    fn set<'a>(&'a self, key: &'a str, value: &'a [u8], ttl: Option<Duration>) -> StoreFuture<'a, ()>;

    /// Atomically replaces the value at `key` with `new` (and resets its expiry to `ttl`) only if
    /// it is still `expected`. `Ok(false)` when it was not: another request won the race, or the
    /// key expired. Across replicas at most one caller can win for the same `expected`.
    fn compare_and_set<'a>(
        &'a self,
        key: &'a str,
        expected: &'a [u8],
        new: &'a [u8],
        ttl: Option<Duration>,
    ) -> StoreFuture<'a, bool>;

    /// Removes `key`; removing a missing key is not an error.
    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()>;

    /// Takes one token from the token bucket at `key`, refilled at `per_second` up to `burst`.
    fn take<'a>(&'a self, key: &'a str, per_second: f64, burst: u32) -> StoreFuture<'a, Take>;
}

/// A store key: a fixed namespace, the owning resource, and the SHA-256 of the secret part, so
/// the raw secret (session id, cookie handle) is never stored as a key.
pub fn key(kind: &str, resource: &str, secret: &[u8]) -> String {
    format!("keygate:{kind}:{resource}:{}", hex::encode(Sha256::digest(secret)))
}

/// The stores of this process, kept across config generations: the memory store is one for the
/// whole process, and each distinct Redis URL gets one shared connection (behind
/// Sentinel, plus the few that confirmed compare-and-sets block while replicas answer).
#[derive(Default)]
pub struct Stores {
    memory: Arc<memory::MemoryStore>,
    /// By URL. Never shrinks: URLs change rarely, and an idle connection costs little.
    redis: Mutex<HashMap<String, Arc<redis::RedisStore>>>,
}

impl Stores {
    /// The process's memory store.
    pub fn memory(&self) -> Arc<dyn Store> {
        self.memory.clone()
    }

    /// The store for Redis at `url`, one per distinct URL, so every policy and reload naming the
    /// same Redis shares one connection. Never blocks: the first operation connects.
    pub fn redis(&self, url: &str) -> Result<Arc<dyn Store>, redis::RedisUrlError> {
        let mut stores = self.redis.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(store) = stores.get(url) {
            return Ok(store.clone());
        }
        let store = Arc::new(redis::RedisStore::open(url, None)?);
        stores.insert(url.to_string(), store.clone());
        Ok(store)
    }
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redis = self.redis.lock().unwrap_or_else(|p| p.into_inner());
        f.debug_struct("Stores")
            .field("redis", &redis.values().map(|s| s.endpoint()).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}
