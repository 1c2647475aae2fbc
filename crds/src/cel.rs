//! The CEL rules (`x-kubernetes-validations`) of a kind, compiled once and evaluated per object.
//!
//! kube's generated `validate_cel()` regenerates the kind's CRD schema and parses every rule again
//! for each object; kube-cel's compiled walk still converts the object again at every schema
//! node, and the `matches()` of the `cel` crate compiles its regular expression at each call.
//! Together that was 2 ms per ProxyRoute: 24 s for 10,000. Here a kind's schema is generated and
//! its rules compiled once per thread (a compiled CEL program is not `Sync`); an object is
//! defaulted and converted once per node that has rules, subtrees without rules are not walked,
//! and each regular expression is compiled once.
//!
//! The result is exactly what `validate_cel()` returns, in the same order (the schema walk:
//! a node's own rules, then its properties by name, items by index, map values by key, then
//! `allOf`/`oneOf`/`anyOf` branches); `compiled_rules_agree_with_validate_cel` compares both on
//! thousands of broken variants of the example resources.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use kube::CustomResourceExt;
use kube::core::cel::cel::extractors::This;
use kube::core::cel::cel::objects::{Key, Map};
use kube::core::cel::cel::{Context, ExecutionError, FunctionContext, Value};
use kube::core::cel::{CompilationError, CompilationResult, CompiledSchema, KubeCelExt, SchemaFormat, compile_schema};
use serde::Serialize;
use serde_json::Value as Json;

thread_local! {
    /// The Kubernetes CEL functions, registered once; `matches` replaced by one that caches.
    static CONTEXT: Context<'static> = {
        let mut ctx = Context::default();
        ctx.register_all();
        ctx.add_function("matches", cached_matches);
        ctx
    };
    static REGEXES: RefCell<HashMap<String, regex::Regex>> = RefCell::default();
}

/// `string.matches(regex)`, as the `cel` crate has it, with each expression compiled once.
fn cached_matches(
    ftx: &FunctionContext,
    This(this): This<Arc<String>>,
    regex: Arc<String>,
) -> Result<bool, ExecutionError> {
    REGEXES.with(|cache| {
        if let Some(re) = cache.borrow().get(regex.as_str()) {
            return Ok(re.is_match(&this));
        }
        match regex::Regex::new(&regex) {
            Ok(re) => {
                let found = re.is_match(&this);
                cache.borrow_mut().insert(regex.to_string(), re);
                Ok(found)
            }
            Err(err) => Err(ftx.error(format!("'{regex}' not a valid regex:\n{err}"))),
        }
    })
}

/// One node of a kind's schema with its compiled rules.
pub(crate) struct Rules {
    validations: Vec<Result<CompilationResult, CompilationError>>,
    /// Sorted, as the schema walk visits them.
    properties: BTreeMap<String, Rules>,
    items: Option<Box<Rules>>,
    additional: Option<Box<Rules>>,
    branches: Vec<Rules>,
    is_map: bool,
    preserve_unknown_fields: bool,
    embedded_resource: bool,
    default: Option<Json>,
    /// Whether this node or any below it has a rule: the walk skips the others.
    has_rules: bool,
}

impl Rules {
    fn from(mut c: CompiledSchema) -> Rules {
        // kube-cel turns these into timestamps, durations and bytes; no Keygate field uses one,
        // and a new one fails every test here until its conversion is added to `to_cel`.
        assert!(
            matches!(c.format, SchemaFormat::None | SchemaFormat::IntOrString),
            "a schema format ({:?}) that cel.rs does not convert yet",
            c.format
        );
        let properties: BTreeMap<String, Rules> = std::mem::take(&mut c.properties)
            .into_iter()
            .map(|(k, v)| (k, Rules::from(v)))
            .collect();
        let items = c.items.take().map(|i| Box::new(Rules::from(*i)));
        let additional = c.additional_properties.take().map(|a| Box::new(Rules::from(*a)));
        let branches: Vec<Rules> = std::mem::take(&mut c.all_of)
            .into_iter()
            .chain(std::mem::take(&mut c.one_of))
            .chain(std::mem::take(&mut c.any_of))
            .map(Rules::from)
            .collect();
        let has_rules = !c.validations.is_empty()
            || properties.values().any(|p| p.has_rules)
            || items.as_ref().is_some_and(|i| i.has_rules)
            || additional.as_ref().is_some_and(|a| a.has_rules)
            || branches.iter().any(|b| b.has_rules);
        Rules {
            validations: std::mem::take(&mut c.validations),
            properties,
            items,
            additional,
            branches,
            is_map: c.is_map,
            preserve_unknown_fields: c.preserve_unknown_fields,
            embedded_resource: c.embedded_resource,
            default: c.default.take(),
            has_rules,
        }
    }

