//! `compile()`: manifests in, exact snapshot and reports out, one test per cross-object rule.

mod common;

use common::{
    assert_refused, compile_docs, created, doc, parse, problem_lines, report, secret, secret_values, served_routes,
    shop,
};
use keygate_crds::report::reasons;
use keygate_crds::{Compiled, Kind, compile};
use pretty_assertions::assert_eq;
use serde_json::{Value, json};

fn route(name: &str, spec: &str) -> String {
    shop("ProxyRoute", name, spec)
}

/// Secret values used below; none may ever appear outside `SecretSnapshot.values`.
const UPSTREAM_KEY: &str = "sk_live_do-not-leak-51H";
const APP_KEY: &str = "app-key-do-not-leak-7Q";
const TOKEN: &str = r#"{"data":"4111111111111111","classification":"pci"}"#;
const AES_KEY: &str = "c2VjcmV0LWFlcy1rZXktZG8tbm90LWxlYWstMzJieXQ=";
const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB-do-not-leak\n-----END CERTIFICATE-----\n";

/// Every kind, every kind of reference, and the Secrets they name.
fn full_setup() -> Vec<String> {
    vec![
        secret("upstream", &[("api-key", UPSTREAM_KEY)]),
        secret("app-keys", &[("web", APP_KEY), ("mobile", "m-key-do-not-leak")]),
        secret("tokens", &[("tok_1", TOKEN)]),
        secret("cookie-key", &[("k1", AES_KEY)]),
        secret("ca", &[("ca.crt", CA)]),
        secret("unused", &[("x", "unused-do-not-leak")]),
        shop(
            "CookieTranslation",
            "login",
            "
            header: {name: Authorization, template: 'Bearer {token}'}
            sessionStart: {path: /api/session/start, tokenPointer: /result/session/token, responsePointer: /result}
            encryptionKeys: [{name: cookie-key, key: k1}]",
        ),
        shop(
            "ExternalAllowlist",
            "partners",
            "{targetUrlHeader: BT-PROXY-URL, hosts: ['*.partner.example']}",
        ),
        shop(
            "TokenVaultRule",
            "cards",
            "
            source: {secretRef: {name: tokens}}
            permissions: [{classification: pci, locations: [body]}]",
        ),
        shop(
            "SessionChainPolicy",
            "chain",
            "{createPath: /session, apiKeysSecretRef: {name: app-keys}}",
        ),
        route(
            "payments",
            "
            pathPrefix: /api/payments/
            upstream: https://API.Example.com/v1/
            methods: [POST, GET]
            contentTypes: [Application/JSON]
            bodyLimit: 1024
            timeouts: {connect: 2s}
            forwardHeaders:
            - {name: X-Api-Key, valueFrom: {name: upstream, key: api-key}}
            - {name: X-Client, value: keygate}
            exposeHeaders: [{name: Location, as: X-WHIP-Resource}]
            tls: {caBundle: {name: ca, key: ca.crt}}
            auth: cookie
            cookieTranslationRef: login
            vaultRuleRefs: [cards]",
        ),
        route(
            "partner",
            "
            allowlistRef: partners
            stripPrefix: false
            auth: sessionChain
            sessionChainRef: chain",
        ),
    ]
}

#[test]
fn full_setup_compiles_to_this_exact_snapshot() {
    let compiled = compile_docs(&full_setup());
    let snapshot: Value = serde_json::from_slice(&compiled.snapshot.to_json()).unwrap();
    assert_eq!(
        snapshot,
        json!({
            "format": 1,
            "routes": [
                {
                    "id": "shop/payments",
                    "pathPrefix": "/api/payments",
                    "methods": ["POST", "GET"],
                    "destination": {"type": "upstream", "url": "https://api.example.com/v1"},
                    "stripPrefix": true,
                    "connectTimeoutMs": 2000,
                    "requestTimeoutMs": 30000,
                    "bodyLimit": 1024,
                    "contentTypes": ["application/json"],
                    "forwardHeaders": [
                        {"name": "x-api-key", "value": {"secret": "shop/upstream/api-key"}},
                        {"name": "x-client", "value": {"literal": "keygate"}},
                    ],
                    "exposeHeaders": [{"from": "location", "to": "x-whip-resource"}],
                    "cookiePassthrough": false,
                    "caBundle": "shop/ca/ca.crt",
                    "upstreamProtocol": "auto",
                    "auth": "cookie",
                    "cookieTranslation": "shop/login",
                    "vaultRules": ["shop/cards"],
                },
                {
                    "id": "shop/partner",
                    "pathPrefix": "/shop/partner",
                    "destination": {"type": "allowlist", "allowlist": "shop/partners"},
                    "stripPrefix": false,
                    "connectTimeoutMs": 5000,
                    "requestTimeoutMs": 30000,
                    "bodyLimit": 10485760,
                    "cookiePassthrough": false,
                    "upstreamProtocol": "auto",
                    "auth": "sessionChain",
                    "sessionChain": "shop/chain",
                },
            ],
            "cookieTranslations": {
                "shop/login": {
                    "cookie": {"name": "keygate_session", "hostPrefix": false, "secure": true, "sameSite": "Lax", "path": "/"},
                    "header": {"name": "Authorization", "template": "Bearer {token}"},
                    "sessionStart": {
                        "path": "/api/session/start",
                        "method": "POST",
                        "tokenPointer": "/result/session/token",
                        "responsePointer": "/result",
                    },
                    "storage": "auto",
                    "encryptionKeys": [{"name": "cookie-key", "key": "k1"}],
                    "store": "memory",
                },
            },
            "allowlists": {
                "shop/partners": {
                    "targetUrlHeader": "BT-PROXY-URL",
                    "hosts": ["*.partner.example"],
                    "ports": [443],
                    "schemes": ["https"],
                    "minTls": "1.2",
                },
            },
            "vaultRules": {
                "shop/cards": {
                    "source": {"secretRef": {"name": "tokens"}, "store": "none"},
                    "permissions": [{"classification": "pci", "locations": ["body"]}],
                    "maxTokensPerRequest": 100,
                },
            },
            "sessionPolicies": {
                "shop/chain": {
                    "headers": {"apiKey": "x-api-key", "sessionId": "x-session-id", "requestId": "x-request-id"},
                    "createPath": "/session",
                    "apiKeysSecretRef": {"name": "app-keys"},
                    "ttl": "30m",
                    "store": "memory",
                    "hash": "sha256",
                    "proof": "hash",
                },
            },
        })
    );
    let values = secret_values(&compiled);
    assert_eq!(
        values,
        [
            ("shop/app-keys/mobile", "m-key-do-not-leak"),
            ("shop/app-keys/web", APP_KEY),
            ("shop/ca/ca.crt", CA),
            ("shop/cookie-key/k1", AES_KEY),
            ("shop/tokens/tok_1", TOKEN),
            ("shop/upstream/api-key", UPSTREAM_KEY),
        ]
    );
    assert_eq!(compiled.secrets.snapshot_hash, compiled.snapshot.hash());
    let reports: Vec<(String, &str, &str)> = compiled
        .reports
        .iter()
        .map(|r| (r.object.to_string(), r.reason, r.message.as_str()))
        .collect();
    assert_eq!(
        reports,
        [
            (
                "ProxyRoute/shop/partner".to_string(),
                "Accepted",
                "ProxyRoute/shop/partner is served"
            ),
            (
                "ProxyRoute/shop/payments".to_string(),
                "Accepted",
                "ProxyRoute/shop/payments is served"
            ),
            (
                "CookieTranslation/shop/login".to_string(),
                "Accepted",
                "CookieTranslation/shop/login is served"
            ),
            (
                "ExternalAllowlist/shop/partners".to_string(),
                "Accepted",
                "ExternalAllowlist/shop/partners is served"
            ),
            (
                "TokenVaultRule/shop/cards".to_string(),
                "Accepted",
                "TokenVaultRule/shop/cards is served"
            ),
            (
                "SessionChainPolicy/shop/chain".to_string(),
                "Accepted",
                "SessionChainPolicy/shop/chain is served"
            ),
        ]
    );
}

