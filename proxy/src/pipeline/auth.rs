//! Who may call a route, by its `auth` mode: `none`; `cookie` (the cookie translation's cookie
//! must be there — except on the login call itself); `apiKey` (a key from the route's Secret, its
//! app counted in metrics; the key itself never reaches the upstream). Whatever the mode, a route
//! with a cookie translation turns a present cookie into the upstream's auth header here, and a
//! bad cookie is refused, never forwarded. The session-chain mode lives in its own stage.

use std::sync::Arc;

use http::header::{HeaderName, HeaderValue};
use http::request::Parts;
use keygate_crds::resources::route::AuthMode;

use super::Stage;
use super::cookie::Step;
use crate::config::LiveRoute;
use crate::error::ProxyError;
use crate::metrics::Metrics;

/// What authentication established about the caller.
#[derive(Default)]
pub struct Caller {
    /// The app whose API key admitted the request.
    pub app: Option<Arc<str>>,
    /// The header the session cookie translates into, for the upstream request.
    pub upstream_auth: Option<(HeaderName, HeaderValue)>,
}

/// Applies the route's authentication; removes credentials the upstream must not see. Only a
/// cookie to translate waits (on the session store).
pub fn authenticate<'a>(
    route: &'a LiveRoute,
    parts: &'a mut Parts,
    step: Step,
    metrics: &'a Metrics,
) -> Stage<'a, Caller> {
    match (&route.cookie, step) {
        (Some(cookie), Step::Translate) => Stage::run(async move {
            let upstream_auth = cookie.translate(&parts.headers).await?;
            admit(route, parts, step, metrics, upstream_auth)
        }),
        _ => Stage::ready(admit(route, parts, step, metrics, None)),
    }
}

/// The route's `auth` mode, given the header a cookie translated into, if any.
fn admit(
    route: &LiveRoute,
    parts: &mut Parts,
    step: Step,
    metrics: &Metrics,
    upstream_auth: Option<(HeaderName, HeaderValue)>,
) -> Result<Caller, ProxyError> {
    let mut caller = Caller {
        app: None,
        upstream_auth,
    };
    match route.spec.auth {
        AuthMode::Cookie if step == Step::Translate && caller.upstream_auth.is_none() => {
            return Err(ProxyError::SessionRequired);
        }
        AuthMode::ApiKey => {
            let Some((header, keys)) = &route.api_keys else {
                return Err(ProxyError::InvalidApiKey);
            };
            let presented = parts.headers.remove(header);
            let app = presented
                .as_ref()
                .and_then(|k| keys.app(k.as_bytes()))
                .ok_or(ProxyError::InvalidApiKey)?;
            metrics.app_request(&route.id, app);
            caller.app = Some(app.clone());
        }
        _ => {}
    }
    Ok(caller)
}
