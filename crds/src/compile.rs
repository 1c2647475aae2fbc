//! `compile()`: resources and Secrets in, [`Snapshot`] + [`SecretSnapshot`] + one [`Report`] per
//! resource out. Pure: no I/O, no clock, no randomness, so the operator, `keygate-proxy serve
//! --manifests` and `keygate-proxy check` always agree, and equal inputs give equal bytes.
//!
//! A bad resource gets a report and is left out; it never blocks the others. Routes are compiled
//! last because they depend on the other four kinds and on Secrets.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::{Resource, ResourceExt};

use crate::cidr::Cidr;
use crate::report::{Kind, ObjectRef, Problem, Report, reasons};
use crate::resources::allowlist::ExternalAllowlistSpec;
use crate::resources::common::{AllowedNamespaces, NamespacesFrom, SecretKeyRef, parse_duration_ms};
use crate::resources::route::{CsrfMode, HttpMethod, Transform};
use crate::resources::session::{ChainProof, MIN_CHAIN_KEY_SECRET_BYTES};
use crate::resources::vault::{StaticToken, is_token_id};
use crate::resources::{
    CookieTranslation, ExternalAllowlist, KeygateDelegation, ProxyRoute, SessionChainPolicy, TokenVaultRule,
};
use crate::snapshot::{
    CHAIN_HEADER, CSRF_HEADER, CSRF_TOKEN_HEADER, CorsPolicy, CsrfPolicy, Destination, ERROR_HEADER, HeaderValue,
    InjectedHeader, RenamedHeader, Route, SIGNATURE_HEADER, SNAPSHOT_FORMAT, SecretId, SecretSnapshot, Snapshot,
    secret_id,
};
use crate::transform::{RESERVED_HEADERS, Side};

/// Namespace of a resource whose manifest names none, as kubectl would apply it.
pub const DEFAULT_NAMESPACE: &str = "default";
/// `bodyLimit` when a route sets none: 10 MiB.
pub const DEFAULT_BODY_LIMIT: u64 = 10 * 1024 * 1024;
/// Connect limit when a route sets none.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Response-header limit when a route sets none.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 30_000;
/// How long browsers cache a preflight when a route sets no `cors.maxAgeSeconds`.
pub const DEFAULT_CORS_MAX_AGE: u32 = 600;
/// Methods a CORS preflight may ask for when neither `cors.allowMethods` nor `methods` is set.
const DEFAULT_CORS_METHODS: [HttpMethod; 6] = [
    HttpMethod::Delete,
    HttpMethod::Get,
    HttpMethod::Head,
    HttpMethod::Patch,
    HttpMethod::Post,
    HttpMethod::Put,
];

/// Everything `compile()` reads.
#[derive(Clone, Default)]
pub struct Resources {
    /// `ProxyRoute`s.
    pub routes: Vec<ProxyRoute>,
    /// `CookieTranslation`s.
    pub cookie_translations: Vec<CookieTranslation>,
    /// `ExternalAllowlist`s.
    pub allowlists: Vec<ExternalAllowlist>,
    /// `TokenVaultRule`s.
    pub vault_rules: Vec<TokenVaultRule>,
    /// `SessionChainPolicy`s.
    pub session_policies: Vec<SessionChainPolicy>,
    /// Secrets the resources may reference.
    pub secrets: Vec<Secret>,
    /// Namespaces, for their labels: `allowedNamespaces.from: Selector` matches them. A
    /// namespace missing here has only its `kubernetes.io/metadata.name` label.
    pub namespaces: Vec<Namespace>,
    /// `KeygateDelegation`s; none means any namespace may claim any host and prefix.
    pub delegations: Vec<KeygateDelegation>,
}