#[test]
fn default_path_prefix_is_namespace_and_name() {
    let compiled = compile_docs(&[
        doc("ProxyRoute", "billing/invoices", "upstream: https://billing.example"),
        doc("ProxyRoute", "no-namespace", "upstream: https://other.example"),
    ]);
    let prefixes: Vec<(&str, &str)> = compiled
        .snapshot
        .routes
        .iter()
        .map(|r| (r.id.as_str(), r.path_prefix.as_str()))
        .collect();
    assert_eq!(
        prefixes,
        [
            ("billing/invoices", "/billing/invoices"),
            ("default/no-namespace", "/default/no-namespace")
        ]
    );
}

/// Asserts the route `t` is refused with `reason` and exactly `lines`, and route `fine` served.
fn assert_route_refused(mut docs: Vec<String>, t_spec: &str, reason: &str, lines: &[&str]) -> Compiled {
    docs.push(route("t", t_spec));
    docs.push(route("fine", "upstream: https://fine.example"));
    let compiled = compile_docs(&docs);
    assert_eq!(problem_lines(&compiled, Kind::ProxyRoute, "t"), lines);
    assert_eq!(report(&compiled, Kind::ProxyRoute, "t").reason, reason);
    assert_eq!(
        served_routes(&compiled),
        ["shop/fine"],
        "a bad route must not block the others"
    );
    compiled
}

#[test]
fn missing_referenced_resources_are_ref_not_found() {
    assert_route_refused(
        vec![],
        "
        allowlistRef: partners
        auth: cookie
        cookieTranslationRef: login
        vaultRuleRefs: [cards]",
        reasons::REF_NOT_FOUND,
        &[
            "ProxyRoute/shop/t: spec.cookieTranslationRef: CookieTranslation shop/login does not exist or is not Ready; create it or fix the name",
            "ProxyRoute/shop/t: spec.allowlistRef: ExternalAllowlist shop/partners does not exist or is not Ready; create it or fix the name",
            "ProxyRoute/shop/t: spec.vaultRuleRefs[0]: TokenVaultRule shop/cards does not exist or is not Ready; create it or fix the name",
        ],
    );
    assert_route_refused(
        vec![],
        "{upstream: 'https://a.example', auth: sessionChain, sessionChainRef: chain}",
        reasons::REF_NOT_FOUND,
        &[
            "ProxyRoute/shop/t: spec.sessionChainRef: SessionChainPolicy shop/chain does not exist or is not Ready; create it or fix the name",
        ],
    );
}

#[test]
fn a_reference_in_another_namespace_is_not_found() {
    let elsewhere = doc(
        "SessionChainPolicy",
        "other/chain",
        "{createPath: /s, apiKeysSecretRef: {name: k}}",
    );
    assert_route_refused(
        vec![elsewhere],
        "{upstream: 'https://a.example', auth: sessionChain, sessionChainRef: chain}",
        reasons::REF_NOT_FOUND,
        &[
            "ProxyRoute/shop/t: spec.sessionChainRef: SessionChainPolicy shop/chain does not exist or is not Ready; create it or fix the name",
        ],
    );
}

#[test]
fn a_reference_to_a_refused_resource_refuses_the_route_only() {
    let broken = shop(
        "CookieTranslation",
        "login",
        "{header: {name: Authorization, template: 'no placeholder'}, sessionStart: {path: /login, tokenPointer: /t}}",
    );
    let compiled = assert_route_refused(
        vec![broken],
        "{upstream: 'https://a.example', auth: cookie, cookieTranslationRef: login}",
        reasons::REF_NOT_FOUND,
        &[
            "ProxyRoute/shop/t: spec.cookieTranslationRef: CookieTranslation shop/login does not exist or is not Ready; create it or fix the name",
        ],
    );
    assert_eq!(
        report(&compiled, Kind::CookieTranslation, "login").reason,
        reasons::INVALID
    );
    assert!(compiled.snapshot.cookie_translations.is_empty());
}

#[test]
fn references_into_another_namespace_are_not_permitted() {
    assert_route_refused(
        vec![doc("ExternalAllowlist", "other/partners", "hosts: [a.example]")],
        "allowlistRef: other/partners",
        reasons::REF_NOT_PERMITTED,
        &[
            "ProxyRoute/shop/t: spec.allowlistRef: ExternalAllowlist other/partners is not shared with other namespaces (its spec.allowedNamespaces.from is Same); ask its owners to set allowedNamespaces to from: All, or from: Selector with a selector matching namespace shop, or create one in shop",
        ],
    );
}

/// The platform team's shared policies, each shared in another way, and the Secrets they name,
/// all in namespace `platform`; `shop` is labelled a tenant, `blog` is not.
fn platform_setup() -> Vec<String> {
    let platform_secret = |name: &str, data: &str| {
        format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: platform}}\nstringData: {data}\n")
    };
    vec![
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {keygate.dev/tenant: 'true'}}\n".to_string(),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: blog}\n".to_string(),
        platform_secret("cookie-key", &format!("{{k1: {AES_KEY}}}")),
        platform_secret("app-keys", &format!("{{web: {APP_KEY}}}")),
        platform_secret("tokens", &format!("{{tok_1: '{TOKEN}'}}")),
        doc(
            "ExternalAllowlist",
            "platform/partners",
            "{hosts: ['*.partner.example'], allowedNamespaces: {from: All}}",
        ),
        doc(
            "CookieTranslation",
            "platform/login",
            "
            header: {name: Authorization, template: 'Bearer {token}'}
            sessionStart: {path: /login/start, tokenPointer: /token}
            encryptionKeys: [{name: cookie-key, key: k1}]
            allowedNamespaces: {from: Selector, selector: {matchLabels: {keygate.dev/tenant: 'true'}}}",
        ),
        doc(
            "TokenVaultRule",
            "platform/cards",
            "
            source: {secretRef: {name: tokens}}
            permissions: [{classification: pci, locations: [body]}]
            allowedNamespaces:
              from: Selector
              selector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: In, values: [shop, blog]}]}",
        ),
        doc(
            "SessionChainPolicy",
            "platform/chain",
            "{createPath: /session, apiKeysSecretRef: {name: app-keys}}",
        ),
    ]
}

