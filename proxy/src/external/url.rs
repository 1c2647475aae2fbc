//! The destination URL a client names, read strictly: one absolute `http(s)://host[:port][/path]`
//! with a DNS host name, and nothing a lenient parser would "repair" (backslashes, userinfo,
//! percent-encoded or numeric hosts, fragments). What is odd is refused, not normalised, so
//! the host that is checked against the allowlist is the host that is connected to. Then
//! [`Rules::admit`] holds the parsed URL against the allowlist's schemes, hosts and ports.

use std::collections::HashSet;

use keygate_crds::resources::allowlist::{ExternalAllowlistSpec, Scheme};

/// Longest destination URL accepted; a base URL has no business being longer.
const MAX_LEN: usize = 2048;

/// A destination URL that passed [`parse`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Named<'a> {
    /// The scheme.
    pub scheme: Scheme,
    /// Lower case, no trailing dot, a DNS name (never an IP address).
    pub host: String,
    /// The port, explicit or the scheme's default.
    pub port: u16,
    /// Whether the URL spelled the port out.
    pub explicit_port: bool,
    /// The base path, as sent; may be empty.
    pub path: &'a str,
}

/// Why a destination is refused: [`Refusal::Invalid`] for a malformed URL (400),
/// [`Refusal::NotAllowed`] for a well-formed one the allowlist does not admit (403). The text is
/// the rule, fit for the client's error message and the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not a URL Keygate accepts.
    Invalid(&'static str),
    /// A URL the allowlist does not admit.
    NotAllowed(&'static str),
}

/// Reads a destination URL. See the module docs for what is refused.
pub fn parse(raw: &str) -> Result<Named<'_>, Refusal> {
    use Refusal::{Invalid, NotAllowed};
    if raw.len() > MAX_LEN {
        return Err(Invalid("longer than 2048 characters"));
    }
    if !raw.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Invalid("contains spaces, control or non-ASCII characters"));
    }
    if raw.contains('\\') {
        return Err(Invalid("contains a backslash"));
    }
    if raw.contains('#') {
        return Err(Invalid("has a fragment (#); send the base URL only"));
    }
    let Some((scheme, rest)) = raw.split_once("://") else {
        return Err(Invalid("not an absolute URL; send e.g. https://api.example.com/v1"));
    };
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "https" => Scheme::Https,
        "http" => Scheme::Http,
        s if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)) => {
            return Err(NotAllowed("only http and https destinations are served"));
        }
        _ => return Err(Invalid("not an absolute URL; send e.g. https://api.example.com/v1")),
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if path.contains('?') {
        return Err(Invalid(
            "has a query; send the base URL only and the query on the request",
        ));
    }
    if authority.is_empty() {
        return Err(Invalid("has no host"));
    }
    if authority.contains('@') {
        return Err(Invalid(
            "carries userinfo (user@host); credentials never travel in the URL",
        ));
    }
    if authority.contains('%') {
        return Err(Invalid("has a percent-encoded host"));
    }
    if authority.starts_with('[') {
        return Err(NotAllowed("the host is an IP address; name a host"));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((_, p)) if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) => {
            return Err(Invalid("the port must be a number from 1 to 65535"));
        }
        Some((host, p)) => match p.parse::<u16>() {
            Ok(port) if port > 0 => (host, Some(port)),
            _ => return Err(Invalid("the port must be a number from 1 to 65535")),
        },
        None => (authority, None),
    };
    if host.contains(':') {
        return Err(Invalid(
            "the host has a colon; IPv6 addresses are not served and a port comes once",
        ));
    }
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    if host.is_empty() {
        return Err(Invalid("has no host"));
    }
    if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err(Invalid("the host has characters a DNS name cannot have"));
    }
    if host.len() > 253 {
        return Err(Invalid("the host is longer than a DNS name can be"));
    }
    let labels: Vec<&str> = host.split('.').collect();
    if labels
        .iter()
        .any(|l| l.is_empty() || l.len() > 63 || l.starts_with('-') || l.ends_with('-'))
    {
        return Err(Invalid("the host is not a well-formed DNS name"));
    }
    // A name whose last label is a number is read as an IPv4 address by resolvers and browsers
    // alike (127.1, 0x7f.1, 2130706433, 0177.0.0.1); no top-level domain is numeric.
    let last = labels[labels.len() - 1];
    let hex = last
        .strip_prefix("0x")
        .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
    if hex || last.bytes().all(|b| b.is_ascii_digit()) {
        return Err(NotAllowed("the host is an IP address; name a host"));
    }
    Ok(Named {
        scheme,
        port: port.unwrap_or(match scheme {
            Scheme::Https => 443,
            Scheme::Http => 80,
        }),
        explicit_port: port.is_some(),
        host,
        path,
    })
}

/// An allowlist's schemes, hosts and ports, ready for look-ups.
#[derive(Debug)]
pub struct Rules {
    schemes: Vec<Scheme>,
    exact: HashSet<String>,
    /// `*.example.com` stored as `.example.com`.
    suffixes: Vec<String>,
    ports: Vec<u16>,
}

