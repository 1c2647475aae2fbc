//! Cookie translation, the backend-for-frontend flow: the login answer's token becomes an
//! HttpOnly cookie, and on every later request that cookie becomes the upstream's auth header.
//! JavaScript in the page never holds the token.
//!
//! Three steps, picked by [`CookieTranslation::step`]: the session-start call is forwarded and
//! its answer rewritten ([`CookieTranslation::start`]: token taken out, cookie set, the rest
//! handed to the browser); the logout path is answered here ([`CookieTranslation::logout`]);
//! anything else has its cookie translated ([`CookieTranslation::translate`]).
//!
//! The cookie value is a small tagged payload — `t.<token>`, `b.<base64url token>` for tokens
//! with characters a cookie cannot carry, or `h.<handle>` when the token lives in the store
//! because it would make the cookie larger than browsers keep — optionally sealed with
//! AES-256-GCM, bound to this translation so a cookie of one cannot be replayed on another.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode};
use keygate_crds::resources::cookie::{CookieTranslationSpec, SameSite, TokenStorage};
use keygate_crds::resources::route::CsrfMode;
use keygate_crds::resources::vault::StoreKind;
use keygate_crds::snapshot::secret_id;
use keygate_crds::{SecretSnapshot, Snapshot};
use serde_json::Value;

use crate::body::{Body, empty, full, read_to_limit};
use crate::error::ProxyError;
use crate::seal::{Sealer, random_token};
use crate::store::{self, Store, Stores};

/// Browsers drop cookies whose name, value and attributes exceed 4096 bytes; stay clear of it.
const MAX_COOKIE_BYTES: usize = 4000;
/// Response header repeating the double-submit CSRF token at session start.
pub const CSRF_TOKEN_HEADER: HeaderName = HeaderName::from_static(keygate_crds::snapshot::CSRF_TOKEN_HEADER);
/// How long the store keeps a server-side token when the cookie has no `maxAgeSeconds`.
const SERVER_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// What a request is to a cookie translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// An ordinary call: translate the cookie, if any, into the header.
    Translate,
    /// The login call: forward it, then turn the answer's token into the cookie.
    SessionStart,
    /// The logout path: Keygate clears the cookie and answers itself.
    Logout,
}

/// One `CookieTranslation`, ready to serve.
pub struct CookieTranslation {
    id: String,
    cookie: String,
    /// What sealed cookie values are bound to, so a cookie of one translation opens for no other.
    context: String,
    attributes: String,
    csrf_cookie: Option<String>,
    csrf_attributes: String,
    header: HeaderName,
    template: (String, String),
    start_method: Method,
    start_path: String,
    token_pointer: String,
    response_pointer: String,
    logout_path: Option<String>,
    storage: TokenStorage,
    sealer: Option<Sealer>,
    store: Arc<dyn Store>,
    server_ttl: Duration,
}