#[test]
fn shared_policies_are_referenced_where_their_owners_allow() {
    let mut docs = platform_setup();
    docs.push(route(
        "shared",
        "
        upstream: https://api.example
        auth: cookie
        cookieTranslationRef: platform/login
        vaultRuleRefs: [platform/cards]",
    ));
    docs.push(route(
        "partner",
        "{pathPrefix: /partner, allowlistRef: platform/partners}",
    ));
    docs.push(doc(
        "ProxyRoute",
        "blog/cards",
        "{upstream: 'https://blog.example', vaultRuleRefs: [platform/cards]}",
    ));
    let compiled = compile_docs(&docs);
    assert_eq!(served_routes(&compiled), ["blog/cards", "shop/partner", "shop/shared"]);
    let shared = compiled.snapshot.routes.iter().find(|r| r.id == "shop/shared").unwrap();
    assert_eq!(shared.cookie_translation.as_deref(), Some("platform/login"));
    assert_eq!(shared.vault_rules, ["platform/cards"]);
    let ids: Vec<&str> = secret_values(&compiled).into_iter().map(|(id, _)| id).collect();
    assert_eq!(
        ids,
        [
            "platform/app-keys/web",
            "platform/cookie-key/k1",
            "platform/tokens/tok_1"
        ],
        "the policies' Secrets are read in their own namespace, never the route's"
    );
}

#[test]
fn shared_policies_refuse_namespaces_they_do_not_admit() {
    let mut docs = platform_setup();
    docs.push(route(
        "chain",
        "{upstream: 'https://a.example', auth: sessionChain, sessionChainRef: platform/chain}",
    ));
    docs.push(doc(
        "ProxyRoute",
        "blog/login",
        "{upstream: 'https://a.example', auth: cookie, cookieTranslationRef: platform/login}",
    ));
    docs.push(route(
        "missing",
        "{upstream: 'https://a.example', vaultRuleRefs: [platform/nope]}",
    ));
    let compiled = compile_docs(&docs);
    assert_eq!(served_routes(&compiled), Vec::<&str>::new());
    assert_refused(
        &compiled,
        Kind::ProxyRoute,
        "chain",
        reasons::REF_NOT_PERMITTED,
        &[
            "ProxyRoute/shop/chain: spec.sessionChainRef: SessionChainPolicy platform/chain is not shared with other namespaces (its spec.allowedNamespaces.from is Same); ask its owners to set allowedNamespaces to from: All, or from: Selector with a selector matching namespace shop, or create one in shop",
        ],
    );
    let blog = compiled
        .reports
        .iter()
        .find(|r| r.object.namespace == "blog" && r.object.name == "login")
        .unwrap();
    assert_eq!(blog.reason, reasons::REF_NOT_PERMITTED);
    assert_eq!(
        blog.problem_lines().collect::<Vec<_>>(),
        [
            "ProxyRoute/blog/login: spec.cookieTranslationRef: CookieTranslation platform/login is shared only with namespaces matching its spec.allowedNamespaces.selector, and namespace blog does not match; ask its owners to widen the selector, or label namespace blog to match it"
        ]
    );
    assert_refused(
        &compiled,
        Kind::ProxyRoute,
        "missing",
        reasons::REF_NOT_FOUND,
        &[
            "ProxyRoute/shop/missing: spec.vaultRuleRefs[0]: TokenVaultRule platform/nope does not exist or is not Ready; create it or fix the name",
        ],
    );
}

#[test]
fn a_namespace_label_change_changes_what_is_shared() {
    let mut docs = platform_setup();
    docs.push(route(
        "shared",
        "{upstream: 'https://a.example', auth: cookie, cookieTranslationRef: platform/login}",
    ));
    assert_eq!(served_routes(&compile_docs(&docs)), ["shop/shared"]);
    docs[0] = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n".to_string();
    let compiled = compile_docs(&docs);
    assert_eq!(
        report(&compiled, Kind::ProxyRoute, "shared").reason,
        reasons::REF_NOT_PERMITTED
    );
    docs.remove(0);
    let compiled = compile_docs(&docs);
    assert_eq!(
        report(&compiled, Kind::ProxyRoute, "shared").reason,
        reasons::REF_NOT_PERMITTED,
        "a namespace compile() was not told about has no labels but its name"
    );
}

#[test]
fn a_missing_secret_is_named_and_its_values_are_not() {
    let compiled = assert_route_refused(
        vec![secret("upstream", &[("other-key", UPSTREAM_KEY)])],
        "
        upstream: https://a.example
        forwardHeaders:
        - {name: x-api-key, valueFrom: {name: upstream, key: api-key}}
        - {name: x-org, valueFrom: {name: org, key: id}}",
        reasons::SECRET_NOT_FOUND,
        &[
            "ProxyRoute/shop/t: spec.forwardHeaders[0].valueFrom: Secret shop/upstream has no key \"api-key\"; add the key or fix the reference",
            "ProxyRoute/shop/t: spec.forwardHeaders[1].valueFrom: Secret shop/org does not exist; create it or fix the name",
        ],
    );
    assert_no_secret_value_outside_the_secret_snapshot(&compiled, &[UPSTREAM_KEY]);
}

#[test]
fn secrets_of_the_other_kinds_are_checked_too() {
    let compiled = compile_docs(&[
        shop(
            "SessionChainPolicy",
            "chain",
            "{createPath: /s, apiKeysSecretRef: {name: app-keys}, store: redis, redisUrl: {name: redis, key: url}}",
        ),
        shop(
            "ExternalAllowlist",
            "partners",
            "{hosts: [a.example], caBundle: {name: ca, key: ca.crt}}",
        ),
    ]);
    assert_refused(
        &compiled,
        Kind::SessionChainPolicy,
        "chain",
        reasons::SECRET_NOT_FOUND,
        &[
            "SessionChainPolicy/shop/chain: spec.apiKeysSecretRef: Secret shop/app-keys does not exist; create it or fix the name",
            "SessionChainPolicy/shop/chain: spec.redisUrl: Secret shop/redis does not exist; create it or fix the name",
        ],
    );
    assert_eq!(
        problem_lines(&compiled, Kind::ExternalAllowlist, "partners"),
        ["ExternalAllowlist/shop/partners: spec.caBundle: Secret shop/ca does not exist; create it or fix the name"]
    );
}

