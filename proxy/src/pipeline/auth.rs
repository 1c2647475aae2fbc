//! Who may call a route, by its `auth` mode: `none`; `cookie` (the cookie translation's cookie
//! must be there — except on the login call itself); `apiKey` (a key from the route's Secret, its
//! app counted in metrics; the key itself never reaches the upstream). Whatever the mode, a route
//! with a cookie translation turns a present cookie into the upstream's auth header here, and a
//! bad cookie is refused, never forwarded. The session-chain mode lives in its own stage.

use std::sync::Arc;

use http::header::{HeaderName, HeaderValue};
use http::request::Parts;
use keygate_crds::resources::route::AuthMode;

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

/// Applies the route's authentication; removes credentials the upstream must not see.
pub async fn authenticate(
    route: &LiveRoute,
    parts: &mut Parts,
    step: Step,
    metrics: &Metrics,
) -> Result<Caller, ProxyError> {
    let mut caller = Caller::default();
    if let (Some(cookie), Step::Translate) = (&route.cookie, step) {
        caller.upstream_auth = cookie.translate(&parts.headers).await?;
    }
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
