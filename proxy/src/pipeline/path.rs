//! The first stage: the request path gets one canonical spelling before anything reads it, so
//! routing, CSRF, every later stage and the upstream all see the same path, and no spelling of
//! `..` can carry Keygate's credentials outside a route's base path.
//!
//! Upstreams decode and normalize paths in their own ways (Tomcat drops `;params` before
//! resolving `..`, IIS treats `\` as `/`, some decode twice), so what Keygate forwards must
//! leave nothing for them to resolve: dot segments are removed as RFC 3986 §5.2.4 does, with
//! `%2e` counted as a dot; escapes of unreserved characters are decoded (§6.2.2.2), so
//! `/%61dmin` routes like `/admin`; doubled slashes are merged; and anything that is only a
//! dot segment to some other decoder — `..;x`, `..%2f`, `%252e` — is refused rather than
//! guessed at. Encoded slashes and backslashes are refused unless the route allows them
//! (`allowEncodedSlashes`), and then they pass still encoded.

use std::borrow::Cow;

use http::Uri;
use http::uri::PathAndQuery;

use crate::error::ProxyError;

/// Longest request path served (bytes, before normalization). Routes and upstreams have no use
/// for more, and a bound keeps the work per request bounded.
pub const MAX_PATH_LEN: usize = 8 * 1024;

/// Why a path is refused. Each is `400 BAD_PATH`, but for [`BadPath::TooLong`] (`414`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadPath {
    /// Longer than [`MAX_PATH_LEN`].
    TooLong,
    /// Not an absolute path (`*`, or empty).
    NotAbsolute,
    /// More `..` segments than there are segments to remove.
    ClimbsAboveRoot,
    /// A `%` not followed by two hex digits.
    BadEscape,
    /// Escaped bytes that are not UTF-8, such as the overlong `%c0%ae` some decoders read as `.`.
    NotUtf8,
    /// `%25` followed by an escaped dot, slash, backslash or percent: a dot or slash to anything
    /// that decodes twice.
    DoubleEncoded,
    /// A dot segment only some decoders see: `..;x`, or `..` beside an encoded slash.
    HiddenDotSegment,
    /// `%2F`, `%5C` or `\` on a route that does not allow them.
    EncodedSlash,
}

impl BadPath {
    /// What is wrong, for the client's error message and the log.
    pub fn reason(self) -> &'static str {
        match self {
            BadPath::TooLong => "the path is longer than 8192 bytes",
            BadPath::NotAbsolute => "the path must start with /",
            BadPath::ClimbsAboveRoot => "the path climbs above / with '..'",
            BadPath::BadEscape => "'%' must be followed by two hex digits",
            BadPath::NotUtf8 => "percent-encoded bytes in the path are not UTF-8",
            BadPath::DoubleEncoded => "the path double-encodes a dot, slash or percent sign (%25...)",
            BadPath::HiddenDotSegment => {
                "the path hides a '.' or '..' segment behind ';' parameters or an encoded slash"
            }
            BadPath::EncodedSlash => {
                "encoded slashes and backslashes (%2F, %5C, \\) are refused; the route can allow them with allowEncodedSlashes"
            }
        }
    }
}

impl From<BadPath> for ProxyError {
    fn from(bad: BadPath) -> Self {
        match bad {
            BadPath::TooLong => ProxyError::PathTooLong(MAX_PATH_LEN),
            other => ProxyError::BadPath(other.reason()),
        }
    }
}

/// A path in canonical form.
#[derive(Debug, PartialEq, Eq)]
pub struct Normalized<'a> {
    /// Starts with `/`; no dot segments, no empty segments but a trailing `/`; escapes of
    /// unreserved characters decoded and the others in upper case.
    pub path: Cow<'a, str>,
    /// Whether the path carries an encoded slash or backslash (kept as `%2F` / `%5C`), which
    /// only a route with `allowEncodedSlashes` serves.
    pub encoded_slash: bool,
}

/// The canonical form of `path`, or why it is refused. See the module docs.
pub fn normalize(path: &str) -> Result<Normalized<'_>, BadPath> {
    if path.len() > MAX_PATH_LEN {
        return Err(BadPath::TooLong);
    }
    if !path.starts_with('/') {
        return Err(BadPath::NotAbsolute);
    }
    if is_canonical(path) {
        return Ok(Normalized {
            path: Cow::Borrowed(path),
            encoded_slash: false,
        });
    }
    let mut out = String::with_capacity(path.len());
    let mut encoded_slash = false;
    // Where each kept segment's `/` starts in `out`, so `..` can drop the last one.
    let mut starts: Vec<usize> = Vec::new();
    let mut trailing_slash = false;
    let mut segments = path[1..].split('/').peekable();
    while let Some(raw) = segments.next() {
        let last = segments.peek().is_none();
        let start = out.len();
        out.push('/');
        let segment = canonical_segment(raw, &mut out)?;
        encoded_slash |= segment.encoded_slash;
        let kind = segment.kind(&out[start + 1..])?;
        if kind != Kind::Plain {
            out.truncate(start);
            if kind == Kind::DotDot {
                let parent = starts.pop().ok_or(BadPath::ClimbsAboveRoot)?;
                out.truncate(parent);
            }
            trailing_slash = last;
            continue;
        }
        starts.push(start);
        trailing_slash = false;
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    Ok(Normalized {
        path: Cow::Owned(out),
        encoded_slash,
    })
}

