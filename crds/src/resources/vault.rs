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
    /// Redis URL (`redis://` or `rediss://`) for `store: redis`.
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
