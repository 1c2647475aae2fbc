//! `ProxyRoute`: one path prefix on the proxy, where it goes and what happens on the way.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{SecretKeyRef, SecretRef, Status};

/// A path prefix on the Keygate proxy and the upstream it forwards to: headers injected from
/// Secrets, limits, CORS, CSRF, authentication, and references to the other Keygate resources.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "keygate.dev",
    version = "v1alpha1",
    kind = "ProxyRoute",
    namespaced,
    cel,
    status = "Status",
    shortname = "kgroute",
    category = "keygate",
    doc = "A path prefix on the Keygate proxy, the upstream it forwards to, and what happens on the way.",
    printcolumn = r#"{"name":"Hosts","type":"string","jsonPath":".spec.hosts"}"#,
    printcolumn = r#"{"name":"Prefix","type":"string","jsonPath":".spec.pathPrefix"}"#,
    printcolumn = r#"{"name":"Upstream","type":"string","jsonPath":".spec.upstream"}"#,
    printcolumn = r#"{"name":"Auth","type":"string","jsonPath":".spec.auth"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.upstream) != has(self.allowlistRef)").message("set exactly one of upstream (a fixed destination) or allowlistRef (the client names the destination)"))]
#[x_kube(validation = Rule::new("self.auth != 'cookie' || has(self.cookieTranslationRef)").message("auth: cookie needs cookieTranslationRef"))]
#[x_kube(validation = Rule::new("self.auth != 'apiKey' || has(self.apiKey)").message("auth: apiKey needs the apiKey block (header and keysSecretRef)"))]
#[x_kube(validation = Rule::new("self.auth != 'sessionChain' || has(self.sessionChainRef)").message("auth: sessionChain needs sessionChainRef"))]
pub struct ProxyRouteSpec {
    /// Host names this route serves: exact (`api.example.com`) or a wildcard over every name
    /// below a domain (`*.example.com` matches `a.example.com` and `a.b.example.com`, not
    /// `example.com`). Case-insensitive; the request's port is ignored. A request is matched on
    /// host first (exact before wildcard, longer wildcard before shorter), then on the longest
    /// prefix; routes without `hosts` serve any host and take what no host-specific route does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 253)))]
    #[x_kube(validation = Rule::new(HOSTS_RULE).message(HOSTS_MESSAGE))]
    pub hosts: Vec<String>,

    /// Requests whose path starts with this prefix (at a `/` boundary) take this route; the
    /// longest matching prefix wins. Defaults to `/<namespace>/<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(validation = Rule::new("self.startsWith('/')").message("pathPrefix must start with '/', e.g. /api/payments"))]
    #[x_kube(validation = Rule::new("!self.contains('//') && !self.matches('^.*/[.][.]?(/.*)?$') && !self.contains('?') && !self.contains('#') && !self.contains('%') && !self.contains('\\\\')").message("pathPrefix must be a plain path as requests are routed after normalization: no '//', '.' or '..' segments, '%' escapes, backslashes, '?' or '#'"))]
    pub path_prefix: Option<String>,

    /// HTTP methods the route accepts; others get 405. Empty means all methods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 9))]
    pub methods: Vec<HttpMethod>,

    /// Fixed destination: an absolute http(s) base URL. The request's remaining path and query
    /// are appended to it. Exclusive with `allowlistRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("self.matches('^https?://[^/?#@\\\\\\\\ ]+(/[^?# ]*)?$')").message("upstream must be an absolute http:// or https:// URL without userinfo, query or fragment, e.g. https://api.example.com/v1"))]
    pub upstream: Option<String>,

    /// Name of an `ExternalAllowlist` in this namespace: the client names the destination in the
    /// allowlist's header and Keygate checks it. Exclusive with `upstream`.
    /// `namespace/name` names one shared from another namespace (its `allowedNamespaces` must
    /// admit this one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 317))]
    pub allowlist_ref: Option<String>,

    /// Remove `pathPrefix` from the path before appending it to the upstream URL. Default true.
    #[serde(default = "default_true")]
    pub strip_prefix: bool,

    /// Serve paths that carry encoded slashes or backslashes (`%2F`, `%5C`, `\`), passing them
    /// to the upstream still encoded. Default false: such paths get `400 BAD_PATH`, because an
    /// upstream that decodes them sees other segments than the ones Keygate routed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_encoded_slashes: bool,

    /// Let WebSocket handshakes (`Upgrade: websocket` over HTTP/1.1) through: the handshake
    /// passes every check a request does (auth, CSRF/Origin, rate limit, session chain), then
    /// bytes flow both ways until either side closes. Default false: the upgrade headers are
    /// dropped and the request goes on as a plain one. The upstream hop must be HTTP/1.1.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub websocket: bool,

    /// Time limits for the upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,

