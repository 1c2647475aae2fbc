//! The token vault: a self-hosted detokenizing proxy, declared per route by `TokenVaultRule`s.
//! Browsers and app servers hold only token ids; the data is swapped in on the way to the
//! upstream, and sensitive answer fields are swapped for new tokens on the way back.
//!
//! [`Vaults::build`] turns the snapshot's rules into [`tokens::VaultRule`]s once per config and
//! gives each route that references rules a [`RouteVault`]. On the request path,
//! [`detokenize`] (before the upstream request is sent: [`expr`] finds the expressions,
//! [`detokenize`](mod@detokenize) checks and splices) and [`tokenize`] (once the upstream's
//! headers are in: [`tokenize`](mod@tokenize) vaults the answer's fields) are the two calls the
//! proxy makes; both are no-ops on routes without rules. The tokenize endpoint
//! ([`endpoint::Endpoint`]) is served by [`crate::proxy::handle`] before route lookup.

pub mod detokenize;
pub mod endpoint;
pub mod expr;
pub mod inbound;
pub mod tokenize;
pub mod tokens;

use std::collections::HashMap;
use std::sync::Arc;

use keygate_crds::snapshot::Route;
use keygate_crds::{SecretSnapshot, Snapshot};

use crate::body::Body;
use crate::config::{ConfigError, LiveRoute};
use crate::error::ProxyError;
use crate::pipeline::Stage;
use crate::pipeline::limits::{is_compressed, is_json, media_type};
use crate::store::{StoreError, Stores};
pub(crate) use detokenize::{form_decode, form_encode};
use endpoint::Endpoint;
use tokens::VaultRule;

/// The vault rules one route references, in the order it lists them.
#[derive(Debug)]
pub struct RouteVault {
    rules: Vec<Arc<VaultRule>>,
    /// The strictest `maxTokensPerRequest` of the rules.
    max_tokens: usize,
}

impl RouteVault {
    fn tokenizes(&self) -> bool {
        self.rules.iter().any(|r| r.tokenize.is_some())
    }

    fn tokenizes_requests(&self) -> bool {
        self.rules.iter().any(|r| r.inbound.is_some())
    }
}

/// Every vault rule of one config generation, and the tokenize endpoints by full path.
#[derive(Default, Debug)]
pub struct Vaults {
    rules: HashMap<String, Arc<VaultRule>>,
    endpoints: HashMap<String, Arc<Endpoint>>,
}

impl Vaults {
    /// Builds every rule of the snapshot.
    pub fn build(snapshot: &Snapshot, secrets: &SecretSnapshot, stores: &Stores) -> Result<Vaults, ConfigError> {
        let mut vaults = Vaults::default();
        for (id, spec) in &snapshot.vault_rules {
            let bad = |message: String| ConfigError::Vault {
                rule: id.clone(),
                message,
            };
            let rule = Arc::new(VaultRule::build(id, spec, secrets, stores).map_err(bad)?);
            if let Some(ep) = &spec.tokenize_endpoint {
                let path = format!("{}/tokens", ep.path);
                let endpoint = Endpoint::build(rule.clone(), ep, secrets).map_err(bad)?;
                if vaults.endpoints.insert(path, Arc::new(endpoint)).is_some() {
                    return Err(bad(format!(
                        "tokenizeEndpoint.path {} is claimed by two rules",
                        ep.path
                    )));
                }
            }
            vaults.rules.insert(id.clone(), rule);
        }
        Ok(vaults)
    }

    /// The vault of `route`; `None` when it references no rule.
    pub fn for_route(&self, route: &Route) -> Result<Option<Arc<RouteVault>>, ConfigError> {
        if route.vault_rules.is_empty() {
            return Ok(None);
        }
        let rules = route
            .vault_rules
            .iter()
            .map(|id| {
                self.rules.get(id).cloned().ok_or_else(|| ConfigError::Route {
                    route: route.id.clone(),
                    field: "vaultRules".into(),
                    message: format!("TokenVaultRule {id} is not in the snapshot"),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let max_tokens = rules.iter().map(|r| r.max_tokens).min().unwrap_or(100);
        Ok(Some(Arc::new(RouteVault { rules, max_tokens })))
    }

    /// The tokenize endpoint at exactly `path`.
    pub fn endpoint(&self, path: &str) -> Option<&Arc<Endpoint>> {
        if self.endpoints.is_empty() {
            return None;
        }
        self.endpoints.get(path)
    }
}

/// Detokenizes a request on a route with vault rules (see [`detokenize`](mod@detokenize));
/// otherwise passes the body on untouched. `body` is already limited to the route's `bodyLimit`.
pub fn detokenize<'a>(route: &'a LiveRoute, parts: &'a mut http::request::Parts, body: Body) -> Stage<'a, Body> {
    match &route.vault {
        None => Stage::skip(body),
        Some(vault) => Stage::run(detokenize::request(vault, &route.inject, parts, body)),
    }
}

/// Vaults the request body fields named by the route's `tokenizeRequest` rules (see
/// [`inbound`]); otherwise passes the body on untouched. `body` is already limited to the
/// route's `bodyLimit`.
pub fn tokenize_request<'a>(route: &'a LiveRoute, parts: &'a mut http::request::Parts, body: Body) -> Stage<'a, Body> {
    match &route.vault {
        Some(vault) if vault.tokenizes_requests() => Stage::run(inbound::request(vault, parts, body)),
        _ => Stage::skip(body),
    }
}

/// Tokenizes the fields of a JSON answer on a route whose vault rules ask for it (see
/// [`tokenize`](mod@tokenize)); otherwise passes the body on untouched.
pub fn tokenize<'a>(route: &'a LiveRoute, parts: &'a mut http::response::Parts, body: Body) -> Stage<'a, Body> {
    match &route.vault {
        Some(vault) if vault.tokenizes() => Stage::run(tokenize::response(vault, parts, body)),
        _ => Stage::skip(body),
    }
}

/// Stores `data` as a new token of `classification`, living `ttl`, in `rule`'s store; its id.
/// Called only for rules that create tokens (`tokenizeResponse`, `tokenizeRequest`), which
/// compile only with a dynamic store.
async fn new_token(
    rule: &VaultRule,
    data: serde_json::Value,
    classification: &str,
    ttl: Option<std::time::Duration>,
) -> Result<String, ProxyError> {
    let token = tokens::Token {
        data,
        classification: classification.to_string(),
    };
    Ok(rule
        .create(&token, ttl)
        .await
        .map_err(|e| unavailable(rule, e))?
        .expect("a rule that creates tokens has a dynamic store"))
}

/// Replaces each non-null value of `doc` at `pointers` by the id of a [`new_token`] holding it;
/// whether any was.
async fn tokenize_fields(
    rule: &VaultRule,
    doc: &mut serde_json::Value,
    pointers: &[String],
    classification: &str,
    ttl: Option<std::time::Duration>,
) -> Result<bool, ProxyError> {
    let mut changed = false;
    for pointer in pointers {
        let Some(slot) = doc.pointer_mut(pointer).filter(|v| !v.is_null()) else {
            continue;
        };
        *slot = serde_json::Value::String(new_token(rule, slot.take(), classification, ttl).await?);
        changed = true;
    }
    Ok(changed)
}

/// Logs a store failure with the rule it hit (never a key or value) and answers 503.
fn unavailable(rule: &VaultRule, e: StoreError) -> ProxyError {
    tracing::warn!(rule = %rule.id, error = %e, "token store failed");
    ProxyError::VaultUnavailable
}
