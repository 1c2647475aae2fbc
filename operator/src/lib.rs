//! The Keygate operator: watch → index → compile → write. [`watch`] keeps reflector caches of
//! the five kinds and Secrets and wakes the loop on any change; [`reconcile::reconcile`] runs the
//! same `keygate_crds::compile` the standalone proxy runs, server-side-applies the ConfigMap and
//! Secret built by [`output`] only when their digests change, and writes each resource's
//! [`status`]. Only the replica holding the [`leader`] Lease writes.
#![forbid(unsafe_code)]

pub mod error;
pub mod leader;
pub mod metrics;
pub mod output;
pub mod reconcile;
pub mod run;
pub mod status;
pub mod watch;
