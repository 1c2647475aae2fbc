//! Detokenization of a request on its way upstream: find every `{{ ... }}` expression in the
//! query string, the headers and the body ([`super::expr`]), look each token up once in the
//! route's vault rules, check its classification against the rule's permissions for that part
//! of the request, and only then splice the data in. Every refusal happens before a byte goes
//! upstream.
//!
//! How data is written depends on where the expression sits: in a JSON body, as escaped JSON
//! string content inside a string, or as the token's JSON value when the expression is the
//! whole string (or outside any string); in form-encoded bodies and query strings, form-encoded
//! (fields are decoded first, since browsers encode `{` as `%7B`); in headers and other text
//! bodies, as is. Bodies of other media types stream through unread.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::try_join_all;
use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::uri::PathAndQuery;
use http_body_util::{BodyExt, Full};
use keygate_crds::resources::vault::TokenLocation;
use serde_json::Value;

use super::expr::{self, ParseError};
use super::tokens::{Token, VaultRule};
use super::{RouteVault, unavailable};
use crate::body::Body;
use crate::body::read_to_limit;
use crate::error::ProxyError;

/// The part of a request an expression sits in.
#[derive(Clone, Debug)]
enum Part {
    Body,
    BodyField(usize),
    Header(HeaderName),
    QueryField(usize),
}

impl Part {
    fn location(&self) -> TokenLocation {
        match self {
            Part::Body | Part::BodyField(_) => TokenLocation::Body,
            Part::Header(_) => TokenLocation::Headers,
            Part::QueryField(_) => TokenLocation::Query,
        }
    }

    /// Names the place of a byte for error messages; offsets in form fields count in the
    /// decoded value, which is what the client wrote before encoding.
    fn at(&self, offset: usize) -> String {
        match self {
            Part::Body => format!("body at byte {offset}"),
            Part::BodyField(i) => format!("body, form field {i}, at byte {offset} of its decoded value"),
            Part::Header(name) => format!("header {name} at byte {offset}"),
            Part::QueryField(i) => format!("query string, field {i}, at byte {offset} of its decoded value"),
        }
    }
}

struct Found {
    span: Range<usize>,
    id: String,
    pointer: Option<String>,
}

/// A piece of text with expressions in it.
struct Unit {
    part: Part,
    text: Bytes,
    found: Vec<Found>,
}

/// Parses units against the route's budget of expressions.
struct Scanner {
    max: usize,
    budget: usize,
}

impl Scanner {
    fn unit(&mut self, part: Part, text: Bytes) -> Result<Option<Unit>, ProxyError> {
        if !expr::has_open(&text) {
            return Ok(None);
        }
        let found = match expr::parse(&text, self.budget) {
            Ok(found) => found,
            Err(ParseError::TooMany) => return Err(ProxyError::TooManyTokens(self.max)),
            Err(ParseError::Invalid { offset, reason }) => {
                return Err(ProxyError::InvalidExpression {
                    place: part.at(offset),
                    reason,
                });
            }
        };
        self.budget -= found.len();
        let found = found
            .into_iter()
            .map(|e| Found {
                span: e.span,
                id: e.id.to_string(),
                pointer: e.pointer.map(str::to_string),
            })
            .collect();
        Ok(Some(Unit { part, text, found }))
    }

    /// The fields of `a=b&c=d` whose decoded values hold expressions, with the raw value's range.
    fn form(&mut self, raw: &[u8], part: fn(usize) -> Part) -> Result<Vec<(Range<usize>, Unit)>, ProxyError> {
        let mut units = Vec::new();
        let mut start = 0;
        for (i, field) in raw.split(|b| *b == b'&').enumerate() {
            // A field without `=` is all value: `?{{tok}}` is as much a token as `?card={{tok}}`.
            let value_start = field.iter().position(|b| *b == b'=').map_or(0, |p| p + 1);
            let range = start + value_start..start + field.len();
            start += field.len() + 1;
            if !may_hold_expression(&raw[range.clone()]) {
                continue;
            }
            if let Some(unit) = self.unit(part(i + 1), Bytes::from(form_decode(&raw[range.clone()])))? {
                units.push((range, unit));
            }
        }
        Ok(units)
    }
}

