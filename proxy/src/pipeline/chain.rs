//! The session chain (`SessionChainPolicy`): a frontend's API key is public, so a request is
//! accepted only if it also carries the next link of a hash chain that only the live browser
//! session can continue. Copied (cURL) and replayed requests carry a link that was already used.
//!
//! Data flow: [`Chains::build`] turns the snapshot's policies that served routes use into
//! [`ChainPolicy`]s (header names, hashed API keys, TTL, the store), once per config. `POST
//! <createPath>` is answered by [`create`] before routing: an app key buys a random 256-bit
//! session id, the chain's first `last`. A session's record is `<app>\n<next link>[<tail>]`: its
//! app, the link it expects next (computed by Keygate when `last` is set, as the policy's
//! [`Proof`] says) and what the session registered (the public key in `signature` mode). So
//! [`check`] is one compare-and-set of `<app>\n<presented link><tail>` to `<app>\n<the link after
//! it><tail>`. That single atomic operation checks the app, the link and the session's existence,
//! and advances the chain; on Redis it is one server-side script, so of two replicas racing for
//! the same link exactly one wins. In `hash` and `hmac` modes the tail is empty and only a
//! refusal reads the record, to name the reason; in `signature` mode the record is read first for
//! the public key, and the signature is verified before the compare-and-set, so a forged request
//! never advances anyone's chain. The chain
//! advances when Keygate accepts, before the upstream answers; [`signal`] tells the client so
//! (`x-keygate-chain: advanced`), also when the upstream fails.
//!
//! Records live under `store::key("chain", policy, session_id)` (the raw id is never a key) and
//! expire after the policy's TTL, refreshed by every accepted link. Session ids and links are
//! logged only as an 8-hex-digit fingerprint of their SHA-256.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use keygate_crds::resources::common::parse_duration_ms;
use keygate_crds::resources::vault::StoreKind;
use keygate_crds::snapshot::secret_id;
use keygate_crds::{SecretSnapshot, Snapshot};
use sha2::{Digest, Sha256};

use crate::apikeys::ApiKeys;
use crate::body::{Body, ReadError, full, read_to_limit};
use crate::config::{ConfigError, LiveRoute};
use crate::error::ProxyError;
use crate::pipeline::Stage;
use crate::pipeline::path::original_target;
use crate::pipeline::proof::{self, Proof};
use crate::proxy::Shared;
use crate::seal::random_token;
use crate::store::{self, Store, StoreError, Stores};

/// Response header that tells the client its chain moved on.
pub const ADVANCED_HEADER: HeaderName = HeaderName::from_static(keygate_crds::snapshot::CHAIN_HEADER);
/// Request header carrying the signature in `signature` mode.
pub const SIGNATURE_HEADER: HeaderName = HeaderName::from_static(keygate_crds::snapshot::SIGNATURE_HEADER);
/// [`ADVANCED_HEADER`]'s value.
pub const ADVANCED: &str = "advanced";

/// Largest session-create body; it holds one small JSON object.
const CREATE_BODY_LIMIT: usize = 4096;
/// Longest wait for the session-create body.
const CREATE_BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of randomness in a session id.
const SESSION_ID_BYTES: usize = 32;
/// A link: a SHA-256 or HMAC-SHA256, hex encoded.
const LINK_HEX_LEN: usize = 64;

/// One `SessionChainPolicy`, ready to serve.
pub struct ChainPolicy {
    /// `namespace/name`.
    pub id: Arc<str>,
    /// Path answered by [`create`].
    pub create_path: String,
    api_key: HeaderName,
    session_id: HeaderName,
    request_id: HeaderName,
    keys: ApiKeys,
    ttl: Duration,
    proof: Proof,
    /// Where sessions live; per-app and per-session rate limits use it too.
    pub store: Arc<dyn Store>,
}

impl ChainPolicy {
    /// The app whose API key the request carries.
    pub fn app(&self, parts: &Parts) -> Option<&Arc<str>> {
        self.keys.app(parts.headers.get(&self.api_key)?.as_bytes())
    }

    /// The session id the request carries (unchecked).
    pub fn session<'p>(&self, parts: &'p Parts) -> Option<&'p [u8]> {
        parts.headers.get(&self.session_id).map(HeaderValue::as_bytes)
    }

    fn record_key(&self, session_id: &[u8]) -> String {
        store::key("chain", &self.id, session_id)
    }
}