    /// Largest request body accepted, in bytes; larger bodies get 413, also when chunked.
    /// Default 10485760 (10 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0").message("bodyLimit must be greater than 0 bytes"))]
    pub body_limit: Option<i64>,

    /// Request `Content-Type`s accepted (media type only, e.g. `application/json`,
    /// `application/sdp`); others get 415. Empty accepts any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 255)))]
    #[x_kube(validation = Rule::new("self.all(t, t.matches('^[a-zA-Z0-9!#$&^_.+-]+/[a-zA-Z0-9!#$&^_.+*-]+$'))").message("contentTypes entries must be media types like application/json, without parameters"))]
    pub content_types: Vec<String>,

    /// Headers added to every upstream request, replacing any the client sent under that name.
    /// Values come from Secrets (API keys never reach the browser) or are plain text.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub forward_headers: Vec<ForwardHeader>,

    /// Upstream response headers to pass to the browser under another name, e.g. `Location` as
    /// `X-WHIP-Resource`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub expose_headers: Vec<ExposeHeader>,

    /// Forward the browser's `Cookie` header and return upstream `Set-Cookie`. Default false:
    /// cookies stay between the browser and Keygate.
    #[serde(default)]
    pub cookie_passthrough: bool,

    /// TLS to the upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,

    /// Protocol to the upstream: `auto` (HTTP/2 when TLS ALPN offers it, else HTTP/1.1),
    /// `http1`, or `http2` (also over cleartext, with prior knowledge).
    #[serde(default)]
    pub upstream_protocol: UpstreamProtocol,

    /// Cross-origin rules; Keygate answers preflights itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<Cors>,

    /// CSRF protection for unsafe methods on cookie-authenticated routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csrf: Option<Csrf>,

    /// How callers authenticate: `none`, `cookie` (via `cookieTranslationRef`), `apiKey`, or
    /// `sessionChain` (via `sessionChainRef`).
    #[serde(default)]
    pub auth: AuthMode,

    /// API keys for `auth: apiKey`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<ApiKeyAuth>,

    /// Name of a `CookieTranslation` in this namespace: its cookie becomes the upstream's auth header.
    /// `namespace/name` names one shared from another namespace (its `allowedNamespaces` must
    /// admit this one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 317))]
    pub cookie_translation_ref: Option<String>,

    /// Name of a `SessionChainPolicy` in this namespace: requests must carry the next chain link.
    /// `namespace/name` names one shared from another namespace (its `allowedNamespaces` must
    /// admit this one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 317))]
    pub session_chain_ref: Option<String>,

    /// Names of `TokenVaultRule`s in this namespace whose `{{token}}` expressions are swapped here.
    /// `namespace/name` names one shared from another namespace (its `allowedNamespaces` must
    /// admit this one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 317)))]
    pub vault_rule_refs: Vec<String>,

    /// Request rate limit for this route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,

    /// Rewrites of the request before it goes upstream and of the answer before it goes back:
    /// ordered operations whose values are CEL expressions over `request` (and `response`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transform: Option<Transform>,
}

/// Ordered rewrites of a route's requests and answers. Expressions are CEL, evaluated with
/// `request` (`method`, `path`, `query`, `headers`, `body`) and, in `response` operations,
/// `response` (`status`, `headers`, `body`); CEL cannot loop or reach the network.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Transform {
    /// Applied in order to the request after inbound tokenization, before Keygate adds its own
    /// headers (secrets, translated cookies) and before `{{token}}` detokenization.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub request: Vec<TransformOp>,
    /// Applied in order to the answer after response tokenization and session start, just
    /// before it goes to the client.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub response: Vec<TransformOp>,
}

/// One rewrite: `setHeader` (`name`, `value`), `removeHeader` (`name`), `setJsonField`
/// (`pointer`, `value`), `removeJsonField` (`pointer`), `replaceJsonBody` (`value`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(self.op == 'setHeader' || self.op == 'removeHeader') == has(self.name)").message("name is the header of setHeader and removeHeader, and only of those"))]
#[x_kube(validation = Rule::new("(self.op == 'setJsonField' || self.op == 'removeJsonField') == has(self.pointer)").message("pointer is the JSON field of setJsonField and removeJsonField, and only of those"))]
#[x_kube(validation = Rule::new("(self.op == 'setHeader' || self.op == 'setJsonField' || self.op == 'replaceJsonBody') == has(self.value)").message("value (a CEL expression) is needed by setHeader, setJsonField and replaceJsonBody, and taken by no other operation"))]
pub struct TransformOp {
    /// What to do.
    pub op: TransformOpKind,
    /// Header name, for `setHeader` and `removeHeader`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new(concat!("self.matches('", token_re!(), "')")).message("name must be an HTTP header name"))]
    pub name: Option<String>,
    /// JSON pointer of the field, e.g. `/customer/id`, for `setJsonField` and `removeJsonField`.
    /// `setJsonField` creates missing objects on the way; `-` as the last token appends to an array.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 1024))]
    #[x_kube(validation = Rule::new("self.startsWith('/')").message("pointer must be a JSON pointer starting with '/', e.g. /customer/id"))]
    pub pointer: Option<String>,
    /// CEL expression giving the new value: a string (or number or bool) for a header, any JSON
    /// value for a field or the whole body. E.g. `request.headers['x-user'] + ':' + request.method`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub value: Option<String>,
}

