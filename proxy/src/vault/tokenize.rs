//! Response tokenization: on a route whose vault rules name `tokenizeResponse` pointers, a JSON
//! answer is buffered (at most [`MAX_RESPONSE`] bytes), each non-null value found at a pointer is
//! stored as a new token of the rule's classification (with the rule's TTL) and replaced by the
//! token's id, and the document is re-serialized (compact). Non-JSON answers stream through.
//!
//! It fails closed: an answer that claims to be JSON but cannot be read (too large, compressed,
//! malformed) or a store that cannot take the new tokens gives the browser an error, never the
//! untokenized answer.

use bytes::Bytes;
use http::HeaderValue;
use http::header;
use http::response::Parts;
use http_body_util::{BodyExt, Full};
use serde_json::Value;

use super::{RouteVault, is_compressed, is_json, media_type, tokenize_fields};
use crate::body::Body;
use crate::body::read_to_limit;
use crate::error::ProxyError;

/// Largest JSON answer tokenized: 16 MiB.
pub const MAX_RESPONSE: u64 = 16 * 1024 * 1024;

pub(super) async fn response(vault: &RouteVault, parts: &mut Parts, body: Body) -> Result<Body, ProxyError> {
    if !is_json(&media_type(&parts.headers)) {
        return Ok(body);
    }
    if is_compressed(&parts.headers) {
        return Err(ProxyError::ResponseNotTokenizable(
            "it is compressed (Content-Encoding)",
        ));
    }
    let raw = read_to_limit(body, MAX_RESPONSE)
        .await
        .map_err(ProxyError::response_body)?;
    if raw.is_empty() {
        // HEAD answers and 204s: nothing to vault, and their Content-Length stays as sent.
        return Ok(Full::new(raw).map_err(|never| match never {}).boxed());
    }
    let mut doc: Value =
        serde_json::from_slice(&raw).map_err(|_| ProxyError::ResponseNotTokenizable("it is not valid JSON"))?;
    for rule in &vault.rules {
        let Some(spec) = &rule.tokenize else { continue };
        tokenize_fields(rule, &mut doc, &spec.pointers, &spec.classification, spec.ttl).await?;
    }
    let out = Bytes::from(serde_json::to_vec(&doc).expect("a JSON value always serializes"));
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(out.len()));
    // The representation changed: validators of the upstream's bytes no longer describe it.
    parts.headers.remove(header::ETAG);
    Ok(Full::new(out).map_err(|never| match never {}).boxed())
}
