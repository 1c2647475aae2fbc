//! Hot reload: manifests change under load with no failed request, and a broken change is
//! refused while the old routes keep answering.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use http::StatusCode;

fn versioned(up: &Upstream, version: usize) -> String {
    route_yaml(
        "api",
        "/api",
        &up.url(),
        &format!("  forwardHeaders:\n  - name: x-config-version\n    value: \"{version}\""),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_under_load_lose_no_request() {
    let up = Upstream::ok().await;
    let proxy = Arc::new(Proxy::start(&versioned(&up, 0)).await);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (proxy, stop, ok, failed) = (proxy.clone(), stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            let client = client();
            while !stop.load(Ordering::Relaxed) {
                let req = http::Request::get(proxy.url("/api/x"))
                    .body(Default::default())
                    .unwrap();
                match client.request(req).await {
                    Ok(r) if r.status() == StatusCode::OK => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    let mut hash = proxy.hash();
    for version in 1..=10 {
        proxy.rewrite(&versioned(&up, version));
        hash = proxy.wait_for_new_config(&hash).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "requests failed during reloads");
    assert!(ok.load(Ordering::Relaxed) > 50, "the load loop ran");
    let versions: std::collections::BTreeSet<String> = up
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.headers["x-config-version"].to_str().unwrap().to_string())
        .collect();
    assert!(versions.contains("10"), "the last change is served: {versions:?}");
    assert!(
        versions.len() >= 3,
        "changes were observed while the load ran: {versions:?}"
    );
}

#[tokio::test]
async fn broken_changes_are_refused_and_old_routes_keep_answering() {
    let up = Upstream::ok().await;
    let proxy = Proxy::start(&versioned(&up, 1)).await;
    let good = proxy.hash();
    let refused = |p: &Proxy| {
        let m = p.shared.metrics.render();
        m.lines()
            .find(|l| l.starts_with("keygate_config_reloads_total{result=\"refused\"}"))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .unwrap_or(0)
    };

    let broken = [
        "apiVersion: keygate.dev/v1alpha1\nkind: ProxyRoute\nmetadata: {name: api\n  spec: [",
        &route_yaml("api", "api-without-slash", &up.url(), ""),
        &route_yaml("api", "/api", &up.url(), "  bodyLimitt: 5"),
        &route_yaml(
            "api",
            "/api",
            &up.url(),
            "  forwardHeaders:\n  - name: x-key\n    valueFrom: {name: missing, key: k}",
        ),
    ];
    for (i, yaml) in broken.iter().enumerate() {
        proxy.rewrite(yaml);
        let before = refused(&proxy);
        for _ in 0..200 {
            if refused(&proxy) > before {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(refused(&proxy) > before, "change {i} was not refused");
        assert_eq!(proxy.hash(), good, "change {i} replaced the live config");
        let got = get(&proxy.url("/api/still"), &[]).await;
        assert_eq!(
            got.status,
            StatusCode::OK,
            "change {i}: the old route stopped answering"
        );
    }

    // A good change after broken ones is applied; removing the route makes it 404.
    proxy.rewrite(&route_yaml("other", "/other", &up.url(), ""));
    proxy.wait_for_new_config(&good).await;
    let got = get(&proxy.url("/api/still"), &[]).await;
    assert_eq!(
        (got.status, got.error_code().as_str()),
        (StatusCode::NOT_FOUND, "ROUTE_NOT_FOUND")
    );
    assert_eq!(get(&proxy.url("/other"), &[]).await.status, StatusCode::OK);
}

/// Writes a snapshot pair the way the kubelet updates a mounted volume: files in a fresh
/// timestamped folder, then one atomic rename of the `..data` symlink.
fn kubelet_update(dir: &std::path::Path, generation: u32, snapshot: &[u8], secrets: &[u8]) {
    use std::os::unix::fs::symlink;
    let version = format!("..2026_11_23_{generation}");
    std::fs::create_dir(dir.join(&version)).unwrap();
    std::fs::write(dir.join(&version).join("snapshot.json"), snapshot).unwrap();
    std::fs::write(dir.join(&version).join("secrets.json"), secrets).unwrap();
    let tmp = dir.join("..data_tmp");
    symlink(&version, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for file in ["snapshot.json", "secrets.json"] {
        if !dir.join(file).exists() {
            symlink(format!("..data/{file}"), dir.join(file)).unwrap();
        }
    }
}

fn compiled(yaml: &str) -> (Vec<u8>, Vec<u8>) {
    let parsed = keygate_crds::manifests::parse([("test.yaml", yaml)]);
    assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
    let c = keygate_crds::compile(&parsed.resources);
    assert_eq!(c.refused().count(), 0, "{:?}", c.reports);
    (c.snapshot.to_json(), c.secrets.to_json())
}

#[tokio::test]
async fn mounted_snapshot_follows_the_kubelet_symlink_swap() {
    let up = Upstream::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let key = |v: &str| {
        secret_yaml_one("keys", "api", v)
            + &route_yaml(
                "api",
                "/api",
                &up.url(),
                "  forwardHeaders:\n  - name: x-api-key\n    valueFrom: {name: keys, key: api}",
            )
    };
    let (snap1, sec1) = compiled(&key("key-one"));
    kubelet_update(dir.path(), 1, &snap1, &sec1);
    let source = keygate_proxy::source::Source::Snapshot {
        config_dir: dir.path().to_path_buf(),
        secrets_dir: dir.path().to_path_buf(),
    };
    let proxy = Proxy::start_on(source, dir).await;
    get(&proxy.url("/api"), &[]).await;
    assert_eq!(up.last().headers["x-api-key"], "key-one");

    // A rotated Secret value leaves the snapshot (and its hash) unchanged, yet is picked up.
    let (snap2, sec2) = compiled(&key("key-two"));
    assert_eq!(snap1, snap2, "secret values never change the snapshot");
    kubelet_update(proxy.dir.path(), 2, &snap2, &sec2);
    for _ in 0..200 {
        get(&proxy.url("/api"), &[]).await;
        if up.last().headers["x-api-key"] == "key-two" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(up.last().headers["x-api-key"], "key-two");

    // The ConfigMap updated before the Secret: the pair does not match, so nothing changes.
    let old = proxy.hash();
    let (snap3, _) = compiled(&(key("key-two") + &route_yaml("more", "/more", &up.url(), "")));
    kubelet_update(proxy.dir.path(), 3, &snap3, &sec2);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        proxy.hash(),
        old,
        "a snapshot was served with secrets of another snapshot"
    );
    assert_eq!(get(&proxy.url("/more"), &[]).await.status, StatusCode::NOT_FOUND);
    // Then the Secret catches up.
    let (snap3, sec3) = compiled(&(key("key-two") + &route_yaml("more", "/more", &up.url(), "")));
    kubelet_update(proxy.dir.path(), 4, &snap3, &sec3);
    proxy.wait_for_new_config(&old).await;
    assert_eq!(get(&proxy.url("/more"), &[]).await.status, StatusCode::OK);
}

fn secret_yaml_one(name: &str, key: &str, value: &str) -> String {
    secret_yaml(name, &std::collections::BTreeMap::from([(key, value)]))
}
