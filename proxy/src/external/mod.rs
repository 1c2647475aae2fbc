//! Destinations named by the client. A route with `allowlistRef` takes its base URL from the
//! allowlist's `targetUrlHeader`; [`destination`] reads it strictly ([`url::parse`]), holds it
//! against the allowlist's schemes, hosts and ports ([`url::Rules`]), drops the header, and
//! hands `proxy::forward` the base to append the request's path and query to. The upstream
//! client of such a route resolves through a [`resolve::Resolver`] carrying the allowlist's
//! [`guard::Guard`], so every address is checked before a connection is made, and its TLS
//! honours `minTls` and `caBundle`. A route with a fixed upstream refuses requests that carry a
//! destination header instead of quietly ignoring what the client asked for.

pub mod guard;
pub mod resolve;
pub mod url;

use std::borrow::Cow;
use std::sync::Arc;

use http::HeaderMap;
use http::header::HeaderName;
use http::uri::{Authority, PathAndQuery, Scheme};
use keygate_crds::Snapshot;
use keygate_crds::resources::allowlist::{self as spec, TlsVersion};
use keygate_crds::snapshot::{SecretId, secret_id};

use crate::config::{LiveRoute, Target};
use crate::error::ProxyError;
use crate::pipeline::path::{self, BadPath};
use guard::Guard;
use url::Refusal;

/// The destination header of an allowlist that names none; fixed routes refuse it too.
pub const DEFAULT_TARGET_HEADER: &str = "x-target-url";

/// An allowlist, ready for requests.
#[derive(Debug)]
pub struct Allowlist {
    /// `namespace/name`.
    pub id: String,
    /// The header as the allowlist spells it, for messages.
    header_display: String,
    header: HeaderName,
    rules: url::Rules,
    /// The CA bundle trusted besides the public roots.
    pub ca_bundle: Option<SecretId>,
    /// What the upstream client checks each resolved address against.
    pub guard: Guard,
    /// `minTls: "1.3"`.
    pub tls13_only: bool,
}

impl Allowlist {
    /// The compiled allowlist `id` (`namespace/name`) of `snapshot`. The message of an error
    /// says what is wrong; the caller names the route.
    pub fn build(id: &str, snapshot: &Snapshot) -> Result<Allowlist, String> {
        let spec = snapshot
            .allowlists
            .get(id)
            .ok_or_else(|| format!("ExternalAllowlist {id} is not in the snapshot"))?;
        let header = HeaderName::from_bytes(spec.target_url_header.to_ascii_lowercase().as_bytes())
            .map_err(|_| format!("{:?} is not a header name", spec.target_url_header))?;
        let allow = spec
            .allow_cidrs
            .iter()
            .map(|c| c.parse().map_err(|e| format!("allowCidrs: {e}")))
            .collect::<Result<_, String>>()?;
        let rules = url::Rules::new(spec);
        let ns = id.split_once('/').map_or(id, |(ns, _)| ns);
        Ok(Allowlist {
            id: id.to_string(),
            header_display: spec.target_url_header.clone(),
            header,
            guard: Guard {
                allow,
                ports: rules.ports().to_vec(),
            },
            rules,
            ca_bundle: spec.ca_bundle.as_ref().map(|r| secret_id(ns, &r.name, &r.key)),
            tls13_only: spec.min_tls == TlsVersion::Tls13,
        })
    }

