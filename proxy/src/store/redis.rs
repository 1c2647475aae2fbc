//! The shared [`Store`]: Redis, for state every replica must agree on. One [`RedisStore`] per
//! distinct URL (see [`super::Stores::redis`]) holds one multiplexed connection that all requests
//! share; it is opened by the first operation, not when the config is built, so building a config
//! never blocks and a Redis that is down at start-up only fails the requests that need it.
//!
//! Three topologies, chosen by the URL's scheme (see [`RedisStore::open`]): one server
//! (`redis://`), a master found through Sentinel (`redis+sentinel://`), and Redis Cluster
//! (`redis+cluster://`); each with an `s` for TLS (`rediss+sentinel://`).
//!
//! Failure is bounded and self-healing: connecting and each command time out after a second,
//! a failed connect makes the next [`RETRY_AFTER`] fail fast instead of queueing behind another
//! attempt, and a connection that broke is dropped so the next operation reconnects — Redis
//! coming back is noticed without a restart. With Sentinel, reconnecting asks the sentinels for
//! the master again, so a promoted replica is found by the first operation after Sentinel reports
//! it; a node that answers `READONLY` (a demoted master) counts as broken too. Cluster redirects
//! (`MOVED`, `ASK` during a slot migration) are followed by the cluster client. Every failure is
//! [`StoreError::Unavailable`].
//!
//! The two atomic operations are single Lua scripts, run server-side, so two proxies can never
//! both win a compare-and-set, and token buckets use Redis's clock rather than each replica's.
//! Each script touches exactly one key, so on Cluster it always runs on one node and needs no
//! hash tag; a script that ever touches several keys must give them one `{tag}`.
//!
//! Replication is asynchronous, so a compare-and-set the master acknowledged can be lost in a
//! failover, and the link it consumed would be accepted once more. With `minReplicas` (default 1
//! behind Sentinel) a won compare-and-set counts only once `WAIT` reports it on that many
//! replicas; otherwise it is undone and the operation fails (a 503, never an acceptance).
//!
//! URLs carry passwords: only hosts and ports are ever logged, and error texts are scrubbed.

use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Client, ErrorKind, FromRedisValue, IntoConnectionInfo, RedisError, RedisResult, Script,
    ServerErrorKind, TlsCertificates, TlsMode,
};
use tokio::sync::Mutex;

use super::{Store, StoreError, StoreFuture, Take};

/// Longest wait for a TCP (and TLS) connection to Redis.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest wait for the answer to one command.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);
/// After a failed connect, operations fail at once for this long: when Redis is unreachable,
/// requests get their 503 immediately instead of each waiting out a connect timeout in turn.
pub const RETRY_AFTER: Duration = Duration::from_millis(250);
/// Longest wait for replicas to confirm a compare-and-set (`WAIT`). Replicas on a healthy link
/// answer in well under a millisecond; past this the request gets its 503 rather than hang.
pub const REPLICA_TIMEOUT: Duration = Duration::from_millis(500);
/// Connections kept for confirmed compare-and-sets. `WAIT` blocks the connection it is sent on
/// until the replicas answer, so it must not run on the one every other operation shares.
const SPARE_CONNECTIONS: usize = 32;
/// Sentinel's and Redis's well-known ports, for node addresses that name none.
const SENTINEL_PORT: u16 = 26379;
const REDIS_PORT: u16 = 6379;

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
    /// Not a scheme Keygate knows.
    #[error(
        "the Redis URL must start with redis:// or rediss:// (one server), redis+sentinel:// or redis+cluster:// (rediss+... for TLS)"
    )]
    Scheme,
    /// The URL does not parse or names no host.
    #[error("the Redis URL cannot be used: {0}")]
    Invalid(String),
}

/// What a `redis+sentinel://` or `redis+cluster://` URL says, split into what the sentinel and
/// cluster clients take. Credentials are percent-decoded.
#[derive(Debug, Default, PartialEq, Eq)]
struct NodesUrl {
    /// `redis://host:port` (or `rediss://`) per node, without credentials.
    nodes: Vec<String>,
    /// `host:port` per node, for logs.
    addresses: Vec<String>,
    username: Option<String>,
    password: Option<String>,
    /// Sentinel only: the master's name and database.
    master: Option<(String, i64)>,
    sentinel_username: Option<String>,
    sentinel_password: Option<String>,
    min_replicas: Option<u32>,
}