/// Lists Secrets by name only: the derived `Debug` of a core `Secret` prints its data, and a
/// `Resources` (or a `Parsed` holding one) easily ends up in a log line.
impl std::fmt::Debug for Resources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secrets: Vec<String> = self
            .secrets
            .iter()
            .map(|s| format!("{}/{}", namespace_of(s), s.name_any()))
            .collect();
        f.debug_struct("Resources")
            .field("routes", &self.routes)
            .field("cookie_translations", &self.cookie_translations)
            .field("allowlists", &self.allowlists)
            .field("vault_rules", &self.vault_rules)
            .field("session_policies", &self.session_policies)
            .field("delegations", &self.delegations)
            .field("secrets", &secrets)
            .field(
                "namespaces",
                &self.namespaces.iter().map(ResourceExt::name_any).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// What `compile()` produces.
#[derive(Clone, Debug)]
pub struct Compiled {
    /// What the proxy serves, without secret values.
    pub snapshot: Snapshot,
    /// The secret values the snapshot refers to.
    pub secrets: SecretSnapshot,
    /// One report per resource, sorted by kind, namespace and name.
    pub reports: Vec<Report>,
    /// Every Secret (namespace, name) compiling looked for, found or not. A caller that reads
    /// Secret values only when referenced (the operator) fetches these and compiles again until
    /// nothing new is looked for.
    pub secrets_read: BTreeSet<(String, String)>,
}

impl Compiled {
    /// Reports of resources that are not served.
    pub fn refused(&self) -> impl Iterator<Item = &Report> {
        self.reports.iter().filter(|r| !r.is_ready())
    }
}

/// Compiles resources and Secrets into a snapshot. See the module docs.
pub fn compile(input: &Resources) -> Compiled {
    let secrets = SecretIndex::new(&input.secrets);
    let mut c = Compiler {
        secrets: &secrets,
        namespace_labels: namespace_labels(&input.namespaces),
        used_secrets: BTreeMap::new(),
        pending_secrets: BTreeMap::new(),
        reports: Vec::new(),
        snapshot: Snapshot {
            format: SNAPSHOT_FORMAT,
            ..Snapshot::default()
        },
    };
    c.snapshot.cookie_translations =
        c.compile_kind(&input.cookie_translations, Kind::CookieTranslation, |c, ns, spec, p| {
            for (i, key) in spec.encryption_keys.iter().enumerate() {
                c.aes_key(ns, key, &format!("spec.encryptionKeys[{i}]"), p);
            }
            if let Some(url) = &spec.redis_url {
                c.secret_key(ns, url, "spec.redisUrl", &mut p.secrets);
            }
        });
    c.snapshot.allowlists = c.compile_kind(&input.allowlists, Kind::ExternalAllowlist, |c, ns, spec, p| {
        if let Some(ca) = &spec.ca_bundle {
            c.secret_key(ns, ca, "spec.caBundle", &mut p.secrets);
        }
        check_allowlist(spec, p);
    });
    // Older rules claim their tokenize endpoint first, as routes claim prefixes.
    let mut vault_rules: Vec<&TokenVaultRule> = input.vault_rules.iter().collect();
    vault_rules.sort_by_key(|r| {
        let created = r.metadata.creation_timestamp.as_ref().map(|t| t.0);
        (created.is_none(), created, namespace_of(*r), r.name_any())
    });
    let vault_rules: Vec<TokenVaultRule> = vault_rules.into_iter().cloned().collect();
    let endpoints: RefCell<HashMap<String, String>> = RefCell::default();
    c.snapshot.vault_rules = c.compile_kind(&vault_rules, Kind::TokenVaultRule, |c, ns, spec, p| {
        if let Some(s) = &spec.source.secret_ref {
            c.whole_secret(ns, &s.name, "spec.source.secretRef", &mut p.secrets);
            c.static_tokens(ns, &s.name, &mut p.invalid);
        }
        if let Some(url) = &spec.source.redis_url {
            c.secret_key(ns, url, "spec.source.redisUrl", &mut p.secrets);
        }
        for (i, key) in spec.source.encryption_keys.iter().enumerate() {
            c.aes_key(ns, key, &format!("spec.source.encryptionKeys[{i}]"), p);
        }
        if let Some(ep) = &spec.tokenize_endpoint {
            let field = "spec.tokenizeEndpoint.keysSecretRef";
            c.api_keys_secret(ns, &ep.keys_secret_ref.name, field, &mut p.secrets);
            // Claimed last, and only by a rule that is otherwise fine, so a broken rule never
            // keeps a path from the next one.
            if p.invalid.is_empty() && p.secrets.is_empty() {
                let owner = endpoints.borrow().get(&ep.path).cloned();
                match owner {
                    Some(owner) => p.conflicts.push(problem(
                        "spec.tokenizeEndpoint.path",
                        format!(
                            "{} is already served by TokenVaultRule {owner}, which is older or first by namespace/name; choose another path",
                            ep.path
                        ),
                    )),
                    None => {
                        let me = format!("{ns}/{}", p.name);
                        endpoints.borrow_mut().insert(ep.path.clone(), me);
                    }
                }
            }
        }
    });
    // createPath is answered before routing, so two policies cannot share one; like duplicate
    // names, neither is served, since which one to keep would depend on input order.
    let mut create_paths: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for policy in &input.session_policies {
        let id = format!("{}/{}", namespace_of(policy), policy.name_any());
        create_paths.entry(&policy.spec.create_path).or_default().push(id);
    }
    c.snapshot.session_policies =
        c.compile_kind(&input.session_policies, Kind::SessionChainPolicy, |c, ns, spec, p| {
            if let Some(ids) = create_paths.get(spec.create_path.as_str()).filter(|ids| ids.len() > 1) {
                p.invalid.push(problem(
                    "spec.createPath",
                    format!(
                        "{} is the createPath of {}; give each SessionChainPolicy its own path",
                        spec.create_path,
                        ids.join(" and ")
                    ),
                ));
            }
            if parse_duration_ms(&spec.ttl).is_none_or(|ms| ms == 0) {
                p.invalid
                    .push(problem("spec.ttl", "must be a positive duration such as 30m"));
            }
            c.api_keys_secret(
                ns,
                &spec.api_keys_secret_ref.name,
                "spec.apiKeysSecretRef",
                &mut p.secrets,
            );
            if let Some(s) = &spec.redis_url {
                c.secret_key(ns, s, "spec.redisUrl", &mut p.secrets);
            }
            // CEL already ties the field to proof: hmac; its length is what CEL cannot see.
            let field = "spec.chainKeySecretRef";
            if let Some(r) = &spec.chain_key_secret_ref
                && let Some(id) = c.secret_key(ns, r, field, &mut p.secrets)
                && c.pending_secrets[&id].len() < MIN_CHAIN_KEY_SECRET_BYTES
            {
                p.invalid.push(problem(
                    field,
                    format!(
                        "Secret {ns}/{} key {:?} must hold at least {MIN_CHAIN_KEY_SECRET_BYTES} bytes; create one with `openssl rand -hex 32`",
                        r.name, r.key
                    ),
                ));
            }
        });
    let delegations = c.delegations(&input.delegations);
    c.compile_routes(&input.routes, delegations.as_deref());

    // Several routes may share a prefix on different hosts; the id keeps the order total.
    c.snapshot
        .routes
        .sort_by(|a, b| (&a.path_prefix, &a.id).cmp(&(&b.path_prefix, &b.id)));
    c.reports.sort_by(|a, b| a.object.cmp(&b.object));
    let snapshot_hash = c.snapshot.hash();
    Compiled {
        secrets: SecretSnapshot {
            format: SNAPSHOT_FORMAT,
            snapshot_hash,
            values: c.used_secrets,
        },
        snapshot: c.snapshot,
        reports: c.reports,
        secrets_read: secrets.read.take(),
    }
}

fn problem(field: &str, message: impl Into<String>) -> Problem {
    Problem {
        field: field.to_string(),
        message: message.into(),
    }
}

/// Secret data by namespace and name, `stringData` merged over `data` as the API server does.
struct SecretIndex {
    by_name: HashMap<(String, String), BTreeMap<String, Vec<u8>>>,
    /// What was looked for: [`Compiled::secrets_read`].
    read: RefCell<BTreeSet<(String, String)>>,
}

impl SecretIndex {
    fn new(secrets: &[Secret]) -> Self {
        let mut by_name = HashMap::new();
        for s in secrets {
            let mut data: BTreeMap<String, Vec<u8>> =
                s.data.iter().flatten().map(|(k, v)| (k.clone(), v.0.clone())).collect();
            for (k, v) in s.string_data.iter().flatten() {
                data.insert(k.clone(), v.clone().into_bytes());
            }
            by_name.insert((namespace_of(s), s.name_any()), data);
        }
        SecretIndex {
            by_name,
            read: RefCell::default(),
        }
    }

    fn get(&self, ns: &str, name: &str) -> Option<&BTreeMap<String, Vec<u8>>> {
        let key = (ns.to_string(), name.to_string());
        let data = self.by_name.get(&key);
        self.read.borrow_mut().insert(key);
        data
    }
}

fn namespace_of<K: Resource>(r: &K) -> String {
    r.meta()
        .namespace
        .clone()
        .filter(|ns| !ns.is_empty())
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string())
}

