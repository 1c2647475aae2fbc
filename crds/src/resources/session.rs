//! `SessionChainPolicy`: the hash chain that refuses copied and replayed requests.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::{SecretKeyRef, SecretRef, Status};
use super::vault::StoreKind;

/// A hash-chain session protocol: a session is created with an app's API key, and every later
/// request must carry the next link of the chain, checked atomically across replicas.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "keygate.dev",
    version = "v1alpha1",
    kind = "SessionChainPolicy",
    namespaced,
    cel,
    status = "Status",
    shortname = "kgchain",
    category = "keygate",
    doc = "A hash-chain session protocol that refuses copied and replayed requests.",
    printcolumn = r#"{"name":"Create","type":"string","jsonPath":".spec.createPath"}"#,
    printcolumn = r#"{"name":"Store","type":"string","jsonPath":".spec.store"}"#,
    printcolumn = r#"{"name":"TTL","type":"string","jsonPath":".spec.ttl"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.store != 'none'").message("store must be memory or redis"))]
#[x_kube(validation = Rule::new("self.store != 'redis' || has(self.redisUrl)").message("store: redis needs redisUrl"))]
#[x_kube(validation = Rule::new("self.proof != 'hmac' || has(self.chainKeySecretRef)").message("proof: hmac needs chainKeySecretRef, a Secret key holding at least 32 random bytes (e.g. `openssl rand -hex 32`)"))]
#[x_kube(validation = Rule::new("self.proof == 'hmac' || !has(self.chainKeySecretRef)").message("chainKeySecretRef is used only with proof: hmac; remove it or set proof: hmac"))]
pub struct SessionChainPolicySpec {
    /// Header names of the protocol.
    #[serde(default)]
    pub headers: ChainHeaders,
    /// Full path on the proxy that creates a session, e.g. `/session`.
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(validation = Rule::new("self.startsWith('/')").message("createPath must start with '/'"))]
    pub create_path: String,
    /// Secret whose keys are app names and whose values are that app's API keys, one per line
    /// (several for rotation). Keygate keeps only SHA-256 hashes.
    pub api_keys_secret_ref: SecretRef,
    /// How long a session lives without requests, e.g. `30m`. Default `30m`.
    #[serde(default = "default_ttl")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new(super::common::DURATION_RULE).message(super::common::DURATION_MESSAGE))]
    pub ttl: String,
    /// Where sessions live: `memory` (one replica) or `redis` (shared). Default `memory`.
    #[serde(default = "default_store")]
    pub store: StoreKind,
    /// Redis URL for `store: redis`, password included, in a Secret: `redis://` (`rediss://`
    /// for TLS) for one server, `redis+sentinel://host:26379,.../master` for a master found
    /// through Sentinel, `redis+cluster://host:6379,...` for Redis Cluster (see the README).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<SecretKeyRef>,
    /// Hash function of the chain. Only `sha256`.
    #[serde(default)]
    pub hash: ChainHash,
    /// What makes a link unforgeable: `hash` (anyone holding the session id can compute the
    /// next link), `hmac` (a chain key handed out once at creation) or `signature` (a
    /// non-extractable browser key signs every request). Default `hash`.
    #[serde(default)]
    pub proof: ChainProof,
    /// For `proof: hmac`: the Secret key whose value (at least 32 bytes) every chain key is
    /// derived from. Every replica derives the same keys, so nothing extra is stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_key_secret_ref: Option<SecretKeyRef>,
    /// Which namespaces' routes may reference this resource (as `namespace/name`). Default:
    /// only its own. The resource's Secrets stay in its own namespace whoever references it, so
    /// sharing never hands a Secret to another namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_namespaces: Option<super::common::AllowedNamespaces>,
}

fn default_ttl() -> String {
    "30m".into()
}
fn default_store() -> StoreKind {
    StoreKind::Memory
}

/// Header names of the session-chain protocol.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ChainHeaders {
    /// App API key header. Default `x-api-key`.
    #[serde(default = "default_api_key")]
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new(concat!("self.matches('", token_re!(), "')")).message("apiKey must be an HTTP header name"))]
    pub api_key: String,
    /// Session id header. Default `x-session-id`.
    #[serde(default = "default_session_id")]
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new(concat!("self.matches('", token_re!(), "')")).message("sessionId must be an HTTP header name"))]
    pub session_id: String,
    /// Next chain link header. Default `x-request-id`.
    #[serde(default = "default_request_id")]
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new(concat!("self.matches('", token_re!(), "')")).message("requestId must be an HTTP header name"))]
    pub request_id: String,
}

impl Default for ChainHeaders {
    fn default() -> Self {
        ChainHeaders {
            api_key: default_api_key(),
            session_id: default_session_id(),
            request_id: default_request_id(),
        }
    }
}

fn default_api_key() -> String {
    "x-api-key".into()
}
fn default_session_id() -> String {
    "x-session-id".into()
}
fn default_request_id() -> String {
    "x-request-id".into()
}

/// Hash function of the chain.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChainHash {
    /// SHA-256, hex encoded.
    #[default]
    Sha256,
}

/// Fewest bytes a `chainKeySecretRef` value may hold: HMAC-SHA256 keys shorter than its output
/// weaken it.
pub const MIN_CHAIN_KEY_SECRET_BYTES: usize = 32;

/// What proves a request is the session's next one.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChainProof {
    /// `x-request-id = SHA256_hex(last)`: stops copied requests, not a script that saw the id.
    #[default]
    Hash,
    /// `x-request-id = HMAC-SHA256_hex(chain_key, last)`, the chain key returned once at creation.
    Hmac,
    /// `SHA256_hex(last)` plus an ECDSA P-256 signature over the request by the key registered at
    /// creation.
    Signature,
}