    /// The checked base URL named in `headers`. See the module docs.
    fn pick(&self, route: &LiveRoute, headers: &HeaderMap) -> Result<Base<'static>, ProxyError> {
        let mut values = headers.get_all(&self.header).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            let err = if headers.contains_key(&self.header) {
                ProxyError::DestinationInvalid("the destination header was sent more than once")
            } else {
                ProxyError::DestinationMissing(self.header_display.clone())
            };
            return Err(self.refused(route, err, "header", None));
        };
        let raw = value.to_str().map_err(|_| {
            let err = ProxyError::DestinationInvalid("contains spaces, control or non-ASCII characters");
            self.refused(route, err, "characters", None)
        })?;
        let named = url::parse(raw).map_err(|r| self.refusal(route, r, None))?;
        self.rules
            .admit(&named)
            .map_err(|r| self.refusal(route, r, Some(&named.host)))?;
        let invalid = |rule| self.refusal(route, Refusal::Invalid(rule), Some(&named.host));
        // The named base path gets the same canonical spelling as request paths, so the
        // upstream cannot resolve it to somewhere else either.
        let base_path = match named.path {
            "" => String::new(),
            named_path => match path::normalize(named_path) {
                Ok(n) if n.encoded_slash && !route.spec.allow_encoded_slashes => {
                    return Err(invalid(BadPath::EncodedSlash.reason()));
                }
                Ok(n) => n.path.trim_end_matches('/').to_string(),
                Err(bad) => return Err(invalid(bad.reason())),
            },
        };
        if !base_path.is_empty() && PathAndQuery::try_from(base_path.as_str()).is_err() {
            return Err(invalid("the path has characters a URL path cannot carry"));
        }
        let (scheme, default_port) = match named.scheme {
            spec::Scheme::Https => (Scheme::HTTPS, 443),
            spec::Scheme::Http => (Scheme::HTTP, 80),
        };
        let authority = if named.port == default_port {
            Authority::try_from(named.host.as_str())
        } else {
            Authority::try_from(format!("{}:{}", named.host, named.port))
        }
        .map_err(|_| invalid("the host cannot be forwarded"))?;
        Ok(Base {
            scheme: Cow::Owned(scheme),
            authority: Cow::Owned(authority),
            base_path: Cow::Owned(base_path),
        })
    }

    fn refusal(&self, route: &LiveRoute, refusal: Refusal, host: Option<&str>) -> ProxyError {
        let (err, rule) = match refusal {
            Refusal::Invalid(rule) => (ProxyError::DestinationInvalid(rule), rule),
            Refusal::NotAllowed(rule) => (
                ProxyError::DestinationNotAllowed(match host {
                    Some(host) => format!("{rule} ({host})"),
                    None => rule.to_string(),
                }),
                rule,
            ),
        };
        self.refused(route, err, rule, host)
    }

    /// Logs a refusal: the rule and the host, never the URL, whose path may carry identifiers.
    fn refused(&self, route: &LiveRoute, err: ProxyError, rule: &str, host: Option<&str>) -> ProxyError {
        tracing::warn!(
            route = %route.id,
            allowlist = %self.id,
            code = err.code(),
            rule,
            host = host.unwrap_or("-"),
            "destination refused"
        );
        err
    }
}

/// Where a request goes: scheme, authority and base path, borrowed from a fixed route or made
/// for this request from the header.
pub struct Base<'a> {
    /// `http` or `https`.
    pub scheme: Cow<'a, Scheme>,
    /// Host and port.
    pub authority: Cow<'a, Authority>,
    /// Base path without a trailing `/` (may be empty).
    pub base_path: Cow<'a, str>,
}

/// Every header that names a destination in `snapshot`: each allowlist's and the default.
pub fn destination_headers(snapshot: &Snapshot) -> Arc<[HeaderName]> {
    let mut names: Vec<HeaderName> = snapshot
        .allowlists
        .values()
        .filter_map(|a| HeaderName::from_bytes(a.target_url_header.to_ascii_lowercase().as_bytes()).ok())
        .chain([HeaderName::from_static(DEFAULT_TARGET_HEADER)])
        .collect();
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    names.into()
}

/// The destination of a request on `route`, with every destination header removed from
/// `headers`: none of them is meant for the upstream.
pub fn destination<'a>(route: &'a LiveRoute, headers: &mut HeaderMap) -> Result<Base<'a>, ProxyError> {
    let base = match &route.target {
        Target::Fixed {
            scheme,
            authority,
            base_path,
        } => {
            if let Some(name) = route.destination_headers.iter().find(|h| headers.contains_key(*h)) {
                tracing::warn!(route = %route.id, header = %name, "destination header on a fixed route refused");
                return Err(ProxyError::DestinationFixed(name.to_string()));
            }
            return Ok(Base {
                scheme: Cow::Borrowed(scheme),
                authority: Cow::Borrowed(authority),
                base_path: Cow::Borrowed(base_path),
            });
        }
        Target::Allowlist(list) => list.pick(route, headers)?,
    };
    for name in route.destination_headers.iter() {
        headers.remove(name);
    }
    Ok(base)
}
