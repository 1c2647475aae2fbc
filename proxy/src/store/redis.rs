//! The shared [`Store`]: Redis, for state every replica must agree on. One [`RedisStore`] per
//! distinct URL (see [`super::Stores::redis`]) holds one multiplexed connection that all requests
//! share; it is opened by the first operation, not when the config is built, so building a config
//! never blocks and a Redis that is down at start-up only fails the requests that need it.
//!
//! Failure is bounded and self-healing: connecting and each command time out after a second,
//! a failed connect makes the next [`RETRY_AFTER`] fail fast instead of queueing behind another
//! attempt, and a connection that broke is dropped so the next operation reconnects — Redis
//! coming back is noticed without a restart. Every failure is [`StoreError::Unavailable`].
//!
//! The two atomic operations are single Lua scripts, run server-side, so two proxies can never
//! both win a compare-and-set, and token buckets use Redis's clock rather than each replica's.
//! The URL carries the password: only `host:port` is ever logged, and error texts are scrubbed.

use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, ErrorKind, FromRedisValue, RedisError, Script};
use tokio::sync::Mutex;

use super::{Store, StoreError, StoreFuture, Take};

/// Longest wait for a TCP (and TLS) connection to Redis.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest wait for the answer to one command.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);
/// After a failed connect, operations fail at once for this long: when Redis is unreachable,
/// requests get their 503 immediately instead of each waiting out a connect timeout in turn.
pub const RETRY_AFTER: Duration = Duration::from_millis(250);

/// Swaps the value only if it is still the expected one; `ARGV[3]` is the TTL in ms, `""` for none.
/// Lua interns strings, so `==` compares references, in time independent of where values differ.
const COMPARE_AND_SET: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  if ARGV[3] == '' then
    redis.call('SET', KEYS[1], ARGV[2])
  else
    redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  end
  return 1
end
return 0
";

/// Token bucket on Redis's clock (µs since the epoch fits a Lua double exactly). Returns
/// `{1, 0}` when a token was taken, else `{0, µs until one is there}`. A bucket expires once it
/// would be full again, so idle clients leave nothing behind.
const TAKE: &str = r"
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(b[1])
local at = tonumber(b[2])
if tokens == nil or at == nil then
  tokens = burst
  at = now
end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate / 1000000)
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = math.ceil((1 - tokens) * 1000000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return {allowed, wait}
";

/// Why a Redis URL cannot be used. Never carries the URL: it holds the password.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RedisUrlError {
    /// Not a `redis://` or `rediss://` URL.
    #[error("the Redis URL must start with redis:// or rediss:// (rediss for TLS)")]
    Scheme,
    /// The URL does not parse or names no host.
    #[error("the Redis URL cannot be used: {0}")]
    Invalid(String),
}

/// A store on one Redis server (or TLS endpoint).
pub struct RedisStore {
    client: Client,
    config: AsyncConnectionConfig,
    /// `host:port`, the only part of the URL that may be logged.
    endpoint: String,
    /// Scrubbed from any error text before it is logged or returned.
    password: Option<String>,
    state: Mutex<State>,
    compare_and_set: Script,
    take: Script,
}

#[derive(Default)]
struct State {
    conn: Option<MultiplexedConnection>,
    /// Bumped per connection, so a failure on an old connection does not drop a newer one.
    generation: u64,
    /// Until when operations fail without trying, after a failed connect.
    retry_at: Option<Instant>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedisStore({})", self.endpoint)
    }
}

/// One command or script invocation, so every operation goes through the same connect, timeout
/// and failure handling.
enum Query<'a> {
    Cmd(redis::Cmd),
    Script(redis::ScriptInvocation<'a>),
}

