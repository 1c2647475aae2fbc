//! The Helm chart (`charts/keygate`) on a real API server (`tests/kube-env/up`) with real
//! `helm` (built by `tests/helm-tool/build`) and real kubectl: every `ci/` values file lints,
//! renders and is accepted by a server-side dry run; pods are admitted in a namespace that
//! enforces Pod Security "restricted"; the release binaries run out of cluster with tokens of the
//! chart's own ServiceAccounts and serve a route; RBAC refuses what it must; the audit log shows
//! that nothing the binaries asked was refused and that every granted verb was used; CRDs are
//! upgraded by `helm upgrade` and kept by `helm uninstall`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use http::StatusCode;
use keygate_tests::cluster::{
    Namespace, crd_dir, event, eventually, install_crds, jsonpath, kubectl, kubectl_ok, ok, route, run, secret,
    wait_for_crds,
};
use keygate_tests::{Upstream, get, release_bin};
use serde_json::{Value, json};

const RELEASE: &str = "keygate";

fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/keygate")
}

fn helm(args: &[&str]) -> Output {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("helm-tool/bin/helm");
    assert!(
        bin.is_file(),
        "{} is missing: build it with `tests/helm-tool/build` (helm v4 from the Go module proxy; scripts/test does it)",
        bin.display()
    );
    run(bin.to_str().unwrap(), args, None, "run tests/helm-tool/build")
}

fn helm_ok(args: &[&str]) -> String {
    ok("helm", args, helm(args))
}

/// The chart's `ci/` values files: the shapes every test run renders.
fn ci_values() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(chart_dir().join("ci"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "ci/ lost a values file: {files:?}");
    files
}

/// `helm template` of the chart in `ns`, as parsed documents.
fn render(ns: &str, args: &[&str]) -> Vec<Value> {
    let chart = chart_dir();
    let mut all = vec!["template", RELEASE, chart.to_str().unwrap(), "-n", ns];
    all.extend_from_slice(args);
    documents(&helm_ok(&all))
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .filter_map(|d| serde_yaml::with::singleton_map_recursive::deserialize::<Option<Value>, _>(d).unwrap())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name_suffix: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"].as_str().unwrap().ends_with(name_suffix))
        .unwrap_or_else(|| panic!("no {kind} *{name_suffix} rendered"))
}

/// The CRDs are deleted and recreated by one test (`upgrade_...`); every other cluster test
/// holds this lock shared for its whole run, so none sees the CRDs missing. (Async tests hold
/// it across awaits on purpose: it only ever blocks other tests' threads, each with its own
/// runtime, never a task of the holder's.)
static CRDS: RwLock<()> = RwLock::new(());

fn shared_crds() -> std::sync::RwLockReadGuard<'static, ()> {
    let guard = CRDS.read().unwrap_or_else(|p| p.into_inner());
    install_crds();
    guard
}

/// A namespace that enforces Pod Security "restricted", deleted when dropped.
fn restricted_namespace(prefix: &str) -> Namespace {
    let ns = Namespace::new(prefix);
    kubectl_ok(
        &[
            "label",
            "namespace",
            &ns.0,
            "pod-security.kubernetes.io/enforce=restricted",
        ],
        None,
    );
    ns
}

/// `helm install` of the chart into `ns` (no `--wait`: there is no kubelet), leaving the CRDs
/// to `install_crds`; returns what Helm installed.
fn install(ns: &str, extra: &[&str]) -> Vec<Value> {
    let chart = chart_dir();
    let mut args = vec![
        "install",
        RELEASE,
        chart.to_str().unwrap(),
        "-n",
        ns,
        "--set",
        "crds.enabled=false",
    ];
    args.extend_from_slice(extra);
    helm_ok(&args);
    documents(&helm_ok(&["get", "manifest", RELEASE, "-n", ns]))
}

// ------------------------------------------------------------------ no cluster needed ----

