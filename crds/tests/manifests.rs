//! `manifests::parse`: YAML files in, resources and readable problems out, as `kubectl apply`
//! with strict field validation would judge them.

mod common;

use common::{compile_docs, dedent, parse_files, secret_values, shop};
use keygate_crds::manifests::{self, ParseProblem};
use pretty_assertions::assert_eq;

/// Problems of one file, as `check` prints them.
fn problems(file: &str, text: &str) -> Vec<String> {
    manifests::parse([(file, text)])
        .problems
        .iter()
        .map(ParseProblem::to_string)
        .collect()
}

fn route(spec: &str) -> String {
    shop("ProxyRoute", "r", spec)
}

#[test]
fn unknown_fields_are_named_by_path() {
    let yaml = route(
        "
        upstream: https://a.example
        upstreamm: https://typo.example
        cors: {allowOrigins: ['*'], allowCredential: true}
        forwardHeaders: [{name: x-k, value: v, valeu: w}]",
    );
    assert_eq!(
        problems("r.yaml", &yaml),
        [
            "ProxyRoute/shop/r: spec.cors.allowCredential: unknown field; check its spelling (kubectl explain shows the fields)",
            "ProxyRoute/shop/r: spec.forwardHeaders[0].valeu: unknown field; check its spelling (kubectl explain shows the fields)",
            "ProxyRoute/shop/r: spec.upstreamm: unknown field; check its spelling (kubectl explain shows the fields)",
        ]
    );
}

#[test]
fn unknown_metadata_and_top_level_fields_are_refused_too() {
    let yaml = route("upstream: https://a.example").replacen("metadata:\n", "spek: {}\nmetadata:\n  labelz: {}\n", 1);
    assert_eq!(
        problems("r.yaml", &yaml),
        [
            "ProxyRoute/shop/r: metadata.labelz: unknown field; check its spelling (kubectl explain shows the fields)",
            "ProxyRoute/shop/r: spek: unknown field; check its spelling (kubectl explain shows the fields)",
        ]
    );
}

#[test]
fn a_status_block_is_not_input_and_is_ignored() {
    let yaml = format!(
        "{}status:\n  conditions: []\n  whatever: 1\n",
        route("upstream: https://a.example")
    );
    let parsed = manifests::parse([("r.yaml", yaml.as_str())]);
    assert_eq!(parsed.problems, []);
    assert_eq!(parsed.resources.routes.len(), 1);
}

#[test]
fn wrong_types_are_named_by_path() {
    assert_eq!(
        problems("r.yaml", &route("{upstream: 'https://a.example', bodyLimit: ten}")),
        ["ProxyRoute/shop/r: spec.bodyLimit: invalid type: string \"ten\", expected i64"]
    );
    assert_eq!(
        problems(
            "r.yaml",
            &route("{upstream: 'https://a.example', methods: [GET, FETCH]}")
        ),
        [
            "ProxyRoute/shop/r: spec.methods[1]: unknown variant `FETCH`, expected one of `GET`, `HEAD`, `POST`, `PUT`, `PATCH`, `DELETE`, `OPTIONS`, `TRACE`, `CONNECT`"
        ]
    );
    assert_eq!(
        problems("r.yaml", &route("pathPrefix: /a")).len(),
        0,
        "a missing destination is a CEL rule, reported by compile"
    );
    assert_eq!(
        problems("r.yaml", &shop("ExternalAllowlist", "a", "targetUrlHeader: X")),
        ["ExternalAllowlist/shop/a: spec: missing field `hosts`"]
    );
}

#[test]
fn invalid_yaml_names_file_and_document() {
    let text = format!("{}---\nkind: [unclosed\n", route("upstream: https://a.example"));
    let parsed = manifests::parse([("routes.yaml", text.as_str())]);
    let lines: Vec<String> = parsed.problems.iter().map(ParseProblem::to_string).collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("routes.yaml: document 2: -: not valid YAML: "),
        "{}",
        lines[0]
    );
    assert_eq!(
        parsed.resources.routes.len(),
        1,
        "documents before the error are still read"
    );
}

