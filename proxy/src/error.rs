//! The one place proxy failures become responses: every stage returns a [`ProxyError`], and
//! [`ProxyError::into_response`] turns it into `{"proxy_error": {"code", "message", "route"}}`
//! with the fitting status. Messages are fixed sentences or carry only non-secret facts.

use http::{HeaderValue, Response, StatusCode, header};

use crate::body::{Body, ReadError, full};
use crate::pipeline::chain;

/// [`keygate_crds::snapshot::ERROR_HEADER`]: every error Keygate answers carries its code there.
pub const ERROR_HEADER: http::HeaderName = http::HeaderName::from_static(keygate_crds::snapshot::ERROR_HEADER);

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
    /// The path has a spelling Keygate refuses to forward (see `pipeline::path`).
    #[error("bad path: {0}")]
    BadPath(&'static str),
    /// The request body stopped arriving before the upstream answered.
    #[error("the request body stopped arriving for more than {0} s")]
    RequestTimeout(u64),
    /// The request carries more header fields than Keygate accepts.
    #[error("the request carries more than {0} header fields")]
    TooManyHeaders(usize),
    /// The path is longer than Keygate serves.
    #[error("the path is longer than {0} bytes")]
    PathTooLong(usize),
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
    /// A CORS preflight asked for something the route does not allow.
    #[error("CORS preflight refused: {0}")]
    CorsRejected(&'static str),
    /// The route needs the session cookie and the request has none.
    #[error("this route needs a session; sign in first")]
    SessionRequired,
    /// The session cookie was altered, or was sealed under a key no longer configured.
    #[error("the session cookie is not valid; sign in again")]
    SessionInvalid,
    /// The session the cookie names is no longer held by the proxy.
    #[error("the session has expired; sign in again")]
    SessionExpired,
    /// The login answer could not become a session cookie.
    #[error("session start failed: {0}")]
    SessionStartFailed(String),
    /// No API key, or one that belongs to no app.
    #[error("the API key is missing or not valid")]
    InvalidApiKey,
    /// A CSRF check failed.
    #[error("CSRF check failed: {0}")]
    CsrfFailed(&'static str),
    /// The store holding sessions or tokens cannot be reached.
    #[error("the session store is unavailable; try again shortly")]
    StoreUnavailable,
    /// The route takes its destination from a header the request did not send.
    #[error("this route needs the destination base URL in the {0} header, e.g. {0}: https://api.example.com/v1")]
    DestinationMissing(String),
    /// The named destination is not a URL Keygate accepts.
    #[error("the destination URL is invalid: {0}")]
    DestinationInvalid(&'static str),
    /// The named destination is well-formed, but the route's allowlist does not admit it.
    #[error("the destination is not allowed: {0}")]
    DestinationNotAllowed(String),
    /// The destination's host resolves to an address the allowlist does not allow.
    #[error("the destination host {0} resolves to a private, loopback or otherwise refused address")]
    DestinationResolvesPrivate(String),
    /// The route has a fixed upstream, yet the request names a destination.
    #[error("this route's destination is fixed; remove the {0} header")]
    DestinationFixed(String),
    /// A `{{ ... }}` expression does not follow the grammar.
    #[error("malformed token expression in the {place}: {reason}")]
    InvalidExpression {
        /// Where, with the byte offset: `body at byte 12`.
        place: String,
        /// What was expected.
        reason: &'static str,
    },
    /// More expressions than the route's vault rules allow.
    #[error("the request carries more than {0} token expressions")]
    TooManyTokens(usize),
    /// An expression names a token no vault rule of the route holds.
    #[error("no token for the expression in the {0}: it does not exist or has expired")]
    TokenNotFound(String),
    /// The token's classification may not be detokenized there on this route.
    #[error("a token of classification {classification} may not be detokenized in the {place}")]
    TokenNotPermitted {
        /// The token's classification (never its data).
        classification: String,
        /// Where: `header x-card at byte 0`.
        place: String,
    },
    /// The token store cannot be reached.
    #[error("the token vault is unavailable")]
    VaultUnavailable,
    /// The tokenize endpoint may not create tokens of this classification.
    #[error("this classification may not be tokenized here: use one the vault rule permits")]
    ClassificationNotAllowed,
    /// A JSON answer Keygate must rewrite (tokenize, transform) is larger than it buffers.
    #[error("the upstream's JSON answer exceeds {0} bytes, more than Keygate reads to tokenize or transform it")]
    ResponseTooLarge(u64),
    /// A JSON answer whose fields must be tokenized cannot be read.
    #[error("the upstream's answer cannot be tokenized: {0}")]
    ResponseNotTokenizable(&'static str),
    /// The route tokenizes request fields, and the body cannot be read as its content type says.
    #[error("the request body cannot be tokenized: {0}")]
    RequestNotTokenizable(&'static str),
    /// A transform operation failed at run time; nothing of the message was rewritten.
    #[error("{op} failed: {reason}")]
    TransformFailed {
        /// Whether it was an answer operation (502) rather than a request one (400).
        answer: bool,
        /// The operation: `transform.request[1] (setHeader x-user)`.
        op: String,
        /// Why, without any value.
        reason: &'static str,
    },
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
    /// On a `proof: signature` chain, the signature is missing, malformed, or not by the
    /// session's key over this method, path, body and link.
    #[error("the x-keygate-signature header is missing or does not verify with this session's key")]
    InvalidSignature,
    /// The route's rate limit is exhausted for this caller; retry after this many seconds.
    #[error("rate limit exceeded; retry after {0} s")]
    RateLimited(u64),
    /// A failure after the session chain advanced: the client must move to the next link even
    /// though the request failed, so the answer says so (`x-keygate-chain: advanced`).
    #[error("{0}")]
    ChainAdvanced(Box<ProxyError>),
}

/// A store failure reaches the client as 503; the cause is logged by the stage, with no key.
impl From<crate::store::StoreError> for ProxyError {
    fn from(e: crate::store::StoreError) -> Self {
        tracing::warn!(error = %e, "store operation failed");
        ProxyError::StoreUnavailable
    }
}

impl ProxyError {
    /// A client's request body that could not be buffered.
    pub fn request_body(e: ReadError) -> ProxyError {
        match e {
            ReadError::TooLarge(limit) => ProxyError::BodyTooLarge(limit),
            ReadError::Failed(_) => ProxyError::BadRequest("the request body could not be read"),
        }
    }

    /// An upstream's answer body that could not be buffered: the upstream's failure, not the
    /// client's.
    pub fn response_body(e: ReadError) -> ProxyError {
        match e {
            ReadError::TooLarge(limit) => ProxyError::ResponseTooLarge(limit),
            ReadError::Failed(_) => ProxyError::BadGateway,
        }
    }

    /// The stable machine-readable code in `proxy_error.code`.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::NotReady => "NOT_READY",
            ProxyError::RouteNotFound => "ROUTE_NOT_FOUND",
            ProxyError::MethodNotAllowed(_) => "METHOD_NOT_ALLOWED",
            ProxyError::UnsupportedMediaType(_) => "UNSUPPORTED_MEDIA_TYPE",
            ProxyError::BodyTooLarge(_) => "BODY_TOO_LARGE",
            ProxyError::BadRequest(_) => "BAD_REQUEST",
            ProxyError::BadPath(_) => "BAD_PATH",
            ProxyError::PathTooLong(_) => "PATH_TOO_LONG",
            ProxyError::RequestTimeout(_) => "REQUEST_TIMEOUT",
            ProxyError::TooManyHeaders(_) => "TOO_MANY_HEADERS",
            ProxyError::UpstreamConnectTimeout => "UPSTREAM_CONNECT_TIMEOUT",
            ProxyError::UpstreamTimeout => "UPSTREAM_TIMEOUT",
            ProxyError::UpstreamUnavailable => "UPSTREAM_UNAVAILABLE",
            ProxyError::UpstreamTls(_) => "UPSTREAM_TLS",
            ProxyError::BadGateway => "BAD_GATEWAY",
            ProxyError::CorsRejected(_) => "CORS_REJECTED",
            ProxyError::SessionRequired => "SESSION_REQUIRED",
            ProxyError::SessionInvalid => "SESSION_INVALID",
            ProxyError::SessionExpired => "SESSION_EXPIRED",
            ProxyError::SessionStartFailed(_) => "SESSION_START_FAILED",
            ProxyError::InvalidApiKey => "INVALID_API_KEY",
            ProxyError::CsrfFailed(_) => "CSRF_FAILED",
            ProxyError::StoreUnavailable => "SESSION_STORE_UNAVAILABLE",
            ProxyError::DestinationMissing(_) => "DESTINATION_MISSING",
            ProxyError::DestinationInvalid(_) => "DESTINATION_INVALID",
            ProxyError::DestinationNotAllowed(_) => "DESTINATION_NOT_ALLOWED",
            ProxyError::DestinationResolvesPrivate(_) => "DESTINATION_RESOLVES_PRIVATE",
            ProxyError::DestinationFixed(_) => "DESTINATION_FIXED",
            ProxyError::InvalidExpression { .. } => "INVALID_EXPRESSION",
            ProxyError::TooManyTokens(_) => "TOO_MANY_TOKENS",
            ProxyError::TokenNotFound(_) => "TOKEN_NOT_FOUND",
            ProxyError::TokenNotPermitted { .. } => "TOKEN_NOT_PERMITTED",
            ProxyError::VaultUnavailable => "VAULT_UNAVAILABLE",
            ProxyError::ClassificationNotAllowed => "CLASSIFICATION_NOT_ALLOWED",
            ProxyError::ResponseTooLarge(_) => "RESPONSE_TOO_LARGE",
            ProxyError::ResponseNotTokenizable(_) => "RESPONSE_NOT_TOKENIZABLE",
            ProxyError::RequestNotTokenizable(_) => "REQUEST_NOT_TOKENIZABLE",
            ProxyError::TransformFailed { .. } => "TRANSFORM_FAILED",
            ProxyError::InvalidSession => "INVALID_SESSION",
            ProxyError::SessionTimeOut => "SESSION_TIME_OUT",
            ProxyError::InvalidRequestId => "INVALID_REQUEST_ID",
            ProxyError::RequestOutOfSession => "REQUEST_OUT_OF_SESSION",
            ProxyError::InvalidSignature => "INVALID_SIGNATURE",
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
            ProxyError::BadRequest(_) | ProxyError::BadPath(_) => StatusCode::BAD_REQUEST,
            ProxyError::PathTooLong(_) => StatusCode::URI_TOO_LONG,
            ProxyError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ProxyError::TooManyHeaders(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::UpstreamConnectTimeout | ProxyError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::UpstreamUnavailable
            | ProxyError::UpstreamTls(_)
            | ProxyError::BadGateway
            | ProxyError::SessionStartFailed(_) => StatusCode::BAD_GATEWAY,
            ProxyError::CorsRejected(_) | ProxyError::CsrfFailed(_) => StatusCode::FORBIDDEN,
            ProxyError::SessionRequired
            | ProxyError::SessionInvalid
            | ProxyError::SessionExpired
            | ProxyError::InvalidApiKey => StatusCode::UNAUTHORIZED,
            ProxyError::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::DestinationMissing(_) | ProxyError::DestinationInvalid(_) | ProxyError::DestinationFixed(_) => {
                StatusCode::BAD_REQUEST
            }
            ProxyError::DestinationNotAllowed(_) | ProxyError::DestinationResolvesPrivate(_) => StatusCode::FORBIDDEN,
            ProxyError::InvalidExpression { .. } | ProxyError::TooManyTokens(_) | ProxyError::TokenNotFound(_) => {
                StatusCode::BAD_REQUEST
            }
            ProxyError::TokenNotPermitted { .. } | ProxyError::ClassificationNotAllowed => StatusCode::FORBIDDEN,
            ProxyError::VaultUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::ResponseTooLarge(_) | ProxyError::ResponseNotTokenizable(_) => StatusCode::BAD_GATEWAY,
            ProxyError::RequestNotTokenizable(_) => StatusCode::BAD_REQUEST,
            ProxyError::TransformFailed { answer: false, .. } => StatusCode::BAD_REQUEST,
            ProxyError::TransformFailed { answer: true, .. } => StatusCode::BAD_GATEWAY,
            ProxyError::InvalidSession
            | ProxyError::SessionTimeOut
            | ProxyError::InvalidRequestId
            | ProxyError::RequestOutOfSession
            | ProxyError::InvalidSignature => StatusCode::UNAUTHORIZED,
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
        let mut resp = Response::new(full(body.to_string()));
        *resp.status_mut() = self.status();
        let headers = resp.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        // The code in a header too, so a client (or a page on another origin, where it is
        // exposed) tells errors apart without reading the body, which may be streamed elsewhere.
        headers.insert(ERROR_HEADER, HeaderValue::from_static(self.code()));
        if matches!(self, ProxyError::BodyTooLarge(_) | ProxyError::RequestTimeout(_)) {
            // The rest of the body is not worth waiting for: ask the client to reconnect.
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
    use http_body_util::BodyExt;

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

    #[test]
    fn every_error_names_its_code_in_a_header() {
        for e in [
            ProxyError::RouteNotFound,
            ProxyError::InvalidSignature,
            ProxyError::RateLimited(3),
            ProxyError::ChainAdvanced(Box::new(ProxyError::UpstreamTimeout)),
        ] {
            let code = e.code();
            let resp = e.into_response(None);
            assert_eq!(resp.headers()[ERROR_HEADER], code);
        }
    }
}