struct Compiler<'a> {
    secrets: &'a SecretIndex,
    /// Labels by namespace name, for `allowedNamespaces.selector`.
    namespace_labels: HashMap<String, BTreeMap<String, String>>,
    /// Values of the Secrets that served resources use: what the `SecretSnapshot` ships.
    used_secrets: BTreeMap<SecretId, String>,
    /// Values read for the resource being compiled; kept only if it is served, so a refused
    /// resource never puts a secret value in the `SecretSnapshot`.
    pending_secrets: BTreeMap<SecretId, String>,
    reports: Vec<Report>,
    snapshot: Snapshot,
}

/// What a kind-specific check found, kept apart because they lead to different reasons.
#[derive(Default)]
struct Checks {
    /// Fields that are wrong in themselves: reason `Invalid`.
    invalid: Vec<Problem>,
    /// Secrets or keys that are missing or unusable: reason `SecretNotFound`.
    secrets: Vec<Problem>,
    /// Name of the resource checked, for messages other resources' reports carry.
    name: String,
    /// Something another resource already claims: reason `Conflict`.
    conflicts: Vec<Problem>,
    /// What the `Ready` message of a served resource adds, e.g. which private ranges it opens.
    note: Option<String>,
}

/// The CEL rules of each kind, evaluated here exactly as the API server evaluates them.
trait Validated: Resource<DynamicType = ()> + Clone {
    type Spec: Clone;
    fn spec(&self) -> &Self::Spec;
    fn cel_problems(&self) -> Vec<Problem>;
}

macro_rules! validated {
    ($kind:ty, $spec:ty) => {
        impl Validated for $kind {
            type Spec = $spec;
            fn spec(&self) -> &$spec {
                &self.spec
            }
            fn cel_problems(&self) -> Vec<Problem> {
                thread_local! {
                    static RULES: crate::cel::Rules = crate::cel::compile_rules::<$kind>();
                }
                RULES
                    .with(|rules| crate::cel::problems(rules, self))
                    .into_iter()
                    .map(|(field, message)| problem(&field, message))
                    .collect()
            }
        }
    };
}

validated!(ProxyRoute, crate::resources::ProxyRouteSpec);
validated!(CookieTranslation, crate::resources::CookieTranslationSpec);
validated!(ExternalAllowlist, crate::resources::ExternalAllowlistSpec);
validated!(TokenVaultRule, crate::resources::TokenVaultRuleSpec);
validated!(SessionChainPolicy, crate::resources::SessionChainPolicySpec);
validated!(KeygateDelegation, crate::resources::KeygateDelegationSpec);

/// One `KeygateDelegation` as routes are checked against it: hosts and prefixes normalized as
/// routes' are. An invalid one grants nothing but still counts as configured, so a typo in the
/// only delegation never opens every host and prefix to everyone (fail closed).
struct Grant {
    name: String,
    namespaces: Vec<String>,
    selector: Option<crate::resources::common::NamespaceSelector>,
    hosts: Vec<String>,
    prefixes: Vec<String>,
    valid: bool,
}

impl Grant {
    fn covers_namespace(&self, ns: &str, labels: &BTreeMap<String, String>) -> bool {
        self.valid
            && (self.namespaces.iter().any(|n| n == ns) || self.selector.as_ref().is_some_and(|s| s.selects(labels)))
    }

    /// Whether routes may claim `host` (`None`: every host, a route without `hosts`): no hosts
    /// listed grants any; `*.d` grants every name below `d` and the wildcards below it.
    fn grants_host(&self, host: Option<&str>) -> bool {
        if self.hosts.is_empty() {
            return true;
        }
        let Some(host) = host else { return false };
        self.hosts.iter().any(|granted| {
            granted == host
                || granted
                    .strip_prefix("*.")
                    .is_some_and(|domain| host.strip_suffix(domain).is_some_and(|rest| rest.ends_with('.')))
        })
    }

    /// Whether routes may claim `prefix`: a granted prefix or below it at a `/` boundary.
    fn grants_prefix(&self, prefix: &str) -> bool {
        self.prefixes.is_empty()
            || self.prefixes.iter().any(|granted| {
                granted == "/"
                    || prefix
                        .strip_prefix(granted.as_str())
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            })
    }

    fn describe(&self) -> String {
        let list = |v: &[String], none: &str| if v.is_empty() { none.to_string() } else { v.join(", ") };
        format!(
            "KeygateDelegation {} (hosts: {}; path prefixes: {})",
            self.name,
            list(&self.hosts, "any"),
            list(&self.prefixes, "any")
        )
    }
}

