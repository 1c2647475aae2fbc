//! The operator's errors. Reconcile failures are retried by `error_policy`; none carries a
//! secret value (kube errors name objects, never their data).

/// What can go wrong while reconciling.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed a request.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The caches have not completed their first list.
    #[error("caches are not synced yet")]
    NotSynced,
}