/// How a body is read.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum BodyKind {
    Json,
    Form,
    Text,
    /// Not scanned: binary, multipart, compressed, or of no declared type.
    Other,
}

fn body_kind(headers: &http::HeaderMap) -> BodyKind {
    let encoded = super::is_compressed(headers);
    let media = super::media_type(headers);
    match media.as_str() {
        _ if encoded => BodyKind::Other,
        _ if super::is_json(&media) => BodyKind::Json,
        "application/x-www-form-urlencoded" => BodyKind::Form,
        m if m.starts_with("text/") || m == "application/xml" || m.ends_with("+xml") => BodyKind::Text,
        _ => BodyKind::Other,
    }
}

/// Detokenizes `parts` and `body` in place; see the module docs. `skip` names headers the route
/// injects itself, which are never the client's and never scanned.
pub(super) async fn request(
    vault: &RouteVault,
    skip: &[(HeaderName, HeaderValue)],
    parts: &mut Parts,
    body: Body,
) -> Result<Body, ProxyError> {
    let mut scan = Scanner {
        max: vault.max_tokens,
        budget: vault.max_tokens,
    };
    let query = match parts.uri.query() {
        Some(q) => scan.form(q.as_bytes(), Part::QueryField)?,
        None => Vec::new(),
    };
    let mut headers = Vec::new();
    for (k, (name, value)) in parts.headers.iter().enumerate() {
        // Sensitive values are Keygate's own (secrets, the translated session cookie), never the client's.
        if !expr::has_open(value.as_bytes()) || value.is_sensitive() || skip.iter().any(|(n, _)| n == name) {
            continue;
        }
        if let Some(unit) = scan.unit(Part::Header(name.clone()), Bytes::copy_from_slice(value.as_bytes()))? {
            headers.push((k, unit));
        }
    }
    let kind = body_kind(&parts.headers);
    // The body is read only when it is scanned; otherwise it streams as it came.
    let (payload, body_units) = if kind == BodyKind::Other {
        (Err(body), Vec::new())
    } else {
        let raw = read_to_limit(body, u64::MAX).await.map_err(ProxyError::request_body)?;
        let units = match kind {
            BodyKind::Form => scan.form(&raw, Part::BodyField)?,
            _ => scan
                .unit(Part::Body, raw.clone())?
                .map(|u| (0..raw.len(), u))
                .into_iter()
                .collect(),
        };
        (Ok(raw), units)
    };
    if vault.tokenizes() {
        // Answers must arrive readable for their fields to be tokenized.
        parts
            .headers
            .insert(header::ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    }

    let units = query
        .iter()
        .map(|(_, u)| u)
        .chain(headers.iter().map(|(_, u)| u))
        .chain(body_units.iter().map(|(_, u)| u));
    let values = resolve(vault, units).await?;
    let text_of = |unit: &Unit| -> Vec<u8> {
        expr::splice(
            &unit.text,
            unit.found
                .iter()
                .map(|f| (f.span.clone(), as_text(pick(&values, f)).into_owned())),
        )
    };
    let form_of = |raw: &[u8], units: &[(Range<usize>, Unit)]| -> Vec<u8> {
        expr::splice(
            raw,
            units
                .iter()
                .map(|(range, unit)| (range.clone(), form_encode(&text_of(unit)))),
        )
    };
    if !query.is_empty() {
        let query = form_of(parts.uri.query().unwrap_or_default().as_bytes(), &query);
        let pq = format!("{}?{}", parts.uri.path(), String::from_utf8_lossy(&query));
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        uri.path_and_query = Some(PathAndQuery::try_from(pq).expect("form encoding yields URI-safe bytes"));
        parts.uri = http::Uri::from_parts(uri).expect("only the query changed");
    }
    let mut headers = headers.into_iter().peekable();
    for (k, (_, slot)) in parts.headers.iter_mut().enumerate() {
        let Some((_, unit)) = headers.next_if(|(i, _)| *i == k) else {
            continue;
        };
        let mut v = HeaderValue::from_bytes(&text_of(&unit)).map_err(|_| {
            ProxyError::BadRequest(
                "a token's data cannot be put in a header: it holds line breaks or control characters",
            )
        })?;
        v.set_sensitive(true);
        *slot = v;
    }
    let raw = match payload {
        Ok(raw) => raw,
        Err(stream) => return Ok(stream),
    };
    let out = match (kind, body_units.first()) {
        (_, None) => raw,
        (BodyKind::Form, _) => Bytes::from(form_of(&raw, &body_units)),
        (BodyKind::Json, Some((_, unit))) => Bytes::from(json_splice(unit, |f| pick(&values, f))),
        (_, Some((_, unit))) => Bytes::from(text_of(unit)),
    };
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(out.len()));
    Ok(Full::new(out).map_err(|never| match never {}).boxed())
}

