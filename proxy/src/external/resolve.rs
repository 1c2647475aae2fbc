//! Name resolution for upstream clients, and the point where client-named destinations are
//! guarded. [`Network`] holds the [`Resolve`] implementation (the system's, or one a test
//! controls) and the proxy's own listening addresses. Every upstream client's `HttpConnector`
//! resolves through a [`Resolver`]; an allowlist client's resolver carries a [`Guard`] and
//! checks every address before handing any to the connector, which connects only to those:
//! there is no second lookup for a rebinding DNS server to answer differently.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use hyper_util::client::legacy::connect::dns::Name;

use super::guard::Guard;

/// Turns a host name into addresses.
pub trait Resolve: Send + Sync + 'static {
    /// Every address `host` resolves to.
    fn resolve(&self, host: String) -> BoxFuture<'static, io::Result<Vec<IpAddr>>>;
}

/// The operating system's resolver (`getaddrinfo` on tokio's blocking pool), but for
/// `localhost` and `*.localhost`, which are loopback without asking DNS (RFC 6761 §6.3), as
/// browsers answer them: a DNS server cannot point them elsewhere, and a local example can name
/// `partner.localhost` on any machine. An allowlist still refuses loopback unless `allowCidrs`
/// opens it.
#[derive(Debug, Default)]
pub struct SystemResolver;

/// Whether `host` is `localhost` or a name under it.
fn is_localhost(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    host == "localhost" || host.ends_with(".localhost")
}

impl Resolve for SystemResolver {
    fn resolve(&self, host: String) -> BoxFuture<'static, io::Result<Vec<IpAddr>>> {
        if is_localhost(&host) {
            return Box::pin(std::future::ready(Ok(vec![IpAddr::from([127, 0, 0, 1])])));
        }
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .map(|a| a.ip())
                .collect())
        })
    }
}

/// Fixed answers: for tests, and for pinning names without touching the system's resolver.
/// Unknown names fail as a missing DNS record does.
#[derive(Debug, Default)]
pub struct StaticResolver {
    answers: HashMap<String, Vec<IpAddr>>,
}

impl StaticResolver {
    /// Answers `name` (lower case) with `addrs`.
    pub fn with(mut self, name: &str, addrs: &[&str]) -> StaticResolver {
        let addrs = addrs.iter().map(|a| a.parse().expect("an IP address")).collect();
        self.answers.insert(name.to_ascii_lowercase(), addrs);
        self
    }
}

impl Resolve for StaticResolver {
    fn resolve(&self, host: String) -> BoxFuture<'static, io::Result<Vec<IpAddr>>> {
        let answer = self
            .answers
            .get(&host)
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{host}: no such host")));
        Box::pin(std::future::ready(answer))
    }
}

/// How the proxy reaches upstreams: the resolver, and the addresses it listens on itself
/// (registered by the listeners once bound, read at each connect, so a client built before
/// the listeners still knows them).
#[derive(Clone)]
pub struct Network {
    resolver: Arc<dyn Resolve>,
    listeners: Arc<RwLock<Vec<SocketAddr>>>,
}

impl Default for Network {
    fn default() -> Self {
        Network::new(Arc::new(SystemResolver))
    }
}

impl Network {
    /// A network resolving through `resolver`.
    pub fn new(resolver: Arc<dyn Resolve>) -> Network {
        Network {
            resolver,
            listeners: Arc::default(),
        }
    }

    /// Records a listening address of this proxy: no client-named destination may reach it.
    pub fn add_listener(&self, addr: SocketAddr) {
        self.listeners.write().expect("listeners lock").push(addr);
    }

    fn listeners(&self) -> Vec<SocketAddr> {
        self.listeners.read().expect("listeners lock").clone()
    }
}

/// A resolved address refused by an allowlist's guard. `proxy::classify` finds it in a
/// connect error and answers `DESTINATION_RESOLVES_PRIVATE`.
#[derive(Debug, thiserror::Error)]
#[error("{host} resolves to {addr}, refused: {rule}")]
pub struct Refused {
    /// The name that was resolved.
    pub host: String,
    /// The address refused (logged, never sent to the client).
    pub addr: IpAddr,
    /// The rule that refused it.
    pub rule: &'static str,
}

/// The resolver service an upstream client's `HttpConnector` calls.
#[derive(Clone)]
pub struct Resolver {
    network: Network,
    guard: Option<Arc<Guard>>,
}

impl Resolver {
    /// Resolves through `network`; with a guard, refuses names with any address it refuses.
    pub fn new(network: Network, guard: Option<Guard>) -> Resolver {
        Resolver {
            network,
            guard: guard.map(Arc::new),
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Name> for Resolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs = this.network.resolver.resolve(host.clone()).await?;
            if addrs.is_empty() {
                return Err(io::Error::new(io::ErrorKind::NotFound, format!("{host}: no addresses")).into());
            }
            if let Some(guard) = &this.guard {
                // One refused address refuses the name: a rebinding or split answer is an
                // attack more often than a mistake, and half a destination is not worth serving.
                let listeners = this.network.listeners();
                for &addr in &addrs {
                    guard.check(addr, &listeners).map_err(|rule| Refused {
                        host: host.clone(),
                        addr,
                        rule,
                    })?;
                }
            }
            // Port 0: the connector puts the URL's port in.
            Ok(addrs
                .into_iter()
                .map(|ip| SocketAddr::new(ip, 0))
                .collect::<Vec<_>>()
                .into_iter())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn localhost_names_are_loopback_without_dns() {
        for name in ["localhost", "partner.localhost", "A.B.LOCALHOST.", "localhost."] {
            assert_eq!(
                SystemResolver.resolve(name.to_string()).await.unwrap(),
                [IpAddr::from([127, 0, 0, 1])],
                "{name}"
            );
        }
        assert!(!is_localhost("localhost.example.com"));
        assert!(!is_localhost("notlocalhost"));
    }
}
