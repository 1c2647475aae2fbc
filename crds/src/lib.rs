//! Keygate's custom resources and the one function that turns them into what the proxy serves.
//!
//! Data flows one way: [`resources`] (the five `keygate.dev/v1alpha1` kinds, with CEL rules the
//! API server enforces) and Secrets are gathered by the operator from the cluster, or by
//! [`manifests::parse`] from YAML files, into [`compile::Resources`]; [`compile::compile`] checks
//! every resource (the same CEL rules, then cross-object rules) and produces a
//! [`snapshot::Snapshot`] (no secret values), a [`snapshot::SecretSnapshot`], and one
//! [`report::Report`] per resource, which becomes its `Ready` condition. Nothing here does I/O.
#![forbid(unsafe_code)]

mod cel;
pub mod cidr;
pub mod compile;
pub mod manifests;
pub mod report;
pub mod resources;
pub mod snapshot;
pub mod transform;

pub use compile::{Compiled, Resources, compile};
pub use report::{Kind, ObjectRef, Problem, Report};
pub use snapshot::{SecretSnapshot, Snapshot};
