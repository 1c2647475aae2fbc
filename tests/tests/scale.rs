//! The operator at scale on a real API server (`tests/kube-env/up`): Secrets are watched as
//! metadata only, so thousands of Secrets Keygate never uses cost the operator next to no memory
//! and none of their values, while a referenced Secret's rotation still reaches the proxy.
//!
//! The operator is the release binary (`scripts/build-release`), so its memory is a real
//! process's; the proxy runs in-process (`--kube` source), as in `kube.rs`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use keygate_tests::cluster::{Namespace, eventually, route, secret};
use keygate_tests::{Upstream, get, release_bin};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};

mod inproc;
use inproc::{client, kube_proxy};

/// Unrelated Secrets created, and the size of each one's value.
const UNRELATED: usize = 5_000;
const VALUE_BYTES: usize = 4096;
/// What the operator may grow by while they arrive: their metadata, not their values (which
/// alone are 5,000 × 4 KiB = 19.5 MiB, more in the decoded objects a full watch would cache).
const GROWTH_BOUND_KIB: u64 = 10 * 1024;

/// The operator binary, started as the chart starts it, with its log kept.
struct OperatorProcess {
    child: Child,
    log: std::path::PathBuf,
}

impl OperatorProcess {
    fn start(ns: &str, dir: &std::path::Path) -> OperatorProcess {
        let bin = release_bin("keygate-operator");
        assert!(
            bin.is_file(),
            "{} is missing: build it with scripts/build-release",
            bin.display()
        );
        let log = dir.join("operator.log");
        let child = Command::new(bin)
            .args(["--namespace", ns, "--watch-namespaces", ns, "--debounce-ms", "50"])
            .env("KEYGATE_METRICS_LISTEN", "127.0.0.1:0")
            .env("POD_NAME", "scale-op")
            .env("RUST_LOG", "info,keygate_operator=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        OperatorProcess { child, log }
    }

    /// Resident memory, KiB.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A value nobody could guess or compress: what a real key looks like in memory.
fn unrelated_value(i: usize) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut out = Vec::with_capacity(VALUE_BYTES);
    let mut block = Sha256::digest(format!("unrelated-{i}")).to_vec();
    while out.len() < VALUE_BYTES {
        block = Sha256::digest(&block).to_vec();
        out.extend_from_slice(&block);
    }
    out.truncate(VALUE_BYTES);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrelated_secrets_are_not_cached_and_a_rotation_still_reaches_the_proxy() {
    let ns = Namespace::new("secrets");
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::ok().await;
    let forward = "  forwardHeaders:\n  - name: x-api-key\n    valueFrom: {name: keys, key: api}";
    ns.apply(&(secret("keys", "api", "scale-key-one") + &route("api", "/api", &up.url(), forward)));
    let op = OperatorProcess::start(&ns.0, dir.path());
    let (proxy, _) = kube_proxy(&ns.0).await;
    let served = |value: &'static str| {
        let url = format!("http://{proxy}/api/x");
        let up = &up;
        async move {
            let got = get(&url, &[]).await;
            (got.status == 200 && up.last().headers.get("x-api-key").is_some_and(|v| v == value)).then_some(())
        }
    };
    eventually(30, "the route with the first key", || served("scale-key-one")).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = op.rss_kib();

    // 5,000 Secrets no resource references, created as fast as the API server takes them.
    let secrets: Api<Secret> = Api::namespaced(client().await, &ns.0);
    let created = Instant::now();
    let results: Vec<_> = futures::stream::iter(0..UNRELATED)
        .map(|i| {
            let secrets = secrets.clone();
            async move {
                let s = Secret {
                    metadata: kube::api::ObjectMeta {
                        name: Some(format!("unrelated-{i:05}")),
                        ..Default::default()
                    },
                    data: Some([("value".to_string(), ByteString(unrelated_value(i)))].into()),
                    ..Default::default()
                };
                secrets.create(&PostParams::default(), &s).await.map(|_| ())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(
        results.iter().all(Result::is_ok),
        "creating Secrets failed: {:?}",
        results.iter().find(|r| r.is_err())
    );
    println!(
        "created {UNRELATED} Secrets of {VALUE_BYTES} bytes in {:.1} s",
        created.elapsed().as_secs_f64()
    );

    // Rotates the key and returns how long until the proxy sends the new value.
    let rotate = |value: &'static str| {
        let (secrets, served) = (&secrets, &served);
        async move {
            let rotated = Instant::now();
            let patch = serde_json::json!({"stringData": {"api": value}});
            secrets
                .patch("keys", &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .unwrap();
            eventually(20, &format!("{value} to reach the proxy"), || served(value)).await;
            rotated.elapsed().as_millis()
        }
    };
    // The rotation is watched after every creation (one watch, in resourceVersion order), so once
    // it is served the operator has seen all 5,000.
    println!(
        "rotation latency: {} ms (Secret patched → operator → keygate-secrets → proxy), behind {UNRELATED} Secret events",
        rotate("scale-key-two").await
    );
    // A quiet rotation, with nothing queued before it: the figure the target is about.
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!("rotation latency: {} ms (quiet)", rotate("scale-key-three").await);

    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = op.rss_kib();
    println!(
        "operator RSS: {:.1} MiB before, {:.1} MiB after {UNRELATED} unrelated Secrets (+{:.1} MiB; bound {} MiB)",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        after.saturating_sub(before) as f64 / 1024.0,
        GROWTH_BOUND_KIB / 1024
    );
    assert!(
        after.saturating_sub(before) < GROWTH_BOUND_KIB,
        "the operator grew by {} KiB with {UNRELATED} unrelated Secrets (bound {GROWTH_BOUND_KIB} KiB): are their values cached?",
        after - before
    );
    let log = op.log();
    assert!(
        log.contains("configuration written"),
        "the operator's log was not captured:\n{log}"
    );
    for value in ["scale-key-one", "scale-key-two", "scale-key-three"] {
        assert!(!log.contains(value), "a Secret value reached the operator's log");
    }
    keygate_tests::logs::assert_not_logged("scale-key-");
}