impl Rules {
    /// From a compiled allowlist. Ports outside 1..=65535 (refused by CEL) are dropped.
    pub fn new(spec: &ExternalAllowlistSpec) -> Rules {
        let mut exact = HashSet::new();
        let mut suffixes = Vec::new();
        for h in &spec.hosts {
            let h = h.trim_end_matches('.').to_ascii_lowercase();
            match h.strip_prefix('*') {
                Some(suffix) => suffixes.push(suffix.to_string()),
                None => {
                    exact.insert(h);
                }
            }
        }
        Rules {
            schemes: spec.schemes.clone(),
            exact,
            suffixes,
            ports: spec.ports.iter().filter_map(|p| u16::try_from(*p).ok()).collect(),
        }
    }

    /// The allowed ports.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// Whether the allowlist admits `named`; the refusal names the rule that did not.
    pub fn admit(&self, named: &Named<'_>) -> Result<(), Refusal> {
        if !self.schemes.contains(&named.scheme) {
            return Err(Refusal::NotAllowed(
                "the scheme is not allowed (https only, unless the allowlist lists http)",
            ));
        }
        let host = named.host.as_str();
        // `*.example.com` needs at least one label before `.example.com`; labels are never
        // empty after `parse`, so a longer name ending in the suffix has one.
        let matched = self.exact.contains(host)
            || self
                .suffixes
                .iter()
                .any(|s| host.len() > s.len() && host.ends_with(s.as_str()));
        if !matched {
            return Err(Refusal::NotAllowed("the host is not in the allowlist"));
        }
        if !self.ports.contains(&named.port) {
            return Err(Refusal::NotAllowed("the port is not allowed"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        let spec: ExternalAllowlistSpec = serde_json::from_value(serde_json::json!({
            "hosts": ["api.example.com", "*.example.com", "*.partner.io", "plain.example.net"],
            "ports": [443, 8443, 80],
            "schemes": ["https", "http"],
        }))
        .unwrap();
        Rules::new(&spec)
    }

    fn https_only() -> Rules {
        let spec: ExternalAllowlistSpec =
            serde_json::from_value(serde_json::json!({"hosts": ["api.example.com"]})).unwrap();
        Rules::new(&spec)
    }

    fn check(rules: &Rules, raw: &str) -> Result<(), Refusal> {
        rules.admit(&parse(raw)?)
    }

    const INVALID: &str = "invalid";
    const NOT_ALLOWED: &str = "not allowed";

    /// Destinations an attacker would try, each with the verdict it must get.
    const HOSTILE: &[(&str, &str)] = &[
        // IPv4 literals in every spelling resolvers accept.
        ("https://127.0.0.1/", NOT_ALLOWED),
        ("https://127.0.0.1:443/", NOT_ALLOWED),
        ("https://169.254.169.254/latest/meta-data", NOT_ALLOWED),
        ("https://2130706433/", NOT_ALLOWED),
        ("https://0177.0.0.1/", NOT_ALLOWED),
        ("https://0x7f.0.0.1/", NOT_ALLOWED),
        ("https://0x7f000001/", NOT_ALLOWED),
        ("https://0X7F000001/", NOT_ALLOWED),
        ("https://127.1/", NOT_ALLOWED),
        ("https://127.0.1/", NOT_ALLOWED),
        ("https://10.0.0.1/", NOT_ALLOWED),
        ("https://0/", NOT_ALLOWED),
        ("https://0x/", NOT_ALLOWED),
        ("https://api.example.com.127.0.0.1/", NOT_ALLOWED),
        ("https://127.0.0.1./", NOT_ALLOWED),
        ("https://017700000001/", NOT_ALLOWED),
        // IPv6 literals, mapped and embedded IPv4.
        ("https://[::1]/", NOT_ALLOWED),
        ("https://[::ffff:127.0.0.1]/", NOT_ALLOWED),
        ("https://[::ffff:7f00:1]/", NOT_ALLOWED),
        ("https://[64:ff9b::a00:1]/", NOT_ALLOWED),
        ("https://[2002:a00:1::]/", NOT_ALLOWED),
        ("https://[fe80::1%25eth0]/", INVALID),
        ("https://[0:0:0:0:0:0:0:1]:443/", NOT_ALLOWED),
        ("https://::1/", INVALID),
        ("https://[::]/", NOT_ALLOWED),
        // Userinfo and `@` tricks.
        ("https://api.example.com@evil.net/", INVALID),
        ("https://user:pass@api.example.com/", INVALID),
        ("https://evil.net@api.example.com/", INVALID),
        ("https://api.example.com:443@evil.net/", INVALID),
        ("https://@api.example.com/", INVALID),
        // Backslashes, which lenient parsers read as `/`.
        ("https://evil.net\\@api.example.com/", INVALID),
        ("https://api.example.com\\.evil.net/", INVALID),
        ("https:\\\\api.example.com/", INVALID),
        ("https://api.example.com/\\evil", INVALID),
        // Percent-encoding and odd characters in the host.
        ("https://api%2eexample.com/", INVALID),
        ("https://api.example%2ecom/", INVALID),
        ("https://%61pi.example.com/", INVALID),
        ("https://api.example.com%00.evil.net/", INVALID),
        ("https://api.example.com%2F@evil.net/", INVALID),
        ("https://api_example.com/", INVALID),
        ("https://api.exam ple.com/", INVALID),
        ("https://api.example.com\t/", INVALID),
        ("https://apí.example.com/", INVALID),
        ("https://api..example.com/", INVALID),
        ("https://.example.com/", INVALID),
        ("https://-api.example.com/", INVALID),
        ("https://api.example.com../", INVALID),
        // Not absolute, fragments, queries, other schemes.
        ("api.example.com/v1", INVALID),
        ("//api.example.com/v1", INVALID),
        ("https:/api.example.com/", INVALID),
        ("https:api.example.com", INVALID),
        ("https://", INVALID),
        ("https:///path", INVALID),
        ("https://api.example.com/v1#frag", INVALID),
        ("https://api.example.com/v1?key=1", INVALID),
        ("file:///etc/passwd", NOT_ALLOWED),
        ("gopher://api.example.com/", NOT_ALLOWED),
        ("ftp://api.example.com/", NOT_ALLOWED),
        ("javascript:alert(1)", INVALID),
        // Hosts near but outside the allowlist; wildcard edges.
        ("https://example.com/", NOT_ALLOWED),
        ("https://evil-example.com/", NOT_ALLOWED),
        ("https://example.com.evil.net/", NOT_ALLOWED),
        ("https://api.example.com.evil.net/", NOT_ALLOWED),
        ("https://apiexample.com/", NOT_ALLOWED),
        ("https://xexample.com/", NOT_ALLOWED),
        ("https://partner.io/", NOT_ALLOWED),
        ("https://example.net/", NOT_ALLOWED),
        ("https://sub.plain.example.net/", NOT_ALLOWED),
        ("https://localhost/", NOT_ALLOWED),
        ("https://localhost./", NOT_ALLOWED),
        ("https://metadata.google.internal/", NOT_ALLOWED),
        // Ports.
        ("https://api.example.com:22/", NOT_ALLOWED),
        ("https://api.example.com:0/", INVALID),
        ("https://api.example.com:65536/", INVALID),
        ("https://api.example.com:/", INVALID),
        ("https://api.example.com:+443/", INVALID),
        ("https://api.example.com:443:443/", INVALID),
        ("https://api.example.com:0443x/", INVALID),
        ("https://api.example.com:4430/", NOT_ALLOWED),
    ];

    #[test]
    fn hostile_destinations_are_refused_with_the_right_verdict() {
        assert!(HOSTILE.len() >= 60, "{} cases", HOSTILE.len());
        let rules = rules();
        for (raw, verdict) in HOSTILE {
            let got = match check(&rules, raw) {
                Ok(()) => "admitted",
                Err(Refusal::Invalid(_)) => INVALID,
                Err(Refusal::NotAllowed(_)) => NOT_ALLOWED,
            };
            assert_eq!(got, *verdict, "{raw:?}: {:?}", check(&rules, raw));
        }
    }

    #[test]
    fn names_are_compared_case_insensitively_without_the_trailing_dot() {
        let rules = rules();
        for raw in [
            "https://API.Example.COM/v1",
            "HTTPS://api.example.com./v1",
            "https://Deep.Sub.EXAMPLE.com/x",
            "https://a.partner.io",
            "https://api.example.com:8443",
            "http://plain.example.net",
            "http://plain.example.net:80/",
        ] {
            assert_eq!(check(&rules, raw), Ok(()), "{raw}");
        }
        let named = parse("HTTPS://API.Example.COM./Base/Path").unwrap();
        assert_eq!(named.host, "api.example.com");
        assert_eq!(named.path, "/Base/Path", "the path is kept as sent");
        assert_eq!((named.port, named.explicit_port), (443, false));
        assert_eq!(parse("http://a.example.com").unwrap().port, 80);
    }

    #[test]
    fn defaults_admit_https_on_443_only() {
        let rules = https_only();
        assert_eq!(check(&rules, "https://api.example.com/v1"), Ok(()));
        assert_eq!(check(&rules, "https://api.example.com:443/v1"), Ok(()));
        assert!(
            matches!(check(&rules, "http://api.example.com/v1"), Err(Refusal::NotAllowed(r)) if r.contains("scheme"))
        );
        assert!(
            matches!(check(&rules, "https://api.example.com:8443/"), Err(Refusal::NotAllowed(r)) if r.contains("port"))
        );
        assert!(
            matches!(check(&rules, "https://x.api.example.com/"), Err(Refusal::NotAllowed(r)) if r.contains("host"))
        );
    }
}