impl Compiler<'_> {
    /// Compiles the resources of one kind that routes refer to: duplicates, CEL rules, then
    /// `check` (Secret references, and what CEL cannot express). Accepted specs are keyed by
    /// `namespace/name`.
    fn compile_kind<K: Validated>(
        &mut self,
        items: &[K],
        kind: Kind,
        check: impl Fn(&mut Self, &str, &K::Spec, &mut Checks),
    ) -> BTreeMap<String, K::Spec> {
        let mut out = BTreeMap::new();
        for (object, item) in self.unique(items, kind) {
            let problems = item.cel_problems();
            if !problems.is_empty() {
                self.refuse(object, item, reasons::INVALID, problems);
                continue;
            }
            let mut checks = Checks {
                name: object.name.clone(),
                ..Checks::default()
            };
            check(self, &object.namespace, item.spec(), &mut checks);
            if !checks.conflicts.is_empty() {
                self.refuse(object, item, reasons::CONFLICT, checks.conflicts);
            } else if !checks.invalid.is_empty() {
                checks.invalid.extend(checks.secrets);
                self.refuse(object, item, reasons::INVALID, checks.invalid);
            } else if !checks.secrets.is_empty() {
                self.refuse(object, item, reasons::SECRET_NOT_FOUND, checks.secrets);
            } else {
                out.insert(format!("{}/{}", object.namespace, object.name), item.spec().clone());
                self.accept_noted(object, item, checks.note);
            }
        }
        out
    }

    /// The resources of one kind, each with its [`ObjectRef`], in input order. A name defined
    /// more than once is reported once (reason `Conflict`) and none of its definitions is used:
    /// which one to keep would depend on the order files are read in.
    fn unique<'a, K: Resource>(&mut self, items: &'a [K], kind: Kind) -> Vec<(ObjectRef, &'a K)> {
        let mut copies: BTreeMap<ObjectRef, Vec<&K>> = BTreeMap::new();
        let mut unique = Vec::new();
        for item in items {
            let object = ObjectRef {
                kind,
                namespace: namespace_of(item),
                name: item.meta().name.clone().unwrap_or_default(),
            };
            copies.entry(object.clone()).or_default().push(item);
            unique.push((object, item));
        }
        unique.retain(|(object, _)| copies[object].len() == 1);
        for (object, copies) in copies.into_iter().filter(|(_, c)| c.len() > 1) {
            let generation = copies.iter().filter_map(|c| c.meta().generation).max();
            let p = problem(
                "metadata.name",
                format!(
                    "{object} is defined {} times; keep one definition (none of them is served until then)",
                    copies.len()
                ),
            );
            self.push_refusal(object, generation, reasons::CONFLICT, vec![p]);
        }
        unique
    }

    /// The delegations routes are checked against; `None` when there are none, which grants
    /// everything (as before delegations existed). Invalid ones are reported and grant nothing.
    fn delegations(&mut self, items: &[KeygateDelegation]) -> Option<Vec<Grant>> {
        if items.is_empty() {
            return None;
        }
        let mut grants = Vec::new();
        for item in items {
            let object = ObjectRef {
                kind: Kind::KeygateDelegation,
                namespace: String::new(),
                name: item.name_any(),
            };
            let problems = item.cel_problems();
            let valid = problems.is_empty();
            if valid {
                self.accept(object.clone(), item);
            } else {
                self.refuse(object.clone(), item, reasons::INVALID, problems);
            }
            grants.push(Grant {
                name: object.name,
                namespaces: item.spec.namespaces.clone(),
                selector: item.spec.namespace_selector.clone(),
                hosts: normalize_hosts(&item.spec.hosts),
                prefixes: item.spec.path_prefixes.iter().cloned().map(normalize_prefix).collect(),
                valid,
            });
        }
        grants.sort_by(|a, b| a.name.cmp(&b.name));
        Some(grants)
    }

    /// Why a compiled route may not claim its hosts and prefix under `grants`, if it may not.
    fn not_delegated(&self, route: &Route, ns: &str, grants: &[Grant]) -> Option<Problem> {
        let only_name = BTreeMap::from([(NAMESPACE_NAME_LABEL.to_string(), ns.to_string())]);
        let labels = self.namespace_labels.get(ns).unwrap_or(&only_name);
        let mine: Vec<&Grant> = grants.iter().filter(|g| g.covers_namespace(ns, labels)).collect();
        let claims: Vec<Option<&str>> = match route.hosts.as_slice() {
            [] => vec![None],
            hosts => hosts.iter().map(|h| Some(h.as_str())).collect(),
        };
        let prefix = &route.path_prefix;
        let refused = claims
            .into_iter()
            .find(|host| !mine.iter().any(|g| g.grants_host(*host) && g.grants_prefix(prefix)))?;
        let claim = match refused {
            Some(host) => format!("host {host} with path prefix {prefix}"),
            None => format!("path prefix {prefix} on every host (the route sets no hosts)"),
        };
        // Point at what to change: the prefix when none of the namespace's delegations grants
        // it, the hosts otherwise.
        let field = if !mine.is_empty() && !mine.iter().any(|g| g.grants_prefix(prefix)) {
            "spec.pathPrefix"
        } else {
            "spec.hosts"
        };
        let message = if mine.is_empty() {
            format!(
                "{claim} is not delegated: no KeygateDelegation covers namespace {ns} (delegations decide which namespaces may claim which hosts and prefixes); ask the platform team to delegate it"
            )
        } else {
            let by: Vec<String> = mine.iter().map(|g| g.describe()).collect();
            format!(
                "{claim} is outside what {} delegates to namespace {ns}; claim a host and prefix within it, or ask the platform team to extend it",
                by.join(" and ")
            )
        };
        Some(problem(field, message))
    }

    fn compile_routes(&mut self, routes: &[ProxyRoute], delegations: Option<&[Grant]>) {
        // Older routes claim their prefix first; namespace/name breaks ties so the result never
        // depends on the order the inputs arrive in. A route without a creation time (a manifest
        // not yet applied) counts as the newest.
        let mut ordered = self.unique(routes, Kind::ProxyRoute);
        ordered.sort_by_key(|(object, r)| {
            let created = r.metadata.creation_timestamp.as_ref().map(|t| t.0);
            (created.is_none(), created, object.clone())
        });
        // Claims are per host and prefix: `None` is "any host", which a host-specific route at the
        // same prefix does not conflict with (it only takes that host's requests).
        let mut claimed: HashMap<(Option<String>, String), &ProxyRoute> = HashMap::new();
        for (object, route) in ordered {
            let id = format!("{}/{}", object.namespace, object.name);
            let compiled = match self.compile_route(route, &object.namespace, &id) {
                Ok(r) => r,
                Err((reason, problems)) => {
                    self.refuse(object, route, reason, problems);
                    continue;
                }
            };
            // Checked before claiming, so a claim outside what is delegated never takes a host
            // and prefix from the namespace it is delegated to.
            if let Some(p) = delegations.and_then(|grants| self.not_delegated(&compiled, &object.namespace, grants)) {
                self.refuse(object, route, reasons::NOT_PERMITTED, vec![p]);
                continue;
            }
            let claims: Vec<(Option<String>, String)> = match compiled.hosts.as_slice() {
                [] => vec![(None, compiled.path_prefix.clone())],
                hosts => hosts
                    .iter()
                    .map(|h| (Some(h.clone()), compiled.path_prefix.clone()))
                    .collect(),
            };
            let taken: Vec<Problem> = claims
                .iter()
                .filter_map(|claim| {
                    let owner = claimed.get(claim)?;
                    Some(problem(
                        "spec.pathPrefix",
                        conflict_message(&compiled.path_prefix, claim.0.as_deref(), route, owner),
                    ))
                })
                .collect();
            if !taken.is_empty() {
                self.refuse(object, route, reasons::CONFLICT, taken);
                continue;
            }
            claimed.extend(claims.into_iter().map(|claim| (claim, route)));
            self.accept(object, route);
            self.snapshot.routes.push(compiled);
        }
    }

    fn compile_route(&mut self, route: &ProxyRoute, ns: &str, id: &str) -> Result<Route, (&'static str, Vec<Problem>)> {
        let problems = route.cel_problems();
        if !problems.is_empty() {
            return Err((reasons::INVALID, problems));
        }
        let spec = &route.spec;
        let mut invalid = Vec::new();

        let hosts = normalize_hosts(&spec.hosts);
        invalid.extend(public_suffix_wildcards(&spec.hosts));
        let path_prefix = normalize_prefix(
            spec.path_prefix
                .clone()
                .unwrap_or_else(|| format!("/{ns}/{}", route.name_any())),
        );
        // The CEL rules already demand exactly one destination; checking again here keeps a
        // gap in CEL evaluation from ever becoming a panic in the proxy.
        let destination = match (&spec.upstream, &spec.allowlist_ref) {
            (Some(url), None) => match check_upstream(url) {
                Ok(url) => Some(Destination::Upstream { url }),
                Err(msg) => {
                    invalid.push(problem("spec.upstream", msg));
                    None
                }
            },
            (None, Some(allowlist)) => Some(Destination::Allowlist {
                allowlist: ref_key(ns, allowlist),
            }),
            _ => {
                invalid.push(problem("spec", "set exactly one of upstream or allowlistRef"));
                None
            }
        };
        let timeouts = spec.timeouts.clone().unwrap_or_default();
        let connect_timeout_ms = duration_or(
            &timeouts.connect,
            DEFAULT_CONNECT_TIMEOUT_MS,
            "spec.timeouts.connect",
            &mut invalid,
        );
        let request_timeout_ms = duration_or(
            &timeouts.request,
            DEFAULT_REQUEST_TIMEOUT_MS,
            "spec.timeouts.request",
            &mut invalid,
        );
        let Some(destination) = destination.filter(|_| invalid.is_empty()) else {
            return Err((reasons::INVALID, invalid));
        };

        let mut refs = Vec::new();
        let mut reason = reasons::REF_NOT_FOUND;
        // `present` answers whether the referenced resource is served and, if so, whom it is
        // shared with; a reference into another namespace needs that namespace's consent.
        let labels = &self.namespace_labels;
        let mut resolve = |field: &str,
                           name: &Option<String>,
                           kind: Kind,
                           present: &dyn Fn(&str) -> Option<Option<AllowedNamespaces>>|
         -> Option<String> {
            let key = ref_key(ns, name.as_ref()?);
            let Some(allowed) = present(&key) else {
                refs.push(problem(
                    field,
                    format!(
                        "{} {key} does not exist or is not Ready; create it or fix the name",
                        kind.as_str()
                    ),
                ));
                return Some(key);
            };
            let owner = key.split_once('/').map_or(ns, |(owner, _)| owner);
            if owner != ns
                && let Err(why) = permits(allowed.as_ref(), ns, labels)
            {
                reason = reasons::REF_NOT_PERMITTED;
                refs.push(problem(field, format!("{} {key} {why}", kind.as_str())));
            }
            Some(key)
        };
        let snap = &self.snapshot;
        let cookie_translation = resolve(
            "spec.cookieTranslationRef",
            &spec.cookie_translation_ref,
            Kind::CookieTranslation,
            &|k| snap.cookie_translations.get(k).map(|s| s.allowed_namespaces.clone()),
        );
        let session_chain = resolve(
            "spec.sessionChainRef",
            &spec.session_chain_ref,
            Kind::SessionChainPolicy,
            &|k| snap.session_policies.get(k).map(|s| s.allowed_namespaces.clone()),
        );
        resolve(
            "spec.allowlistRef",
            &spec.allowlist_ref,
            Kind::ExternalAllowlist,
            &|k| snap.allowlists.get(k).map(|s| s.allowed_namespaces.clone()),
        );
        let vault_rules: Vec<String> = spec
            .vault_rule_refs
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                resolve(
                    &format!("spec.vaultRuleRefs[{i}]"),
                    &Some(r.clone()),
                    Kind::TokenVaultRule,
                    &|k| snap.vault_rules.get(k).map(|s| s.allowed_namespaces.clone()),
                )
            })
            .collect();
        if !refs.is_empty() {
            return Err((reason, refs));
        }
        if let Some(problems) = self.combination_problems(spec).filter(|p| !p.is_empty()) {
            return Err((reasons::INVALID, problems));
        }

        let mut missing = Vec::new();
        let mut forward_headers = Vec::new();
        for (i, h) in spec.forward_headers.iter().enumerate() {
            let value = match (&h.value, &h.value_from) {
                (Some(v), None) => HeaderValue::Literal { literal: v.clone() },
                (None, Some(r)) => {
                    match self.secret_key(ns, r, &format!("spec.forwardHeaders[{i}].valueFrom"), &mut missing) {
                        Some(secret) => HeaderValue::Secret { secret },
                        None => continue,
                    }
                }
                _ => {
                    return Err((
                        reasons::INVALID,
                        vec![problem(
                            &format!("spec.forwardHeaders[{i}]"),
                            "set exactly one of value or valueFrom",
                        )],
                    ));
                }
            };
            forward_headers.push(InjectedHeader {
                name: h.name.to_ascii_lowercase(),
                value,
            });
        }
        let ca_bundle = spec
            .tls
            .as_ref()
            .and_then(|t| t.ca_bundle.as_ref())
            .and_then(|r| self.secret_key(ns, r, "spec.tls.caBundle", &mut missing));
        if let Some(api_key) = &spec.api_key {
            self.api_keys_secret(
                ns,
                &api_key.keys_secret_ref.name,
                "spec.apiKey.keysSecretRef",
                &mut missing,
            );
        }
        if !missing.is_empty() {
            return Err((reasons::SECRET_NOT_FOUND, missing));
        }

        Ok(Route {
            id: id.to_string(),
            hosts,
            path_prefix,
            methods: spec.methods.iter().map(|m| m.as_str().to_string()).collect(),
            destination,
            strip_prefix: spec.strip_prefix,
            connect_timeout_ms,
            request_timeout_ms,
            body_limit: spec.body_limit.map_or(DEFAULT_BODY_LIMIT, |b| b as u64),
            content_types: spec.content_types.iter().map(|t| t.to_ascii_lowercase()).collect(),
            forward_headers,
            expose_headers: spec
                .expose_headers
                .iter()
                .map(|h| RenamedHeader {
                    from: h.name.to_ascii_lowercase(),
                    to: h.rename.as_deref().unwrap_or(&h.name).to_ascii_lowercase(),
                })
                .collect(),
            cookie_passthrough: spec.cookie_passthrough,
            allow_encoded_slashes: spec.allow_encoded_slashes,
            websocket: spec.websocket,
            ca_bundle,
            upstream_protocol: spec.upstream_protocol,
            cors: spec
                .cors
                .as_ref()
                .map(|cors| self.cors_policy(cors, spec, ns, session_chain.as_deref())),
            csrf: spec.csrf.as_ref().map(|csrf| CsrfPolicy {
                mode: csrf.mode,
                header: match csrf.mode {
                    CsrfMode::DoubleSubmit => CSRF_HEADER.to_string(),
                    CsrfMode::Header => csrf.header_name.as_deref().unwrap_or(CSRF_HEADER).to_ascii_lowercase(),
                },
                value: csrf.header_value.clone(),
                check_origin: csrf.check_origin,
            }),
            auth: spec.auth,
            api_key: spec.api_key.clone(),
            cookie_translation,
            session_chain,
            vault_rules,
            rate_limit: spec.rate_limit.clone(),
            transform: spec
                .transform
                .clone()
                .filter(|t| !t.request.is_empty() || !t.response.is_empty()),
        })
    }

    /// Combinations of route fields that each make sense alone but not together.
    fn combination_problems(&self, spec: &crate::resources::ProxyRouteSpec) -> Option<Vec<Problem>> {
        let mut problems = spec
            .transform
            .as_ref()
            .map_or_else(Vec::new, |t| transform_problems(t, spec));
        if spec.cookie_passthrough && spec.cookie_translation_ref.is_some() {
            problems.push(problem(
                "spec.cookiePassthrough",
                "cookiePassthrough would send the session cookie, and with it the token, to the upstream; remove cookiePassthrough or cookieTranslationRef",
            ));
        }
        if spec.csrf.as_ref().is_some_and(|c| c.mode == CsrfMode::DoubleSubmit) && spec.cookie_translation_ref.is_none()
        {
            problems.push(problem(
                "spec.csrf.mode",
                "doubleSubmit compares against the CSRF cookie a CookieTranslation sets at session start; set cookieTranslationRef or use mode: header",
            ));
        }
        Some(problems)
    }

    /// The route's CORS rules with every header Keygate reads or adds on this route, so nobody has
    /// to remember to allow them.
    fn cors_policy(
        &self,
        cors: &crate::resources::route::Cors,
        spec: &crate::resources::ProxyRouteSpec,
        ns: &str,
        session_chain: Option<&str>,
    ) -> CorsPolicy {
        let lower = |names: &mut dyn Iterator<Item = &str>| {
            let mut v: Vec<String> = names.map(str::to_ascii_lowercase).collect();
            v.sort();
            v.dedup();
            v
        };
        let mut allow: Vec<&str> = cors.allow_headers.iter().map(String::as_str).collect();
        allow.push("content-type");
        if let Some(csrf) = &spec.csrf {
            allow.push(match csrf.mode {
                CsrfMode::DoubleSubmit => CSRF_HEADER,
                CsrfMode::Header => csrf.header_name.as_deref().unwrap_or(CSRF_HEADER),
            });
        }
        if spec.auth == crate::resources::route::AuthMode::ApiKey {
            allow.push(
                spec.api_key
                    .as_ref()
                    .and_then(|k| k.header.as_deref())
                    .unwrap_or("x-api-key"),
            );
        }
        if let Some(policy) = session_chain.and_then(|id| self.snapshot.session_policies.get(id)) {
            allow.extend([
                &*policy.headers.api_key,
                &*policy.headers.session_id,
                &*policy.headers.request_id,
            ]);
            if policy.proof == ChainProof::Signature {
                allow.push(SIGNATURE_HEADER);
            }
        }
        if let Some(list) = spec
            .allowlist_ref
            .as_ref()
            .and_then(|name| self.snapshot.allowlists.get(&ref_key(ns, name)))
        {
            allow.push(&list.target_url_header);
        }
        let mut expose: Vec<&str> = cors.expose_headers.iter().map(String::as_str).collect();
        expose.extend(
            spec.expose_headers
                .iter()
                .map(|h| h.rename.as_deref().unwrap_or(&h.name)),
        );
        // What a client on another origin must read of Keygate's own answers: error codes and
        // rate-limit waits on any route, the chain signal, and the CSRF token handed out at
        // session start (the page cannot read the proxy's cookie on another host).
        expose.extend(["retry-after", ERROR_HEADER]);
        if session_chain.is_some() {
            expose.push(CHAIN_HEADER);
        }
        if spec.cookie_translation_ref.is_some() {
            expose.push(CSRF_TOKEN_HEADER);
        }
        let methods: Vec<HttpMethod> = match (cors.allow_methods.is_empty(), spec.methods.is_empty()) {
            (false, _) => cors.allow_methods.clone(),
            (true, false) => spec.methods.clone(),
            (true, true) => DEFAULT_CORS_METHODS.to_vec(),
        };
        CorsPolicy {
            allow_origins: lower(&mut cors.allow_origins.iter().map(String::as_str)),
            allow_methods: {
                let mut m: Vec<String> = methods.iter().map(|m| m.as_str().to_string()).collect();
                m.sort();
                m.dedup();
                m
            },
            allow_headers: lower(&mut allow.into_iter()),
            expose_headers: lower(&mut expose.into_iter()),
            allow_credentials: cors.allow_credentials,
            max_age_seconds: cors.max_age_seconds.map_or(DEFAULT_CORS_MAX_AGE, |s| s as u32),
        }
    }

    /// Resolves one Secret key, records its value for the secret snapshot, and returns its id.
    fn secret_key(&mut self, ns: &str, r: &SecretKeyRef, field: &str, problems: &mut Vec<Problem>) -> Option<SecretId> {
        let Some(data) = self.secrets.get(ns, &r.name) else {
            problems.push(problem(
                field,
                format!("Secret {ns}/{} does not exist; create it or fix the name", r.name),
            ));
            return None;
        };
        let Some(bytes) = data.get(&r.key) else {
            problems.push(problem(
                field,
                format!(
                    "Secret {ns}/{} has no key {:?}; add the key or fix the reference",
                    r.name, r.key
                ),
            ));
            return None;
        };
        let Ok(value) = String::from_utf8(bytes.clone()) else {
            problems.push(problem(
                field,
                format!(
                    "Secret {ns}/{} key {:?} is not UTF-8 text; store the value as text",
                    r.name, r.key
                ),
            ));
            return None;
        };
        let id = secret_id(ns, &r.name, &r.key);
        self.pending_secrets.insert(id.clone(), value);
        Some(id)
    }

    /// Checks that every key of the (already resolved) static-token Secret is a usable token id
    /// and every value a token; problems name the key, never the value.
    fn static_tokens(&self, ns: &str, name: &str, problems: &mut Vec<Problem>) {
        let prefix = secret_id(ns, name, "");
        for (id, value) in self.pending_secrets.range(prefix.clone()..) {
            let Some(key) = id.strip_prefix(&prefix) else { break };
            let field = "spec.source.secretRef";
            if !is_token_id(key) {
                problems.push(problem(
                    field,
                    format!("Secret {ns}/{name} key {key:?} is not a token id: use 1 to 128 letters, digits, '.', '_' or '-'"),
                ));
            }
            if let Err(e) = StaticToken::parse(value) {
                problems.push(problem(field, format!("Secret {ns}/{name} key {key:?}: {e}")));
            }
        }
    }

    /// Resolves a Secret key that must hold an AES-256 key: 32 bytes, base64.
    fn aes_key(&mut self, ns: &str, r: &SecretKeyRef, field: &str, p: &mut Checks) {
        let Some(id) = self.secret_key(ns, r, field, &mut p.secrets) else {
            return;
        };
        use base64::Engine;
        let value = self.pending_secrets[&id].trim();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(value)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(value.trim_end_matches('=')));
        if decoded.map_or(true, |k| k.len() != 32) {
            p.invalid.push(problem(
                field,
                format!(
                    "Secret {ns}/{} key {:?} must hold 32 random bytes, base64-encoded; create one with `openssl rand -base64 32`",
                    r.name, r.key
                ),
            ));
        }
    }

    /// Resolves a Secret of per-app API keys, which must hold at least one key: a route or policy
    /// whose Secret is empty would refuse every caller, which is never what was meant.
    fn api_keys_secret(&mut self, ns: &str, name: &str, field: &str, problems: &mut Vec<Problem>) {
        let before = problems.len();
        self.whole_secret(ns, name, field, problems);
        let prefix = format!("{ns}/{name}/");
        let has_key = self
            .pending_secrets
            .range(prefix.clone()..)
            .take_while(|(id, _)| id.starts_with(&prefix))
            .any(|(_, v)| v.lines().any(|l| !l.trim().is_empty()));
        if problems.len() == before && !has_key {
            problems.push(problem(
                field,
                format!("Secret {ns}/{name} holds no API key; add one key per app (the key's name is the app's name, its value the app's keys, one per line)"),
            ));
        }
    }

    /// Resolves every key of a Secret, recording each value.
    fn whole_secret(&mut self, ns: &str, name: &str, field: &str, problems: &mut Vec<Problem>) {
        let Some(data) = self.secrets.get(ns, name) else {
            problems.push(problem(
                field,
                format!("Secret {ns}/{name} does not exist; create it or fix the name"),
            ));
            return;
        };
        let keys: Vec<String> = data.keys().cloned().collect();
        for key in keys {
            let r = SecretKeyRef {
                name: name.to_string(),
                key,
            };
            self.secret_key(ns, &r, field, problems);
        }
    }

    fn accept<K: Resource>(&mut self, object: ObjectRef, item: &K) {
        self.accept_noted(object, item, None);
    }

    fn accept_noted<K: Resource>(&mut self, object: ObjectRef, item: &K, note: Option<String>) {
        // Not `append`: it rebuilds the whole map, which made accepting n resources O(n²).
        self.used_secrets.extend(std::mem::take(&mut self.pending_secrets));
        self.reports.push(Report {
            message: match note {
                Some(note) => format!("{object} is served; {note}"),
                None => format!("{object} is served"),
            },
            object,
            generation: item.meta().generation,
            reason: reasons::ACCEPTED,
            problems: Vec::new(),
        });
    }

    fn refuse<K: Resource>(&mut self, object: ObjectRef, item: &K, reason: &'static str, problems: Vec<Problem>) {
        self.push_refusal(object, item.meta().generation, reason, problems);
    }

    fn push_refusal(
        &mut self,
        object: ObjectRef,
        generation: Option<i64>,
        reason: &'static str,
        problems: Vec<Problem>,
    ) {
        self.pending_secrets.clear();
        let message = problems
            .iter()
            .map(|p| format!("{}: {}", p.field, p.message))
            .collect::<Vec<_>>()
            .join("; ");
        self.reports.push(Report {
            object,
            generation,
            reason,
            message,
            problems,
        });
    }
}