#[test]
fn chart_crds_are_the_generated_ones_with_keep() {
    let docs = render("keygate-system", &[]);
    let crds: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "CustomResourceDefinition")
        .collect();
    let mut files: Vec<_> = std::fs::read_dir(crd_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(crds.len(), files.len(), "the chart renders a different set of CRDs");
    for (rendered, file) in crds.iter().zip(&files) {
        let generated: Value = serde_yaml::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        let mut rendered = (*rendered).clone();
        let meta = rendered["metadata"].as_object_mut().unwrap();
        assert_eq!(
            meta.remove("annotations").unwrap()["helm.sh/resource-policy"],
            "keep",
            "{}",
            file.display()
        );
        assert_eq!(meta.remove("labels").unwrap()["app.kubernetes.io/managed-by"], "Helm");
        assert_eq!(
            rendered,
            generated,
            "the chart's {} differs from crds/manifests (run crdgen)",
            file.display()
        );
    }
    let no_keep = render("keygate-system", &["--set", "crds.keep=false"]);
    let crd = no_keep
        .iter()
        .find(|d| d["kind"] == "CustomResourceDefinition")
        .unwrap();
    assert!(crd["metadata"]["annotations"].get("helm.sh/resource-policy").is_none());
    let off = render("keygate-system", &["--set", "crds.enabled=false"]);
    assert!(!off.iter().any(|d| d["kind"] == "CustomResourceDefinition"));
}

#[test]
fn a_misspelt_value_fails_naming_it_and_global_is_accepted() {
    let chart = chart_dir();
    let chart = chart.to_str().unwrap();
    for (set, named) in [
        ("proxy.replicaz=3", "replicaz"),
        ("operater.replicas=3", "operater"),
        ("proxy.mode=sidecar", "/proxy/mode"),
    ] {
        let out = helm(&["template", RELEASE, chart, "--set", set]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "--set {set} was accepted");
        assert!(stderr.contains(named), "the error does not name {named:?}: {stderr}");
    }
    helm_ok(&["template", RELEASE, chart, "--set", "global.imageRegistry=example.com"]);
}

#[test]
fn every_pod_is_restricted_probed_and_drains_before_it_is_killed() {
    for values in ci_values() {
        let docs = render("keygate-system", &["-f", values.to_str().unwrap()]);
        let deployments: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "Deployment").collect();
        assert_eq!(deployments.len(), 2, "{}", values.display());
        for d in deployments {
            let name = d["metadata"]["name"].as_str().unwrap();
            let pod = &d["spec"]["template"]["spec"];
            assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
            assert_eq!(
                pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
                "{name}"
            );
            let c = &pod["containers"][0];
            let sc = &c["securityContext"];
            assert_eq!(
                (
                    &sc["runAsUser"],
                    &sc["allowPrivilegeEscalation"],
                    &sc["readOnlyRootFilesystem"],
                    &sc["capabilities"]["drop"]
                ),
                (&json!(65532), &json!(false), &json!(true), &json!(["ALL"])),
                "{name}"
            );
            assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz", "{name}");
            assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz", "{name}");
            assert!(c["resources"]["requests"]["memory"].is_string(), "{name}: no resources");
        }
        let proxy = &find(&docs, "Deployment", "-proxy")["spec"]["template"]["spec"];
        let args = proxy["containers"][0]["args"].as_array().unwrap();
        let drain: u64 = args
            .iter()
            .find_map(|a| a.as_str().unwrap().strip_prefix("--drain-timeout-secs="))
            .expect("--drain-timeout-secs")
            .parse()
            .unwrap();
        let pause = proxy["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
            .as_u64()
            .unwrap();
        assert_eq!(
            proxy["terminationGracePeriodSeconds"].as_u64().unwrap(),
            pause + drain + 5,
            "{}: the grace period does not cover the preStop pause and the drain",
            values.display()
        );
        let config_dir = args.iter().any(|a| a == "--config-dir=/etc/keygate/config");
        assert_eq!(
            proxy["automountServiceAccountToken"],
            !config_dir,
            "{}",
            values.display()
        );
        assert_eq!(
            docs.iter()
                .any(|d| d["kind"] == "Role" && d["metadata"]["name"].as_str().unwrap().ends_with("-proxy")),
            !config_dir,
            "{}: a configDir proxy needs no Role, a kube one does",
            values.display()
        );
    }
}

#[test]
fn service_monitors_render_only_when_the_api_serves_them() {
    let everything = chart_dir().join("ci/everything-values.yaml");
    let count = |extra: &[&str]| {
        let mut args = vec!["-f", everything.to_str().unwrap()];
        args.extend_from_slice(extra);
        render("keygate-system", &args)
            .iter()
            .filter(|d| d["kind"] == "ServiceMonitor")
            .count()
    };
    assert_eq!(count(&[]), 0);
    assert_eq!(count(&["--api-versions", "monitoring.coreos.com/v1/ServiceMonitor"]), 2);
}

