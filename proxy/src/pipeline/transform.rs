//! `ProxyRoute.spec.transform`: ordered rewrites of the request on its way upstream and of the
//! answer on its way back, with values computed by CEL expressions (reactors, without running
//! anyone's code). [`Transform::build`] parses every expression once per config, through the
//! same [`keygate_crds::transform::check`] `compile()` ran, and works out whether a side needs
//! its body; a side that does not leaves the body streaming.
//!
//! Where it runs, and so what it can see: request operations after inbound tokenization (a raw
//! sensitive value is already a token id) and before Keygate adds its own headers (injected
//! secrets, the translated session cookie) and swaps `{{token}}`s for data; answer operations
//! after answer tokenization and session start, on what the client would otherwise get. Headers
//! Keygate marks sensitive, `Cookie` and `Set-Cookie` are never in the `headers` a CEL
//! expression reads, so no expression can copy them anywhere.
//!
//! Every expression reads the message as it reached the stage, and every operation applies to
//! a copy: a failure (`TRANSFORM_FAILED`, naming the operation) leaves nothing half rewritten,
//! and no run-time message carries a value.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use cel::objects::Key;
use cel::{Context, Program, Value as Cel};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, request};
use keygate_crds::resources::route::{Transform as Spec, TransformOp, TransformOpKind};
use keygate_crds::transform::{self as checks, REQUEST, RESPONSE, Side};
use serde_json::Value as Json;

use crate::body::{Body, full, is_bodiless, read_to_limit};
use crate::config::LiveRoute;
use crate::error::ProxyError;
use crate::pipeline::limits::{is_compressed, is_json, media_type};
use crate::pipeline::{Stage, remove_pointer};

/// A route's compiled transform.
pub struct Transform {
    request: Ops,
    response: Ops,
    /// The standard functions, registered once rather than per request.
    functions: Context<'static>,
}

impl std::fmt::Debug for Transform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transform")
            .field("request", &self.request.ops.len())
            .field("response", &self.response.ops.len())
            .finish_non_exhaustive()
    }
}

/// One side's operations.
struct Ops {
    ops: Vec<Op>,
    /// Whether any operation reads or writes the body: only then is it buffered.
    needs_body: bool,
    /// Whether an operation writes the body, which must then be JSON; a body that is only read
    /// is `null` when it is of another type.
    writes_body: bool,
}

struct Op {
    /// `transform.request[1] (setHeader x-user)`: how errors name it.
    label: String,
    kind: OpKind,
    /// Whether it reads or writes the body.
    needs_body: bool,
    /// What its expression reads: `(variable, field)`, `None` for the whole variable.
    reads: Vec<(&'static str, Option<String>)>,
}

enum OpKind {
    SetHeader(HeaderName, Program),
    RemoveHeader(HeaderName),
    SetJsonField(String, Program),
    RemoveJsonField(String),
    ReplaceJsonBody(Program),
}

/// What the request looked like to request operations (its body left out, so no buffered body
/// outlives the request stage), for answer operations to read as `request`.
#[derive(Default)]
pub struct Seen {
    view: Option<View>,
    /// A `HEAD` request: its answer has no body, whatever its headers say.
    head: bool,
}

/// A message as expressions read it: `method`, `path`, `headers`, ... by name.
type View = HashMap<Key, Cel>;

impl Transform {
    /// Compiles a route's transform; the error is `(field, message)`. `compile()` has already
    /// refused what fails here, so this only fails on a snapshot from a different compiler.
    pub fn build(spec: &Spec) -> Result<Transform, (String, String)> {
        Ok(Transform {
            request: Ops::build(&spec.request, Side::Request)?,
            response: Ops::build(&spec.response, Side::Response)?,
            functions: Context::default(),
        })
    }

