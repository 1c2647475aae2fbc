//! `CookieTranslation`: the browser's HttpOnly cookie becomes the upstream's auth header.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{SecretKeyRef, Status};
use super::route::HttpMethod;
use super::vault::StoreKind;

/// Turns a token from a login answer into an HttpOnly cookie, and that cookie into the
/// upstream's auth header on every route that references this resource.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "keygate.dev",
    version = "v1alpha1",
    kind = "CookieTranslation",
    namespaced,
    cel,
    status = "Status",
    shortname = "kgcookie",
    category = "keygate",
    doc = "Turns a login answer's token into an HttpOnly cookie, and that cookie into the upstream's auth header.",
    printcolumn = r#"{"name":"Cookie","type":"string","jsonPath":".spec.cookie.name"}"#,
    printcolumn = r#"{"name":"Header","type":"string","jsonPath":".spec.header.name"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.store != 'none'").message("store must be memory or redis"))]
#[x_kube(validation = Rule::new("self.store != 'redis' || has(self.redisUrl)").message("store: redis needs redisUrl"))]
pub struct CookieTranslationSpec {
    /// The cookie Keygate sets in the browser.
    #[serde(default)]
    pub cookie: CookieSettings,
    /// The header the upstream receives.
    pub header: HeaderTemplate,
    /// The login call whose answer carries the token.
    pub session_start: SessionStart,
    /// A path under which Keygate clears the cookie (and any server-side entry) itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logout: Option<Logout>,
    /// Where the token lives: `cookie` (in the cookie value), `server` (the cookie holds a random
    /// handle; the token stays in Keygate's store), or `auto` (server when the token would make
    /// the cookie larger than browsers accept). Default `auto`.
    #[serde(default)]
    pub storage: TokenStorage,
    /// Encrypt the cookie value with AES-256-GCM. Keys are 32 bytes, base64 in the Secret; the
    /// first key encrypts, all decrypt (rotation: prepend a new key).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub encryption_keys: Vec<SecretKeyRef>,
    /// Where server-side tokens live: `memory` (one proxy replica) or `redis` (shared by every
    /// replica, so a handle set by one is honoured by all). Default `memory`.
    #[serde(default = "default_store")]
    pub store: StoreKind,
    /// Redis URL for `store: redis`, password included, in a Secret: `redis://` (`rediss://`
    /// for TLS) for one server, `redis+sentinel://host:26379,.../master` for a master found
    /// through Sentinel, `redis+cluster://host:6379,...` for Redis Cluster (see the README).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<SecretKeyRef>,
    /// Which namespaces' routes may reference this resource (as `namespace/name`). Default:
    /// only its own. The resource's Secrets stay in its own namespace whoever references it, so
    /// sharing never hands a Secret to another namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_namespaces: Option<super::common::AllowedNamespaces>,
}

fn default_store() -> StoreKind {
    StoreKind::Memory
}

/// Cookie attributes. HttpOnly is always set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.sameSite != 'None' || self.secure").message("sameSite: None requires secure: true (browsers reject it otherwise)"))]
#[x_kube(validation = Rule::new("!self.hostPrefix || (self.secure && self.path == '/' && !has(self.domain))").message("hostPrefix (__Host-) requires secure: true, path: / and no domain"))]
pub struct CookieSettings {
    /// Cookie name. Default `keygate_session`.
    #[serde(default = "default_cookie_name")]
    #[schemars(length(min = 1, max = 128))]
    #[x_kube(validation = Rule::new(concat!("self.matches('", token_re!(), "')")).message("cookie name must be a token: letters, digits and !#$%&*+.^_`|~-"))]
    pub name: String,
    /// Prefix the name with `__Host-` so the browser binds the cookie to this exact host.
    #[serde(default)]
    pub host_prefix: bool,
    /// Send the cookie over HTTPS only. Default true.
    #[serde(default = "default_true")]
    pub secure: bool,
    /// `Strict`, `Lax` or `None`. Default `Lax`.
    #[serde(default)]
    pub same_site: SameSite,
    /// Cookie lifetime in seconds; unset makes a browser-session cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0").message("maxAgeSeconds must be greater than 0"))]
    pub max_age_seconds: Option<i64>,
    /// Cookie path. Default `/`.
    #[serde(default = "default_path")]
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(validation = Rule::new("self.startsWith('/')").message("path must start with '/'"))]
    pub path: String,
    /// Cookie domain; unset binds the cookie to the proxy's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub domain: Option<String>,
}

impl Default for CookieSettings {
    fn default() -> Self {
        CookieSettings {
            name: default_cookie_name(),
            host_prefix: false,
            secure: true,
            same_site: SameSite::Lax,
            max_age_seconds: None,
            path: default_path(),
            domain: None,
        }
    }
}

fn default_cookie_name() -> String {
    "keygate_session".into()
}
fn default_path() -> String {
    "/".into()
}
fn default_true() -> bool {
    true
}

/// The cookie's SameSite attribute.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum SameSite {
    /// Only same-site requests carry the cookie.
    Strict,
    /// Same-site requests and top-level navigations carry the cookie.
    #[default]
    Lax,
    /// Every request carries the cookie (needs `secure`).
    None,
}

/// The header built from the cookie.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HeaderTemplate {
    /// Header name, e.g. `Authorization` or `x-auth-token`.
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new(concat!("self.matches('", token_re!(), "')")).message("name must be an HTTP header name"))]
    pub name: String,
    /// Value template; `{token}` is replaced by the token, e.g. `Bearer {token}`. Default `{token}`.
    #[serde(default = "default_template")]
    #[schemars(length(min = 7, max = 1024))]
    #[x_kube(validation = Rule::new("self.contains('{token}')").message("template must contain {token}, e.g. 'Bearer {token}'"))]
    pub template: String,
}

fn default_template() -> String {
    "{token}".into()
}

/// The login call.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SessionStart {
    /// Full request path of the login call on the proxy, e.g. `/api/session/start`.
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(validation = Rule::new("self.startsWith('/')").message("path must start with '/'"))]
    pub path: String,
    /// Method of the login call. Default `POST`.
    #[serde(default = "default_post")]
    pub method: HttpMethod,
    /// JSON pointer to the token in the upstream's answer, e.g. `/result/session/token`.
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(validation = Rule::new("self.startsWith('/')").message("tokenPointer must be a JSON pointer starting with '/', e.g. /result/session/token"))]
    pub token_pointer: String,
    /// JSON pointer of the part of the answer the browser gets, token removed, e.g. `/result`.
    /// Default: the whole answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    #[x_kube(validation = Rule::new("self == '' || self.startsWith('/')").message("responsePointer must be empty or a JSON pointer starting with '/'"))]
    pub response_pointer: Option<String>,
}

fn default_post() -> HttpMethod {
    HttpMethod::Post
}

/// The logout call.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Logout {
    /// Full request path on the proxy, e.g. `/api/session/logout`.
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(validation = Rule::new("self.startsWith('/')").message("path must start with '/'"))]
    pub path: String,
}

/// Where a translated token is kept.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum TokenStorage {
    /// Server-side when the cookie would be too large for browsers, else in the cookie.
    #[default]
    Auto,
    /// In the cookie value.
    Cookie,
    /// In Keygate's store; the cookie holds a random handle.
    Server,
}