fn decode(part: &str, what: &str) -> Result<String, RedisUrlError> {
    percent_encoding::percent_decode_str(part)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| RedisUrlError::Invalid(format!("the {what} is not percent-encoded UTF-8")))
}

/// Parses what follows `redis+sentinel://` or `redis+cluster://`:
/// `[[user]:password@]host[:port][,host[:port]...][/master[/db]][?param=value&...]`.
/// Errors name the part that is wrong, never its value.
fn parse_nodes(rest: &str, tls: bool, sentinel: bool) -> Result<NodesUrl, RedisUrlError> {
    let invalid = |m: &str| RedisUrlError::Invalid(m.to_string());
    let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = before_query.split_once('/').unwrap_or((before_query, ""));
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let mut url = NodesUrl::default();
    if let Some(userinfo) = userinfo {
        let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
        url.username = Some(decode(user, "user name")?).filter(|u| !u.is_empty());
        url.password = Some(decode(password, "password")?).filter(|p| !p.is_empty());
    }
    let scheme = if tls { "rediss" } else { "redis" };
    let default_port = if sentinel { SENTINEL_PORT } else { REDIS_PORT };
    for node in hosts.split(',') {
        let (host, port) = match node.rfind(':') {
            Some(i) if !node[i..].contains(']') => (&node[..i], Some(&node[i + 1..])),
            _ => (node, None),
        };
        if host.is_empty() || host == "[]" {
            return Err(invalid("a node address is empty; list nodes as host:port,host:port"));
        }
        let port = match port {
            None => default_port,
            Some(p) => p
                .parse::<u16>()
                .map_err(|_| invalid("a node's port is not a number from 0 to 65535"))?,
        };
        url.nodes.push(format!("{scheme}://{host}:{port}"));
        url.addresses.push(format!("{host}:{port}"));
    }
    let mut segments = path.split('/').filter(|s| !s.is_empty());
    if sentinel {
        let master = segments.next().ok_or_else(|| {
            invalid("redis+sentinel:// needs the master's name as its path, as in redis+sentinel://host:26379/mymaster")
        })?;
        let db = match segments.next() {
            None => 0,
            Some(db) => db
                .parse::<i64>()
                .map_err(|_| invalid("the database after the master's name must be a number"))?,
        };
        url.master = Some((decode(master, "master name")?, db));
    }
    if segments.next().is_some() {
        return Err(invalid(if sentinel {
            "a redis+sentinel:// path is /master or /master/db, nothing more"
        } else {
            "redis+cluster:// takes no path: Redis Cluster has only database 0"
        }));
    }
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match (name, sentinel) {
            ("sentinelUsername", true) => url.sentinel_username = Some(decode(value, "sentinelUsername")?),
            ("sentinelPassword", true) => url.sentinel_password = Some(decode(value, "sentinelPassword")?),
            ("minReplicas", true) => {
                url.min_replicas = Some(
                    value
                        .parse()
                        .map_err(|_| invalid("minReplicas must be a whole number"))?,
                )
            }
            // The name is not echoed: a mistyped URL may have put a secret there.
            (_, true) => {
                return Err(invalid(
                    "unknown query parameter; redis+sentinel:// takes sentinelUsername, sentinelPassword and minReplicas",
                ));
            }
            (_, false) => return Err(invalid("redis+cluster:// takes no query parameters")),
        }
    }
    Ok(url)
}

/// Where the data lives.
enum Target {
    /// One server.
    Server(Client),
    /// The master the sentinels name; asked again on every reconnect. The lookup keeps
    /// connections to the sentinels, hence the lock.
    Sentinel(Mutex<SentinelClient>),
    /// Redis Cluster; the client routes each key to its node and follows redirects.
    Cluster(ClusterClient),
}

/// A connection all operations share.
#[derive(Clone)]
enum Connection {
    Server(MultiplexedConnection),
    Cluster(ClusterConnection),
}

/// A store on Redis: one server, a Sentinel-managed master, or a cluster.
pub struct RedisStore {
    target: Target,
    config: AsyncConnectionConfig,
    /// Hosts and ports, the only part of the URL that may be logged.
    endpoint: String,
    /// Passwords and the URL, scrubbed from any error text before it is logged or returned.
    secrets: Vec<String>,
    /// Replicas that must confirm a won compare-and-set before it counts (0: not awaited).
    min_replicas: u32,
    state: Mutex<State>,
    compare_and_set: Script,
    take: Script,
}

