//! `compile()` on `ExternalAllowlist`s: wildcards as wide as a public suffix are refused with
//! the fix, `allowCidrs` must be clean, narrow networks, and a served allowlist that opens
//! private ranges says so in its `Ready` message.

mod common;

use common::{assert_refused, compile_docs, problem_lines, report, shop};
use keygate_crds::Kind;
use keygate_crds::report::reasons;
use pretty_assertions::assert_eq;

fn allowlist(spec: &str) -> Vec<String> {
    vec![shop("ExternalAllowlist", "partners", spec)]
}

#[test]
fn wildcards_over_a_public_suffix_are_refused_with_the_fix() {
    for (pattern, suffix) in [
        ("*.co.uk", "co.uk"),
        ("*.github.io", "github.io"),
        ("*.com.au", "com.au"),
        ("*.s3.amazonaws.com", "s3.amazonaws.com"),
    ] {
        let compiled = compile_docs(&allowlist(&format!("hosts: [api.example.com, '{pattern}']")));
        let r = report(&compiled, Kind::ExternalAllowlist, "partners");
        assert_eq!(r.reason, reasons::INVALID, "{pattern}");
        assert_eq!(
            problem_lines(&compiled, Kind::ExternalAllowlist, "partners"),
            [format!(
                "ExternalAllowlist/shop/partners: spec.hosts[1]: {pattern} would match every domain under the public suffix {suffix}, owned by many different parties; name a domain registered under it, e.g. *.example.{suffix}"
            )]
        );
        assert!(compiled.snapshot.allowlists.is_empty(), "{pattern} is not served");
    }
}

#[test]
fn single_label_wildcards_never_pass_the_schema() {
    let compiled = compile_docs(&allowlist("hosts: ['*.com']"));
    let r = report(&compiled, Kind::ExternalAllowlist, "partners");
    assert_eq!(r.reason, reasons::INVALID);
    assert!(r.message.contains("at least two labels"), "{}", r.message);
}

#[test]
fn wildcards_under_a_registrable_domain_are_served() {
    let compiled = compile_docs(&allowlist(
        "hosts: ['*.example.co.uk', '*.myapp.github.io', '*.corp.internal', api.example.com]",
    ));
    let r = report(&compiled, Kind::ExternalAllowlist, "partners");
    assert_eq!(r.reason, reasons::ACCEPTED, "{}", r.message);
    assert_eq!(r.message, "ExternalAllowlist/shop/partners is served");
}

#[test]
fn allow_cidrs_are_shown_in_the_ready_message() {
    let compiled = compile_docs(&allowlist(
        "{hosts: [api.internal.example], allowCidrs: [10.1.0.0/16, 'fd00:1::/64']}",
    ));
    let r = report(&compiled, Kind::ExternalAllowlist, "partners");
    assert_eq!(r.reason, reasons::ACCEPTED);
    assert_eq!(
        r.message,
        "ExternalAllowlist/shop/partners is served; private ranges allowed: 10.1.0.0/16, fd00:1::/64"
    );
}

#[test]
fn allow_cidrs_must_be_clean_and_narrow() {
    let compiled = compile_docs(&allowlist(
        "{hosts: [api.example.com], allowCidrs: [10.1.2.3/16, 0.0.0.0/0, '::/0', 10.0.0.0/8]}",
    ));
    assert_refused(
        &compiled,
        Kind::ExternalAllowlist,
        "partners",
        reasons::INVALID,
        &[
            "ExternalAllowlist/shop/partners: spec.allowCidrs[0]: \"10.1.2.3/16\" has address bits set past the prefix; write 10.1.0.0/16",
            "ExternalAllowlist/shop/partners: spec.allowCidrs[1]: 0.0.0.0/0 is too wide to be a private API's range; name the network it lives in, e.g. 10.1.0.0/16 or fd00::/64 (at least /8 for IPv4, /7 for IPv6)",
            "ExternalAllowlist/shop/partners: spec.allowCidrs[2]: ::/0 is too wide to be a private API's range; name the network it lives in, e.g. 10.1.0.0/16 or fd00::/64 (at least /8 for IPv4, /7 for IPv6)",
        ],
    );
}

#[test]
fn the_target_header_cannot_be_one_the_proxy_uses() {
    let compiled = compile_docs(&allowlist("{targetUrlHeader: Host, hosts: [api.example.com]}"));
    assert_eq!(
        problem_lines(&compiled, Kind::ExternalAllowlist, "partners"),
        [
            "ExternalAllowlist/shop/partners: spec.targetUrlHeader: Host is a header the proxy itself uses; choose another, e.g. X-Target-URL"
        ]
    );
}
