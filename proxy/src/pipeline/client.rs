//! Who the client is. The connection's peer (or the address a PROXY protocol header gave) is
//! the client, unless it is one of `--trusted-proxies`: then the client is the rightmost
//! `X-Forwarded-For` entry that is not itself trusted, and `X-Forwarded-Proto`/`-Host` are the
//! trusted hop's. Anything a client wrote in those headers is believed only as far as a chain of
//! trusted hops vouches for it, so an address a client made up never becomes "the client".
//!
//! The resolved address is what `rateLimit.per: client` counts, what the access log shows and
//! what the upstream's `X-Forwarded-For` and `X-Real-IP` carry (see [`super::request`]).

use std::io::Write as _;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use http::header::{HeaderMap, HeaderValue};
use keygate_crds::cidr::{Cidr, CidrError};

/// What is known of a connection before its first request, built once by the listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connection {
    /// The TCP peer.
    pub peer: SocketAddr,
    /// The client address a PROXY protocol header gave, if any.
    pub proxied: Option<SocketAddr>,
    /// Whether the connection is TLS.
    pub tls: bool,
}

impl Connection {
    /// The hop that spoke to Keygate: the balancer's reported client, else the TCP peer.
    fn hop(&self) -> IpAddr {
        self.proxied.unwrap_or(self.peer).ip().to_canonical()
    }
}

/// The networks whose `X-Forwarded-*` headers are believed.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    /// Trusts `networks`.
    pub fn new(networks: Vec<Cidr>) -> TrustedProxies {
        TrustedProxies(networks)
    }

    /// Parses one `--trusted-proxies` entry: a CIDR, or a bare address meaning just itself.
    pub fn parse_entry(entry: &str) -> Result<Cidr, CidrError> {
        match entry.trim().parse::<IpAddr>() {
            Ok(ip) => format!("{ip}/{}", if ip.is_ipv4() { 32 } else { 128 }).parse(),
            Err(_) => entry.trim().parse(),
        }
    }

    fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(ip))
    }
}

/// The scheme the client used to reach the edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// Cleartext.
    Http,
    /// TLS.
    Https,
}

impl Proto {
    /// As `X-Forwarded-Proto` writes it.
    pub fn header(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Proto::Http => "http",
            Proto::Https => "https",
        })
    }
}

/// The client of one request, as far as Keygate can vouch for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Client {
    /// The client's address.
    pub addr: IpAddr,
    /// The scheme the client used.
    pub proto: Proto,
    /// The host the client asked for, as a trusted hop reported it; `None`: the `Host` header.
    pub host: Option<HeaderValue>,
    /// The `X-Forwarded-For` Keygate vouches for: the client, the trusted hops, the peer.
    /// `None` when that is the client alone.
    pub chain: Option<HeaderValue>,
}

impl Client {
    /// The client's address in its text form, as `X-Forwarded-For` and `X-Real-IP` carry it.
    pub fn addr_text(&self) -> AddrText {
        AddrText::new(self.addr)
    }
}

/// An IP address in its text form, written on the stack: the header values made from it are a
/// request's only allocations for the client's address.
pub struct AddrText {
    // Room for the longest text form of any IP address (IPv6 with an embedded IPv4 is 45).
    buf: [u8; 45],
    len: usize,
}

impl AddrText {
    fn new(addr: IpAddr) -> AddrText {
        let mut text = AddrText { buf: [0; 45], len: 0 };
        match addr {
            // Nearly every client: four numbers without the formatting machinery, which took
            // more of a request's time than the rest of this header's work.
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        text.push(b".");
                    }
                    text.push(itoa::Buffer::new().format(octet).as_bytes());
                }
            }
            IpAddr::V6(_) => {
                let mut rest = &mut text.buf[..];
                write!(rest, "{addr}").expect("an IP address fits in 45 bytes");
                text.len = 45 - rest.len();
            }
        }
        text
    }

    fn push(&mut self, bytes: &[u8]) {
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    /// The address as a header value.
    pub fn header(&self) -> HeaderValue {
        HeaderValue::from_bytes(&self.buf[..self.len]).expect("an IP address is a header value")
    }
}

