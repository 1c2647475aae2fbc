//! `ExternalAllowlist`: which destinations a client may name.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{SecretKeyRef, Status};

/// Destinations a client may name in a header: host names or `*.domain` patterns, ports and
/// schemes. Names that resolve to private addresses are refused unless `allowCidrs` admits them.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "keygate.dev",
    version = "v1alpha1",
    kind = "ExternalAllowlist",
    namespaced,
    cel,
    status = "Status",
    shortname = "kgallow",
    category = "keygate",
    doc = "External destinations a client may name, checked against host patterns, ports, schemes and private ranges.",
    printcolumn = r#"{"name":"Header","type":"string","jsonPath":".spec.targetUrlHeader"}"#,
    printcolumn = r#"{"name":"Hosts","type":"string","jsonPath":".spec.hosts"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ExternalAllowlistSpec {
    /// Request header in which the client names the destination base URL. Default `X-Target-URL`.
    #[serde(default = "default_target_header")]
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new(concat!("self.matches('", token_re!(), "')")).message("targetUrlHeader must be an HTTP header name"))]
    pub target_url_header: String,
    /// Allowed host names: exact (`api.example.com`) or one wildcard label in front
    /// (`*.example.com`, matching one or more labels). No IP literals, no bare TLDs.
    #[schemars(length(min = 1, max = 256), inner(length(min = 1, max = 253)))]
    #[x_kube(validation = Rule::new("self.all(h, h.matches('^(\\\\*\\\\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\\\\.)+[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'))").message("hosts entries must be lower-case DNS names with at least two labels, optionally starting with '*.', e.g. api.example.com or *.example.com"))]
    #[x_kube(validation = Rule::new("self.all(h, !h.matches('^(\\\\*\\\\.)?[0-9.]+$') && !h.matches('^(\\\\*\\\\.)?.*\\\\.[0-9]+$'))").message("hosts entries must be DNS names, not IP addresses"))]
    pub hosts: Vec<String>,
    /// Allowed ports. Default `[443]`.
    #[serde(default = "default_ports")]
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = Rule::new("self.all(p, p >= 1 && p <= 65535)").message("ports must be between 1 and 65535"))]
    pub ports: Vec<i64>,
    /// Allowed schemes. Default `[https]`.
    #[serde(default = "default_schemes")]
    #[schemars(length(min = 1, max = 2))]
    pub schemes: Vec<Scheme>,
    /// Lowest TLS version accepted from the destination. Default `1.2`.
    #[serde(default)]
    pub min_tls: TlsVersion,
    /// PEM bundle of extra CA certificates trusted for these destinations (private CAs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<SecretKeyRef>,
    /// Address ranges (CIDR) allowed even though they are private, e.g. for an internal API.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 64)))]
    #[x_kube(validation = Rule::new("self.all(c, isCIDR(c))").message("allowCidrs entries must be CIDRs like 10.1.0.0/16 or fd00::/64"))]
    pub allow_cidrs: Vec<String>,
    /// Which namespaces' routes may reference this resource (as `namespace/name`). Default:
    /// only its own. The resource's Secrets stay in its own namespace whoever references it, so
    /// sharing never hands a Secret to another namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_namespaces: Option<super::common::AllowedNamespaces>,
}

fn default_target_header() -> String {
    "X-Target-URL".into()
}
fn default_ports() -> Vec<i64> {
    vec![443]
}
fn default_schemes() -> Vec<Scheme> {
    vec![Scheme::Https]
}

/// A URL scheme.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// TLS.
    Https,
    /// Cleartext; only for destinations inside a trusted network.
    Http,
}

/// A TLS protocol version.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
pub enum TlsVersion {
    /// TLS 1.2 or newer.
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3 only.
    #[serde(rename = "1.3")]
    Tls13,
}
