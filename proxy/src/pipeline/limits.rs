//! First stage: refuse what the route does not accept before anything is sent upstream —
//! methods (405), content types (415) and declared body sizes (413). Bodies that do not declare
//! their size are limited while they stream, by [`crate::body::LimitedBody`].

use http::{header, request::Parts};

use crate::error::ProxyError;
use keygate_crds::snapshot::Route;

/// Checks method, content type and `Content-Length` against the route.
pub fn check(route: &Route, parts: &Parts) -> Result<(), ProxyError> {
    let method = parts.method.as_str();
    if !route.methods.is_empty() && !route.methods.iter().any(|m| m == method) {
        return Err(ProxyError::MethodNotAllowed(method.to_string()));
    }
    let declared = declared_length(parts)?;
    if declared.is_some_and(|len| len > route.body_limit) {
        return Err(ProxyError::BodyTooLarge(route.body_limit));
    }
    let has_body = declared.is_some_and(|n| n > 0) || parts.headers.contains_key(header::TRANSFER_ENCODING);
    if has_body && !route.content_types.is_empty() {
        let media = media_type(&parts.headers);
        if !route.content_types.contains(&media) {
            return Err(ProxyError::UnsupportedMediaType(media));
        }
    }
    Ok(())
}

fn declared_length(parts: &Parts) -> Result<Option<u64>, ProxyError> {
    match parts.headers.get(header::CONTENT_LENGTH) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .map(Some)
            .ok_or(ProxyError::BadRequest("Content-Length is not a number")),
    }
}

/// `application/json` and every `+json` type.
pub(crate) fn is_json(media: &str) -> bool {
    media == "application/json" || (media.starts_with("application/") && media.ends_with("+json"))
}

/// Whether a message's body is content-coded (gzip and the like): the stages that read a body
/// cannot look into it.
pub(crate) fn is_compressed(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
}

/// The media type of a message (`type/subtype`, lower case, parameters dropped).
pub(crate) fn media_type(headers: &http::HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn route(methods: &[&str], content_types: &[&str], body_limit: u64) -> Route {
        serde_json::from_value(serde_json::json!({
            "id": "default/r", "pathPrefix": "/r", "methods": methods,
            "destination": {"type": "upstream", "url": "http://127.0.0.1:1"},
            "stripPrefix": true, "connectTimeoutMs": 1000, "requestTimeoutMs": 1000,
            "bodyLimit": body_limit, "contentTypes": content_types,
            "upstreamProtocol": "auto", "auth": "none"
        }))
        .unwrap()
    }

    fn parts(method: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = Request::builder().method(method).uri("/r");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn methods() {
        let r = route(&["GET", "POST"], &[], 10);
        assert_eq!(check(&r, &parts("GET", &[])), Ok(()));
        assert_eq!(
            check(&r, &parts("DELETE", &[])),
            Err(ProxyError::MethodNotAllowed("DELETE".into()))
        );
        assert_eq!(check(&route(&[], &[], 10), &parts("DELETE", &[])), Ok(()));
    }

    #[test]
    fn declared_body_size() {
        let r = route(&[], &[], 10);
        assert_eq!(check(&r, &parts("POST", &[("content-length", "10")])), Ok(()));
        assert_eq!(
            check(&r, &parts("POST", &[("content-length", "11")])),
            Err(ProxyError::BodyTooLarge(10))
        );
        assert!(matches!(
            check(&r, &parts("POST", &[("content-length", "ten")])),
            Err(ProxyError::BadRequest(_))
        ));
    }

    #[test]
    fn content_types_apply_to_bodies_only() {
        let r = route(&[], &["application/sdp", "application/json"], 100);
        let ok = parts("POST", &[("content-length", "5"), ("content-type", "Application/SDP")]);
        assert_eq!(check(&r, &ok), Ok(()));
        let with_params = parts(
            "POST",
            &[
                ("content-length", "5"),
                ("content-type", "application/json; charset=utf-8"),
            ],
        );
        assert_eq!(check(&r, &with_params), Ok(()));
        let bad = parts(
            "POST",
            &[("transfer-encoding", "chunked"), ("content-type", "text/plain")],
        );
        assert_eq!(
            check(&r, &bad),
            Err(ProxyError::UnsupportedMediaType("text/plain".into()))
        );
        assert_eq!(check(&r, &parts("GET", &[])), Ok(()));
    }
}
