//! The generated CRDs: committed YAML in sync with the types, and fit for a real API server
//! (`kubectl get`/`explain` read well, CEL rules have a bounded cost and valid RE2 regexes).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use keygate_crds::resources::{crd_dirs, crd_files, crds};
use serde_json::Value;

#[test]
fn crdgen_in_sync() {
    let generated = crd_files();
    for dir in crd_dirs() {
        let stale: Vec<&str> = generated
            .iter()
            .filter(|(file, yaml)| std::fs::read_to_string(dir.join(file)).ok().as_ref() != Some(yaml))
            .map(|(file, _)| file.as_str())
            .collect();
        // crdgen only writes, so a file of a renamed or removed kind would linger unnoticed.
        let leftover: Vec<String> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|file| !generated.iter().any(|(g, _)| g == file))
            .collect();
        assert!(
            stale.is_empty() && leftover.is_empty(),
            "{} does not match the types (out of date: {stale:?}, not generated: {leftover:?}); \
             run `cargo run -p keygate-crds --bin crdgen`, delete the files it does not write, and commit",
            dir.display()
        );
    }
}

#[test]
fn every_crd_tells_its_story_in_kubectl_get() {
    for crd in crds() {
        let name = crd.metadata.name.clone().unwrap();
        let names = &crd.spec.names;
        assert!(
            names.short_names.as_ref().is_some_and(|s| !s.is_empty()),
            "{name}: no shortName"
        );
        assert_eq!(
            names.categories.as_deref(),
            Some(&["keygate".to_string()][..]),
            "{name}: category"
        );
        // Delegations are the platform team's, cluster-scoped so app teams cannot edit them; they
        // carry no status, since what one refuses is told on the refused route.
        let delegation = name == "keygatedelegations.keygate.dev";
        let scope = if delegation { "Cluster" } else { "Namespaced" };
        assert_eq!(crd.spec.scope, scope, "{name}");
        let [version] = &crd.spec.versions[..] else {
            panic!("{name}: one version expected")
        };
        assert_eq!(version.name, "v1alpha1", "{name}");
        if delegation {
            continue;
        }
        assert!(
            version.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some(),
            "{name}: no status subresource"
        );
        let columns: Vec<&str> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        for wanted in ["Ready", "Reason", "Age"] {
            assert!(
                columns.contains(&wanted),
                "{name}: printer column {wanted} missing from {columns:?}"
            );
        }
    }
}

/// The `openAPIV3Schema` of a CRD as JSON, with the CRD's name.
fn schemas() -> Vec<(String, Value)> {
    crds()
        .into_iter()
        .map(|crd: CustomResourceDefinition| {
            let name = crd.metadata.name.clone().unwrap();
            let schema = crd.spec.versions[0]
                .schema
                .as_ref()
                .unwrap()
                .open_api_v3_schema
                .as_ref()
                .unwrap();
            (name, serde_json::to_value(schema).unwrap())
        })
        .collect()
}

/// Calls `visit(path, node)` on every schema node below `node`.
fn walk(path: &str, node: &Value, visit: &mut dyn FnMut(&str, &Value)) {
    visit(path, node);
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (key, child) in props {
            walk(&format!("{path}.{key}"), child, visit);
        }
    }
    if let Some(items) = node.get("items") {
        walk(&format!("{path}[]"), items, visit);
    }
    if let Some(values) = node.get("additionalProperties").filter(|v| v.is_object()) {
        walk(&format!("{path}{{}}"), values, visit);
    }
}

#[test]
fn every_field_has_a_description_for_kubectl_explain() {
    let mut missing = Vec::new();
    for (crd, schema) in schemas() {
        walk(&crd, &schema, &mut |path, node| {
            // `items` are not fields kubectl explain lists; their properties are, and are walked.
            let is_field = !path.ends_with("[]") && !path.ends_with('}');
            let described = node
                .get("description")
                .and_then(Value::as_str)
                .is_some_and(|d| !d.trim().is_empty());
            if is_field && !described && path != crd {
                missing.push(path.to_string());
            }
        });
    }
    assert!(
        missing.is_empty(),
        "fields without a description (add a doc comment): {missing:#?}"
    );
}

/// The API server estimates the worst-case cost of every CEL rule from the schema and refuses a
/// CRD whose rules are unbounded, so everything a rule can reach must have a size limit.
#[test]
fn spec_sizes_are_bounded_so_cel_cost_is_bounded() {
    let mut unbounded = Vec::new();
    for (crd, schema) in schemas() {
        walk(
            &format!("{crd}.spec"),
            &schema["properties"]["spec"],
            &mut |path, node| {
                let has = |key: &str| node.get(key).is_some();
                match node.get("type").and_then(Value::as_str) {
                    Some("string") if !has("maxLength") && !has("enum") => unbounded.push(format!("{path}: maxLength")),
                    Some("array") if !has("maxItems") => unbounded.push(format!("{path}: maxItems")),
                    Some("object")
                        if node.get("additionalProperties").is_some_and(Value::is_object) && !has("maxProperties") =>
                    {
                        unbounded.push(format!("{path}: maxProperties"))
                    }
                    _ => {}
                }
            },
        );
    }
    assert!(unbounded.is_empty(), "unbounded schema nodes: {unbounded:#?}");
}

/// Every literal passed to `matches()` in a rule, CEL escapes undone.
fn regexes(rule: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = rule;
    while let Some(start) = rest.find(".matches('") {
        rest = &rest[start + ".matches('".len()..];
        let mut pattern = String::new();
        let mut chars = rest.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => pattern.push(chars.next().expect("escape has a character").1),
                '\'' => {
                    rest = &rest[i..];
                    break;
                }
                c => pattern.push(c),
            }
        }
        found.push(pattern);
    }
    found
}

/// The API server compiles `matches()` patterns with RE2: no lookaround, no backreferences.
/// Rust's `regex` crate refuses the same constructs, so it stands in for RE2 here.
#[test]
fn cel_regexes_are_valid_re2() {
    let mut checked = 0;
    for (crd, schema) in schemas() {
        walk(&crd, &schema, &mut |path, node| {
            for rule in node
                .get("x-kubernetes-validations")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let rule = rule["rule"].as_str().unwrap();
                assert!(
                    rule.matches(".matches('").count() == rule.matches(".matches(").count(),
                    "{path}: give matches() a single-quoted literal so it can be checked: {rule}"
                );
                for pattern in regexes(rule) {
                    regex::Regex::new(&pattern).unwrap_or_else(|e| panic!("{path}: {pattern:?} is not RE2: {e}"));
                    // CEL's matches() succeeds on a match anywhere in the string, so an
                    // unanchored pattern accepts any value that merely contains a valid part.
                    assert!(
                        pattern.starts_with('^') && pattern.ends_with('$'),
                        "{path}: {pattern:?} must be anchored"
                    );
                    checked += 1;
                }
            }
        });
    }
    assert!(
        checked >= 10,
        "expected the header-name, URL, host and duration patterns; found {checked}"
    );
}
