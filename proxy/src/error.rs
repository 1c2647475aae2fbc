//! The one place proxy failures become responses: every stage returns a [`ProxyError`], and
//! [`ProxyError::into_response`] turns it into `{"proxy_error": {"code", "message", "route"}}`
//! with the fitting status. Messages are fixed sentences or carry only non-secret facts.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};

use crate::body::Body;
use crate::pipeline::chain;

/// Why the proxy answered instead of the upstream.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ProxyError {
    /// No config has been loaded yet.
    #[error("the proxy has not loaded a configuration yet")]
    NotReady,
    /// No route's prefix matches the path.
    #[error("no route matches this path")]
    RouteNotFound,
    /// The route does not accept the method.
    #[error("method {0} is not allowed on this route")]
    MethodNotAllowed(String),
    /// The route does not accept the request's content type.
    #[error("content type {0:?} is not accepted on this route")]
    UnsupportedMediaType(String),
    /// The request body is larger than the route's `bodyLimit`.
    #[error("request body exceeds the route's limit of {0} bytes")]
    BodyTooLarge(u64),
    /// The request cannot be forwarded as sent.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// The route's destination kind is not served by this build.
    #[error("{0}")]
    NotImplemented(&'static str),
    /// Opening the upstream connection took longer than the route's connect timeout.
    #[error("connecting to the upstream timed out")]
    UpstreamConnectTimeout,
    /// The upstream sent no response headers within the route's request timeout.
    #[error("the upstream did not answer in time")]
    UpstreamTimeout,
    /// The upstream could not be reached.
    #[error("the upstream could not be reached")]
    UpstreamUnavailable,
    /// The TLS handshake with the upstream failed (certificate, name or version).
    #[error("TLS to the upstream failed: {0}")]
    UpstreamTls(String),
    /// The upstream broke the protocol or closed the connection mid-answer.
    #[error("the upstream failed while answering")]
    BadGateway,
    /// A session-chain request without a session id header.
    #[error("the request carries no session id; create a session first")]
    InvalidSession,
    /// The session id is unknown or its session expired.
    #[error("the session is unknown or has expired; create a new session")]
    SessionTimeOut,
    /// The request id header is missing or not 64 hex characters.
    #[error("the request id must be 64 hex characters: SHA-256 of the previous link")]
    InvalidRequestId,
    /// The request id is not the session's next link: a replay, a copied request, or a lost race.
    #[error("the request id is not the next link of this session; create a new session and retry once")]
    RequestOutOfSession,
    /// The API key is missing, unknown, or belongs to another app than the session's.
    #[error("the API key is missing or not valid here")]
    InvalidApiKey,
    /// The session or rate-limit store cannot be reached.
    #[error("the session store is unavailable; retry later")]
    SessionStoreUnavailable,
    /// The route's rate limit is exhausted for this caller; retry after this many seconds.
    #[error("rate limit exceeded; retry after {0} s")]
    RateLimited(u64),
    /// A failure after the session chain advanced: the client must move to the next link even
    /// though the request failed, so the answer says so (`x-keygate-chain: advanced`).
    #[error("{0}")]
    ChainAdvanced(Box<ProxyError>),
}

impl ProxyError {
    /// The stable machine-readable code in `proxy_error.code`.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::NotReady => "NOT_READY",
            ProxyError::RouteNotFound => "ROUTE_NOT_FOUND",
            ProxyError::MethodNotAllowed(_) => "METHOD_NOT_ALLOWED",
            ProxyError::UnsupportedMediaType(_) => "UNSUPPORTED_MEDIA_TYPE",
            ProxyError::BodyTooLarge(_) => "BODY_TOO_LARGE",
            ProxyError::BadRequest(_) => "BAD_REQUEST",
            ProxyError::NotImplemented(_) => "NOT_IMPLEMENTED",
            ProxyError::UpstreamConnectTimeout => "UPSTREAM_CONNECT_TIMEOUT",
            ProxyError::UpstreamTimeout => "UPSTREAM_TIMEOUT",
            ProxyError::UpstreamUnavailable => "UPSTREAM_UNAVAILABLE",
            ProxyError::UpstreamTls(_) => "UPSTREAM_TLS",
            ProxyError::BadGateway => "BAD_GATEWAY",
            ProxyError::InvalidSession => "INVALID_SESSION",
            ProxyError::SessionTimeOut => "SESSION_TIME_OUT",
            ProxyError::InvalidRequestId => "INVALID_REQUEST_ID",
            ProxyError::RequestOutOfSession => "REQUEST_OUT_OF_SESSION",
            ProxyError::InvalidApiKey => "INVALID_API_KEY",
            ProxyError::SessionStoreUnavailable => "SESSION_STORE_UNAVAILABLE",
            ProxyError::RateLimited(_) => "RATE_LIMITED",
            ProxyError::ChainAdvanced(inner) => inner.code(),
        }
    }

    /// The HTTP status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NotReady => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::RouteNotFound => StatusCode::NOT_FOUND,
            ProxyError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ProxyError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ProxyError::UpstreamConnectTimeout | ProxyError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::UpstreamUnavailable | ProxyError::UpstreamTls(_) | ProxyError::BadGateway => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::InvalidSession
            | ProxyError::SessionTimeOut
            | ProxyError::InvalidRequestId
            | ProxyError::RequestOutOfSession
            | ProxyError::InvalidApiKey => StatusCode::UNAUTHORIZED,
            ProxyError::SessionStoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::ChainAdvanced(inner) => inner.status(),
        }
    }

    /// The JSON error response. `route` is the matched route's id, when there is one.
    pub fn into_response(self, route: Option<&str>) -> Response<Body> {
        if let ProxyError::ChainAdvanced(inner) = self {
            let mut resp = inner.into_response(route);
            resp.headers_mut()
                .insert(chain::ADVANCED_HEADER, HeaderValue::from_static(chain::ADVANCED));
            return resp;
        }
        let body = serde_json::json!({
            "proxy_error": {
                "code": self.code(),
                "message": self.to_string(),
                "route": route,
            }
        });
        let mut resp = Response::new(
            Full::new(Bytes::from(body.to_string()))
                .map_err(|never| match never {})
                .boxed(),
        );
        *resp.status_mut() = self.status();
        let headers = resp.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if matches!(self, ProxyError::BodyTooLarge(_)) {
            // The rest of an oversized body is not worth reading: ask the client to reconnect.
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let ProxyError::RateLimited(seconds) = self {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn error_body_is_the_proxy_error_shape() {
        let resp = ProxyError::UpstreamTimeout.into_response(Some("default/api"));
        assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["proxy_error"]["code"], "UPSTREAM_TIMEOUT");
        assert_eq!(json["proxy_error"]["route"], "default/api");
        assert!(json["proxy_error"]["message"].as_str().unwrap().contains("in time"));
    }

    #[tokio::test]
    async fn unmatched_requests_have_a_null_route() {
        let resp = ProxyError::RouteNotFound.into_response(None);
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["proxy_error"]["code"], "ROUTE_NOT_FOUND");
        assert!(json["proxy_error"]["route"].is_null());
    }
}
