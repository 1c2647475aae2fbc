//! `TokenVaultRule`: which vaulted tokens may be swapped into requests, and which answer fields
//! are vaulted on their way back.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{SecretKeyRef, SecretRef, Status};

/// Where `{{token}}` expressions come from, which classifications a route may detokenize and
/// where in the request, and which upstream answer fields are tokenized before the browser sees them.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "keygate.dev",
    version = "v1alpha1",
    kind = "TokenVaultRule",
    namespaced,
    cel,
    status = "Status",
    shortname = "kgvault",
    category = "keygate",
    doc = "Vaulted tokens a route may swap into requests, and answer fields vaulted on their way back.",
    printcolumn = r#"{"name":"Store","type":"string","jsonPath":".spec.source.store"}"#,
    printcolumn = r#"{"name":"Max","type":"integer","jsonPath":".spec.maxTokensPerRequest"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.tokenizeResponse) || self.source.store != 'none'").message("tokenizeResponse needs a dynamic store for the new tokens: set source.store to memory or redis"))]
#[x_kube(validation = Rule::new("!has(self.tokenizeRequest) || self.source.store != 'none'").message("tokenizeRequest needs a dynamic store for the new tokens: set source.store to memory or redis"))]
#[x_kube(validation = Rule::new("!has(self.tokenizeEndpoint) || self.source.store != 'none'").message("tokenizeEndpoint needs a dynamic store for the new tokens: set source.store to memory or redis"))]
pub struct TokenVaultRuleSpec {
    /// Where token values are read from.
    pub source: TokenSource,
    /// Classifications that may be detokenized, and where in the request.
    #[schemars(length(min = 1, max = 32))]
    pub permissions: Vec<VaultPermission>,
    /// Most `{{...}}` expressions one request may carry, 1 to 100. Default 100.
    #[serde(default = "default_max_tokens")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 100").message("maxTokensPerRequest must be between 1 and 100"))]
    pub max_tokens_per_request: i64,
    /// Upstream answer fields to vault before the answer reaches the browser.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenize_response: Option<TokenizeResponse>,
    /// Request body fields to vault before the request goes upstream (inbound tokenization):
    /// the upstream, the logs and every later stage see only the new tokens' ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenize_request: Option<TokenizeRequest>,
    /// An endpoint Keygate serves itself, `POST <path>/tokens`, where an app's backend stores
    /// data as new tokens of this rule without the data passing through the browser.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenize_endpoint: Option<TokenizeEndpoint>,
    /// Which namespaces' routes may reference this resource (as `namespace/name`). Default:
    /// only its own. The resource's Secrets stay in its own namespace whoever references it, so
    /// sharing never hands a Secret to another namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_namespaces: Option<super::common::AllowedNamespaces>,
}

fn default_max_tokens() -> i64 {
    100
}

/// Where token values are read from.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
// `has()` first: an omitted list has no schema default, and `size()` of a missing field is an
// evaluation error on the API server, not this message.
#[x_kube(validation = Rule::new("self.store == 'none' || (has(self.encryptionKeys) && size(self.encryptionKeys) > 0)").message("a dynamic store (memory or redis) needs encryptionKeys: values are stored encrypted"))]
#[x_kube(validation = Rule::new("self.store != 'redis' || has(self.redisUrl)").message("store: redis needs redisUrl"))]
pub struct TokenSource {
    /// Static tokens: a Secret whose keys are token ids and whose values are JSON objects
    /// `{"data": ..., "classification": "pci"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
    /// Dynamic store for tokens created at run time: `none`, `memory` or `redis`. Default `none`.
    #[serde(default)]
    pub store: StoreKind,
    /// Redis URL for `store: redis`, password included, in a Secret: `redis://` (`rediss://`
    /// for TLS) for one server, `redis+sentinel://host:26379,.../master` for a master found
    /// through Sentinel, `redis+cluster://host:6379,...` for Redis Cluster (see the README).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<SecretKeyRef>,
    /// AES-256-GCM keys (32 bytes, base64) for stored values; the first encrypts, all decrypt.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub encryption_keys: Vec<SecretKeyRef>,
}

/// A state store.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum StoreKind {
    /// No dynamic store.
    #[default]
    None,
    /// In the proxy's memory: one replica only.
    Memory,
    /// Redis, shared by every replica.
    Redis,
}

/// Where in a request a classification may be detokenized.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VaultPermission {
    /// Token classification, e.g. `general`, `pci`, `bank`.
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([a-z0-9-]*[a-z0-9])?$')").message("classification must be lower-case letters, digits and '-'"))]
    pub classification: String,
    /// Parts of the request: `body`, `headers`, `query`. Default all three.
    #[serde(default = "all_locations")]
    #[schemars(length(min = 1, max = 3))]
    pub locations: Vec<TokenLocation>,
}

fn all_locations() -> Vec<TokenLocation> {
    vec![TokenLocation::Body, TokenLocation::Headers, TokenLocation::Query]
}

/// A part of a request.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum TokenLocation {
    /// The request body.
    Body,
    /// Request header values.
    Headers,
    /// The query string.
    Query,
}

