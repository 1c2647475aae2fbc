//! What `compile()` produces and the proxy serves: plain data, no Kubernetes types, no secret
//! values in [`Snapshot`] (those live in [`SecretSnapshot`] and are referenced by [`SecretId`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::resources::{
    allowlist::ExternalAllowlistSpec,
    cookie::CookieTranslationSpec,
    route::{ApiKeyAuth, AuthMode, CsrfMode, RateLimit, Transform, UpstreamProtocol},
    session::SessionChainPolicySpec,
    vault::TokenVaultRuleSpec,
};

/// Version of the snapshot format; a proxy refuses snapshots of a format it does not know.
pub const SNAPSHOT_FORMAT: u32 = 1;

/// File (ConfigMap key) holding the snapshot JSON.
pub const SNAPSHOT_FILE: &str = "snapshot.json";
/// File (Secret key) holding the secret snapshot JSON.
pub const SECRETS_FILE: &str = "secrets.json";

/// `namespace/name/key` of a Secret value; the only way a snapshot refers to a secret.
pub type SecretId = String;

/// Builds the [`SecretId`] of a Secret key.
pub fn secret_id(namespace: &str, name: &str, key: &str) -> SecretId {
    format!("{namespace}/{name}/{key}")
}

/// Everything the proxy serves, except secret values. Serializes deterministically.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// [`SNAPSHOT_FORMAT`] of the producer.
    pub format: u32,
    /// Routes, sorted by path prefix, then id.
    pub routes: Vec<Route>,
    /// Cookie translations by `namespace/name`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cookie_translations: BTreeMap<String, CookieTranslationSpec>,
    /// Allowlists by `namespace/name`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub allowlists: BTreeMap<String, ExternalAllowlistSpec>,
    /// Vault rules by `namespace/name`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vault_rules: BTreeMap<String, TokenVaultRuleSpec>,
    /// Session-chain policies by `namespace/name`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub session_policies: BTreeMap<String, SessionChainPolicySpec>,
}

impl Snapshot {
    /// Canonical JSON bytes: struct fields in declaration order, maps sorted, so equal
    /// snapshots give equal bytes.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("snapshot types always serialize")
    }

    /// SHA-256 of [`Snapshot::to_json`], hex.
    pub fn hash(&self) -> String {
        hex::encode(Sha256::digest(self.to_json()))
    }

    /// Every [`SecretId`] the snapshot refers to.
    pub fn secret_ids(&self) -> impl Iterator<Item = &SecretId> {
        self.routes.iter().flat_map(Route::secret_ids)
    }
}

/// One compiled `ProxyRoute`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// `namespace/name` of the `ProxyRoute`; the `route` label in metrics and errors.
    pub id: String,
    /// Lower-case host names (`api.example.com`) and wildcards (`*.example.com`), without
    /// trailing dots, sorted; empty serves any host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Normalized prefix: starts with `/`, no trailing `/` except for the root.
    pub path_prefix: String,
    /// Upper-case methods; empty allows all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Where requests go.
    pub destination: Destination,
    /// Remove the prefix before appending the path to the destination.
    pub strip_prefix: bool,
    /// Connect limit in milliseconds.
    pub connect_timeout_ms: u64,
    /// Limit to response headers in milliseconds.
    pub request_timeout_ms: u64,
    /// Largest request body in bytes.
    pub body_limit: u64,
    /// Lower-case media types accepted; empty accepts any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content_types: Vec<String>,
    /// Headers set on upstream requests.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forward_headers: Vec<InjectedHeader>,
    /// Upstream response headers renamed for the browser.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<RenamedHeader>,
    /// Let `Cookie` and `Set-Cookie` through.
    #[serde(default)]
    pub cookie_passthrough: bool,
    /// Serve paths with encoded slashes and backslashes, forwarding them still encoded.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_encoded_slashes: bool,
    /// Tunnel WebSocket upgrades after the handshake passed the pipeline.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub websocket: bool,
    /// Extra CA bundle (PEM) trusted for this upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<SecretId>,
    /// Protocol to the upstream.
    pub upstream_protocol: UpstreamProtocol,
    /// CORS settings, with the headers Keygate itself needs already added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<CorsPolicy>,
    /// CSRF settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csrf: Option<CsrfPolicy>,
    /// Authentication mode.
    pub auth: AuthMode,
    /// API-key settings for `auth: apiKey`; keys are secret values under `api_key_secrets`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<ApiKeyAuth>,
    /// `namespace/name` of the cookie translation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie_translation: Option<String>,
    /// `namespace/name` of the session-chain policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_chain: Option<String>,
    /// `namespace/name` of each vault rule.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vault_rules: Vec<String>,
    /// Rate limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Request and answer rewrites, as written (the proxy compiles the expressions once per
    /// config); `None` when both lists are empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transform: Option<Transform>,
}