#[derive(Default)]
struct State {
    conn: Option<Connection>,
    /// The server `conn` talks to (none on Cluster), for the connections `WAIT` needs.
    server: Option<Client>,
    /// Idle connections to `server` for confirmed compare-and-sets.
    spare: Vec<MultiplexedConnection>,
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

impl Query<'_> {
    async fn run<T: FromRedisValue>(&self, conn: &mut impl ConnectionLike) -> RedisResult<T> {
        match self {
            Query::Cmd(cmd) => cmd.query_async(conn).await,
            Query::Script(script) => script.invoke_async(conn).await,
        }
    }
}

/// Whether `e` means the connection can no longer be trusted. A script error is an answer from a
/// healthy connection; a `READONLY` or `MASTERDOWN` comes from a node that is no longer the
/// master, so the next operation must look the master up again.
fn breaks_connection(e: &RedisError) -> bool {
    match e.kind() {
        ErrorKind::Server(kind) => matches!(
            kind,
            ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown | ServerErrorKind::BusyLoading
        ),
        _ => true,
    }
}

impl RedisStore {
    /// A store for `url`, checked against the Web PKI roots or `ca_pem` when TLS is used. Does not
    /// connect. The URL is one of:
    ///
    /// - `redis://[[user]:password@]host[:port][/db]`: one server (`rediss://` for TLS);
    /// - `redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/master[/db]` with the
    ///   optional parameters `sentinelUsername`, `sentinelPassword` (when the sentinels have
    ///   their own) and `minReplicas` (default 1); the credentials before `@` are the master's;
    /// - `redis+cluster://[[user]:password@]host[:port][,host[:port]...]`: seed nodes of a cluster.
    pub fn open(url: &str, ca_pem: Option<&[u8]>) -> Result<RedisStore, RedisUrlError> {
        let (scheme, rest) = url.split_once("://").ok_or(RedisUrlError::Scheme)?;
        let (tls, topology) = match scheme {
            "redis" => (false, ""),
            "rediss" => (true, ""),
            "redis+sentinel" => (false, "sentinel"),
            "rediss+sentinel" => (true, "sentinel"),
            "redis+cluster" => (false, "cluster"),
            "rediss+cluster" => (true, "cluster"),
            _ => return Err(RedisUrlError::Scheme),
        };
        // The TLS connector takes rustls's process-wide provider; make it the one Keygate uses.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let certs = ca_pem.map(|ca| TlsCertificates {
            client_tls: None,
            root_cert: Some(ca.to_vec()),
        });
        let mut secrets = vec![url.to_string()];
        let scrub = |secrets: &[String], e: RedisError| RedisUrlError::Invalid(scrub(secrets, &e.to_string()));
        let (target, endpoint, min_replicas) = if topology.is_empty() {
            let client = match certs {
                None => Client::open(url),
                Some(certs) => Client::build_with_tls(url, certs),
            }
            .map_err(|e| scrub(&secrets, e))?;
            let info = client.get_connection_info();
            secrets.extend(info.redis_settings().password().map(String::from));
            (Target::Server(client.clone()), info.addr().to_string(), 0)
        } else {
            let parsed = parse_nodes(rest, tls, topology == "sentinel")?;
            secrets.extend(parsed.password.iter().chain(&parsed.sentinel_password).cloned());
            let nodes = parsed.addresses.join(",");
            match &parsed.master {
                Some((master, db)) => {
                    let client = sentinel_client(&parsed, master, *db, tls, certs).map_err(|e| scrub(&secrets, e))?;
                    (
                        Target::Sentinel(Mutex::new(client)),
                        format!("sentinel {nodes} master {master}"),
                        parsed.min_replicas.unwrap_or(1),
                    )
                }
                None => {
                    let client = cluster_client(&parsed, tls, certs).map_err(|e| scrub(&secrets, e))?;
                    (Target::Cluster(client), format!("cluster {nodes}"), 0)
                }
            }
        };
        secrets.retain(|s| !s.is_empty());
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT));
        Ok(RedisStore {
            target,
            config,
            endpoint,
            secrets,
            min_replicas,
            state: Mutex::default(),
            compare_and_set: Script::new(COMPARE_AND_SET),
            take: Script::new(TAKE),
        })
    }

    /// Hosts and ports (and the master's name with Sentinel): what logs may say.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Replicas that must confirm a won compare-and-set (0: not awaited).
    pub fn min_replicas(&self) -> u32 {
        self.min_replicas
    }

    fn scrub(&self, e: &RedisError) -> String {
        scrub(&self.secrets, &e.to_string())
    }

    fn unavailable(&self, failure: impl std::fmt::Display) -> StoreError {
        StoreError::Unavailable(format!("redis at {}: {failure}", self.endpoint))
    }

    async fn open_connection(&self) -> RedisResult<(Connection, Option<Client>)> {
        match &self.target {
            Target::Server(client) => {
                let conn = client
                    .get_multiplexed_async_connection_with_config(&self.config)
                    .await?;
                Ok((Connection::Server(conn), Some(client.clone())))
            }
            Target::Sentinel(sentinel) => {
                // Checks that the node the sentinels name answers `ROLE` as a master.
                let client = sentinel.lock().await.async_get_client().await?;
                let conn = client
                    .get_multiplexed_async_connection_with_config(&self.config)
                    .await?;
                tracing::info!(redis = %self.endpoint, master = %client.get_connection_info().addr(), "sentinel named the master");
                Ok((Connection::Server(conn), Some(client)))
            }
            Target::Cluster(client) => Ok((Connection::Cluster(client.get_async_connection().await?), None)),
        }
    }

    /// The shared connection, opened if there is none.
    async fn connection(&self) -> Result<(u64, Connection), StoreError> {
        let mut state = self.state.lock().await;
        if let Some(conn) = &state.conn {
            return Ok((state.generation, conn.clone()));
        }
        if state.retry_at.is_some_and(|t| Instant::now() < t) {
            return Err(self.unavailable("not reachable"));
        }
        // The lock is held while connecting: one attempt at a time, the others wait for its outcome.
        let failure = match tokio::time::timeout(CONNECT_TIMEOUT, self.open_connection()).await {
            Ok(Ok((conn, server))) => {
                state.generation += 1;
                state.conn = Some(conn.clone());
                state.server = server;
                state.spare.clear();
                state.retry_at = None;
                tracing::info!(redis = %self.endpoint, "connected to redis");
                return Ok((state.generation, conn));
            }
            Ok(Err(e)) => self.scrub(&e),
            Err(_) => "connect timed out".to_string(),
        };
        state.retry_at = Some(Instant::now() + RETRY_AFTER);
        tracing::warn!(redis = %self.endpoint, error = %failure, "cannot connect to redis");
        Err(self.unavailable(failure))
    }

    /// Drops the connection `generation` after it failed, so the next operation reconnects.
    async fn broken(&self, generation: u64, e: &RedisError) -> StoreError {
        let failure = self.scrub(e);
        if breaks_connection(e) {
            let mut state = self.state.lock().await;
            if state.generation == generation && state.conn.take().is_some() {
                state.spare.clear();
                tracing::warn!(redis = %self.endpoint, error = %failure, "redis connection lost");
            }
        }
        self.unavailable(failure)
    }

    async fn query<T: FromRedisValue>(&self, query: Query<'_>) -> Result<T, StoreError> {
        let run = async {
            let (generation, conn) = self.connection().await?;
            let result = match conn {
                Connection::Server(mut c) => query.run(&mut c).await,
                Connection::Cluster(mut c) => query.run(&mut c).await,
            };
            match result {
                Ok(v) => Ok(v),
                Err(e) => Err(self.broken(generation, &e).await),
            }
        };
        // Waiting for another request's connect attempt counts too: the whole operation is bounded.
        tokio::time::timeout(CONNECT_TIMEOUT + COMMAND_TIMEOUT, run)
            .await
            .unwrap_or_else(|_| Err(self.unavailable("timed out")))
    }

    fn swap<'a>(
        &'a self,
        key: &'a str,
        expected: &'a [u8],
        new: &'a [u8],
        ttl: Option<Duration>,
    ) -> redis::ScriptInvocation<'a> {
        let mut script = self.compare_and_set.key(key);
        script
            .arg(expected)
            .arg(new)
            .arg(ttl.map(|t| millis(t).to_string()).unwrap_or_default());
        script
    }

    /// A connection of its own to the current server, for a command that blocks it (`WAIT`).
    async fn spare_connection(&self) -> Result<(u64, MultiplexedConnection), StoreError> {
        let (generation, _) = self.connection().await?;
        let mut state = self.state.lock().await;
        if state.generation == generation
            && let Some(conn) = state.spare.pop()
        {
            return Ok((generation, conn));
        }
        let server = state
            .server
            .clone()
            .ok_or_else(|| self.unavailable("replica confirmation needs one master, not a cluster"))?;
        drop(state);
        let open = server.get_multiplexed_async_connection_with_config(&self.config);
        match tokio::time::timeout(CONNECT_TIMEOUT, open).await {
            Ok(Ok(conn)) => Ok((generation, conn)),
            Ok(Err(e)) => Err(self.broken(generation, &e).await),
            Err(_) => Err(self.unavailable("connect timed out")),
        }
    }

    async fn give_back(&self, generation: u64, conn: MultiplexedConnection) {
        let mut state = self.state.lock().await;
        if state.generation == generation && state.conn.is_some() && state.spare.len() < SPARE_CONNECTIONS {
            state.spare.push(conn);
        }
    }

    /// A compare-and-set that counts only once [`Self::min_replicas`] replicas have it, so a
    /// failover cannot bring the old value back after the swap was reported won.
    async fn confirmed_swap(
        &self,
        key: &str,
        expected: &[u8],
        new: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool, StoreError> {
        let run = async {
            let (generation, mut conn) = self.spare_connection().await?;
            let won = match self.swap(key, expected, new, ttl).invoke_async::<i64>(&mut conn).await {
                Ok(n) => n == 1,
                Err(e) => return Err(self.broken(generation, &e).await),
            };
            if !won {
                self.give_back(generation, conn).await;
                return Ok(false);
            }
            let wait = redis::cmd("WAIT")
                .arg(self.min_replicas)
                .arg(millis(REPLICA_TIMEOUT))
                .query_async::<i64>(&mut conn)
                .await;
            let confirmed = match wait {
                Ok(n) => n,
                Err(e) => return Err(self.broken(generation, &e).await),
            };
            if confirmed >= i64::from(self.min_replicas) {
                self.give_back(generation, conn).await;
                return Ok(true);
            }
            // Undone, so that the caller's 503 is the truth while this master lives: the value
            // is the expected one again and a retry can win. If the master dies first, the swap
            // may or may not survive on the new one; either way it was never reported won.
            let undone = self.swap(key, new, expected, ttl).invoke_async::<i64>(&mut conn).await;
            tracing::warn!(
                redis = %self.endpoint,
                confirmed,
                wanted = self.min_replicas,
                undone = matches!(undone, Ok(1)),
                "too few replicas confirmed a compare-and-set in time"
            );
            self.give_back(generation, conn).await;
            Err(self.unavailable(format!(
                "{confirmed} of {} replicas confirmed the write in time",
                self.min_replicas
            )))
        };
        tokio::time::timeout(CONNECT_TIMEOUT + COMMAND_TIMEOUT + REPLICA_TIMEOUT, run)
            .await
            .unwrap_or_else(|_| Err(self.unavailable("timed out")))
    }
}

