//! Tokens and where they live. A [`VaultRule`] is one `TokenVaultRule` made ready: its static
//! tokens (parsed once from the rule's Secret when the config is built), its dynamic store (memory
//! or Redis) with the AES-256-GCM [`Sealer`] that encrypts every value before it is stored, and
//! the permissions that say which classifications may be swapped in where.
//!
//! A token belongs to the rule that holds it: static tokens to the rule naming the Secret,
//! dynamic ones to the rule whose store created them (response tokenization or the tokenize
//! endpoint). A route detokenizes the tokens of the rules it references, under those rules'
//! permissions.
//!
//! In the store, the key is `keygate:vault:<rule>:<sha256(id)>` and the value is
//! `seal({"data", "classification"})` bound to the rule and the id, so the store holds neither
//! ids nor plaintext, and a value cannot be moved to another id or rule. Generated ids are
//! random UUIDs (version 4, 122 random bits): the shape detokenizing proxies use, so clients
//! built for them keep working.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keygate_crds::SecretSnapshot;
use keygate_crds::resources::common::parse_duration_ms;
use keygate_crds::resources::vault::{StaticToken, StoreKind, TokenLocation, TokenVaultRuleSpec};
use keygate_crds::snapshot::secret_id;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::seal::Sealer;
use crate::store::{self, Store, StoreError, Stores};

/// A token's content.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Token {
    /// A string or any JSON value.
    pub data: serde_json::Value,
    /// `general`, `pci`, `bank`, or any name.
    pub classification: String,
}

/// Never prints the data.
impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("classification", &self.classification)
            .finish_non_exhaustive()
    }
}

struct StaticEntry {
    token: Token,
    /// Unix seconds.
    expires_at: Option<i64>,
}

struct Dynamic {
    store: Arc<dyn Store>,
    sealer: Sealer,
}

/// What `tokenizeResponse` asks for.
pub struct TokenizeSpec {
    /// JSON pointers of the answer fields.
    pub pointers: Vec<String>,
    /// Classification of the new tokens.
    pub classification: String,
    /// Lifetime of the new tokens.
    pub ttl: Option<Duration>,
}

/// What `tokenizeRequest` asks for.
pub struct InboundSpec {
    /// JSON pointers of the fields of JSON bodies.
    pub pointers: Vec<String>,
    /// Names of the fields of form bodies.
    pub form_fields: Vec<String>,
    /// Classification of the new tokens.
    pub classification: String,
    /// Lifetime of the new tokens.
    pub ttl: Option<Duration>,
}

/// One `TokenVaultRule`, ready to serve.
pub struct VaultRule {
    /// `namespace/name`.
    pub id: Arc<str>,
    permissions: Vec<(String, Vec<TokenLocation>)>,
    /// `maxTokensPerRequest`.
    pub max_tokens: usize,
    statics: HashMap<String, StaticEntry>,
    dynamic: Option<Dynamic>,
    /// `tokenizeResponse`.
    pub tokenize: Option<TokenizeSpec>,
    /// `tokenizeRequest`.
    pub inbound: Option<InboundSpec>,
}

impl std::fmt::Debug for VaultRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultRule")
            .field("id", &self.id)
            .field("static_tokens", &self.statics.len())
            .field("dynamic", &self.dynamic.is_some())
            .finish_non_exhaustive()
    }
}

