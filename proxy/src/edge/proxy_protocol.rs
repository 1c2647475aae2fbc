//! The PROXY protocol header a network load balancer puts before the client's bytes
//! (haproxy.org's `proxy-protocol.txt`, versions 1 and 2), parsed from a buffer so the listener
//! can read as much as arrives and hand what follows the header on untouched.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
const V1_PREFIX: &[u8; 6] = b"PROXY ";
/// The longest v1 line the specification allows, CRLF included.
const V1_MAX: usize = 107;
/// Address block plus TLVs: balancers send a few dozen bytes of TLVs; more is not a balancer.
const V2_MAX_BODY: usize = 2048;

/// A parsed header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The client the balancer connected for; `None` for `LOCAL`, `UNKNOWN` and address families
    /// other than TCP over IPv4 or IPv6 (the balancer's own health checks and the like).
    pub source: Option<SocketAddr>,
    /// Bytes the header took; what follows is the client's.
    pub len: usize,
}

/// Why a connection's first bytes are not a PROXY header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadHeader {
    /// Neither signature.
    #[error("the connection did not start with a PROXY protocol header")]
    NotProxy,
    /// Longer than any valid header.
    #[error("PROXY protocol header too long")]
    TooLong,
    /// Started like one, then broke the grammar.
    #[error("malformed PROXY protocol v{0} header")]
    Malformed(u8),
}

/// Parses the header at the start of `buf`: `Ok(None)` while more bytes are needed.
pub fn parse(buf: &[u8]) -> Result<Option<Header>, BadHeader> {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] == V2_SIGNATURE[..n] {
        return parse_v2(buf);
    }
    let n = buf.len().min(V1_PREFIX.len());
    if buf[..n] == V1_PREFIX[..n] {
        return parse_v1(buf);
    }
    Err(BadHeader::NotProxy)
}

fn parse_v1(buf: &[u8]) -> Result<Option<Header>, BadHeader> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err(BadHeader::TooLong)
        } else {
            Ok(None)
        };
    };
    let bad = BadHeader::Malformed(1);
    let line = std::str::from_utf8(&buf[..end]).map_err(|_| bad)?;
    let fields: Vec<&str> = line.split(' ').collect();
    let source = match fields.as_slice() {
        ["PROXY", "UNKNOWN", ..] => None,
        ["PROXY", family @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let ip = |s: &str| -> Result<IpAddr, BadHeader> {
                match *family {
                    "TCP4" => s.parse::<Ipv4Addr>().map(IpAddr::V4),
                    _ => s.parse::<Ipv6Addr>().map(IpAddr::V6),
                }
                .map_err(|_| bad)
            };
            let (src, _) = (ip(src)?, ip(dst)?);
            let (sport, _) = (port(sport).ok_or(bad)?, port(dport).ok_or(bad)?);
            Some(SocketAddr::new(src, sport))
        }
        _ => return Err(bad),
    };
    Ok(Some(Header { source, len: end + 2 }))
}

/// A decimal port as v1 writes it: digits only, no sign, no leading zero.
fn port(s: &str) -> Option<u16> {
    let plain = !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit());
    let canonical = s == "0" || !s.starts_with('0');
    (plain && canonical).then(|| s.parse().ok()).flatten()
}