fn sentinel_client(
    url: &NodesUrl,
    master: &str,
    db: i64,
    tls: bool,
    certs: Option<TlsCertificates>,
) -> RedisResult<SentinelClient> {
    let addrs = url
        .nodes
        .iter()
        .map(|n| n.as_str().into_connection_info().map(|i| i.addr().clone()))
        .collect::<RedisResult<Vec<_>>>()?;
    let mut builder = SentinelClientBuilder::new(addrs, master, SentinelServerType::Master)?.set_client_to_redis_db(db);
    if let Some(user) = &url.username {
        builder = builder.set_client_to_redis_username(user);
    }
    if let Some(password) = &url.password {
        builder = builder.set_client_to_redis_password(password);
    }
    if let Some(user) = &url.sentinel_username {
        builder = builder.set_client_to_sentinel_username(user);
    }
    if let Some(password) = &url.sentinel_password {
        builder = builder.set_client_to_sentinel_password(password);
    }
    if tls {
        builder = builder
            .set_client_to_redis_tls_mode(TlsMode::Secure)
            .set_client_to_sentinel_tls_mode(TlsMode::Secure);
        if let Some(certs) = certs {
            builder = builder
                .set_client_to_redis_certificates(certs.clone())
                .set_client_to_sentinel_certificates(certs);
        }
    }
    builder.build()
}