impl RedisStore {
    /// A store for `url` (`redis://[:password@]host[:port][/db]`, or `rediss://` for TLS, checked
    /// against the Web PKI roots or `ca_pem` when given). Does not connect.
    pub fn open(url: &str, ca_pem: Option<&[u8]>) -> Result<RedisStore, RedisUrlError> {
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err(RedisUrlError::Scheme);
        }
        // The TLS connector takes rustls's process-wide provider; make it the one Keygate uses.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let scrub_url = |e: RedisError| RedisUrlError::Invalid(e.to_string().replace(url, "<redisUrl>"));
        let client = match ca_pem {
            None => Client::open(url),
            Some(ca) => Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.to_vec()),
                },
            ),
        }
        .map_err(scrub_url)?;
        let info = client.get_connection_info();
        let endpoint = info.addr().to_string();
        let password = info
            .redis_settings()
            .password()
            .filter(|p| !p.is_empty())
            .map(String::from);
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT));
        Ok(RedisStore {
            client,
            config,
            endpoint,
            password,
            state: Mutex::default(),
            compare_and_set: Script::new(COMPARE_AND_SET),
            take: Script::new(TAKE),
        })
    }

    /// `host:port` of the server.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn scrub(&self, e: &RedisError) -> String {
        let text = e.to_string();
        match &self.password {
            Some(p) => text.replace(p.as_str(), "***"),
            None => text,
        }
    }

    /// The shared connection, opened if there is none.
    async fn connection(&self) -> Result<(u64, MultiplexedConnection), StoreError> {
        let mut state = self.state.lock().await;
        if let Some(conn) = &state.conn {
            return Ok((state.generation, conn.clone()));
        }
        if state.retry_at.is_some_and(|t| Instant::now() < t) {
            return Err(StoreError::Unavailable(format!(
                "redis at {} is not reachable",
                self.endpoint
            )));
        }
        // The lock is held while connecting: one attempt at a time, the others wait for its outcome.
        let attempt = self.client.get_multiplexed_async_connection_with_config(&self.config);
        let failure = match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
            Ok(Ok(conn)) => {
                state.generation += 1;
                state.conn = Some(conn.clone());
                state.retry_at = None;
                tracing::info!(redis = %self.endpoint, "connected to redis");
                return Ok((state.generation, conn));
            }
            Ok(Err(e)) => self.scrub(&e),
            Err(_) => "connect timed out".to_string(),
        };
        state.retry_at = Some(Instant::now() + RETRY_AFTER);
        tracing::warn!(redis = %self.endpoint, error = %failure, "cannot connect to redis");
        Err(StoreError::Unavailable(format!(
            "redis at {}: {failure}",
            self.endpoint
        )))
    }

    /// Drops the connection `generation` after it failed, so the next operation reconnects.
    async fn broken(&self, generation: u64, e: &RedisError) -> StoreError {
        let failure = self.scrub(e);
        // A script error is an answer from a healthy connection; anything else may have broken it.
        if !matches!(e.kind(), ErrorKind::Server(_)) {
            let mut state = self.state.lock().await;
            if state.generation == generation && state.conn.take().is_some() {
                tracing::warn!(redis = %self.endpoint, error = %failure, "redis connection lost");
            }
        }
        StoreError::Unavailable(format!("redis at {}: {failure}", self.endpoint))
    }

    async fn query<T: FromRedisValue>(&self, query: Query<'_>) -> Result<T, StoreError> {
        let run = async {
            let (generation, mut conn) = self.connection().await?;
            let result = match &query {
                Query::Cmd(cmd) => cmd.query_async(&mut conn).await,
                Query::Script(script) => script.invoke_async(&mut conn).await,
            };
            match result {
                Ok(v) => Ok(v),
                Err(e) => Err(self.broken(generation, &e).await),
            }
        };
        // Waiting for another request's connect attempt counts too: the whole operation is bounded.
        tokio::time::timeout(CONNECT_TIMEOUT + COMMAND_TIMEOUT, run)
            .await
            .unwrap_or_else(|_| Err(StoreError::Unavailable(format!("redis at {} timed out", self.endpoint))))
    }
}

/// A TTL in whole milliseconds, at least one: Redis refuses `PX 0`.
fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl Store for RedisStore {
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Vec<u8>>> {
        Box::pin(self.query(Query::Cmd(redis::cmd("GET").arg(key).clone())))
    }

    fn set<'a>(&'a self, key: &'a str, value: &'a [u8], ttl: Option<Duration>) -> StoreFuture<'a, ()> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(value);
        if let Some(ttl) = ttl {
            cmd.arg("PX").arg(millis(ttl));
        }
        Box::pin(self.query(Query::Cmd(cmd)))
    }

    fn compare_and_set<'a>(
        &'a self,
        key: &'a str,
        expected: &'a [u8],
        new: &'a [u8],
        ttl: Option<Duration>,
    ) -> StoreFuture<'a, bool> {
        let mut script = self.compare_and_set.key(key);
        script
            .arg(expected)
            .arg(new)
            .arg(ttl.map(|t| millis(t).to_string()).unwrap_or_default());
        Box::pin(async move { self.query::<i64>(Query::Script(script)).await.map(|n| n == 1) })
    }

    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(self.query(Query::Cmd(redis::cmd("DEL").arg(key).clone())))
    }

    fn take<'a>(&'a self, key: &'a str, per_second: f64, burst: u32) -> StoreFuture<'a, Take> {
        let mut script = self.take.key(key);
        script.arg(per_second).arg(burst.max(1));
        Box::pin(async move {
            let (allowed, wait_us): (i64, u64) = self.query(Query::Script(script)).await?;
            Ok(if allowed == 1 {
                Take::Allowed
            } else {
                Take::Limited(Duration::from_micros(wait_us))
            })
        })
    }
}