impl CookieTranslation {
    /// Prepares translation `id` (`namespace/name`). Errors name the field at fault.
    pub fn build(
        id: &str,
        spec: &CookieTranslationSpec,
        snapshot: &Snapshot,
        secrets: &SecretSnapshot,
        stores: &Stores,
    ) -> Result<CookieTranslation, (String, String)> {
        let ns = id.split('/').next().unwrap_or_default();
        let c = &spec.cookie;
        let cookie = if c.host_prefix {
            format!("__Host-{}", c.name)
        } else {
            c.name.clone()
        };
        let mut attrs = format!("; Path={}", c.path);
        if let Some(domain) = &c.domain {
            attrs.push_str(&format!("; Domain={domain}"));
        }
        if let Some(age) = c.max_age_seconds {
            attrs.push_str(&format!("; Max-Age={age}"));
        }
        if c.secure {
            attrs.push_str("; Secure");
        }
        attrs.push_str(match c.same_site {
            SameSite::Strict => "; SameSite=Strict",
            SameSite::Lax => "; SameSite=Lax",
            SameSite::None => "; SameSite=None",
        });
        // The CSRF cookie exists only where a route double-submits it; the page must read it.
        let double_submit = snapshot.routes.iter().any(|r| {
            r.cookie_translation.as_deref() == Some(id)
                && r.csrf.as_ref().is_some_and(|c| c.mode == CsrfMode::DoubleSubmit)
        });
        let csrf_cookie = double_submit.then(|| format!("{cookie}_csrf"));
        let header = HeaderName::from_bytes(spec.header.name.as_bytes())
            .map_err(|_| ("spec.header.name".to_string(), "is not a header name".to_string()))?;
        let (before, after) = spec
            .header
            .template
            .split_once("{token}")
            .ok_or_else(|| ("spec.header.template".to_string(), "must contain {token}".to_string()))?;
        let keys: Vec<&String> = spec
            .encryption_keys
            .iter()
            .map(|k| secrets.values.get(&secret_id(ns, &k.name, &k.key)))
            .collect::<Option<_>>()
            .ok_or_else(|| {
                (
                    "spec.encryptionKeys".to_string(),
                    "a key is missing from the secret snapshot".to_string(),
                )
            })?;
        let sealer = (!keys.is_empty())
            .then(|| Sealer::new(&keys))
            .transpose()
            .map_err(|e| ("spec.encryptionKeys".to_string(), e.to_string()))?;
        let store = match (spec.store, &spec.redis_url) {
            (StoreKind::Redis, Some(url)) => {
                let url = secrets.values.get(&secret_id(ns, &url.name, &url.key)).ok_or_else(|| {
                    (
                        "spec.redisUrl".to_string(),
                        "is missing from the secret snapshot".to_string(),
                    )
                })?;
                stores
                    .redis(url.trim())
                    .map_err(|e| ("spec.redisUrl".to_string(), e.to_string()))?
            }
            _ => stores.memory(),
        };
        Ok(CookieTranslation {
            context: format!("cookie:{id}:{cookie}"),
            id: id.to_string(),
            cookie,
            csrf_attributes: attrs.clone(),
            attributes: format!("{attrs}; HttpOnly"),
            csrf_cookie,
            header,
            template: (before.to_string(), after.to_string()),
            start_method: Method::from_bytes(spec.session_start.method.as_str().as_bytes()).unwrap_or(Method::POST),
            start_path: spec.session_start.path.clone(),
            token_pointer: spec.session_start.token_pointer.clone(),
            response_pointer: spec.session_start.response_pointer.clone().unwrap_or_default(),
            logout_path: spec.logout.as_ref().map(|l| l.path.clone()),
            storage: spec.storage,
            sealer,
            store,
            server_ttl: c
                .max_age_seconds
                .map_or(SERVER_TOKEN_TTL, |s| Duration::from_secs(s.max(1) as u64)),
        })
    }

    /// Which step `parts` is.
    pub fn step(&self, parts: &Parts) -> Step {
        let path = parts.uri.path();
        if path == self.start_path && parts.method == self.start_method {
            Step::SessionStart
        } else if self.logout_path.as_deref() == Some(path) {
            Step::Logout
        } else {
            Step::Translate
        }
    }

    /// The name of the readable CSRF cookie set at session start, when a route double-submits it.
    pub fn csrf_cookie(&self) -> Option<&str> {
        self.csrf_cookie.as_deref()
    }

    /// The upstream header the cookie becomes, with its value, or `None` without a cookie.
    pub async fn translate(&self, headers: &HeaderMap) -> Result<Option<(HeaderName, HeaderValue)>, ProxyError> {
        let Some(value) = cookie_value(headers, &self.cookie) else {
            return Ok(None);
        };
        let token = match self.open(value)? {
            Payload::Token(t) => t,
            Payload::Handle(h) => {
                let stored = self
                    .store
                    .get(&self.store_key(&h))
                    .await?
                    .ok_or(ProxyError::SessionExpired)?;
                self.unseal_stored(&h, stored)?
            }
        };
        let mut v = Vec::with_capacity(self.template.0.len() + token.len() + self.template.1.len());
        v.extend_from_slice(self.template.0.as_bytes());
        v.extend_from_slice(&token);
        v.extend_from_slice(self.template.1.as_bytes());
        let mut v = HeaderValue::from_bytes(&v).map_err(|_| ProxyError::SessionInvalid)?;
        v.set_sensitive(true);
        Ok(Some((self.header.clone(), v)))
    }