    fn additional(&self) -> Option<&Rules> {
        self.additional.as_deref().filter(|_| !self.preserve_unknown_fields)
    }
}

/// The compiled rules of `K`'s CRD schema.
pub(crate) fn compile_rules<K: CustomResourceExt>() -> Rules {
    let crd = K::crd();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("derived CRD has an openAPIV3Schema");
    Rules::from(compile_schema(
        &serde_json::to_value(schema).expect("CRD schema serializes to JSON"),
    ))
}

/// What the rules find wrong with `object`, as `(field path, message)`, in schema-walk order.
pub(crate) fn problems<K: Serialize>(rules: &Rules, object: &K) -> Vec<(String, String)> {
    let value = serde_json::to_value(object).expect("resource serializes to JSON");
    // As the API server does: defaults first, then the rules.
    let value = with_defaults(rules, &value);
    let mut out = Vec::new();
    CONTEXT.with(|ctx| walk(rules, &value, String::new(), ctx, &mut out));
    out
}

/// `value` with the schema's defaults filled in where a declared property is missing (defaults
/// themselves are taken as written).
fn with_defaults(rules: &Rules, value: &Json) -> Json {
    match value {
        Json::Object(obj) => {
            let additional = rules.additional();
            if rules.properties.is_empty() && additional.is_none() {
                return value.clone();
            }
            let mut out = obj.clone();
            for (key, child) in &rules.properties {
                if !out.contains_key(key)
                    && let Some(default) = &child.default
                {
                    out.insert(key.clone(), default.clone());
                }
            }
            for (key, v) in obj {
                if let Some(child) = rules.properties.get(key).or(additional) {
                    out.insert(key.clone(), with_defaults(child, v));
                }
            }
            Json::Object(out)
        }
        Json::Array(items) => match &rules.items {
            Some(schema) => Json::Array(items.iter().map(|i| with_defaults(schema, i)).collect()),
            None => value.clone(),
        },
        _ => value.clone(),
    }
}

fn walk(rules: &Rules, value: &Json, path: String, ctx: &Context<'_>, out: &mut Vec<(String, String)>) {
    if !rules.has_rules {
        return;
    }
    if !rules.validations.is_empty() {
        let mut scope = ctx.new_inner_scope();
        scope.add_variable_from_value("self", to_cel(value, Some(rules)));
        for rule in &rules.validations {
            if let Some(message) = evaluate(rule, &scope) {
                out.push((path.clone(), message));
            }
        }
    }
    let join = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    if let Some(obj) = value.as_object() {
        for (key, child) in &rules.properties {
            if let Some(v) = obj.get(key) {
                walk(child, v, join(key), ctx, out);
            }
        }
        if let Some(additional) = rules.additional() {
            for (key, v) in obj {
                if !rules.properties.contains_key(key) {
                    walk(additional, v, join(key), ctx, out);
                }
            }
        }
    }
    if let (Some(items), Some(arr)) = (&rules.items, value.as_array()) {
        for (i, item) in arr.iter().enumerate() {
            walk(items, item, format!("{path}[{i}]"), ctx, out);
        }
    }
    for branch in &rules.branches {
        walk(branch, value, path.clone(), ctx, out);
    }
}

/// The message of a rule that `self` breaks, with kube-cel's wording for rules that cannot run.
fn evaluate(rule: &Result<CompilationResult, CompilationError>, scope: &Context<'_>) -> Option<String> {
    let cr = match rule {
        Ok(cr) => cr,
        Err(CompilationError::Parse { rule, source }) => {
            return Some(format!("failed to compile rule \"{rule}\": {source}"));
        }
        Err(e) => return Some(format!("invalid rule definition: {e}")),
    };
    // Transition rules (`oldSelf`) need the previous object, which a compile never has.
    if cr.is_transition_rule {
        if cr.rule.optional_old_self != Some(true) {
            return None;
        }
        let mut with_old = scope.new_inner_scope();
        with_old.add_variable_from_value("oldSelf", Value::Null);
        return verdict(cr, &with_old);
    }
    verdict(cr, scope)
}