/// `values.schema.json`, `values.yaml` and the README's table name the same values, with the
/// same defaults, and every value has a description.
#[test]
fn readme_values_table_matches_values_yaml_and_the_schema() {
    let dir = chart_dir();
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("values.schema.json")).unwrap()).unwrap();
    let values: Value = serde_yaml::from_str(&std::fs::read_to_string(dir.join("values.yaml")).unwrap()).unwrap();
    // A value is a leaf where the schema stops listing properties (maps, lists, scalars).
    fn leaves(schema: &Value, values: &Value, path: String, out: &mut BTreeMap<String, String>) {
        assert_eq!(
            schema.get("additionalProperties"),
            if schema.get("properties").is_some() {
                Some(&json!(false))
            } else {
                schema.get("additionalProperties")
            },
            "{path}: the schema is not strict"
        );
        match schema.get("properties").and_then(Value::as_object) {
            Some(props) => {
                let keys: BTreeSet<&String> = props.keys().collect();
                let have: BTreeSet<&String> = values.as_object().unwrap().keys().collect();
                assert_eq!(
                    keys, have,
                    "{path}: values.yaml and values.schema.json list different keys"
                );
                for (k, s) in props {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    leaves(s, &values[k], p, out);
                }
            }
            None => {
                out.insert(path, serde_json::to_string(values).unwrap());
            }
        }
    }
    let mut want = BTreeMap::new();
    leaves(&schema, &values, String::new(), &mut want);

    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    let mut have = BTreeMap::new();
    for line in readme.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
        let [key, default, description] = cells[..] else {
            panic!("README row is not `| value | default | what |`: {line}")
        };
        assert!(description.len() > 10, "{key}: no description in the README");
        have.insert(key.trim_matches('`').to_string(), default.trim_matches('`').to_string());
    }
    let expected_rows: Vec<String> = want
        .iter()
        .filter(|(k, v)| have.get(*k) != Some(v))
        .map(|(k, v)| format!("| `{k}` | `{v}` | ... |"))
        .collect();
    let extra: Vec<&String> = have.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(
        expected_rows.is_empty() && extra.is_empty(),
        "charts/keygate/README.md is out of step with values.yaml:\nmissing or wrong rows:\n{}\nrows of no value: {extra:?}",
        expected_rows.join("\n")
    );
}

// ------------------------------------------------------------------ on the API server ----

/// Issue point 1: lint, render, and a server-side dry run of every object.
#[test]
fn each_ci_values_file_lints_renders_and_the_api_server_accepts_every_object() {
    let _crds = shared_crds();
    let ns = Namespace::new("chart-ci");
    let chart = chart_dir();
    for values in ci_values() {
        let values = values.to_str().unwrap();
        let lint = helm_ok(&["lint", "--strict", chart.to_str().unwrap(), "-f", values]);
        assert!(lint.contains("0 chart(s) failed"), "{lint}");
        let docs = render(&ns.0, &["-f", values]);
        // Roles go into the watched namespaces, which must exist for the dry run.
        for d in &docs {
            if let Some(other) = d["metadata"]["namespace"].as_str().filter(|n| *n != ns.0) {
                let yaml = format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {other}}}\n");
                kubectl_ok(&["apply", "-f", "-"], Some(&yaml));
            }
        }
        let yaml: String = docs
            .iter()
            .map(|d| format!("---\n{}", serde_yaml::to_string(d).unwrap()))
            .collect();
        let out = kubectl_ok(
            &[
                "apply",
                "--server-side",
                "--force-conflicts",
                "--dry-run=server",
                "-f",
                "-",
            ],
            Some(&yaml),
        );
        assert_eq!(
            out.lines().filter(|l| l.ends_with("(server dry run)")).count(),
            docs.len(),
            "{values}: not every object was accepted:\n{out}"
        );
    }
}