#[test]
fn a_zero_session_ttl_is_invalid() {
    let compiled = compile_docs(&[
        secret("app-keys", &[("web", APP_KEY)]),
        shop(
            "SessionChainPolicy",
            "chain",
            "{createPath: /s, apiKeysSecretRef: {name: app-keys}, ttl: 0s}",
        ),
    ]);
    assert_refused(
        &compiled,
        Kind::SessionChainPolicy,
        "chain",
        reasons::INVALID,
        &["SessionChainPolicy/shop/chain: spec.ttl: must be a positive duration such as 30m"],
    );
    assert!(compiled.secrets.values.is_empty(), "a refused policy ships no API keys");
}

#[test]
fn session_policies_sharing_a_create_path_are_both_refused() {
    let policy = |name: &str, path: &str| {
        shop(
            "SessionChainPolicy",
            name,
            &format!("{{createPath: {path}, apiKeysSecretRef: {{name: app-keys}}}}"),
        )
    };
    let compiled = compile_docs(&[
        secret("app-keys", &[("web", APP_KEY)]),
        policy("a", "/session"),
        policy("b", "/session"),
        policy("c", "/other-session"),
    ]);
    for name in ["a", "b"] {
        assert_eq!(
            problem_lines(&compiled, Kind::SessionChainPolicy, name),
            [format!(
                "SessionChainPolicy/shop/{name}: spec.createPath: /session is the createPath of shop/a and shop/b; give each SessionChainPolicy its own path"
            )]
        );
    }
    assert_eq!(
        report(&compiled, Kind::SessionChainPolicy, "c").reason,
        reasons::ACCEPTED
    );
    assert_eq!(
        compiled.snapshot.session_policies.keys().collect::<Vec<_>>(),
        ["shop/c"]
    );
}

#[test]
fn a_zero_timeout_is_invalid() {
    assert_route_refused(
        vec![],
        "{upstream: 'https://a.example', timeouts: {connect: 0ms}}",
        reasons::INVALID,
        &["ProxyRoute/shop/t: spec.timeouts.connect: must be a positive duration such as 250ms, 30s or 5m"],
    );
}

#[test]
fn the_older_route_keeps_a_contested_prefix() {
    let compiled = compile_docs(&[
        created(
            route("newer", "{pathPrefix: /api, upstream: 'https://new.example'}"),
            "2024-05-02T00:00:00Z",
        ),
        created(
            route("older", "{pathPrefix: /api, upstream: 'https://old.example'}"),
            "2024-05-01T00:00:00Z",
        ),
    ]);
    assert_eq!(served_routes(&compiled), ["shop/older"]);
    assert_eq!(report(&compiled, Kind::ProxyRoute, "newer").reason, reasons::CONFLICT);
    assert_eq!(
        problem_lines(&compiled, Kind::ProxyRoute, "newer"),
        [
            "ProxyRoute/shop/newer: spec.pathPrefix: path prefix /api is already served by ProxyRoute shop/older, which is older; choose another pathPrefix"
        ]
    );
}

#[test]
fn conflicts_are_per_host_and_prefix() {
    let at = |name: &str, spec: &str, ts: &str| created(route(name, spec), ts);
    let compiled = compile_docs(&[
        at(
            "shop-api",
            "{hosts: [Shop.Example.com], pathPrefix: /api, upstream: 'https://shop.example'}",
            "2024-05-01T00:00:00Z",
        ),
        at(
            "blog-api",
            "{hosts: [blog.example.com], pathPrefix: /api, upstream: 'https://blog.example'}",
            "2024-05-02T00:00:00Z",
        ),
        at(
            "any-api",
            "{pathPrefix: /api, upstream: 'https://any.example'}",
            "2024-05-03T00:00:00Z",
        ),
        at(
            "wild-api",
            "{hosts: ['*.example.com'], pathPrefix: /api, upstream: 'https://wild.example'}",
            "2024-05-04T00:00:00Z",
        ),
        at(
            "squatter",
            "{hosts: [news.example.com, 'shop.example.com.'], pathPrefix: /api/, upstream: 'https://s.example'}",
            "2024-05-05T00:00:00Z",
        ),
    ]);
    assert_eq!(
        served_routes(&compiled),
        ["shop/any-api", "shop/blog-api", "shop/shop-api", "shop/wild-api"]
    );
    assert_refused(
        &compiled,
        Kind::ProxyRoute,
        "squatter",
        reasons::CONFLICT,
        &[
            "ProxyRoute/shop/squatter: spec.pathPrefix: path prefix /api/ (the same as /api) on host shop.example.com is already served by ProxyRoute shop/shop-api, which is older; choose another pathPrefix or host",
        ],
    );
    let hosts: Vec<&[String]> = compiled.snapshot.routes.iter().map(|r| r.hosts.as_slice()).collect();
    assert_eq!(
        hosts,
        [
            &[][..],
            &["blog.example.com".to_string()],
            &["shop.example.com".to_string()],
            &["*.example.com".to_string()]
        ],
        "lower case, sorted by prefix then id"
    );
}

#[test]
fn a_route_already_in_the_cluster_beats_one_not_yet_applied() {
    let compiled = compile_docs(&[
        route("local", "{pathPrefix: /api, upstream: 'https://new.example'}"),
        created(
            route("z-applied", "{pathPrefix: /api, upstream: 'https://old.example'}"),
            "2024-05-01T00:00:00Z",
        ),
    ]);
    assert_eq!(served_routes(&compiled), ["shop/z-applied"]);
    assert_eq!(
        problem_lines(&compiled, Kind::ProxyRoute, "local"),
        [
            "ProxyRoute/shop/local: spec.pathPrefix: path prefix /api is already served by ProxyRoute shop/z-applied, which already exists in the cluster; choose another pathPrefix"
        ]
    );
}

#[test]
fn without_creation_times_namespace_and_name_decide() {
    let compiled = compile_docs(&[
        doc(
            "ProxyRoute",
            "zeta/a",
            "{pathPrefix: /api, upstream: 'https://z.example'}",
        ),
        doc(
            "ProxyRoute",
            "alpha/b",
            "{pathPrefix: /api, upstream: 'https://a.example'}",
        ),
    ]);
    assert_eq!(served_routes(&compiled), ["alpha/b"]);
    let loser = compiled.reports.iter().find(|r| r.object.namespace == "zeta").unwrap();
    assert_eq!(
        loser.problem_lines().collect::<Vec<_>>(),
        [
            "ProxyRoute/zeta/a: spec.pathPrefix: path prefix /api is already served by ProxyRoute alpha/b, which comes first by namespace/name as neither is older; choose another pathPrefix"
        ]
    );
}