fn parse_v2(buf: &[u8]) -> Result<Option<Header>, BadHeader> {
    let Some(fixed) = buf.get(..16) else {
        return Ok(None);
    };
    let bad = BadHeader::Malformed(2);
    let (version, command, family) = (fixed[12] >> 4, fixed[12] & 0x0f, fixed[13]);
    let body_len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if version != 2 || command > 1 {
        return Err(bad);
    }
    if body_len > V2_MAX_BODY {
        return Err(BadHeader::TooLong);
    }
    let Some(body) = buf.get(16..16 + body_len) else {
        return Ok(None);
    };
    let len = 16 + body_len;
    // LOCAL: the balancer speaking for itself; the connection's own address is the truth.
    if command == 0 {
        return Ok(Some(Header { source: None, len }));
    }
    let source = match family {
        // TCP over IPv4: source, destination (4 bytes each), source port, destination port.
        0x11 => {
            let a = body.get(..12).ok_or(bad)?;
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            Some(SocketAddr::new(ip.into(), u16::from_be_bytes([a[8], a[9]])))
        }
        // TCP over IPv6: 16-byte addresses.
        0x21 => {
            let a = body.get(..36).ok_or(bad)?;
            let ip: [u8; 16] = a[..16].try_into().expect("16 bytes");
            Some(SocketAddr::new(
                Ipv6Addr::from(ip).into(),
                u16::from_be_bytes([a[32], a[33]]),
            ))
        }
        // UNSPEC, UDP, UNIX: nothing a TCP client address can be taken from.
        _ => None,
    };
    Ok(Some(Header { source, len }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut b = V2_SIGNATURE.to_vec();
        b.push(0x20 | command);
        b.push(family);
        b.extend_from_slice(&(body.len() as u16).to_be_bytes());
        b.extend_from_slice(body);
        b
    }

    fn source(buf: &[u8]) -> Option<SocketAddr> {
        parse(buf).unwrap().unwrap().source
    }

    #[test]
    fn v1_lines() {
        let line = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 443\r\nGET / HTTP/1.1\r\n";
        let h = parse(line).unwrap().unwrap();
        assert_eq!(h.source, Some("203.0.113.7:51234".parse().unwrap()));
        assert_eq!(&line[h.len..h.len + 3], b"GET");
        assert_eq!(
            source(b"PROXY TCP6 2001:db8::7 2001:db8::1 1 443\r\n"),
            Some("[2001:db8::7]:1".parse().unwrap())
        );
        assert_eq!(source(b"PROXY UNKNOWN\r\n"), None);
        assert_eq!(source(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"), None);
        for partial in [
            &b"PRO"[..],
            b"PROXY TCP4 1.2.3.4",
            b"",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r",
        ] {
            assert_eq!(parse(partial), Ok(None), "{partial:?}");
        }
    }

    #[test]
    fn v1_refusals() {
        for bad in [
            &b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n"[..],
            b"PROXY TCP4 ::1 ::1 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
        ] {
            assert_eq!(
                parse(bad),
                Err(BadHeader::Malformed(1)),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            parse(&[b'P', b'R', b'O', b'X', b'Y', b' ', b'x'].repeat(20)),
            Err(BadHeader::TooLong)
        );
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(BadHeader::NotProxy));
        assert_eq!(parse(b"\x16\x03\x01\x02\x00"), Err(BadHeader::NotProxy));
    }

    #[test]
    fn v2_headers() {
        let mut tcp4 = vec![203, 0, 113, 7, 10, 0, 0, 1];
        tcp4.extend_from_slice(&51234u16.to_be_bytes());
        tcp4.extend_from_slice(&443u16.to_be_bytes());
        let mut with_tlv = tcp4.clone();
        with_tlv.extend_from_slice(&[0x04, 0x00, 0x02, b'h', b'i']);
        let buf = v2(1, 0x11, &with_tlv);
        let h = parse(&buf).unwrap().unwrap();
        assert_eq!(h.source, Some("203.0.113.7:51234".parse().unwrap()));
        assert_eq!(h.len, buf.len());

        let mut tcp6 = [0u8; 36];
        tcp6[..16].copy_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
        tcp6[32..34].copy_from_slice(&8080u16.to_be_bytes());
        assert_eq!(source(&v2(1, 0x21, &tcp6)), Some("[2001:db8::7]:8080".parse().unwrap()));
        assert_eq!(source(&v2(0, 0x00, &[])), None, "LOCAL");
        assert_eq!(source(&v2(0, 0x11, &tcp4)), None, "LOCAL ignores any address");
        assert_eq!(source(&v2(1, 0x31, &[0; 216])), None, "UNIX");

        for cut in [5, 12, 15, 17, buf.len() - 1] {
            assert_eq!(parse(&buf[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn v2_refusals() {
        let mut wrong_version = v2(1, 0x11, &[0; 12]);
        wrong_version[12] = 0x11;
        assert_eq!(parse(&wrong_version), Err(BadHeader::Malformed(2)));
        assert_eq!(
            parse(&v2(2, 0x11, &[0; 12])),
            Err(BadHeader::Malformed(2)),
            "unknown command"
        );
        assert_eq!(
            parse(&v2(1, 0x11, &[0; 8])),
            Err(BadHeader::Malformed(2)),
            "short TCP4 block"
        );
        assert_eq!(
            parse(&v2(1, 0x21, &[0; 12])),
            Err(BadHeader::Malformed(2)),
            "short TCP6 block"
        );
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(parse(&huge), Err(BadHeader::TooLong));
    }
}