impl VaultRule {
    /// Builds rule `id` from its spec and the secret snapshot. The error says what to fix and
    /// never carries a secret value.
    pub fn build(
        id: &str,
        spec: &TokenVaultRuleSpec,
        secrets: &SecretSnapshot,
        stores: &Stores,
    ) -> Result<VaultRule, String> {
        let (ns, _) = id.split_once('/').ok_or("the rule id is not namespace/name")?;
        let secret = |field: &str, sid: String| {
            secrets
                .values
                .get(&sid)
                .ok_or_else(|| format!("{field}: secret {sid} is missing from the secret snapshot"))
        };
        let mut statics = HashMap::new();
        if let Some(r) = &spec.source.secret_ref {
            let prefix = secret_id(ns, &r.name, "");
            for (sid, value) in secrets.values.range(prefix.clone()..) {
                let Some(token_id) = sid.strip_prefix(&prefix) else {
                    break;
                };
                let t =
                    StaticToken::parse(value).map_err(|e| format!("spec.source.secretRef key {token_id:?}: {e}"))?;
                let entry = StaticEntry {
                    expires_at: t.expires_at_unix(),
                    token: Token {
                        data: t.data,
                        classification: t.classification,
                    },
                };
                statics.insert(token_id.to_string(), entry);
            }
        }
        let dynamic = match spec.source.store {
            StoreKind::None => None,
            kind => {
                let keys = spec
                    .source
                    .encryption_keys
                    .iter()
                    .enumerate()
                    .map(|(i, k)| {
                        secret(
                            &format!("spec.source.encryptionKeys[{i}]"),
                            secret_id(ns, &k.name, &k.key),
                        )
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let sealer = Sealer::new(&keys).map_err(|e| format!("spec.source.encryptionKeys: {e}"))?;
                let store = if kind == StoreKind::Redis {
                    let r = spec
                        .source
                        .redis_url
                        .as_ref()
                        .ok_or("spec.source: store: redis needs redisUrl")?;
                    let url = secret("spec.source.redisUrl", secret_id(ns, &r.name, &r.key))?;
                    stores
                        .redis(url.trim())
                        .map_err(|e| format!("spec.source.redisUrl: {e}"))?
                } else {
                    stores.memory()
                };
                Some(Dynamic { store, sealer })
            }
        };
        let tokenize = match &spec.tokenize_response {
            None => None,
            Some(t) => Some(TokenizeSpec {
                pointers: t.pointers.clone(),
                classification: t.classification.clone(),
                ttl: parse_ttl(t.ttl.as_deref()).map_err(|e| format!("spec.tokenizeResponse.ttl: {e}"))?,
            }),
        };
        if tokenize.is_some() && dynamic.is_none() {
            return Err("spec.tokenizeResponse needs a dynamic store: set source.store to memory or redis".into());
        }
        let inbound = match &spec.tokenize_request {
            None => None,
            Some(t) => Some(InboundSpec {
                pointers: t.pointers.clone(),
                form_fields: t.form_fields.clone(),
                classification: t.classification.clone(),
                ttl: parse_ttl(t.ttl.as_deref()).map_err(|e| format!("spec.tokenizeRequest.ttl: {e}"))?,
            }),
        };
        if inbound.is_some() && dynamic.is_none() {
            return Err("spec.tokenizeRequest needs a dynamic store: set source.store to memory or redis".into());
        }
        Ok(VaultRule {
            id: Arc::from(id),
            permissions: spec
                .permissions
                .iter()
                .map(|p| (p.classification.clone(), p.locations.clone()))
                .collect(),
            max_tokens: usize::try_from(spec.max_tokens_per_request.clamp(1, 100)).unwrap_or(100),
            statics,
            dynamic,
            tokenize,
            inbound,
        })
    }

    /// Whether this rule lets a `classification` token be swapped into `location`.
    pub fn permits(&self, classification: &str, location: TokenLocation) -> bool {
        self.permissions
            .iter()
            .any(|(c, locations)| c == classification && locations.contains(&location))
    }

    /// Whether new tokens of `classification` may be created here: one the rule permits
    /// somewhere, or its `tokenizeResponse` classification.
    pub fn may_create(&self, classification: &str) -> bool {
        self.dynamic.is_some()
            && (self.permissions.iter().any(|(c, _)| c == classification)
                || self
                    .tokenize
                    .as_ref()
                    .is_some_and(|t| t.classification == classification)
                || self
                    .inbound
                    .as_ref()
                    .is_some_and(|t| t.classification == classification))
    }

    /// The token `id`, if this rule holds it and it has not expired.
    pub async fn lookup(&self, id: &str) -> Result<Option<Token>, StoreError> {
        if let Some(entry) = self.statics.get(id) {
            return Ok(entry
                .expires_at
                .is_none_or(|t| now_unix() < t)
                .then(|| entry.token.clone()));
        }
        let Some(d) = &self.dynamic else { return Ok(None) };
        let Some(sealed) = d.store.get(&self.store_key(id)).await? else {
            return Ok(None);
        };
        // A value that does not open (keys rotated away, or tampered with) is as good as gone.
        let opened = std::str::from_utf8(&sealed)
            .ok()
            .and_then(|s| d.sealer.open(s, self.context(id).as_bytes()).ok())
            .and_then(|plain| serde_json::from_slice(&plain).ok());
        if opened.is_none() {
            tracing::warn!(rule = %self.id, "a stored token cannot be decrypted; treating it as missing");
        }
        Ok(opened)
    }

    /// Stores `token` under a new id and returns the id. `None` if the rule has no dynamic store.
    pub async fn create(&self, token: &Token, ttl: Option<Duration>) -> Result<Option<String>, StoreError> {
        let Some(d) = &self.dynamic else { return Ok(None) };
        let id = new_id();
        let plain = serde_json::to_vec(token).expect("a JSON value always serializes");
        let sealed = d.sealer.seal(&plain, self.context(&id).as_bytes());
        d.store.set(&self.store_key(&id), sealed.as_bytes(), ttl).await?;
        Ok(Some(id))
    }

    fn store_key(&self, id: &str) -> String {
        store::key("vault", &self.id, id.as_bytes())
    }

    fn context(&self, id: &str) -> String {
        format!("keygate:vault:{}:{id}", self.id)
    }
}

/// A TTL as resources write it (`30s`, `24h`); `None` means no expiry.
pub fn parse_ttl(ttl: Option<&str>) -> Result<Option<Duration>, &'static str> {
    match ttl.map(parse_duration_ms) {
        None => Ok(None),
        Some(Some(ms)) if ms > 0 => Ok(Some(Duration::from_millis(ms))),
        Some(_) => Err("must be a positive duration such as 30s, 15m or 24h"),
    }
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A random version-4 UUID, lower-case hex.
pub fn new_id() -> String {
    let mut b = [0u8; 16];
    SystemRandom::new()
        .fill(&mut b)
        .expect("the operating system's random source failed");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

    fn rule(spec: serde_json::Value, values: &[(&str, &str)], stores: &Stores) -> Result<VaultRule, String> {
        let spec: TokenVaultRuleSpec = serde_json::from_value(spec).unwrap();
        let mut secrets = SecretSnapshot::default();
        for (k, v) in values {
            secrets.values.insert(k.to_string(), v.to_string());
        }
        VaultRule::build("ns/cards", &spec, &secrets, stores)
    }

    #[test]
    fn ids_are_uuid_v4() {
        let id = new_id();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"));
        assert!(keygate_crds::resources::vault::is_token_id(&id));
        assert_ne!(new_id(), id);
    }

    #[tokio::test]
    async fn static_tokens_permissions_and_expiry() {
        let r = rule(
            serde_json::json!({"source": {"secretRef": {"name": "t"}},
                "permissions": [{"classification": "pci", "locations": ["body"]}, {"classification": "general"}]}),
            &[
                ("ns/t/card", r#"{"data": {"number": "4111"}, "classification": "pci"}"#),
                (
                    "ns/t/old",
                    r#"{"data": "x", "classification": "general", "expiresAt": "2001-01-01T00:00:00Z"}"#,
                ),
                ("ns/tx/other", r#"{"data": "y", "classification": "general"}"#),
            ],
            &Stores::default(),
        )
        .unwrap();
        let card = r.lookup("card").await.unwrap().unwrap();
        assert_eq!(card.data["number"], "4111");
        assert!(!format!("{card:?}").contains("4111"), "Debug never shows data");
        assert_eq!(r.lookup("old").await.unwrap(), None, "expired");
        assert_eq!(r.lookup("other").await.unwrap(), None, "another Secret's key");
        assert!(r.permits("pci", TokenLocation::Body));
        assert!(!r.permits("pci", TokenLocation::Headers));
        assert!(
            r.permits("general", TokenLocation::Query),
            "locations default to all three"
        );
        assert!(!r.may_create("pci"), "no dynamic store");
    }

    #[tokio::test]
    async fn dynamic_tokens_are_sealed_and_bound_to_their_id() {
        let stores = Stores::default();
        let spec = serde_json::json!({"source": {"store": "memory", "encryptionKeys": [{"name": "k", "key": "a"}]},
            "permissions": [{"classification": "pci"}],
            "tokenizeResponse": {"pointers": ["/n"], "classification": "bank", "ttl": "1h"}});
        let r = rule(spec.clone(), &[("ns/k/a", KEY)], &stores).unwrap();
        assert!(r.may_create("pci") && r.may_create("bank") && !r.may_create("general"));
        let token = Token {
            data: serde_json::json!("4111-1111-1111-1111"),
            classification: "pci".into(),
        };
        let id = r.create(&token, None).await.unwrap().unwrap();
        assert_eq!(r.lookup(&id).await.unwrap(), Some(token));
        let other = r
            .create(
                &Token {
                    data: "b".into(),
                    classification: "pci".into(),
                },
                None,
            )
            .await
            .unwrap()
            .unwrap();

        // Swap the two sealed values: each is bound to its own id, so neither opens.
        let memory = stores.memory();
        let (ka, kb) = (r.store_key(&id), r.store_key(&other));
        let (va, vb) = (
            memory.get(&ka).await.unwrap().unwrap(),
            memory.get(&kb).await.unwrap().unwrap(),
        );
        assert!(!String::from_utf8_lossy(&va).contains("4111"));
        assert!(!ka.contains(&id), "the key hides the id");
        memory.set(&ka, &vb, None).await.unwrap();
        assert_eq!(r.lookup(&id).await.unwrap(), None);

        let bad = rule(spec, &[("ns/k/a", "short")], &stores).unwrap_err();
        assert!(
            bad.starts_with("spec.source.encryptionKeys: key 0 must be 32 random bytes"),
            "{bad}"
        );
    }
}