/// The path and query exactly as the client wrote them in the request target, kept as a request
/// extension when normalization changed them: a signature (`proof: signature` chains) covers what
/// the client sent, not Keygate's canonical spelling of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OriginalTarget(pub PathAndQuery);

/// [`normalize_uri`] on a request, keeping the [`OriginalTarget`] when the path changed.
pub fn normalize_request<B>(req: &mut http::Request<B>) -> Result<bool, BadPath> {
    let original = req.uri().path_and_query().cloned();
    let encoded_slash = normalize_uri(req.uri_mut())?;
    if let Some(original) = original.filter(|o| Some(o) != req.uri().path_and_query()) {
        req.extensions_mut().insert(OriginalTarget(original));
    }
    Ok(encoded_slash)
}

/// The path and query the client sent: the [`OriginalTarget`] if normalization changed them.
pub fn original_target(parts: &http::request::Parts) -> &str {
    match parts.extensions.get::<OriginalTarget>() {
        Some(OriginalTarget(original)) => original.as_str(),
        None => parts.uri.path_and_query().map_or("/", PathAndQuery::as_str),
    }
}

/// Replaces the request URI's path with its canonical form, keeping the query untouched. Returns
/// whether the path carries an encoded slash (see [`Normalized::encoded_slash`]).
pub fn normalize_uri(uri: &mut Uri) -> Result<bool, BadPath> {
    let Normalized { path, encoded_slash } = normalize(uri.path())?;
    let Cow::Owned(path) = path else {
        return Ok(encoded_slash);
    };
    let mut parts = std::mem::take(uri).into_parts();
    let rebuilt = match parts.path_and_query.as_ref().and_then(PathAndQuery::query) {
        Some(query) => format!("{path}?{query}"),
        None => path,
    };
    // Every byte of the canonical path came from the parsed one or is a `%XX` escape, so this
    // only fails if that reasoning is wrong; then the request is refused, not forwarded raw.
    parts.path_and_query = Some(PathAndQuery::try_from(rebuilt).map_err(|_| BadPath::BadEscape)?);
    *uri = Uri::from_parts(parts).map_err(|_| BadPath::BadEscape)?;
    Ok(encoded_slash)
}

/// Whether `path` is already canonical, checked in one pass so that ordinary paths cost no
/// allocation: no escapes or backslashes, and no `/` followed by `/` or `.`.
fn is_canonical(path: &str) -> bool {
    let bytes = path.as_bytes();
    !bytes.iter().any(|&b| b == b'%' || b == b'\\')
        && !bytes.windows(2).any(|w| w[0] == b'/' && (w[1] == b'/' || w[1] == b'.'))
}

/// What one segment turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Kept.
    Plain,
    /// Empty (a doubled slash) or `.`: dropped.
    Dot,
    /// `..`: drops the segment before it.
    DotDot,
}

/// Facts about a segment gathered while it was written out.
struct Segment {
    encoded_slash: bool,
}

impl Segment {
    /// Classifies the canonical segment `text`. A dot segment that only appears once `;params`
    /// are dropped or an encoded slash is decoded is refused: forwarded, some upstream would
    /// resolve it.
    fn kind(&self, text: &str) -> Result<Kind, BadPath> {
        match text {
            "" | "." => return Ok(Kind::Dot),
            ".." => return Ok(Kind::DotDot),
            _ => {}
        }
        let hidden = split_encoded_slashes(text).any(|piece| {
            let name = piece.split(';').next().unwrap_or(piece);
            name == "." || name == ".."
        });
        if hidden && (self.encoded_slash || text.contains(';')) {
            return Err(BadPath::HiddenDotSegment);
        }
        Ok(Kind::Plain)
    }
}

/// The pieces of a canonical segment between its encoded slashes and backslashes.
fn split_encoded_slashes(text: &str) -> impl Iterator<Item = &str> {
    text.split("%2F").flat_map(|piece| piece.split("%5C"))
}

