//! End to end against a real kube-apiserver + etcd (`tests/kube-env/up`), with real kubectl:
//! CRDs install and explain, CEL refuses bad resources at apply, the operator compiles what is
//! applied into the ConfigMap and Secret that a `--kube` proxy serves, statuses tell the story,
//! and leadership moves between replicas. Operator replicas and the proxy run in-process; each
//! test has its own namespace, operator output and Lease, and deletes its namespace after.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::StatusCode;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use keygate_tests::cluster::{
    Namespace, event, eventually, install_crds, jsonpath, kubectl, kubectl_ok, route, secret,
};
use keygate_tests::logs::assert_not_logged;
use keygate_tests::{Upstream, get};
use kube::Api;

mod inproc;
use inproc::{CONFIG_MAP, Operator, SECRET, client, kube_proxy, ready_condition};

#[test]
fn crds_install_and_explain_reads_well() {
    install_crds();
    let explain = kubectl_ok(&["explain", "proxyroute.spec"], None);
    for text in [
        "pathPrefix",
        "longest matching prefix wins",
        "forwardHeaders",
        "Secrets",
    ] {
        assert!(explain.contains(text), "kubectl explain lacks {text:?}:\n{explain}");
    }
    let names = kubectl_ok(&["api-resources", "--api-group=keygate.dev", "-o", "name"], None);
    for kind in [
        "proxyroutes",
        "cookietranslations",
        "externalallowlists",
        "tokenvaultrules",
        "sessionchainpolicies",
    ] {
        assert!(
            names.contains(&format!("{kind}.keygate.dev")),
            "{kind} is not served: {names}"
        );
    }
    let short = kubectl_ok(&["api-resources", "--api-group=keygate.dev"], None);
    assert!(short.contains("kgroute") && short.contains("kgchain"), "{short}");
}