/// The policies of one config generation: those at least one served route uses, by id and by
/// create path. A policy no route uses opens no endpoint.
#[derive(Default)]
pub struct Chains {
    by_id: HashMap<String, Arc<ChainPolicy>>,
    by_create_path: HashMap<String, Arc<ChainPolicy>>,
}

impl Chains {
    /// Builds the policies the snapshot's routes use. Redis stores come from `stores`, so a
    /// reload keeps their connections.
    pub fn build(snapshot: &Snapshot, secrets: &SecretSnapshot, stores: &Stores) -> Result<Chains, ConfigError> {
        let mut chains = Chains::default();
        for id in snapshot.routes.iter().filter_map(|r| r.session_chain.as_ref()) {
            if chains.by_id.contains_key(id) {
                continue;
            }
            // A route naming a missing policy is reported by `for_route`, with the route's name.
            let Some(spec) = snapshot.session_policies.get(id) else {
                continue;
            };
            let bad = |field: &str, message: String| ConfigError::Policy {
                policy: id.clone(),
                field: field.into(),
                message,
            };
            let (namespace, _) = id.split_once('/').unwrap_or(("", id));
            let header = |field: &str, name: &str| {
                HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| bad(field, format!("{name:?} is not a header name")))
            };
            let proof = Proof::build(spec, secrets, namespace).map_err(|(field, message)| bad(field, message))?;
            let ttl = parse_duration_ms(&spec.ttl)
                .filter(|ms| *ms > 0)
                .ok_or_else(|| bad("ttl", format!("{:?} is not a positive duration such as 30m", spec.ttl)))?;
            let store = match spec.store {
                StoreKind::Redis => {
                    let url_ref = spec
                        .redis_url
                        .as_ref()
                        .ok_or_else(|| bad("redisUrl", "store: redis needs redisUrl".into()))?;
                    let secret = secret_id(namespace, &url_ref.name, &url_ref.key);
                    let url = secrets.values.get(&secret).ok_or_else(|| {
                        bad(
                            "redisUrl",
                            format!("secret {secret} is missing from the secret snapshot"),
                        )
                    })?;
                    stores
                        .redis(url.trim())
                        .map_err(|e| bad("redisUrl", format!("secret {secret}: {e}")))?
                }
                StoreKind::Memory | StoreKind::None => stores.memory(),
            };
            let policy = Arc::new(ChainPolicy {
                id: Arc::from(id.as_str()),
                create_path: spec.create_path.clone(),
                api_key: header("headers.apiKey", &spec.headers.api_key)?,
                session_id: header("headers.sessionId", &spec.headers.session_id)?,
                request_id: header("headers.requestId", &spec.headers.request_id)?,
                keys: ApiKeys::from_secret(secrets, namespace, &spec.api_keys_secret_ref.name),
                ttl: Duration::from_millis(ttl),
                proof,
                store,
            });
            if let Some(other) = chains.by_create_path.insert(spec.create_path.clone(), policy.clone()) {
                return Err(bad(
                    "createPath",
                    format!(
                        "{} is also the createPath of {}; give each policy its own path",
                        spec.create_path, other.id
                    ),
                ));
            }
            chains.by_id.insert(id.clone(), policy);
        }
        Ok(chains)
    }

    /// The policy of `route`, if it names one.
    pub fn for_route(&self, route: &keygate_crds::snapshot::Route) -> Result<Option<Arc<ChainPolicy>>, ConfigError> {
        let Some(id) = &route.session_chain else {
            return Ok(None);
        };
        self.by_id.get(id).cloned().map(Some).ok_or_else(|| ConfigError::Route {
            route: route.id.clone(),
            field: "sessionChain".into(),
            message: format!("session-chain policy {id} is not in the snapshot"),
        })
    }

    /// The policy whose create path is exactly `path`.
    pub fn create_path(&self, path: &str) -> Option<&Arc<ChainPolicy>> {
        self.by_create_path.get(path)
    }
}

/// 8 hex digits of a domain-separated SHA-256 of a secret: enough to follow one session through
/// the logs, useless for continuing it. The prefix matters: a plain SHA-256 of a session id is
/// its first link.
fn fingerprint(secret: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(b"keygate log fingerprint\n");
    h.update(secret);
    hex::encode(&h.finalize()[..4])
}

