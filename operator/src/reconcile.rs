//! `reconcile` and `error_policy` over a [`Context`]: gather every cached resource, `compile()`
//! them, server-side-apply the Secret and ConfigMap when their digests changed, then bring each
//! resource's status in line with its report (writing only what differs) and record an Event
//! when a resource is refused.

use std::collections::HashMap;
use std::fmt::Debug;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use keygate_crds::report::{Kind, ObjectRef, Problem, reasons};
use keygate_crds::resources::{
    CookieTranslation, ExternalAllowlist, ProxyRoute, SessionChainPolicy, Status, TokenVaultRule,
};
use keygate_crds::{Compiled, Report, Resources, compile};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Error;
use crate::metrics::Metrics;
use crate::output::{self, Outputs, SECRETS_DIGEST_ANNOTATION, SNAPSHOT_HASH_ANNOTATION, Target, annotation};
use crate::status;
use crate::watch::Stores;

/// The one field manager of every write, so server-side apply tracks Keygate's fields as one owner.
pub const FIELD_MANAGER: &str = "keygate-operator";

/// What `reconcile` works with.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Where the ConfigMap and Secret go.
    pub target: Target,
    /// Caches of the inputs.
    pub stores: Stores,
    /// Metrics.
    pub metrics: std::sync::Arc<Metrics>,
    /// Event recorder.
    pub recorder: Recorder,
}

/// What one reconcile did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Hash of the compiled snapshot.
    pub snapshot_hash: String,
    /// The ConfigMap was written.
    pub wrote_config_map: bool,
    /// The Secret was written.
    pub wrote_secret: bool,
    /// Statuses written.
    pub statuses_written: usize,
    /// Resources not served.
    pub refused: usize,
}

/// Compiles everything cached and writes what changed.
pub async fn reconcile(ctx: &Context) -> Result<Outcome, Error> {
    let (resources, compiled) = compile_reading_secrets(ctx).await?;

    let mut outcome = Outcome {
        snapshot_hash: compiled.secrets.snapshot_hash.clone(),
        ..Outcome::default()
    };
    let mut reports = compiled.reports.clone();
    match output::build(&compiled, &ctx.target) {
        Ok(outputs) => {
            ctx.metrics.snapshot_bytes.set(outputs.stored_bytes as i64);
            (outcome.wrote_secret, outcome.wrote_config_map) =
                apply_outputs(&ctx.client, &ctx.target, &outputs).await?;
            if outcome.wrote_secret {
                ctx.metrics.wrote("secret");
            }
            if outcome.wrote_config_map {
                ctx.metrics.wrote("configmap");
            }
        }
        Err(too_large) => {
            // Nothing new can be delivered, so nothing is served as compiled: say so everywhere.
            tracing::error!(error = %too_large, "snapshot too large; the previous configuration keeps serving");
            for r in &mut reports {
                r.reason = reasons::SNAPSHOT_TOO_LARGE;
                r.message = format!(
                    "{too_large}; the previous configuration keeps serving; split resources across Keygate installations or remove unused ones"
                );
                r.problems = vec![Problem {
                    field: "-".into(),
                    message: r.message.clone(),
                }];
            }
        }
    }
    outcome.refused = reports.iter().filter(|r| !r.is_ready()).count();
    let by_object: HashMap<&ObjectRef, &Report> = reports.iter().map(|r| (&r.object, r)).collect();
    let now = jiff::Timestamp::now().to_string();
    outcome.statuses_written += sync_statuses(ctx, &resources.routes, &by_object, &now).await?;
    outcome.statuses_written += sync_statuses(ctx, &resources.cookie_translations, &by_object, &now).await?;
    outcome.statuses_written += sync_statuses(ctx, &resources.allowlists, &by_object, &now).await?;
    outcome.statuses_written += sync_statuses(ctx, &resources.vault_rules, &by_object, &now).await?;
    outcome.statuses_written += sync_statuses(ctx, &resources.session_policies, &by_object, &now).await?;
    Ok(outcome)
}

/// Compiles with the values of exactly the Secrets compiling reads: first those read last time
/// (re-read if they changed), then, as long as compiling looks for Secrets not read yet (a new
/// reference, or one that only counts once another resource is valid), those too.
async fn compile_reading_secrets(ctx: &Context) -> Result<(Resources, Compiled), Error> {
    // Each round only adds Secrets; the bound is a guard, not an expected count.
    const ROUNDS: usize = 8;
    let values = &ctx.stores.secret_values;
    values.refresh(&ctx.stores, &values.held()).await?;
    let mut resources = ctx.stores.resources();
    let mut round = 0;
    loop {
        let started = Instant::now();
        let compiled = compile(&resources);
        ctx.metrics.compile_seconds.observe(started.elapsed().as_secs_f64());
        round += 1;
        if round == ROUNDS || !values.refresh(&ctx.stores, &compiled.secrets_read).await? {
            values.retain(&compiled.secrets_read);
            return Ok((resources, compiled));
        }
        resources.secrets = values.values();
    }
}

