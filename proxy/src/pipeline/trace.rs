//! W3C Trace Context (`traceparent`): a valid header passes upstream untouched; an absent or
//! malformed one is replaced by a new trace (version 00, random ids, sampled), so every request
//! reaching an upstream carries a trace id, and the access log line names the same id.

use std::fmt;

use http::HeaderValue;
use http::header::{Entry, HeaderMap, HeaderName};

/// `traceparent` (W3C Trace Context §3.2).
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `tracestate`: vendor data that belongs to the incoming trace only.
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// A trace id, shown as 32 lower-case hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// The trace id of a valid `traceparent` value, or `None` if it is not one.
pub fn parse(value: &[u8]) -> Option<TraceId> {
    // version "-" trace-id "-" parent-id "-" flags: 2 + 1 + 32 + 1 + 16 + 1 + 2 = 55 bytes.
    let field = |range: std::ops::Range<usize>| -> Option<&[u8]> {
        let f = value.get(range)?;
        f.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')).then_some(f)
    };
    let version = field(0..2)?;
    if version == b"ff" || value.get(2) != Some(&b'-') || value.get(35) != Some(&b'-') || value.get(52) != Some(&b'-') {
        return None;
    }
    let trace = field(3..35)?;
    let parent = field(36..52)?;
    field(53..55)?;
    // Version 00 is exactly 55 bytes; later versions may append fields after a dash.
    match (version, value.len()) {
        (b"00", 55) => {}
        (b"00", _) => return None,
        (_, 55) => {}
        (_, _) if value[55] == b'-' => {}
        _ => return None,
    }
    if trace.iter().all(|&b| b == b'0') || parent.iter().all(|&b| b == b'0') {
        return None;
    }
    let mut id = [0u8; 16];
    hex::decode_to_slice(trace, &mut id).ok()?;
    Some(TraceId(id))
}

/// Makes sure `headers` carry a valid `traceparent`, creating one (and dropping a `tracestate`
/// that belonged to the malformed one) when they do not. Returns the request's trace id.
pub fn ensure(headers: &mut HeaderMap) -> TraceId {
    // One lookup both reads the field and puts the new one in its place.
    let id = match headers.entry(TRACEPARENT) {
        Entry::Occupied(mut found) => {
            let mut values = found.iter();
            // Two traceparents are as malformed as one bad one (§3.2: the header is single-valued).
            if let (Some(one), None) = (values.next(), values.next())
                && let Some(id) = parse(one.as_bytes())
            {
                return id;
            }
            let (id, value) = generate();
            found.insert(value);
            id
        }
        Entry::Vacant(absent) => {
            let (id, value) = generate();
            absent.insert(value);
            id
        }
    };
    headers.remove(TRACESTATE);
    id
}

/// A new sampled trace: version 00, random 16-byte trace id and 8-byte parent id.
fn generate() -> (TraceId, HeaderValue) {
    let mut bytes = [0u8; 24];
    loop {
        random_bytes(&mut bytes);
        if bytes[..16].iter().any(|&b| b != 0) && bytes[16..].iter().any(|&b| b != 0) {
            break;
        }
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&bytes[..16]);
    // "00-" 32 hex "-" 16 hex "-01", written in place: no allocation but the header value's own.
    let mut value = *b"00-00000000000000000000000000000000-0000000000000000-01";
    hex::encode_to_slice(&bytes[..16], &mut value[3..35]).expect("32 hex digits fit");
    hex::encode_to_slice(&bytes[16..], &mut value[36..52]).expect("16 hex digits fit");
    (
        TraceId(id),
        HeaderValue::from_bytes(&value).expect("hex is a valid header value"),
    )
}

/// Trace ids drawn from the system's randomness, a batch per `getrandom` call: one call per
/// request was a system call on every request that carried no trace.
fn random_bytes(out: &mut [u8; 24]) {
    use ring::rand::SecureRandom;
    const BATCH: usize = 24 * 64;
    thread_local! {
        static POOL: std::cell::RefCell<([u8; BATCH], usize)> = const { std::cell::RefCell::new(([0; BATCH], BATCH)) };
    }
    POOL.with_borrow_mut(|(pool, used)| {
        if *used == BATCH {
            if ring::rand::SystemRandom::new().fill(pool).is_err() {
                // No system randomness is not a reason to refuse a request; a trace id only has
                // to be unlikely to collide, so fall back to the clock.
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos());
                out[..16].copy_from_slice(&nanos.to_le_bytes());
                out[16..].copy_from_slice(&(nanos as u64 | 1).to_be_bytes());
                return;
            }
            *used = 0;
        }
        out.copy_from_slice(&pool[*used..*used + 24]);
        *used += 24;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn valid_headers_per_the_spec() {
        assert_eq!(
            parse(VALID.as_bytes()).unwrap().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        // Not sampled is still valid; flags are not ours to judge.
        assert!(parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").is_some());
        // A later version may be longer, its extra fields after a dash.
        assert!(parse(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").is_some());
        assert!(parse(b"cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds").is_some());
    }

    #[test]
    fn invalid_headers_per_the_spec() {
        for bad in [
            "",
            "00",
            // all-zero trace id, all-zero parent id
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // upper-case hex anywhere
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A",
            // version ff is forbidden; version 00 has no extra fields
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01extra",
            // wrong lengths, separators, characters
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(parse(bad.as_bytes()).is_none(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_valid_header_passes_with_its_tracestate() {
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_static(VALID));
        h.insert(TRACESTATE, HeaderValue::from_static("congo=t61rcWkgMzE"));
        assert_eq!(ensure(&mut h).to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(h[TRACEPARENT], VALID);
        assert_eq!(h[TRACESTATE], "congo=t61rcWkgMzE");
    }

    #[test]
    fn absent_malformed_or_repeated_headers_get_a_new_trace() {
        let repeated = {
            let mut h = HeaderMap::new();
            h.append(TRACEPARENT, HeaderValue::from_static(VALID));
            h.append(TRACEPARENT, HeaderValue::from_static(VALID));
            h
        };
        let malformed = {
            let mut h = HeaderMap::new();
            h.insert(TRACEPARENT, HeaderValue::from_static("ff-zz"));
            h.insert(TRACESTATE, HeaderValue::from_static("congo=t61rcWkgMzE"));
            h
        };
        let mut seen = std::collections::HashSet::new();
        for mut h in [HeaderMap::new(), repeated, malformed] {
            let id = ensure(&mut h);
            let values: Vec<_> = h.get_all(TRACEPARENT).iter().collect();
            assert_eq!(values.len(), 1);
            let value = values[0].to_str().unwrap();
            assert_eq!(parse(value.as_bytes()), Some(id), "{value}");
            assert!(value.starts_with("00-") && value.ends_with("-01"), "{value}");
            assert!(h.get(TRACESTATE).is_none(), "tracestate belongs to the dropped trace");
            assert!(seen.insert(id), "trace ids are random");
        }
    }
}
