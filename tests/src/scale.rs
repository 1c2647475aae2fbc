//! A large, realistic configuration for the scale benchmark and tests: many teams (namespaces),
//! each with a cookie translation, an allowlist and routes that inject a header from their own
//! Secret and answer CORS for their own origin.

use std::fmt::Write;

/// Routes per namespace; the rest of a configuration scales with the route count.
pub const ROUTES_PER_NAMESPACE: usize = 100;

/// Namespace of route `i`.
pub fn namespace(i: usize) -> String {
    format!("team-{:03}", i / ROUTES_PER_NAMESPACE)
}

/// Name of route `i` (and of the Secret it injects from).
pub fn route_name(i: usize) -> String {
    format!("route-{i:05}")
}

/// The Secret route `i` injects from, as YAML, holding `value` under key `api-key`.
pub fn secret_yaml(i: usize, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {}-key, namespace: {}}}\nstringData:\n  api-key: {value}\n",
        route_name(i),
        namespace(i)
    )
}

/// Route `i`: every route injects `x-api-key` from its Secret and allows one origin; every
/// fourth authenticates by cookie through its namespace's CookieTranslation, every tenth lets the
/// client name its destination within the namespace's allowlist.
pub fn route_yaml(i: usize) -> String {
    let (ns, name) = (namespace(i), route_name(i));
    let mut y = format!(
        "apiVersion: keygate.dev/v1alpha1\nkind: ProxyRoute\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  pathPrefix: /{ns}/{name}\n"
    );
    if i % 10 == 9 {
        y.push_str("  allowlistRef: partners\n");
    } else {
        let _ = writeln!(y, "  upstream: https://api-{i}.internal.example/v1");
    }
    let _ = write!(
        y,
        "  methods: [GET, POST]\n  forwardHeaders:\n  - name: x-api-key\n    valueFrom: {{name: {name}-key, key: api-key}}\n  cors:\n    allowOrigins: ['https://app-{i}.example.com']\n    allowCredentials: true\n"
    );
    if i.is_multiple_of(4) {
        y.push_str("  auth: cookie\n  cookieTranslationRef: login\n  csrf: {mode: doubleSubmit}\n");
    }
    y
}

/// What each namespace shares: a cookie translation and an allowlist.
pub fn namespace_yaml(ns: &str) -> String {
    format!(
        "apiVersion: keygate.dev/v1alpha1\nkind: CookieTranslation\nmetadata: {{name: login, namespace: {ns}}}\nspec:\n  cookie: {{name: sid}}\n  header: {{name: Authorization, template: 'Bearer {{token}}'}}\n  sessionStart: {{path: /{ns}/login, tokenPointer: /token}}\n  logout: {{path: /{ns}/logout}}\n---\napiVersion: keygate.dev/v1alpha1\nkind: ExternalAllowlist\nmetadata: {{name: partners, namespace: {ns}}}\nspec:\n  hosts: ['*.partners-{ns}.example.com', 'api.{ns}.example.net']\n  schemes: [https]\n"
    )
}

/// The whole configuration for `routes` routes, as one multi-document YAML text.
pub fn manifests(routes: usize) -> String {
    let mut out = String::new();
    for i in 0..routes {
        if i.is_multiple_of(ROUTES_PER_NAMESPACE) {
            out.push_str(&namespace_yaml(&namespace(i)));
            out.push_str("---\n");
        }
        out.push_str(&secret_yaml(i, &format!("sk-{i:05}-0123456789abcdef")));
        out.push_str("---\n");
        out.push_str(&route_yaml(i));
        out.push_str("---\n");
    }
    out
}
