//! The CEL rules (`x-kubernetes-validations`) of the five kinds, as a user meets them: a
//! manifest goes through `manifests::parse` and `compile`, and a broken one is refused with
//! `kind/namespace/name: field: message`. `compile` evaluates the same rules the API server does.

mod common;

use common::{NS, compile_docs, dedent, problem_lines, report, secret, shop};
use keygate_crds::Kind;
use keygate_crds::report::reasons;
use keygate_crds::resources::route::HOSTS_MESSAGE;

/// One valid resource of each kind, named `ok`, and the Secrets they need, so that cases can
/// reference them.
fn fixtures() -> Vec<String> {
    vec![
        shop("CookieTranslation", "ok", COOKIE),
        shop("ExternalAllowlist", "ok", ALLOWLIST),
        shop("TokenVaultRule", "ok", VAULT),
        shop(
            "SessionChainPolicy",
            "ok",
            "{createPath: /ok-session, apiKeysSecretRef: {name: app-keys}}",
        ),
        secret("app-keys", &[("web", "key-one")]),
        secret("redis", &[("url", "redis://:pw@redis:6379")]),
        secret("vault-key", &[("k1", "MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDE=")]),
        secret(
            "tokens",
            &[("tok_1", r#"{"data": "4111111111111111", "classification": "pci"}"#)],
        ),
    ]
}

const ROUTE: &str = "upstream: https://api.example.com";
const COOKIE: &str = "
    header: {name: Authorization, template: 'Bearer {token}'}
    sessionStart: {path: /login, tokenPointer: /token}";
const ALLOWLIST: &str = "hosts: [api.example.com]";
const VAULT: &str = "
    source: {}
    permissions: [{classification: pci}]";
const CHAIN: &str = "
    createPath: /session
    apiKeysSecretRef: {name: app-keys}";

/// Compiles `spec` as resource `kind` `shop/t` next to the fixtures.
fn compile_case(kind: Kind, spec: &str) -> keygate_crds::Compiled {
    let mut docs = fixtures();
    docs.push(shop(kind.as_str(), "t", spec));
    compile_docs(&docs)
}

/// Each spec must be served as is.
fn assert_accepted(kind: Kind, specs: &[&str]) {
    let mut failures = Vec::new();
    for spec in specs {
        let compiled = compile_case(kind, spec);
        let r = report(&compiled, kind, "t");
        if r.reason != reasons::ACCEPTED {
            failures.push(format!("{spec}\n  -> {}: {:?}", r.reason, r.problems));
        }
    }
    assert!(
        failures.is_empty(),
        "valid {} refused:\n{}",
        kind.as_str(),
        failures.join("\n")
    );
}

/// Each `(spec, field, message)` must be refused as `Invalid` with exactly that one line.
fn assert_refused(kind: Kind, cases: &[(&str, &str, &str)]) {
    let mut failures = Vec::new();
    for (spec, field, message) in cases {
        let compiled = compile_case(kind, spec);
        let expected = vec![format!("{}/{NS}/t: {field}: {message}", kind.as_str())];
        let lines = problem_lines(&compiled, kind, "t");
        let reason = report(&compiled, kind, "t").reason;
        if lines != expected || reason != reasons::INVALID {
            failures.push(format!(
                "{spec}\n  expected Invalid {expected:?}\n  got      {reason} {lines:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} cases not refused as expected:\n{}",
        kind.as_str(),
        failures.join("\n")
    );
}

#[test]
fn fixtures_are_valid() {
    let compiled = compile_docs(&fixtures());
    let refused: Vec<String> = compiled.refused().flat_map(|r| r.problem_lines()).collect();
    assert_eq!(refused, Vec::<String>::new());
    assert_eq!(compiled.reports.len(), 4);
}

#[test]
fn proxy_route_valid() {
    assert_accepted(
        Kind::ProxyRoute,
        &[
            ROUTE,
            "
            pathPrefix: /api/payments/
            upstream: http://payments.internal:8080/v1/
            bodyLimit: 1
            contentTypes: [application/json, application/sdp, application/vnd.api+json]
            forwardHeaders:
            - {name: x-api-key, valueFrom: {name: app-keys, key: web}}
            - {name: X-Client, value: keygate}
            exposeHeaders: [{name: Location, as: X-WHIP-Resource}, {name: ETag}]
            timeouts: {connect: 250ms, request: 2m}
            cors:
              allowOrigins: ['https://app.example.com', 'https://*.example.com:8443']
              allowCredentials: true
              allowHeaders: [content-type]
              maxAgeSeconds: 86400
            csrf: {mode: header, headerName: x-csrf}
            rateLimit: {requestsPerSecond: 10, burst: 20, per: client}",
            "
            allowlistRef: ok
            cors: {allowOrigins: ['*']}",
            "
            hosts: [Shop.Example.com, '*.example.com', 'api.example.com.', 'xn--bcher-kva.example']
            upstream: https://api.example.com",
            "
            pathPrefix: /.well-known/a..b;v=1
            upstream: https://api.example.com
            allowEncodedSlashes: true",
            "
            upstream: https://api.example.com
            auth: cookie
            cookieTranslationRef: ok",
            "
            upstream: https://api.example.com
            auth: apiKey
            apiKey: {keysSecretRef: {name: app-keys}}",
            "
            upstream: https://api.example.com
            auth: sessionChain
            sessionChainRef: ok
            vaultRuleRefs: [ok]",
        ],
    );
}

#[test]
fn proxy_route_rules() {
    const PREFIX: &str = "pathPrefix must start with '/', e.g. /api/payments";
    const PLAIN: &str = "pathPrefix must be a plain path as requests are routed after normalization: no '//', '.' or '..' segments, '%' escapes, backslashes, '?' or '#'";
    const URL: &str = "upstream must be an absolute http:// or https:// URL without userinfo, query or fragment, e.g. https://api.example.com/v1";
    const ONE_DESTINATION: &str =
        "set exactly one of upstream (a fixed destination) or allowlistRef (the client names the destination)";
    const DURATION: &str = "must be a whole number followed by ms, s, m or h, e.g. 250ms, 30s, 5m";
    assert_refused(
        Kind::ProxyRoute,
        &[
            (
                "{pathPrefix: api, upstream: 'https://a.example'}",
                "spec.pathPrefix",
                PREFIX,
            ),
            (
                "{pathPrefix: /a//b, upstream: 'https://a.example'}",
                "spec.pathPrefix",
                PLAIN,
            ),
            (
                "{pathPrefix: /a/../b, upstream: 'https://a.example'}",
                "spec.pathPrefix",
                PLAIN,
            ),
            (
                "{pathPrefix: /a/.., upstream: 'https://a.example'}",
                "spec.pathPrefix",
                PLAIN,
            ),
            (
                "{pathPrefix: '/a?b', upstream: 'https://a.example'}",
                "spec.pathPrefix",
                PLAIN,
            ),
            (
                "{pathPrefix: /a/./b, upstream: 'https://a.example'}",
                "spec.pathPrefix",
                PLAIN,
            ),
            (
                "{pathPrefix: /a/., upstream: 'https://a.example'}",
                "spec.pathPrefix",
                PLAIN,
            ),
            (
                "{pathPrefix: /%61pi, upstream: 'https://a.example'}",
                "spec.pathPrefix",
                PLAIN,
            ),
            (
                "{pathPrefix: '/a\\b', upstream: 'https://a.example'}",
                "spec.pathPrefix",
                PLAIN,
            ),
            ("upstream: ftp://files.example.com", "spec.upstream", URL),
            ("upstream: api.example.com", "spec.upstream", URL),
            ("upstream: /relative", "spec.upstream", URL),
            ("upstream: https://user:secret@api.example.com", "spec.upstream", URL),
            ("upstream: https://api.example.com/v1?key=1", "spec.upstream", URL),
            ("upstream: https://api.example.com/#top", "spec.upstream", URL),
            (
                "{upstream: 'https://a.example', allowlistRef: ok}",
                "spec",
                ONE_DESTINATION,
            ),
            ("pathPrefix: /nowhere", "spec", ONE_DESTINATION),
            (
                "{upstream: 'https://a.example', hosts: ['shop.example.com:8443']}",
                "spec.hosts",
                HOSTS_MESSAGE,
            ),
            (
                "{upstream: 'https://a.example', hosts: ['https://shop.example.com']}",
                "spec.hosts",
                HOSTS_MESSAGE,
            ),
            (
                "{upstream: 'https://a.example', hosts: ['shop.example.com/api']}",
                "spec.hosts",
                HOSTS_MESSAGE,
            ),
            (
                "{upstream: 'https://a.example', hosts: ['*']}",
                "spec.hosts",
                HOSTS_MESSAGE,
            ),
            (
                "{upstream: 'https://a.example', hosts: ['a.*.example.com']}",
                "spec.hosts",
                HOSTS_MESSAGE,
            ),
            (
                "{upstream: 'https://a.example', hosts: ['-a.example.com']}",
                "spec.hosts",
                HOSTS_MESSAGE,
            ),
            (
                "{upstream: 'https://a.example', hosts: ['']}",
                "spec.hosts",
                HOSTS_MESSAGE,
            ),
            (
                "{upstream: 'https://a.example', hosts: ['*.co.uk']}",
                "spec.hosts[0]",
                "*.co.uk would match every domain under the public suffix co.uk, owned by many different parties; name a domain registered under it, e.g. *.example.co.uk",
            ),
            (
                "{upstream: 'https://a.example', bodyLimit: 0}",
                "spec.bodyLimit",
                "bodyLimit must be greater than 0 bytes",
            ),
            (
                "{upstream: 'https://a.example', bodyLimit: -1}",
                "spec.bodyLimit",
                "bodyLimit must be greater than 0 bytes",
            ),
            (
                "{upstream: 'https://a.example', contentTypes: ['application/json; charset=utf-8']}",
                "spec.contentTypes",
                "contentTypes entries must be media types like application/json, without parameters",
            ),
            (
                "{upstream: 'https://a.example', forwardHeaders: [{name: 'x key', value: v}]}",
                "spec.forwardHeaders[0].name",
                "name must be an HTTP header name (letters, digits and !#$%&*+.^_`|~-)",
            ),
            (
                "{upstream: 'https://a.example', forwardHeaders: [{name: x-key}]}",
                "spec.forwardHeaders[0]",
                "set exactly one of value or valueFrom",
            ),
            (
                "{upstream: 'https://a.example', forwardHeaders: [{name: x-key, value: v, valueFrom: {name: app-keys, key: web}}]}",
                "spec.forwardHeaders[0]",
                "set exactly one of value or valueFrom",
            ),
            (
                "{upstream: 'https://a.example', exposeHeaders: [{name: Location}, {name: Location, as: 'X WHIP'}]}",
                "spec.exposeHeaders[1].as",
                "as must be an HTTP header name",
            ),
            (
                "{upstream: 'https://a.example', cors: {allowOrigins: ['https://app.example.com', '*'], allowCredentials: true}}",
                "spec.cors",
                "allowCredentials cannot be combined with origin '*': list the origins",
            ),
            (
                "{upstream: 'https://a.example', cors: {allowOrigins: ['https://app.example.com/path']}}",
                "spec.cors.allowOrigins",
                "allowOrigins entries must be '*', scheme://host[:port] or scheme://*.domain, without a path",
            ),
            (
                "{upstream: 'https://a.example', cors: {allowOrigins: ['*'], allowHeaders: ['x ok']}}",
                "spec.cors.allowHeaders",
                "allowHeaders entries must be HTTP header names",
            ),
            (
                "{upstream: 'https://a.example', cors: {allowOrigins: ['*'], exposeHeaders: ['a:b']}}",
                "spec.cors.exposeHeaders",
                "exposeHeaders entries must be HTTP header names",
            ),
            (
                "{upstream: 'https://a.example', cors: {allowOrigins: ['*'], maxAgeSeconds: 86401}}",
                "spec.cors.maxAgeSeconds",
                "maxAgeSeconds must be between 0 and 86400",
            ),
            (
                "{upstream: 'https://a.example', csrf: {mode: header}}",
                "spec.csrf",
                "mode: header needs headerName (and optionally headerValue)",
            ),
            (
                "{upstream: 'https://a.example', csrf: {mode: header, headerName: 'x csrf'}}",
                "spec.csrf.headerName",
                "headerName must be an HTTP header name",
            ),
            (
                "{upstream: 'https://a.example', auth: cookie}",
                "spec",
                "auth: cookie needs cookieTranslationRef",
            ),
            (
                "{upstream: 'https://a.example', auth: apiKey}",
                "spec",
                "auth: apiKey needs the apiKey block (header and keysSecretRef)",
            ),
            (
                "{upstream: 'https://a.example', auth: sessionChain}",
                "spec",
                "auth: sessionChain needs sessionChainRef",
            ),
            (
                "{upstream: 'https://a.example', timeouts: {connect: '5'}}",
                "spec.timeouts.connect",
                DURATION,
            ),
            (
                "{upstream: 'https://a.example', timeouts: {request: 1.5s}}",
                "spec.timeouts.request",
                DURATION,
            ),
            (
                "{upstream: 'https://a.example', rateLimit: {requestsPerSecond: 0}}",
                "spec.rateLimit.requestsPerSecond",
                "requestsPerSecond must be greater than 0",
            ),
            (
                "{upstream: 'https://a.example', rateLimit: {requestsPerSecond: 5, burst: 0}}",
                "spec.rateLimit.burst",
                "burst must be greater than 0",
            ),
        ],
    );
}

#[test]
fn cookie_translation_valid() {
    assert_accepted(
        Kind::CookieTranslation,
        &[
            COOKIE,
            "
            cookie: {name: sid, hostPrefix: true, secure: true, sameSite: None, maxAgeSeconds: 3600}
            header: {name: x-auth-token}
            sessionStart: {path: /api/session/start, method: PUT, tokenPointer: /result/session/token, responsePointer: ''}
            logout: {path: /api/session/logout}
            storage: server
            encryptionKeys: [{name: vault-key, key: k1}]",
        ],
    );
}

#[test]
fn cookie_translation_rules() {
    let with = |extra: &str| {
        format!(
            "{{header: {{name: Authorization, template: 'Bearer {{token}}'}}, sessionStart: {{path: /login, tokenPointer: /token}}, {extra}}}"
        )
    };
    let host_prefix = "hostPrefix (__Host-) requires secure: true, path: / and no domain";
    let cases = [
        (with("cookie: {sameSite: None, secure: false}"), "spec.cookie", "sameSite: None requires secure: true (browsers reject it otherwise)"),
        (with("cookie: {hostPrefix: true, domain: example.com}"), "spec.cookie", host_prefix),
        (with("cookie: {hostPrefix: true, path: /app}"), "spec.cookie", host_prefix),
        (with("cookie: {hostPrefix: true, secure: false}"), "spec.cookie", host_prefix),
        (with("cookie: {name: 'my cookie'}"), "spec.cookie.name", "cookie name must be a token: letters, digits and !#$%&*+.^_`|~-"),
        (with("cookie: {path: app}"), "spec.cookie.path", "path must start with '/'"),
        (with("cookie: {maxAgeSeconds: 0}"), "spec.cookie.maxAgeSeconds", "maxAgeSeconds must be greater than 0"),
        (with("logout: {path: logout}"), "spec.logout.path", "path must start with '/'"),
        (
            "{header: {name: Authorization, template: 'Bearer token'}, sessionStart: {path: /login, tokenPointer: /token}}".into(),
            "spec.header.template",
            "template must contain {token}, e.g. 'Bearer {token}'",
        ),
        (
            "{header: {name: 'Auth header'}, sessionStart: {path: /login, tokenPointer: /token}}".into(),
            "spec.header.name",
            "name must be an HTTP header name",
        ),
        (
            "{header: {name: Authorization}, sessionStart: {path: login, tokenPointer: /token}}".into(),
            "spec.sessionStart.path",
            "path must start with '/'",
        ),
        (
            "{header: {name: Authorization}, sessionStart: {path: /login, tokenPointer: token}}".into(),
            "spec.sessionStart.tokenPointer",
            "tokenPointer must be a JSON pointer starting with '/', e.g. /result/session/token",
        ),
        (
            "{header: {name: Authorization}, sessionStart: {path: /login, tokenPointer: /t, responsePointer: result}}".into(),
            "spec.sessionStart.responsePointer",
            "responsePointer must be empty or a JSON pointer starting with '/'",
        ),
    ];
    let cases: Vec<(&str, &str, &str)> = cases.iter().map(|(s, f, m)| (s.as_str(), *f, *m)).collect();
    assert_refused(Kind::CookieTranslation, &cases);
}

#[test]
fn external_allowlist_valid() {
    assert_accepted(
        Kind::ExternalAllowlist,
        &[
            ALLOWLIST,
            "
            targetUrlHeader: BT-PROXY-URL
            hosts: ['*.example.com', api.stripe.com, 1password.com, xn--bcher-kva.example]
            ports: [443, 8443, 1, 65535]
            schemes: [https, http]
            minTls: '1.3'
            caBundle: {name: vault-key, key: k1}
            allowCidrs: [10.1.0.0/16, 'fd00::/64']",
        ],
    );
}

#[test]
fn external_allowlist_rules() {
    const DNS: &str = "hosts entries must be lower-case DNS names with at least two labels, optionally starting with '*.', e.g. api.example.com or *.example.com";
    const IP: &str = "hosts entries must be DNS names, not IP addresses";
    const PORTS: &str = "ports must be between 1 and 65535";
    const CIDR: &str = "allowCidrs entries must be CIDRs like 10.1.0.0/16 or fd00::/64";
    assert_refused(
        Kind::ExternalAllowlist,
        &[
            ("hosts: [com]", "spec.hosts", DNS),
            ("hosts: ['*.com']", "spec.hosts", DNS),
            ("hosts: ['*']", "spec.hosts", DNS),
            ("hosts: ['*.*.example.com']", "spec.hosts", DNS),
            ("hosts: [api.example.com, API.Example.com]", "spec.hosts", DNS),
            ("hosts: ['api.example.com:443']", "spec.hosts", DNS),
            ("hosts: ['https://api.example.com']", "spec.hosts", DNS),
            ("hosts: ['-api.example.com']", "spec.hosts", DNS),
            ("hosts: [10.0.0.1]", "spec.hosts", IP),
            ("hosts: ['*.1.2.3.4']", "spec.hosts", IP),
            ("hosts: [169.254.169.254]", "spec.hosts", IP),
            ("hosts: ['::1']", "spec.hosts", DNS),
            (
                "{hosts: [a.example], targetUrlHeader: 'X Target'}",
                "spec.targetUrlHeader",
                "targetUrlHeader must be an HTTP header name",
            ),
            ("{hosts: [a.example], ports: [0]}", "spec.ports", PORTS),
            ("{hosts: [a.example], ports: [443, 65536]}", "spec.ports", PORTS),
            ("{hosts: [a.example], allowCidrs: [10.0.0.0]}", "spec.allowCidrs", CIDR),
            (
                "{hosts: [a.example], allowCidrs: [10.0.0.0/33]}",
                "spec.allowCidrs",
                CIDR,
            ),
            ("{hosts: [a.example], allowCidrs: [internal]}", "spec.allowCidrs", CIDR),
        ],
    );
}

#[test]
fn token_vault_rule_valid() {
    assert_accepted(
        Kind::TokenVaultRule,
        &[
            VAULT,
            "
            source: {secretRef: {name: tokens}}
            permissions: [{classification: pci, locations: [body]}, {classification: bank-2}]
            maxTokensPerRequest: 1",
            "
            source: {store: redis, redisUrl: {name: redis, key: url}, encryptionKeys: [{name: vault-key, key: k1}]}
            permissions: [{classification: general}]
            maxTokensPerRequest: 100
            tokenizeResponse: {pointers: [/card/number, /iban], classification: pci, ttl: 24h}",
            "
            source: {store: memory, encryptionKeys: [{name: vault-key, key: k1}]}
            permissions: [{classification: pci}]
            tokenizeEndpoint: {path: /vault/acme.v1, header: Authorization, keysSecretRef: {name: app-keys}}",
        ],
    );
}

#[test]
fn token_vault_rule_rules() {
    const MAX: &str = "maxTokensPerRequest must be between 1 and 100";
    const KEYS: &str = "a dynamic store (memory or redis) needs encryptionKeys: values are stored encrypted";
    const ENDPOINT_PATH: &str = "path must be a plain path like /vault/acme: segments of letters, digits, '.', '_', '~' and '-', no trailing '/'";
    let perm = "permissions: [{classification: pci}]";
    let mem = "{store: memory, encryptionKeys: [{name: vault-key, key: k1}]}";
    let endpoint = "{path: /vault/acme, keysSecretRef: {name: app-keys}}";
    let cases = [
        (
            format!("{{source: {{}}, {perm}, maxTokensPerRequest: 0}}"),
            "spec.maxTokensPerRequest",
            MAX,
        ),
        (
            format!("{{source: {{}}, {perm}, maxTokensPerRequest: 101}}"),
            "spec.maxTokensPerRequest",
            MAX,
        ),
        (
            "{source: {}, permissions: [{classification: pci}, {classification: PCI}]}".into(),
            "spec.permissions[1].classification",
            "classification must be lower-case letters, digits and '-'",
        ),
        (format!("{{source: {{store: memory}}, {perm}}}"), "spec.source", KEYS),
        (
            format!("{{source: {{store: redis, encryptionKeys: [{{name: vault-key, key: k1}}]}}, {perm}}}"),
            "spec.source",
            "store: redis needs redisUrl",
        ),
        (
            format!("{{source: {mem}, {perm}, tokenizeResponse: {{pointers: [card/number], classification: pci}}}}"),
            "spec.tokenizeResponse.pointers",
            "pointers must be JSON pointers starting with '/'",
        ),
        (
            format!("{{source: {mem}, {perm}, tokenizeResponse: {{pointers: [/card], classification: pci, ttl: 1d}}}}"),
            "spec.tokenizeResponse.ttl",
            "must be a whole number followed by ms, s, m or h, e.g. 250ms, 30s, 5m",
        ),
        (
            format!("{{source: {{}}, {perm}, tokenizeResponse: {{pointers: [/card], classification: pci}}}}"),
            "spec",
            "tokenizeResponse needs a dynamic store for the new tokens: set source.store to memory or redis",
        ),
        (
            format!("{{source: {{}}, {perm}, tokenizeEndpoint: {endpoint}}}"),
            "spec",
            "tokenizeEndpoint needs a dynamic store for the new tokens: set source.store to memory or redis",
        ),
        (
            format!(
                "{{source: {mem}, {perm}, tokenizeEndpoint: {{path: /vault/, keysSecretRef: {{name: app-keys}}}}}}"
            ),
            "spec.tokenizeEndpoint.path",
            ENDPOINT_PATH,
        ),
        (
            format!(
                "{{source: {mem}, {perm}, tokenizeEndpoint: {{path: /a/../b, keysSecretRef: {{name: app-keys}}}}}}"
            ),
            "spec.tokenizeEndpoint.path",
            ENDPOINT_PATH,
        ),
    ];
    let cases: Vec<(&str, &str, &str)> = cases.iter().map(|(s, f, m)| (s.as_str(), *f, *m)).collect();
    assert_refused(Kind::TokenVaultRule, &cases);
}

#[test]
fn session_chain_policy_valid() {
    assert_accepted(
        Kind::SessionChainPolicy,
        &[
            CHAIN,
            "
            createPath: /api/session
            apiKeysSecretRef: {name: app-keys}
            headers: {apiKey: X-App-Key, sessionId: X-Session, requestId: X-Next}
            ttl: 90s
            store: redis
            redisUrl: {name: redis, key: url}",
            "{createPath: /s, apiKeysSecretRef: {name: app-keys}, proof: signature}",
        ],
    );
}

#[test]
fn session_chain_policy_rules() {
    const DURATION: &str = "must be a whole number followed by ms, s, m or h, e.g. 250ms, 30s, 5m";
    let keys = "apiKeysSecretRef: {name: app-keys}";
    let cases = [
        (
            format!("{{createPath: session, {keys}}}"),
            "spec.createPath",
            "createPath must start with '/'",
        ),
        (format!("{{createPath: /s, {keys}, ttl: '30'}}"), "spec.ttl", DURATION),
        (format!("{{createPath: /s, {keys}, ttl: 30min}}"), "spec.ttl", DURATION),
        (
            format!("{{createPath: /s, {keys}, store: none}}"),
            "spec",
            "store must be memory or redis",
        ),
        (
            format!("{{createPath: /s, {keys}, store: redis}}"),
            "spec",
            "store: redis needs redisUrl",
        ),
        (
            format!("{{createPath: /s, {keys}, headers: {{requestId: 'x request'}}}}"),
            "spec.headers.requestId",
            "requestId must be an HTTP header name",
        ),
        (
            format!("{{createPath: /s, {keys}, proof: hmac}}"),
            "spec",
            "proof: hmac needs chainKeySecretRef, a Secret key holding at least 32 random bytes (e.g. `openssl rand -hex 32`)",
        ),
        (
            format!("{{createPath: /s, {keys}, proof: signature, chainKeySecretRef: {{name: chain, key: k}}}}"),
            "spec",
            "chainKeySecretRef is used only with proof: hmac; remove it or set proof: hmac",
        ),
        (
            format!("{{createPath: /s, {keys}, chainKeySecretRef: {{name: chain, key: k}}}}"),
            "spec",
            "chainKeySecretRef is used only with proof: hmac; remove it or set proof: hmac",
        ),
    ];
    let cases: Vec<(&str, &str, &str)> = cases.iter().map(|(s, f, m)| (s.as_str(), *f, *m)).collect();
    assert_refused(Kind::SessionChainPolicy, &cases);
}

#[test]
fn allowed_namespaces_rules_on_every_shareable_kind() {
    const SELECTOR: &str = "from: Selector needs selector, and selector is read only with from: Selector";
    let field = "spec.allowedNamespaces";
    for (kind, spec) in [
        (Kind::CookieTranslation, COOKIE),
        (Kind::ExternalAllowlist, ALLOWLIST),
        (Kind::TokenVaultRule, VAULT),
        (Kind::SessionChainPolicy, CHAIN),
    ] {
        let with = |shared: &str| format!("{}\nallowedNamespaces: {shared}", dedent(spec));
        let valid = [
            with("{from: All}"),
            with("{from: Same}"),
            with("{}"),
            with("{from: Selector, selector: {matchLabels: {team: a}}}"),
        ];
        assert_accepted(kind, &valid.iter().map(String::as_str).collect::<Vec<_>>());
        let bad = [
            with("{from: Selector}"),
            with("{from: All, selector: {matchLabels: {team: a}}}"),
        ];
        let cases: Vec<(&str, &str, &str)> = bad.iter().map(|s| (s.as_str(), field, SELECTOR)).collect();
        assert_refused(kind, &cases);
    }
}

#[test]
fn transforms_and_inbound_tokenization_valid() {
    assert_accepted(
        Kind::ProxyRoute,
        &["
            upstream: https://api.example.com
            transform:
              request:
              - {op: setHeader, name: x-user, value: \"request.headers['x-user-id'] + ':' + request.method\"}
              - {op: removeHeader, name: x-debug}
              - {op: setJsonField, pointer: /meta/source, value: \"'keygate'\"}
              - {op: removeJsonField, pointer: /internal}
              response:
              - {op: replaceJsonBody, value: \"{'data': response.body, 'status': response.status, 'path': request.path}\"}"],
    );
    assert_accepted(
        Kind::TokenVaultRule,
        &["
            source: {store: memory, encryptionKeys: [{name: vault-key, key: k1}]}
            permissions: [{classification: pci, locations: [body]}]
            tokenizeRequest: {pointers: [/sensitive_value], formFields: [card_number], classification: pci, ttl: 1h}"],
    );
}

#[test]
fn transform_and_inbound_tokenization_mistakes_name_the_field() {
    let route = |ops: &str| format!("{{upstream: 'https://a.example', transform: {{request: [{ops}]}}}}");
    let answer = |ops: &str| format!("{{upstream: 'https://a.example', transform: {{response: [{ops}]}}}}");
    let cases = [
        (
            route("{op: setHeader, name: x-a, value: \"request.method = 'GET'\"}"),
            "spec.transform.request[0].value",
            "CEL syntax error at line 1, column 16: Syntax error: token recognition error at: '= '",
        ),
        (
            route("{op: setHeader, name: x-a, value: 'response.status'}"),
            "spec.transform.request[0].value",
            "response is only known in transform.response operations",
        ),
        (
            answer("{op: setHeader, name: x-a, value: 'req.path'}"),
            "spec.transform.response[0].value",
            "unknown variable req; response operations can read request and response",
        ),
        (
            route("{op: setHeader, name: x-a, value: 'upper(request.path)'}"),
            "spec.transform.request[0].value",
            "unknown function upper(); use the CEL standard functions (size, contains, startsWith, matches, string, int, ...)",
        ),
        (
            route("{op: setJsonField, pointer: /a, value: \"1 + 'a'\"}"),
            "spec.transform.request[0].value",
            "the expression always fails: a value has the wrong type for the operation or function",
        ),
        (
            route("{op: setHeader, name: Set-Cookie, value: \"'a=b'\"}"),
            "spec.transform.request[0].name",
            "Set-Cookie is a header Keygate itself writes or removes; transforms may not change it",
        ),
        (
            route("{op: removeHeader, name: x-a, value: \"'b'\"}"),
            "spec.transform.request[0]",
            "value (a CEL expression) is needed by setHeader, setJsonField and replaceJsonBody, and taken by no other operation",
        ),
        (
            route("{op: setJsonField, value: \"'b'\"}"),
            "spec.transform.request[0]",
            "pointer is the JSON field of setJsonField and removeJsonField, and only of those",
        ),
        (
            route("{op: removeJsonField, pointer: a}"),
            "spec.transform.request[0].pointer",
            "pointer must be a JSON pointer starting with '/', e.g. /customer/id",
        ),
    ];
    let cases: Vec<(&str, &str, &str)> = cases.iter().map(|(s, f, m)| (s.as_str(), *f, *m)).collect();
    assert_refused(Kind::ProxyRoute, &cases);

    let mem = "{store: memory, encryptionKeys: [{name: vault-key, key: k1}]}";
    let perm = "permissions: [{classification: pci}]";
    let cases = [
        (
            format!("{{source: {{}}, {perm}, tokenizeRequest: {{pointers: [/a], classification: pci}}}}"),
            "spec",
            "tokenizeRequest needs a dynamic store for the new tokens: set source.store to memory or redis",
        ),
        (
            format!("{{source: {mem}, {perm}, tokenizeRequest: {{classification: pci}}}}"),
            "spec.tokenizeRequest",
            "tokenizeRequest needs pointers (JSON bodies) or formFields (form bodies), or both",
        ),
        (
            format!("{{source: {mem}, {perm}, tokenizeRequest: {{pointers: [a], classification: pci}}}}"),
            "spec.tokenizeRequest.pointers",
            "pointers must be JSON pointers starting with '/'",
        ),
    ];
    let cases: Vec<(&str, &str, &str)> = cases.iter().map(|(s, f, m)| (s.as_str(), *f, *m)).collect();
    assert_refused(Kind::TokenVaultRule, &cases);
}
