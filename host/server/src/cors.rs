//! Cross-origin calls from browsers: the origins of `[server] cors_origins` may call the API
//! from their pages. Preflights are answered for the methods and headers the API uses
//! (`Authorization`, `Content-Type`, `Idempotency-Key`, `Last-Event-ID`, `Prefer` and the trace
//! headers), and answers expose the headers a page reads (`Retry-After`, `Location`,
//! `Preference-Applied`). Only the `/v1` routes answer cross-origin calls: `/metrics`,
//! `/healthz` and `/openapi.json` never do. No origin is allowed unless listed.

use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Method, header};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::config::ServerConfigError;

/// How long a browser may keep a preflight's answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

/// The CORS layer for `origins`, or `None` when none is listed.
pub(crate) fn layer(origins: &[String]) -> Result<Option<CorsLayer>, ServerConfigError> {
    if origins.is_empty() {
        return Ok(None);
    }
    let allow = if origins.iter().any(|origin| origin == "*") {
        if let Some(index) = origins.iter().position(|origin| origin != "*") {
            return Err(ServerConfigError::CorsOrigin {
                index,
                origin: origins[index].clone(),
                reason: "`*` allows every origin: list it alone",
            });
        }
        AllowOrigin::any()
    } else {
        let mut values = Vec::with_capacity(origins.len());
        for (index, origin) in origins.iter().enumerate() {
            let refused = |reason| ServerConfigError::CorsOrigin {
                index,
                origin: origin.clone(),
                reason,
            };
            let (scheme, rest) = origin
                .split_once("://")
                .ok_or_else(|| refused("an origin is scheme://host[:port]"))?;
            if !matches!(scheme, "http" | "https") {
                return Err(refused("the scheme must be http or https"));
            }
            if rest.is_empty() || rest.contains('/') {
                return Err(refused("an origin has no path, not even `/`"));
            }
            if rest.chars().any(|c| c.is_ascii_uppercase()) {
                return Err(refused("browsers send origins in lowercase"));
            }
            let default_port = if scheme == "https" { ":443" } else { ":80" };
            if rest.ends_with(default_port) {
                return Err(refused("browsers send origins without their default port"));
            }
            values.push(HeaderValue::from_str(origin).map_err(|_| refused("not a header value"))?);
        }
        AllowOrigin::list(values)
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("idempotency-key"),
                HeaderName::from_static("last-event-id"),
                HeaderName::from_static("prefer"),
                HeaderName::from_static("traceparent"),
                HeaderName::from_static("tracestate"),
            ])
            .expose_headers([
                header::RETRY_AFTER,
                header::LOCATION,
                HeaderName::from_static("preference-applied"),
            ])
            .max_age(PREFLIGHT_MAX_AGE),
    ))
}