fn verdict(cr: &CompilationResult, scope: &Context<'_>) -> Option<String> {
    match cr.program.execute(scope) {
        Ok(Value::Bool(true)) => None,
        Ok(Value::Bool(false)) => Some(
            cr.message_program
                .as_ref()
                .and_then(|p| match p.execute(scope) {
                    Ok(Value::String(s)) => Some((*s).clone()),
                    _ => None,
                })
                .or_else(|| cr.rule.message.clone())
                .unwrap_or_else(|| format!("failed rule: {}", cr.rule.rule)),
        ),
        Ok(_) => Some(format!("rule \"{}\" did not evaluate to bool", cr.rule.rule)),
        Err(ExecutionError::UndeclaredReference(name)) => Some(format!(
            "rule references '{name}', which this kube-cel build does not support \
             (an unsupported CEL macro, or a feature disabled at compile time); \
             it cannot be evaluated client-side"
        )),
        Err(e) => Some(format!("rule evaluation error: {e}")),
    }
}

/// A JSON value as CEL sees it under `rules` (kube-cel's conversion: escaped field names, map
/// keys as written).
fn to_cel(value: &Json, rules: Option<&Rules>) -> Value {
    match value {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::Int(i),
            (None, Some(u)) => Value::UInt(u),
            _ => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Value::String(Arc::new(s.clone())),
        Json::Array(items) => {
            let schema = rules.and_then(|r| r.items.as_deref());
            Value::List(Arc::new(items.iter().map(|i| to_cel(i, schema)).collect()))
        }
        Json::Object(obj) => {
            let mut map = HashMap::with_capacity(obj.len());
            for (k, v) in obj {
                let child = rules.and_then(|r| r.properties.get(k).or(r.additional.as_deref()));
                let key = if rules.is_some_and(|r| r.is_map) {
                    k.clone()
                } else {
                    escape_field_name(k)
                };
                map.insert(Key::String(Arc::new(key)), to_cel(v, child));
            }
            if rules.is_some_and(|r| r.embedded_resource) {
                for (k, empty) in [
                    ("apiVersion", Value::String(Arc::default())),
                    ("kind", Value::String(Arc::default())),
                    ("metadata", Value::Map(Map { map: Arc::default() })),
                ] {
                    map.entry(Key::String(Arc::new(k.into()))).or_insert(empty);
                }
            }
            Value::Map(Map { map: Arc::new(map) })
        }
    }
}