/// Why `loser` may not have `prefix` on `host` (`None`: any host): `winner` has it, and which
/// rule decided.
fn conflict_message(prefix: &str, host: Option<&str>, loser: &ProxyRoute, winner: &ProxyRoute) -> String {
    let id = |r: &ProxyRoute| format!("{}/{}", namespace_of(r), r.name_any());
    let written = loser.spec.path_prefix.as_deref().unwrap_or(prefix);
    let same = if written == prefix {
        String::new()
    } else {
        format!(" (the same as {prefix})")
    };
    let created = |r: &ProxyRoute| r.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let why = match (created(winner), created(loser)) {
        (Some(w), Some(l)) if w < l => "which is older",
        (Some(_), None) => "which already exists in the cluster",
        _ => "which comes first by namespace/name as neither is older",
    };
    let (on, fix) = match host {
        Some(host) => (format!(" on host {host}"), "choose another pathPrefix or host"),
        None => (String::new(), "choose another pathPrefix"),
    };
    format!(
        "path prefix {written}{same}{on} is already served by ProxyRoute {}, {why}; {fix}",
        id(winner)
    )
}

/// The `namespace/name` key of a reference written in namespace `ns`: `name` means one in `ns`,
/// `other/name` one shared from `other`.
fn ref_key(ns: &str, name: &str) -> String {
    if name.contains('/') {
        name.to_string()
    } else {
        format!("{ns}/{name}")
    }
}