#[test]
fn other_kinds_are_ignored() {
    let deployment = dedent(
        "
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: web}
        spec: {replicas: 2, template: {}}",
    );
    let config_map = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: b}\n";
    let parsed = manifests::parse([("web.yaml", deployment.as_str()), ("cm.yaml", config_map)]);
    assert_eq!(parsed.problems, []);
    assert_eq!(parsed.ignored, ["Deployment", "ConfigMap"]);
}

#[test]
fn keygate_group_with_an_unknown_kind_or_version_is_a_problem() {
    let unknown_kind = "apiVersion: keygate.dev/v1alpha1\nkind: ProxyRoot\nmetadata: {name: r}\nspec: {}\n";
    assert_eq!(
        problems("r.yaml", unknown_kind),
        [
            "r.yaml: document 1: kind: \"ProxyRoot\" is not a Keygate kind; use ProxyRoute, CookieTranslation, ExternalAllowlist, TokenVaultRule, SessionChainPolicy or KeygateDelegation"
        ]
    );
    let unknown_version = route("upstream: https://a.example").replace("keygate.dev/v1alpha1", "keygate.dev/v1");
    assert_eq!(
        problems("r.yaml", &unknown_version),
        ["r.yaml: document 1: apiVersion: \"keygate.dev/v1\" is not served; use keygate.dev/v1alpha1"]
    );
}

#[test]
fn a_resource_needs_a_name() {
    let nameless = "apiVersion: keygate.dev/v1alpha1\nkind: ProxyRoute\nmetadata: {namespace: shop}\nspec: {upstream: 'https://a.example'}\n";
    assert_eq!(
        problems("r.yaml", &format!("---\n# comment only\n---\n{nameless}")),
        ["r.yaml: document 2: metadata.name: every resource needs a name"]
    );
}

#[test]
fn a_missing_namespace_means_default() {
    let yaml = "apiVersion: keygate.dev/v1alpha1\nkind: ProxyRoute\nmetadata: {name: r}\nspec: {upstream: 'https://a.example', bodyLimit: x}\n";
    assert_eq!(
        problems("r.yaml", yaml),
        ["ProxyRoute/default/r: spec.bodyLimit: invalid type: string \"x\", expected i64"]
    );
    let compiled = compile_docs(&[yaml.replace("bodyLimit: x", "bodyLimit: 1")]);
    assert_eq!(compiled.reports[0].object.to_string(), "ProxyRoute/default/r");
    assert_eq!(compiled.snapshot.routes[0].id, "default/r");
}

#[test]
fn several_documents_and_files_are_all_read() {
    let many = [
        route("upstream: https://a.example"),
        shop("ExternalAllowlist", "a", "hosts: [a.example]"),
    ]
    .join("---\n");
    let parsed = parse_files(&[
        many,
        shop(
            "TokenVaultRule",
            "v",
            "{source: {}, permissions: [{classification: pci}]}",
        ),
    ]);
    assert_eq!(parsed.problems, []);
    let r = &parsed.resources;
    assert_eq!((r.routes.len(), r.allowlists.len(), r.vault_rules.len()), (1, 1, 1));
}

#[test]
fn secrets_are_read_from_string_data_and_base64_data() {
    // "from-data" in base64; `stringData` wins over `data` for the same key, as on the API server.
    let secret = dedent(
        "
        apiVersion: v1
        kind: Secret
        metadata: {name: keys, namespace: shop}
        type: Opaque
        data: {a: ZnJvbS1kYXRh, b: aWdub3JlZA==}
        stringData: {b: from-string-data}",
    );
    let route = route(
        "
        upstream: https://a.example
        forwardHeaders:
        - {name: x-a, valueFrom: {name: keys, key: a}}
        - {name: x-b, valueFrom: {name: keys, key: b}}",
    );
    let compiled = compile_docs(&[secret, route]);
    let values = secret_values(&compiled);
    assert_eq!(
        values,
        [("shop/keys/a", "from-data"), ("shop/keys/b", "from-string-data")]
    );
}

#[test]
fn bad_base64_in_a_secret_is_a_problem_without_the_value() {
    let secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: keys, namespace: shop}\ndata: {a: 'not base64!'}\n";
    let lines = problems("s.yaml", secret);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with("Secret/shop/keys: data.a: "), "{}", lines[0]);
    assert!(!lines[0].contains("not base64!"), "{}", lines[0]);
}
