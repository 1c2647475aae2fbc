//! Where configuration comes from and how it reaches the live [`Config`]: a folder of manifests
//! (compiled here with the same `compile()` the operator runs), or the snapshot files of a mounted
//! ConfigMap and Secret. A watcher polls the files and applies a change only when it is whole
//! and valid; otherwise the old config keeps serving and the refusal is logged and counted.
//!
//! Files are polled, not watched with inotify: the kubelet updates mounted volumes by swapping a
//! `..data` symlink, and editors save by rename; re-reading a small folder twice a second sees
//! both, everywhere. The Kubernetes source ([`kube`]) is event-driven: its watches wake the same
//! loop, which reads their caches like files.

pub mod kube;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use keygate_crds::snapshot::{SECRETS_FILE, SNAPSHOT_FILE};
use keygate_crds::{SecretSnapshot, Snapshot, manifests};
use sha2::{Digest, Sha256};

use crate::config::{Config, ConfigError};
use crate::proxy::Shared;

/// A configuration source.
#[derive(Clone, Debug)]
pub enum Source {
    /// Keygate resources and Secrets as YAML; compiled by the proxy.
    Manifests(PathBuf),
    /// The operator's ConfigMap and Secret, watched through the Kubernetes API.
    Kube(kube::KubeSource),
    /// `snapshot.json` (or `snapshot.json.gz`) and `secrets.json` as written by the operator.
    Snapshot {
        /// Folder holding `snapshot.json` (a mounted ConfigMap).
        config_dir: PathBuf,
        /// Folder holding `secrets.json` (a mounted Secret).
        secrets_dir: PathBuf,
    },
}

/// Why a source could not produce a config.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Files could not be read.
    #[error("cannot read {path}: {error}")]
    Io {
        /// The file or folder.
        path: String,
        /// The cause.
        error: std::io::Error,
    },
    /// Resources are invalid; one line per problem, `kind/namespace/name: field: what`.
    #[error("{} problem(s):\n  {}", .0.len(), .0.join("\n  "))]
    Invalid(Vec<String>),
    /// A snapshot file is not what the operator writes.
    #[error("{file}: {error}")]
    Malformed {
        /// The file.
        file: String,
        /// The cause.
        error: String,
    },
    /// The ConfigMap and Secret are mid-update (the kubelet updates them one at a time).
    #[error("secrets.json belongs to another snapshot; waiting for the matching Secret")]
    Pending,
    /// The snapshot is well-formed but cannot be served.
    #[error(transparent)]
    Config(ConfigError),
}

impl From<ConfigError> for LoadError {
    /// A secret snapshot of another snapshot is not an error in itself: it is how a half-done
    /// update of the ConfigMap and Secret looks, and the next read usually completes it.
    fn from(e: ConfigError) -> Self {
        match e {
            ConfigError::SecretsMismatch { .. } => LoadError::Pending,
            e => LoadError::Config(e),
        }
    }
}

/// The raw files of one read, with a digest to tell whether anything changed.
pub struct Files {
    files: Vec<(PathBuf, Vec<u8>)>,
    digest: [u8; 32],
}

impl Source {
    /// Reads every file the source consists of.
    pub fn read(&self) -> Result<Files, LoadError> {
        let files = match self {
            Source::Manifests(dir) => {
                let mut files = Vec::new();
                collect_yaml(dir, &mut files)?;
                files
            }
            Source::Snapshot {
                config_dir,
                secrets_dir,
            } => {
                let plain = config_dir.join(SNAPSHOT_FILE);
                let snapshot = if plain.exists() {
                    plain
                } else {
                    config_dir.join(SNAPSHOT_GZ_FILE)
                };
                vec![read_file(&snapshot)?, read_file(&secrets_dir.join(SECRETS_FILE))?]
            }
            Source::Kube(k) => k.read()?,
        };
        let mut h = Sha256::new();
        for (path, bytes) in &files {
            h.update(path.as_os_str().as_encoded_bytes());
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        }
        Ok(Files {
            files,
            digest: h.finalize().into(),
        })
    }

    /// Turns what was read into a snapshot pair.
    pub fn load(&self, files: &Files) -> Result<(Snapshot, SecretSnapshot), LoadError> {
        match self {
            Source::Manifests(_) => compile_manifests(&files.files),
            Source::Snapshot { .. } | Source::Kube(_) => {
                let [(snap_path, snap), (sec_path, sec)] = &files.files[..] else {
                    unreachable!("two files read")
                };
                let snapshot: Snapshot = parse_json(snap_path, &decode_snapshot(snap_path, snap)?)?;
                let secrets: SecretSnapshot = parse_json(sec_path, sec)?;
                // Whether the two belong together is checked once, by Config::build.
                Ok((snapshot, secrets))
            }
        }
    }
}

/// Name under which the operator stores a compressed snapshot (ConfigMap `binaryData`).
pub const SNAPSHOT_GZ_FILE: &str = "snapshot.json.gz";

/// The snapshot JSON, gunzipped when its name says it is compressed.
fn decode_snapshot(path: &Path, bytes: &[u8]) -> Result<Vec<u8>, LoadError> {
    if path.extension().and_then(|e| e.to_str()) != Some("gz") {
        return Ok(bytes.to_vec());
    }
    let mut json = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(bytes), &mut json).map_err(|e| {
        LoadError::Malformed {
            file: path.display().to_string(),
            error: format!("not gzip: {e}"),
        }
    })?;
    Ok(json)
}

fn parse_json<T: serde::de::DeserializeOwned>(path: &Path, bytes: &[u8]) -> Result<T, LoadError> {
    serde_json::from_slice(bytes).map_err(|e| LoadError::Malformed {
        file: path.display().to_string(),
        error: e.to_string(),
    })
}