/// Resolves the client of a request on `conn`.
pub fn resolve(conn: &Connection, headers: &HeaderMap, trusted: &TrustedProxies) -> Client {
    let hop = conn.hop();
    let own = if conn.tls { Proto::Https } else { Proto::Http };
    let mut client = Client {
        addr: hop,
        proto: own,
        host: None,
        chain: None,
    };
    if trusted.0.is_empty() || !trusted.contains(hop) {
        return client;
    }
    client.proto = match last_value(headers, "x-forwarded-proto") {
        Some(p) if p.eq_ignore_ascii_case("https") => Proto::Https,
        Some(p) if p.eq_ignore_ascii_case("http") => Proto::Http,
        _ => own,
    };
    client.host = last_value(headers, "x-forwarded-host").and_then(|h| HeaderValue::from_str(h).ok());
    // Right to left: each trusted hop vouches for the entry to its left, up to the first
    // address no trusted hop owns. Past a malformed entry nothing is vouched for, so the client
    // is then the trusted hop that passed it on.
    let mut vouched: Vec<IpAddr> = Vec::new();
    for entry in entries(headers) {
        let Some(ip) = parse_entry(entry) else { break };
        vouched.push(ip);
        if !trusted.contains(ip) {
            break;
        }
    }
    if let Some(&addr) = vouched.last() {
        client.addr = addr;
        let mut chain = String::with_capacity(vouched.len() * 16 + 16);
        for ip in vouched.iter().rev().chain([&hop]) {
            if !chain.is_empty() {
                chain.push_str(", ");
            }
            chain.push_str(&ip.to_string());
        }
        client.chain = HeaderValue::from_str(&chain).ok();
    }
    client
}

/// The entries of every `X-Forwarded-For` field, right to left; a field that is not text is
/// one malformed entry.
fn entries(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all("x-forwarded-for")
        .iter()
        .rev()
        .flat_map(|v| v.to_str().unwrap_or("\u{0}").rsplit(','))
}

/// The last comma-separated value of the last `name` field: what the nearest hop wrote.
fn last_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let value = headers.get_all(name).iter().next_back()?.to_str().ok()?;
    Some(value.rsplit(',').next()?.trim()).filter(|v| !v.is_empty())
}

/// One `X-Forwarded-For` entry: an address, optionally with a port (`192.0.2.1:8080`,
/// `[2001:db8::1]:443`, `[2001:db8::1]`).
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    if let Some(bracketed) = entry.strip_prefix('[') {
        let (ip, rest) = bracketed.split_once(']')?;
        if !(rest.is_empty() || rest.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        return ip.parse::<Ipv6Addr>().ok().map(|ip| IpAddr::V6(ip).to_canonical());
    }
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    let (ip, port) = entry.split_once(':')?;
    is_port(port).then(|| ip.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4))?
}