fn cluster_client(url: &NodesUrl, tls: bool, certs: Option<TlsCertificates>) -> RedisResult<ClusterClient> {
    let mut builder = ClusterClientBuilder::new(url.nodes.clone())
        .connection_timeout(CONNECT_TIMEOUT)
        .response_timeout(COMMAND_TIMEOUT);
    if let Some(user) = &url.username {
        builder = builder.username(user);
    }
    if let Some(password) = &url.password {
        builder = builder.password(password);
    }
    if tls {
        builder = builder.tls(TlsMode::Secure);
        if let Some(certs) = certs {
            builder = builder.certs(certs);
        }
    }
    builder.build()
}

/// `text` with every secret (the URL first, then passwords) replaced.
fn scrub(secrets: &[String], text: &str) -> String {
    secrets
        .iter()
        .filter(|s| !s.is_empty())
        .fold(text.to_string(), |text, secret| text.replace(secret.as_str(), "***"))
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
        Box::pin(async move {
            if self.min_replicas > 0 {
                return self.confirmed_swap(key, expected, new, ttl).await;
            }
            let script = self.swap(key, expected, new, ttl);
            self.query::<i64>(Query::Script(script)).await.map(|n| n == 1)
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls_name_the_sentinels_the_master_and_its_credentials() {
        let url = parse_nodes(
            "app:p%40ss@10.0.0.1,10.0.0.2:26380,[::1]:26381/mymaster/2?sentinelPassword=s%26p&minReplicas=2",
            false,
            true,
        )
        .unwrap();
        assert_eq!(
            url,
            NodesUrl {
                nodes: vec![
                    "redis://10.0.0.1:26379".into(),
                    "redis://10.0.0.2:26380".into(),
                    "redis://[::1]:26381".into()
                ],
                addresses: vec!["10.0.0.1:26379".into(), "10.0.0.2:26380".into(), "[::1]:26381".into()],
                username: Some("app".into()),
                password: Some("p@ss".into()),
                master: Some(("mymaster".into(), 2)),
                sentinel_username: None,
                sentinel_password: Some("s&p".into()),
                min_replicas: Some(2),
            }
        );
        let tls = parse_nodes(":pw@s1/m", true, true).unwrap();
        assert_eq!(tls.nodes, ["rediss://s1:26379"]);
        assert_eq!((tls.username, tls.master), (None, Some(("m".into(), 0))));
    }

    #[test]
    fn cluster_urls_list_seed_nodes() {
        let url = parse_nodes("a:6379,b", false, false).unwrap();
        assert_eq!(url.nodes, ["redis://a:6379", "redis://b:6379"]);
        assert_eq!(url.master, None);
    }

    #[test]
    fn bad_urls_say_what_to_fix_and_never_echo_a_secret() {
        for (url, says) in [
            ("redis+sentinel://:hunter2@s1:26379", "needs the master's name"),
            ("redis+sentinel://:hunter2@s1/m/x", "must be a number"),
            ("redis+sentinel://:hunter2@s1/m?hunter2", "unknown query parameter"),
            (
                "redis+sentinel://:hunter2@s1/m?minReplicas=hunter2",
                "minReplicas must be a whole number",
            ),
            ("redis+sentinel://:hunter2@s1:hunter2/m", "port is not a number"),
            ("redis+sentinel://:hunter2@,s1/m", "a node address is empty"),
            ("redis+cluster://:hunter2@c1/0", "takes no path"),
            ("redis+cluster://:hunter2@c1?minReplicas=1", "takes no query parameters"),
            ("redis+cluster://:%ff@c1", "password is not percent-encoded"),
            ("rediss+clusters://:hunter2@c1", "must start with redis://"),
            ("http://:hunter2@c1", "must start with redis://"),
        ] {
            let err = RedisStore::open(url, None).unwrap_err().to_string();
            assert!(err.contains(says), "{url}: {err}");
            assert!(!err.contains("hunter2"), "{url}: {err}");
        }
    }

    #[test]
    fn replicas_are_awaited_behind_sentinel_unless_told_otherwise() {
        let open = |url: &str| RedisStore::open(url, None).unwrap();
        assert_eq!(open("redis://127.0.0.1:1").min_replicas(), 0);
        assert_eq!(open("redis+cluster://127.0.0.1:1").min_replicas(), 0);
        assert_eq!(open("redis+sentinel://127.0.0.1:1/m").min_replicas(), 1);
        assert_eq!(open("redis+sentinel://127.0.0.1:1/m?minReplicas=0").min_replicas(), 0);
        let store = open("redis+sentinel://:pw@127.0.0.1:1,127.0.0.1:2/m");
        assert_eq!(store.endpoint(), "sentinel 127.0.0.1:1,127.0.0.1:2 master m");
        assert_eq!(
            format!("{store:?}"),
            "RedisStore(sentinel 127.0.0.1:1,127.0.0.1:2 master m)"
        );
    }
}
