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

use super::{RouteVault, form_decode, form_encode, is_compressed, is_json, media_type, new_token, tokenize_fields};
use crate::body::{Body, full, read_to_limit};
use crate::error::ProxyError;

pub(super) async fn request(vault: &RouteVault, parts: &mut Parts, body: Body) -> Result<Body, ProxyError> {
    let raw = read_to_limit(body, u64::MAX).await.map_err(ProxyError::request_body)?;
    if raw.is_empty() {
        return Ok(full(raw));
    }
    if is_compressed(&parts.headers) {
        return Err(ProxyError::RequestNotTokenizable("it is compressed (Content-Encoding)"));
    }
    let media = media_type(&parts.headers);
    let rules = || vault.rules.iter().filter_map(|r| Some((r, r.inbound.as_ref()?)));
    let out = if is_json(&media) {
        let mut doc: Value =
            serde_json::from_slice(&raw).map_err(|_| ProxyError::RequestNotTokenizable("it is not valid JSON"))?;
        let mut changed = false;
        for (rule, spec) in rules() {
            changed |= tokenize_fields(rule, &mut doc, &spec.pointers, &spec.classification, spec.ttl).await?;
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
                Some((rule, spec)) if !value.is_empty() => {
                    let data = String::from_utf8(form_decode(value))
                        .map_err(|_| ProxyError::RequestNotTokenizable("a form field to vault is not UTF-8 text"))?;
                    let id = new_token(rule, Value::String(data), &spec.classification, spec.ttl).await?;
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
