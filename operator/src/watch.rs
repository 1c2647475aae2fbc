//! Watches → index: one reflector store per kind and watched namespace, one for all Namespaces
//! (their labels decide what is shared), and a `Notify` poked on every change so the reconcile
//! loop wakes, debounces, and compiles the whole.
//!
//! Secrets are watched as metadata only: a namespace may hold thousands that Keygate never uses,
//! and caching their values would cost memory and put every value in this process. The values of
//! the Secrets that resources reference are read by name ([`SecretValues`]) and read again when
//! the watched `resourceVersion` says one changed.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use keygate_crds::Resources;
use keygate_crds::resources::{
    CookieTranslation, ExternalAllowlist, KeygateDelegation, ProxyRoute, SessionChainPolicy, TokenVaultRule,
};
use keygate_proxy::source::kube::{watch_store, watch_store_trimmed};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

/// The caches of everything `compile()` reads.
#[derive(Clone)]
pub struct Stores {
    routes: Vec<Store<ProxyRoute>>,
    cookie_translations: Vec<Store<CookieTranslation>>,
    allowlists: Vec<Store<ExternalAllowlist>>,
    vault_rules: Vec<Store<TokenVaultRule>>,
    session_policies: Vec<Store<SessionChainPolicy>>,
    /// Secrets' metadata: which exist, and their `resourceVersion`.
    secrets: Vec<Store<PartialObjectMeta<Secret>>>,
    /// Values of the referenced Secrets.
    pub secret_values: SecretValues,
    /// Every Namespace, watched cluster-wide even when only some namespaces are: a shared
    /// policy's `allowedNamespaces.selector` matches on the labels of the referencing one.
    namespaces: Store<Namespace>,
    /// Every `KeygateDelegation` (cluster-scoped): they decide what routes may claim.
    delegations: Store<KeygateDelegation>,
}

/// Starts the watches. `namespaces` empty means all namespaces.
pub fn start(client: &Client, namespaces: &[String], notify: &Arc<Notify>) -> Stores {
    Stores {
        routes: spawn_all(client, namespaces, notify, no_managed_fields),
        cookie_translations: spawn_all(client, namespaces, notify, no_managed_fields),
        allowlists: spawn_all(client, namespaces, notify, no_managed_fields),
        vault_rules: spawn_all(client, namespaces, notify, no_managed_fields),
        session_policies: spawn_all(client, namespaces, notify, no_managed_fields),
        // `Api<PartialObjectMeta<_>>` lists and watches metadata only; of that, only the name
        // and resourceVersion are used. Annotations go too: kubectl's last-applied-configuration
        // annotation of an applied Secret holds its values.
        secrets: spawn_all(client, namespaces, notify, |s: &mut PartialObjectMeta<Secret>| {
            s.metadata.managed_fields = None;
            s.metadata.annotations = None;
            s.metadata.labels = None;
        }),
        secret_values: SecretValues::new(client.clone()),
        namespaces: watch_store(Api::all(client.clone()), watcher::Config::default(), notify.clone()),
        delegations: watch_store(Api::all(client.clone()), watcher::Config::default(), notify.clone()),
    }
}

/// Who changed which field: bulky (a tree per writer), and nothing compiling or a status needs.
fn no_managed_fields<K: Resource>(object: &mut K) {
    object.meta_mut().managed_fields = None;
}

fn spawn_all<K>(
    client: &Client,
    namespaces: &[String],
    notify: &Arc<Notify>,
    trim: impl FnMut(&mut K) + Clone + Send + 'static,
) -> Vec<Store<K>>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
{
    let apis: Vec<Api<K>> = if namespaces.is_empty() {
        vec![Api::all(client.clone())]
    } else {
        namespaces
            .iter()
            .map(|ns| Api::namespaced(client.clone(), ns))
            .collect()
    };
    apis.into_iter()
        .map(|api| watch_store_trimmed(api, watcher::Config::default(), notify.clone(), trim.clone()))
        .collect()
}