#[test]
fn a_trailing_slash_does_not_make_another_prefix() {
    let compiled = compile_docs(&[
        route("a", "{pathPrefix: /api, upstream: 'https://a.example'}"),
        route("b", "{pathPrefix: /api/, upstream: 'https://b.example'}"),
    ]);
    assert_eq!(served_routes(&compiled), ["shop/a"]);
    assert_eq!(
        problem_lines(&compiled, Kind::ProxyRoute, "b"),
        [
            "ProxyRoute/shop/b: spec.pathPrefix: path prefix /api/ (the same as /api) is already served by ProxyRoute shop/a, which comes first by namespace/name as neither is older; choose another pathPrefix"
        ]
    );
}

#[test]
fn an_invalid_route_does_not_claim_its_prefix() {
    let compiled = compile_docs(&[
        created(
            route(
                "older",
                "{pathPrefix: /api, upstream: 'https://a.example', bodyLimit: 0}",
            ),
            "2024-01-01T00:00:00Z",
        ),
        created(
            route("newer", "{pathPrefix: /api, upstream: 'https://b.example'}"),
            "2024-06-01T00:00:00Z",
        ),
    ]);
    assert_eq!(served_routes(&compiled), ["shop/newer"]);
}

#[test]
fn a_resource_defined_twice_is_refused_once_and_not_served() {
    let compiled = compile_docs(&[
        route("twice", "{pathPrefix: /one, upstream: 'https://a.example'}"),
        route("twice", "{pathPrefix: /two, upstream: 'https://b.example'}"),
        shop("ExternalAllowlist", "partners", "hosts: [a.example]"),
        shop("ExternalAllowlist", "partners", "hosts: [b.example]"),
        route("fine", "upstream: https://fine.example"),
    ]);
    assert_eq!(served_routes(&compiled), ["shop/fine"]);
    assert!(compiled.snapshot.allowlists.is_empty());
    for (kind, object) in [
        (Kind::ProxyRoute, "ProxyRoute/shop/twice"),
        (Kind::ExternalAllowlist, "ExternalAllowlist/shop/partners"),
    ] {
        let name = object.rsplit('/').next().unwrap();
        assert_eq!(report(&compiled, kind, name).reason, reasons::CONFLICT);
        assert_eq!(
            problem_lines(&compiled, kind, name),
            [format!(
                "{object}: metadata.name: {object} is defined 2 times; keep one definition (none of them is served until then)"
            )]
        );
    }
}

/// Deterministic reorderings of `items`: reversed and every rotation.
fn reorderings<T: Clone>(items: &[T]) -> Vec<Vec<T>> {
    let mut all = vec![items.iter().rev().cloned().collect()];
    for k in 1..items.len() {
        let mut rotated = items.to_vec();
        rotated.rotate_left(k);
        all.push(rotated);
    }
    all
}

#[test]
fn the_same_input_in_any_order_gives_the_same_bytes() {
    let mut docs = full_setup();
    // Include every outcome, so ordering is exercised for refusals and conflicts too.
    docs.push(route(
        "z-contender",
        "{pathPrefix: /api/payments, upstream: 'https://b.example'}",
    ));
    docs.push(route(
        "z-host",
        "{hosts: [a.example.com], pathPrefix: /api/payments, upstream: 'https://b.example'}",
    ));
    docs.push(route(
        "z-host-too",
        "{hosts: [A.example.com], pathPrefix: /api/payments, upstream: 'https://c.example'}",
    ));
    docs.push(route("dup", "upstream: https://a.example"));
    docs.push(route("dup", "upstream: https://b.example"));
    docs.push(route("lost", "{allowlistRef: nowhere}"));
    let first = compile_docs(&docs);
    assert_eq!(
        report(&first, Kind::ProxyRoute, "z-contender").reason,
        reasons::CONFLICT
    );
    for docs in reorderings(&docs) {
        let again = compile_docs(&docs);
        assert_eq!(
            String::from_utf8(again.snapshot.to_json()).unwrap(),
            String::from_utf8(first.snapshot.to_json()).unwrap()
        );
        assert_eq!(again.snapshot.hash(), first.snapshot.hash());
        assert_eq!(again.secrets.to_json(), first.secrets.to_json());
        assert_eq!(again.reports, first.reports);
    }
}

#[test]
fn compile_has_no_hidden_state() {
    let resources = parse(&full_setup());
    assert_eq!(
        compile(&resources).snapshot.to_json(),
        compile(&resources).snapshot.to_json()
    );
    assert_eq!(compile(&resources).snapshot.hash().len(), 64);
}

#[test]
fn a_change_changes_the_hash() {
    let before = compile_docs(&full_setup());
    let mut docs = full_setup();
    docs.push(route("extra", "upstream: https://extra.example"));
    assert_ne!(compile_docs(&docs).snapshot.hash(), before.snapshot.hash());
}

/// Fails if any of `values` shows up in the snapshot JSON, a report, or debug output.
fn assert_no_secret_value_outside_the_secret_snapshot(compiled: &Compiled, values: &[&str]) {
    let snapshot = String::from_utf8(compiled.snapshot.to_json()).unwrap();
    let reports = format!("{:?}", compiled.reports);
    let debug = format!("{:?} {:?}", compiled.secrets, compiled.snapshot);
    for value in values {
        for line in value.lines() {
            assert!(!snapshot.contains(line), "secret value in snapshot JSON: {line}");
            assert!(!reports.contains(line), "secret value in a report: {line}");
            assert!(!debug.contains(line), "secret value in debug output: {line}");
        }
    }
}

#[test]
fn secret_values_live_only_in_the_secret_snapshot() {
    let compiled = compile_docs(&full_setup());
    let values = [UPSTREAM_KEY, APP_KEY, TOKEN, AES_KEY, CA];
    for value in values {
        assert!(
            compiled.secrets.values.values().any(|v| v == value),
            "{value} should be shipped"
        );
    }
    assert_no_secret_value_outside_the_secret_snapshot(&compiled, &values);
    assert!(
        !format!("{:?}", parse(&full_setup())).contains(UPSTREAM_KEY),
        "Resources' Debug prints Secret data"
    );
}

