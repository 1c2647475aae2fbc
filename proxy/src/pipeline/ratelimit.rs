//! A route's `rateLimit`: one token bucket per `per` key, refilled at `requestsPerSecond` up to
//! `burst`. Runs before the session chain advances, so a limited request keeps its link and may
//! be retried as is after `Retry-After` (whole seconds, rounded up).
//!
//! Where the bucket lives follows who must agree on it: `per: app` and `per: session` use the
//! route's session-chain store (Redis when the chain is shared across replicas); `per: route` and
//! `per: client` use the process's memory store, so they count per replica. A request whose app
//! or session cannot be told (no chain on the route, unknown key, no session header) is counted
//! per client address instead: it cannot escape the limit by leaving the header out. The client
//! address is the one [`super::client`] resolved (behind trusted balancers, the real client's).
//! Bucket keys go through `store::key`, so session ids and addresses are hashed.

use std::net::IpAddr;
use std::sync::Arc;

use http::request::Parts;
use keygate_crds::resources::route::RateLimitKey;

use crate::config::LiveRoute;
use crate::error::ProxyError;
use crate::proxy::Shared;
use crate::store::{self, Store, Take};

/// Takes a token for this request, or refuses it with 429.
pub async fn check(
    shared: &Shared,
    route: &LiveRoute,
    parts: &Parts,
    app: Option<&str>,
    client: IpAddr,
) -> Result<(), ProxyError> {
    let Some(limit) = &route.spec.rate_limit else {
        return Ok(());
    };
    let (store, who) = bucket(shared, route, limit.per, parts, app, client);
    let rate = limit.requests_per_second.max(1) as f64;
    let burst = u32::try_from(limit.burst.unwrap_or(limit.requests_per_second).max(1)).unwrap_or(u32::MAX);
    match store.take(&store::key("rate", &route.id, &who), rate, burst).await {
        Ok(Take::Allowed) => Ok(()),
        Ok(Take::Limited(wait)) => Err(ProxyError::RateLimited(wait.as_secs_f64().ceil().max(1.0) as u64)),
        Err(e) => {
            tracing::warn!(route = %route.id, error = %e, "rate-limit store unavailable");
            Err(ProxyError::StoreUnavailable)
        }
    }
}

/// The store and the (secret-bearing, to be hashed) identity of this request's bucket.
fn bucket(
    shared: &Shared,
    route: &LiveRoute,
    per: RateLimitKey,
    parts: &Parts,
    app: Option<&str>,
    client: IpAddr,
) -> (Arc<dyn Store>, Vec<u8>) {
    let chain = route.chain.as_ref();
    match per {
        RateLimitKey::Route => return (shared.stores.memory(), b"route".to_vec()),
        RateLimitKey::App => {
            // An app admitted by `auth: apiKey` counts per replica, like the route's other
            // buckets; one known to the session chain counts in the chain's (shared) store.
            if chain.is_none()
                && let Some(app) = app
            {
                return (shared.stores.memory(), [b"app\n", app.as_bytes()].concat());
            }
            if let Some(chain) = chain
                && let Some(app) = chain.app(parts)
            {
                return (chain.store.clone(), [b"app\n", app.as_bytes()].concat());
            }
        }
        RateLimitKey::Session => {
            if let Some(chain) = chain
                && let Some(session) = chain.session(parts)
            {
                return (chain.store.clone(), [b"session\n", session].concat());
            }
        }
        RateLimitKey::Client => {}
    }
    (shared.stores.memory(), format!("client\n{client}").into_bytes())
}