    /// Whether answers get rewritten from their parsed body, so the upstream must send them
    /// uncompressed.
    fn reads_answers(&self) -> bool {
        self.response.needs_body
    }
}

impl Ops {
    fn build(ops: &[TransformOp], side: Side) -> Result<Ops, (String, String)> {
        let list = match side {
            Side::Request => "request",
            Side::Response => "response",
        };
        let mut built = Vec::with_capacity(ops.len());
        for (i, op) in ops.iter().enumerate() {
            let mut needs_body = op.op.touches_body();
            let mut reads = Vec::new();
            let at = format!("transform.{list}[{i}]");
            let missing = |field: &str| (format!("{at}.{field}"), format!("{} needs {field}", op.op.as_str()));
            let mut program = || -> Result<Program, (String, String)> {
                let source = op.value.as_deref().ok_or_else(|| missing("value"))?;
                let checked = checks::check(source, side).map_err(|m| (format!("{at}.value"), m))?;
                needs_body |= checked.reads_body;
                reads = checked.reads;
                Ok(checked.program)
            };
            let header = || -> Result<HeaderName, (String, String)> {
                let name = op.name.as_deref().ok_or_else(|| missing("name"))?;
                HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| (format!("{at}.name"), format!("{name:?} is not a header name")))
            };
            let pointer = || op.pointer.clone().ok_or_else(|| missing("pointer"));
            let kind = match op.op {
                TransformOpKind::SetHeader => OpKind::SetHeader(header()?, program()?),
                TransformOpKind::RemoveHeader => OpKind::RemoveHeader(header()?),
                TransformOpKind::SetJsonField => OpKind::SetJsonField(pointer()?, program()?),
                TransformOpKind::RemoveJsonField => OpKind::RemoveJsonField(pointer()?),
                TransformOpKind::ReplaceJsonBody => OpKind::ReplaceJsonBody(program()?),
            };
            let target = op.name.as_deref().or(op.pointer.as_deref());
            built.push(Op {
                label: match target {
                    Some(t) => format!("{at} ({} {t})", op.op.as_str()),
                    None => format!("{at} ({})", op.op.as_str()),
                },
                kind,
                needs_body,
                reads,
            });
        }
        Ok(Ops {
            needs_body: built.iter().any(|o| o.needs_body),
            writes_body: ops.iter().any(|o| o.op.touches_body()),
            ops: built,
        })
    }