/// Looks every distinct token up once (concurrently), then checks each expression: the token
/// exists, its rule permits its classification where it sits, and its JSON pointer selects a value.
async fn resolve<'a>(
    vault: &RouteVault,
    units: impl Iterator<Item = &'a Unit> + Clone,
) -> Result<HashMap<String, Token>, ProxyError> {
    let mut ids: Vec<&str> = units
        .clone()
        .flat_map(|u| u.found.iter().map(|f| f.id.as_str()))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let looked_up = try_join_all(ids.iter().map(|id| lookup(&vault.rules, id))).await?;
    let found: HashMap<&str, (Token, &VaultRule)> = ids
        .into_iter()
        .zip(looked_up)
        .filter_map(|(id, t)| Some((id, t?)))
        .collect();
    for unit in units {
        for f in &unit.found {
            let place = || unit.part.at(f.span.start);
            let Some((token, rule)) = found.get(f.id.as_str()) else {
                return Err(ProxyError::TokenNotFound(place()));
            };
            if !rule.permits(&token.classification, unit.part.location()) {
                return Err(ProxyError::TokenNotPermitted {
                    classification: token.classification.clone(),
                    place: place(),
                });
            }
            if f.pointer.as_deref().is_some_and(|p| token.data.pointer(p).is_none()) {
                return Err(ProxyError::InvalidExpression {
                    place: place(),
                    reason: "the token has no value at this JSON pointer",
                });
            }
        }
    }
    Ok(found.into_iter().map(|(id, (t, _))| (id.to_string(), t)).collect())
}

/// The value an expression selects; [`resolve`] has checked that there is one.
fn pick<'v>(values: &'v HashMap<String, Token>, f: &Found) -> &'v Value {
    let data = &values[&f.id].data;
    f.pointer
        .as_deref()
        .map_or(data, |p| data.pointer(p).expect("checked by resolve"))
}

/// The token and the first of `rules` holding it.
async fn lookup<'r>(rules: &'r [Arc<VaultRule>], id: &str) -> Result<Option<(Token, &'r VaultRule)>, ProxyError> {
    for rule in rules {
        if let Some(token) = rule.lookup(id).await.map_err(|e| unavailable(rule, e))? {
            return Ok(Some((token, rule)));
        }
    }
    Ok(None)
}

/// A value as text: strings as they are, anything else as compact JSON.
fn as_text(v: &Value) -> Cow<'_, str> {
    match v {
        Value::String(s) => Cow::Borrowed(s),
        v => Cow::Owned(v.to_string()),
    }
}

