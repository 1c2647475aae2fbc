//! The control plane at scale on a real API server:
//! `tests/kube-env/up && scripts/build-release && cargo run --release -p keygate-tests --example scale_cluster [-- ROUTES]`.
//!
//! Creates the configuration of `keygate_tests::scale` (default 10,000 routes with their
//! Secrets, cookie translations and allowlists, in namespaces `team-000`…) in the cluster of
//! `KUBECONFIG`, starts the release operator (watching every namespace) and a `--kube` release
//! proxy, and prints:
//! - the operator's first reconcile: start → ConfigMap written, and → every status written;
//! - the reconcile after one changed route: `kubectl patch`-equivalent → new ConfigMap written,
//!   and → the proxy serving it;
//! - RSS of both processes at that size.
//!
//! Meant for a throwaway cluster (`tests/kube-env`): the namespaces are deleted at the end.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::serde::Serialize;
use k8s_openapi::serde::de::DeserializeOwned;
use keygate_crds::manifests;
use keygate_crds::resources::{CookieTranslation, ExternalAllowlist, ProxyRoute};
use keygate_tests::{release_bin, scale};
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};

const OPERATOR_NS: &str = "keygate-scale";

struct Process(Child);

impl Process {
    fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0.id())).unwrap_or_default();
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        kib / 1024.0
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(binary: &str, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Process> {
    let bin = release_bin(binary);
    anyhow::ensure!(bin.is_file(), "{} is missing: run scripts/build-release", bin.display());
    let mut cmd = Command::new(bin);
    cmd.args(args).stdout(Stdio::null()).stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Ok(Process(cmd.spawn()?))
}

async fn create_all<K>(client: &Client, items: Vec<K>) -> anyhow::Result<()>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
{
    let results: Vec<Result<(), kube::Error>> = futures::stream::iter(items)
        .map(|mut item| {
            let api: Api<K> = Api::namespaced(client.clone(), &item.namespace().unwrap_or_default());
            item.meta_mut().resource_version = None;
            async move {
                match api.create(&PostParams::default(), &item).await {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
                    Err(e) => Err(e),
                }
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    results.into_iter().collect::<Result<(), _>>()?;
    Ok(())
}

async fn config_hash(client: &Client) -> Option<String> {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), OPERATOR_NS)
        .get_opt("keygate-config")
        .await
        .ok()??;
    cm.annotations().get("keygate.dev/snapshot-hash").cloned()
}

async fn wait_for<T, F: std::future::Future<Output = Option<T>>>(
    secs: u64,
    what: &str,
    mut f: impl FnMut() -> F,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        anyhow::ensure!(Instant::now() < deadline, "timed out after {secs} s waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let routes: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(10_000);
    let client = Client::try_default().await?;
    let parsed = manifests::parse([("scale.yaml", scale::manifests(routes).as_str())]);
    anyhow::ensure!(parsed.problems.is_empty(), "{:?}", parsed.problems);
    let r = parsed.resources;
    let mut namespaces: Vec<String> = r.routes.iter().map(|x| x.namespace().unwrap()).collect();
    namespaces.push(OPERATOR_NS.to_string());
    namespaces.dedup();
    let ns_api: Api<Namespace> = Api::all(client.clone());
    for ns in &namespaces {
        let obj = Namespace {
            metadata: ObjectMeta {
                name: Some(ns.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        match ns_api.create(&PostParams::default(), &obj).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    let created = Instant::now();
    create_all::<Secret>(&client, r.secrets.clone()).await?;
    create_all::<CookieTranslation>(&client, r.cookie_translations.clone()).await?;
    create_all::<ExternalAllowlist>(&client, r.allowlists.clone()).await?;
    create_all::<ProxyRoute>(&client, r.routes.clone()).await?;
    println!(
        "created {} routes, {} Secrets, {} cookie translations, {} allowlists in {:.1} s",
        r.routes.len(),
        r.secrets.len(),
        r.cookie_translations.len(),
        r.allowlists.len(),
        created.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    let operator = start(
        "keygate-operator",
        &["--namespace", OPERATOR_NS, "--debounce-ms", "50"],
        &[("KEYGATE_METRICS_LISTEN", "127.0.0.1:0"), ("POD_NAME", "scale")],
    )?;
    let first = wait_for(600, "the first ConfigMap", || config_hash(&client)).await?;
    println!(
        "operator, first reconcile: ConfigMap written {:.1} s after start",
        started.elapsed().as_secs_f64()
    );
    let all_routes: Api<ProxyRoute> = Api::all(client.clone());
    wait_for(900, "every status", || async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let list = all_routes.list(&Default::default()).await.ok()?;
        let done = list
            .items
            .iter()
            .filter(|r| r.status.as_ref().is_some_and(|s| !s.conditions.is_empty()))
            .count();
        (done >= routes).then_some(())
    })
    .await?;
    println!(
        "operator, first reconcile: every status written {:.1} s after start",
        started.elapsed().as_secs_f64()
    );

    let proxy = start(
        "keygate-proxy",
        &["serve", "--kube", "--kube-namespace", OPERATOR_NS],
        &[
            ("KEYGATE_LISTEN", "127.0.0.1:0"),
            ("KEYGATE_ADMIN_LISTEN", "127.0.0.1:0"),
        ],
    )?;
    tokio::time::sleep(Duration::from_secs(5)).await;

    // One changed route: the operator recompiles everything and rewrites the ConfigMap.
    let mut times = Vec::new();
    for (i, limit) in [4096, 8192, 16384].into_iter().enumerate() {
        let before = config_hash(&client).await;
        let changed = Instant::now();
        let patch = serde_json::json!({"spec": {"bodyLimit": limit}});
        let target = &r.routes[routes / 2 + i];
        Api::<ProxyRoute>::namespaced(client.clone(), &target.namespace().unwrap())
            .patch(&target.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        wait_for(60, "the changed ConfigMap", || async {
            let now = config_hash(&client).await;
            (now.is_some() && now != before).then_some(())
        })
        .await?;
        times.push(changed.elapsed());
    }
    let ms: Vec<String> = times
        .iter()
        .map(|t| format!("{:.0}", t.as_secs_f64() * 1000.0))
        .collect();
    println!(
        "operator, one changed route → new ConfigMap written: {} ms (three changes; target < 1 s)",
        ms.join(", ")
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!(
        "RSS with {routes} routes: operator {:.0} MiB, proxy {:.0} MiB",
        operator.rss_mib(),
        proxy.rss_mib()
    );
    let _ = first;
    drop((operator, proxy));
    for ns in &namespaces {
        let _ = ns_api.delete(ns, &Default::default()).await;
    }
    Ok(())
}
