//! The operator's ConfigMap and Secret, watched through the Kubernetes API (`serve --kube`).
//! Two reflectors limited by field selector to the two names, so a Role allowing get/list/watch
//! on just those objects is enough; each change wakes the reload loop, which reads the caches
//! as if they were the mounted files.

use std::path::PathBuf;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use keygate_crds::snapshot::{SECRETS_FILE, SNAPSHOT_FILE};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use tokio::sync::Notify;

use super::{LoadError, SNAPSHOT_GZ_FILE};

/// Caches of the two objects and the signal that one changed.
#[derive(Clone)]
pub struct KubeSource {
    namespace: String,
    config_map: String,
    secret: String,
    config_maps: Store<ConfigMap>,
    secrets: Store<Secret>,
    changed: Arc<Notify>,
}

impl std::fmt::Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ConfigMap {0}/{1} and Secret {0}/{2}",
            self.namespace, self.config_map, self.secret
        )
    }
}

impl KubeSource {
    /// Starts watching `namespace/config_map` and `namespace/secret`.
    pub fn start(client: Client, namespace: &str, config_map: &str, secret: &str) -> KubeSource {
        let changed = Arc::new(Notify::new());
        KubeSource {
            namespace: namespace.to_string(),
            config_map: config_map.to_string(),
            secret: secret.to_string(),
            config_maps: watch_one(Api::namespaced(client.clone(), namespace), config_map, &changed),
            secrets: watch_one(Api::namespaced(client, namespace), secret, &changed),
            changed,
        }
    }

    /// Waits until both watches have listed once.
    pub async fn ready(&self) {
        let _ = self.config_maps.wait_until_ready().await;
        let _ = self.secrets.wait_until_ready().await;
    }

    /// Resolves when either object changes.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// The snapshot and secret snapshot as named byte blobs.
    pub(super) fn read(&self) -> Result<Vec<(PathBuf, Vec<u8>)>, LoadError> {
        let missing = |what: String| LoadError::Malformed {
            file: what,
            error: "not found (has the operator run?)".into(),
        };
        let cm_name = format!("configmap/{}/{}", self.namespace, self.config_map);
        let cm = self
            .config_maps
            .get(&ObjectRef::new(&self.config_map).within(&self.namespace))
            .ok_or_else(|| missing(cm_name.clone()))?;
        let snapshot = match (
            cm.data.as_ref().and_then(|d| d.get(SNAPSHOT_FILE)),
            cm.binary_data.as_ref().and_then(|d| d.get(SNAPSHOT_GZ_FILE)),
        ) {
            (Some(json), _) => (
                PathBuf::from(format!("{cm_name}/{SNAPSHOT_FILE}")),
                json.clone().into_bytes(),
            ),
            (None, Some(gz)) => (PathBuf::from(format!("{cm_name}/{SNAPSHOT_GZ_FILE}")), gz.0.clone()),
            (None, None) => return Err(missing(format!("{cm_name}/{SNAPSHOT_FILE}"))),
        };
        let secret_name = format!("secret/{}/{}", self.namespace, self.secret);
        let secret = self
            .secrets
            .get(&ObjectRef::new(&self.secret).within(&self.namespace))
            .ok_or_else(|| missing(secret_name.clone()))?;
        let secrets = secret
            .data
            .as_ref()
            .and_then(|d| d.get(SECRETS_FILE))
            .map(|b| (PathBuf::from(format!("{secret_name}/{SECRETS_FILE}")), b.0.clone()))
            .ok_or_else(|| missing(format!("{secret_name}/{SECRETS_FILE}")))?;
        Ok(vec![snapshot, secrets])
    }
}

fn watch_one<K>(api: Api<K>, name: &str, changed: &Arc<Notify>) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    watch_store(
        api,
        watcher::Config::default().fields(&format!("metadata.name={name}")),
        changed.clone(),
    )
}

/// A reflector cache of what `api` and `config` select, kept current by a background watch
/// (retrying with backoff) that pokes `changed` on every event. Shared with the operator.
pub fn watch_store<K>(api: Api<K>, config: watcher::Config, changed: Arc<Notify>) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    watch_store_trimmed(api, config, changed, |_| {})
}

/// [`watch_store`], with `trim` applied to each object before it is cached: what a cache of many
/// objects does not need (managed fields, say) then costs no memory.
pub fn watch_store_trimmed<K>(
    api: Api<K>,
    config: watcher::Config,
    changed: Arc<Notify>,
    trim: impl FnMut(&mut K) + Send + 'static,
) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, config).default_backoff().modify(trim).reflect(writer);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => changed.notify_one(),
                Err(e) => tracing::warn!(kind = %K::kind(&()), error = %e, "watch failed; retrying"),
            }
        }
    });
    reader
}
