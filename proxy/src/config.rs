//! The live configuration: a compiled [`Snapshot`] and its [`SecretSnapshot`] turned into what
//! the request path needs ready-made — the router, parsed upstream URLs, header names and values,
//! upstream clients. Built and validated off the request path; once built it never changes, and
//! a reload swaps in a whole new one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue as HttpHeaderValue};
use http::uri::{Authority, Scheme};
use keygate_crds::snapshot::{Destination, HeaderValue, Route, SNAPSHOT_FORMAT};
use keygate_crds::{SecretSnapshot, Snapshot};

use crate::apikeys::ApiKeys;
use crate::external::{self, Allowlist};
use crate::pipeline::chain::{ChainPolicy, Chains};
use crate::pipeline::cookie::CookieTranslation;
use crate::pipeline::cors::Cors;
use crate::router::Router;
use crate::store::Stores;
use crate::upstream::{ClientCache, ClientError, ClientKey, Clients};

/// Why a snapshot cannot be served. Names routes, headers and secret ids, never values.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The snapshot's format is not one this proxy knows.
    #[error("snapshot format {0} is not supported (this proxy reads format {SNAPSHOT_FORMAT}); upgrade the proxy")]
    Format(u32),
    /// The secret snapshot belongs to another snapshot.
    #[error("the secret snapshot belongs to snapshot {found}, not {expected}")]
    SecretsMismatch {
        /// Hash of the snapshot being loaded.
        expected: String,
        /// Hash the secret snapshot names.
        found: String,
    },
    /// A secret the snapshot refers to is missing.
    #[error("route {route}: secret {id} is missing from the secret snapshot")]
    MissingSecret {
        /// Route id.
        route: String,
        /// Secret id.
        id: String,
    },
    /// A route field cannot be used.
    #[error("route {route}: {field}: {message}")]
    Route {
        /// Route id.
        route: String,
        /// Field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// Building the upstream client failed.
    #[error("route {route}: upstream TLS: {source}")]
    Client {
        /// Route id.
        route: String,
        /// Cause.
        source: ClientError,
    },
    /// A vault rule cannot be served.
    #[error("TokenVaultRule {rule}: {message}")]
    Vault {
        /// Rule id.
        rule: String,
        /// Field and what is wrong; never a secret value.
        message: String,
    },
    /// A policy (session chain, vault rule, cookie translation, allowlist) field cannot be used.
    #[error("policy {policy}: {field}: {message}")]
    Policy {
        /// `namespace/name` of the policy.
        policy: String,
        /// Field.
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// A route ready to serve.
pub struct LiveRoute {
    /// The route id, shared so metrics labels cost a reference count, not an allocation.
    pub id: Arc<str>,
    /// The compiled route.
    pub spec: Route,
    /// Where requests go.
    pub target: Target,
    /// Headers to set on upstream requests, values resolved.
    pub inject: Vec<(HeaderName, HttpHeaderValue)>,
    /// Response renames.
    pub renames: Vec<(HeaderName, HeaderName)>,
    /// Connection pools for this route's upstream, one per worker.
    pub client: Clients,
    /// Time to response headers.
    pub request_timeout: Duration,
    /// CORS rules.
    pub cors: Option<Cors>,
    /// The cookie translation the route uses, shared with every route that names it.
    pub cookie: Option<Arc<CookieTranslation>>,
    /// For `auth: apiKey`: the header carrying the key, and the keys.
    pub api_keys: Option<(HeaderName, ApiKeys)>,
    /// Every header that names a destination in this config: read by allowlist routes,
    /// refused by fixed ones, never forwarded.
    pub destination_headers: Arc<[HeaderName]>,
    /// The route's vault rules, when it references any.
    pub vault: Option<Arc<crate::vault::RouteVault>>,
    /// The session-chain policy every request must satisfy (`sessionChainRef`).
    pub chain: Option<Arc<ChainPolicy>>,
    /// Request and answer rewrites (`transform`), expressions compiled.
    pub transform: Option<crate::pipeline::transform::Transform>,
    /// The route's metric series, resolved once.
    pub meters: crate::metrics::RouteMeters,
}

/// A route's destination, parsed.
pub enum Target {
    /// A fixed base URL.
    Fixed {
        /// `http` or `https`.
        scheme: Scheme,
        /// Host and port.
        authority: Authority,
        /// Base path without a trailing `/` (may be empty).
        base_path: String,
    },
    /// Chosen per request from an allowlist.
    Allowlist(Arc<Allowlist>),
}

/// One generation of live configuration.
pub struct Config {
    /// Content hash of the snapshot; the `hash` label of `keygate_config_info`.
    pub hash: String,
    router: Router<Arc<LiveRoute>>,
    /// The same routes by id: a route now may share its prefix with others on other hosts, so
    /// the prefix no longer names it (open tunnels look their route up again on each reload).
    by_id: HashMap<String, Arc<LiveRoute>>,
    client_keys: Vec<ClientKey>,
    /// Vault rules and their tokenize endpoints.
    pub vault: crate::vault::Vaults,
    chains: Chains,
}

impl Config {
    /// Validates and prepares a snapshot. `clients` is shared across generations.
    pub fn build(
        snapshot: &Snapshot,
        secrets: &SecretSnapshot,
        clients: &ClientCache,
        stores: &Stores,
    ) -> Result<Config, ConfigError> {
        if snapshot.format != SNAPSHOT_FORMAT {
            return Err(ConfigError::Format(snapshot.format));
        }
        let hash = snapshot.hash();
        if secrets.snapshot_hash != hash {
            return Err(ConfigError::SecretsMismatch {
                expected: hash,
                found: secrets.snapshot_hash.clone(),
            });
        }
        let vault = crate::vault::Vaults::build(snapshot, secrets, stores)?;
        let chains = Chains::build(snapshot, secrets, stores)?;
        let referenced = Referenced::build(snapshot, secrets, stores)?;
        let mut client_keys = Vec::new();
        let mut entries = Vec::with_capacity(snapshot.routes.len());
        for route in &snapshot.routes {
            let (key, mut live) = build_route(route, &referenced, secrets, clients)?;
            live.vault = vault.for_route(route)?;
            live.chain = chains.for_route(route)?;
            if !client_keys.contains(&key) {
                client_keys.push(key);
            }
            entries.push((route.hosts.clone(), route.path_prefix.clone(), Arc::new(live)));
        }
        Ok(Config {
            hash,
            by_id: entries.iter().map(|(_, _, r)| (r.spec.id.clone(), r.clone())).collect(),
            router: Router::new(entries),
            client_keys,
            vault,
            chains,
        })
    }

    /// The route serving `path` on `host` (see [`crate::router::request_host`]).
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<&Arc<LiveRoute>> {
        self.router.lookup(host, path)
    }

    /// The route whose `ProxyRoute` is `id` (`namespace/name`).
    pub fn route_by_id(&self, id: &str) -> Option<&Arc<LiveRoute>> {
        self.by_id.get(id)
    }

    /// The session-chain policy whose create path is exactly `path`; checked before routing.
    pub fn session_create(&self, path: &str) -> Option<&Arc<ChainPolicy>> {
        self.chains.create_path(path)
    }

    /// Number of routes.
    pub fn route_count(&self) -> usize {
        self.router.len()
    }

    /// Client settings this generation uses.
    pub fn client_keys(&self) -> &[ClientKey] {
        &self.client_keys
    }
}

/// What routes reference by id, built once per config and shared by every route naming it — not
/// once per route: allowlists, cookie translations (with their sealers and stores), and the
/// destination headers every route checks.
struct Referenced {
    destination_headers: Arc<[HeaderName]>,
    allowlists: HashMap<String, Arc<Allowlist>>,
    cookies: HashMap<String, Arc<CookieTranslation>>,
}

impl Referenced {
    /// Builds what the snapshot's routes reference, each once.
    fn build(snapshot: &Snapshot, secrets: &SecretSnapshot, stores: &Stores) -> Result<Referenced, ConfigError> {
        let policy = |id: &str, field: &str, message: String| ConfigError::Policy {
            policy: id.to_string(),
            field: field.to_string(),
            message,
        };
        let mut allowlists = HashMap::new();
        let mut cookies = HashMap::new();
        for route in &snapshot.routes {
            if let Destination::Allowlist { allowlist: id } = &route.destination
                && !allowlists.contains_key(id)
            {
                let list = Allowlist::build(id, snapshot).map_err(|m| policy(id, "spec", m))?;
                allowlists.insert(id.clone(), Arc::new(list));
            }
            if let Some(id) = &route.cookie_translation
                && !cookies.contains_key(id)
            {
                let spec = snapshot
                    .cookie_translations
                    .get(id)
                    .ok_or_else(|| policy(id, "cookieTranslationRef", "is not in the snapshot".into()))?;
                let built = CookieTranslation::build(id, spec, snapshot, secrets, stores)
                    .map_err(|(field, message)| policy(id, &field, message))?;
                cookies.insert(id.clone(), Arc::new(built));
            }
        }
        Ok(Referenced {
            destination_headers: external::destination_headers(snapshot),
            allowlists,
            cookies,
        })
    }
}

fn build_route(
    route: &Route,
    referenced: &Referenced,
    secrets: &SecretSnapshot,
    clients: &ClientCache,
) -> Result<(ClientKey, LiveRoute), ConfigError> {
    let bad = |field: &str, message: String| ConfigError::Route {
        route: route.id.clone(),
        field: field.into(),
        message,
    };
    let secret = |id: &String| {
        secrets.values.get(id).ok_or_else(|| ConfigError::MissingSecret {
            route: route.id.clone(),
            id: id.clone(),
        })
    };
    let target = match &route.destination {
        Destination::Upstream { url } => {
            let uri: http::Uri = url.parse().map_err(|e| bad("upstream", format!("{e}")))?;
            let (Some(scheme), Some(authority)) = (uri.scheme().cloned(), uri.authority().cloned()) else {
                return Err(bad("upstream", "must be an absolute URL".into()));
            };
            let base_path = uri.path().trim_end_matches('/').to_string();
            Target::Fixed {
                scheme,
                authority,
                base_path,
            }
        }
        Destination::Allowlist { allowlist } => Target::Allowlist(
            referenced
                .allowlists
                .get(allowlist)
                .cloned()
                .ok_or_else(|| bad("allowlistRef", format!("{allowlist} is not in the snapshot")))?,
        ),
    };
    let mut inject = Vec::with_capacity(route.forward_headers.len());
    for (i, h) in route.forward_headers.iter().enumerate() {
        let field = format!("forwardHeaders[{i}]");
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| bad(&field, format!("{:?} is not a header name", h.name)))?;
        let (raw, sensitive) = match &h.value {
            HeaderValue::Literal { literal } => (literal, false),
            HeaderValue::Secret { secret: id } => (secret(id)?, true),
        };
        // Secret values often end in a newline written by `echo` or an editor; it never belongs in a header.
        let mut value = HttpHeaderValue::from_str(raw.trim_end_matches(['\r', '\n'])).map_err(|_| {
            bad(
                &field,
                format!(
                    "the value for header {} has characters a header cannot carry (control characters or non-ASCII)",
                    h.name
                ),
            )
        })?;
        value.set_sensitive(sensitive);
        inject.push((name, value));
    }
    let renames = route
        .expose_headers
        .iter()
        .map(|r| {
            let from = HeaderName::from_bytes(r.from.as_bytes())
                .map_err(|_| bad("exposeHeaders", format!("{:?} is not a header name", r.from)))?;
            let to = HeaderName::from_bytes(r.to.as_bytes())
                .map_err(|_| bad("exposeHeaders", format!("{:?} is not a header name", r.to)))?;
            Ok((from, to))
        })
        .collect::<Result<_, ConfigError>>()?;
    let cors = route
        .cors
        .as_ref()
        .map(Cors::new)
        .transpose()
        .map_err(|m| bad("cors", m))?;
    let cookie = route
        .cookie_translation
        .as_ref()
        .map(|id| {
            referenced
                .cookies
                .get(id)
                .cloned()
                .ok_or_else(|| bad("cookieTranslationRef", format!("{id} is not in the snapshot")))
        })
        .transpose()?;
    let api_keys = match &route.api_key {
        None => None,
        Some(auth) => {
            let name = auth.header.as_deref().unwrap_or("x-api-key");
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| bad("apiKey.header", format!("{name:?} is not a header name")))?;
            let ns = route.id.split('/').next().unwrap_or_default();
            Some((header, ApiKeys::from_secret(secrets, ns, &auth.keys_secret_ref.name)))
        }
    };
    let transform = route
        .transform
        .as_ref()
        .map(crate::pipeline::transform::Transform::build)
        .transpose()
        .map_err(|(field, message)| bad(&field, message))?;
    let connect_timeout = Duration::from_millis(route.connect_timeout_ms);
    let (key, client) = match &target {
        Target::Fixed { .. } => {
            let ca = route.ca_bundle.as_ref().map(secret).transpose()?;
            clients.get(ca.map(String::as_str), route.upstream_protocol, connect_timeout)
        }
        Target::Allowlist(list) => {
            let ca = list
                .ca_bundle
                .as_ref()
                .or(route.ca_bundle.as_ref())
                .map(secret)
                .transpose()?;
            clients.get_external(ca.map(String::as_str), route.upstream_protocol, connect_timeout, list)
        }
    }
    .map_err(|source| ConfigError::Client {
        route: route.id.clone(),
        source,
    })?;
    Ok((
        key,
        LiveRoute {
            id: Arc::from(route.id.as_str()),
            spec: route.clone(),
            target,
            inject,
            renames,
            client,
            request_timeout: Duration::from_millis(route.request_timeout_ms),
            cors,
            cookie,
            api_keys,
            destination_headers: referenced.destination_headers.clone(),
            vault: None,
            chain: None,
            transform,
            meters: Default::default(),
        },
    ))
}

/// A [`LiveRoute`] from route JSON, for stage tests.
#[cfg(test)]
pub(crate) fn test_route(overrides: serde_json::Value) -> LiveRoute {
    let mut route = serde_json::json!({
        "id": "default/r", "pathPrefix": "/r",
        "destination": {"type": "upstream", "url": "http://127.0.0.1:1/base"},
        "stripPrefix": true, "connectTimeoutMs": 1000, "requestTimeoutMs": 1000,
        "bodyLimit": 1024, "upstreamProtocol": "auto", "auth": "none"
    });
    for (k, v) in overrides.as_object().expect("an object") {
        route[k] = v.clone();
    }
    let route: Route = serde_json::from_value(route).expect("a valid route");
    let secrets = SecretSnapshot::default();
    let referenced = Referenced::build(&Snapshot::default(), &secrets, &Stores::default()).expect("nothing to build");
    build_route(&route, &referenced, &secrets, &ClientCache::default())
        .expect("a buildable route")
        .1
}
