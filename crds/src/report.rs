//! How `compile()` tells each resource's story: one [`Report`] per resource, with the `Ready`
//! condition's reason taken from the constants here and the problems behind it.

use std::fmt;

/// The condition type Keygate writes on every resource.
pub const CONDITION_READY: &str = "Ready";

/// Reasons of the `Ready` condition.
pub mod reasons {
    /// Compiled and served.
    pub const ACCEPTED: &str = "Accepted";
    /// A field is invalid; the message names it.
    pub const INVALID: &str = "Invalid";
    /// A referenced Keygate resource does not exist or is not ready.
    pub const REF_NOT_FOUND: &str = "RefNotFound";
    /// A route claims a host or prefix no `KeygateDelegation` grants its namespace.
    pub const NOT_PERMITTED: &str = "NotPermitted";
    /// A reference into another namespace that the referenced resource does not admit.
    pub const REF_NOT_PERMITTED: &str = "RefNotPermitted";
    /// A referenced Secret or Secret key does not exist or is unusable.
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    /// Another resource already claims what this one claims.
    pub const CONFLICT: &str = "Conflict";
    /// The compiled configuration does not fit in a ConfigMap; nothing new is served.
    pub const SNAPSHOT_TOO_LARGE: &str = "SnapshotTooLarge";
}

/// The five kinds, plus Secrets and Namespaces (which only appear in parse problems).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `ProxyRoute`
    ProxyRoute,
    /// `CookieTranslation`
    CookieTranslation,
    /// `ExternalAllowlist`
    ExternalAllowlist,
    /// `TokenVaultRule`
    TokenVaultRule,
    /// `SessionChainPolicy`
    SessionChainPolicy,
    /// `KeygateDelegation` (cluster-scoped)
    KeygateDelegation,
    /// core `Secret`
    Secret,
    /// core `Namespace`, read for its labels
    Namespace,
}

impl Kind {
    /// The kind's name as in `kind:`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ProxyRoute => "ProxyRoute",
            Kind::CookieTranslation => "CookieTranslation",
            Kind::ExternalAllowlist => "ExternalAllowlist",
            Kind::TokenVaultRule => "TokenVaultRule",
            Kind::SessionChainPolicy => "SessionChainPolicy",
            Kind::KeygateDelegation => "KeygateDelegation",
            Kind::Secret => "Secret",
            Kind::Namespace => "Namespace",
        }
    }

    /// Whether this is a core (`v1`) kind rather than a Keygate one.
    pub fn is_core(self) -> bool {
        matches!(self, Kind::Secret | Kind::Namespace)
    }

    /// Parses a `kind:` value.
    pub fn from_kind(kind: &str) -> Option<Kind> {
        [
            Kind::ProxyRoute,
            Kind::CookieTranslation,
            Kind::ExternalAllowlist,
            Kind::TokenVaultRule,
            Kind::SessionChainPolicy,
            Kind::KeygateDelegation,
            Kind::Secret,
            Kind::Namespace,
        ]
        .into_iter()
        .find(|k| k.as_str() == kind)
    }
}

/// Identifies one resource.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    /// Its kind.
    pub kind: Kind,
    /// Its namespace (`default` when a manifest names none).
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Cluster-scoped kinds have no namespace to name.
        match self.namespace.as_str() {
            "" => write!(f, "{}/{}", self.kind.as_str(), self.name),
            ns => write!(f, "{}/{ns}/{}", self.kind.as_str(), self.name),
        }
    }
}

/// One thing wrong with a resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Path of the field, e.g. `spec.forwardHeaders[0].valueFrom`.
    pub field: String,
    /// What is wrong and how to fix it. Never holds a secret value.
    pub message: String,
}

/// The outcome for one resource: what its `Ready` condition says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// The resource.
    pub object: ObjectRef,
    /// Its `metadata.generation`, echoed as `observedGeneration`.
    pub generation: Option<i64>,
    /// One of [`reasons`].
    pub reason: &'static str,
    /// For a person; for a refused resource, every problem joined.
    pub message: String,
    /// Empty when the resource is served.
    pub problems: Vec<Problem>,
}

impl Report {
    /// Whether the resource is served.
    pub fn is_ready(&self) -> bool {
        self.problems.is_empty()
    }

    /// `kind/namespace/name: field: what is wrong`, one line per problem, as `check` prints them.
    pub fn problem_lines(&self) -> impl Iterator<Item = String> + '_ {
        self.problems
            .iter()
            .map(|p| format!("{}: {}: {}", self.object, p.field, p.message))
    }
}
