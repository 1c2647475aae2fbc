//! Watches → index: one reflector store per kind and watched namespace (Secrets included), one for
//! all Namespaces (their labels decide what is shared), and a
//! `Notify` poked on every change so the reconcile loop wakes, debounces, and compiles the whole.

use std::fmt::Debug;
use std::sync::Arc;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use keygate_crds::Resources;
use keygate_crds::resources::{
    CookieTranslation, ExternalAllowlist, KeygateDelegation, ProxyRoute, SessionChainPolicy, TokenVaultRule,
};
use keygate_proxy::source::kube::watch_store;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, Client, Resource};
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
    secrets: Vec<Store<Secret>>,
    /// Every Namespace, watched cluster-wide even when only some namespaces are: a shared
    /// policy's `allowedNamespaces.selector` matches on the labels of the referencing one.
    namespaces: Store<Namespace>,
    /// Every `KeygateDelegation` (cluster-scoped): they decide what routes may claim.
    delegations: Store<KeygateDelegation>,
}

/// Starts the watches. `namespaces` empty means all namespaces.
pub fn start(client: &Client, namespaces: &[String], notify: &Arc<Notify>) -> Stores {
    Stores {
        routes: spawn_all(client, namespaces, notify),
        cookie_translations: spawn_all(client, namespaces, notify),
        allowlists: spawn_all(client, namespaces, notify),
        vault_rules: spawn_all(client, namespaces, notify),
        session_policies: spawn_all(client, namespaces, notify),
        secrets: spawn_all(client, namespaces, notify),
        namespaces: watch_store(Api::all(client.clone()), watcher::Config::default(), notify.clone()),
        delegations: watch_store(Api::all(client.clone()), watcher::Config::default(), notify.clone()),
    }
}

fn spawn_all<K>(client: &Client, namespaces: &[String], notify: &Arc<Notify>) -> Vec<Store<K>>
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
        .map(|api| watch_store(api, watcher::Config::default(), notify.clone()))
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

    /// A copy of everything cached, as `compile()` takes it.
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
            secrets: all(&self.secrets),
            namespaces: all(std::slice::from_ref(&self.namespaces)),
            delegations: all(std::slice::from_ref(&self.delegations)),
        }
    }
}