/// Parses and compiles manifests. In standalone mode there is no status to report a bad
/// resource in, so — like `nginx -t` — any problem refuses the whole folder.
pub fn compile_manifests(files: &[(PathBuf, Vec<u8>)]) -> Result<(Snapshot, SecretSnapshot), LoadError> {
    let texts: Vec<(String, String)> = files
        .iter()
        .map(|(p, b)| (p.display().to_string(), String::from_utf8_lossy(b).into_owned()))
        .collect();
    let parsed = manifests::parse(texts.iter().map(|(p, t)| (p.as_str(), t.as_str())));
    let mut problems: Vec<String> = parsed.problems.iter().map(ToString::to_string).collect();
    let compiled = keygate_crds::compile(&parsed.resources);
    problems.extend(compiled.refused().flat_map(|r| r.problem_lines().collect::<Vec<_>>()));
    if problems.is_empty() {
        Ok((compiled.snapshot, compiled.secrets))
    } else {
        Err(LoadError::Invalid(problems))
    }
}

fn read_file(path: &Path) -> Result<(PathBuf, Vec<u8>), LoadError> {
    std::fs::read(path)
        .map(|b| (path.to_path_buf(), b))
        .map_err(|error| LoadError::Io {
            path: path.display().to_string(),
            error,
        })
}

/// `.yaml`, `.yml` and `.json` files below `dir`, sorted, skipping hidden entries (the kubelet's
/// `..data` folders are reached through the visible symlinks instead).
pub fn collect_yaml(dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) -> Result<(), LoadError> {
    let io = |error| LoadError::Io {
        path: dir.display().to_string(),
        error,
    };
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.starts_with('.') {
            continue;
        }
        if path.is_dir() {
            collect_yaml(&path, out)?;
        } else if matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json")) {
            out.push(read_file(&path)?);
        }
    }
    Ok(())
}

/// Builds and swaps in a new config; the old one keeps serving if this fails.
pub fn apply(shared: &Shared, snapshot: &Snapshot, secrets: &SecretSnapshot) -> Result<Arc<Config>, ConfigError> {
    let config = Arc::new(Config::build(snapshot, secrets, &shared.clients, &shared.stores)?);
    shared.config.store(Some(config.clone()));
    shared.tunnels.reloaded(&config);
    shared.clients.retain(config.client_keys());
    shared.metrics.config_live(&config.hash, config.route_count());
    Ok(config)
}

/// Loads the source once: read, load, apply. Returns the digest of what was applied.
pub fn load_once(source: &Source, shared: &Shared) -> Result<([u8; 32], Arc<Config>), LoadError> {
    let mut last = None;
    match poll_once(source, shared, &mut last) {
        Polled::Applied(config) => Ok((last.expect("set when applied"), config)),
        Polled::Pending => Err(LoadError::Pending),
        Polled::Refused(e) => Err(e),
        Polled::Unchanged => unreachable!("nothing was loaded before"),
    }
}

/// What one look at the source found.
enum Polled {
    Unchanged,
    /// The ConfigMap and Secret do not belong together yet; look again next time.
    Pending,
    Applied(Arc<Config>),
    Refused(LoadError),
}

/// Reads the source and applies it if it changed since `last` (the digest of the last version
/// applied or refused, so a refused version is refused once, not at every poll).
fn poll_once(source: &Source, shared: &Shared, last: &mut Option<[u8; 32]>) -> Polled {
    let files = match source.read() {
        Ok(files) => files,
        // A read can race a rename; the next poll sees the finished file.
        Err(e) => return Polled::Refused(e),
    };
    if Some(files.digest) == *last {
        return Polled::Unchanged;
    }
    let result = source
        .load(&files)
        .and_then(|(snapshot, secrets)| Ok(apply(shared, &snapshot, &secrets)?));
    match result {
        Err(LoadError::Pending) => Polled::Pending,
        Ok(config) => {
            *last = Some(files.digest);
            Polled::Applied(config)
        }
        Err(e) => {
            *last = Some(files.digest);
            Polled::Refused(e)
        }
    }
}

/// Looks at the source forever (files every `interval`, the API on each watch event), applying
/// each change that is whole and valid.
pub async fn watch(source: Source, shared: Arc<Shared>, mut last: Option<[u8; 32]>, interval: Duration) {
    let source = Arc::new(source);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_error: Option<String> = None;
    loop {
        // The API's watches say when something changed; files have to be looked at.
        match &*source {
            Source::Kube(k) => k.changed().await,
            _ => {
                ticker.tick().await;
            }
        }
        let (source2, shared2) = (source.clone(), shared.clone());
        // File reads and compile are blocking work; keep them off the request threads.
        let (polled, seen) = tokio::task::spawn_blocking(move || {
            let polled = poll_once(&source2, &shared2, &mut last);
            (polled, last)
        })
        .await
        .expect("config loader does not panic");
        last = seen;
        match polled {
            Polled::Unchanged => {}
            Polled::Pending => tracing::debug!("waiting for the Secret to match the ConfigMap"),
            Polled::Applied(config) => {
                last_error = None;
                shared.metrics.reload(true);
                tracing::info!(hash = %config.hash, routes = config.route_count(), "configuration reloaded");
            }
            Polled::Refused(e) => {
                let text = e.to_string();
                if last_error.as_deref() != Some(text.as_str()) {
                    shared.metrics.reload(false);
                    tracing::error!(error = %text, "configuration change refused; still serving the previous configuration");
                    last_error = Some(text);
                }
            }
        }
    }
}