#[test]
fn cel_rules_refuse_bad_resources_at_apply() {
    let ns = Namespace::new("cel");
    let head = |kind: &str| format!("apiVersion: keygate.dev/v1alpha1\nkind: {kind}\nmetadata: {{name: bad}}\nspec:\n");
    let cases = [
        (
            route("bad", "api", "https://api.example.com", ""),
            "pathPrefix must start with '/'",
        ),
        (
            route("bad", "/a", "https://api.example.com", "  allowlistRef: ext"),
            "set exactly one of upstream",
        ),
        (
            route("bad", "/a", "ftp://api.example.com", ""),
            "upstream must be an absolute http:// or https:// URL",
        ),
        (
            route("bad", "/a", "https://api.example.com", "  bodyLimit: 0"),
            "bodyLimit must be greater than 0",
        ),
        (
            route(
                "bad",
                "/a",
                "https://api.example.com",
                "  cors:\n    allowOrigins: ['*']\n    allowCredentials: true",
            ),
            "allowCredentials cannot be combined with origin '*'",
        ),
        (head("ExternalAllowlist") + "  hosts: [com]\n", "hosts entries must be"),
        (
            head("ExternalAllowlist") + "  hosts: ['10.0.0.1']\n",
            "not IP addresses",
        ),
        (
            head("TokenVaultRule")
                + "  source: {store: none}\n  permissions: [{classification: pci}]\n  maxTokensPerRequest: 101\n",
            "maxTokensPerRequest must be between 1 and 100",
        ),
        (
            head("CookieTranslation")
                + "  cookie: {sameSite: None, secure: false}\n  header: {name: Authorization}\n  sessionStart: {path: /login, tokenPointer: /token}\n",
            "sameSite: None requires secure: true",
        ),
        (
            route(
                "bad",
                "/a",
                "https://api.example.com",
                "  transform:\n    request:\n    - {op: removeHeader, name: x-a, value: \"'b'\"}",
            ),
            "value (a CEL expression) is needed by setHeader, setJsonField and replaceJsonBody",
        ),
        (
            head("TokenVaultRule")
                + "  source: {store: none}\n  permissions: [{classification: pci}]\n  tokenizeRequest: {pointers: [/card], classification: pci}\n",
            "tokenizeRequest needs a dynamic store",
        ),
    ];
    for (yaml, message) in cases {
        let out = kubectl(&["apply", "-n", &ns.0, "-f", "-"], Some(&yaml));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "the API server accepted:\n{yaml}");
        assert!(stderr.contains(message), "kubectl did not print {message:?}:\n{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applied_route_is_served_updated_without_errors_and_deleted() {
    let ns = Namespace::new("serve");
    let up = Upstream::ok().await;
    let op = Operator::start(&ns.0, "op-a").await;
    let (proxy, _) = kube_proxy(&ns.0).await;
    let url = |p: &str| format!("http://{proxy}{p}");
    let key_route = |version: &str| {
        secret("keys", "api", "e2e-secret-key")
            + &route(
                "api",
                "/api",
                &up.url(),
                &format!(
                    "  forwardHeaders:\n  - name: x-api-key\n    valueFrom: {{name: keys, key: api}}\n  - name: x-version\n    value: \"{version}\""
                ),
            )
    };

    let applied = Instant::now();
    ns.apply(&key_route("1"));
    eventually(20, "the route to be served", || async {
        (get(&url("/api/x"), &[]).await.status == StatusCode::OK).then_some(())
    })
    .await;
    println!(
        "apply-to-serving: {} ms (kubectl apply → operator → ConfigMap/Secret → proxy watch)",
        applied.elapsed().as_millis()
    );
    let seen = up.last();
    assert_eq!(seen.headers["x-api-key"], "e2e-secret-key");
    let (status, reason, _) = eventually(20, "Ready=True", || ready_condition(&ns.0, "api")).await;
    assert_eq!((status.as_str(), reason.as_str()), ("True", "Accepted"));

    // Update under load: nothing fails, and the new version arrives.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (stop, ok, failed, target) = (stop.clone(), ok.clone(), failed.clone(), url("/api/load"));
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if get(&target, &[]).await.status == StatusCode::OK {
                    ok.fetch_add(1, Ordering::Relaxed)
                } else {
                    failed.fetch_add(1, Ordering::Relaxed)
                };
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    ns.apply(&key_route("2"));
    eventually(20, "version 2 to be served", || async {
        (up.last().headers.get("x-version").is_some_and(|v| v == "2")).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed while the route was updated"
    );
    assert!(ok.load(Ordering::Relaxed) > 10);

    kubectl_ok(&["delete", "proxyroute", "api", "-n", &ns.0], None);
    let gone = eventually(20, "the route to disappear", || async {
        let got = get(&url("/api/x"), &[]).await;
        (got.status == StatusCode::NOT_FOUND).then_some(got)
    })
    .await;
    assert_eq!(gone.error_code(), "ROUTE_NOT_FOUND");
    op.stop().await;
    assert_not_logged("e2e-secret-key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transform_expression_errors_reach_the_status_naming_the_field() {
    let ns = Namespace::new("transform");
    let op = Operator::start(&ns.0, "op-a").await;
    // The schema and its CEL rules accept it (the API server cannot parse the expression);
    // compile() in the operator refuses it, and the status says where and why.
    ns.apply(&route(
        "api",
        "/api",
        "https://api.example.com",
        "  transform:\n    request:\n    - {op: setHeader, name: x-user, value: \"request.headers['x-user-id'] +\"}",
    ));
    let (status, reason, message) = eventually(20, "Ready=False", || ready_condition(&ns.0, "api")).await;
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Invalid"));
    assert!(
        message.starts_with("spec.transform.request[0].value: CEL syntax error at line 1"),
        "{message}"
    );
    op.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_secret_is_reported_then_resolved_without_touching_the_route() {
    let ns = Namespace::new("missing");
    let op = Operator::start(&ns.0, "op-a").await;
    ns.apply(&route(
        "api",
        "/api",
        "https://api.example.com",
        "  forwardHeaders:\n  - name: x-api-key\n    valueFrom: {name: late-keys, key: api}",
    ));
    let (status, reason, message) = eventually(20, "Ready=False", || ready_condition(&ns.0, "api")).await;
    assert_eq!((status.as_str(), reason.as_str()), ("False", "SecretNotFound"));
    assert!(
        message.contains(&format!("Secret {}/late-keys does not exist", ns.0)),
        "{message}"
    );
    // The refusal is also an Event on the route, for `kubectl describe`.
    event(&ns.0, "SecretNotFound", 10).await;

    let generation = jsonpath(&ns.0, "proxyroute/api", "{.metadata.generation}");
    ns.apply(&secret("late-keys", "api", "late-value"));
    let (status, reason, _) = eventually(20, "Ready=True", || async {
        ready_condition(&ns.0, "api").await.filter(|(s, _, _)| s == "True")
    })
    .await;
    assert_eq!((status.as_str(), reason.as_str()), ("True", "Accepted"));
    let after = jsonpath(&ns.0, "proxyroute/api", "{.metadata.generation}");
    assert_eq!(generation, after, "the route itself was not changed");
    let statuses = kubectl_ok(&["get", "proxyroutes", "-n", &ns.0, "-o", "yaml"], None);
    assert!(!statuses.contains("late-value"), "a secret value reached a status");
    op.stop().await;
    assert_not_logged("late-value");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_route_claiming_a_prefix_gets_conflict_and_older_keeps_serving() {
    let ns = Namespace::new("conflict");
    let (first, second) = (Upstream::ok().await, Upstream::ok().await);
    let op = Operator::start(&ns.0, "op-a").await;
    let (proxy, _) = kube_proxy(&ns.0).await;
    ns.apply(&route("first", "/shared", &first.url(), ""));
    eventually(20, "first Ready", || async {
        ready_condition(&ns.0, "first").await.filter(|c| c.0 == "True")
    })
    .await;
    // Creation timestamps have one-second resolution: make the second route strictly newer.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    ns.apply(&route("second", "/shared", &second.url(), ""));
    let (status, reason, message) = eventually(20, "second refused", || ready_condition(&ns.0, "second")).await;
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Conflict"));
    assert!(message.contains(&format!("ProxyRoute {}/first", ns.0)), "{message}");
    eventually(20, "the first route served", || async {
        (get(&format!("http://{proxy}/shared/x"), &[]).await.status == StatusCode::OK).then_some(())
    })
    .await;
    assert_eq!(first.count(), 1);
    assert_eq!(second.count(), 0, "the newer route took the prefix");
    op.stop().await;
}

async fn config_versions(ns: &str) -> (String, String) {
    let c = client().await;
    let cm = Api::<ConfigMap>::namespaced(c.clone(), ns)
        .get(CONFIG_MAP)
        .await
        .unwrap();
    let s = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(c, ns)
        .get(SECRET)
        .await
        .unwrap();
    (
        cm.metadata.resource_version.unwrap(),
        s.metadata.resource_version.unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_operator_writes_nothing_when_nothing_changed() {
    let ns = Namespace::new("restart");
    let op = Operator::start(&ns.0, "op-a").await;
    ns.apply(
        &(secret("keys", "api", "v")
            + &route(
                "api",
                "/api",
                "https://api.example.com",
                "  forwardHeaders:\n  - name: k\n    valueFrom: {name: keys, key: api}",
            )),
    );
    eventually(20, "Ready", || async {
        ready_condition(&ns.0, "api").await.filter(|c| c.0 == "True")
    })
    .await;
    let before = config_versions(&ns.0).await;
    op.stop().await;

    let again = Operator::start(&ns.0, "op-b").await;
    eventually(20, "the restarted operator to reconcile", || async {
        (again.metrics.reconciles_ok() > 0).then_some(())
    })
    .await;
    assert_eq!(
        config_versions(&ns.0).await,
        before,
        "a restart with nothing changed rewrote the ConfigMap or Secret"
    );
    assert_eq!(
        again.metrics.writes("configmap") + again.metrics.writes("secret") + again.metrics.writes("status"),
        0
    );
    again.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_lease_holder_writes_and_another_takes_over() {
    let ns = Namespace::new("lease");
    let a = Operator::start(&ns.0, "op-a").await;
    let b = Operator::start(&ns.0, "op-b").await;
    eventually(20, "a leader", || async { (a.leads() || b.leads()).then_some(()) }).await;
    assert!(!(a.leads() && b.leads()), "two leaders");
    ns.apply(&route("api", "/api", "https://api.example.com", ""));
    eventually(20, "Ready", || async {
        ready_condition(&ns.0, "api").await.filter(|c| c.0 == "True")
    })
    .await;
    let (leader, follower) = if a.leads() { (a, b) } else { (b, a) };
    assert!(leader.metrics.writes("configmap") > 0);
    assert_eq!(
        follower.metrics.writes("configmap") + follower.metrics.writes("status"),
        0,
        "the follower wrote"
    );

    let old = jsonpath(
        &ns.0,
        &format!("configmap/{CONFIG_MAP}"),
        "{.metadata.annotations.keygate\\.dev/snapshot-hash}",
    );
    leader.kill();
    ns.apply(&route("more", "/more", "https://api.example.com", ""));
    let took_over = Instant::now();
    eventually(30, "the follower to take over and write", || async {
        let now = jsonpath(
            &ns.0,
            &format!("configmap/{CONFIG_MAP}"),
            "{.metadata.annotations.keygate\\.dev/snapshot-hash}",
        );
        (now != old).then_some(())
    })
    .await;
    println!(
        "takeover after the leader died: {} ms (lease 3 s)",
        took_over.elapsed().as_millis()
    );
    assert!(follower.leads());
    let lease = Api::<Lease>::namespaced(client().await, &ns.0)
        .get("keygate-operator")
        .await
        .unwrap();
    let spec = lease.spec.unwrap();
    assert!(spec.holder_identity.is_some());
    assert!(spec.lease_transitions.unwrap_or(0) >= 1);
    follower.stop().await;
}
