//! Reads Kubernetes YAML (the five Keygate kinds and core `Secret`s) into [`Resources`], the way
//! `kubectl apply` would read it: a missing namespace means `default`, unknown fields are errors,
//! other kinds are ignored. Text in, data out; the caller reads the files.

use std::fmt;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::compile::{DEFAULT_NAMESPACE, Resources};
use crate::report::Kind;

/// One problem found while reading a manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseProblem {
    /// `kind/namespace/name` when the document got that far, else `file: document N`.
    pub subject: String,
    /// Path of the offending field, or `-` when the document as a whole is unreadable.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ParseProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.subject, self.field, self.message)
    }
}

/// The result of reading manifests: what could be read, and what could not.
#[derive(Debug, Default)]
pub struct Parsed {
    /// Resources and Secrets read.
    pub resources: Resources,
    /// Documents or fields that could not be read.
    pub problems: Vec<ParseProblem>,
    /// `kind` of each document that is neither a Keygate kind nor a Secret, and so ignored.
    pub ignored: Vec<String>,
}

const GROUP_PREFIX: &str = "keygate.dev/";

/// Parses `(file name, text)` pairs, each holding one or more YAML documents.
pub fn parse<'a>(files: impl IntoIterator<Item = (&'a str, &'a str)>) -> Parsed {
    let mut out = Parsed::default();
    for (file, text) in files {
        for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let at = format!("{file}: document {}", i + 1);
            let value: Value = match serde::Deserialize::deserialize(doc) {
                Ok(v) => v,
                Err(e) => {
                    out.problems.push(ParseProblem {
                        subject: at,
                        field: "-".into(),
                        message: format!("not valid YAML: {e}"),
                    });
                    // A syntax error leaves the rest of the file unreadable.
                    break;
                }
            };
            if value.is_null() {
                continue;
            }
            read_document(&mut out, &at, value);
        }
    }
    out
}

fn read_document(out: &mut Parsed, at: &str, value: Value) {
    let api_version = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let kind_name = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let keygate = api_version.starts_with(GROUP_PREFIX);
    let kind = match Kind::from_kind(&kind_name) {
        Some(k) if k.is_core() && api_version == "v1" => k,
        Some(k) if keygate && !k.is_core() => k,
        _ if keygate => {
            out.problems.push(ParseProblem {
                subject: at.to_string(),
                field: "kind".into(),
                message: format!("{kind_name:?} is not a Keygate kind; use ProxyRoute, CookieTranslation, ExternalAllowlist, TokenVaultRule, SessionChainPolicy or KeygateDelegation"),
            });
            return;
        }
        _ => {
            out.ignored.push(if kind_name.is_empty() {
                format!("{at} (no kind)")
            } else {
                kind_name
            });
            return;
        }
    };
    if keygate && api_version != "keygate.dev/v1alpha1" {
        out.problems.push(ParseProblem {
            subject: at.to_string(),
            field: "apiVersion".into(),
            message: format!("{api_version:?} is not served; use keygate.dev/v1alpha1"),
        });
        return;
    }
    let meta = value.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if name.is_empty() {
        out.problems.push(ParseProblem {
            subject: at.to_string(),
            field: "metadata.name".into(),
            message: "every resource needs a name".into(),
        });
        return;
    }
    let namespace = meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .unwrap_or(DEFAULT_NAMESPACE);
    let subject = format!("{}/{namespace}/{name}", kind.as_str());
    let r = &mut out.resources;
    let problems = match kind {
        Kind::ProxyRoute => typed(value, &subject).map(|v| r.routes.push(v)),
        Kind::CookieTranslation => typed(value, &subject).map(|v| r.cookie_translations.push(v)),
        Kind::ExternalAllowlist => typed(value, &subject).map(|v| r.allowlists.push(v)),
        Kind::TokenVaultRule => typed(value, &subject).map(|v| r.vault_rules.push(v)),
        Kind::SessionChainPolicy => typed(value, &subject).map(|v| r.session_policies.push(v)),
        Kind::Secret => typed(value, &subject).map(|v| r.secrets.push(v)),
        Kind::Namespace => typed(value, &subject).map(|v| r.namespaces.push(v)),
        Kind::KeygateDelegation => typed(value, &subject).map(|v| r.delegations.push(v)),
    };
    if let Err(p) = problems {
        out.problems.extend(p);
    }
}

/// Deserializes with the path of the first bad field, and refuses unknown fields as
/// `kubectl apply` (strict field validation) would, because a misspelt field silently ignored
/// is a setting silently lost.
fn typed<T: DeserializeOwned>(value: Value, subject: &str) -> Result<T, Vec<ParseProblem>> {
    let mut unknown = Vec::new();
    let mut on_unknown = |path: serde_ignored::Path<'_>| {
        let path = field_path(&path);
        // The derived custom-resource types read `apiVersion` and `kind` without keeping them,
        // so serde reports them as ignored although `read_document` has already checked both.
        // `status` is the operator's to write and never an input.
        let expected = matches!(path.as_str(), "apiVersion" | "kind" | "status");
        if !expected && !path.starts_with("status.") {
            unknown.push(path);
        }
    };
    let ignored = serde_ignored::Deserializer::new(value, &mut on_unknown);
    let result: Result<T, _> = serde_path_to_error::deserialize(ignored);
    let mut problems: Vec<ParseProblem> = unknown
        .into_iter()
        .map(|field| ParseProblem {
            subject: subject.to_string(),
            field,
            message: "unknown field; check its spelling (kubectl explain shows the fields)".into(),
        })
        .collect();
    match result {
        Ok(v) if problems.is_empty() => Ok(v),
        Ok(_) => Err(problems),
        Err(e) => {
            problems.push(ParseProblem {
                subject: subject.to_string(),
                field: e.path().to_string(),
                message: e.inner().to_string(),
            });
            Err(problems)
        }
    }
}

/// Writes a path the way `compile` and the API server do (`spec.forwardHeaders[0].name`);
/// serde_ignored's own `Display` gives `spec.forwardHeaders.0.name` and marks options with `?`.
fn field_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", field_path(parent)),
        Path::Map { parent, key } => match field_path(parent) {
            p if p.is_empty() => key.clone(),
            p => format!("{p}.{key}"),
        },
        Path::Some { parent } | Path::NewtypeStruct { parent } | Path::NewtypeVariant { parent } => field_path(parent),
    }
}