/// Answer fields to vault.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TokenizeResponse {
    /// JSON pointers of the fields, e.g. `/card/number`.
    #[schemars(length(min = 1, max = 64), inner(length(min = 1, max = 1024)))]
    #[x_kube(validation = Rule::new("self.all(p, p.startsWith('/'))").message("pointers must be JSON pointers starting with '/'"))]
    pub pointers: Vec<String>,
    /// Classification of the new tokens.
    #[schemars(length(min = 1, max = 63))]
    pub classification: String,
    /// Lifetime of the new tokens, e.g. `24h`. Default: no expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new(super::common::DURATION_RULE).message(super::common::DURATION_MESSAGE))]
    pub ttl: Option<String>,
}

/// Request body fields to vault on the way in. A JSON body's fields are named by JSON pointer,
/// a form body's (`application/x-www-form-urlencoded`) by field name; a body that does not parse
/// as its content type says is refused (`400`), never forwarded as it came.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.pointers) && size(self.pointers) > 0) || (has(self.formFields) && size(self.formFields) > 0)").message("tokenizeRequest needs pointers (JSON bodies) or formFields (form bodies), or both"))]
pub struct TokenizeRequest {
    /// JSON pointers of the fields, e.g. `/sensitive_value` or `/card/number`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 1024)))]
    #[x_kube(validation = Rule::new("self.all(p, p.startsWith('/'))").message("pointers must be JSON pointers starting with '/'"))]
    pub pointers: Vec<String>,
    /// Names of form fields, e.g. `card_number`; every field of that name is vaulted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 256)))]
    pub form_fields: Vec<String>,
    /// Classification of the new tokens; it decides where they may be detokenized.
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([a-z0-9-]*[a-z0-9])?$')").message("classification must be lower-case letters, digits and '-'"))]
    pub classification: String,
    /// Lifetime of the new tokens, e.g. `1h`. Default: no expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new(super::common::DURATION_RULE).message(super::common::DURATION_MESSAGE))]
    pub ttl: Option<String>,
}

/// `POST <path>/tokens`, served by Keygate before any route: `{"data": ..., "classification":
/// "pci", "ttl": "1h"}` (or a list of them) in, `{"id": "..."}` (or a list) out.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TokenizeEndpoint {
    /// Base path, e.g. `/vault/acme`; the endpoint is `<path>/tokens`. Unique across rules.
    #[schemars(length(min = 2, max = 1024))]
    #[x_kube(validation = Rule::new("self.matches('^(/[A-Za-z0-9_~-][A-Za-z0-9._~-]*)+$')").message("path must be a plain path like /vault/acme: segments of letters, digits, '.', '_', '~' and '-', no trailing '/'"))]
    pub path: String,
    /// Request header carrying the app's key. Default `x-api-key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new(concat!("self.matches('", token_re!(), "')")).message("header must be an HTTP header name"))]
    pub header: Option<String>,
    /// Secret whose keys are app names and whose values are that app's keys (one per line for
    /// rotation). Keygate keeps only their SHA-256 hashes.
    pub keys_secret_ref: SecretRef,
}

/// One static token: the value of a key of `source.secretRef`, whose key is the token id.
#[derive(Serialize, Deserialize, Clone, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StaticToken {
    /// The token's data: a string or any JSON value.
    pub data: serde_json::Value,
    /// Its classification, e.g. `pci`.
    pub classification: String,
    /// When it stops being valid, RFC 3339 (e.g. `2027-01-01T00:00:00Z`). Default: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<jiff::Timestamp>,
}

/// Never prints the data.
impl std::fmt::Debug for StaticToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticToken")
            .field("classification", &self.classification)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl StaticToken {
    /// Parses a Secret value. The error names what is wrong, never the value.
    pub fn parse(value: &str) -> Result<StaticToken, String> {
        let token: StaticToken = serde_json::from_str(value).map_err(|e| {
            // serde_json's messages quote offending values only for unknown fields and enum
            // variants; line and column are all a person needs to find the mistake.
            format!(
                "the value is not a JSON object {{\"data\": ..., \"classification\": \"pci\", \"expiresAt\"?: \"RFC 3339\"}} (line {}, column {})",
                e.line(),
                e.column()
            )
        })?;
        if !is_classification(&token.classification) {
            return Err("the classification must be lower-case letters, digits and '-', e.g. pci".into());
        }
        Ok(token)
    }

    /// Seconds since the Unix epoch at which the token expires.
    pub fn expires_at_unix(&self) -> Option<i64> {
        self.expires_at.map(|t| t.as_second())
    }
}

/// Whether `s` is a classification name: what the `classification` CEL rule accepts.
pub fn is_classification(s: &str) -> bool {
    let b = s.as_bytes();
    let ok = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    (1..=63).contains(&b.len()) && ok(&b[0]) && ok(&b[b.len() - 1]) && b.iter().all(|c| ok(c) || *c == b'-')
}

/// Whether `s` can be a token id inside a `{{ ... }}` expression: 1 to 128 letters, digits,
/// `.`, `_` and `-` — every Kubernetes Secret key, UUIDs, and the ids Keygate generates.
pub fn is_token_id(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}