/// Issue point 2: the Deployments' pods pass Pod Security "restricted" admission.
#[test]
fn pods_of_every_shape_are_admitted_in_a_restricted_namespace() {
    let _crds = shared_crds();
    let ns = restricted_namespace("chart-psa");
    // PodSecurity is really enforced here: a plain pod is refused.
    let refused = kubectl(&["run", "plain", "--image=example.com/x", "-n", &ns.0], None);
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("violates PodSecurity \"restricted"),
        "the namespace does not enforce restricted: {}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let chart = chart_dir();
    for values in ["defaults", "config-dir", "everything"] {
        let file = chart.join(format!("ci/{values}-values.yaml"));
        helm_ok(&[
            "install",
            values,
            chart.to_str().unwrap(),
            "-n",
            &ns.0,
            "-f",
            file.to_str().unwrap(),
            "--set",
            "crds.enabled=false",
        ]);
    }
    let deployments: Value =
        serde_json::from_str(&kubectl_ok(&["get", "deployments", "-n", &ns.0, "-o", "json"], None)).unwrap();
    let want: u64 = deployments["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["spec"]["replicas"].as_u64().unwrap())
        .sum();
    assert_eq!(deployments["items"].as_array().unwrap().len(), 6);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pods = kubectl_ok(&["get", "pods", "-n", &ns.0, "-o", "name"], None);
        let failed = kubectl_ok(
            &[
                "get",
                "events",
                "-n",
                &ns.0,
                "--field-selector",
                "reason=FailedCreate",
                "-o",
                "jsonpath={.items[*].message}",
            ],
            None,
        );
        assert!(
            failed.is_empty(),
            "the ReplicaSet controller could not create pods: {failed}"
        );
        if pods.lines().count() as u64 == want {
            break;
        }
        assert!(Instant::now() < deadline, "{want} pods expected, have:\n{pods}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// An out-of-cluster kubeconfig holding a token of the chart's ServiceAccount `account`.
fn kubeconfig_for(ns: &str, account: &str, dir: &Path) -> PathBuf {
    let token = kubectl_ok(&["create", "token", account, "-n", ns, "--duration=1h"], None);
    let field = |p: &str| {
        kubectl_ok(
            &["config", "view", "--raw", "--minify", "-o", &format!("jsonpath={p}")],
            None,
        )
    };
    let config = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: {}, certificate-authority-data: {}}}\nusers:\n- name: u\n  user: {{token: {}}}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u, namespace: {ns}}}\ncurrent-context: c\n",
        field("{.clusters[0].cluster.server}"),
        field("{.clusters[0].cluster.certificate-authority-data}"),
        token.trim()
    );
    let path = dir.join(format!("{account}.kubeconfig"));
    std::fs::write(&path, config).unwrap();
    path
}

/// A Keygate binary started the way the chart's Deployment starts it (its args and env), out
/// of cluster, with its log (JSON, as the chart sets) collected.
struct Running {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Running {
    /// Starts `binary` with the container spec of `deployment`; `env` overrides the pod's
    /// environment (the Downward API values, loopback listen addresses). Returns once a log
    /// line carries every field of `ready_fields`, with their values.
    fn start(
        binary: &str,
        deployment: &Value,
        env: &[(&str, String)],
        ready_fields: &[&str],
    ) -> (Running, BTreeMap<String, String>) {
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        let mut cmd = Command::new(release_bin(binary));
        for a in container["args"].as_array().unwrap() {
            cmd.arg(a.as_str().unwrap());
        }
        cmd.env_clear();
        for e in container["env"].as_array().unwrap() {
            if let Some(v) = e["value"].as_str() {
                cmd.env(e["name"].as_str().unwrap(), v);
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let (stderr, log2) = (child.stderr.take().unwrap(), log.clone());
        let fields: Vec<String> = ready_fields.iter().map(|f| f.to_string()).collect();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let found: BTreeMap<String, String> = fields
                        .iter()
                        .filter_map(|f| Some((f.clone(), v["fields"][f].as_str()?.to_string())))
                        .collect();
                    if found.len() == fields.len() {
                        let _ = tx.send(found);
                    }
                }
                log2.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let found = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("{binary} did not start:\n{}", log.lock().unwrap()));
        (Running { child, log }, found)
    }

