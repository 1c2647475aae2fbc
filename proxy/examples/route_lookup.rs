//! Route-lookup cost against the number of routes: `cargo run --release -p keygate-proxy
//! --example route_lookup`. Prints nanoseconds per lookup for 10, 1,000 and 10,000 routes, for
//! a hit three segments below a prefix and for a miss, on a host with an exact and a wildcard
//! table. A figure, not a test: see BENCHMARKS.md.

use std::hint::black_box;
use std::time::Instant;

use keygate_proxy::router::Router;

fn main() {
    const LOOKUPS: u32 = 2_000_000;
    println!("| routes | hit ns/lookup | miss ns/lookup |");
    println!("|---:|---:|---:|");
    for n in [10usize, 1_000, 10_000] {
        // Every other route is bound to a host (exact or wildcard), so lookups walk the host
        // tables as well as the prefix table for any host.
        let hosts = |i: usize| match i % 4 {
            0 => vec![format!("t{}.example.com", i % 16)],
            2 => vec!["*.example.com".to_string()],
            _ => Vec::new(),
        };
        let router = Router::new((0..n).map(|i| (hosts(i), format!("/tenant-{i}/api/v1"), i)));
        let hits: Vec<String> = (0..64)
            .map(|i| format!("/tenant-{}/api/v1/orders/42/items", i * 7919 % n))
            .collect();
        let time = |paths: &[String]| {
            let started = Instant::now();
            for i in 0..LOOKUPS {
                black_box(router.lookup(
                    black_box(Some("t3.eu.example.com")),
                    black_box(&paths[i as usize % paths.len()]),
                ));
            }
            started.elapsed().as_nanos() as f64 / f64::from(LOOKUPS)
        };
        let misses: Vec<String> = (0..64).map(|i| format!("/nobody-{i}/api/v1/orders/42/items")).collect();
        println!("| {n} | {:.0} | {:.0} |", time(&hits), time(&misses));
    }
}