/// Writes the canonical spelling of one raw segment (without its `/`) onto `out`.
fn canonical_segment(raw: &str, out: &mut String) -> Result<Segment, BadPath> {
    let start = out.len();
    let bytes = raw.as_bytes();
    let mut encoded_slash = false;
    // Bytes the segment decodes to, checked as UTF-8 only when an escape is above ASCII.
    let mut decoded: Vec<u8> = Vec::new();
    let mut high_escape = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'\\' {
            out.push_str("%5C");
            encoded_slash = true;
            decoded.push(b);
            i += 1;
            continue;
        }
        if b != b'%' {
            // Copy the run up to the next escape or backslash as it is.
            let end = bytes[i..]
                .iter()
                .position(|&c| c == b'%' || c == b'\\')
                .map_or(bytes.len(), |p| i + p);
            out.push_str(&raw[i..end]);
            decoded.extend_from_slice(&bytes[i..end]);
            i = end;
            continue;
        }
        let value = escaped(bytes, i).ok_or(BadPath::BadEscape)?;
        match value {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => out.push(value as char),
            _ => {
                encoded_slash |= value == b'/' || value == b'\\';
                high_escape |= value >= 0x80;
                out.push('%');
                out.push(HEX[usize::from(value >> 4)] as char);
                out.push(HEX[usize::from(value & 0xf)] as char);
            }
        }
        decoded.push(value);
        i += 3;
    }
    if high_escape && std::str::from_utf8(&decoded).is_err() {
        return Err(BadPath::NotUtf8);
    }
    // Checked on the written text, so `%25%32%65` (which it now spells `%252e`) is caught too.
    let written = &out.as_bytes()[start..];
    let double = written.windows(3).enumerate().any(|(at, w)| {
        w == b"%25" && hex_pair(written, at + 3).is_some_and(|v| matches!(v, b'.' | b'/' | b'\\' | b'%'))
    });
    if double {
        return Err(BadPath::DoubleEncoded);
    }
    Ok(Segment { encoded_slash })
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// The byte `%XX` at `at` stands for, if `at` starts a well-formed escape.
fn escaped(bytes: &[u8], at: usize) -> Option<u8> {
    (bytes.get(at) == Some(&b'%')).then(|| hex_pair(bytes, at + 1))?
}