#[test]
fn refused_resources_ship_no_secret_values() {
    let compiled = compile_docs(&[
        secret("upstream", &[("api-key", UPSTREAM_KEY)]),
        // Found Secret, missing CA bundle: refused, so the found value must not ship either.
        route(
            "half",
            "
            upstream: https://a.example
            forwardHeaders: [{name: x-api-key, valueFrom: {name: upstream, key: api-key}}]
            tls: {caBundle: {name: ca, key: ca.crt}}",
        ),
        // Resolved fine, then lost its prefix.
        created(
            route(
                "loser",
                "{pathPrefix: /p, upstream: 'https://a.example', forwardHeaders: [{name: k, valueFrom: {name: upstream, key: api-key}}]}",
            ),
            "2024-02-01T00:00:00Z",
        ),
        created(
            route("winner", "{pathPrefix: /p, upstream: 'https://b.example'}"),
            "2024-01-01T00:00:00Z",
        ),
        // Compiled after the refused ones: must not pick up what they read.
        route("z-served", "upstream: https://c.example"),
    ]);
    assert_eq!(served_routes(&compiled), ["shop/winner", "shop/z-served"]);
    assert_eq!(
        report(&compiled, Kind::ProxyRoute, "half").reason,
        reasons::SECRET_NOT_FOUND
    );
    assert_eq!(report(&compiled, Kind::ProxyRoute, "loser").reason, reasons::CONFLICT);
    assert_eq!(compiled.secrets.values.len(), 0, "{:?}", compiled.secrets);
}

#[test]
fn reports_echo_the_generation() {
    let with_generation =
        route("r", "upstream: https://a.example").replacen("metadata:\n", "metadata:\n  generation: 7\n", 1);
    let compiled = compile_docs(&[with_generation]);
    assert_eq!(report(&compiled, Kind::ProxyRoute, "r").generation, Some(7));
}

