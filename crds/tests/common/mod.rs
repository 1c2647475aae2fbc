//! Builders for the YAML a user writes, and look-ups into what `compile()` says about it.
//!
//! Every test feeds real manifest text through `keygate_crds::manifests::parse`, so the tests
//! exercise the same path as `keygate-proxy check -f DIR` and catch schema/serde drift too.
#![allow(dead_code)] // each test binary uses a different subset

use keygate_crds::manifests::{self, Parsed};
use keygate_crds::{Compiled, Kind, Report, Resources, compile};

/// The namespace test resources live in unless a test says otherwise.
pub const NS: &str = "shop";

/// Removes the indentation common to all non-blank lines, so specs can be written indented
/// inside Rust source and still be valid YAML.
pub fn dedent(text: &str) -> String {
    let indent = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| &l[indent.min(l.len())..])
        .collect::<Vec<_>>()
        .join("\n")
}

fn indented(text: &str, by: usize) -> String {
    dedent(text).lines().map(|l| format!("{:by$}{l}\n", "")).collect()
}

/// One Keygate resource as a YAML document. `id` is `namespace/name`, or just `name` for a
/// manifest that names no namespace.
pub fn doc(kind: &str, id: &str, spec: &str) -> String {
    let namespace = match id.split_once('/') {
        Some((ns, name)) => format!("  name: {name}\n  namespace: {ns}\n"),
        None => format!("  name: {id}\n"),
    };
    format!(
        "apiVersion: keygate.dev/v1alpha1\nkind: {kind}\nmetadata:\n{namespace}spec:\n{}",
        indented(spec, 2)
    )
}

/// `doc` in namespace [`NS`].
pub fn shop(kind: &str, name: &str, spec: &str) -> String {
    doc(kind, &format!("{NS}/{name}"), spec)
}

/// Adds `metadata.creationTimestamp` to a document built by [`doc`].
pub fn created(document: String, timestamp: &str) -> String {
    document.replacen(
        "metadata:\n",
        &format!("metadata:\n  creationTimestamp: \"{timestamp}\"\n"),
        1,
    )
}

/// A Secret in namespace [`NS`] with plain-text `stringData`.
pub fn secret(name: &str, data: &[(&str, &str)]) -> String {
    let entries: String = data
        .iter()
        .map(|(k, v)| format!("  {k}: {}\n", serde_json::to_string(v).unwrap()))
        .collect();
    format!("apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {NS}\nstringData:\n{entries}")
}

/// Parses documents as one file each, failing the test on any parse problem: these tests are
/// about what `compile` makes of well-formed input.
pub fn parse(docs: &[String]) -> Resources {
    let parsed = parse_files(docs);
    assert!(
        parsed.problems.is_empty(),
        "test manifests should parse: {:#?}",
        parsed.problems
    );
    parsed.resources
}

/// Parses documents, one file each, named `doc-N.yaml`.
pub fn parse_files(docs: &[String]) -> Parsed {
    let names: Vec<String> = (1..=docs.len()).map(|i| format!("doc-{i}.yaml")).collect();
    manifests::parse(names.iter().map(String::as_str).zip(docs.iter().map(String::as_str)))
}

/// Parses and compiles.
pub fn compile_docs(docs: &[String]) -> Compiled {
    compile(&parse(docs))
}

/// The report of one resource in namespace [`NS`]; fails the test if there is not exactly one.
pub fn report<'a>(compiled: &'a Compiled, kind: Kind, name: &str) -> &'a Report {
    let mut matching = compiled
        .reports
        .iter()
        .filter(|r| r.object.kind == kind && r.object.namespace == NS && r.object.name == name);
    let found = matching
        .next()
        .unwrap_or_else(|| panic!("no report for {kind:?} {NS}/{name}: {:#?}", compiled.reports));
    assert!(
        matching.next().is_none(),
        "more than one report for {kind:?} {NS}/{name}"
    );
    found
}

/// `kind/namespace/name: field: what is wrong` lines of one resource, as `check` prints them.
pub fn problem_lines(compiled: &Compiled, kind: Kind, name: &str) -> Vec<String> {
    report(compiled, kind, name).problem_lines().collect()
}

/// Ids of the routes the snapshot serves.
pub fn served_routes(compiled: &Compiled) -> Vec<&str> {
    compiled.snapshot.routes.iter().map(|r| r.id.as_str()).collect()
}

/// The secret snapshot's values as `(id, value)` pairs, in id order.
pub fn secret_values(compiled: &Compiled) -> Vec<(&str, &str)> {
    compiled
        .secrets
        .values
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// Asserts that `kind` `name` (in [`NS`]) is refused with `reason` and exactly these problem lines.
pub fn assert_refused(compiled: &Compiled, kind: Kind, name: &str, reason: &str, lines: &[&str]) {
    assert_eq!(problem_lines(compiled, kind, name), lines);
    assert_eq!(report(compiled, kind, name).reason, reason);
}