/// A transform operation.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum TransformOpKind {
    /// Set a header to `value`, replacing any of that name.
    SetHeader,
    /// Remove every header of that name.
    RemoveHeader,
    /// Set the JSON body's field at `pointer` to `value`.
    SetJsonField,
    /// Remove the JSON body's field at `pointer`, if there is one.
    RemoveJsonField,
    /// Replace the whole body with `value` as JSON.
    ReplaceJsonBody,
}

impl TransformOpKind {
    /// The name as resources write it.
    pub fn as_str(self) -> &'static str {
        match self {
            TransformOpKind::SetHeader => "setHeader",
            TransformOpKind::RemoveHeader => "removeHeader",
            TransformOpKind::SetJsonField => "setJsonField",
            TransformOpKind::RemoveJsonField => "removeJsonField",
            TransformOpKind::ReplaceJsonBody => "replaceJsonBody",
        }
    }

    /// Whether the operation reads or writes the body, which then has to be buffered.
    pub fn touches_body(self) -> bool {
        !matches!(self, TransformOpKind::SetHeader | TransformOpKind::RemoveHeader)
    }
}

/// A DNS name of letters, digits and `-` labels, optionally behind one leading `*.`: ports,
/// paths, IP literals and a bare `*` are refused (one host name per entry, matched without port).
pub const HOSTS_RULE: &str = r"self.all(h, h.matches('^([*][.])?[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?([.][A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*[.]?$'))";
/// What a person reads when a `hosts` entry is malformed.
pub const HOSTS_MESSAGE: &str = "hosts entries must be DNS names like api.example.com or wildcards like *.example.com, without scheme, port or path (the request's port is ignored)";

fn default_true() -> bool {
    true
}

/// An HTTP method.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
    Options,
    Trace,
    Connect,
}

impl HttpMethod {
    /// The method as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpMethod::Get => "GET",
            HttpMethod::Head => "HEAD",
            HttpMethod::Post => "POST",
            HttpMethod::Put => "PUT",
            HttpMethod::Patch => "PATCH",
            HttpMethod::Delete => "DELETE",
            HttpMethod::Options => "OPTIONS",
            HttpMethod::Trace => "TRACE",
            HttpMethod::Connect => "CONNECT",
        }
    }
}

/// Time limits for the upstream.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Timeouts {
    /// Limit for opening the TCP (and TLS) connection, e.g. `5s`. Default `5s`. Exceeded: 504.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new(super::common::DURATION_RULE).message(super::common::DURATION_MESSAGE))]
    pub connect: Option<String>,
    /// Limit from sending the request to receiving the response headers, e.g. `30s`.
    /// Default `30s`. Exceeded: 504. Response bodies may stream for longer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new(super::common::DURATION_RULE).message(super::common::DURATION_MESSAGE))]
    pub request: Option<String>,
}

/// A header injected into upstream requests.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.value) != has(self.valueFrom)").message("set exactly one of value or valueFrom"))]
pub struct ForwardHeader {
    /// Header name, e.g. `x-api-key`.
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new(concat!("self.matches('", token_re!(), "')")).message("name must be an HTTP header name (letters, digits and !#$%&*+.^_`|~-)"))]
    pub name: String,
    /// Plain, non-secret value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8192))]
    pub value: Option<String>,
    /// Value read from a Secret key; it never appears in the ConfigMap, logs or status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<SecretKeyRef>,
}

/// An upstream response header passed to the browser, possibly renamed.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExposeHeader {
    /// Upstream header name, e.g. `Location`.
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new(concat!("self.matches('", token_re!(), "')")).message("name must be an HTTP header name"))]
    pub name: String,
    /// Name the browser sees, e.g. `X-WHIP-Resource`. Default: unchanged.
    #[serde(default, rename = "as", skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new(concat!("self.matches('", token_re!(), "')")).message("as must be an HTTP header name"))]
    pub rename: Option<String>,
}

/// TLS settings for the upstream connection.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamTls {
    /// PEM bundle of CA certificates trusted for this upstream in addition to the public roots,
    /// for upstreams behind a private CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<SecretKeyRef>,
}