/// The label every namespace carries with its own name (set by the API server), so a selector
/// can name namespaces; added here too, so `check` and standalone mode agree with the cluster.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

fn namespace_labels(namespaces: &[Namespace]) -> HashMap<String, BTreeMap<String, String>> {
    namespaces
        .iter()
        .map(|n| {
            let name = n.name_any();
            let mut labels = n.labels().clone();
            labels.insert(NAMESPACE_NAME_LABEL.to_string(), name.clone());
            (name, labels)
        })
        .collect()
}

/// Whether a resource shared as `allowed` (`None`: `from: Same`) may be referenced from namespace
/// `from`; if not, the rest of a sentence saying why and what to change.
fn permits(
    allowed: Option<&AllowedNamespaces>,
    from: &str,
    labels: &HashMap<String, BTreeMap<String, String>>,
) -> Result<(), String> {
    let same = AllowedNamespaces::default();
    let allowed = allowed.unwrap_or(&same);
    match (allowed.from, &allowed.selector) {
        (NamespacesFrom::All, _) => Ok(()),
        (NamespacesFrom::Selector, Some(selector)) => {
            let only_name = BTreeMap::from([(NAMESPACE_NAME_LABEL.to_string(), from.to_string())]);
            if selector.selects(labels.get(from).unwrap_or(&only_name)) {
                Ok(())
            } else {
                Err(format!(
                    "is shared only with namespaces matching its spec.allowedNamespaces.selector, and namespace {from} does not match; ask its owners to widen the selector, or label namespace {from} to match it"
                ))
            }
        }
        _ => Err(format!(
            "is not shared with other namespaces (its spec.allowedNamespaces.from is Same); ask its owners to set allowedNamespaces to from: All, or from: Selector with a selector matching namespace {from}, or create one in {from}"
        )),
    }
}