    /// Turns the login answer into the browser's: a 2xx JSON answer loses its token to the
    /// cookie; any other answer passes through unchanged and sets no cookie.
    pub async fn start(&self, resp: Response<Body>, limit: u64) -> Result<Response<Body>, ProxyError> {
        if !resp.status().is_success() {
            return Ok(resp);
        }
        let (mut parts, body) = resp.into_parts();
        let fail = |why: String| ProxyError::SessionStartFailed(why);
        let bytes = read_to_limit(body, limit)
            .await
            .map_err(|_| fail(format!("the login answer could not be read within {limit} bytes")))?;
        let mut doc: Value = serde_json::from_slice(&bytes).map_err(|_| fail("the login answer is not JSON".into()))?;
        let token = match doc.pointer(&self.token_pointer) {
            Some(Value::String(t)) if !t.is_empty() => t.clone(),
            _ => return Err(fail(format!("the login answer has no token at {}", self.token_pointer))),
        };
        if !is_header_safe(self.template.0.as_bytes(), token.as_bytes()) {
            return Err(fail("the token has characters a header cannot carry".into()));
        }
        super::remove_pointer(&mut doc, &self.token_pointer);
        let browser = if self.response_pointer.is_empty() {
            doc
        } else {
            doc.pointer_mut(&self.response_pointer)
                .map(Value::take)
                .ok_or_else(|| fail(format!("the login answer has nothing at {}", self.response_pointer)))?
        };
        let value = self.cookie_for(token.as_bytes()).await?;
        let h = &mut parts.headers;
        h.remove(header::CONTENT_LENGTH);
        h.remove(header::CONTENT_ENCODING);
        h.remove(header::ETAG);
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.append(header::SET_COOKIE, set_cookie(&self.cookie, &value, &self.attributes)?);
        if let Some(csrf) = &self.csrf_cookie {
            let token = random_token(32);
            h.append(header::SET_COOKIE, set_cookie(csrf, &token, &self.csrf_attributes)?);
            // A page on another host cannot read this cookie (it belongs to the proxy's host), so
            // the token also comes back in a header, exposed on CORS answers.
            let value =
                HeaderValue::from_str(&token).map_err(|_| fail("the CSRF token is not a header value".into()))?;
            h.insert(CSRF_TOKEN_HEADER, value);
        }
        let body = serde_json::to_vec(&browser).expect("a JSON value serializes");
        Ok(Response::from_parts(parts, full(Bytes::from(body))))
    }

    /// Clears the cookies and the server-side token, answering 204.
    pub async fn logout(&self, headers: &HeaderMap) -> Result<Response<Body>, ProxyError> {
        if let Some(Ok(Payload::Handle(h))) = cookie_value(headers, &self.cookie).map(|v| self.open(v)) {
            self.store.delete(&self.store_key(&h)).await?;
        }
        let mut resp = Response::new(empty());
        *resp.status_mut() = StatusCode::NO_CONTENT;
        let h = resp.headers_mut();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.append(
            header::SET_COOKIE,
            set_cookie(&self.cookie, "", &format!("{}; Max-Age=0", self.attributes))?,
        );
        if let Some(csrf) = &self.csrf_cookie {
            h.append(
                header::SET_COOKIE,
                set_cookie(csrf, "", &format!("{}; Max-Age=0", self.csrf_attributes))?,
            );
        }
        Ok(resp)
    }

    /// The cookie value for `token`: in the cookie when it fits (and storage allows), else a
    /// handle to the token in the store.
    async fn cookie_for(&self, token: &[u8]) -> Result<String, ProxyError> {
        let inline = self.seal_payload(&inline_payload(token));
        let fits = self.cookie.len() + 1 + inline.len() + self.attributes.len() <= MAX_COOKIE_BYTES;
        match (self.storage, fits) {
            (TokenStorage::Cookie, true) | (TokenStorage::Auto, true) => Ok(inline),
            (TokenStorage::Cookie, false) => Err(ProxyError::SessionStartFailed(
                "the token is too large for a cookie; set storage: auto or server".into(),
            )),
            (TokenStorage::Server, _) | (TokenStorage::Auto, false) => {
                let handle = random_token(32);
                let key = self.store_key(&handle);
                let stored = match &self.sealer {
                    Some(s) => s.seal(token, key.as_bytes()).into_bytes(),
                    None => token.to_vec(),
                };
                self.store.set(&key, &stored, Some(self.server_ttl)).await?;
                Ok(self.seal_payload(&format!("h.{handle}")))
            }
        }
    }

