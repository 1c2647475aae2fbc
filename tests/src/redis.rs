//! A real `redis-server` for tests: started from /usr/bin/redis-server on a free loopback port,
//! without persistence (`--save '' --appendonly no`), killed on drop. Tests stop and restart it
//! on the same port to prove Keygate rides out a Redis outage. A missing binary fails the test
//! with how to install it; it never skips.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BINARY: &str = "/usr/bin/redis-server";

/// How to start the server.
#[derive(Clone, Debug, Default)]
pub struct RedisOptions {
    /// `requirepass`; the URL then carries it.
    pub password: Option<String>,
    /// Serve TLS only, with this PEM certificate and key (the URL is then `rediss://`).
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// A running `redis-server`, killed on drop.
pub struct RedisServer {
    /// The loopback port it listens on, kept across [`RedisServer::restart`].
    pub port: u16,
    options: RedisOptions,
    child: Option<Child>,
}

impl RedisServer {
    /// A plain server without a password.
    pub fn start() -> RedisServer {
        RedisServer::start_with(RedisOptions::default())
    }

    /// A server with `options`.
    pub fn start_with(options: RedisOptions) -> RedisServer {
        assert!(
            Path::new(BINARY).exists(),
            "{BINARY} is missing: install redis-server (apt-get install redis-server)"
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let mut server = RedisServer {
            port,
            options,
            child: None,
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
        cmd.args([
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
            cmd.args(["--requirepass", password]);
        }
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

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