    /// SIGTERM, as the kubelet stops a pod, and waits for the exit.
    fn stop(mut self) -> String {
        terminate(self.child.id());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "exited with {status}:\n{}", self.log.lock().unwrap());
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn terminate(pid: u32) {
    let out = Command::new("kill").args(["-TERM", &pid.to_string()]).output().unwrap();
    assert!(out.status.success());
}

/// The Ready condition's (status, reason) of a Keygate resource, once written.
fn ready(ns: &str, object: &str) -> Option<(String, String)> {
    let out = jsonpath(
        ns,
        object,
        "{.status.conditions[?(@.type==\"Ready\")].status}/{.status.conditions[?(@.type==\"Ready\")].reason}",
    );
    let (status, reason) = out.split_once('/')?;
    (!status.is_empty()).then(|| (status.to_string(), reason.to_string()))
}

/// One audited request: who, what, and the answer.
#[derive(Debug)]
struct Audited {
    user: String,
    user_agent: String,
    verb: String,
    resource: String,
    code: u64,
}

/// Every request the audit log (Metadata level, see tests/kube-env/up) holds.
fn audit_log() -> Vec<Audited> {
    let kubeconfig = PathBuf::from(std::env::var_os("KUBECONFIG").expect("KUBECONFIG"));
    let path = kubeconfig.parent().unwrap().join("audit.log");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; tests/kube-env/up writes the audit log there", path.display()));
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["stage"] == "ResponseComplete" || e["stage"] == "ResponseStarted")
        .map(|e| {
            let o = &e["objectRef"];
            let mut resource = format!(
                "{}/{}",
                o["apiGroup"].as_str().unwrap_or(""),
                o["resource"].as_str().unwrap_or("")
            );
            if let Some(sub) = o["subresource"].as_str() {
                resource = format!("{resource}/{sub}");
            }
            Audited {
                user: e["user"]["username"].as_str().unwrap_or("").to_string(),
                user_agent: e["userAgent"].as_str().unwrap_or("").to_string(),
                verb: e["verb"].as_str().unwrap_or("").to_string(),
                resource,
                code: e["responseStatus"]["code"].as_u64().unwrap_or(0),
            }
        })
        .collect()
}

/// `(apiGroup/resource, verb)` pairs the chart's Roles and ClusterRoles grant `account`.
fn granted(docs: &[Value], account: &str) -> BTreeSet<(String, String)> {
    let roles: BTreeSet<&str> = docs
        .iter()
        .filter(|d| d["kind"] == "RoleBinding" || d["kind"] == "ClusterRoleBinding")
        .filter(|d| d["subjects"][0]["name"] == account)
        .map(|d| d["roleRef"]["name"].as_str().unwrap())
        .collect();
    let mut out = BTreeSet::new();
    for role in docs.iter().filter(|d| {
        (d["kind"] == "Role" || d["kind"] == "ClusterRole") && roles.contains(d["metadata"]["name"].as_str().unwrap())
    }) {
        for rule in role["rules"].as_array().unwrap() {
            for group in rule["apiGroups"].as_array().unwrap() {
                for resource in rule["resources"].as_array().unwrap() {
                    for verb in rule["verbs"].as_array().unwrap() {
                        out.insert((
                            format!("{}/{}", group.as_str().unwrap(), resource.as_str().unwrap()),
                            verb.as_str().unwrap().to_string(),
                        ));
                    }
                }
            }
        }
    }
    out
}

/// Issue point 5 for one account: none of the binary's requests was refused, and every granted
/// verb was used, or `rbac.yaml` says when it is needed (`documented`).
fn assert_enough_and_no_more(docs: &[Value], ns: &str, account: &str, documented: &[(&str, &str, &str)]) {
    let user = format!("system:serviceaccount:{ns}:{account}");
    // kubectl requests made with the account's token on purpose (to be refused) are not the binary's.
    let requests: Vec<Audited> = audit_log()
        .into_iter()
        .filter(|a| a.user == user && !a.user_agent.starts_with("kubectl"))
        .collect();
    assert!(!requests.is_empty(), "the audit log has no request of {user}");
    let refused: Vec<&Audited> = requests.iter().filter(|a| a.code == 403).collect();
    assert!(refused.is_empty(), "{user} was refused: {refused:#?}");
    let used: BTreeSet<(String, String)> = requests
        .iter()
        .flat_map(|a| {
            let mut verbs = vec![(a.resource.clone(), a.verb.clone())];
            // A server-side apply that created its object (201) was also authorized as create.
            if a.verb == "patch" && a.code == 201 {
                verbs.push((a.resource.clone(), "create".to_string()));
            }
            verbs
        })
        .collect();
    let rbac = std::fs::read_to_string(chart_dir().join("templates/rbac.yaml")).unwrap();
    for (resource, verb) in granted(docs, account) {
        if used.contains(&(resource.clone(), verb.clone())) {
            continue;
        }
        let (_, _, why) = documented
            .iter()
            .find(|(r, v, _)| *r == resource && *v == verb)
            .unwrap_or_else(|| panic!("{account} is granted {verb} on {resource} but never used it: remove it"));
        assert!(
            rbac.contains(why),
            "rbac.yaml does not say when {verb} on {resource} is needed"
        );
    }
}

/// `(resource, verb, the words of rbac.yaml's comment that says when)` for each verb the chart
/// grants for a case a short run need not meet.
const NEEDED_LATER: &[(&str, &str, &str)] = &[(
    "events.k8s.io/events",
    "patch",
    "patch: needed only when the same event repeats",
)];

/// The resources that make the operator use every verb it is granted: one of each kind, a
/// Secret-backed route that is served, and a route whose Secret is missing (a Warning Event).
fn app_resources(upstream: &str, prefix: &str) -> String {
    let key = "dGhpcnR5LXR3by1ieXRlLWNvb2tpZS1rZXktLS0tLS0=";
    secret("keys", "api", "chart-e2e-secret-key")
        + &secret("cookie-keys", "current", key)
        + &secret("app-keys", "web", "chart-app-key")
        + &route(
            "api",
            &format!("{prefix}/api"),
            upstream,
            "  forwardHeaders:\n  - name: x-api-key\n    valueFrom: {name: keys, key: api}",
        )
        + &route(
            "broken",
            &format!("{prefix}/broken"),
            upstream,
            "  forwardHeaders:\n  - name: x-api-key\n    valueFrom: {name: not-there, key: api}",
        )
        + "apiVersion: keygate.dev/v1alpha1\nkind: ExternalAllowlist\nmetadata: {name: partners}\nspec: {hosts: [api.partner.example]}\n---\n"
        + "apiVersion: keygate.dev/v1alpha1\nkind: TokenVaultRule\nmetadata: {name: cards}\nspec:\n  source: {store: none}\n  permissions: [{classification: general}]\n---\n"
        + &format!(
            "apiVersion: keygate.dev/v1alpha1\nkind: SessionChainPolicy\nmetadata: {{name: web}}\nspec: {{createPath: {prefix}/session, apiKeysSecretRef: {{name: app-keys}}, store: memory}}\n---\n"
        )
        + &format!(
            "apiVersion: keygate.dev/v1alpha1\nkind: CookieTranslation\nmetadata: {{name: login}}\nspec:\n  cookie: {{name: sid}}\n  header: {{name: Authorization}}\n  sessionStart: {{path: {prefix}/login, tokenPointer: /token}}\n  encryptionKeys: [{{name: cookie-keys, key: current}}]\n"
        )
}

const KINDS: [&str; 5] = [
    "proxyroute/api",
    "externalallowlist/partners",
    "tokenvaultrule/cards",
    "sessionchainpolicy/web",
    "cookietranslation/login",
];

/// Issue points 3 and 5: the release binaries, with tokens of the chart's own ServiceAccounts
/// and the chart's args, do the whole job; the audit log shows enough and no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock)] // see CRDS
async fn chart_accounts_run_keygate_end_to_end_with_exactly_the_rbac_they_need() {
    let _crds = shared_crds();
    let sys = restricted_namespace("chart-sys");
    let app = Namespace::new("chart-app");
    let docs = install(&sys.0, &[]);
    let dir = tempfile::tempdir().unwrap();
    let env = |account: &str| {
        vec![
            (
                "KUBECONFIG",
                kubeconfig_for(&sys.0, account, dir.path()).display().to_string(),
            ),
            ("POD_NAMESPACE", sys.0.clone()),
            ("POD_NAME", format!("{account}-e2e")),
        ]
    };

    let mut op_env = env("keygate-operator");
    op_env.push(("KEYGATE_METRICS_LISTEN", "127.0.0.1:0".into()));
    let (operator, _) = Running::start(
        "keygate-operator",
        find(&docs, "Deployment", "-operator"),
        &op_env,
        &["metrics"],
    );
    let mut proxy_env = env("keygate-proxy");
    proxy_env.push(("KEYGATE_LISTEN", "127.0.0.1:0".into()));
    proxy_env.push(("KEYGATE_ADMIN_LISTEN", "127.0.0.1:0".into()));
    let (proxy, addrs) = Running::start(
        "keygate-proxy",
        find(&docs, "Deployment", "-proxy"),
        &proxy_env,
        &["proxy", "admin"],
    );

    let up = Upstream::ok().await;
    let prefix = format!("/{}", app.0);
    let url = format!("http://{}{prefix}/api/x", addrs["proxy"]);
    let applied = Instant::now();
    app.apply(&app_resources(&up.url(), &prefix));
    eventually(30, "the route to be served", || async {
        (get(&url, &[]).await.status == StatusCode::OK).then_some(())
    })
    .await;
    println!(
        "apply-to-serving with the chart's accounts: {} ms (kubectl apply → operator → ConfigMap/Secret → proxy watch)",
        applied.elapsed().as_millis()
    );
    assert_eq!(up.last().headers["x-api-key"], "chart-e2e-secret-key");

    for object in KINDS {
        let (status, reason) = eventually(30, &format!("{object} Ready"), || async { ready(&app.0, object) }).await;
        assert_eq!((status.as_str(), reason.as_str()), ("True", "Accepted"), "{object}");
    }
    assert_eq!(ready(&app.0, "proxyroute/broken").unwrap().1, "SecretNotFound");
    event(&app.0, "SecretNotFound", 20).await;
    let holder = jsonpath(&sys.0, "lease/keygate-operator", "{.spec.holderIdentity}");
    assert_eq!(holder, "keygate-operator-e2e");
    for object in ["configmap/keygate-config", "secret/keygate-secrets"] {
        jsonpath(&sys.0, object, "{.metadata.name}");
    }

    // A graceful stop releases the Lease (update) and drains the proxy.
    let logs = operator.stop() + &proxy.stop();
    for value in ["chart-e2e-secret-key", "chart-app-key"] {
        assert!(!logs.contains(value), "a secret value reached the logs");
    }
    assert_enough_and_no_more(&docs, &sys.0, "keygate-operator", NEEDED_LATER);
    assert_enough_and_no_more(&docs, &sys.0, "keygate-proxy", &[]);
}

/// Issue point 4: the proxy's account reads the two objects and nothing else; with
/// `watchNamespaces` the operator reads Secrets only there, and still does its job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock)] // see CRDS
async fn rbac_refuses_the_proxy_other_secrets_and_the_operator_unwatched_namespaces() {
    let _crds = shared_crds();
    let sys = restricted_namespace("chart-rbac");
    let (watched, other) = (Namespace::new("chart-watched"), Namespace::new("chart-other"));
    let docs = install(
        &sys.0,
        &["--set", &format!("operator.watchNamespaces[0]={}", watched.0)],
    );

    let can = |account: &str, verb: &str, what: &str, ns: &str| {
        let who = format!("--as=system:serviceaccount:{}:{account}", sys.0);
        kubectl(&["auth", "can-i", verb, what, "-n", ns, &who], None)
            .status
            .success()
    };
    let proxy = |verb, what| can("keygate-proxy", verb, what, &sys.0);
    assert!(proxy("watch", "secrets/keygate-secrets") && proxy("list", "configmaps/keygate-config"));
    for (verb, what) in [
        ("get", "secrets/other"),
        ("list", "secrets"),
        ("watch", "secrets"),
        ("get", "configmaps/other"),
        ("list", "proxyroutes"),
        ("create", "secrets"),
    ] {
        assert!(!proxy(verb, what), "the proxy may {verb} {what}");
    }
    let operator = |verb, what, ns| can("keygate-operator", verb, what, ns);
    assert!(operator("list", "secrets", &watched.0) && operator("watch", "proxyroutes", &watched.0));
    for (verb, what, ns) in [
        ("list", "secrets", other.0.as_str()),
        ("list", "proxyroutes", &other.0),
        ("get", "secrets/anything", &other.0),
        ("get", "secrets/other", &sys.0),
        ("list", "secrets", &sys.0),
        ("delete", "leases/keygate-operator", &sys.0),
    ] {
        assert!(!operator(verb, what, ns), "the operator may {verb} {what} in {ns}");
    }

    // The same with real requests and the real tokens.
    let dir = tempfile::tempdir().unwrap();
    let as_account = |account: &str, args: &[&str]| {
        let kubeconfig = kubeconfig_for(&sys.0, account, dir.path());
        let mut all = vec!["--kubeconfig", kubeconfig.to_str().unwrap()];
        all.extend_from_slice(args);
        kubectl(&all, None)
    };
    kubectl_ok(
        &[
            "create",
            "secret",
            "generic",
            "other",
            "-n",
            &sys.0,
            "--from-literal=k=chart-other-value",
        ],
        None,
    );
    for args in [
        &["get", "secret", "other", "-n", &sys.0][..],
        &["get", "secrets", "-n", &sys.0],
        &["get", "secrets", "-A"],
    ] {
        let out = as_account("keygate-proxy", args);
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Forbidden"),
            "the proxy's token could run {args:?}"
        );
    }
    let named = as_account(
        "keygate-proxy",
        &[
            "get",
            "secrets",
            "-n",
            &sys.0,
            "--field-selector",
            "metadata.name=keygate-secrets",
        ],
    );
    assert!(named.status.success(), "{}", String::from_utf8_lossy(&named.stderr));
    let elsewhere = as_account("keygate-operator", &["get", "secrets", "-n", &other.0]);
    assert!(String::from_utf8_lossy(&elsewhere.stderr).contains("Forbidden"));