    fn seal_payload(&self, payload: &str) -> String {
        match &self.sealer {
            Some(s) => s.seal(payload.as_bytes(), self.context.as_bytes()),
            None => payload.to_string(),
        }
    }

    /// What a cookie value holds; anything that does not decode is `SessionInvalid`.
    fn open(&self, value: &str) -> Result<Payload, ProxyError> {
        let opened;
        let payload = match &self.sealer {
            Some(s) => {
                opened = s
                    .open(value, self.context.as_bytes())
                    .map_err(|_| ProxyError::SessionInvalid)?;
                std::str::from_utf8(&opened).map_err(|_| ProxyError::SessionInvalid)?
            }
            None => value,
        };
        match payload.split_at_checked(2) {
            Some(("t.", t)) if !t.is_empty() => Ok(Payload::Token(t.as_bytes().to_vec())),
            Some(("b.", b)) => URL_SAFE_NO_PAD
                .decode(b)
                .map(Payload::Token)
                .map_err(|_| ProxyError::SessionInvalid),
            Some(("h.", h)) if !h.is_empty() => Ok(Payload::Handle(h.to_string())),
            _ => Err(ProxyError::SessionInvalid),
        }
    }

    fn unseal_stored(&self, handle: &str, stored: Vec<u8>) -> Result<Vec<u8>, ProxyError> {
        match &self.sealer {
            Some(s) => {
                let sealed = std::str::from_utf8(&stored).map_err(|_| ProxyError::SessionInvalid)?;
                s.open(sealed, self.store_key(handle).as_bytes())
                    .map_err(|_| ProxyError::SessionInvalid)
            }
            None => Ok(stored),
        }
    }

    fn store_key(&self, handle: &str) -> String {
        store::key("cookie", &self.id, handle.as_bytes())
    }
}

enum Payload {
    Token(Vec<u8>),
    Handle(String),
}

/// `t.<token>` when every byte may appear in a cookie value (RFC 6265 cookie-octet), else
/// `b.<base64url>`.
fn inline_payload(token: &[u8]) -> String {
    let octet = |b: &u8| matches!(b, 0x21 | 0x23..=0x2B | 0x2D..=0x3A | 0x3C..=0x5B | 0x5D..=0x7E);
    if token.iter().all(octet) {
        format!("t.{}", String::from_utf8_lossy(token))
    } else {
        format!("b.{}", URL_SAFE_NO_PAD.encode(token))
    }
}

fn is_header_safe(prefix: &[u8], token: &[u8]) -> bool {
    let mut v = prefix.to_vec();
    v.extend_from_slice(token);
    HeaderValue::from_bytes(&v).is_ok()
}

fn set_cookie(name: &str, value: &str, attributes: &str) -> Result<HeaderValue, ProxyError> {
    HeaderValue::from_str(&format!("{name}={value}{attributes}"))
        .map_err(|_| ProxyError::SessionStartFailed("the cookie cannot be written as a header".into()))
}

/// The value of cookie `name` in the request's `Cookie` headers (HTTP/2 may send several).
pub fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.trim_matches('"'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_values_by_name() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; sid=t.abc"));
        h.append(header::COOKIE, HeaderValue::from_static("sid_csrf=\"xyz\""));
        assert_eq!(cookie_value(&h, "sid"), Some("t.abc"));
        assert_eq!(cookie_value(&h, "sid_csrf"), Some("xyz"));
        assert_eq!(cookie_value(&h, "si"), None);
    }

    #[test]
    fn payloads_keep_cookie_octets() {
        assert_eq!(inline_payload(b"eyJ.abc-_"), "t.eyJ.abc-_");
        assert!(inline_payload(b"has space;comma,").starts_with("b."));
    }
}