#[test]
fn static_tokens_are_checked_without_printing_their_data() {
    const CARD: &str = "4111-do-not-leak";
    let compiled = compile_docs(&[
        secret(
            "tokens",
            &[
                (
                    "ok",
                    r#"{"data": {"number": "4111"}, "classification": "pci", "expiresAt": "2030-01-01T00:00:00Z"}"#,
                ),
                ("not-json", CARD),
                (
                    "bad-class",
                    &format!(r#"{{"data": "{CARD}", "classification": "PCI"}}"#),
                ),
                ("bad id!", r#"{"data": "x", "classification": "pci"}"#),
            ],
        ),
        shop(
            "TokenVaultRule",
            "cards",
            "{source: {secretRef: {name: tokens}}, permissions: [{classification: pci}]}",
        ),
    ]);
    assert_refused(
        &compiled,
        Kind::TokenVaultRule,
        "cards",
        reasons::INVALID,
        &[
            "TokenVaultRule/shop/cards: spec.source.secretRef: Secret shop/tokens key \"bad id!\" is not a token id: use 1 to 128 letters, digits, '.', '_' or '-'",
            "TokenVaultRule/shop/cards: spec.source.secretRef: Secret shop/tokens key \"bad-class\": the classification must be lower-case letters, digits and '-', e.g. pci",
            "TokenVaultRule/shop/cards: spec.source.secretRef: Secret shop/tokens key \"not-json\": the value is not a JSON object {\"data\": ..., \"classification\": \"pci\", \"expiresAt\"?: \"RFC 3339\"} (line 1, column 4)",
        ],
    );
    assert!(compiled.secrets.values.is_empty(), "a refused rule ships no tokens");
    assert_no_secret_value_outside_the_secret_snapshot(&compiled, &[CARD]);
}

#[test]
fn the_older_rule_keeps_a_contested_tokenize_endpoint() {
    let rule = |path: &str| {
        format!(
            "
            source: {{store: memory, encryptionKeys: [{{name: vault-key, key: k1}}]}}
            permissions: [{{classification: pci}}]
            tokenizeEndpoint: {{path: {path}, keysSecretRef: {{name: app-keys}}}}"
        )
    };
    let docs = [
        secret("vault-key", &[("k1", AES_KEY)]),
        secret("app-keys", &[("web", APP_KEY)]),
        created(shop("TokenVaultRule", "newer", &rule("/vault")), "2024-05-02T00:00:00Z"),
        created(shop("TokenVaultRule", "older", &rule("/vault")), "2024-05-01T00:00:00Z"),
        // Broken (its keys Secret is missing), so it claims nothing and the next rule gets the path.
        created(
            shop(
                "TokenVaultRule",
                "broken",
                &rule("/other").replace("app-keys", "missing"),
            ),
            "2024-04-01T00:00:00Z",
        ),
        created(shop("TokenVaultRule", "other", &rule("/other")), "2024-05-03T00:00:00Z"),
    ];
    for docs in reorderings(&docs) {
        let compiled = compile_docs(&docs);
        let served: Vec<&str> = compiled.snapshot.vault_rules.keys().map(String::as_str).collect();
        assert_eq!(served, ["shop/older", "shop/other"]);
        assert_eq!(
            report(&compiled, Kind::TokenVaultRule, "newer").reason,
            reasons::CONFLICT
        );
        assert_eq!(
            problem_lines(&compiled, Kind::TokenVaultRule, "newer"),
            [
                "TokenVaultRule/shop/newer: spec.tokenizeEndpoint.path: /vault is already served by TokenVaultRule shop/older, which is older or first by namespace/name; choose another path"
            ]
        );
        assert_eq!(
            report(&compiled, Kind::TokenVaultRule, "broken").reason,
            reasons::SECRET_NOT_FOUND
        );
    }
}

#[test]
fn cors_allows_every_header_keygate_reads_on_the_route() {
    let mut docs = full_setup();
    docs.push(route(
        "spa",
        "
        pathPrefix: /spa
        allowlistRef: partners
        auth: sessionChain
        sessionChainRef: chain
        exposeHeaders: [{name: Location, as: X-WHIP-Resource}]
        csrf: {mode: header, headerName: X-CSRF}
        cors: {allowOrigins: ['https://App.example'], allowHeaders: [X-Trace], exposeHeaders: [X-Request-Cost]}",
    ));
    let compiled = compile_docs(&docs);
    let spa = compiled
        .snapshot
        .routes
        .iter()
        .find(|r| r.id == "shop/spa")
        .expect("served");
    let cors = serde_json::to_value(spa.cors.as_ref().unwrap()).unwrap();
    assert_eq!(
        cors,
        json!({
            "allowOrigins": ["https://app.example"],
            "allowMethods": ["DELETE", "GET", "HEAD", "PATCH", "POST", "PUT"],
            "allowHeaders": ["bt-proxy-url", "content-type", "x-api-key", "x-csrf", "x-request-id", "x-session-id", "x-trace"],
            "exposeHeaders": ["retry-after", "x-keygate-chain", "x-keygate-error", "x-request-cost", "x-whip-resource"],
            "allowCredentials": false,
            "maxAgeSeconds": 600
        })
    );
}

/// What an SDK on another origin must read is exposed on every CORS route, and a signature-mode
/// chain's preflight allows the signature header.
#[test]
fn cors_exposes_what_the_sdk_reads() {
    let mut docs: Vec<String> = full_setup()
        .into_iter()
        .filter(|d| !d.contains("kind: ProxyRoute"))
        .collect();
    docs.push(shop(
        "SessionChainPolicy",
        "signed",
        "{createPath: /signed-session, apiKeysSecretRef: {name: app-keys}, proof: signature, headers: {requestId: X-Keygate-Link}}",
    ));
    let cors = "cors: {allowOrigins: ['https://app.example']}";
    docs.push(route(
        "plain",
        &format!("pathPrefix: /plain\nupstream: https://a.example\n{cors}"),
    ));
    docs.push(route(
        "signed",
        &format!(
            "pathPrefix: /signed\nupstream: https://a.example\nauth: sessionChain\nsessionChainRef: signed\n{cors}"
        ),
    ));
    docs.push(route(
        "login",
        &format!("pathPrefix: /login\nupstream: https://a.example\nauth: cookie\ncookieTranslationRef: login\ncsrf: {{mode: doubleSubmit}}\n{cors}"),
    ));
    let compiled = compile_docs(&docs);
    let cors_of = |id: &str| {
        let route = compiled.snapshot.routes.iter().find(|r| r.id == id).expect("served");
        route.cors.clone().expect("a CORS route")
    };
    assert_eq!(cors_of("shop/plain").expose_headers, ["retry-after", "x-keygate-error"]);
    let signed = cors_of("shop/signed");
    assert_eq!(
        signed.expose_headers,
        ["retry-after", "x-keygate-chain", "x-keygate-error"]
    );
    assert_eq!(
        signed.allow_headers,
        [
            "content-type",
            "x-api-key",
            "x-keygate-link",
            "x-keygate-signature",
            "x-session-id"
        ]
    );
    assert_eq!(
        cors_of("shop/login").expose_headers,
        ["retry-after", "x-keygate-csrf", "x-keygate-error"]
    );
}

const CHAIN_KEY: &str = "chain-key-do-not-leak-0123456789abcdef";

fn hmac_policy(secret_ref: &str) -> Vec<String> {
    vec![
        secret("app-keys", &[("web", APP_KEY)]),
        secret("chain", &[("long", CHAIN_KEY), ("short", "too-short-do-not-leak")]),
        shop(
            "SessionChainPolicy",
            "chain",
            &format!("{{createPath: /s, apiKeysSecretRef: {{name: app-keys}}, proof: hmac{secret_ref}}}"),
        ),
    ]
}

#[test]
fn hmac_chains_need_a_long_enough_chain_key_secret() {
    let compiled = compile_docs(&hmac_policy(", chainKeySecretRef: {name: chain, key: long}"));
    assert_eq!(
        report(&compiled, Kind::SessionChainPolicy, "chain").reason,
        reasons::ACCEPTED
    );
    let policy = &compiled.snapshot.session_policies["shop/chain"];
    assert_eq!(
        serde_json::to_value(policy).unwrap()["chainKeySecretRef"],
        json!({"name": "chain", "key": "long"})
    );
    assert_eq!(
        compiled.secrets.values.get("shop/chain/long").map(String::as_str),
        Some(CHAIN_KEY),
        "the value ships in the secret snapshot only"
    );
    assert_no_secret_value_outside_the_secret_snapshot(&compiled, &[CHAIN_KEY]);

    let compiled = compile_docs(&hmac_policy(", chainKeySecretRef: {name: chain, key: short}"));
    assert_refused(
        &compiled,
        Kind::SessionChainPolicy,
        "chain",
        reasons::INVALID,
        &[
            "SessionChainPolicy/shop/chain: spec.chainKeySecretRef: Secret shop/chain key \"short\" must hold at least 32 bytes; create one with `openssl rand -hex 32`",
        ],
    );
    assert!(!compiled.secrets.values.contains_key("shop/chain/short"));
    assert_no_secret_value_outside_the_secret_snapshot(&compiled, &["too-short-do-not-leak"]);

    assert_refused(
        &compile_docs(&hmac_policy("")),
        Kind::SessionChainPolicy,
        "chain",
        reasons::INVALID,
        &[
            "SessionChainPolicy/shop/chain: spec: proof: hmac needs chainKeySecretRef, a Secret key holding at least 32 random bytes (e.g. `openssl rand -hex 32`)",
        ],
    );
    assert_refused(
        &compile_docs(&hmac_policy(", chainKeySecretRef: {name: chain, key: gone}")),
        Kind::SessionChainPolicy,
        "chain",
        reasons::SECRET_NOT_FOUND,
        &[
            "SessionChainPolicy/shop/chain: spec.chainKeySecretRef: Secret shop/chain has no key \"gone\"; add the key or fix the reference",
        ],
    );
}

#[test]
fn combinations_that_cannot_work_are_refused_with_the_fix() {
    let no_routes = || -> Vec<String> {
        full_setup()
            .into_iter()
            .filter(|d| !d.contains("kind: ProxyRoute"))
            .collect()
    };
    assert_route_refused(
        no_routes(),
        "
        upstream: https://a.example
        cookieTranslationRef: login
        cookiePassthrough: true",
        "Invalid",
        &[
            "ProxyRoute/shop/t: spec.cookiePassthrough: cookiePassthrough would send the session cookie, and with it the token, to the upstream; remove cookiePassthrough or cookieTranslationRef",
        ],
    );
    assert_route_refused(
        no_routes(),
        "
        upstream: https://a.example
        csrf: {mode: doubleSubmit}",
        "Invalid",
        &[
            "ProxyRoute/shop/t: spec.csrf.mode: doubleSubmit compares against the CSRF cookie a CookieTranslation sets at session start; set cookieTranslationRef or use mode: header",
        ],
    );
}

#[test]
fn a_cookie_key_that_is_not_32_bytes_is_named_not_shown() {
    let docs = vec![
        secret("cookie-key", &[("k1", "c2hvcnQta2V5LWRvLW5vdC1sZWFr")]),
        shop(
            "CookieTranslation",
            "login",
            "
            header: {name: Authorization}
            sessionStart: {path: /login, tokenPointer: /token}
            encryptionKeys: [{name: cookie-key, key: k1}]",
        ),
    ];
    let compiled = compile_docs(&docs);
    assert_eq!(
        problem_lines(&compiled, Kind::CookieTranslation, "login"),
        [
            "CookieTranslation/shop/login: spec.encryptionKeys[0]: Secret shop/cookie-key key \"k1\" must hold 32 random bytes, base64-encoded; create one with `openssl rand -base64 32`"
        ]
    );
    assert!(
        compiled.secrets.values.is_empty(),
        "a refused resource ships no secret values"
    );
}

#[test]
fn an_api_key_secret_without_keys_is_refused() {
    let docs = vec![
        secret("app-keys", &[("web", "\n")]),
        route(
            "t",
            "
            upstream: https://a.example
            auth: apiKey
            apiKey: {keysSecretRef: {name: app-keys}}",
        ),
    ];
    let compiled = compile_docs(&docs);
    assert_eq!(report(&compiled, Kind::ProxyRoute, "t").reason, "SecretNotFound");
    assert_eq!(
        problem_lines(&compiled, Kind::ProxyRoute, "t"),
        [
            "ProxyRoute/shop/t: spec.apiKey.keysSecretRef: Secret shop/app-keys holds no API key; add one key per app (the key's name is the app's name, its value the app's keys, one per line)"
        ]
    );
}

/// Problem lines and reason of the route `ns/name`.
fn route_outcome(compiled: &Compiled, ns: &str, name: &str) -> (&'static str, Vec<String>) {
    let r = compiled
        .reports
        .iter()
        .find(|r| r.object.kind == Kind::ProxyRoute && r.object.namespace == ns && r.object.name == name)
        .unwrap_or_else(|| panic!("no report for {ns}/{name}"));
    (r.reason, r.problem_lines().collect())
}

fn delegation_setup() -> Vec<String> {
    vec![
        doc(
            "KeygateDelegation",
            "shop",
            "{namespaces: [shop], hosts: [shop.example.com, '*.shop.example.com'], pathPrefixes: [/api/]}",
        ),
        doc(
            "KeygateDelegation",
            "blog",
            "{namespaces: [blog], hosts: [Blog.example.com]}",
        ),
    ]
}

#[test]
fn claims_outside_what_is_delegated_are_not_permitted() {
    let mut docs = delegation_setup();
    let at = |id: &str, spec: &str| doc("ProxyRoute", id, spec);
    docs.extend([
        at(
            "shop/api",
            "{hosts: [shop.example.com], pathPrefix: /api/v1, upstream: 'https://a.example'}",
        ),
        at(
            "shop/eu",
            "{hosts: ['*.eu.shop.example.com', 'x.shop.example.com'], pathPrefix: /api, upstream: 'https://a.example'}",
        ),
        at(
            "shop/squat",
            "{hosts: [blog.example.com], pathPrefix: /api, upstream: 'https://a.example'}",
        ),
        at("shop/anyhost", "{pathPrefix: /api, upstream: 'https://a.example'}"),
        at(
            "shop/admin",
            "{hosts: [shop.example.com], pathPrefix: /apix, upstream: 'https://a.example'}",
        ),
        at(
            "blog/api",
            "{hosts: [blog.example.com], pathPrefix: /api, upstream: 'https://b.example'}",
        ),
        at(
            "news/api",
            "{hosts: [news.example.com], pathPrefix: /api, upstream: 'https://n.example'}",
        ),
    ]);
    let compiled = compile_docs(&docs);
    assert_eq!(served_routes(&compiled), ["blog/api", "shop/eu", "shop/api"]);
    let shop = "KeygateDelegation shop (hosts: *.shop.example.com, shop.example.com; path prefixes: /api)";
    for (id, line) in [
        ("shop/squat", format!("spec.hosts: host blog.example.com with path prefix /api is outside what {shop} delegates to namespace shop; claim a host and prefix within it, or ask the platform team to extend it")),
        ("shop/anyhost", format!("spec.hosts: path prefix /api on every host (the route sets no hosts) is outside what {shop} delegates to namespace shop; claim a host and prefix within it, or ask the platform team to extend it")),
        ("shop/admin", format!("spec.pathPrefix: host shop.example.com with path prefix /apix is outside what {shop} delegates to namespace shop; claim a host and prefix within it, or ask the platform team to extend it")),
        ("news/api", "spec.hosts: host news.example.com with path prefix /api is not delegated: no KeygateDelegation covers namespace news (delegations decide which namespaces may claim which hosts and prefixes); ask the platform team to delegate it".to_string()),
    ] {
        let (ns, name) = id.split_once('/').unwrap();
        assert_eq!(
            route_outcome(&compiled, ns, name),
            (reasons::NOT_PERMITTED, vec![format!("ProxyRoute/{id}: {line}")])
        );
    }
}

#[test]
fn an_invalid_delegation_grants_nothing_rather_than_everything() {
    let docs = vec![
        doc("KeygateDelegation", "typo", "{hosts: [shop.example.com]}"),
        route("api", "{hosts: [shop.example.com], upstream: 'https://a.example'}"),
    ];
    let compiled = compile_docs(&docs);
    assert_eq!(served_routes(&compiled), Vec::<&str>::new());
    let typo = compiled
        .reports
        .iter()
        .find(|r| r.object.kind == Kind::KeygateDelegation)
        .unwrap();
    assert_eq!(typo.reason, reasons::INVALID);
    assert_eq!(
        typo.problem_lines().collect::<Vec<_>>(),
        ["KeygateDelegation/typo: spec: name the namespaces (namespaces) or select them (namespaceSelector)"]
    );
    assert_eq!(route_outcome(&compiled, "shop", "api").0, reasons::NOT_PERMITTED);
}

#[test]
fn a_delegation_by_namespace_label() {
    let docs = vec![
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {team: web}}\n".to_string(),
        doc(
            "KeygateDelegation",
            "web",
            "{namespaceSelector: {matchLabels: {team: web}}, pathPrefixes: [/web]}",
        ),
        route("web", "{pathPrefix: /web/shop, upstream: 'https://a.example'}"),
        doc(
            "ProxyRoute",
            "blog/web",
            "{pathPrefix: /web/blog, upstream: 'https://a.example'}",
        ),
    ];
    let compiled = compile_docs(&docs);
    assert_eq!(served_routes(&compiled), ["shop/web"]);
    assert_eq!(route_outcome(&compiled, "blog", "web").0, reasons::NOT_PERMITTED);
}

/// What the operator reads by name: every Secret compiling looked for, whether it exists or not
/// (a missing one must be read once it appears), and no Secret nothing references.
#[test]
fn secrets_read_are_the_referenced_ones_found_or_not() {
    let mut docs = full_setup();
    docs.push(route(
        "missing-key",
        "
        upstream: https://api.example.com
        forwardHeaders: [{name: x-api-key, valueFrom: {name: not-yet, key: api-key}}]",
    ));
    let compiled = compile_docs(&docs);
    let read: Vec<&str> = compiled.secrets_read.iter().map(|(_, name)| name.as_str()).collect();
    for name in ["upstream", "app-keys", "tokens", "cookie-key", "ca", "not-yet"] {
        assert!(read.contains(&name), "{name} was not looked for: {read:?}");
    }
    assert!(
        !read.contains(&"unused"),
        "an unreferenced Secret was looked for: {read:?}"
    );
    assert!(compiled.secrets_read.iter().all(|(ns, _)| ns == "shop"));
}