/// How long to wait before retrying after `error`.
pub fn error_policy(error: &Error, ctx: &Context) -> Duration {
    ctx.metrics.reconciled(false);
    tracing::warn!(error = %error, "reconcile failed; retrying");
    match error {
        Error::NotSynced => Duration::from_millis(500),
        Error::Kube(_) => Duration::from_secs(5),
    }
}

/// Applies the Secret, then the ConfigMap (so a proxy that sees the new snapshot finds its
/// secrets already there), each only if its digest differs from what the cluster holds.
/// Returns whether the Secret and the ConfigMap were written.
pub async fn apply_outputs(client: &Client, target: &Target, out: &Outputs) -> Result<(bool, bool), Error> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &target.namespace);
    let current = secrets.get_opt(&target.secret).await?;
    let secret_current = current.as_ref().is_some_and(|s| {
        annotation(&s.metadata, SECRETS_DIGEST_ANNOTATION) == Some(out.secrets_digest.as_str())
            && annotation(&s.metadata, SNAPSHOT_HASH_ANNOTATION) == Some(out.snapshot_hash.as_str())
    });
    if !secret_current {
        secrets
            .patch(&target.secret, &params, &Patch::Apply(&out.secret))
            .await?;
    }
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &target.namespace);
    let current = config_maps.get_opt(&target.config_map).await?;
    let config_current = current
        .as_ref()
        .is_some_and(|c| annotation(&c.metadata, SNAPSHOT_HASH_ANNOTATION) == Some(out.snapshot_hash.as_str()));
    if !config_current {
        config_maps
            .patch(&target.config_map, &params, &Patch::Apply(&out.config_map))
            .await?;
        tracing::info!(hash = %out.snapshot_hash, bytes = out.stored_bytes, "configuration written");
    }
    Ok((!secret_current, !config_current))
}

/// A Keygate kind whose status the operator writes.
trait Keygate:
    Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Clone + DeserializeOwned + Serialize + Debug
{
    const KIND: Kind;
    fn current_status(&self) -> Option<&Status>;
}

macro_rules! keygate_kind {
    ($($ty:ty => $kind:expr),* $(,)?) => {$(
        impl Keygate for $ty {
            const KIND: Kind = $kind;
            fn current_status(&self) -> Option<&Status> {
                self.status.as_ref()
            }
        }
    )*};
}

keygate_kind!(
    ProxyRoute => Kind::ProxyRoute,
    CookieTranslation => Kind::CookieTranslation,
    ExternalAllowlist => Kind::ExternalAllowlist,
    TokenVaultRule => Kind::TokenVaultRule,
    SessionChainPolicy => Kind::SessionChainPolicy,
);

/// Status writes (and Secret reads) in flight at once: at 10,000 resources, one at a time took
/// the first reconcile ~40 s, during which no change was compiled.
const CONCURRENT_WRITES: usize = 16;

async fn sync_statuses<K: Keygate>(
    ctx: &Context,
    items: &[K],
    reports: &HashMap<&ObjectRef, &Report>,
    now: &str,
) -> Result<usize, Error> {
    let stale = items.iter().filter_map(|item| {
        let key = ObjectRef {
            kind: K::KIND,
            namespace: item.namespace().unwrap_or_default(),
            name: item.name_any(),
        };
        let report = *reports.get(&key)?;
        let desired = status::desired(report, item.current_status(), now);
        (!status::up_to_date(item.current_status(), &desired)).then_some((item, key, report, desired))
    });
    // Futures collected first: a stream holding these closures is not `Send` for every
    // lifetime, which a spawned reconcile needs.
    let writes: Vec<_> = stale
        .map(|(item, key, report, desired)| async move {
            let api: Api<K> = Api::namespaced(ctx.client.clone(), &key.namespace);
            let patch = serde_json::json!({ "status": desired });
            match api
                .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {}
                // Deleted since the cache saw it; the next reconcile drops it.
                Err(kube::Error::Api(s)) if s.code == 404 => return Ok(false),
                Err(e) => return Err(e.into()),
            }
            ctx.metrics.wrote("status");
            if !report.is_ready() {
                record_refusal(ctx, item, report).await;
            }
            Ok::<bool, Error>(true)
        })
        .collect();
    let written: Vec<Result<bool, Error>> = futures::stream::iter(writes)
        .buffer_unordered(CONCURRENT_WRITES)
        .collect()
        .await;
    let mut count = 0;
    for w in written {
        count += usize::from(w?);
    }
    Ok(count)
}

