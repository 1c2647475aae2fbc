//! The Keygate operator. For now it starts, says which kinds it will own, and exits cleanly;
//! the reconcile loop (watch → `keygate_crds::compile` → ConfigMap + Secret + statuses) lands
//! with the operator issue.
#![forbid(unsafe_code)]

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let kinds: Vec<String> = keygate_crds::resources::crds()
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    tracing::info!(
        ?kinds,
        "keygate-operator starting; the reconcile loop is not built yet, exiting"
    );
    Ok(())
}
