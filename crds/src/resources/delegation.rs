//! `KeygateDelegation`: which namespaces may claim which hosts and path prefixes. Cluster-scoped,
//! so the platform team owns it and app teams (who hold only namespaced rights) cannot edit it.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::NamespaceSelector;
use super::route::{HOSTS_MESSAGE, HOSTS_RULE};

/// Hosts and path prefixes that routes in some namespaces may claim. With no delegation in the
/// cluster any route may claim anything (the older claim wins); once there is one, a route is
/// served only where a delegation covering its namespace grants its hosts and its prefix.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "keygate.dev",
    version = "v1alpha1",
    kind = "KeygateDelegation",
    cel,
    shortname = "kgdelegation",
    category = "keygate",
    doc = "Which namespaces may claim which hosts and path prefixes on Keygate; owned by the platform team.",
    printcolumn = r#"{"name":"Namespaces","type":"string","jsonPath":".spec.namespaces"}"#,
    printcolumn = r#"{"name":"Hosts","type":"string","jsonPath":".spec.hosts"}"#,
    printcolumn = r#"{"name":"Prefixes","type":"string","jsonPath":".spec.pathPrefixes"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.namespaces) && size(self.namespaces) > 0) || has(self.namespaceSelector)").message("name the namespaces (namespaces) or select them (namespaceSelector)"))]
pub struct KeygateDelegationSpec {
    /// Namespaces this delegation is for, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 63)))]
    pub namespaces: Vec<String>,

    /// Namespaces this delegation is for, by label (in addition to `namespaces`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<NamespaceSelector>,

    /// Hosts those namespaces' routes may claim: exact names or `*.` wildcards (a wildcard grants
    /// every name below its domain, and narrower wildcards). Empty: any host, routes without
    /// `hosts` included; otherwise a route without `hosts` (which claims every host) is refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253)))]
    #[x_kube(validation = Rule::new(HOSTS_RULE).message(HOSTS_MESSAGE))]
    pub hosts: Vec<String>,

    /// Path prefixes those routes may claim, each with everything below it at a `/` boundary
    /// (`/shop` grants `/shop` and `/shop/api`, not `/shopping`). Empty: any prefix.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 1024)))]
    #[x_kube(validation = Rule::new("self.all(p, p.startsWith('/'))").message("pathPrefixes entries must start with '/', e.g. /shop"))]
    pub path_prefixes: Vec<String>,
}
