//! Inbound tokenization (`tokenizeRequest`): before a request goes upstream, the body fields its
//! route's rules name — JSON pointers in JSON bodies, field names in form bodies — are stored as
//! new tokens (sealed, in the rule's store, with its classification and TTL) and replaced by the
//! tokens' ids. The upstream, the request transforms after this stage, and the logs see only ids;
//! an app's backend can keep a card number out of its own systems and still use it later, through
//! a route whose rules may reveal it.
//!
//! It fails closed: a body that cannot be read as its content type says (compressed, malformed
//! JSON, a form field that is not UTF-8, or a type Keygate cannot look into) is refused with
//! `400 REQUEST_NOT_TOKENIZABLE`, never forwarded as it came; a store that cannot take the new
//! tokens answers `503`. Requests without a body pass untouched.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use serde_json::Value;

use super::tokens::{Token, VaultRule};
use super::{RouteVault, form_decode, form_encode, is_json, media_type, unavailable};
use crate::body::{Body, ReadError, full, read_to_limit};
use crate::error::ProxyError;

pub(super) async fn request(vault: &RouteVault, parts: &mut Parts, body: Body) -> Result<Body, ProxyError> {
    let raw = match read_to_limit(body, u64::MAX).await {
        Ok(raw) => raw,
        Err(ReadError::TooLarge(limit)) => return Err(ProxyError::BodyTooLarge(limit)),
        Err(ReadError::Failed(_)) => return Err(ProxyError::BadRequest("the request body could not be read")),
    };
    if raw.is_empty() {
        return Ok(full(raw));
    }
    if parts
        .headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
    {
        return Err(ProxyError::RequestNotTokenizable("it is compressed (Content-Encoding)"));
    }
    let media = media_type(&parts.headers);
    let rules = || vault.rules.iter().filter_map(|r| Some((r, r.inbound.as_ref()?)));
    let out = if is_json(&media) {
        let mut doc: Value =
            serde_json::from_slice(&raw).map_err(|_| ProxyError::RequestNotTokenizable("it is not valid JSON"))?;
        let mut changed = false;
        for (rule, spec) in rules() {
            for pointer in &spec.pointers {
                let Some(slot) = doc.pointer_mut(pointer).filter(|v| !v.is_null()) else {
                    continue;
                };
                *slot = Value::String(vault_value(rule, slot.take()).await?);
                changed = true;
            }
        }
        if !changed {
            return Ok(full(raw));
        }
        Bytes::from(serde_json::to_vec(&doc).expect("a JSON value always serializes"))
    } else if media == "application/x-www-form-urlencoded" {
        let mut out = Vec::with_capacity(raw.len());
        for (i, field) in raw.split(|b| *b == b'&').enumerate() {
            if i > 0 {
                out.push(b'&');
            }
            let (name, value) = match field.iter().position(|b| *b == b'=') {
                Some(p) => (&field[..p], &field[p + 1..]),
                None => (field, &[][..]),
            };
            let decoded = form_decode(name);
            let wanted = rules().find(|(_, spec)| spec.form_fields.iter().any(|f| f.as_bytes() == decoded));
            match wanted {
                Some((rule, _)) if !value.is_empty() => {
                    let data = String::from_utf8(form_decode(value))
                        .map_err(|_| ProxyError::RequestNotTokenizable("a form field to vault is not UTF-8 text"))?;
                    let id = vault_value(rule, Value::String(data)).await?;
                    out.extend_from_slice(name);
                    out.push(b'=');
                    out.extend_from_slice(&form_encode(id.as_bytes()));
                }
                _ => out.extend_from_slice(field),
            }
        }
        Bytes::from(out)
    } else {
        return Err(ProxyError::RequestNotTokenizable(
            "this route vaults request fields, so its bodies must be JSON or application/x-www-form-urlencoded",
        ));
    };
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(out.len()));
    Ok(full(out))
}

/// Stores `data` as a new token of the rule's `tokenizeRequest` classification; its id.
async fn vault_value(rule: &VaultRule, data: Value) -> Result<String, ProxyError> {
    let spec = rule
        .inbound
        .as_ref()
        .expect("only rules with tokenizeRequest vault requests");
    let token = Token {
        data,
        classification: spec.classification.clone(),
    };
    Ok(rule
        .create(&token, spec.ttl)
        .await
        .map_err(|e| unavailable(rule, e))?
        .expect("a rule with tokenizeRequest has a dynamic store"))
}