/// A session's stored record: its app, a link (the one expected next) and what the session
/// registered at creation.
fn record(app: &str, link: &[u8], tail: &[u8]) -> Vec<u8> {
    [app.as_bytes(), b"\n", link, tail].concat()
}

/// The registered part of `app`'s record, `None` if the record is another app's.
fn tail_of<'r>(stored: &'r [u8], app: &str) -> Option<&'r [u8]> {
    stored
        .strip_prefix(app.as_bytes())?
        .strip_prefix(b"\n")?
        .get(LINK_HEX_LEN..)
}

/// Why a request whose link did not win was refused, from the session's record.
fn refusal(stored: Option<&[u8]>, app: &str) -> ProxyError {
    match stored {
        None => ProxyError::SessionTimeOut,
        Some(r) if tail_of(r, app).is_none() => ProxyError::InvalidApiKey,
        // A wrong link, a replay, or another request with the same link got there first.
        Some(_) => ProxyError::RequestOutOfSession,
    }
}

fn unavailable(policy: &ChainPolicy, e: StoreError) -> ProxyError {
    tracing::warn!(policy = %policy.id, error = %e, "session store unavailable");
    ProxyError::StoreUnavailable
}

/// Answers `POST <createPath>`: checks the app key and the `{"machine_id": ...}` body (plus
/// `"public_key"` in `signature` mode), stores a new session and returns `{"session_id": ...}`
/// (plus `"chain_key"`, this once, in `hmac` mode).
pub async fn create(shared: &Shared, policy: &ChainPolicy, req: Request<Body>) -> Result<Response<Body>, ProxyError> {
    let (parts, body) = req.into_parts();
    if parts.method != Method::POST {
        return Err(ProxyError::MethodNotAllowed(parts.method.to_string()));
    }
    let app = policy.app(&parts).ok_or(ProxyError::InvalidApiKey)?.clone();
    let body = match tokio::time::timeout(CREATE_BODY_TIMEOUT, read_to_limit(body, CREATE_BODY_LIMIT as u64)).await {
        Ok(Ok(body)) => body,
        Ok(Err(e @ ReadError::TooLarge(_))) => return Err(ProxyError::request_body(e)),
        _ => return Err(ProxyError::BadRequest("the session request body could not be read")),
    };
    #[derive(serde::Deserialize)]
    struct CreateBody {
        machine_id: String,
        #[serde(default)]
        public_key: Option<String>,
    }
    // The machine id is required by the protocol but not trusted for anything: the session id
    // is random, never derived from it.
    let body = match serde_json::from_slice::<CreateBody>(&body) {
        Ok(b) if !b.machine_id.trim().is_empty() => b,
        _ => {
            return Err(ProxyError::BadRequest(
                r#"the body must be JSON {"machine_id": "<uuid>"}"#,
            ));
        }
    };
    let session_id = random_token(SESSION_ID_BYTES);
    let registered = policy
        .proof
        .register(session_id.as_bytes(), body.public_key.as_deref())?;
    let first = policy.proof.next(session_id.as_bytes(), session_id.as_bytes());
    policy
        .store
        .set(
            &policy.record_key(session_id.as_bytes()),
            &record(&app, first.as_bytes(), &registered.tail),
            Some(policy.ttl),
        )
        .await
        .map_err(|e| unavailable(policy, e))?;
    shared.metrics.app_request(&policy.id, &app);
    tracing::debug!(policy = %policy.id, app = %app, session = %fingerprint(session_id.as_bytes()), "session created");
    let mut answer = serde_json::json!({ "session_id": session_id });
    if let Some(chain_key) = registered.chain_key {
        answer["chain_key"] = chain_key.into();
    }
    let body = answer.to_string();
    let mut resp = Response::new(Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed());
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// Proof that [`check`] advanced the chain; hand it to [`signal`].
#[must_use]
pub struct Advanced(());

/// On a chain route, checks the request's API key, session and link (and, in `signature` mode,
/// its signature), and advances the chain. The protocol headers are removed: the upstream never
/// sees them. The body comes back unchanged; in `signature` mode it was read (up to the route's
/// `bodyLimit`) to be verified, and is forwarded from that copy.
pub fn check<'a>(
    shared: &'a Shared,
    route: &'a LiveRoute,
    parts: &'a mut Parts,
    body: Body,
) -> Stage<'a, (Option<Advanced>, Body)> {
    match &route.chain {
        None => Stage::skip((None, body)),
        Some(policy) => Stage::run(advance(shared, route, policy, parts, body)),
    }
}

