//! A real `redis-server` for tests: started from /usr/bin/redis-server on a free loopback port,
//! without persistence (`--save '' --appendonly no`), killed on drop. Tests stop and restart it
//! on the same port to prove Keygate rides out a Redis outage. A missing binary fails the test
//! with how to install it; it never skips.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BINARY: &str = "/usr/bin/redis-server";

/// Fails, never skips, when a Redis binary is missing, saying which Debian package has it.
pub fn require(binary: &str, package: &str) {
    assert!(
        Path::new(binary).exists(),
        "{binary} is missing: install {package} (apt-get install {package})"
    );
}

/// How to start the server.
#[derive(Clone, Debug, Default)]
pub struct RedisOptions {
    /// `requirepass`; the URL then carries it.
    pub password: Option<String>,
    /// Serve TLS only, with this PEM certificate and key (the URL is then `rediss://`).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// More `redis-server` arguments (`--replicaof`, `--cluster-enabled`, ...).
    pub args: Vec<String>,
}

/// A running `redis-server`, killed on drop.
pub struct RedisServer {
    /// The loopback port it listens on, kept across [`RedisServer::restart`].
    pub port: u16,
    options: RedisOptions,
    child: Option<Child>,
    /// Its working folder: a replica saves the master's snapshot there, never in the checkout.
    dir: RunDir,
}

impl RedisServer {
    /// A plain server without a password.
    pub fn start() -> RedisServer {
        RedisServer::start_with(RedisOptions::default())
    }

    /// A server with `options`.
    pub fn start_with(options: RedisOptions) -> RedisServer {
        require(BINARY, "redis-server");
        let port = free_port();
        let mut server = RedisServer {
            port,
            options,
            child: None,
            dir: RunDir::new("redis"),
        };
        server.restart();
        server
    }

    /// The URL Keygate is configured with: `redis://[:password@]127.0.0.1:port`, `rediss://` with TLS.
    pub fn url(&self) -> String {
        let scheme = if self.options.tls.is_some() { "rediss" } else { "redis" };
        let auth = self
            .options
            .password
            .as_ref()
            .map(|p| format!(":{p}@"))
            .unwrap_or_default();
        format!("{scheme}://{auth}127.0.0.1:{}", self.port)
    }

    /// Kills the server (its data is gone: nothing is persisted).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server (again) on the same port and waits until it accepts connections.
    pub fn restart(&mut self) {
        self.stop();
        let port = self.port.to_string();
        let mut cmd = Command::new(BINARY);
        cmd.arg("--dir").arg(&self.dir.0).args([
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--loglevel",
            "warning",
        ]);
        match &self.options.tls {
            None => cmd.args(["--port", &port]),
            Some((cert, key)) => cmd
                .args(["--port", "0", "--tls-port", &port, "--tls-auth-clients", "no"])
                .arg("--tls-cert-file")
                .arg(cert)
                .arg("--tls-key-file")
                .arg(key)
                .arg("--tls-ca-cert-file")
                .arg(cert),
        };
        if let Some(password) = &self.options.password {
            cmd.args(["--requirepass", password, "--masterauth", password]);
        }
        cmd.args(&self.options.args);
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BINARY}: {e}"));
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "redis-server on port {} exited with {status} before it was ready",
                    self.port
                );
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} never became ready",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
    }
}

/// A free loopback port, for a server about to bind it.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

const SENTINEL: &str = "/usr/bin/redis-sentinel";
const CLI: &str = "/usr/bin/redis-cli";