impl Route {
    /// Every [`SecretId`] this route refers to.
    pub fn secret_ids(&self) -> impl Iterator<Item = &SecretId> {
        self.forward_headers
            .iter()
            .filter_map(|h| match &h.value {
                HeaderValue::Secret { secret } => Some(secret),
                HeaderValue::Literal { .. } => None,
            })
            .chain(self.ca_bundle.iter())
    }
}

/// A route's CORS rules as the proxy applies them: names lower-case, sorted, without duplicates.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CorsPolicy {
    /// Exact origins, `scheme://*.domain` suffix patterns, or `*`; lower-case.
    pub allow_origins: Vec<String>,
    /// Methods a preflight may ask for.
    pub allow_methods: Vec<String>,
    /// Request headers a preflight may ask for: the configured ones, `content-type`, and every
    /// header Keygate reads on this route (API key, session chain, CSRF, target URL).
    pub allow_headers: Vec<String>,
    /// Response headers the browser may read: the configured ones, renamed `exposeHeaders`, and
    /// the headers Keygate adds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,
    /// Whether cross-origin requests may carry cookies.
    pub allow_credentials: bool,
    /// Preflight cache lifetime in seconds.
    pub max_age_seconds: u32,
}

/// A route's CSRF rules.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CsrfPolicy {
    /// Double-submit cookie or fixed header.
    pub mode: CsrfMode,
    /// Lower-case header the request must carry: `x-csrf-token` for double submit.
    pub header: String,
    /// Required header value in `header` mode; any non-empty value when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Also require `Origin` (or `Referer`) to be a CORS origin or the proxy's own.
    pub check_origin: bool,
}

/// Header a double-submit request echoes the CSRF cookie in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Response header naming the code of every error Keygate answers itself, so a client reads the
/// code without parsing the body.
pub const ERROR_HEADER: &str = "x-keygate-error";
/// Response header that tells a session-chain client its chain advanced.
pub const CHAIN_HEADER: &str = "x-keygate-chain";
/// Response header carrying the double-submit CSRF token at session start, for pages on another
/// host, which cannot read the proxy's cookie.
pub const CSRF_TOKEN_HEADER: &str = "x-keygate-csrf";
/// Request header carrying the request's signature on `proof: signature` chains.
pub const SIGNATURE_HEADER: &str = "x-keygate-signature";

/// Where a route's requests go.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", tag = "type")]
pub enum Destination {
    /// A fixed base URL.
    Upstream {
        /// Absolute http(s) base URL, no trailing `/` unless it is the whole path.
        url: String,
    },
    /// Chosen by the client, checked against an allowlist.
    Allowlist {
        /// `namespace/name` of the allowlist.
        allowlist: String,
    },
}

/// A header set on upstream requests.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct InjectedHeader {
    /// Lower-case header name.
    pub name: String,
    /// Where its value comes from.
    pub value: HeaderValue,
}

/// A header value: plain text in the snapshot, or a reference into the secret snapshot.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", untagged)]
pub enum HeaderValue {
    /// Written in the resource.
    Literal {
        /// The value.
        literal: String,
    },
    /// From a Secret.
    Secret {
        /// The Secret key holding it.
        secret: SecretId,
    },
}

/// An upstream response header passed on under another name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RenamedHeader {
    /// Lower-case upstream name.
    pub from: String,
    /// Lower-case name the browser sees.
    pub to: String,
}

/// Secret values a snapshot refers to, keyed by [`SecretId`]; shipped as a Kubernetes Secret.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SecretSnapshot {
    /// [`SNAPSHOT_FORMAT`] of the producer.
    pub format: u32,
    /// [`Snapshot::hash`] of the snapshot these values belong to: a proxy never pairs a
    /// snapshot with the secrets of another.
    pub snapshot_hash: String,
    /// Values by id.
    pub values: BTreeMap<SecretId, String>,
}

impl SecretSnapshot {
    /// Canonical JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("secret snapshot types always serialize")
    }
}

/// Never prints values: a secret snapshot in a log line shows only which ids it holds.
impl std::fmt::Debug for SecretSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretSnapshot")
            .field("format", &self.format)
            .field("snapshot_hash", &self.snapshot_hash)
            .field("ids", &self.values.keys().collect::<Vec<_>>())
            .finish()
    }
}
