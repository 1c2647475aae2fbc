//! The operator's main loop, as a library function so end-to-end tests run real operator
//! replicas in-process: start the watches and the Lease election, then, while leading, wake on
//! any change, debounce, and reconcile.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::events::{Recorder, Reporter};
use kube::{Api, Client};
use tokio::sync::{Notify, watch as channel};

use crate::leader::Election;
use crate::metrics::Metrics;
use crate::output::Target;
use crate::reconcile::{Context, FIELD_MANAGER, error_policy, reconcile};
use crate::watch;

/// How one replica runs.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Where the ConfigMap and Secret go; the Lease lives in `target.namespace` too.
    pub target: Target,
    /// Namespaces watched; empty means all.
    pub watch_namespaces: Vec<String>,
    /// Lease name.
    pub lease: String,
    /// This replica's identity in the Lease.
    pub identity: String,
    /// How long a Lease stays valid without renewal.
    pub lease_duration: Duration,
    /// Quiet time after a change before compiling, so a burst becomes one compile.
    pub debounce: Duration,
    /// Reconcile at least this often, whatever happens.
    pub resync: Duration,
}

/// Runs one replica until `stop` turns true; its metrics are `metrics`.
pub async fn run(client: Client, settings: Settings, metrics: Arc<Metrics>, mut stop: channel::Receiver<bool>) {
    let notify = Arc::new(Notify::new());
    let ctx = Context {
        client: client.clone(),
        target: settings.target.clone(),
        stores: watch::start(&client, &settings.watch_namespaces, &notify),
        metrics,
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.into(),
                instance: Some(settings.identity.clone()),
            },
        ),
    };
    let (leading_tx, mut leading) = channel::channel(false);
    let election = Election {
        api: Api::<Lease>::namespaced(client, &settings.target.namespace),
        name: settings.lease.clone(),
        identity: settings.identity.clone(),
        duration: settings.lease_duration,
        renew: (settings.lease_duration / 3).max(Duration::from_millis(200)),
    };
    // Tied to this future: if the replica dies mid-loop, its Lease is left to expire, not renewed.
    let mut election = AbortOnDrop(tokio::spawn(election.run(leading_tx, stop.clone())));
    loop {
        tokio::select! {
            () = notify.notified() => {}
            _ = leading.changed() => {}
            () = tokio::time::sleep(settings.resync) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        let leads = *leading.borrow_and_update();
        ctx.metrics.leader.set(i64::from(leads));
        if !leads {
            continue;
        }
        tokio::time::sleep(settings.debounce).await;
        ctx.stores.ready().await;
        match reconcile(&ctx).await {
            Ok(outcome) => {
                ctx.metrics.reconciled(true);
                tracing::debug!(?outcome, "reconciled");
            }
            Err(e) => {
                tokio::time::sleep(error_policy(&e, &ctx)).await;
                notify.notify_one();
            }
        }
    }
    // A graceful stop: the election task releases the Lease before it ends.
    let _ = (&mut election.0).await;
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