impl Stores {
    /// Waits until every cache has completed its first list.
    pub async fn ready(&self) {
        macro_rules! wait {
            ($($f:ident),*) => {$(for s in &self.$f { let _ = s.wait_until_ready().await; })*};
        }
        wait!(
            routes,
            cookie_translations,
            allowlists,
            vault_rules,
            session_policies,
            secrets
        );
        let _ = self.namespaces.wait_until_ready().await;
        // Compiling before delegations are known would serve claims they refuse.
        let _ = self.delegations.wait_until_ready().await;
    }

    /// A copy of everything cached, as `compile()` takes it, with the values of the Secrets read
    /// so far (see [`SecretValues`]).
    pub fn resources(&self) -> Resources {
        fn all<K: Resource<DynamicType = ()> + Clone>(stores: &[Store<K>]) -> Vec<K> {
            stores.iter().flat_map(|s| s.state()).map(|k| (*k).clone()).collect()
        }
        Resources {
            routes: all(&self.routes),
            cookie_translations: all(&self.cookie_translations),
            allowlists: all(&self.allowlists),
            vault_rules: all(&self.vault_rules),
            session_policies: all(&self.session_policies),
            secrets: self.secret_values.values(),
            namespaces: all(std::slice::from_ref(&self.namespaces)),
            delegations: all(std::slice::from_ref(&self.delegations)),
        }
    }
}

/// Secret reads in flight at once.
const CONCURRENT_READS: usize = 16;

/// The values of the Secrets that resources reference, read by name and kept while referenced.
#[derive(Clone)]
pub struct SecretValues {
    client: Client,
    /// By (namespace, name): the Secret as read, its `resourceVersion` inside.
    read: Arc<Mutex<HashMap<(String, String), Secret>>>,
}

impl SecretValues {
    fn new(client: Client) -> Self {
        SecretValues {
            client,
            read: Arc::default(),
        }
    }

    /// The Secrets read, for `compile()`.
    pub fn values(&self) -> Vec<Secret> {
        self.read.lock().expect("not poisoned").values().cloned().collect()
    }

    /// The (namespace, name) of every Secret held.
    pub fn held(&self) -> BTreeSet<(String, String)> {
        self.read.lock().expect("not poisoned").keys().cloned().collect()
    }

    /// Brings the values of `wanted` in line with the watched metadata: reads those not read yet
    /// or changed since, forgets those that no longer exist. Returns whether anything changed.
    /// Secrets outside the watched namespaces count as missing, as they did when all were cached.
    pub async fn refresh(&self, stores: &Stores, wanted: &BTreeSet<(String, String)>) -> Result<bool, kube::Error> {
        let mut changed = false;
        let mut to_read = Vec::new();
        {
            let mut read = self.read.lock().expect("not poisoned");
            for key in wanted {
                let (ns, name) = key;
                let meta = stores
                    .secrets
                    .iter()
                    .find_map(|s| s.get(&ObjectRef::new(name).within(ns)));
                let held = read.get(key).map(|s| s.resource_version());
                match (meta, held) {
                    (None, None) => {}
                    (None, Some(_)) => {
                        read.remove(key);
                        changed = true;
                    }
                    (Some(meta), Some(held)) if held.is_some() && held == meta.resource_version() => {}
                    (Some(_), _) => to_read.push(key),
                }
            }
        }
        // At 10,000 referenced Secrets, reading one at a time made the first reconcile wait ~15 s.
        // Futures collected first: a stream holding the closure is not `Send` for every lifetime.
        let reads: Vec<_> = to_read
            .into_iter()
            .map(|key| {
                let api: Api<Secret> = Api::namespaced(self.client.clone(), &key.0);
                async move { (key, api.get_opt(&key.1).await) }
            })
            .collect();
        let fetched: Vec<_> = futures::stream::iter(reads)
            .buffer_unordered(CONCURRENT_READS)
            .collect()
            .await;
        let mut read = self.read.lock().expect("not poisoned");
        for (key, secret) in fetched {
            changed = true;
            // Deleted since the watch saw it: missing, as the next event will say.
            match secret? {
                Some(secret) => read.insert(key.clone(), secret),
                None => read.remove(key),
            };
        }
        Ok(changed)
    }

    /// Forgets every value not in `wanted`: a Secret no longer referenced leaves this process.
    pub fn retain(&self, wanted: &BTreeSet<(String, String)>) {
        self.read
            .lock()
            .expect("not poisoned")
            .retain(|key, _| wanted.contains(key));
    }
}
