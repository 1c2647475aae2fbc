//! What the end-to-end tests against a real API server (`tests/kube-env/up`) share: kubectl,
//! the CRDs installed once per test process, a namespace per test, and polling.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

pub fn kubeconfig_hint() -> &'static str {
    "these tests need a real API server: run `tests/kube-env/up` and `export KUBECONFIG=tests/kube-env/run/kubeconfig` (scripts/test does both)"
}

/// Runs `program` with `args`, feeding `stdin` if given.
pub fn run(program: &str, args: &[&str], stdin: Option<&str>, install_hint: &str) -> Output {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{program} not runnable ({e}); {install_hint}"));
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

/// Stdout of a command that must succeed.
pub fn ok(program: &str, args: &[&str], out: Output) -> String {
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn kubectl(args: &[&str], stdin: Option<&str>) -> Output {
    run("kubectl", args, stdin, "install kubectl")
}

pub fn kubectl_ok(args: &[&str], stdin: Option<&str>) -> String {
    ok("kubectl", args, kubectl(args, stdin))
}

/// The generated CRDs, as `kubectl apply -f` takes them.
pub fn crd_dir() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/manifests")
}

/// Installs (or restores) the generated CRDs once per test process and waits until they are
/// served. `--force-conflicts`: the chart tests install the same CRDs with Helm, whose field
/// manager then co-owns them.
pub fn install_crds() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        crate::logs::capture();
        assert!(std::env::var_os("KUBECONFIG").is_some(), "{}", kubeconfig_hint());
        let out = kubectl(&["apply", "--server-side", "--force-conflicts", "-f", crd_dir()], None);
        assert!(
            out.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            kubeconfig_hint()
        );
        wait_for_crds();
    });
}

/// Waits until every generated CRD is served.
pub fn wait_for_crds() {
    kubectl_ok(
        &["wait", "--for=condition=Established", "--timeout=60s", "-f", crd_dir()],
        None,
    );
}

/// One field of an object, by kubectl's JSONPath.
pub fn jsonpath(ns: &str, object: &str, path: &str) -> String {
    kubectl_ok(&["get", object, "-n", ns, "-o", &format!("jsonpath={path}")], None)
}

/// A fresh namespace, deleted when dropped.
pub struct Namespace(pub String);

impl Namespace {
    pub fn new(prefix: &str) -> Namespace {
        install_crds();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!("e2e-{prefix}-{nanos:x}");
        kubectl_ok(&["create", "namespace", &name], None);
        Namespace(name)
    }

    pub fn apply(&self, yaml: &str) {
        kubectl_ok(&["apply", "-n", &self.0, "-f", "-"], Some(yaml));
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = kubectl(&["delete", "namespace", &self.0, "--wait=false"], None);
    }
}

/// Polls `check` every 50 ms until it returns `Some`, or fails after `secs`.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {secs}s waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits up to `secs` for an Event with `reason` in `ns`.
pub async fn event(ns: &str, reason: &str, secs: u64) {
    eventually(secs, &format!("a {reason} event"), || async {
        jsonpath(ns, "events", "{.items[*].reason}")
            .contains(reason)
            .then_some(())
    })
    .await;
}

pub fn secret(name: &str, key: &str, value: &str) -> String {
    format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}}}\nstringData:\n  {key}: {value}\n---\n")
}

pub fn route(name: &str, prefix: &str, upstream: &str, extra: &str) -> String {
    format!(
        "apiVersion: keygate.dev/v1alpha1\nkind: ProxyRoute\nmetadata: {{name: {name}}}\nspec:\n  pathPrefix: {prefix}\n  upstream: {upstream}\n{extra}\n---\n"
    )
}