/// Field names as the API server escapes them for CEL (map keys are data and stay as written).
fn escape_field_name(name: &str) -> String {
    const RESERVED: &[&str] = &[
        "true",
        "false",
        "null",
        "in",
        "as",
        "break",
        "const",
        "continue",
        "else",
        "for",
        "function",
        "if",
        "import",
        "let",
        "loop",
        "package",
        "namespace",
        "return",
        "var",
        "void",
        "while",
    ];
    if RESERVED.contains(&name) {
        return format!("__{name}__");
    }
    if !name.contains(['_', '.', '-', '/']) {
        return name.to_string();
    }
    let mut escaped = String::with_capacity(name.len() * 2);
    for ch in name.chars() {
        match ch {
            '_' => escaped.push_str("__"),
            '.' => escaped.push_str("__dot__"),
            '-' => escaped.push_str("__dash__"),
            '/' => escaped.push_str("__slash__"),
            _ => escaped.push(ch),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifests;
    use crate::resources::{
        CookieTranslation, ExternalAllowlist, KeygateDelegation, ProxyRoute, SessionChainPolicy, TokenVaultRule,
    };
    use serde::de::DeserializeOwned;
    use serde_json::Value;

    /// Every way of breaking one or two leaves of `value`: strings emptied or made odd, numbers
    /// negative or huge, booleans flipped, lists emptied or given a bad extra entry.
    fn mutations(value: &Value) -> Vec<Value> {
        fn leaves(v: &Value, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
            match v {
                Value::Object(m) => {
                    for (k, child) in m {
                        path.push(k.clone());
                        leaves(child, path, out);
                        path.pop();
                    }
                }
                Value::Array(a) => {
                    out.push(path.clone());
                    for (i, child) in a.iter().enumerate() {
                        path.push(i.to_string());
                        leaves(child, path, out);
                        path.pop();
                    }
                }
                _ => out.push(path.clone()),
            }
        }
        fn at<'a>(v: &'a mut Value, path: &[String]) -> &'a mut Value {
            path.iter().fold(v, |v, k| match v {
                Value::Array(a) => &mut a[k.parse::<usize>().unwrap()],
                v => &mut v[k.as_str()],
            })
        }
        let bad = |v: &Value| -> Vec<Value> {
            match v {
                Value::String(s) => vec![
                    Value::from(""),
                    Value::from(format!("{s}/../x y")),
                    Value::from("*"),
                    Value::from("http://"),
                ],
                Value::Number(_) => vec![Value::from(-1), Value::from(0), Value::from(1u64 << 40)],
                Value::Bool(b) => vec![Value::from(!b)],
                Value::Array(a) => {
                    let mut more = a.clone();
                    more.push(Value::from("not valid//"));
                    vec![Value::Array(vec![]), Value::Array(more)]
                }
                _ => vec![],
            }
        };
        let mut paths = Vec::new();
        leaves(&value["spec"], &mut vec!["spec".to_string()], &mut paths);
        let mut out = Vec::new();
        for (i, p) in paths.iter().enumerate() {
            for b in bad(at(&mut value.clone(), p)) {
                let mut one = value.clone();
                *at(&mut one, p) = b.clone();
                out.push(one.clone());
                // And a second broken leaf elsewhere, so that order among problems is tested.
                if let Some(q) = paths
                    .get(paths.len() - 1 - i)
                    .filter(|q| !q.starts_with(p) && !p.starts_with(q))
                    && let Some(b2) = bad(at(&mut value.clone(), q)).into_iter().next()
                {
                    *at(&mut one, q) = b2;
                    out.push(one);
                }
            }
        }
        out
    }

    fn same_as_validate_cel<K>(
        items: &[K],
        validate_cel: impl Fn(&K) -> Result<(), kube::core::cel::ValidationErrors>,
    ) -> usize
    where
        K: CustomResourceExt + Serialize + DeserializeOwned,
    {
        let rules = compile_rules::<K>();
        let mut refused = 0;
        for item in items {
            for object in mutations(&serde_json::to_value(item).unwrap()) {
                let Ok(object) = serde_json::from_value::<K>(object) else {
                    continue;
                };
                let expected: Vec<(String, String)> = match validate_cel(&object) {
                    Ok(()) => Vec::new(),
                    Err(e) => e.into_vec().into_iter().map(|e| (e.field_path, e.message)).collect(),
                };
                refused += usize::from(!expected.is_empty());
                assert_eq!(
                    problems(&rules, &object),
                    expected,
                    "{}",
                    serde_json::to_string(&object).unwrap()
                );
            }
        }
        refused
    }

    /// The compiled rules find exactly what kube's `validate_cel()` finds, in the same order, on
    /// thousands of broken variants of the example resources.
    #[test]
    fn compiled_rules_agree_with_validate_cel() {
        let texts = [
            ("spa", include_str!("../../examples/spa/manifests.yaml")),
            ("quickstart", include_str!("../../examples/quickstart/manifests.yaml")),
            ("extra", EXTRA),
        ];
        let parsed = manifests::parse(texts);
        assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
        let r = parsed.resources;
        let refused = same_as_validate_cel(&r.routes, ProxyRoute::validate_cel)
            + same_as_validate_cel(&r.cookie_translations, CookieTranslation::validate_cel)
            + same_as_validate_cel(&r.allowlists, ExternalAllowlist::validate_cel)
            + same_as_validate_cel(&r.vault_rules, TokenVaultRule::validate_cel)
            + same_as_validate_cel(&r.session_policies, SessionChainPolicy::validate_cel)
            + same_as_validate_cel(&r.delegations, KeygateDelegation::validate_cel);
        // The mutations must actually break rules, or the comparison proves nothing.
        assert!(refused > 200, "only {refused} variants broke a rule");
    }

    /// Fields the examples leave out, so that their rules are compared too.
    const EXTRA: &str = r#"
apiVersion: keygate.dev/v1alpha1
kind: ProxyRoute
metadata: {name: full, namespace: shop}
spec:
  hosts: [shop.example.com, '*.shop.example.com']
  pathPrefix: /full
  upstream: https://api.example.com/v1
  methods: [GET, POST]
  bodyLimit: 1024
  contentTypes: [application/json]
  timeouts: {connect: 2s, request: 15s}
  forwardHeaders:
  - {name: x-api-key, valueFrom: {name: keys, key: api}}
  - {name: x-static, value: one}
  exposeHeaders:
  - {name: Location, as: X-Where}
  cors:
    allowOrigins: ['https://app.example.com']
    allowMethods: [GET]
    allowHeaders: [x-one]
    exposeHeaders: [x-two]
    allowCredentials: true
    maxAgeSeconds: 60
  csrf: {mode: header, headerName: x-csrf, headerValue: '1'}
  auth: apiKey
  apiKey: {header: x-app-key, keysSecretRef: {name: keys}}
  rateLimit: {requestsPerSecond: 10, burst: 20}
---
apiVersion: keygate.dev/v1alpha1
kind: KeygateDelegation
metadata: {name: shop}
spec:
  namespaces: [shop]
  hosts: [shop.example.com]
  pathPrefixes: [/shop]
"#;
}