/// Hosts as the proxy compares them: lower case, no trailing dot (`Example.COM.` is
/// `example.com`), sorted and without duplicates, so equal sets compile to equal snapshots.
fn normalize_hosts(hosts: &[String]) -> Vec<String> {
    let mut out: Vec<String> = hosts
        .iter()
        .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
        .collect();
    out.sort();
    out.dedup();
    out
}

fn duration_or(value: &Option<String>, default: u64, field: &str, problems: &mut Vec<Problem>) -> u64 {
    match value.as_deref().map(parse_duration_ms) {
        None => default,
        Some(Some(ms)) if ms > 0 => ms,
        Some(_) => {
            problems.push(problem(field, "must be a positive duration such as 250ms, 30s or 5m"));
            default
        }
    }
}

/// What CEL rules on the type cannot say about a route's transform: each expression parses and
/// reads only what its side may read (see [`crate::transform::check`]), and no operation touches
/// a header Keygate owns, or one `forwardHeaders` sets (it would be overwritten, silently).
fn transform_problems(t: &Transform, spec: &crate::resources::ProxyRouteSpec) -> Vec<Problem> {
    let mut problems = Vec::new();
    for (side, list, ops) in [
        (Side::Request, "request", &t.request),
        (Side::Response, "response", &t.response),
    ] {
        for (i, op) in ops.iter().enumerate() {
            let at = format!("spec.transform.{list}[{i}]");
            if let Some(name) = &op.name {
                let lower = name.to_ascii_lowercase();
                if RESERVED_HEADERS.contains(&lower.as_str()) {
                    problems.push(problem(
                        &format!("{at}.name"),
                        format!("{name} is a header Keygate itself writes or removes; transforms may not change it"),
                    ));
                } else if side == Side::Request
                    && spec.forward_headers.iter().any(|h| h.name.eq_ignore_ascii_case(name))
                {
                    problems.push(problem(
                        &format!("{at}.name"),
                        format!(
                            "{name} is set by forwardHeaders, which replaces what a transform writes; change it there"
                        ),
                    ));
                }
            }
            if let Some(value) = &op.value
                && let Err(message) = crate::transform::check(value, side)
            {
                problems.push(problem(&format!("{at}.value"), message));
            }
        }
    }
    problems
}