/// Where an expression sits in a JSON body.
#[derive(Clone, Debug, PartialEq)]
enum JsonSpot {
    /// Outside any string: the value goes in as JSON.
    Outside,
    /// Part of a string: the value goes in as escaped string content.
    InString,
    /// The whole string (quotes included in the range): the string becomes the value.
    Whole(Range<usize>),
}

/// Where each expression of `unit` (a JSON body) sits. One pass over the bytes, skipping the
/// expressions themselves, whose quotes are not the document's.
fn json_spots(unit: &Unit) -> Vec<JsonSpot> {
    let (text, found) = (&unit.text[..], &unit.found);
    let mut spots = vec![JsonSpot::Outside; found.len()];
    let mut string: Option<(usize, Vec<usize>)> = None;
    let (mut i, mut k) = (0, 0);
    while i < text.len() {
        if k < found.len() && i >= found[k].span.start {
            if let Some((_, inside)) = &mut string {
                spots[k] = JsonSpot::InString;
                inside.push(k);
            }
            i = found[k].span.end;
            k += 1;
            continue;
        }
        match (&string, text[i]) {
            (None, b'"') => string = Some((i, Vec::new())),
            (Some(_), b'\\') => i += 1,
            (Some((open, inside)), b'"') => {
                // An object key stays a string whatever the token holds.
                let is_key = text[i + 1..].iter().find(|b| !b.is_ascii_whitespace()) == Some(&b':');
                if let [only] = inside[..]
                    && found[only].span == (open + 1..i)
                    && !is_key
                {
                    spots[only] = JsonSpot::Whole(*open..i + 1);
                }
                string = None;
            }
            _ => {}
        }
        i += 1;
    }
    spots
}

fn json_splice<'v>(unit: &Unit, value: impl Fn(&Found) -> &'v Value) -> Vec<u8> {
    let spots = json_spots(unit);
    let edits = unit.found.iter().zip(spots).map(|(f, spot)| {
        let v = value(f);
        match spot {
            JsonSpot::Outside => (f.span.clone(), v.to_string()),
            JsonSpot::Whole(range) => (range, v.to_string()),
            JsonSpot::InString => {
                let quoted = Value::String(as_text(v).into_owned()).to_string();
                (f.span.clone(), quoted[1..quoted.len() - 1].to_string())
            }
        }
    });
    expr::splice(&unit.text, edits)
}

/// Whether a form field, still encoded, can decode to something holding `{{`: most fields are
/// then never decoded at all.
fn may_hold_expression(raw: &[u8]) -> bool {
    raw.contains(&b'{') || raw.windows(3).any(|w| w.eq_ignore_ascii_case(b"%7b"))
}