/// The byte the two hex digits at `at` spell, if they are hex digits.
fn hex_pair(bytes: &[u8], at: usize) -> Option<u8> {
    let hex = |b: &u8| (*b as char).to_digit(16).map(|d| d as u8);
    Some(hex(bytes.get(at)?)? << 4 | hex(bytes.get(at + 1)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(path: &str) -> Result<String, BadPath> {
        normalize(path).map(|n| n.path.into_owned())
    }

    /// The spellings upstreams are known to resolve differently, and what each becomes.
    #[test]
    fn table_of_spellings() {
        let ok = |from: &str, to: &str| assert_eq!(norm(from), Ok(to.to_string()), "{from}");
        let bad = |from: &str, why: BadPath| assert_eq!(norm(from), Err(why), "{from}");

        // Already canonical: unchanged.
        ok("/", "/");
        ok("/api/users/1", "/api/users/1");
        ok("/api/users/", "/api/users/");
        ok("/api/.well-known", "/api/.well-known");
        ok("/api/a..b/c.", "/api/a..b/c.");
        ok("/api/x;v=1/y", "/api/x;v=1/y");
        // Dot segments, RFC 3986 §5.2.4.
        ok("/api/../admin", "/admin");
        ok("/api/./users", "/api/users");
        ok("/api/a/b/../../c", "/api/c");
        ok("/api/a/..", "/api/");
        ok("/api/a/.", "/api/a/");
        ok("/api/..", "/");
        ok("/api/a/../", "/api/");
        bad("/..", BadPath::ClimbsAboveRoot);
        bad("/api/../../admin", BadPath::ClimbsAboveRoot);
        bad("/api/../..", BadPath::ClimbsAboveRoot);
        // Encoded dots, either case, alone or mixed with plain ones.
        ok("/api/%2e%2e/admin", "/admin");
        ok("/api/%2E%2E/admin", "/admin");
        ok("/api/.%2e/admin", "/admin");
        ok("/api/%2e./admin", "/admin");
        ok("/api/%2e/users", "/api/users");
        bad("/api/%2e%2e/%2E%2E/admin", BadPath::ClimbsAboveRoot);
        // Escapes of unreserved characters decoded; the rest upper-cased.
        ok("/%61pi/%7Euser", "/api/~user");
        ok("/api/a%20b/%e2%82%ac", "/api/a%20b/%E2%82%AC");
        ok("/api/%3f%23", "/api/%3F%23");
        bad("/api/%zz", BadPath::BadEscape);
        bad("/api/%2", BadPath::BadEscape);
        bad("/api/%", BadPath::BadEscape);
        bad("/api/%c0%ae%c0%ae/admin", BadPath::NotUtf8);
        bad("/api/%ff", BadPath::NotUtf8);
        // Doubled slashes merged; a trailing one kept.
        ok("//api//users", "/api/users");
        ok("/api///", "/api/");
        ok("/api//../admin", "/admin");
        // Segments with parameters.
        bad("/api/..;/admin", BadPath::HiddenDotSegment);
        bad("/api/..;x=1/admin", BadPath::HiddenDotSegment);
        bad("/api/.;/admin", BadPath::HiddenDotSegment);
        bad("/api/%2e%2e;/admin", BadPath::HiddenDotSegment);
        // Double encoding.
        bad("/api/%252e%252e/admin", BadPath::DoubleEncoded);
        bad("/api/..%252fadmin", BadPath::DoubleEncoded);
        bad("/api/%25252e", BadPath::DoubleEncoded);
        bad("/api/%25%32%65%25%32%65/admin", BadPath::DoubleEncoded);
        ok("/api/100%25", "/api/100%25");
        ok("/api/%2541", "/api/%2541");
        // Encoded slashes and backslashes: flagged, kept encoded, never hiding a dot segment.
        bad("/api/..%2fadmin", BadPath::HiddenDotSegment);
        bad("/api/..%2Fadmin", BadPath::HiddenDotSegment);
        bad("/api/..%5cadmin", BadPath::HiddenDotSegment);
        bad("/api/..\\admin", BadPath::HiddenDotSegment);
        bad("/api/a%2F..", BadPath::HiddenDotSegment);
        bad("/api/%2e%2e%2fadmin", BadPath::HiddenDotSegment);
        // Other paths.
        bad("*", BadPath::NotAbsolute);
        bad("", BadPath::NotAbsolute);
        bad(&format!("/{}", "a".repeat(MAX_PATH_LEN)), BadPath::TooLong);
        ok(
            &format!("/{}", "a".repeat(MAX_PATH_LEN - 1)),
            &format!("/{}", "a".repeat(MAX_PATH_LEN - 1)),
        );
    }

    #[test]
    fn encoded_slashes_are_flagged_and_kept_encoded() {
        let n = normalize("/api/a%2fb/c%5cd").unwrap();
        assert_eq!(n.path, "/api/a%2Fb/c%5Cd");
        assert!(n.encoded_slash);
        let n = normalize("/api/a\\b").unwrap();
        assert_eq!(n.path, "/api/a%5Cb");
        assert!(n.encoded_slash);
        assert!(!normalize("/api/a%20b").unwrap().encoded_slash);
    }

    #[test]
    fn canonical_paths_are_borrowed() {
        for path in ["/", "/api/users/1", "/api/x;v=1", "/a.b/c"] {
            assert!(matches!(normalize(path).unwrap().path, Cow::Borrowed(_)), "{path}");
        }
    }

    #[test]
    fn normalizing_twice_changes_nothing() {
        for path in ["/api/%2e%2e/x/%61", "//a//b/", "/a/b/../c/%2fd", "/a/%7e/%41"] {
            let once = norm(path).unwrap();
            assert_eq!(norm(&once).unwrap(), once, "{path}");
        }
    }

    #[test]
    fn the_uri_keeps_its_query_and_authority() {
        let mut uri: Uri = "https://app.example/api/../x/%2e?next=/../y&q=%2e".parse().unwrap();
        assert_eq!(normalize_uri(&mut uri), Ok(false));
        assert_eq!(uri.to_string(), "https://app.example/x/?next=/../y&q=%2e");
        let mut uri: Uri = "/plain?x=1".parse().unwrap();
        normalize_uri(&mut uri).unwrap();
        assert_eq!(uri, "/plain?x=1");
    }

    #[test]
    fn the_original_target_is_kept_only_when_it_changed() {
        let mut req = http::Request::get("/api/./a/%61?q=%2e").body(()).unwrap();
        normalize_request(&mut req).unwrap();
        let (parts, ()) = req.into_parts();
        assert_eq!(parts.uri, "/api/a/a?q=%2e");
        assert_eq!(original_target(&parts), "/api/./a/%61?q=%2e");
        let mut req = http::Request::get("/api/a?q=1").body(()).unwrap();
        normalize_request(&mut req).unwrap();
        assert!(
            req.extensions().get::<OriginalTarget>().is_none(),
            "no copy when nothing changed"
        );
        assert_eq!(original_target(&req.into_parts().0), "/api/a?q=1");
    }
}