async fn record_refusal<K: Keygate>(ctx: &Context, item: &K, report: &Report) {
    let mut note = report.message.clone();
    if note.len() > 1000 {
        let cut = (0..=1000).rev().find(|&i| note.is_char_boundary(i)).unwrap_or(0);
        note.truncate(cut);
    }
    let event = Event {
        type_: EventType::Warning,
        reason: report.reason.to_string(),
        note: Some(note),
        action: "Compile".to_string(),
        secondary: None,
    };
    match ctx.recorder.publish(&event, &item.object_ref(&())).await {
        Ok(()) => ctx.metrics.wrote("event"),
        Err(e) => tracing::warn!(object = %report.object, error = %e, "recording an event failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Method, Request, Response};
    use keygate_crds::{Resources, manifests};
    use kube::client::Body;

    fn outputs() -> (Target, Outputs) {
        let yaml = "apiVersion: keygate.dev/v1alpha1\nkind: ProxyRoute\nmetadata: {name: api}\nspec: {upstream: 'https://api.example.com'}\n";
        let parsed = manifests::parse([("t.yaml", yaml)]);
        let compiled = compile(&Resources { ..parsed.resources });
        let target = Target {
            namespace: "keygate-system".into(),
            config_map: "keygate-config".into(),
            secret: "keygate-secrets".into(),
        };
        let out = output::build(&compiled, &target).unwrap();
        (target, out)
    }

    /// A fake API server: answers each expected (method, path) in order with `body`, and
    /// fails the test on anything else.
    fn fake_api(expected: Vec<(Method, &'static str, serde_json::Value)>) -> (Client, tokio::task::JoinHandle<()>) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server = tokio::spawn(async move {
            for (method, path, body) in expected {
                let (req, send) = handle.next_request().await.expect("the client sent a request");
                assert_eq!((req.method(), req.uri().path()), (&method, path));
                if method == Method::PATCH {
                    assert!(
                        req.uri()
                            .query()
                            .unwrap_or_default()
                            .contains("fieldManager=keygate-operator")
                    );
                }
                let status = if body.is_null() { 404 } else { 200 };
                let body = if body.is_null() {
                    serde_json::json!({"kind": "Status", "apiVersion": "v1", "code": 404, "reason": "NotFound", "status": "Failure", "message": "not found"})
                } else {
                    body
                };
                send.send_response(
                    Response::builder()
                        .status(status)
                        .body(Body::from(serde_json::to_vec(&body).unwrap()))
                        .unwrap(),
                );
            }
        });
        (Client::new(service, "default"), server)
    }

    const SECRET_PATH: &str = "/api/v1/namespaces/keygate-system/secrets/keygate-secrets";
    const CONFIG_MAP_PATH: &str = "/api/v1/namespaces/keygate-system/configmaps/keygate-config";

    #[tokio::test]
    async fn unchanged_outputs_are_read_but_not_written() {
        let (target, out) = outputs();
        let secret = serde_json::to_value(&out.secret).unwrap();
        let config_map = serde_json::to_value(&out.config_map).unwrap();
        let (client, server) = fake_api(vec![
            (Method::GET, SECRET_PATH, secret),
            (Method::GET, CONFIG_MAP_PATH, config_map),
        ]);
        assert_eq!(apply_outputs(&client, &target, &out).await.unwrap(), (false, false));
        server.await.unwrap();
    }

    #[tokio::test]
    async fn missing_outputs_are_applied_secret_first() {
        let (target, out) = outputs();
        let secret = serde_json::to_value(&out.secret).unwrap();
        let config_map = serde_json::to_value(&out.config_map).unwrap();
        let (client, server) = fake_api(vec![
            (Method::GET, SECRET_PATH, serde_json::Value::Null),
            (Method::PATCH, SECRET_PATH, secret),
            (Method::GET, CONFIG_MAP_PATH, serde_json::Value::Null),
            (Method::PATCH, CONFIG_MAP_PATH, config_map),
        ]);
        assert_eq!(apply_outputs(&client, &target, &out).await.unwrap(), (true, true));
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_rotated_secret_rewrites_only_the_secret() {
        let (target, out) = outputs();
        let mut stale = out.secret.clone();
        stale
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(SECRETS_DIGEST_ANNOTATION.into(), "old".into());
        let config_map = serde_json::to_value(&out.config_map).unwrap();
        let (client, server) = fake_api(vec![
            (Method::GET, SECRET_PATH, serde_json::to_value(&stale).unwrap()),
            (Method::PATCH, SECRET_PATH, serde_json::to_value(&out.secret).unwrap()),
            (Method::GET, CONFIG_MAP_PATH, config_map),
        ]);
        assert_eq!(apply_outputs(&client, &target, &out).await.unwrap(), (true, false));
        server.await.unwrap();
    }
}