/// `application/x-www-form-urlencoded` decoding of one name or value: `+` is a space, `%XX` a
/// byte; a `%` not followed by two hex digits stays as it is.
pub(crate) fn form_decode(raw: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < raw.len() => match (hex(raw[i + 1]), hex(raw[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// `application/x-www-form-urlencoded` encoding, as browsers write it.
pub(crate) fn form_encode(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => out.push(b),
            b' ' => out.push(b'+'),
            _ => out.extend_from_slice(format!("%{b:02X}").as_bytes()),
        }
    }
    out
}

impl fmt::Debug for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Unit({:?}, {} expressions)", self.part, self.found.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(text: &str) -> Unit {
        let mut scan = Scanner { max: 100, budget: 100 };
        scan.unit(Part::Body, Bytes::copy_from_slice(text.as_bytes()))
            .unwrap()
            .unwrap()
    }

    fn json(text: &str, value: Value) -> String {
        String::from_utf8(json_splice(&unit(text), |_| &value)).unwrap()
    }

    #[test]
    fn json_bodies_stay_valid() {
        let tricky = Value::String("a \"quoted\"\nline\\".into());
        assert_eq!(
            json(r#"{"p": "{{t}}"}"#, tricky.clone()),
            r#"{"p": "a \"quoted\"\nline\\"}"#
        );
        assert_eq!(
            json(r#"{"p": "card {{t}} end"}"#, tricky.clone()),
            r#"{"p": "card a \"quoted\"\nline\\ end"}"#
        );
        let object = serde_json::json!({"n": "4111", "x": [1]});
        assert_eq!(
            json(r#"{"p": "{{ t }}"}"#, object.clone()),
            r#"{"p": {"n":"4111","x":[1]}}"#
        );
        assert_eq!(
            json(r#"{"p": "x{{ t }}"}"#, object.clone()),
            r#"{"p": "x{\"n\":\"4111\",\"x\":[1]}"}"#
        );
        assert_eq!(json(r#"{"p": {{ t }} }"#, object), r#"{"p": {"n":"4111","x":[1]} }"#);
        assert_eq!(
            json(r#"{"p": "{{ t | json: \"/n\" }}"}"#, Value::from(42)),
            r#"{"p": 42}"#
        );
        assert_eq!(json(r#"["\"{{t}}", "{{t}}"]"#, Value::from("v")), r#"["\"v", "v"]"#);
        assert_eq!(json(r#"{"a": "{{t}}{{t}}"}"#, Value::from("v")), r#"{"a": "vv"}"#);
        assert_eq!(json(r#"{"{{t}}" : "{{t}}"}"#, Value::from(7)), r#"{"7" : 7}"#);
    }

    #[test]
    fn json_spots_skip_the_expressions_own_quotes() {
        let u = unit(r#"{"a": {{ t | json: "/x" }}, "b": "{{t}}", "c": "\\{{t}}"}"#);
        assert_eq!(json_spots(&u)[..2], [JsonSpot::Outside, JsonSpot::Whole(33..40)]);
        assert_eq!(json_spots(&u)[2], JsonSpot::InString);
    }

    #[test]
    fn form_coding() {
        assert_eq!(form_decode(b"%7B%7B+tok+%7d%7D%2"), b"{{ tok }}%2");
        assert_eq!(form_decode(b"a%zz%"), b"a%zz%");
        assert_eq!(form_encode("a b&c=d/é~".as_bytes()), b"a+b%26c%3Dd%2F%C3%A9%7E");
        let mut scan = Scanner { max: 100, budget: 100 };
        let units = scan.form(b"a=1&card=%7B%7Bt%7D%7D&{{u}}", Part::QueryField).unwrap();
        let got: Vec<_> = units
            .iter()
            .map(|(r, u)| (r.clone(), format!("{:?}", u.part), u.found[0].id.clone()))
            .collect();
        assert_eq!(
            got,
            [
                (9..22, "QueryField(2)".to_string(), "t".to_string()),
                (23..28, "QueryField(3)".into(), "u".into())
            ]
        );
    }

    #[test]
    fn body_kinds() {
        let kind = |ct: &str, ce: Option<&str>| {
            let mut h = http::HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
            if let Some(ce) = ce {
                h.insert(header::CONTENT_ENCODING, HeaderValue::from_str(ce).unwrap());
            }
            body_kind(&h)
        };
        assert_eq!(kind("application/json; charset=utf-8", None), BodyKind::Json);
        assert_eq!(kind("application/vnd.api+json", None), BodyKind::Json);
        assert_eq!(kind("application/x-www-form-urlencoded", None), BodyKind::Form);
        assert_eq!(kind("text/plain", None), BodyKind::Text);
        assert_eq!(kind("application/soap+xml", None), BodyKind::Text);
        assert_eq!(kind("application/octet-stream", None), BodyKind::Other);
        assert_eq!(kind("multipart/form-data; boundary=x", None), BodyKind::Other);
        assert_eq!(kind("application/json", Some("gzip")), BodyKind::Other);
        assert_eq!(kind("application/json", Some("identity")), BodyKind::Json);
    }
}
