//! Which addresses a client-named destination may connect to. The resolver of an allowlist's
//! upstream client asks [`Guard::check`] about every address a name resolves to, before any
//! connection is made: the proxy's own listeners are refused always; unspecified, multicast and
//! broadcast addresses always; private, loopback, link-local and other special ranges unless the
//! allowlist's `allowCidrs` names them; IPv4 embedded in IPv6 (mapped, NAT64, 6to4, Teredo) is
//! judged by the IPv4 address inside.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::LazyLock;

use keygate_crds::cidr::Cidr;

/// What an allowlist's client checks each resolved address against.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Guard {
    /// Special ranges the allowlist opens (`allowCidrs`).
    pub allow: Vec<Cidr>,
    /// Ports the allowlist allows: a listener of the proxy on one of them is its own address.
    pub ports: Vec<u16>,
}

/// Rule name of the proxy's own listeners, in refusals and logs.
pub const OWN_LISTENER: &str = "the proxy's own listener";

/// Special-purpose ranges (RFC 6890 and friends) a public destination never resolves to.
static SPECIAL: LazyLock<Vec<(Cidr, &'static str)>> = LazyLock::new(|| {
    [
        ("0.0.0.0/8", "this-network (0.0.0.0/8)"),
        ("10.0.0.0/8", "private (10.0.0.0/8)"),
        ("100.64.0.0/10", "shared address space (100.64.0.0/10)"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local (cloud metadata)"),
        ("172.16.0.0/12", "private (172.16.0.0/12)"),
        ("192.0.0.0/24", "IETF protocol assignments (192.0.0.0/24)"),
        ("192.0.2.0/24", "documentation (192.0.2.0/24)"),
        ("192.168.0.0/16", "private (192.168.0.0/16)"),
        ("198.18.0.0/15", "benchmarking (198.18.0.0/15)"),
        ("198.51.100.0/24", "documentation (198.51.100.0/24)"),
        ("203.0.113.0/24", "documentation (203.0.113.0/24)"),
        ("240.0.0.0/4", "reserved (240.0.0.0/4)"),
        ("::1/128", "loopback"),
        ("100::/64", "discard-only (100::/64)"),
        ("2001:db8::/32", "documentation (2001:db8::/32)"),
        ("fc00::/7", "unique local (fc00::/7)"),
        ("fe80::/10", "link-local (fe80::/10)"),
        ("fec0::/10", "site-local (fec0::/10)"),
    ]
    .into_iter()
    .map(|(c, name)| (c.parse().expect("a valid built-in CIDR"), name))
    .collect()
});

impl Guard {
    /// `Ok` if a connection to `ip` (on one of the allowed ports) may be made; otherwise the
    /// rule that refuses it. `listeners` are the proxy's own listening addresses.
    pub fn check(&self, ip: IpAddr, listeners: &[SocketAddr]) -> Result<(), &'static str> {
        if self.is_own(ip, listeners) {
            return Err(OWN_LISTENER);
        }
        self.judge(ip)
    }

    fn judge(&self, ip: IpAddr) -> Result<(), &'static str> {
        if let Some(rule) = never(ip) {
            return Err(rule);
        }
        if self.allow.iter().any(|c| c.contains(ip)) {
            return Ok(());
        }
        if let Some((_, rule)) = SPECIAL.iter().find(|(c, _)| c.contains(ip)) {
            return Err(rule);
        }
        if let IpAddr::V6(v6) = ip {
            for v4 in embedded(v6) {
                self.judge(IpAddr::V4(v4))?;
            }
        }
        Ok(())
    }

    /// Whether `ip` reaches one of the proxy's listeners on a port this allowlist allows. A
    /// listener on an unspecified address answers on every local address; those are the
    /// non-public ones (no enumeration of interfaces needed), so any non-public address counts,
    /// whatever `allowCidrs` says.
    fn is_own(&self, ip: IpAddr, listeners: &[SocketAddr]) -> bool {
        let forms: Vec<IpAddr> = match ip {
            IpAddr::V6(v6) => std::iter::once(ip)
                .chain(embedded(v6).into_iter().map(IpAddr::V4))
                .collect(),
            IpAddr::V4(_) => vec![ip],
        };
        let public = || Guard::default().judge(ip).is_ok();
        listeners
            .iter()
            .filter(|l| self.ports.contains(&l.port()))
            .any(|l| forms.contains(&l.ip()) || (l.ip().is_unspecified() && !public()))
    }
}

/// Addresses no allowlist can open: nothing listens there for a TCP client.
fn never(ip: IpAddr) -> Option<&'static str> {
    match ip {
        _ if ip.is_unspecified() => Some("unspecified"),
        _ if ip.is_multicast() => Some("multicast"),
        IpAddr::V4(v4) if v4.is_broadcast() => Some("broadcast"),
        _ => None,
    }
}