    /// Applies every operation to copies of `headers` and `doc`, then returns them; `views` are
    /// what expressions read. On failure: the operation's label and why, nothing changed.
    fn apply(
        &self,
        functions: &Context<'static>,
        views: &[(&'static str, &View)],
        headers: &HeaderMap,
        doc: Option<&Json>,
    ) -> Result<(HeaderMap, Option<Json>), (String, &'static str)> {
        let mut headers = headers.clone();
        let mut doc = doc.cloned();
        for op in &self.ops {
            let fail = |why: &'static str| (op.label.clone(), why);
            // The interpreter copies a variable whole on each access: each expression gets only
            // the fields it reads (values are shared, so picking them out is cheap).
            let eval = |p: &Program| {
                let mut ctx = functions.new_inner_scope();
                for (root, view) in views {
                    let mut fields = op.reads.iter().filter(|(r, _)| r == root).map(|(_, f)| f).peekable();
                    if fields.peek().is_none() {
                        continue;
                    }
                    let value: View = if fields.clone().any(Option::is_none) {
                        (*view).clone()
                    } else {
                        fields
                            .flatten()
                            .filter_map(|f| view.get_key_value(&key(f)).map(|(k, v)| (k.clone(), v.clone())))
                            .collect()
                    };
                    ctx.add_variable_from_value(*root, Cel::from(value));
                }
                p.execute(&ctx).map_err(|e| fail(checks::describe(&e)))
            };
            let json = |v: Cel| v.json().map_err(|_| fail("its value cannot be written as JSON"));
            match &op.kind {
                OpKind::SetHeader(name, p) => {
                    headers.insert(name.clone(), header_value(&eval(p)?).map_err(fail)?);
                }
                OpKind::RemoveHeader(name) => {
                    headers.remove(name);
                }
                OpKind::SetJsonField(pointer, p) => {
                    let value = json(eval(p)?)?;
                    set_pointer(doc.get_or_insert(Json::Null), pointer, value).map_err(fail)?;
                }
                OpKind::RemoveJsonField(pointer) => {
                    if let Some(d) = &mut doc {
                        remove_pointer(d, pointer);
                    }
                }
                OpKind::ReplaceJsonBody(p) => doc = Some(json(eval(p)?)?),
            }
        }
        Ok((headers, doc))
    }
}

/// Runs the request operations of `route`; see the module docs. `body` is already limited to
/// the route's `bodyLimit`, and is buffered only when an operation needs it.
pub fn request<'a>(route: &'a LiveRoute, parts: &'a mut request::Parts, body: Body) -> Stage<'a, (Body, Seen)> {
    match &route.transform {
        None => Stage::skip((body, Seen::default())),
        Some(t) => Stage::run(request_ops(t, parts, body)),
    }
}

async fn request_ops(t: &Transform, parts: &mut request::Parts, body: Body) -> Result<(Body, Seen), ProxyError> {
    let mut view = HashMap::from([
        (key("method"), Cel::from(parts.method.as_str())),
        (key("path"), Cel::from(parts.uri.path())),
        (key("query"), query_view(parts.uri.query())),
        (key("headers"), headers_view(&parts.headers)),
    ]);
    let seen = Seen {
        view: (!t.response.ops.is_empty()).then(|| view.clone()),
        head: parts.method == http::Method::HEAD,
    };
    if t.reads_answers() {
        parts
            .headers
            .insert(header::ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    }
    if t.request.ops.is_empty() {
        return Ok((body, seen));
    }
    let failed = failure(Side::Request);
    let (raw, doc) = if t.request.needs_body {
        let (raw, doc) = read_json(&t.request, Side::Request, &parts.headers, body, u64::MAX).await?;
        view.insert(key("body"), doc.as_ref().map_or(Cel::Null, to_cel));
        (Ok(raw), doc)
    } else {
        (Err(body), None)
    };
    let (headers, new_doc) = t
        .request
        .apply(&t.functions, &[(REQUEST, &view)], &parts.headers, doc.as_ref())
        .map_err(failed)?;
    parts.headers = headers;
    let body = match raw {
        Err(stream) => stream,
        Ok(raw) if new_doc == doc => full(raw),
        Ok(_) => json_body(&mut parts.headers, new_doc.as_ref()),
    };
    Ok((body, seen))
}

/// Runs the answer operations of `route` on the answer the client is about to get.
pub fn response(route: &LiveRoute, seen: Seen, resp: Response<Body>) -> Stage<'_, Response<Body>> {
    match route.transform.as_ref().filter(|t| !t.response.ops.is_empty()) {
        None => Stage::skip(resp),
        Some(t) => Stage::run(response_ops(t, route.spec.body_limit, seen, resp)),
    }
}

async fn response_ops(
    t: &Transform,
    limit: u64,
    seen: Seen,
    resp: Response<Body>,
) -> Result<Response<Body>, ProxyError> {
    let failed = failure(Side::Response);
    let (mut parts, body) = resp.into_parts();
    let body_ops = t.response.needs_body && !is_bodiless(parts.status, seen.head);
    let mut view = HashMap::from([
        (key("status"), Cel::Int(i64::from(parts.status.as_u16()))),
        (key("headers"), headers_view(&parts.headers)),
    ]);
    let (raw, doc) = if body_ops {
        let (raw, doc) = read_json(&t.response, Side::Response, &parts.headers, body, limit).await?;
        view.insert(key("body"), doc.as_ref().map_or(Cel::Null, to_cel));
        (Ok(raw), doc)
    } else {
        (Err(body), None)
    };
    let request = seen.view.unwrap_or_default();
    let (headers, new_doc) = t
        .response
        .apply(
            &t.functions,
            &[(REQUEST, &request), (RESPONSE, &view)],
            &parts.headers,
            doc.as_ref(),
        )
        .map_err(failed)?;
    parts.headers = headers;
    let body = match raw {
        Err(stream) => stream,
        Ok(raw) if new_doc == doc => full(raw),
        Ok(_) => {
            // The representation changed: validators of the upstream's bytes no longer describe it.
            parts.headers.remove(header::ETAG);
            json_body(&mut parts.headers, new_doc.as_ref())
        }
    };
    Ok(Response::from_parts(parts, body))
}

/// `TRANSFORM_FAILED` for an operation of `side`: 400 for requests, 502 for answers.
fn failure(side: Side) -> impl Fn((String, &'static str)) -> ProxyError {
    move |(op, reason)| ProxyError::TransformFailed {
        answer: side == Side::Response,
        op,
        reason,
    }
}

/// Buffers (within `limit`, besides the route's `bodyLimit` already wrapped around request
/// bodies) and parses the body `ops` need; failures are named after the first such operation.
async fn read_json(
    ops: &Ops,
    side: Side,
    headers: &HeaderMap,
    body: Body,
    limit: u64,
) -> Result<(Bytes, Option<Json>), ProxyError> {
    let op = || {
        ops.ops
            .iter()
            .find(|o| o.needs_body)
            .map_or("", |o| &o.label)
            .to_string()
    };
    if is_compressed(headers) {
        return Err(failure(side)((op(), "the body is compressed (Content-Encoding)")));
    }
    let raw = read_to_limit(body, limit).await.map_err(match side {
        Side::Request => ProxyError::request_body,
        Side::Response => ProxyError::response_body,
    })?;
    let doc = parse(headers, &raw, ops.writes_body).map_err(|why| failure(side)((op(), why)))?;
    Ok((raw, doc))
}

fn key(name: &str) -> Key {
    Key::String(Arc::new(name.to_string()))
}

/// The body as JSON: `None` when empty, or of another type and only read (`written`: an
/// operation rewrites it, so it must be JSON); an error when it claims to be JSON and is not.
fn parse(headers: &HeaderMap, raw: &Bytes, written: bool) -> Result<Option<Json>, &'static str> {
    if raw.is_empty() {
        return Ok(None);
    }
    if !is_json(&media_type(headers)) {
        if !written {
            return Ok(None);
        }
        return Err("the body is not JSON (its Content-Type is not application/json or +json)");
    }
    serde_json::from_slice(raw)
        .map(Some)
        .map_err(|_| "the body is not valid JSON")
}

/// The new body, with the headers that describe it.
fn json_body(headers: &mut HeaderMap, doc: Option<&Json>) -> Body {
    let out = doc.map_or_else(Vec::new, |d| {
        serde_json::to_vec(d).expect("a JSON value always serializes")
    });
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(out.len()));
    if doc.is_some() && !is_json(&media_type(headers)) {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    full(out)
}

/// Header values as CEL reads them: lower-case names, repeated fields joined by `, `; values
/// Keygate marks sensitive and cookies left out.
fn headers_view(headers: &HeaderMap) -> Cel {
    let mut map: HashMap<Key, String> = HashMap::with_capacity(headers.keys_len());
    for (name, value) in headers {
        if value.is_sensitive() || name == header::COOKIE || name == header::SET_COOKIE {
            continue;
        }
        let Ok(v) = value.to_str() else { continue };
        map.entry(key(name.as_str()))
            .and_modify(|joined| {
                joined.push_str(", ");
                joined.push_str(v);
            })
            .or_insert_with(|| v.to_string());
    }
    Cel::from(map)
}

/// The query string as a map of decoded names to their first decoded value.
fn query_view(query: Option<&str>) -> Cel {
    let mut map: HashMap<Key, Cel> = HashMap::new();
    for field in query.unwrap_or_default().split('&').filter(|f| !f.is_empty()) {
        let (name, value) = field.split_once('=').unwrap_or((field, ""));
        let decode = |s: &str| String::from_utf8_lossy(&crate::vault::form_decode(s.as_bytes())).into_owned();
        map.entry(key(&decode(name)))
            .or_insert_with(|| Cel::from(decode(value)));
    }
    Cel::from(map)
}

/// JSON as CEL values: whole numbers become `int` (as Kubernetes' CEL reads JSON), others `double`.
fn to_cel(v: &Json) -> Cel {
    match v {
        Json::Null => Cel::Null,
        Json::Bool(b) => Cel::Bool(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Cel::Int(i),
            None => Cel::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Cel::from(s.as_str()),
        Json::Array(items) => Cel::List(Arc::new(items.iter().map(to_cel).collect())),
        Json::Object(fields) => Cel::from(
            fields
                .iter()
                .map(|(k, v)| (key(k), to_cel(v)))
                .collect::<HashMap<Key, Cel>>(),
        ),
    }
}

fn header_value(v: &Cel) -> Result<HeaderValue, &'static str> {
    let text = match v {
        Cel::String(s) => s.to_string(),
        Cel::Int(i) => i.to_string(),
        Cel::UInt(u) => u.to_string(),
        Cel::Float(f) => f.to_string(),
        Cel::Bool(b) => b.to_string(),
        _ => return Err("a header value must be a string, number or bool"),
    };
    HeaderValue::from_str(&text).map_err(|_| "the value holds characters a header cannot carry")
}

/// RFC 6901 reference tokens of a pointer (`~1` is `/`, `~0` is `~`).
fn tokens(pointer: &str) -> impl Iterator<Item = String> + '_ {
    pointer
        .split('/')
        .skip(1)
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
}

/// Sets the value at `pointer`, creating missing objects on the way; `-` appends to an array.
fn set_pointer(doc: &mut Json, pointer: &str, value: Json) -> Result<(), &'static str> {
    let tokens: Vec<String> = tokens(pointer).collect();
    let Some((last, path)) = tokens.split_last() else {
        *doc = value;
        return Ok(());
    };
    let mut cur = doc;
    for t in path {
        if cur.is_null() {
            *cur = Json::Object(Default::default());
        }
        cur = match cur {
            Json::Object(fields) => fields.entry(t.clone()).or_insert(Json::Null),
            Json::Array(items) => {
                let i = index(t, items.len())?;
                items.get_mut(i).ok_or("the pointer runs past the end of an array")?
            }
            _ => return Err("the pointer goes through a value that is neither an object nor an array"),
        };
    }
    if cur.is_null() {
        *cur = Json::Object(Default::default());
    }
    match cur {
        Json::Object(fields) => {
            fields.insert(last.clone(), value);
        }
        Json::Array(items) => {
            let i = if last == "-" {
                items.len()
            } else {
                index(last, items.len())?
            };
            let len = items.len();
            match items.get_mut(i) {
                Some(slot) => *slot = value,
                None if i == len => items.push(value),
                None => return Err("the pointer runs past the end of an array"),
            }
        }
        _ => return Err("the pointer goes through a value that is neither an object nor an array"),
    }
    Ok(())
}