fn is_port(s: &str) -> bool {
    !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit()) && s.parse::<u16>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(nets: &[&str]) -> TrustedProxies {
        TrustedProxies::new(nets.iter().map(|n| TrustedProxies::parse_entry(n).unwrap()).collect())
    }

    #[test]
    fn the_address_header_holds_any_address_in_its_text_form() {
        let longest = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        for addr in [
            "192.0.2.7",
            "0.0.0.0",
            "255.255.255.255",
            "10.100.9.1",
            "2001:db8::1",
            "::ffff:192.0.2.7",
            longest,
        ] {
            let client = Client {
                addr: addr.parse().unwrap(),
                proto: Proto::Http,
                host: None,
                chain: None,
            };
            assert_eq!(client.addr_text().header(), addr, "{addr}");
        }
    }

    fn conn(peer: &str) -> Connection {
        Connection {
            peer: SocketAddr::new(peer.parse().unwrap(), 40000),
            proxied: None,
            tls: false,
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    /// (peer, X-Forwarded-For fields, resolved client, chain sent upstream).
    #[test]
    fn chains() {
        let nets = trusted(&["10.0.0.0/8", "fd00::/8", "192.0.2.1"]);
        let table: &[(&str, &[&str], &str, Option<&str>)] = &[
            // An untrusted peer's headers are never read.
            ("203.0.113.9", &["6.6.6.6"], "203.0.113.9", None),
            // A trusted peer without the header is the client itself.
            ("10.0.0.1", &[], "10.0.0.1", None),
            (
                "10.0.0.1",
                &["203.0.113.9"],
                "203.0.113.9",
                Some("203.0.113.9, 10.0.0.1"),
            ),
            // The client's own spoofed entries to the left of its real address are dropped.
            (
                "10.0.0.1",
                &["6.6.6.6, 203.0.113.9, 10.0.0.2"],
                "203.0.113.9",
                Some("203.0.113.9, 10.0.0.2, 10.0.0.1"),
            ),
            // Several fields are one list, in order.
            (
                "10.0.0.1",
                &["6.6.6.6", "203.0.113.9", "10.0.0.2"],
                "203.0.113.9",
                Some("203.0.113.9, 10.0.0.2, 10.0.0.1"),
            ),
            // Every entry trusted: the leftmost is as far as the chain goes.
            (
                "10.0.0.1",
                &["10.9.9.9, 10.0.0.2"],
                "10.9.9.9",
                Some("10.9.9.9, 10.0.0.2, 10.0.0.1"),
            ),
            // Ports, brackets, IPv6 and IPv4-mapped addresses.
            ("10.0.0.1", &["1.2.3.4:5678"], "1.2.3.4", Some("1.2.3.4, 10.0.0.1")),
            (
                "10.0.0.1",
                &["[2001:db8::1]:80"],
                "2001:db8::1",
                Some("2001:db8::1, 10.0.0.1"),
            ),
            (
                "10.0.0.1",
                &["[2001:db8::1]"],
                "2001:db8::1",
                Some("2001:db8::1, 10.0.0.1"),
            ),
            (
                "fd00::1",
                &["2001:db8::1, fd00::2"],
                "2001:db8::1",
                Some("2001:db8::1, fd00::2, fd00::1"),
            ),
            (
                "::ffff:10.0.0.1",
                &["::ffff:203.0.113.9"],
                "203.0.113.9",
                Some("203.0.113.9, 10.0.0.1"),
            ),
            (
                "192.0.2.1",
                &["198.51.100.4"],
                "198.51.100.4",
                Some("198.51.100.4, 192.0.2.1"),
            ),
            ("192.0.2.2", &["198.51.100.4"], "192.0.2.2", None),
            // Malformed: nothing left of it is vouched for; the hop that passed it on is the client.
            ("10.0.0.1", &["203.0.113.9, garbage"], "10.0.0.1", None),
            (
                "10.0.0.1",
                &["203.0.113.9, nonsense, 10.0.0.2"],
                "10.0.0.2",
                Some("10.0.0.2, 10.0.0.1"),
            ),
            (
                "10.0.0.1",
                &["203.0.113.9,,10.0.0.2"],
                "10.0.0.2",
                Some("10.0.0.2, 10.0.0.1"),
            ),
            ("10.0.0.1", &["unknown"], "10.0.0.1", None),
            ("10.0.0.1", &["1.2.3.4:99999"], "10.0.0.1", None),
            ("10.0.0.1", &["1.2.3.4:"], "10.0.0.1", None),
            ("10.0.0.1", &["[::1]x"], "10.0.0.1", None),
            ("10.0.0.1", &["::1:80"], "::1:80", Some("::1:80, 10.0.0.1")),
            ("10.0.0.1", &["fe80::1%eth0"], "10.0.0.1", None),
            (
                "10.0.0.1",
                &[" 203.0.113.9 ,10.0.0.2 "],
                "203.0.113.9",
                Some("203.0.113.9, 10.0.0.2, 10.0.0.1"),
            ),
        ];
        for (peer, xff, client, chain) in table {
            let h = headers(&xff.iter().map(|v| ("x-forwarded-for", *v)).collect::<Vec<_>>());
            let got = resolve(&conn(peer), &h, &nets);
            assert_eq!(got.addr, client.parse::<IpAddr>().unwrap(), "{peer} {xff:?}");
            assert_eq!(
                got.chain.as_ref().map(|c| c.to_str().unwrap()),
                *chain,
                "{peer} {xff:?}"
            );
        }
    }

    #[test]
    fn non_text_field_is_malformed() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        h.append("x-forwarded-for", HeaderValue::from_bytes(b"\xff10.0.0.9").unwrap());
        let got = resolve(&conn("10.0.0.1"), &h, &trusted(&["10.0.0.0/8"]));
        assert_eq!(got.addr, "10.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn proto_and_host_only_from_a_trusted_hop() {
        let h = headers(&[
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "app.example"),
            ("x-forwarded-for", "203.0.113.9"),
        ]);
        let nets = trusted(&["10.0.0.0/8"]);
        let untrusted = resolve(&conn("203.0.113.1"), &h, &nets);
        assert_eq!((untrusted.proto, untrusted.host), (Proto::Http, None));
        let via = resolve(&conn("10.0.0.1"), &h, &nets);
        assert_eq!(via.proto, Proto::Https);
        assert_eq!(via.host.unwrap(), "app.example");
        let appended = headers(&[
            ("x-forwarded-proto", "http, https"),
            ("x-forwarded-host", "evil, app.example"),
        ]);
        let via = resolve(&conn("10.0.0.1"), &appended, &nets);
        assert_eq!(via.proto, Proto::Https, "the nearest hop's value counts");
        assert_eq!(via.host.unwrap(), "app.example");
        let odd = resolve(&conn("10.0.0.1"), &headers(&[("x-forwarded-proto", "gopher")]), &nets);
        assert_eq!(odd.proto, Proto::Http, "an unknown scheme falls back to the listener's");
        let tls = Connection {
            tls: true,
            ..conn("10.0.0.1")
        };
        assert_eq!(resolve(&tls, &HeaderMap::new(), &nets).proto, Proto::Https);
    }

    #[test]
    fn the_proxy_protocol_source_is_the_hop() {
        let nets = trusted(&["10.0.0.0/8"]);
        let h = headers(&[("x-forwarded-for", "6.6.6.6")]);
        let via_balancer = Connection {
            proxied: Some("203.0.113.9:5555".parse().unwrap()),
            ..conn("10.0.0.1")
        };
        // The balancer's client is not trusted, so its own header is not believed.
        assert_eq!(
            resolve(&via_balancer, &h, &nets).addr,
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        let no_trust = resolve(&via_balancer, &h, &TrustedProxies::default());
        assert_eq!(no_trust.addr, "203.0.113.9".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn entries_parse_strictly() {
        for good in ["1.2.3.4", "1.2.3.4:0", "[::1]:65535", "::1", "2001:db8::1"] {
            assert!(parse_entry(good).is_some(), "{good}");
        }
        for bad in [
            "",
            "1.2.3",
            "1.2.3.4:+1",
            "[1.2.3.4]",
            "[::1",
            "::1]:80",
            "host:80",
            "1.2.3.4:80:80",
        ] {
            assert!(parse_entry(bad).is_none(), "{bad}");
        }
        assert!(TrustedProxies::parse_entry("10.0.0.1").is_ok());
        assert!(TrustedProxies::parse_entry("::1").is_ok());
        assert!(TrustedProxies::parse_entry("10.0.0.1/8").is_err());
        assert!(TrustedProxies::parse_entry("bogus").is_err());
    }
}
