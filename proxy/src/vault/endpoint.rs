//! The tokenize endpoint, `POST <path>/tokens`: an app's backend stores data as new tokens of a
//! vault rule without the data passing through a browser. Served by Keygate itself, before
//! route lookup, authenticated by a per-app key from a Secret ([`ApiKeys`]).
//!
//! Request: `{"data": <json>, "classification": "pci", "ttl": "1h"}` or a list of up to 100 of
//! them; answer `201 {"id": "..."}` or a list in the same order. The classification must be one
//! the rule permits, or its `tokenizeResponse` classification. Error messages never quote the
//! request: it holds the data.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use keygate_crds::SecretSnapshot;
use keygate_crds::resources::vault::TokenizeEndpoint;
use serde::Deserialize;
use serde_json::{Value, json};

use super::tokens::{Token, VaultRule, parse_ttl};
use super::unavailable;
use crate::apikeys::ApiKeys;
use crate::body::Body;
use crate::body::read_to_limit;
use crate::error::ProxyError;
use crate::metrics::Metrics;

/// Largest request body: 1 MiB.
pub const MAX_BODY: u64 = 1024 * 1024;
/// Most tokens one request may create.
pub const MAX_ITEMS: usize = 100;

/// One rule's endpoint.
pub struct Endpoint {
    rule: Arc<VaultRule>,
    header: HeaderName,
    keys: ApiKeys,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Endpoint({}, {:?})", self.rule.id, self.keys)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    #[serde(default)]
    data: Value,
    classification: String,
    #[serde(default)]
    ttl: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NewTokens {
    One(NewToken),
    Many(Vec<NewToken>),
}

impl Endpoint {
    /// Builds the endpoint of `rule`.
    pub fn build(rule: Arc<VaultRule>, spec: &TokenizeEndpoint, secrets: &SecretSnapshot) -> Result<Endpoint, String> {
        let ns = rule.id.split_once('/').map_or("", |(ns, _)| ns);
        let keys = ApiKeys::from_secret(secrets, ns, &spec.keys_secret_ref.name);
        if keys.is_empty() {
            return Err(format!(
                "spec.tokenizeEndpoint.keysSecretRef: Secret {ns}/{} holds no keys; add one per app",
                spec.keys_secret_ref.name
            ));
        }
        let header = HeaderName::from_bytes(spec.header.as_deref().unwrap_or("x-api-key").as_bytes())
            .map_err(|_| "spec.tokenizeEndpoint.header is not a header name".to_string())?;
        Ok(Endpoint { rule, header, keys })
    }

    /// The rule's `namespace/name`: the `route` label of the endpoint's requests.
    pub fn id(&self) -> &Arc<str> {
        &self.rule.id
    }

    /// Serves one request.
    pub async fn serve(&self, metrics: &Metrics, req: Request<Body>) -> Result<Response<Body>, ProxyError> {
        if req.method() != Method::POST {
            return Err(ProxyError::MethodNotAllowed(req.method().to_string()));
        }
        let presented = req
            .headers()
            .get(&self.header)
            .map(HeaderValue::as_bytes)
            .unwrap_or_default();
        let Some(app) = self.keys.app(presented) else {
            return Err(ProxyError::InvalidApiKey);
        };
        metrics.app_request(&self.rule.id, app);
        let raw = read_to_limit(req.into_body(), MAX_BODY)
            .await
            .map_err(ProxyError::request_body)?;
        // serde's messages quote the offending input, which is the data: say only what is expected.
        let request: NewTokens = serde_json::from_slice(&raw).map_err(|_| {
            ProxyError::BadRequest(
                "the body must be {\"data\": <json>, \"classification\": \"<name>\", \"ttl\"?: \"1h\"} or a list of them",
            )
        })?;
        let (items, many) = match request {
            NewTokens::One(t) => (vec![t], false),
            NewTokens::Many(list) => (list, true),
        };
        if items.is_empty() || items.len() > MAX_ITEMS {
            return Err(ProxyError::BadRequest("a list must hold 1 to 100 tokens"));
        }
        let mut checked = Vec::with_capacity(items.len());
        for item in items {
            if item.data.is_null() {
                return Err(ProxyError::BadRequest("data is missing or null"));
            }
            if !self.rule.may_create(&item.classification) {
                return Err(ProxyError::ClassificationNotAllowed);
            }
            let ttl = parse_ttl(item.ttl.as_deref())
                .map_err(|_| ProxyError::BadRequest("ttl must be a positive duration such as 30s, 15m or 24h"))?;
            let token = Token {
                data: item.data,
                classification: item.classification,
            };
            checked.push((token, ttl));
        }
        let mut ids = Vec::with_capacity(checked.len());
        for (token, ttl) in &checked {
            let id = self
                .rule
                .create(token, *ttl)
                .await
                .map_err(|e| unavailable(&self.rule, e))?;
            ids.push(json!({"id": id.expect("a rule with a tokenize endpoint has a dynamic store")}));
        }
        let answer = if many { Value::Array(ids) } else { ids.remove(0) };
        let mut resp = Response::new(
            Full::new(Bytes::from(answer.to_string()))
                .map_err(|never| match never {})
                .boxed(),
        );
        *resp.status_mut() = StatusCode::CREATED;
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok(resp)
    }
}
