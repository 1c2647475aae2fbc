//! Keygate's data plane. A connection passes [`edge`] (PROXY header, TLS) in
//! [`server::serve_proxy`], then Keygate's own HTTP/1.1 side [`h1`], which hands HTTP/2 and
//! whatever is not an ordinary request to hyper (with the [`idle`] limits); each request's
//! [`proxy::handle`] takes the live [`config::Config`] (one `ArcSwap`, replaced whole on
//! reload) and the route the [`router::Router`] picks, runs the [`pipeline`] stages, forwards
//! through a pooled [`upstream`] client, and maps any failure through [`error::ProxyError`] —
//! the one place errors become `proxy_error` JSON; a route that opts in hands an upgraded
//! connection to [`websocket`]. Configuration arrives from a [`source::Source`]: YAML
//! manifests compiled by `keygate_crds::compile`, or the snapshot files the operator writes.
#![forbid(unsafe_code)]

pub mod apikeys;
pub mod body;
pub mod config;
pub mod edge;
pub mod error;
pub mod external;
pub mod h1;
pub mod idle;
pub mod metrics;
pub mod pipeline;
pub mod process;
pub mod proxy;
pub mod router;
pub mod seal;
pub mod server;
pub mod source;
pub mod store;
#[cfg(test)]
mod test_rng;
pub mod upstream;
pub mod vault;
pub mod websocket;