async fn advance(
    shared: &Shared,
    route: &LiveRoute,
    policy: &ChainPolicy,
    parts: &mut Parts,
    body: Body,
) -> Result<(Option<Advanced>, Body), ProxyError> {
    let app = policy.app(parts).cloned();
    let session = parts.headers.remove(&policy.session_id);
    let sent_link = parts.headers.remove(&policy.request_id);
    let signature = parts.headers.remove(SIGNATURE_HEADER);
    parts.headers.remove(&policy.api_key);
    let refuse = |code: ProxyError, session: Option<&HeaderValue>| {
        tracing::debug!(
            route = %route.id,
            policy = %policy.id,
            session = session.map(|s| fingerprint(s.as_bytes())).as_deref().unwrap_or("-"),
            code = code.code(),
            "session chain refused the request"
        );
        code
    };

    let app = app.ok_or_else(|| refuse(ProxyError::InvalidApiKey, session.as_ref()))?;
    let session = session.ok_or_else(|| refuse(ProxyError::InvalidSession, None))?;
    let sent_link = sent_link
        .filter(|l| l.len() == LINK_HEX_LEN && l.as_bytes().iter().all(u8::is_ascii_hexdigit))
        .ok_or_else(|| refuse(ProxyError::InvalidRequestId, Some(&session)))?;
    let link = sent_link.as_bytes().to_ascii_lowercase();

    let key = policy.record_key(session.as_bytes());
    let (tail, body) = if policy.proof.signs() {
        // An unsigned request costs neither a store read nor buffering its body.
        let signature = signature.ok_or_else(|| refuse(ProxyError::InvalidSignature, Some(&session)))?;
        // The public key is in the record, so it is read first; the signature is checked
        // before the compare-and-set, so a forged request never advances anyone's chain.
        let stored = policy.store.get(&key).await.map_err(|e| unavailable(policy, e))?;
        let tail = stored
            .as_deref()
            .and_then(|r| tail_of(r, &app))
            .ok_or_else(|| refuse(refusal(stored.as_deref(), &app), Some(&session)))?
            .to_vec();
        let bytes = read_body(route, body).await?;
        let message = proof::signed_message(
            parts.method.as_str(),
            original_target(parts),
            &bytes,
            sent_link.as_bytes(),
        );
        proof::verify(&tail, &message, signature.as_bytes()).map_err(|e| refuse(e, Some(&session)))?;
        (tail, full(bytes))
    } else {
        (Vec::new(), body)
    };
    // The expected record carries the presented app too: another app's key, even a valid one,
    // must not drive this session.
    let next = policy.proof.next(session.as_bytes(), &link);
    let won = policy
        .store
        .compare_and_set(
            &key,
            &record(&app, &link, &tail),
            &record(&app, next.as_bytes(), &tail),
            Some(policy.ttl),
        )
        .await
        .map_err(|e| unavailable(policy, e))?;
    if won {
        shared.metrics.app_request(&route.id, &app);
        return Ok((Some(Advanced(())), body));
    }
    // Refused; read the record only to say why.
    let stored = policy.store.get(&key).await.map_err(|e| unavailable(policy, e))?;
    Err(refuse(refusal(stored.as_deref(), &app), Some(&session)))
}

/// Buffers a request body to sign-check it, within the route's `bodyLimit` and request timeout.
async fn read_body(route: &LiveRoute, body: Body) -> Result<Bytes, ProxyError> {
    let limit = route.spec.body_limit;
    match tokio::time::timeout(route.request_timeout, read_to_limit(body, limit)).await {
        Ok(read) => read.map_err(ProxyError::request_body),
        Err(_) => Err(ProxyError::BadRequest("the request body could not be read")),
    }
}