/// Trailing slashes do not make a different prefix: `/api/` and `/api` claim the same paths.
fn normalize_prefix(prefix: String) -> String {
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".to_string()
    } else {
        trimmed.to_string()
    }
}

/// An upstream must be an absolute http(s) URL with a host, no userinfo, query or fragment.
/// Returns it without a trailing `/` so the request path can be appended as is.
fn check_upstream(raw: &str) -> Result<String, String> {
    let url = url::Url::parse(raw)
        .map_err(|e| format!("{raw:?} is not a valid URL ({e}); use e.g. https://api.example.com/v1"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("scheme {:?} is not supported; use http or https", url.scheme()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the URL has no host; use e.g. https://api.example.com".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("the URL must not carry credentials; inject them with forwardHeaders from a Secret".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("the URL must not have a query or fragment".into());
    }
    let s = url.as_str();
    Ok(s.strip_suffix('/').unwrap_or(s).to_string())
}

/// Headers the proxy itself reads or rewrites on every request: naming the destination in one of
/// them would either never work or change what every other route sends.
const RESERVED_TARGET_HEADERS: [&str; 8] = [
    "host",
    "cookie",
    "connection",
    "content-length",
    "content-type",
    "transfer-encoding",
    "x-forwarded-for",
    "x-forwarded-host",
];

/// `spec.hosts` wildcards as wide as a public suffix (`*.com`, `*.co.uk`): names owned by many
/// different parties, which neither an allowlist nor a route ever means to cover.
fn public_suffix_wildcards(hosts: &[String]) -> Vec<Problem> {
    let mut problems = Vec::new();
    for (i, host) in hosts.iter().enumerate() {
        let Some(domain) = host.strip_prefix("*.") else {
            continue;
        };
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        if psl::suffix(domain.as_bytes()).is_some_and(|s| s.is_known() && s.as_bytes() == domain.as_bytes()) {
            problems.push(problem(
                &format!("spec.hosts[{i}]"),
                format!(
                    "{host} would match every domain under the public suffix {domain}, owned by many different parties; name a domain registered under it, e.g. *.example.{domain}"
                ),
            ));
        }
    }
    problems
}

/// What CEL cannot say about an allowlist: wildcards as wide as a public suffix (checked against
/// the public-suffix list), and `allowCidrs` that are not clean, narrow networks. Served
/// allowlists that open private ranges say so in their `Ready` message.
fn check_allowlist(spec: &ExternalAllowlistSpec, checks: &mut Checks) {
    let header = spec.target_url_header.to_ascii_lowercase();
    if RESERVED_TARGET_HEADERS.contains(&header.as_str()) {
        checks.invalid.push(problem(
            "spec.targetUrlHeader",
            format!(
                "{} is a header the proxy itself uses; choose another, e.g. X-Target-URL",
                spec.target_url_header
            ),
        ));
    }
    checks.invalid.extend(public_suffix_wildcards(&spec.hosts));
    let mut opened = Vec::new();
    for (i, raw) in spec.allow_cidrs.iter().enumerate() {
        let field = format!("spec.allowCidrs[{i}]");
        match raw.parse::<Cidr>() {
            Err(e) => checks.invalid.push(problem(&field, e.to_string())),
            // Wider than this opens most of an address family, the public Internet included:
            // almost certainly a mistake, and a guard that no longer guards.
            Ok(c) if c.prefix() < if c.network().is_ipv4() { 8 } else { 7 } => checks.invalid.push(problem(
                &field,
                format!("{c} is too wide to be a private API's range; name the network it lives in, e.g. 10.1.0.0/16 or fd00::/64 (at least /8 for IPv4, /7 for IPv6)"),
            )),
            Ok(c) => opened.push(c.to_string()),
        }
    }
    if !opened.is_empty() {
        checks.note = Some(format!("private ranges allowed: {}", opened.join(", ")));
    }
}