    // With only its Roles, the operator compiles the watched namespace and ignores the other.
    // (Its snapshot is the proof: another test's operator may watch every namespace and write
    // statuses here.)
    let env = vec![
        (
            "KUBECONFIG",
            kubeconfig_for(&sys.0, "keygate-operator", dir.path())
                .display()
                .to_string(),
        ),
        ("POD_NAMESPACE", sys.0.clone()),
        ("POD_NAME", "watching-e2e".to_string()),
        ("KEYGATE_METRICS_LISTEN", "127.0.0.1:0".to_string()),
    ];
    let (op, _) = Running::start(
        "keygate-operator",
        find(&docs, "Deployment", "-operator"),
        &env,
        &["metrics"],
    );
    watched.apply(&route("api", &format!("/{}", watched.0), "https://api.example.com", ""));
    other.apply(&route("api", &format!("/{}", other.0), "https://api.example.com", ""));
    let snapshot = eventually(30, "the watched route in the snapshot", || async {
        let out = kubectl(
            &[
                "get",
                "configmap/keygate-config",
                "-n",
                &sys.0,
                "-o",
                "jsonpath={.data.snapshot\\.json}",
            ],
            None,
        );
        let snapshot = String::from_utf8(out.stdout).unwrap();
        snapshot.contains(&format!("/{}", watched.0)).then_some(snapshot)
    })
    .await;
    assert!(
        !snapshot.contains(&other.0),
        "the operator read an unwatched namespace: {snapshot}"
    );
    assert!(!op.stop().contains("chart-other-value"));
    // Lease create, status and Events aside, this run used only what its Roles grant.
    let refused: Vec<Audited> = audit_log()
        .into_iter()
        .filter(|a| {
            a.user.ends_with(&format!("{}:keygate-operator", sys.0))
                && !a.user_agent.starts_with("kubectl")
                && a.code == 403
        })
        .collect();
    assert!(refused.is_empty(), "the operator was refused: {refused:#?}");
}