/// Protocol spoken to the upstream.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum UpstreamProtocol {
    /// HTTP/2 when the TLS handshake's ALPN picks it, HTTP/1.1 otherwise.
    #[default]
    Auto,
    /// Always HTTP/1.1.
    Http1,
    /// Always HTTP/2 (prior knowledge on cleartext).
    Http2,
}

/// How callers of a route authenticate.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AuthMode {
    /// Anyone may call the route.
    #[default]
    None,
    /// The `CookieTranslation` cookie is required.
    Cookie,
    /// An API key from `apiKey.keysSecretRef` is required.
    ApiKey,
    /// A valid session-chain link (see `SessionChainPolicy`) is required.
    SessionChain,
}

/// API-key authentication.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyAuth {
    /// Request header carrying the key. Default `x-api-key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new(concat!("self.matches('", token_re!(), "')")).message("header must be an HTTP header name"))]
    pub header: Option<String>,
    /// Secret whose keys are app names and whose values are that app's API keys (one per line
    /// for rotation). Keygate keeps only their SHA-256 hashes.
    pub keys_secret_ref: SecretRef,
}

/// Cross-origin resource sharing for a route.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(self.allowCredentials && self.allowOrigins.exists(o, o == '*'))").message("allowCredentials cannot be combined with origin '*': list the origins"))]
pub struct Cors {
    /// Exact origins (`https://app.example.com`), suffix patterns (`https://*.example.com`), or `*`.
    #[schemars(length(min = 1, max = 64), inner(length(min = 1, max = 512)))]
    #[x_kube(validation = Rule::new("self.all(o, o == '*' || o.matches('^https?://(\\\\*\\\\.)?[A-Za-z0-9.-]+(:[0-9]{1,5})?$'))").message("allowOrigins entries must be '*', scheme://host[:port] or scheme://*.domain, without a path"))]
    pub allow_origins: Vec<String>,
    /// Methods allowed cross-origin. Default: the route's methods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 9))]
    pub allow_methods: Vec<HttpMethod>,
    /// Request headers allowed cross-origin, in addition to those Keygate itself needs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 256)))]
    #[x_kube(validation = Rule::new(concat!("self.all(h, h.matches('", token_re!(), "'))")).message("allowHeaders entries must be HTTP header names"))]
    pub allow_headers: Vec<String>,
    /// Response headers the browser may read, in addition to renamed `exposeHeaders`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 256)))]
    #[x_kube(validation = Rule::new(concat!("self.all(h, h.matches('", token_re!(), "'))")).message("exposeHeaders entries must be HTTP header names"))]
    pub expose_headers: Vec<String>,
    /// Allow cookies on cross-origin requests.
    #[serde(default)]
    pub allow_credentials: bool,
    /// How long browsers may cache a preflight, in seconds. Default 600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 86400").message("maxAgeSeconds must be between 0 and 86400"))]
    pub max_age_seconds: Option<i64>,
}

/// CSRF protection for unsafe methods.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.mode != 'header' || has(self.headerName)").message("mode: header needs headerName (and optionally headerValue)"))]
pub struct Csrf {
    /// `doubleSubmit`: the request echoes the readable CSRF cookie in `X-CSRF-Token`;
    /// `header`: a fixed custom header must be present.
    pub mode: CsrfMode,
    /// Header for `header` mode, e.g. `x-csrf`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new(concat!("self.matches('", token_re!(), "')")).message("headerName must be an HTTP header name"))]
    pub header_name: Option<String>,
    /// Required value for `header` mode; any value when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub header_value: Option<String>,
    /// Also require `Origin` (or `Referer`) to be one of the CORS origins or the proxy's own. Default true.
    #[serde(default = "default_true")]
    pub check_origin: bool,
}

/// CSRF protection mode.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum CsrfMode {
    /// Double-submit cookie echoed in `X-CSRF-Token`.
    DoubleSubmit,
    /// A fixed custom header.
    Header,
}

/// Token-bucket rate limit.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Sustained requests per second.
    #[x_kube(validation = Rule::new("self > 0").message("requestsPerSecond must be greater than 0"))]
    pub requests_per_second: i64,
    /// Requests allowed in a burst above the sustained rate. Default: `requestsPerSecond`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0").message("burst must be greater than 0"))]
    pub burst: Option<i64>,
    /// What one bucket counts: `route` (all callers together), `client` (per client address),
    /// `app` (per API-key app) or `session` (per session chain).
    #[serde(default)]
    pub per: RateLimitKey,
}

/// What one rate-limit bucket counts.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum RateLimitKey {
    /// All callers of the route share one bucket.
    #[default]
    Route,
    /// One bucket per client address.
    Client,
    /// One bucket per API-key app.
    App,
    /// One bucket per session.
    Session,
}