fn index(token: &str, len: usize) -> Result<usize, &'static str> {
    let bad = "the pointer names an array element by something other than its index";
    if token.len() > 1 && token.starts_with('0') {
        return Err(bad);
    }
    let i: usize = token.parse().map_err(|_| bad)?;
    if i > len {
        return Err("the pointer runs past the end of an array");
    }
    Ok(i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_route;
    use http_body_util::BodyExt;
    use serde_json::json;

    fn route(transform: Json) -> LiveRoute {
        test_route(json!({ "transform": transform, "bodyLimit": 4096 }))
    }

    fn req(method: &str, uri: &str, headers: &[(&str, &str)]) -> request::Parts {
        let mut b = http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    async fn text(body: Body) -> String {
        String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    const JSON_CT: (&str, &str) = ("content-type", "application/json");

    #[tokio::test]
    async fn request_operations_apply_in_order() {
        let r = route(json!({"request": [
            {"op": "setHeader", "name": "x-user", "value": "request.headers['x-user-id'] + ':' + request.method"},
            {"op": "removeHeader", "name": "x-debug"},
            {"op": "setJsonField", "pointer": "/meta/page", "value": "int(request.query.page) + 1"},
            {"op": "setJsonField", "pointer": "/items/-", "value": "size(request.body.items)"},
            {"op": "removeJsonField", "pointer": "/internal"},
            {"op": "setHeader", "name": "x-count", "value": "size(request.body.items)"},
            {"op": "setHeader", "name": "x-has", "value": "'x-user-id' in request.headers && !('x-nope' in request.headers)"},
        ]}));
        let mut parts = req(
            "POST",
            "/r/orders?page=2&x=%7B",
            &[("x-user-id", "u1"), ("x-debug", "1"), JSON_CT],
        );
        let body = full(r#"{"items": [7, 8], "internal": {"a": 1}}"#);
        let (body, _) = request(&r, &mut parts, body).await.unwrap();
        assert_eq!(parts.headers["x-user"], "u1:POST");
        assert!(parts.headers.get("x-debug").is_none());
        // Expressions read the request as it arrived: the count is from before the append.
        assert_eq!(parts.headers["x-count"], "2");
        assert_eq!(parts.headers["x-has"], "true");
        let out = text(body).await;
        assert_eq!(
            serde_json::from_str::<Json>(&out).unwrap(),
            json!({"items": [7, 8, 2], "meta": {"page": 3}})
        );
        assert_eq!(parts.headers["content-length"], out.len().to_string());
    }

    #[tokio::test]
    async fn replace_json_body_and_answers() {
        let r = route(json!({
            "request": [{"op": "replaceJsonBody", "value": "{'wrapped': request.body, 'by': request.path}"}],
            "response": [
                {"op": "setJsonField", "pointer": "/status", "value": "response.status"},
                {"op": "setHeader", "name": "x-seen-method", "value": "request.method"},
                {"op": "removeJsonField", "pointer": "/secret"},
                {"op": "removeHeader", "name": "server"},
            ]
        }));
        let mut parts = req("PUT", "/r/x", &[JSON_CT]);
        let (body, seen) = request(&r, &mut parts, full(r#"[1,"a"]"#)).await.unwrap();
        assert_eq!(
            serde_json::from_str::<Json>(&text(body).await).unwrap(),
            json!({"wrapped": [1, "a"], "by": "/r/x"})
        );
        // Answers must come uncompressed for their body to be read.
        assert_eq!(parts.headers["accept-encoding"], "identity");
        let resp = Response::builder()
            .status(201)
            .header("content-type", "application/json")
            .header("server", "upstream/1.0")
            .header("etag", "\"v1\"")
            .body(full(r#"{"id": 5, "secret": "x"}"#))
            .unwrap();
        let resp = response(&r, seen, resp).await.unwrap();
        assert_eq!(resp.headers()["x-seen-method"], "PUT");
        assert!(resp.headers().get("server").is_none());
        assert!(resp.headers().get("etag").is_none());
        assert_eq!(
            serde_json::from_str::<Json>(&text(resp.into_body()).await).unwrap(),
            json!({"id": 5, "status": 201})
        );
    }

    #[tokio::test]
    async fn header_only_transforms_leave_the_body_streaming() {
        let r = route(
            json!({"request": [{"op": "setHeader", "name": "x-a", "value": "request.path"}],
                             "response": [{"op": "setHeader", "name": "x-b", "value": "string(response.status)"}]}),
        );
        let mut parts = req("POST", "/r/up", &[("content-type", "application/octet-stream")]);
        // A body that fails when read: had the stage buffered it, the call would fail.
        let failing = http_body_util::StreamBody::new(futures::stream::iter(vec![Err::<http_body::Frame<Bytes>, _>(
            crate::body::BoxError::from("must not be read"),
        )]));
        let (body, seen) = request(&r, &mut parts, BodyExt::boxed(failing)).await.unwrap();
        assert_eq!(parts.headers["x-a"], "/r/up");
        assert!(parts.headers.get("accept-encoding").is_none());
        assert!(body.collect().await.is_err(), "the body is passed on unread");
        let resp = Response::builder().status(200).body(full("not json")).unwrap();
        let resp = response(&r, seen, resp).await.unwrap();
        assert_eq!(resp.headers()["x-b"], "200");
        assert_eq!(text(resp.into_body()).await, "not json");
    }

    #[tokio::test]
    async fn run_time_failures_name_the_operation_and_change_nothing() {
        let r = route(json!({"request": [
            {"op": "setHeader", "name": "x-a", "value": "'first'"},
            {"op": "setHeader", "name": "x-b", "value": "request.headers['x-missing']"},
        ]}));
        let mut parts = req("GET", "/r", &[("x-keep", "1")]);
        let before = parts.headers.clone();
        let err = request(&r, &mut parts, full("")).await.err().unwrap();
        assert_eq!(err.code(), "TRANSFORM_FAILED");
        assert_eq!(err.status(), 400);
        assert_eq!(
            err.to_string(),
            "transform.request[1] (setHeader x-b) failed: a field or key it reads is missing"
        );
        assert_eq!(parts.headers, before, "nothing half rewritten");

        let cases = [
            (
                json!({"op": "setHeader", "name": "x-a", "value": "request.body"}),
                "a header value must be a string, number or bool",
            ),
            (
                json!({"op": "setJsonField", "pointer": "/a/x/y", "value": "1"}),
                "the pointer names an array element by something other than its index",
            ),
            (
                json!({"op": "setJsonField", "pointer": "/n/x", "value": "1"}),
                "the pointer goes through a value that is neither an object nor an array",
            ),
            (
                json!({"op": "setHeader", "name": "x-a", "value": "request.body.n / 0"}),
                "division by zero",
            ),
            (
                json!({"op": "setHeader", "name": "x-a", "value": "request.body.n + 'card'"}),
                "a value has the wrong type for the operation or function",
            ),
        ];
        for (op, why) in cases {
            let r = route(json!({ "request": [op] }));
            let mut parts = req("POST", "/r", &[JSON_CT]);
            let result = request(&r, &mut parts, full(r#"{"a": [{"x": 1}], "n": 4111111111111111}"#)).await;
            let err = result.err().unwrap_or_else(|| panic!("{why}: no error"));
            assert!(err.to_string().ends_with(why), "{err}");
            assert!(!err.to_string().contains("4111"), "no value in {err}");
        }

        let r = route(json!({"request": [{"op": "removeJsonField", "pointer": "/a"}]}));
        let mut parts = req("POST", "/r", &[JSON_CT]);
        let err = request(&r, &mut parts, full("{not json")).await.err().unwrap();
        assert_eq!(
            err.to_string(),
            "transform.request[0] (removeJsonField /a) failed: the body is not valid JSON"
        );
        let mut parts = req("POST", "/r", &[("content-type", "text/plain")]);
        let err = request(&r, &mut parts, full("a=1")).await.err().unwrap();
        assert!(err.to_string().contains("the body is not JSON"), "{err}");

        let r = route(json!({"response": [{"op": "setJsonField", "pointer": "/x", "value": "response.body.missing"}]}));
        let resp = Response::builder()
            .header("content-type", "application/json")
            .body(full("{}"))
            .unwrap();
        let err = response(&r, Seen::default(), resp).await.err().unwrap();
        assert_eq!((err.code(), err.status().as_u16()), ("TRANSFORM_FAILED", 502));
        assert!(
            err.to_string()
                .starts_with("transform.response[0] (setJsonField /x) failed")
        );
    }

    #[tokio::test]
    async fn sensitive_headers_and_cookies_are_not_readable() {
        let r = route(
            json!({"request": [{"op": "setHeader", "name": "x-all", "value": "request.headers.map(k, k).filter(k, k != 'x-plain').size() == 0 ? 'none' : 'some'"}]}),
        );
        let mut parts = req("GET", "/r", &[("cookie", "sid=secret"), ("x-plain", "1")]);
        let mut secret = HeaderValue::from_static("key-123");
        secret.set_sensitive(true);
        parts.headers.insert("x-api-key", secret);
        request(&r, &mut parts, full("")).await.unwrap();
        assert_eq!(parts.headers["x-all"], "none");
    }

    #[tokio::test]
    async fn answers_without_a_body_keep_none() {
        let r = route(json!({"response": [{"op": "setJsonField", "pointer": "/x", "value": "1"}]}));
        let mut parts = req("HEAD", "/r", &[]);
        let (_, seen) = request(&r, &mut parts, full("")).await.unwrap();
        let resp = Response::builder()
            .header("content-type", "application/json")
            .header("content-length", "120")
            .body(full(""))
            .unwrap();
        let resp = response(&r, seen, resp).await.unwrap();
        assert_eq!(
            resp.headers()["content-length"],
            "120",
            "a HEAD answer's length is the GET's"
        );
        assert_eq!(text(resp.into_body()).await, "");
        let resp = Response::builder().status(204).body(full("")).unwrap();
        let resp = response(&r, Seen::default(), resp).await.unwrap();
        assert!(resp.headers().get("content-length").is_none());
        assert_eq!(text(resp.into_body()).await, "");
    }

    #[test]
    fn pointers() {
        let mut doc = json!({"a": [1, {"b": 2}], "c~/d": 3});
        set_pointer(&mut doc, "/a/1/b", json!(9)).unwrap();
        set_pointer(&mut doc, "/x/y/z", json!(true)).unwrap();
        set_pointer(&mut doc, "/a/2", json!("end")).unwrap();
        assert_eq!(
            set_pointer(&mut doc, "/a/9", json!(0)),
            Err("the pointer runs past the end of an array")
        );
        remove_pointer(&mut doc, "/c~0~1d");
        remove_pointer(&mut doc, "/a/0");
        remove_pointer(&mut doc, "/nothing/here");
        assert_eq!(doc, json!({"a": [{"b": 9}, "end"], "x": {"y": {"z": true}}}));
    }
}