/// Issue point 6: `helm upgrade` applies a changed CRD; `helm uninstall` leaves the CRDs and
/// the resources in place.
#[test]
fn upgrade_updates_crds_and_uninstall_keeps_them_and_every_resource() {
    // Alone: this test deletes the CRDs, so Helm installs them as on a fresh cluster (kubectl's
    // earlier server-side apply would otherwise co-own their fields; see the README).
    let _alone = CRDS.write().unwrap_or_else(|p| p.into_inner());
    install_crds();
    kubectl_ok(&["delete", "--wait=true", "-f", crd_dir()], None);
    let ns = Namespace::new("chart-upgrade");
    let chart = chart_dir();
    helm_ok(&["install", RELEASE, chart.to_str().unwrap(), "-n", &ns.0]);
    wait_for_crds();
    ns.apply(&route("kept", "/kept", "https://api.example.com", ""));

    let changed = tempfile::tempdir().unwrap();
    copy_dir(&chart, changed.path());
    let crd = changed.path().join("files/crds/proxyroutes.keygate.dev.yaml");
    let text = std::fs::read_to_string(&crd).unwrap();
    let column = "  - additionalPrinterColumns:\n    - jsonPath: .metadata.generation\n      name: Generation\n      type: integer\n";
    assert!(text.contains("  - additionalPrinterColumns:\n"));
    std::fs::write(&crd, text.replacen("  - additionalPrinterColumns:\n", column, 1)).unwrap();
    helm_ok(&["upgrade", RELEASE, changed.path().to_str().unwrap(), "-n", &ns.0]);
    let columns = kubectl_ok(
        &[
            "get",
            "crd",
            "proxyroutes.keygate.dev",
            "-o",
            "jsonpath={.spec.versions[0].additionalPrinterColumns[*].name}",
        ],
        None,
    );
    assert!(
        columns.starts_with("Generation "),
        "helm upgrade did not update the CRD: {columns}"
    );

    helm_ok(&["uninstall", RELEASE, "-n", &ns.0]);
    let crds = kubectl_ok(&["get", "crds", "-o", "name"], None);
    assert_eq!(
        crds.matches(".keygate.dev").count(),
        keygate_crds::resources::crds().len(),
        "uninstall deleted CRDs: {crds}"
    );
    assert_eq!(jsonpath(&ns.0, "proxyroute/kept", "{.metadata.name}"), "kept");
    assert!(
        kubectl(&["get", "deployment", "keygate-operator", "-n", &ns.0], None)
            .status
            .code()
            == Some(1)
    );

    // Leave the CRDs as every other test expects them.
    kubectl_ok(&["apply", "--server-side", "--force-conflicts", "-f", crd_dir()], None);
    wait_for_crds();
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