/// Runs `redis-cli` against `127.0.0.1:port` (with `password`), returning its trimmed output.
pub fn cli(port: u16, password: Option<&str>, args: &[&str]) -> String {
    require(CLI, "redis-tools");
    let mut cmd = Command::new(CLI);
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
    if let Some(password) = password {
        // Through the environment, so the password is not on a command line.
        cmd.env("REDISCLI_AUTH", password);
    }
    // Its complaints while a server is still starting are expected (callers poll); a real
    // failure shows as output a caller does not accept.
    let out = cmd
        .args(args)
        .stderr(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {CLI}: {e}"));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A folder for config files the servers rewrite (Sentinel's, Cluster's), removed on drop.
struct RunDir(PathBuf);

impl RunDir {
    fn new(what: &str) -> RunDir {
        let dir = std::env::temp_dir().join(format!("keygate-{what}-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).expect("a run dir in the temp folder");
        RunDir(dir)
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Polls `check` every 50 ms until it holds; panics with `what` after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "{what} did not happen within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The name the sentinels know the master by.
pub const MASTER_NAME: &str = "keygate";

/// A master, two replicas and three sentinels (quorum two) on loopback, all with one password:
/// the smallest group in which a failover leaves the new master a replica to confirm writes.
/// The sentinels call the master down after [`SentinelGroup::DOWN_AFTER`] without an answer.
pub struct SentinelGroup {
    pub password: String,
    /// `[master, replica, replica]` as started; which one is master now, ask [`SentinelGroup::master_port`].
    pub servers: Vec<RedisServer>,
    sentinels: Vec<Child>,
    pub sentinel_ports: Vec<u16>,
    _dir: RunDir,
}

impl SentinelGroup {
    /// How long the sentinels wait before they call a silent master down.
    pub const DOWN_AFTER: Duration = Duration::from_millis(1000);

    pub fn start(password: &str) -> SentinelGroup {
        require(SENTINEL, "redis-sentinel");
        let options = RedisOptions {
            password: Some(password.into()),
            ..Default::default()
        };
        let master = RedisServer::start_with(options.clone());
        let replicas: Vec<RedisServer> = (0..2)
            .map(|_| {
                RedisServer::start_with(RedisOptions {
                    args: vec!["--replicaof".into(), "127.0.0.1".into(), master.port.to_string()],
                    ..options.clone()
                })
            })
            .collect();
        wait_until("the replicas' first sync", Duration::from_secs(10), || {
            replicas
                .iter()
                .all(|r| cli(r.port, Some(password), &["INFO", "replication"]).contains("master_link_status:up"))
        });
        let dir = RunDir::new("sentinel");
        let mut sentinels = Vec::new();
        let mut sentinel_ports = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            let conf = dir.0.join(format!("sentinel-{port}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                     sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 2\n\
                     sentinel auth-pass {MASTER_NAME} {password}\n\
                     sentinel down-after-milliseconds {MASTER_NAME} {down}\n\
                     sentinel failover-timeout {MASTER_NAME} 10000\n\
                     sentinel parallel-syncs {MASTER_NAME} 1\n",
                    dir = dir.0.display(),
                    master = master.port,
                    down = Self::DOWN_AFTER.as_millis(),
                ),
            )
            .unwrap();
            let child = Command::new(SENTINEL)
                .arg(&conf)
                .args(["--loglevel", "warning"])
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {SENTINEL}: {e}"));
            sentinels.push(child);
            sentinel_ports.push(port);
        }
        let group = SentinelGroup {
            password: password.into(),
            servers: std::iter::once(master).chain(replicas).collect(),
            sentinels,
            sentinel_ports,
            _dir: dir,
        };
        let ports = group.sentinel_ports.clone();
        wait_until(
            "sentinels that know each other and the replica",
            Duration::from_secs(20),
            || {
                ports.iter().all(|&p| {
                    let state = cli(p, None, &["SENTINEL", "MASTER", MASTER_NAME]);
                    let field = |name: &str| {
                        let lines: Vec<&str> = state.lines().collect();
                        lines
                            .iter()
                            .position(|l| *l == name)
                            .and_then(|i| lines.get(i + 1))
                            .map(|v| v.to_string())
                    };
                    field("num-other-sentinels").as_deref() == Some("2") && field("num-slaves").as_deref() == Some("2")
                })
            },
        );
        group
    }

    /// `redis+sentinel://:password@<the three sentinels>/keygate`.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self.sentinel_ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        format!("redis+sentinel://:{}@{}/{MASTER_NAME}", self.password, nodes.join(","))
    }

    /// The master's port as the first sentinel that answers reports it.
    pub fn master_port(&self) -> Option<u16> {
        self.sentinel_ports.iter().find_map(|&p| {
            let out = cli(p, None, &["SENTINEL", "get-master-addr-by-name", MASTER_NAME]);
            out.lines().nth(1).and_then(|port| port.trim().parse().ok())
        })
    }

    /// The server that is master now.
    pub fn master(&mut self) -> &mut RedisServer {
        let port = self.master_port().expect("the sentinels name a master");
        self.servers
            .iter_mut()
            .find(|s| s.port == port)
            .expect("the master is one of the group's servers")
    }
}

impl Drop for SentinelGroup {
    fn drop(&mut self) {
        for child in &mut self.sentinels {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A Redis Cluster of three masters (no replicas) on loopback, made by `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
    _dir: RunDir,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let dir = RunDir::new("cluster");
        let nodes: Vec<RedisServer> = (0..3)
            .map(|i| {
                RedisServer::start_with(RedisOptions {
                    args: vec![
                        "--cluster-enabled".into(),
                        "yes".into(),
                        "--cluster-config-file".into(),
                        dir.0.join(format!("nodes-{i}.conf")).display().to_string(),
                        "--cluster-node-timeout".into(),
                        "5000".into(),
                    ],
                    ..Default::default()
                })
            })
            .collect();
        let mut create = vec!["--cluster".to_string(), "create".into()];
        create.extend(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)));
        create.extend(["--cluster-replicas".into(), "0".into(), "--cluster-yes".into()]);
        let create: Vec<&str> = create.iter().map(String::as_str).collect();
        let out = cli(nodes[0].port, None, &create);
        assert!(
            out.contains("[OK] All 16384 slots covered"),
            "cluster create failed: {out}"
        );
        let cluster = RedisCluster { nodes, _dir: dir };
        wait_until("cluster_state:ok on every node", Duration::from_secs(20), || {
            cluster
                .nodes
                .iter()
                .all(|n| cli(n.port, None, &["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        });
        cluster
    }

    /// `redis+cluster://` with every node as a seed.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        format!("redis+cluster://{}", nodes.join(","))
    }

    /// `CLUSTER MYID` of the node on `port`.
    pub fn id(&self, port: u16) -> String {
        cli(port, None, &["CLUSTER", "MYID"])
    }

    /// The port of the node that serves `slot` now.
    pub fn owner(&self, slot: u16) -> u16 {
        self.nodes
            .iter()
            .map(|n| n.port)
            .find(|&p| {
                cli(p, None, &["CLUSTER", "NODES"])
                    .lines()
                    .find(|l| l.contains("myself"))
                    .is_some_and(|l| owns(l, slot))
            })
            .expect("some node serves every slot")
    }
}

/// Whether a `CLUSTER NODES` line lists `slot` among its ranges.
fn owns(line: &str, slot: u16) -> bool {
    line.split_whitespace().skip(8).any(|range| {
        let (a, b) = range.split_once('-').unwrap_or((range, range));
        matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if (a..=b).contains(&slot))
    })
}