/// Marks the answer to a request whose chain advanced, success or failure, so the client moves
/// on to the next link either way.
pub fn signal(
    advanced: Option<Advanced>,
    result: Result<Response<Body>, ProxyError>,
) -> Result<Response<Body>, ProxyError> {
    match (advanced, result) {
        (None, result) => result,
        (Some(_), Ok(mut resp)) => {
            resp.headers_mut()
                .insert(ADVANCED_HEADER, HeaderValue::from_static(ADVANCED));
            Ok(resp)
        }
        (Some(_), Err(e)) => Err(ProxyError::ChainAdvanced(Box::new(e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot with policy `ns/p` (spec overrides merged in) used by route `ns/r`.
    fn snapshot(policy: serde_json::Value) -> Snapshot {
        let mut spec = serde_json::json!({"createPath": "/session", "apiKeysSecretRef": {"name": "keys"}});
        for (k, v) in policy.as_object().expect("an object") {
            spec[k] = v.clone();
        }
        let mut snapshot = Snapshot::default();
        snapshot
            .session_policies
            .insert("ns/p".into(), serde_json::from_value(spec).expect("a valid policy"));
        let route = crate::config::test_route(serde_json::json!({"id": "ns/r", "sessionChain": "ns/p"}));
        snapshot.routes.push(route.spec);
        snapshot
    }

    fn build(snapshot: &Snapshot, secrets: &[(&str, &str)]) -> Result<Chains, ConfigError> {
        let mut s = SecretSnapshot::default();
        for (id, v) in secrets {
            s.values.insert(id.to_string(), v.to_string());
        }
        Chains::build(snapshot, &s, &Stores::default())
    }

    #[test]
    fn policies_are_built_for_the_routes_that_use_them() {
        let snap = snapshot(serde_json::json!({"ttl": "5m"}));
        let chains = build(&snap, &[("ns/keys/shop", "k1\nk2")]).unwrap();
        let policy = chains.create_path("/session").expect("the create path is served");
        assert_eq!(policy.ttl, Duration::from_secs(300));
        assert_eq!(policy.keys.len(), 2);
        assert!(chains.for_route(&snap.routes[0]).unwrap().is_some());

        let mut unused = snap.clone();
        unused.routes.clear();
        assert!(
            build(&unused, &[]).unwrap().create_path("/session").is_none(),
            "no route, no endpoint"
        );

        let mut missing = snap.clone();
        missing.routes[0].session_chain = Some("ns/gone".into());
        let err = build(&snap, &[]).unwrap().for_route(&missing.routes[0]).err().unwrap();
        assert_eq!(
            err.to_string(),
            "route ns/r: sessionChain: session-chain policy ns/gone is not in the snapshot"
        );
    }

    #[test]
    fn redis_url_problems_name_the_secret_not_its_value() {
        let snap = snapshot(serde_json::json!({"store": "redis", "redisUrl": {"name": "redis", "key": "url"}}));
        let err = build(&snap, &[]).err().unwrap().to_string();
        assert_eq!(
            err,
            "policy ns/p: redisUrl: secret ns/redis/url is missing from the secret snapshot"
        );
        let err = build(&snap, &[("ns/redis/url", "http://:hunter2@redis:6379")])
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.starts_with("policy ns/p: redisUrl: secret ns/redis/url: the Redis URL must start"),
            "{err}"
        );
        assert!(!err.contains("hunter2"));
        let err = build(&snap, &[("ns/redis/url", "redis+sentinel://:hunter2@s1:26379")])
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            err,
            "policy ns/p: redisUrl: secret ns/redis/url: the Redis URL cannot be used: redis+sentinel:// needs \
             the master's name as its path, as in redis+sentinel://host:26379/mymaster"
        );
        for url in [
            "redis://:hunter2@127.0.0.1:1\n",
            "redis+sentinel://:hunter2@127.0.0.1:1,127.0.0.1:2/m",
            "redis+cluster://:hunter2@127.0.0.1:1",
        ] {
            let chains = build(&snap, &[("ns/redis/url", url)]).unwrap();
            assert!(chains.create_path("/session").is_some(), "building never connects");
        }
    }

    #[tokio::test]
    async fn the_signal_rides_on_failures_too() {
        let ok = Response::new(Full::new(Bytes::new()).map_err(|never| match never {}).boxed());
        let resp = signal(Some(Advanced(())), Ok(ok)).unwrap();
        assert_eq!(resp.headers()[ADVANCED_HEADER], ADVANCED);
        let err = signal(Some(Advanced(())), Err(ProxyError::UpstreamTimeout))
            .err()
            .unwrap();
        assert_eq!(err.code(), "UPSTREAM_TIMEOUT");
        let resp = err.into_response(Some("ns/r"));
        assert_eq!(resp.status(), http::StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(resp.headers()[ADVANCED_HEADER], ADVANCED);
        let plain = signal(None, Err(ProxyError::UpstreamTimeout)).err().unwrap();
        assert!(plain.into_response(None).headers().get(ADVANCED_HEADER).is_none());
    }
}
