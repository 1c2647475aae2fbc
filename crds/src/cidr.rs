//! Address ranges written as CIDRs (`10.1.0.0/16`, `fd00::/64`): parsed once, strictly, by
//! `compile()` (which reports a bad `allowCidrs` entry with the fix) and again by the proxy, whose
//! destination guard asks [`Cidr::contains`] before it lets a connection go to a private address.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// A network: an address with every bit past the prefix zero, and the prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` lies in this network. An IPv4 network never contains an IPv6 address: the
    /// proxy judges IPv4 embedded in IPv6 by extracting it first.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                u128::from(u32::from(ip)) & mask(self.prefix, 32) == u128::from(u32::from(net))
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => u128::from(ip) & mask(self.prefix, 128) == u128::from(net),
            _ => false,
        }
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The network address.
    pub fn network(&self) -> IpAddr {
        self.network
    }
}

/// The top `prefix` bits of a `bits`-wide address set, as a `u128` (IPv4 uses the low 32 bits).
fn mask(prefix: u8, bits: u32) -> u128 {
    let width_mask = if bits == 128 { u128::MAX } else { (1u128 << bits) - 1 };
    match u32::from(prefix) {
        0 => 0,
        p if p >= bits => width_mask,
        p => width_mask & !(width_mask >> p),
    }
}

/// Why a CIDR is unusable; the message says how to write it.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum CidrError {
    /// Not `address/prefix`.
    #[error("{0:?} is not a CIDR; write an address and a prefix length, e.g. 10.1.0.0/16 or fd00::/64")]
    Syntax(String),
    /// The prefix is longer than the address.
    #[error("{0:?} has a prefix longer than the address ({1} bits at most)")]
    Prefix(String, u8),
    /// Bits past the prefix are set, so what was meant is unclear.
    #[error("{given:?} has address bits set past the prefix; write {meant}")]
    HostBits {
        /// As written.
        given: String,
        /// The network it most likely means.
        meant: Cidr,
    },
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let syntax = || CidrError::Syntax(s.to_string());
        let (addr, prefix) = s.split_once('/').ok_or_else(syntax)?;
        let addr: IpAddr = addr.parse().map_err(|_| syntax())?;
        if prefix.is_empty() || prefix.len() > 3 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(syntax());
        }
        let prefix: u8 = prefix.parse().map_err(|_| syntax())?;
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > bits {
            return Err(CidrError::Prefix(s.to_string(), bits));
        }
        let network = match addr {
            IpAddr::V4(a) => IpAddr::V4(((u128::from(u32::from(a)) & mask(prefix, 32)) as u32).into()),
            IpAddr::V6(a) => IpAddr::V6((u128::from(a) & mask(prefix, 128)).into()),
        };
        let cidr = Cidr { network, prefix };
        if network != addr {
            return Err(CidrError::HostBits {
                given: s.to_string(),
                meant: cidr,
            });
        }
        Ok(cidr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn contains_by_prefix_and_family() {
        let net = cidr("10.1.0.0/16");
        assert!(net.contains("10.1.255.7".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(!net.contains("::ffff:10.1.0.1".parse().unwrap()), "families never mix");
        assert!(cidr("0.0.0.0/0").contains("8.8.8.8".parse().unwrap()));
        assert!(cidr("127.0.0.1/32").contains("127.0.0.1".parse().unwrap()));
        assert!(!cidr("127.0.0.1/32").contains("127.0.0.2".parse().unwrap()));
        assert!(cidr("fd00::/8").contains("fdab::1".parse().unwrap()));
        assert!(!cidr("fd00::/8").contains("fe80::1".parse().unwrap()));
        assert!(cidr("::1/128").contains("::1".parse().unwrap()));
        assert_eq!(net.to_string(), "10.1.0.0/16");
    }

    #[test]
    fn refuses_what_is_not_a_clean_network() {
        assert!(matches!("10.1.0.0".parse::<Cidr>(), Err(CidrError::Syntax(_))));
        assert!(matches!("10.1.0.0/".parse::<Cidr>(), Err(CidrError::Syntax(_))));
        assert!(matches!("10.1.0.0/+8".parse::<Cidr>(), Err(CidrError::Syntax(_))));
        assert!(matches!("example.com/8".parse::<Cidr>(), Err(CidrError::Syntax(_))));
        assert!(matches!("10.0.0.0/33".parse::<Cidr>(), Err(CidrError::Prefix(_, 32))));
        let err = "10.1.2.3/16".parse::<Cidr>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "\"10.1.2.3/16\" has address bits set past the prefix; write 10.1.0.0/16"
        );
    }
}
