//! Many teams on one Keygate, end to end against a real API server (`tests/kube-env/up`): two
//! app namespaces and a platform namespace, routes told apart by host, a platform policy shared
//! by reference with the namespaces its `allowedNamespaces` admits (which follows a namespace's
//! labels), and a `KeygateDelegation` refusing claims outside it — each change taking effect
//! without restarting anything.

use http::StatusCode;
use keygate_tests::cluster::{Namespace, eventually, kubectl, kubectl_ok, route};
use keygate_tests::{Upstream, get};

mod inproc;
use inproc::{Operator, kube_proxy, ready_condition};

const TENANT_LABEL: &str = "keygate.dev/tenant";

/// Waits for the route's `Ready` condition to have `status`, and returns its reason and message.
async fn ready_is(ns: &str, name: &str, status: &str) -> (String, String) {
    eventually(30, &format!("{ns}/{name} Ready={status}"), || async {
        ready_condition(ns, name)
            .await
            .filter(|(s, _, _)| s == status)
            .map(|(_, reason, message)| (reason, message))
    })
    .await
}

#[tokio::test]
async fn apps_on_their_own_hosts_and_a_policy_shared_by_label() {
    let (platform, shop, blog) = (
        Namespace::new("platform"),
        Namespace::new("shop"),
        Namespace::new("blog"),
    );
    kubectl_ok(&["label", "namespace", &shop.0, &format!("{TENANT_LABEL}=true")], None);
    let (shop_up, blog_up) = (Upstream::ok().await, Upstream::ok().await);
    let op = Operator::watching(&platform.0, &[&platform.0, &shop.0, &blog.0], "op-a").await;
    let (proxy, _) = kube_proxy(&platform.0).await;

    platform.apply(&format!(
        "apiVersion: keygate.dev/v1alpha1
kind: TokenVaultRule
metadata: {{name: cards}}
spec:
  source: {{}}
  permissions: [{{classification: pci}}]
  allowedNamespaces: {{from: Selector, selector: {{matchLabels: {{{TENANT_LABEL}: 'true'}}}}}}
"
    ));
    let shared = format!("  vaultRuleRefs: [{}/cards]", platform.0);
    shop.apply(&route(
        "api",
        "/api",
        &shop_up.url(),
        &format!("  hosts: [shop.e2e.example]\n{shared}"),
    ));
    blog.apply(
        &(route("api", "/api", &blog_up.url(), "  hosts: ['*.blog.e2e.example']")
            + &route("cards", "/cards", &blog_up.url(), &shared)),
    );

    ready_is(&shop.0, "api", "True").await;
    ready_is(&blog.0, "api", "True").await;
    let (reason, message) = ready_is(&blog.0, "cards", "False").await;
    assert_eq!(reason, "RefNotPermitted");
    assert!(
        message.contains(&format!("TokenVaultRule {}/cards", platform.0))
            && message.contains(&format!("label namespace {} to match it", blog.0)),
        "{message}"
    );

    // Both apps have /api; the host decides.
    let on = |host: &'static str| {
        let url = format!("http://{proxy}/api/x");
        async move { get(&url, &[("host", host)]).await.status }
    };
    eventually(30, "both hosts served", || async {
        (on("shop.e2e.example").await == StatusCode::OK && on("www.blog.e2e.example:8080").await == StatusCode::OK)
            .then_some(())
    })
    .await;
    assert!(shop_up.count() >= 1 && blog_up.count() >= 1);
    assert_eq!(on("other.e2e.example").await, StatusCode::NOT_FOUND);

    let table = kubectl_ok(&["get", "proxyroutes", "-A"], None);
    let shop_line = table.lines().find(|l| l.starts_with(&shop.0)).unwrap_or_default();
    assert!(
        shop_line.contains("shop.e2e.example") && shop_line.contains("/api"),
        "kubectl get shows host and prefix:\n{table}"
    );

    // The platform admits the blog by labelling its namespace: the refused reference is served,
    // with nothing restarted.
    kubectl_ok(&["label", "namespace", &blog.0, &format!("{TENANT_LABEL}=true")], None);
    ready_is(&blog.0, "cards", "True").await;
    eventually(30, "the shared rule's route served", || async {
        (get(&format!("http://{proxy}/cards/x"), &[]).await.status == StatusCode::OK).then_some(())
    })
    .await;

    // Delegation is cluster-wide, so it is tried last, in this one test, and removed after.
    let shop_delegation = Delegation(format!("e2e-{}", shop.0));
    shop_delegation.apply(&shop.0, "[shop.e2e.example]");
    let (reason, message) = ready_is(&blog.0, "api", "False").await;
    assert_eq!(reason, "NotPermitted");
    assert!(
        message.contains(&format!("no KeygateDelegation covers namespace {}", blog.0)),
        "{message}"
    );
    ready_is(&shop.0, "api", "True").await;
    shop.apply(&route(
        "squat",
        "/api",
        &shop_up.url(),
        "  hosts: [www.blog.e2e.example]",
    ));
    let (reason, message) = ready_is(&shop.0, "squat", "False").await;
    assert_eq!(reason, "NotPermitted");
    assert!(
        message.contains(&format!("KeygateDelegation {}", shop_delegation.0)),
        "{message}"
    );
    eventually(30, "the blog's host no longer served", || async {
        (on("www.blog.e2e.example").await == StatusCode::NOT_FOUND).then_some(())
    })
    .await;

    // The platform team delegates the blog its hosts: served again, nothing restarted, and the
    // shop's squatting claim still refused.
    let blog_delegation = Delegation(format!("e2e-{}", blog.0));
    blog_delegation.apply(&blog.0, "['*.blog.e2e.example']");
    ready_is(&blog.0, "api", "True").await;
    eventually(30, "the blog served again", || async {
        (on("www.blog.e2e.example").await == StatusCode::OK).then_some(())
    })
    .await;
    assert_eq!(ready_is(&shop.0, "squat", "False").await.0, "NotPermitted");
    op.stop().await;
}

/// A `KeygateDelegation` of the test's, deleted when dropped.
struct Delegation(String);

impl Delegation {
    /// Delegates `hosts` (a YAML list), with any prefix, to namespace `ns`.
    fn apply(&self, ns: &str, hosts: &str) {
        let yaml = format!(
            "apiVersion: keygate.dev/v1alpha1\nkind: KeygateDelegation\nmetadata: {{name: {}}}\nspec: {{namespaces: [{ns}], hosts: {hosts}}}\n",
            self.0
        );
        kubectl_ok(&["apply", "-f", "-"], Some(&yaml));
    }
}

impl Drop for Delegation {
    fn drop(&mut self) {
        let _ = kubectl(&["delete", "keygatedelegation", &self.0, "--wait=false"], None);
    }
}