/// The IPv4 addresses an IPv6 address carries, by the transition mechanism its prefix names.
fn embedded(ip: Ipv6Addr) -> Vec<Ipv4Addr> {
    let bits = u128::from(ip);
    let low32 = Ipv4Addr::from(bits as u32);
    let seg = ip.segments();
    match seg {
        // ::ffff:a.b.c.d (mapped) and ::a.b.c.d (the deprecated compatible form).
        [0, 0, 0, 0, 0, 0xffff, _, _] | [0, 0, 0, 0, 0, 0, _, _] => vec![low32],
        // NAT64, well-known prefix (64:ff9b::/96) and local-use (64:ff9b:1::/48).
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] | [0x64, 0xff9b, 1, ..] => vec![low32],
        // 6to4: 2002:AABB:CCDD::/48.
        [0x2002, ..] => vec![Ipv4Addr::from((bits >> 80) as u32)],
        // Teredo: 2001:0:SERVER:SERVER:flags:port:~CLIENT:~CLIENT; both ends are judged.
        [0x2001, 0, ..] => vec![Ipv4Addr::from((bits >> 64) as u32), Ipv4Addr::from(!(bits as u32))],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(allow: &[&str]) -> Guard {
        Guard {
            allow: allow.iter().map(|c| c.parse().unwrap()).collect(),
            ports: vec![443, 8443],
        }
    }

    fn verdict(g: &Guard, ip: &str, listeners: &[SocketAddr]) -> Result<(), &'static str> {
        g.check(ip.parse().unwrap(), listeners)
    }

    #[test]
    fn special_ranges_are_refused_and_public_addresses_pass() {
        let g = guard(&[]);
        for ip in [
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "10.255.255.255",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "127.8.9.10",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "240.0.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "239.1.2.3",
            "::",
            "::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
            "ff02::1",
            "ff0e::1",
            // IPv4 inside IPv6, judged by what is inside.
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "64:ff9b::7f00:1",
            "64:ff9b:1::a9fe:a9fe",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
            "2001:0:a00:1::",
            "2001:0:808:808:0:0:80ff:fffe",
        ] {
            assert!(verdict(&g, ip, &[]).is_err(), "{ip} must be refused");
        }
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "198.20.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert_eq!(verdict(&g, ip, &[]), Ok(()), "{ip} is public");
        }
        assert_eq!(verdict(&g, "169.254.169.254", &[]), Err("link-local (cloud metadata)"));
        assert_eq!(verdict(&g, "::ffff:10.0.0.1", &[]), Err("private (10.0.0.0/8)"));
    }

    #[test]
    fn allow_cidrs_open_their_range_only() {
        let g = guard(&["10.1.0.0/16", "127.0.0.0/8"]);
        assert_eq!(verdict(&g, "10.1.2.3", &[]), Ok(()));
        assert_eq!(
            verdict(&g, "::ffff:10.1.2.3", &[]),
            Ok(()),
            "the mapped form is the same host"
        );
        assert_eq!(verdict(&g, "127.0.0.1", &[]), Ok(()));
        assert!(verdict(&g, "10.2.0.1", &[]).is_err());
        assert!(verdict(&g, "169.254.169.254", &[]).is_err());
        assert!(
            verdict(&g, "::1", &[]).is_err(),
            "IPv6 loopback is not in an IPv4 range"
        );
        let wide = guard(&["0.0.0.0/1"]);
        assert_eq!(verdict(&wide, "0.0.0.0", &[]), Err("unspecified"), "never opened");
        assert_eq!(verdict(&guard(&["224.0.0.0/4"]), "224.0.0.1", &[]), Err("multicast"));
    }

    #[test]
    fn own_listeners_are_refused_even_when_allowed() {
        let g = guard(&["127.0.0.0/8", "10.0.0.0/8"]);
        let own: Vec<SocketAddr> = vec!["127.0.0.1:8443".parse().unwrap()];
        assert_eq!(verdict(&g, "127.0.0.1", &own), Err(OWN_LISTENER));
        assert_eq!(verdict(&g, "::ffff:127.0.0.1", &own), Err(OWN_LISTENER));
        assert_eq!(
            verdict(&g, "127.0.0.2", &own),
            Ok(()),
            "another loopback address is another socket"
        );
        let other_port: Vec<SocketAddr> = vec!["127.0.0.1:9901".parse().unwrap()];
        assert_eq!(verdict(&g, "127.0.0.1", &other_port), Ok(()), "not on an allowed port");
        let any: Vec<SocketAddr> = vec!["0.0.0.0:443".parse().unwrap()];
        assert_eq!(verdict(&g, "127.0.0.5", &any), Err(OWN_LISTENER));
        assert_eq!(
            verdict(&g, "10.3.4.5", &any),
            Err(OWN_LISTENER),
            "maybe the pod's own address"
        );
        assert_eq!(verdict(&g, "8.8.8.8", &any), Ok(()));
    }
}
